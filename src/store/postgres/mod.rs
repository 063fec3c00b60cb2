//! The PostgreSQL backend, for several pkb-edge instances sharing one store.
//!
//! Connections are pooled (deadpool); the pool makes them on demand in whatever runtime asks,
//! and replaces closed ones, so the store recovers by itself when the database comes back.
//! Migrations are versioned in `pkb_edge_schema` and applied at start-up under an advisory lock,
//! so instances starting together apply each one once.
//!
//! Cross-instance refresh: `locked` holds a transaction-scoped advisory lock keyed by the user
//! id around the whole refresh (re-read, PKB call, compare-and-swap write). It runs on a second
//! pool, so lock holders never starve the queries their own work needs. The lock dies with its
//! transaction: a crashed or cancelled refresher releases it.
//!
//! Row versions come from one sequence, so a version is never reused, not even by a user who
//! unpairs and pairs again: a cached pairing is current exactly when its version is the row's.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use sha2::{Digest, Sha256};

mod records;
mod tls;

use super::{PairingRows, SealedPairing, StoreError};
pub use crate::config::TlsMode;

/// Inserts a pairing row, or replaces a user's tokens (keeping `created_at`), with a new version.
const UPSERT: &str = "INSERT INTO pairings (user_id, key_id, access_token, refresh_token, access_expires_at, created_at, refreshed_at, version)
     VALUES ($1, $2, $3, $4, $5, $6, $7, nextval('pairing_versions'))
     ON CONFLICT (user_id) DO UPDATE SET
        key_id = excluded.key_id, access_token = excluded.access_token,
        refresh_token = excluded.refresh_token,
        access_expires_at = excluded.access_expires_at,
        refreshed_at = excluded.refreshed_at,
        version = nextval('pairing_versions')";

/// `UPSERT`'s parameters for `row`.
fn row_params(row: &SealedPairing) -> [&(dyn tokio_postgres::types::ToSql + Sync); 7] {
    [
        &row.user_id,
        &row.key_id,
        &row.access_token,
        &row.refresh_token,
        &row.access_expires_at,
        &row.created_at,
        &row.refreshed_at,
    ]
}

/// Each entry upgrades the schema by one version; never edit one that has shipped.
const MIGRATIONS: &[&str] = &[
    // (pair_states, in 1, is no longer written: pairing states are sealed records of kind
    // `pair_state` now. The table stays so an older binary rolled back to still finds it.)
    "CREATE SEQUENCE pairing_versions;
    CREATE TABLE pairings (
        user_id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        access_token BYTEA NOT NULL,
        refresh_token BYTEA,
        access_expires_at BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        refreshed_at BIGINT NOT NULL,
        version BIGINT NOT NULL
    );
    CREATE INDEX pairings_by_key ON pairings(key_id);
    CREATE TABLE key_checks (
        key_id TEXT PRIMARY KEY,
        check_value BYTEA NOT NULL
    );
    CREATE TABLE pair_states (
        state_hash BYTEA PRIMARY KEY,
        user_id TEXT NOT NULL,
        key_id TEXT NOT NULL,
        verifier BYTEA NOT NULL,
        return_to TEXT,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX pair_states_by_expiry ON pair_states(expires_at);",
    // 2: short-lived sealed records for browser flows (NHS login states and sessions).
    "CREATE TABLE records (
        kind TEXT NOT NULL,
        id_hash BYTEA NOT NULL,
        key_id TEXT NOT NULL,
        sealed BYTEA NOT NULL,
        expires_at BIGINT NOT NULL,
        PRIMARY KEY (kind, id_hash)
    );
    CREATE INDEX records_by_expiry ON records(kind, expires_at);",
    // 3: per-user event counts in a window (GP credential refreshes), shared by instances.
    "CREATE TABLE counters (
        kind TEXT NOT NULL,
        id_hash BYTEA NOT NULL,
        window_start BIGINT NOT NULL,
        count BIGINT NOT NULL,
        PRIMARY KEY (kind, id_hash)
    );",
    // 4: NHS login sign-ins in progress travel sealed in the browser's cookie now; their old
    // rows (short-lived, never read again) go.
    "DELETE FROM records WHERE kind = 'login_state';",
    // 5: records that belong to a user (pairing states), numbered in the order they were put,
    // so a user keeps only the newest few. Existing rows belong to nobody and expire as before;
    // nullable columns without a default, so the table is not rewritten.
    "ALTER TABLE records ADD COLUMN owner_hash BYTEA, ADD COLUMN seq BIGINT;
    CREATE INDEX records_by_owner ON records(kind, owner_hash, seq) WHERE owner_hash IS NOT NULL;",
];

/// The advisory lock that serialises migrations across instances starting together.
const MIGRATION_LOCK: i64 = 0x706b_625f_6564_6765; // "pkb_edge"

const COLUMNS: &str = "user_id, key_id, access_token, refresh_token, access_expires_at, created_at, refreshed_at, version";

/// How long a caller waits for a connection, and for a new one to be made, before the store
/// counts as unavailable: launches fail fast while the database is away.
const POOL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a refresh waits for another instance's refresh of the same user.
const LOCK_TIMEOUT: &str = "15s";

pub struct PostgresPairingStore {
    pool: Pool,
    /// Connections that hold refresh locks.
    lock_pool: Pool,
}

/// What `store.url` and its TLS settings resolve to.
pub struct PostgresOptions {
    pub url: String,
    pub pool_size: usize,
    /// PEM file with the CA(s) that sign the database's certificate; none: the public web PKI.
    pub ca_file: Option<std::path::PathBuf>,
    pub password: Option<crate::core::secret::SecretText>,
    pub tls: TlsMode,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The driver's Display hides the server's message; the source carries it.
        match e.as_db_error() {
            Some(db) => StoreError::Unavailable(format!("database: {}", db.message())),
            None => StoreError::Unavailable(format!("database: {e}")),
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            e => StoreError::Unavailable(format!("database: {e}")),
        }
    }
}

fn read_row(r: &tokio_postgres::Row) -> SealedPairing {
    SealedPairing {
        user_id: r.get(0),
        key_id: r.get(1),
        access_token: r.get(2),
        refresh_token: r.get(3),
        access_expires_at: r.get(4),
        created_at: r.get(5),
        refreshed_at: r.get(6),
        version: r.get(7),
    }
}

/// The advisory lock key of a user: 64 bits of SHA-256 over a namespaced id.
fn lock_key(user_id: &str) -> i64 {
    let digest = Sha256::digest(format!("pkb-edge refresh\0{user_id}").as_bytes());
    i64::from_be_bytes(digest[..8].try_into().unwrap_or([0; 8]))
}

impl PostgresPairingStore {
    /// Builds the pools (no connection is made yet) and applies the migrations.
    pub async fn open(options: &PostgresOptions) -> Result<Self, StoreError> {
        let mut config = tokio_postgres::Config::from_str(&options.url)
            .map_err(|e| StoreError::Config(format!("store.url: {e}")))?;
        if let Some(p) = &options.password {
            config.password(p.expose());
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(POOL_TIMEOUT);
        }
        // A database that vanishes without closing connections (a failover that drops packets)
        // must not hang queries for the kernel's quarter of an hour: unacknowledged data for
        // 10 s, or 30 s of silence unanswered by keepalives, closes the connection, and the pool
        // makes a new one.
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(Duration::from_secs(10));
        }
        if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            config.keepalives_idle(Duration::from_secs(30));
        }
        if config.get_application_name().is_none() {
            config.application_name("pkb-edge");
        }
        config.ssl_mode(match options.tls {
            TlsMode::Disable => tokio_postgres::config::SslMode::Disable,
            TlsMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            TlsMode::Verify => tokio_postgres::config::SslMode::Require,
        });
        let tls = tls::tls(options.tls, options.ca_file.as_deref())?;
        let pool = |size: usize| {
            let manager = Manager::from_config(
                config.clone(),
                tls.clone(),
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            );
            Pool::builder(manager)
                .max_size(size)
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(POOL_TIMEOUT))
                .create_timeout(Some(POOL_TIMEOUT))
                .recycle_timeout(Some(POOL_TIMEOUT))
                .build()
                .map_err(|e| StoreError::Config(format!("store.url: {e}")))
        };
        let store = PostgresPairingStore {
            pool: pool(options.pool_size)?,
            lock_pool: pool(options.pool_size)?,
        };
        store.migrate().await.map_err(|e| match e {
            StoreError::Unavailable(why) => {
                StoreError::Config(format!("store.url: cannot prepare the database: {why}"))
            }
            other => other,
        })?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS pkb_edge_schema (version INTEGER NOT NULL);")
            .await?;
        let current: i32 = tx
            .query_opt("SELECT max(version) FROM pkb_edge_schema", &[])
            .await?
            .and_then(|r| r.get::<_, Option<i32>>(0))
            .unwrap_or(0);
        if current as usize > MIGRATIONS.len() {
            return Err(StoreError::Config(format!(
                "store.url: the database is at schema version {current}, newer than this pkb-edge knows ({}); use a newer pkb-edge",
                MIGRATIONS.len()
            )));
        }
        for (n, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO pkb_edge_schema (version) VALUES ($1)",
                &[&((n + 1) as i32)],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn conn(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.pool.get().await?)
    }
}

#[async_trait]
impl PairingRows for PostgresPairingStore {
    async fn get(&self, user_id: &str) -> Result<Option<SealedPairing>, StoreError> {
        let conn = self.conn().await?;
        let stmt = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM pairings WHERE user_id = $1"
            ))
            .await?;
        Ok(conn
            .query_opt(&stmt, &[&user_id])
            .await?
            .as_ref()
            .map(read_row))
    }

    async fn version(&self, user_id: &str) -> Result<Option<i64>, StoreError> {
        let conn = self.conn().await?;
        let stmt = conn
            .prepare_cached("SELECT version FROM pairings WHERE user_id = $1")
            .await?;
        Ok(conn.query_opt(&stmt, &[&user_id]).await?.map(|r| r.get(0)))
    }

    fn shared(&self) -> bool {
        true
    }

    async fn put(&self, row: SealedPairing) -> Result<SealedPairing, StoreError> {
        let conn = self.conn().await?;
        let stored = conn
            .query_one(&format!("{UPSERT} RETURNING {COLUMNS}"), &row_params(&row))
            .await?;
        Ok(read_row(&stored))
    }

    async fn replace_if_version(
        &self,
        row: SealedPairing,
        expected_version: i64,
    ) -> Result<Option<SealedPairing>, StoreError> {
        let conn = self.conn().await?;
        let stored = conn
            .query_opt(
                &format!(
                    "UPDATE pairings SET key_id = $2, access_token = $3, refresh_token = $4,
                        access_expires_at = $5, refreshed_at = $6,
                        version = nextval('pairing_versions')
                     WHERE user_id = $1 AND version = $7
                     RETURNING {COLUMNS}"
                ),
                &[
                    &row.user_id,
                    &row.key_id,
                    &row.access_token,
                    &row.refresh_token,
                    &row.access_expires_at,
                    &row.refreshed_at,
                    &expected_version,
                ],
            )
            .await?;
        Ok(stored.as_ref().map(read_row))
    }

    async fn reseal_if_version(
        &self,
        row: SealedPairing,
        version: i64,
    ) -> Result<bool, StoreError> {
        let conn = self.conn().await?;
        let changed = conn
            .execute(
                "UPDATE pairings SET key_id = $2, access_token = $3, refresh_token = $4
                 WHERE user_id = $1 AND version = $5",
                &[
                    &row.user_id,
                    &row.key_id,
                    &row.access_token,
                    &row.refresh_token,
                    &version,
                ],
            )
            .await?;
        Ok(changed == 1)
    }

    async fn page(
        &self,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<SealedPairing>, StoreError> {
        let conn = self.conn().await?;
        let rows = conn
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM pairings WHERE user_id > $1 ORDER BY user_id LIMIT $2"
                ),
                &[&after.unwrap_or_default(), &i64::from(limit)],
            )
            .await?;
        Ok(rows.iter().map(read_row).collect())
    }

    async fn import(&self, rows: Vec<SealedPairing>) -> Result<usize, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let stmt = tx
            .prepare(&format!(
                "{UPSERT} WHERE pairings.refreshed_at < excluded.refreshed_at"
            ))
            .await?;
        let mut inserted = 0;
        for row in &rows {
            inserted += tx.execute(&stmt, &row_params(row)).await? as usize;
        }
        tx.commit().await?;
        Ok(inserted)
    }

    async fn delete(&self, user_id: &str) -> Result<bool, StoreError> {
        let conn = self.conn().await?;
        Ok(conn
            .execute("DELETE FROM pairings WHERE user_id = $1", &[&user_id])
            .await?
            == 1)
    }

    async fn delete_if_version(&self, user_id: &str, version: i64) -> Result<bool, StoreError> {
        let conn = self.conn().await?;
        Ok(conn
            .execute(
                "DELETE FROM pairings WHERE user_id = $1 AND version = $2",
                &[&user_id, &version],
            )
            .await?
            == 1)
    }

    async fn key_checks(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let conn = self.conn().await?;
        let rows = conn
            .query("SELECT key_id, check_value FROM key_checks", &[])
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn add_key_check(&self, key_id: &str, check: Vec<u8>) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        conn.execute(
            "INSERT INTO key_checks (key_id, check_value) VALUES ($1, $2) ON CONFLICT (key_id) DO NOTHING",
            &[&key_id, &check],
        )
        .await?;
        Ok(())
    }

    async fn key_in_use(&self, key_id: &str) -> Result<bool, StoreError> {
        let conn = self.conn().await?;
        Ok(conn
            .query_opt(
                "SELECT 1 FROM pairings WHERE key_id = $1 LIMIT 1",
                &[&key_id],
            )
            .await?
            .is_some())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        conn.query_opt("SELECT 1 FROM pairings LIMIT 1", &[])
            .await?;
        Ok(())
    }

    async fn locked<'a>(
        &'a self,
        user_id: &'a str,
        work: Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
    ) -> Result<(), StoreError> {
        let mut conn = self.lock_pool.get().await?;
        let tx = conn.transaction().await?;
        tx.batch_execute(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            .await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key(user_id)])
            .await
            .map_err(|e| unavailable(format!("refresh lock: {e}")))?;
        work.await;
        // Committing ends the transaction and with it the lock. If this fails, the connection
        // is gone, and the lock went with it.
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        assert_eq!(lock_key("dr.jones"), lock_key("dr.jones"));
        assert_ne!(lock_key("dr.jones"), lock_key("dr.jones2"));
    }
}
