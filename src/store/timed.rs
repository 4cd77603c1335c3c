//! A [`Store`] that times every operation of the one it wraps, for the
//! `secretd_store_operation_duration_seconds` histogram. Labels are the
//! operation names below: fixed, never a path or a value.

use std::sync::Arc;
use std::time::Instant;

use super::{
    BoxFuture, Dump, EnvelopeSwap, KeyUsage, ListItem, PutMode, SealedRow, Sealer, Store,
    StoreError, StoredVersion, TokenRow, VersionMeta, WriteCtx,
};
use crate::audit::{AuditRecord, ChainedRecord};
use crate::crypto::WrappedKey;
use crate::metrics::StoreTimings;
use crate::path::{SecretPath, Version};

pub struct TimedStore {
    inner: Arc<dyn Store>,
    timings: Arc<StoreTimings>,
}

impl TimedStore {
    pub fn new(inner: Arc<dyn Store>, timings: Arc<StoreTimings>) -> Self {
        TimedStore { inner, timings }
    }

    fn time<'a, T: 'a>(
        &'a self,
        op: &'static str,
        fut: BoxFuture<'a, Result<T, StoreError>>,
    ) -> BoxFuture<'a, Result<T, StoreError>> {
        Box::pin(async move {
            let started = Instant::now();
            let out = fut.await;
            self.timings.observe(op, started.elapsed());
            out
        })
    }
}

impl Store for TimedStore {
    fn set_audit_key(&self, key: Arc<crate::crypto::AuditKey>) {
        self.inner.set_audit_key(key);
    }

    fn put(
        &self,
        path: SecretPath,
        seal: Sealer,
        mode: PutMode,
        ctx: WriteCtx,
    ) -> BoxFuture<'_, Result<Version, StoreError>> {
        self.time("put", self.inner.put(path, seal, mode, ctx))
    }

    fn get<'a>(
        &'a self,
        path: &'a SecretPath,
        version: Option<Version>,
    ) -> BoxFuture<'a, Result<Option<StoredVersion>, StoreError>> {
        self.time("get", self.inner.get(path, version))
    }

    fn delete(
        &self,
        path: SecretPath,
        version: Option<Version>,
        ctx: WriteCtx,
    ) -> BoxFuture<'_, Result<Vec<Version>, StoreError>> {
        self.time("delete", self.inner.delete(path, version, ctx))
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ListItem>, StoreError>> {
        self.time("list", self.inner.list(prefix, after, limit))
    }

    fn metadata<'a>(
        &'a self,
        path: &'a SecretPath,
    ) -> BoxFuture<'a, Result<Vec<VersionMeta>, StoreError>> {
        self.time("metadata", self.inner.metadata(path))
    }

    fn append_audit(&self, records: Vec<AuditRecord>) -> BoxFuture<'_, Result<(), StoreError>> {
        self.time("append_audit", self.inner.append_audit(records))
    }

    fn audit_page(
        &self,
        after: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ChainedRecord>, StoreError>> {
        self.time("audit_page", self.inner.audit_page(after, limit))
    }

    fn create_token(
        &self,
        token: TokenRow,
        audit: AuditRecord,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.time("create_token", self.inner.create_token(token, audit))
    }

    fn token_by_hash<'a>(
        &'a self,
        hash: &'a [u8],
    ) -> BoxFuture<'a, Result<Option<TokenRow>, StoreError>> {
        self.time("token_by_hash", self.inner.token_by_hash(hash))
    }

    fn tokens(&self) -> BoxFuture<'_, Result<Vec<TokenRow>, StoreError>> {
        self.time("tokens", self.inner.tokens())
    }

    fn revoke_token(
        &self,
        id: String,
        audit: AuditRecord,
    ) -> BoxFuture<'_, Result<Option<TokenRow>, StoreError>> {
        self.time("revoke_token", self.inner.revoke_token(id, audit))
    }

    fn touch_token(&self, id: String, at: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        self.time("touch_token", self.inner.touch_token(id, at))
    }

    fn data_keys(&self) -> BoxFuture<'_, Result<Vec<WrappedKey>, StoreError>> {
        self.time("data_keys", self.inner.data_keys())
    }

    fn latest_generation(&self) -> BoxFuture<'_, Result<u32, StoreError>> {
        self.time("latest_generation", self.inner.latest_generation())
    }

    fn key_usage(&self) -> BoxFuture<'_, Result<Vec<KeyUsage>, StoreError>> {
        self.time("key_usage", self.inner.key_usage())
    }

    fn rekey(
        &self,
        keys: Vec<WrappedKey>,
        audit_wrapped: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.time("rekey", self.inner.rekey(keys, audit_wrapped))
    }

    fn sealed_below<'a>(
        &'a self,
        generation: u32,
        after: (&'a str, i64),
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<SealedRow>, StoreError>> {
        self.time(
            "sealed_below",
            self.inner.sealed_below(generation, after, limit),
        )
    }

    fn swap_envelopes(&self, swaps: Vec<EnvelopeSwap>) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.time("swap_envelopes", self.inner.swap_envelopes(swaps))
    }

    fn add_data_key(&self, key: WrappedKey) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.time("add_data_key", self.inner.add_data_key(key))
    }

    fn setting<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        self.time("setting", self.inner.setting(name))
    }

    fn insert_setting(
        &self,
        name: &str,
        value: Vec<u8>,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.time("insert_setting", self.inner.insert_setting(name, value))
    }

    fn export(&self) -> BoxFuture<'_, Result<Dump, StoreError>> {
        self.time("export", self.inner.export())
    }

    fn import(&self, dump: Dump, replace: bool) -> BoxFuture<'_, Result<(), StoreError>> {
        self.time("import", self.inner.import(dump, replace))
    }

    fn counts(&self) -> BoxFuture<'_, Result<(i64, i64), StoreError>> {
        self.time("counts", self.inner.counts())
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.time("ping", self.inner.ping())
    }
}
