//! Typed, sealed, short-lived records beside the pairings: NHS login states and sessions, PKB
//! pairing states. One implementation for every kind: a kind is a name and a serde type.
//!
//! A record is found by the SHA-256 of a secret id only the browser holds (the `state`, the
//! session cookie), and its content is sealed with the store's keys, bound to its kind and id.
//! A record that no longer opens (its key was retired) reads as absent: the user signs in again.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::crypto::{Keyring, SealError};
use super::{RecordKind, SealedRecord, SealedRecords, StoreError};
use crate::core::clock::Clock;

#[derive(Clone)]
pub struct Records {
    backend: Arc<dyn SealedRecords>,
    keyring: Arc<Keyring>,
    clock: Arc<dyn Clock>,
}

/// What taking a record found.
#[derive(Debug)]
pub enum Taken<T> {
    /// Never there, used already, or no longer opening with the configured keys.
    Absent,
    /// There, but past its expiry (and now gone).
    Expired,
    /// There (and now gone), but it does not open with the configured keys.
    Unreadable(StoreError),
    Valid(Record<T>),
}

/// A record's content and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<T> {
    pub value: T,
    pub expires_at: i64,
}

fn id_hash(kind: RecordKind, id: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(kind.as_str().as_bytes());
    h.update([0]);
    h.update(id.as_bytes());
    h.finalize().to_vec()
}

fn warn_unreadable(kind: RecordKind, e: &StoreError) {
    tracing::warn!(kind = kind.as_str(), error = %e, "a stored record does not open with the configured keys, or is not in the expected shape; treated as absent");
}

fn aad(kind: RecordKind, id_hash: &[u8]) -> Vec<u8> {
    let mut aad = b"pkb-edge|record|".to_vec();
    aad.extend_from_slice(kind.as_str().as_bytes());
    aad.push(b'|');
    aad.extend_from_slice(id_hash);
    aad
}

impl Records {
    pub fn new(
        backend: Arc<dyn SealedRecords>,
        keyring: Arc<Keyring>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Records {
            backend,
            keyring,
            clock,
        }
    }

    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    pub async fn put<T: Serialize>(
        &self,
        kind: RecordKind,
        id: &str,
        value: &T,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let record = self.seal(kind, id, value, expires_at)?;
        self.backend
            .put_record(kind, record, self.clock.now())
            .await
    }

    /// Replaces a live record's content, keeping its expiry; false if it is gone.
    pub async fn update<T: Serialize>(
        &self,
        kind: RecordKind,
        id: &str,
        value: &T,
    ) -> Result<bool, StoreError> {
        // The stored expiry stays; this one is not written.
        let record = self.seal(kind, id, value, 0)?;
        self.backend
            .update_record(kind, record, self.clock.now())
            .await
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        kind: RecordKind,
        id: &str,
    ) -> Result<Option<Record<T>>, StoreError> {
        let row = self
            .backend
            .get_record(kind, &id_hash(kind, id), self.clock.now())
            .await?;
        Ok(row.and_then(|r| self.open(kind, r)))
    }

    /// Removes and returns the record: whatever happens next, it cannot be used again. An
    /// expired record reads as absent.
    pub async fn take<T: DeserializeOwned>(
        &self,
        kind: RecordKind,
        id: &str,
    ) -> Result<Option<Record<T>>, StoreError> {
        Ok(match self.take_checked(kind, id).await? {
            Taken::Valid(record) => Some(record),
            Taken::Unreadable(e) => {
                warn_unreadable(kind, &e);
                None
            }
            Taken::Absent | Taken::Expired => None,
        })
    }

    /// Like `take`, telling an expired record from an absent one.
    pub async fn take_checked<T: DeserializeOwned>(
        &self,
        kind: RecordKind,
        id: &str,
    ) -> Result<Taken<T>, StoreError> {
        let Some(row) = self.backend.take_record(kind, &id_hash(kind, id)).await? else {
            return Ok(Taken::Absent);
        };
        if row.expires_at <= self.clock.now() {
            return Ok(Taken::Expired);
        }
        Ok(match self.open_checked(kind, row) {
            Ok(record) => Taken::Valid(record),
            Err(e) => Taken::Unreadable(e),
        })
    }

    pub async fn extend(
        &self,
        kind: RecordKind,
        id: &str,
        expires_at: i64,
    ) -> Result<bool, StoreError> {
        self.backend
            .extend_record(kind, &id_hash(kind, id), expires_at, self.clock.now())
            .await
    }

    pub async fn delete(&self, kind: RecordKind, id: &str) -> Result<bool, StoreError> {
        self.backend.delete_record(kind, &id_hash(kind, id)).await
    }

    /// One more event for `id` in its window (see `SealedRecords::count_in_window`); the id is
    /// stored only as a hash.
    pub async fn count_in_window(
        &self,
        kind: &str,
        id: &str,
        window_secs: i64,
    ) -> Result<i64, StoreError> {
        let mut h = Sha256::new();
        h.update(b"counter|");
        h.update(kind.as_bytes());
        h.update([0]);
        h.update(id.as_bytes());
        self.backend
            .count_in_window(kind, &h.finalize(), self.clock.now(), window_secs)
            .await
    }

    fn seal<T: Serialize>(
        &self,
        kind: RecordKind,
        id: &str,
        value: &T,
        expires_at: i64,
    ) -> Result<SealedRecord, StoreError> {
        let id_hash = id_hash(kind, id);
        let plain = serde_json::to_vec(value)
            .map_err(|e| StoreError::Config(format!("cannot encode a {}: {e}", kind.as_str())))?;
        Ok(SealedRecord {
            sealed: self.keyring.seal(&plain, &aad(kind, &id_hash)),
            key_id: self.keyring.primary_id().to_string(),
            id_hash,
            expires_at,
        })
    }

    /// The record's content, or `None` (logged) when it no longer opens: for browser flows a
    /// record sealed with a retired key reads as absent, and the user starts again.
    fn open<T: DeserializeOwned>(&self, kind: RecordKind, row: SealedRecord) -> Option<Record<T>> {
        self.open_checked(kind, row)
            .inspect_err(|e| warn_unreadable(kind, e))
            .ok()
    }

    fn open_checked<T: DeserializeOwned>(
        &self,
        kind: RecordKind,
        row: SealedRecord,
    ) -> Result<Record<T>, StoreError> {
        let plain = self
            .keyring
            .open(&row.key_id, &row.sealed, &aad(kind, &row.id_hash))?;
        let value = serde_json::from_slice(&plain)
            .map_err(|_| StoreError::Sealing(SealError::Corrupt(row.key_id.clone())))?;
        Ok(Record {
            value,
            expires_at: row.expires_at,
        })
    }
}
