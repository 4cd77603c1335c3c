//! The one service object: store + keyring + limits. HTTP handlers and the
//! CLI both call it; it knows nothing about HTTP.

use std::sync::Arc;

use zeroize::{Zeroize, Zeroizing};

use crate::crypto::Keyring;
use crate::error::Error;
use crate::path::{SecretPath, Version};
use crate::store::Store;

/// Domain limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted value, in bytes of UTF-8.
    pub max_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_value_bytes: 64 * 1024,
        }
    }
}

/// One decrypted version of a secret.
#[derive(Debug)]
pub struct SecretValue {
    pub path: SecretPath,
    pub version: Version,
    pub value: Zeroizing<String>,
    pub created_at_ms: i64,
}

pub struct Service {
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    limits: Limits,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("keyring", &self.keyring)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Service {
    pub fn new(store: Arc<dyn Store>, keyring: Keyring, limits: Limits) -> Self {
        Service {
            store,
            keyring: Arc::new(keyring),
            limits,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Stores `value` as the next version of `path`; returns that version
    /// once it is on stable storage.
    pub async fn put(&self, path: SecretPath, value: Zeroizing<String>) -> Result<Version, Error> {
        if value.len() > self.limits.max_value_bytes {
            return Err(Error::TooLarge {
                code: "value_too_large",
                message: format!("value is larger than {} bytes", self.limits.max_value_bytes),
            });
        }
        let keyring = Arc::clone(&self.keyring);
        let seal_path = path.clone();
        let seal = Box::new(move |v: Version| keyring.seal(&seal_path, v, value.as_bytes()));
        Ok(self.store.put(path, seal).await?)
    }

    /// The newest live version, or one exact live version.
    pub async fn get(
        &self,
        path: &SecretPath,
        version: Option<Version>,
    ) -> Result<SecretValue, Error> {
        let Some(row) = self.store.get(path, version).await? else {
            return Err(Error::NotFound(match version {
                Some(_) => "this version of the secret does not exist or was deleted".into(),
                None => "the secret does not exist or has no live version".into(),
            }));
        };
        let corrupt = |detail: &str| Error::Corrupt {
            path: Some(path.clone()),
            version: Some(row.version),
            detail: detail.to_owned(),
        };
        let mut plain = self
            .keyring
            .open(path, row.version, &row.envelope)
            .map_err(|e| corrupt(&e.to_string()))?;
        // Move the bytes out of the zeroizing buffer without copying them.
        let value = String::from_utf8(std::mem::take(&mut *plain)).map_err(|e| {
            e.into_bytes().zeroize();
            corrupt("decrypted value is not UTF-8")
        })?;
        Ok(SecretValue {
            path: path.clone(),
            version: row.version,
            value: Zeroizing::new(value),
            created_at_ms: row.created_at_ms,
        })
    }

    /// Deletes every live version (`None`) or one version. Returns the
    /// versions deleted; [`Error::NothingToDelete`] if none was live.
    pub async fn delete(
        &self,
        path: SecretPath,
        version: Option<Version>,
    ) -> Result<Vec<Version>, Error> {
        let message = match version {
            Some(_) => "this version of the secret does not exist or was already deleted",
            None => "the secret does not exist or has no live version",
        };
        let deleted = self.store.delete(path, version).await?;
        if deleted.is_empty() {
            return Err(Error::NothingToDelete(message.into()));
        }
        Ok(deleted)
    }

    /// Whether the store answers (for `/readyz`).
    pub async fn ready(&self) -> Result<(), Error> {
        Ok(self.store.ping().await?)
    }
}
