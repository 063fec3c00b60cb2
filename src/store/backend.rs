//! What a storage backend (SQLite, PostgreSQL) implements: pairing rows, and sealed records.

use async_trait::async_trait;

use super::{RecordKind, SealedPairing, SealedRecord, StoreError};

#[async_trait]
/// The pairing rows: one per user, tokens sealed, written with compare-and-swap on a version.
pub trait PairingRows: Send + Sync + 'static {
    async fn get(&self, user_id: &str) -> Result<Option<SealedPairing>, StoreError>;
    /// The stored version of a user's pairing, or `None` if there is none: a cheap check that a
    /// cached pairing is still current.
    async fn version(&self, user_id: &str) -> Result<Option<i64>, StoreError>;
    /// Whether other processes write this store too (PostgreSQL): then a cached pairing is
    /// checked against the stored version before use.
    fn shared(&self) -> bool {
        false
    }
    /// Runs `work` while holding the user's refresh lock across every process using this store.
    /// The default, for a store one process owns, only runs it (`Pairings` holds a per-process
    /// lock around this).
    async fn locked<'a>(
        &'a self,
        _user_id: &'a str,
        work: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>,
    ) -> Result<(), StoreError> {
        work.await;
        Ok(())
    }
    /// Writes rows sealed elsewhere (a migration): new users are inserted, and a user's row is
    /// replaced only when the incoming one was refreshed later (so running a migration again
    /// just before a cut-over brings rotated tokens along). Returns how many rows were written.
    async fn import(&self, rows: Vec<SealedPairing>) -> Result<usize, StoreError>;
    /// Inserts, or replaces a user's pairing whole (re-pairing). `created_at` is kept on replace;
    /// the version is bumped. Returns the row as stored.
    async fn put(&self, row: SealedPairing) -> Result<SealedPairing, StoreError>;
    /// Writes `row` only if the stored version is still `expected_version`; returns the row as
    /// stored, or `None` if the row changed or went away meanwhile.
    async fn replace_if_version(
        &self,
        row: SealedPairing,
        expected_version: i64,
    ) -> Result<Option<SealedPairing>, StoreError>;
    /// Writes `row`'s key id and sealed tokens only, keeping the version, if the stored version
    /// is still `version`: a re-encryption under another key, which leaves the tokens as they
    /// were, so a refresh racing it (compare-and-swap on the same version) still wins.
    async fn reseal_if_version(&self, row: SealedPairing, version: i64)
        -> Result<bool, StoreError>;
    /// Up to `limit` rows with user ids after `after`, in user id order: for listing, re-keying
    /// and migrating, a page at a time.
    async fn page(
        &self,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<SealedPairing>, StoreError>;
    async fn delete(&self, user_id: &str) -> Result<bool, StoreError>;
    async fn delete_if_version(&self, user_id: &str, version: i64) -> Result<bool, StoreError>;
    /// Known-plaintext check values, one per key that ever sealed in this store.
    async fn key_checks(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    async fn add_key_check(&self, key_id: &str, check: Vec<u8>) -> Result<(), StoreError>;
    /// Whether any pairing is still sealed with `key_id` (an index look-up, not a scan).
    async fn key_in_use(&self, key_id: &str) -> Result<bool, StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Sealed, short-lived records found by the hash of a secret id (NHS login sessions, PKB pairing
/// states), and counters. One implementation per backend serves every record kind.
#[async_trait]
pub trait SealedRecords: Send + Sync + 'static {
    /// Inserts or replaces a record, and forgets records of its kind that expired before `now`.
    async fn put_record(
        &self,
        kind: RecordKind,
        record: SealedRecord,
        now: i64,
    ) -> Result<(), StoreError>;
    /// `put_record` for a record that belongs to `owner_hash` (the hash of a user id): then at
    /// most `keep` records of its kind belong to that owner, the newest; older ones go, in the
    /// same transaction, and one owner's puts are serialised across every process.
    async fn put_owned_record(
        &self,
        kind: RecordKind,
        record: SealedRecord,
        owner_hash: &[u8],
        keep: u32,
        now: i64,
    ) -> Result<(), StoreError>;
    /// The record, unless it expired at or before `now`.
    async fn get_record(
        &self,
        kind: RecordKind,
        id_hash: &[u8],
        now: i64,
    ) -> Result<Option<SealedRecord>, StoreError>;
    /// Removes and returns the record, expired or not (the caller tells the two apart): a record
    /// can be taken once.
    async fn take_record(
        &self,
        kind: RecordKind,
        id_hash: &[u8],
    ) -> Result<Option<SealedRecord>, StoreError>;
    /// Moves a live record's expiry; false if it is gone.
    async fn extend_record(
        &self,
        kind: RecordKind,
        id_hash: &[u8],
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError>;
    /// Replaces a live record's content (its expiry stays); false if it is gone, so a record
    /// deleted meanwhile is never brought back.
    async fn update_record(
        &self,
        kind: RecordKind,
        record: SealedRecord,
        now: i64,
    ) -> Result<bool, StoreError>;
    async fn delete_record(&self, kind: RecordKind, id_hash: &[u8]) -> Result<bool, StoreError>;
    /// Counts one more event for `id_hash` in a fixed window of `window_secs` that starts at its
    /// first event; returns the count in the current window (1 for the first). Atomic across
    /// every process using the store.
    async fn count_in_window(
        &self,
        kind: &str,
        id_hash: &[u8],
        now: i64,
        window_secs: i64,
    ) -> Result<i64, StoreError>;
}

/// A whole backend: both halves.
pub trait Backend: PairingRows + SealedRecords {}

impl<T: PairingRows + SealedRecords> Backend for T {}
