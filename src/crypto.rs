//! Keys and the ciphertext envelope. The only module that touches key bytes.
//!
//! * The **master key** (32 bytes) lives outside the database (a file or an
//!   environment variable). It only wraps data keys.
//! * **Data keys** (32 bytes each, one per *generation*) encrypt values. They
//!   are stored in the database wrapped by the master key, with the
//!   generation bound as associated data.
//! * The AEAD is XChaCha20-Poly1305: 192-bit random nonces, so the number of
//!   encryptions per key is not limited by nonce collisions the way 96-bit
//!   AES-GCM nonces are (NIST's 2^32 limit does not apply).
//!
//! Envelope of a sealed value:
//! `format (1 byte = 1) ‖ generation (u32 BE) ‖ nonce (24 bytes) ‖ ciphertext ‖ tag (16)`
//! with associated data `"secretd/value/v1" ‖ 0 ‖ path ‖ 0 ‖ version (u64 BE) ‖ generation (u32 BE)`,
//! so a ciphertext copied to another path, version or generation fails to
//! open.

use std::collections::HashMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::path::{SecretPath, Version};

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const FORMAT_V1: u8 = 1;
const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
const VALUE_AAD_PREFIX: &[u8] = b"secretd/value/v1\0";
const WRAP_AAD_PREFIX: &[u8] = b"secretd/data-key/v1\0";

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("master key must be 32 bytes, base64-encoded")]
    BadMasterKey,
    #[error(
        "the master key does not open the stored data key of generation {0}; is this the master key this store was created with?"
    )]
    WrongMasterKey(u32),
    #[error("ciphertext failed authentication")]
    Corrupt,
    #[error("no data key of generation {0}")]
    UnknownGeneration(u32),
    #[error("system random number generator failed")]
    Rng,
}

/// Fills `buf` from the operating system's CSPRNG.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::fill(buf).map_err(|_| CryptoError::Rng)
}

/// The key that wraps data keys. Never stored in the database; no
/// `PartialEq` (compare with [`MasterKey::ct_eq`]) and a redacting `Debug`.
pub struct MasterKey(Zeroizing<[u8; KEY_LEN]>);

impl MasterKey {
    pub fn generate() -> Result<Self, CryptoError> {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        random_bytes(k.as_mut())?;
        Ok(MasterKey(k))
    }

    /// Decodes base64 text (surrounding whitespace ignored).
    pub fn from_base64(text: &str) -> Result<Self, CryptoError> {
        let mut raw = Zeroizing::new(
            B64.decode(text.trim())
                .map_err(|_| CryptoError::BadMasterKey)?,
        );
        if raw.len() != KEY_LEN {
            raw.zeroize();
            return Err(CryptoError::BadMasterKey);
        }
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        k.copy_from_slice(&raw);
        Ok(MasterKey(k))
    }

    /// Base64 text of the key, for writing a generated key file.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(B64.encode(self.0.as_ref()))
    }

    pub fn ct_eq(&self, other: &MasterKey) -> bool {
        self.0.as_ref().ct_eq(other.0.as_ref()).into()
    }

    fn cipher(&self) -> Result<XChaCha20Poly1305, CryptoError> {
        XChaCha20Poly1305::new_from_slice(self.0.as_ref()).map_err(|_| CryptoError::BadMasterKey)
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// The key of the audit log's HMAC chain: 32 random bytes stored in the
/// database wrapped by the master key (so a rekey keeps old records
/// verifiable), so whoever can write the database but does not hold the
/// master key cannot forge the chain.
pub struct AuditKey(Zeroizing<[u8; KEY_LEN]>);

const AUDIT_KEY_AAD: &[u8] = b"secretd/audit-key/v1";

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKey(<redacted>)")
    }
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// HMAC-SHA256 of the concatenation of `parts`.
fn hmac_parts(key: &[u8], parts: &[&[u8]]) -> Result<[u8; 32], CryptoError> {
    use hmac::Mac as _;
    let mut m = <HmacSha256 as hmac::KeyInit>::new_from_slice(key)
        .map_err(|_| CryptoError::BadMasterKey)?;
    for p in parts {
        m.update(p);
    }
    Ok(m.finalize().into_bytes().into())
}

impl AuditKey {
    /// A fresh random key (stores keep theirs wrapped; see
    /// [`MasterKey::new_wrapped_audit_key`]).
    pub fn random() -> Result<Self, CryptoError> {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        random_bytes(k.as_mut())?;
        Ok(AuditKey(k))
    }

    /// HMAC-SHA256 of `data` under this key.
    pub fn mac(&self, data: &[u8]) -> [u8; 32] {
        self.mac_parts(&[data])
    }

    /// HMAC-SHA256 of the concatenation of `parts` under this key, without
    /// copying them together first.
    pub fn mac_parts(&self, parts: &[&[u8]]) -> [u8; 32] {
        // A 32-byte key is always accepted by HMAC.
        hmac_parts(self.0.as_ref(), parts).unwrap_or([0u8; 32])
    }
}

impl MasterKey {
    /// Wraps a 32-byte secret under this key, binding `label`.
    fn wrap(&self, label: &[u8], secret: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let (ct, nonce) = seal_raw(&self.cipher()?, label, secret)?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens a secret wrapped by [`MasterKey::wrap`] with the same label.
    fn unwrap(&self, label: &[u8], wrapped: &[u8]) -> Option<Zeroizing<[u8; KEY_LEN]>> {
        if wrapped.len() != NONCE_LEN + KEY_LEN + TAG_LEN {
            return None;
        }
        let (nonce_b, ct) = wrapped.split_at(NONCE_LEN);
        let plain = Zeroizing::new(
            self.cipher()
                .ok()?
                .decrypt(
                    &nonce(nonce_b).ok()?,
                    Payload {
                        msg: ct,
                        aad: label,
                    },
                )
                .ok()?,
        );
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        out.copy_from_slice(plain.get(..KEY_LEN)?);
        Some(out)
    }

    /// A new random audit key, wrapped under this master key.
    pub fn new_wrapped_audit_key(&self) -> Result<Vec<u8>, CryptoError> {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        random_bytes(k.as_mut())?;
        self.wrap(AUDIT_KEY_AAD, k.as_ref())
    }

    /// Opens the stored audit key; [`CryptoError::WrongMasterKey`] if this
    /// master key did not wrap it.
    pub fn audit_key(&self, wrapped: &[u8]) -> Result<AuditKey, CryptoError> {
        self.unwrap(AUDIT_KEY_AAD, wrapped)
            .map(AuditKey)
            .ok_or(CryptoError::WrongMasterKey(0))
    }

    /// Re-wraps the data keys and the audit key under `new` (for a rekey).
    pub fn rewrap_all(
        &self,
        new: &MasterKey,
        keys: &[WrappedKey],
        audit_wrapped: &[u8],
    ) -> Result<(Vec<WrappedKey>, Vec<u8>), CryptoError> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let label = wrap_aad(k.generation);
            let dk = self
                .unwrap(&label, &k.wrapped)
                .ok_or(CryptoError::WrongMasterKey(k.generation))?;
            out.push(WrappedKey {
                generation: k.generation,
                wrapped: new.wrap(&label, dk.as_ref())?,
            });
        }
        let ak = self
            .unwrap(AUDIT_KEY_AAD, audit_wrapped)
            .ok_or(CryptoError::WrongMasterKey(0))?;
        Ok((out, new.wrap(AUDIT_KEY_AAD, ak.as_ref())?))
    }
}

/// A data key as stored: its generation and the master-key-wrapped bytes.
#[derive(Debug, Clone)]
pub struct WrappedKey {
    pub generation: u32,
    pub wrapped: Vec<u8>,
}

/// The unwrapped data keys, by generation, and which one seals new values.
pub struct Keyring {
    active: u32,
    ciphers: HashMap<u32, XChaCha20Poly1305>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("active", &self.active)
            .field("generations", &self.ciphers.len())
            .finish()
    }
}

fn nonce(b: &[u8]) -> Result<XNonce, CryptoError> {
    XNonce::try_from(b).map_err(|_| CryptoError::Corrupt)
}

fn wrap_aad(generation: u32) -> Vec<u8> {
    let mut aad = WRAP_AAD_PREFIX.to_vec();
    aad.extend_from_slice(&generation.to_be_bytes());
    aad
}

fn value_aad(path: &SecretPath, version: Version, generation: u32) -> Vec<u8> {
    let p = path.as_str().as_bytes();
    let mut aad = Vec::with_capacity(VALUE_AAD_PREFIX.len() + p.len() + 1 + 8 + 4);
    aad.extend_from_slice(VALUE_AAD_PREFIX);
    aad.extend_from_slice(p);
    aad.push(0);
    aad.extend_from_slice(&version.get().to_be_bytes());
    aad.extend_from_slice(&generation.to_be_bytes());
    aad
}

fn seal_raw(
    cipher: &XChaCha20Poly1305,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<(Vec<u8>, [u8; NONCE_LEN]), CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    random_bytes(&mut nonce)?;
    let ct = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| CryptoError::Corrupt)?;
    Ok((ct, nonce))
}

impl Keyring {
    /// Generates a fresh data key of `generation` and wraps it under `master`.
    pub fn new_wrapped_key(master: &MasterKey, generation: u32) -> Result<WrappedKey, CryptoError> {
        let mut dk = Zeroizing::new([0u8; KEY_LEN]);
        random_bytes(dk.as_mut())?;
        Ok(WrappedKey {
            generation,
            wrapped: master.wrap(&wrap_aad(generation), dk.as_ref())?,
        })
    }

    /// Unwraps every stored data key; the highest generation seals new values.
    /// Fails with [`CryptoError::WrongMasterKey`] if any does not open.
    pub fn unwrap_all(master: &MasterKey, keys: &[WrappedKey]) -> Result<Self, CryptoError> {
        let (ring, failed) = Self::unwrap_each(master, keys);
        match failed.first() {
            Some(g) => Err(CryptoError::WrongMasterKey(*g)),
            None => ring,
        }
    }

    /// For a serving process: unwraps what opens and reports the
    /// generations that do not (an altered key row), so versions sealed
    /// under those answer `corrupt` while every other version stays
    /// readable. Still fails, like [`Keyring::unwrap_all`], if the newest
    /// generation does not open (new values could not be sealed) — which is
    /// also what a wrong master key looks like.
    pub fn unwrap_available(
        master: &MasterKey,
        keys: &[WrappedKey],
    ) -> Result<(Self, Vec<u32>), CryptoError> {
        let (ring, failed) = Self::unwrap_each(master, keys);
        let newest = keys.iter().map(|k| k.generation).max();
        if let Some(g) = newest.filter(|g| failed.contains(g)) {
            return Err(CryptoError::WrongMasterKey(g));
        }
        Ok((ring?, failed))
    }

    /// One pass over the stored keys: the keyring of those that open (the
    /// highest generation seals new values), and the generations that do
    /// not, in order.
    fn unwrap_each(
        master: &MasterKey,
        keys: &[WrappedKey],
    ) -> (Result<Self, CryptoError>, Vec<u32>) {
        let mut ciphers = HashMap::with_capacity(keys.len());
        let mut failed = Vec::new();
        let mut active = 0;
        for k in keys {
            let cipher = master
                .unwrap(&wrap_aad(k.generation), &k.wrapped)
                .and_then(|dk| XChaCha20Poly1305::new_from_slice(dk.as_slice()).ok());
            match cipher {
                Some(c) => {
                    ciphers.insert(k.generation, c);
                    active = active.max(k.generation);
                }
                None => failed.push(k.generation),
            }
        }
        let ring = if ciphers.is_empty() {
            Err(CryptoError::UnknownGeneration(0))
        } else {
            Ok(Keyring { active, ciphers })
        };
        (ring, failed)
    }

    pub fn active_generation(&self) -> u32 {
        self.active
    }

    pub fn has_generation(&self, generation: u32) -> bool {
        self.ciphers.contains_key(&generation)
    }

    /// The generation an envelope names in its header, if it has one.
    pub fn envelope_generation(envelope: &[u8]) -> Option<u32> {
        if envelope.len() < HEADER_LEN || envelope[0] != FORMAT_V1 {
            return None;
        }
        let mut g = [0u8; 4];
        g.copy_from_slice(&envelope[1..5]);
        Some(u32::from_be_bytes(g))
    }

    /// Encrypts `plaintext` as version `version` of `path`.
    pub fn seal(
        &self,
        path: &SecretPath,
        version: Version,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let generation = self.active;
        let cipher = self
            .ciphers
            .get(&generation)
            .ok_or(CryptoError::UnknownGeneration(generation))?;
        let aad = value_aad(path, version, generation);
        let (ct, nonce) = seal_raw(cipher, &aad, plaintext)?;
        let mut out = Vec::with_capacity(HEADER_LEN + ct.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&generation.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypts an envelope sealed for exactly this `path` and `version`.
    pub fn open(
        &self,
        path: &SecretPath,
        version: Version,
        envelope: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if envelope.len() < HEADER_LEN + TAG_LEN || envelope[0] != FORMAT_V1 {
            return Err(CryptoError::Corrupt);
        }
        let mut g = [0u8; 4];
        g.copy_from_slice(&envelope[1..5]);
        let generation = u32::from_be_bytes(g);
        let cipher = self.ciphers.get(&generation).ok_or(CryptoError::Corrupt)?;
        let nonce = nonce(&envelope[5..HEADER_LEN])?;
        let aad = value_aad(path, version, generation);
        cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: &envelope[HEADER_LEN..],
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Corrupt)
    }

    /// Re-encrypts an envelope of `path`/`version` under the active
    /// generation (fresh nonce, AAD naming the new generation), for
    /// `secretd key rewrap`. The plaintext exists only in a zeroizing buffer
    /// inside this call. [`CryptoError::Corrupt`] if the envelope does not
    /// open (tampered, or sealed for another path, version or generation).
    pub fn reseal(
        &self,
        path: &SecretPath,
        version: Version,
        envelope: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let plain = self.open(path, version, envelope)?;
        self.seal(path, version, &plain)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ring() -> (MasterKey, Keyring) {
        let m = MasterKey::generate().unwrap();
        let w = Keyring::new_wrapped_key(&m, 1).unwrap();
        let k = Keyring::unwrap_all(&m, &[w]).unwrap();
        (m, k)
    }

    /// HMAC-SHA256 of the parts' concatenation, against a value from
    /// another implementation (Python's `hmac`, key bytes 0..32, message
    /// "secretd audit").
    #[test]
    fn mac_parts_is_hmac_sha256_of_the_concatenation() {
        let mut k = [0u8; KEY_LEN];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::try_from(i).unwrap();
        }
        let key = AuditKey(Zeroizing::new(k));
        let want = "97cb6eb00ba8e9fa9be0bcb3c24cd909404831ce532c74839750f7dff617ff86";
        assert_eq!(crate::audit::to_hex(&key.mac(b"secretd audit")), want);
        let parts: [&[u8]; 4] = [b"secretd", b"", b" ", b"audit"];
        assert_eq!(crate::audit::to_hex(&key.mac_parts(&parts)), want);
    }

    #[test]
    fn roundtrip_and_binding() {
        let (_, k) = ring();
        let p = SecretPath::parse("tfy-secret/a/b").unwrap();
        let q = SecretPath::parse("tfy-secret/a/c").unwrap();
        let v1 = Version::new(1).unwrap();
        let v2 = Version::new(2).unwrap();
        let env = k.seal(&p, v1, b"hunter2").unwrap();
        assert!(!env.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(k.open(&p, v1, &env).unwrap().as_slice(), b"hunter2");
        assert!(matches!(k.open(&q, v1, &env), Err(CryptoError::Corrupt)));
        assert!(matches!(k.open(&p, v2, &env), Err(CryptoError::Corrupt)));
        for i in 0..env.len() {
            let mut bad = env.clone();
            bad[i] ^= 1;
            assert!(k.open(&p, v1, &bad).is_err(), "flip at {i}");
        }
        assert!(k.open(&p, v1, &env[..env.len() - 1]).is_err());
    }

    #[test]
    fn wrong_master_key_is_refused() {
        let (m, _) = ring();
        let w = Keyring::new_wrapped_key(&m, 1).unwrap();
        let other = MasterKey::generate().unwrap();
        assert!(matches!(
            Keyring::unwrap_all(&other, &[w]),
            Err(CryptoError::WrongMasterKey(1))
        ));
    }

    #[test]
    fn master_key_base64() {
        let m = MasterKey::generate().unwrap();
        let again = MasterKey::from_base64(&m.to_base64()).unwrap();
        assert!(m.ct_eq(&again));
        assert!(MasterKey::from_base64("c2hvcnQ=").is_err());
        assert!(MasterKey::from_base64("!!").is_err());
        assert_eq!(format!("{m:?}"), "MasterKey(<redacted>)");
    }

    #[test]
    fn reseal_moves_an_envelope_to_the_active_generation() {
        let m = MasterKey::generate().unwrap();
        let w1 = Keyring::new_wrapped_key(&m, 1).unwrap();
        let old = Keyring::unwrap_all(&m, std::slice::from_ref(&w1)).unwrap();
        let w2 = Keyring::new_wrapped_key(&m, 2).unwrap();
        let k = Keyring::unwrap_all(&m, &[w1, w2]).unwrap();
        let p = SecretPath::parse("tfy-secret/a/b").unwrap();
        let v = Version::new(3).unwrap();
        let env = old.seal(&p, v, b"hunter2").unwrap();
        let new = k.reseal(&p, v, &env).unwrap();
        assert_eq!(Keyring::envelope_generation(&env), Some(1));
        assert_eq!(Keyring::envelope_generation(&new), Some(2));
        assert_ne!(env[5..29], new[5..29], "a fresh nonce");
        assert_eq!(k.open(&p, v, &new).unwrap().as_slice(), b"hunter2");
        // bound to the new generation: relabelling it as generation 1 fails
        let mut relabelled = new.clone();
        relabelled[1..5].copy_from_slice(&1u32.to_be_bytes());
        assert!(k.open(&p, v, &relabelled).is_err());
        // a tampered or misplaced envelope is refused, not re-sealed
        let mut bad = env.clone();
        bad[40] ^= 1;
        assert!(matches!(k.reseal(&p, v, &bad), Err(CryptoError::Corrupt)));
        let v4 = Version::new(4).unwrap();
        assert!(matches!(k.reseal(&p, v4, &env), Err(CryptoError::Corrupt)));
    }
}
