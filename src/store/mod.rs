//! The token store: pairings of external users with their PKB tokens.
//!
//! `PairingStore` is the backend trait over *sealed* rows (SQLite here; PostgreSQL for several
//! instances); `Pairings` puts the keyring, the memory cache and the single-flight refresh in
//! front of it, and is what the use cases call. Nothing in here knows about PKB: a refresh is a
//! closure handed in by the caller.

pub mod crypto;
mod pairings;
pub mod postgres;
pub mod records;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::StoreSettings;
use crate::core::clock::Clock;
use crypto::Keyring;

pub use pairings::{
    FreshError, PairState, Pairing, PairingInfo, Pairings, RefreshFailure, RekeyPage, TakenState,
    TokenSet,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or answered with an error.
    #[error("token store unavailable: {0}")]
    Unavailable(String),
    /// A stored value does not open with the configured keys. Never treated as "not paired":
    /// the row is left alone for an operator to look at.
    #[error("stored pairing cannot be decrypted: {0}")]
    Sealing(#[from] crypto::SealError),
    /// The configured keys do not fit the store (found at start-up).
    #[error("{0}")]
    Keys(String),
    #[error("{0}")]
    Config(String),
}

/// One row as the backend keeps it: tokens sealed, everything else plain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedPairing {
    pub user_id: String,
    pub key_id: String,
    pub access_token: Vec<u8>,
    pub refresh_token: Option<Vec<u8>>,
    pub access_expires_at: i64,
    pub created_at: i64,
    pub refreshed_at: i64,
    /// Bumped on every write; writes after a refresh are compare-and-swap on it.
    pub version: i64,
}

/// A pairing in progress: the OAuth `state` (stored only as its SHA-256), the user who started it,
/// the sealed PKCE verifier and where to go afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedPairState {
    pub state_hash: Vec<u8>,
    pub user_id: String,
    pub key_id: String,
    pub verifier: Vec<u8>,
    pub return_to: Option<String>,
    pub expires_at: i64,
}

/// What a sealed record is (a table of its own in spirit; one table in fact).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// An NHS login in progress: `state` → nonce and where to go afterwards. Single use.
    LoginState,
    /// A browser session signed in with NHS login.
    Session,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::LoginState => "login_state",
            RecordKind::Session => "session",
        }
    }
}

/// A short-lived record for browser flows, found by the SHA-256 of a secret id the browser holds
/// (so a copy of the database gives no usable cookie or `state`), its content sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedRecord {
    pub id_hash: Vec<u8>,
    pub key_id: String,
    pub sealed: Vec<u8>,
    /// Seconds since the epoch; the record is gone from then on.
    pub expires_at: i64,
}

#[async_trait]
pub trait PairingStore: Send + Sync + 'static {
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
    /// Records a pairing in progress, and forgets those that expired before `now`.
    async fn put_pair_state(&self, state: SealedPairState, now: i64) -> Result<(), StoreError>;
    /// Removes and returns the pairing in progress with this state hash: a state can be taken once.
    async fn take_pair_state(
        &self,
        state_hash: &[u8],
    ) -> Result<Option<SealedPairState>, StoreError>;
    /// Inserts or replaces a record, and forgets records of its kind that expired before `now`.
    async fn put_record(
        &self,
        kind: RecordKind,
        record: SealedRecord,
        now: i64,
    ) -> Result<(), StoreError>;
    /// The record, unless it expired at or before `now`.
    async fn get_record(
        &self,
        kind: RecordKind,
        id_hash: &[u8],
        now: i64,
    ) -> Result<Option<SealedRecord>, StoreError>;
    /// Removes and returns the record (unless expired): a record can be taken once.
    async fn take_record(
        &self,
        kind: RecordKind,
        id_hash: &[u8],
        now: i64,
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

/// How to reach a backend beyond its URL.
#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// PostgreSQL connections per pool (queries, and refresh locks).
    pub pool_size: usize,
    /// PEM CA certificates for the database's TLS; none: the public web PKI.
    pub tls_ca_file: Option<std::path::PathBuf>,
    pub password: Option<crate::core::secret::SecretText>,
    pub tls: postgres::TlsMode,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            pool_size: 16,
            tls_ca_file: None,
            password: None,
            tls: postgres::TlsMode::Prefer,
        }
    }
}

/// Opens the backend named by `store.url`.
pub async fn open_backend(url: &str) -> Result<std::sync::Arc<dyn PairingStore>, StoreError> {
    open_backend_with(url, &BackendOptions::default()).await
}

pub async fn open_backend_with(
    url: &str,
    options: &BackendOptions,
) -> Result<std::sync::Arc<dyn PairingStore>, StoreError> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        return Ok(std::sync::Arc::new(
            sqlite::SqlitePairingStore::open(path).await?,
        ));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(std::sync::Arc::new(
            postgres::PostgresPairingStore::open(&postgres::PostgresOptions {
                url: url.to_string(),
                pool_size: options.pool_size,
                ca_file: options.tls_ca_file.clone(),
                password: options.password.clone(),
                tls: options.tls,
            })
            .await?,
        ));
    }
    Err(StoreError::Config(format!(
        "store.url: `{}` is neither sqlite://PATH nor postgres://…",
        redact_url(url)
    )))
}

/// A database URL with any password replaced, for messages.
/// The configured keys, parsed (the config check already did once, so this fails only if the
/// config was built by hand).
pub fn keyring(settings: &StoreSettings) -> Result<Keyring, StoreError> {
    Keyring::new(&settings.keys)
        .map_err(|e| StoreError::Keys(format!("{}: {e}", settings.keys_source)))
}

/// Opens the token store named by the config, with its keys checked.
pub async fn open_pairings(
    settings: &StoreSettings,
    clock: Arc<dyn Clock>,
) -> Result<Arc<Pairings>, StoreError> {
    let keyring = keyring(settings)?;
    let backend = open_backend_with(
        &settings.url,
        &BackendOptions {
            pool_size: settings.pool_size,
            tls_ca_file: settings.tls_ca_file.clone(),
            password: settings.password.clone(),
            tls: settings.tls,
        },
    )
    .await?;
    Ok(Arc::new(
        Pairings::open(
            backend,
            keyring,
            settings.cache_capacity,
            settings.cache_ttl,
            clock,
        )
        .await?,
    ))
}

pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            if u.query_pairs().any(|(k, _)| k == "password") {
                let kept: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if k == "password" {
                            "***".into()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(kept);
            }
            u.to_string()
        }
        Err(_) => url.to_string(),
    }
}
