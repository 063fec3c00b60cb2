//! The token store: pairings of external users with their PKB tokens.
//!
//! `PairingStore` is the backend trait over *sealed* rows (SQLite here; PostgreSQL for several
//! instances); `Pairings` puts the keyring, the memory cache and the single-flight refresh in
//! front of it, and is what the use cases call. Nothing in here knows about PKB: a refresh is a
//! closure handed in by the caller.

pub mod crypto;
mod pairings;
pub mod sqlite;

use async_trait::async_trait;

pub use pairings::{
    FreshError, PairState, Pairing, Pairings, RefreshFailure, TakenState, TokenSet,
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

#[async_trait]
pub trait PairingStore: Send + Sync + 'static {
    async fn get(&self, user_id: &str) -> Result<Option<SealedPairing>, StoreError>;
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
}

/// Opens the backend named by `store.url`.
pub async fn open_backend(url: &str) -> Result<std::sync::Arc<dyn PairingStore>, StoreError> {
    match url.strip_prefix("sqlite://") {
        Some(path) => Ok(std::sync::Arc::new(
            sqlite::SqlitePairingStore::open(path).await?,
        )),
        None => Err(StoreError::Config(format!(
            "store.url: `{url}` is not a sqlite:// URL"
        ))),
    }
}
