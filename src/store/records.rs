//! Typed, sealed, short-lived records beside the pairings: NHS login sessions, PKB pairing
//! states. One implementation for every kind: a kind is a name and a serde type.
//!
//! A record is found by the SHA-256 of a secret id only the browser holds (the `state`, the
//! session cookie), and its content is sealed with the store's keys, bound to its kind and id.
//! A record that no longer opens (its key was retired) reads as absent: the user signs in again.
//!
//! A value can also be sealed for the browser to keep instead of a row (`seal_for_browser`): the
//! same keys and cipher, nothing written, so a flow that anonymous requests start costs no store
//! write.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
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

/// Longest sealed value accepted back from a browser (a cookie is at most 4 kB).
const MAX_BROWSER_SEALED: usize = 4096;

/// What `seal_for_browser` seals: the value and when it stops opening.
#[derive(Serialize)]
struct ForBrowser<'a, T> {
    exp: i64,
    value: &'a T,
}

#[derive(Deserialize)]
struct FromBrowser<T> {
    exp: i64,
    value: T,
}

fn browser_aad(kind: &str) -> Vec<u8> {
    let mut aad = b"pkb-edge|browser|".to_vec();
    aad.extend_from_slice(kind.as_bytes());
    aad
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

    /// `put` for a record that belongs to `owner` (a user id, stored only as a hash): afterwards
    /// that owner has at most `keep` records of this kind, the newest; putting one more drops
    /// the oldest.
    pub async fn put_owned<T: Serialize>(
        &self,
        kind: RecordKind,
        id: &str,
        owner: &str,
        value: &T,
        expires_at: i64,
        keep: u32,
    ) -> Result<(), StoreError> {
        let record = self.seal(kind, id, value, expires_at)?;
        let mut h = Sha256::new();
        h.update(b"owner|");
        h.update(kind.as_str().as_bytes());
        h.update([0]);
        h.update(owner.as_bytes());
        self.backend
            .put_owned_record(kind, record, &h.finalize(), keep, self.clock.now())
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

    /// `value` sealed for the browser to keep (in a cookie) instead of a row: bound to `kind`,
    /// opening until `expires_at`, as `KEY_ID.BASE64URL` (cookie-safe). Nothing is written.
    pub fn seal_for_browser<T: Serialize>(
        &self,
        kind: &str,
        value: &T,
        expires_at: i64,
    ) -> Result<String, StoreError> {
        let plain = serde_json::to_vec(&ForBrowser {
            exp: expires_at,
            value,
        })
        .map_err(|e| StoreError::Config(format!("cannot encode a {kind}: {e}")))?;
        let sealed = self.keyring.seal(&plain, &browser_aad(kind));
        Ok(format!(
            "{}.{}",
            self.keyring.primary_id(),
            B64URL.encode(sealed)
        ))
    }

    /// What `seal_for_browser` sealed, as the browser gave it back: `Absent` when it is not in
    /// that shape at all, `Unreadable` when it does not open (altered, sealed for another kind,
    /// or with a key no longer configured), `Expired`, or `Valid`. Never an error to the caller:
    /// whatever a browser sends is only believed or not.
    pub fn open_from_browser<T: DeserializeOwned>(&self, kind: &str, text: &str) -> Taken<T> {
        let Some((key_id, sealed)) = text
            .rsplit_once('.')
            .filter(|_| text.len() <= MAX_BROWSER_SEALED)
        else {
            return Taken::Absent;
        };
        let Ok(sealed) = B64URL.decode(sealed) else {
            return Taken::Absent;
        };
        let plain = match self.keyring.open(key_id, &sealed, &browser_aad(kind)) {
            Ok(plain) => plain,
            Err(e) => return Taken::Unreadable(e.into()),
        };
        let Ok(opened) = serde_json::from_slice::<FromBrowser<T>>(&plain) else {
            return Taken::Unreadable(StoreError::Sealing(SealError::Corrupt(key_id.into())));
        };
        if opened.exp <= self.clock.now() {
            return Taken::Expired;
        }
        Taken::Valid(Record {
            value: opened.value,
            expires_at: opened.exp,
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::ManualClock;

    async fn records(keys: &str, clock: Arc<ManualClock>) -> (tempfile::TempDir, Records) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("r.db").display());
        let backend = crate::store::open_backend(&url).await.unwrap();
        let keyring = Arc::new(Keyring::parse(keys).unwrap());
        (dir, Records::new(backend, keyring, clock))
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Pending {
        state: String,
    }

    fn pending() -> Pending {
        Pending {
            state: "s-1".into(),
        }
    }

    #[tokio::test]
    async fn sealed_for_the_browser_opens_once_unaltered_until_it_expires() {
        let clock = Arc::new(ManualClock::at(1_000));
        let (k1, k2) = (Keyring::generate_line("k1"), Keyring::generate_line("k2"));
        let (_d, r) = records(&k1, clock.clone()).await;
        let sealed = r.seal_for_browser("login", &pending(), 1_600).unwrap();
        assert!(sealed.starts_with("k1."), "{sealed}");
        assert!(sealed
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
        assert!(!sealed.contains("s-1"));
        let opened = r.open_from_browser::<Pending>("login", &sealed);
        assert!(
            matches!(opened, Taken::Valid(ref v) if v.value == pending() && v.expires_at == 1_600)
        );
        // Sealed for one purpose, opened for another.
        assert!(matches!(
            r.open_from_browser::<Pending>("other", &sealed),
            Taken::Unreadable(_)
        ));
        // One character altered anywhere in the sealed part.
        let mut altered: Vec<char> = sealed.chars().collect();
        let i = altered.len() / 2;
        altered[i] = if altered[i] == 'A' { 'B' } else { 'A' };
        let altered: String = altered.into_iter().collect();
        assert!(matches!(
            r.open_from_browser::<Pending>("login", &altered),
            Taken::Unreadable(_) | Taken::Absent
        ));
        for garbage in [
            "",
            "k1",
            "k1.",
            "k1.!!",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(
                matches!(
                    r.open_from_browser::<Pending>("login", garbage),
                    Taken::Absent | Taken::Unreadable(_)
                ),
                "{garbage}"
            );
        }
        assert!(matches!(
            r.open_from_browser::<Pending>("login", &format!("k1.{}", "A".repeat(5000))),
            Taken::Absent
        ));
        // Another store's keys (same id, other material) and a key since retired.
        let (_d2, other) = records(&k2.replace("k2:", "k1:"), clock.clone()).await;
        assert!(matches!(
            other.open_from_browser::<Pending>("login", &sealed),
            Taken::Unreadable(_)
        ));
        let (_d3, rotated) = records(&k2, clock.clone()).await;
        assert!(matches!(
            rotated.open_from_browser::<Pending>("login", &sealed),
            Taken::Unreadable(_)
        ));
        clock.advance(599);
        assert!(matches!(
            r.open_from_browser::<Pending>("login", &sealed),
            Taken::Valid(_)
        ));
        clock.advance(1);
        assert!(matches!(
            r.open_from_browser::<Pending>("login", &sealed),
            Taken::Expired
        ));
    }
}
