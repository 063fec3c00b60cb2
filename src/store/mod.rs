//! The token store: pairings of external users with their PKB tokens.
//!
//! `PairingStore` is the backend trait over *sealed* rows (SQLite here; PostgreSQL for several
//! instances); `Pairings` puts the keyring, the memory cache and the single-flight refresh in
//! front of it, and is what the use cases call. Nothing in here knows about PKB: a refresh is a
//! closure handed in by the caller.

mod backend;
pub mod crypto;
mod pairings;
pub mod postgres;
pub mod records;
pub mod sqlite;

use std::sync::Arc;

use crate::config::StoreSettings;
use crate::core::clock::Clock;
use crypto::Keyring;

pub use crate::config::redact_url;
pub use backend::{Backend, PairingRows, SealedRecords};
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

/// What a sealed record is (a table of its own in spirit; one table in fact).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    // (`login_state`, NHS login sign-ins in progress, is gone: a sign-in in progress travels
    // sealed in the browser's login cookie, so an anonymous request writes nothing. The schema
    // migration that came with it deleted the old rows.)
    /// A browser session signed in with NHS login.
    Session,
    /// A PKB pairing in progress: `state` → the user, the PKCE verifier and where to go
    /// afterwards. Single use.
    PairState,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Session => "session",
            RecordKind::PairState => "pair_state",
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
pub async fn open_backend(url: &str) -> Result<Arc<dyn Backend>, StoreError> {
    open_backend_with(url, &BackendOptions::default()).await
}

pub async fn open_backend_with(
    url: &str,
    options: &BackendOptions,
) -> Result<Arc<dyn Backend>, StoreError> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        return Ok(Arc::new(sqlite::SqlitePairingStore::open(path).await?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(
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
