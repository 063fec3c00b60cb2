//! The embedded SQLite backend: one file, created on first start, schema versioned with
//! `PRAGMA user_version`. WAL mode, so the admin CLI can read while the proxy runs.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};

mod records;

use super::{PairingRows, SealedPairing, StoreError};

/// Each entry upgrades the schema by one version; never edit one that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: pairings and key checks.
    "CREATE TABLE pairings (
        user_id TEXT PRIMARY KEY NOT NULL,
        key_id TEXT NOT NULL,
        access_token BLOB NOT NULL,
        refresh_token BLOB,
        access_expires_at INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        refreshed_at INTEGER NOT NULL,
        version INTEGER NOT NULL
    );
    CREATE INDEX pairings_by_key ON pairings(key_id);
    CREATE TABLE key_checks (
        key_id TEXT PRIMARY KEY NOT NULL,
        check_value BLOB NOT NULL
    );",
    // 2: pairings in progress (OAuth state + PKCE verifier), single use. No longer written:
    // pairing states are sealed records (kind `pair_state`) now; kept so an older binary
    // rolled back to still finds it.
    "CREATE TABLE pair_states (
        state_hash BLOB PRIMARY KEY NOT NULL,
        user_id TEXT NOT NULL,
        key_id TEXT NOT NULL,
        verifier BLOB NOT NULL,
        return_to TEXT,
        expires_at INTEGER NOT NULL
    );
    CREATE INDEX pair_states_by_expiry ON pair_states(expires_at);",
    // 3: row versions from one counter, so a version is never reused (not even after a user
    // unpairs and pairs again), and a compare-and-swap can never match a different pairing.
    "CREATE TABLE version_counter (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
    INSERT INTO version_counter VALUES (1, (SELECT COALESCE(MAX(version), 0) FROM pairings));",
    // 4: short-lived sealed records for browser flows (NHS login states and sessions).
    "CREATE TABLE records (
        kind TEXT NOT NULL,
        id_hash BLOB NOT NULL,
        key_id TEXT NOT NULL,
        sealed BLOB NOT NULL,
        expires_at INTEGER NOT NULL,
        PRIMARY KEY (kind, id_hash)
    );
    CREATE INDEX records_by_expiry ON records(kind, expires_at);",
    // 5: per-user event counts in a window (GP credential refreshes), shared by instances.
    "CREATE TABLE counters (
        kind TEXT NOT NULL,
        id_hash BLOB NOT NULL,
        window_start INTEGER NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (kind, id_hash)
    );",
    // 6: NHS login sign-ins in progress travel sealed in the browser's cookie now; their old
    // rows (short-lived, never read again) go.
    "DELETE FROM records WHERE kind = 'login_state';",
    // 7: records that belong to a user (pairing states), numbered in the order they were put,
    // so a user keeps only the newest few. Existing rows belong to nobody and expire as before.
    "ALTER TABLE records ADD COLUMN owner_hash BLOB;
    ALTER TABLE records ADD COLUMN seq INTEGER;
    CREATE INDEX records_by_owner ON records(kind, owner_hash, seq) WHERE owner_hash IS NOT NULL;",
];

/// The next row version, inside the caller's transaction.
fn next_version(tx: &rusqlite::Transaction<'_>) -> Result<i64, StoreError> {
    Ok(tx.query_row(
        "UPDATE version_counter SET value = value + 1 WHERE id = 1 RETURNING value",
        [],
        |r| r.get(0),
    )?)
}

pub struct SqlitePairingStore {
    conn: Arc<Mutex<Connection>>,
    /// Query-only connections for the per-request point reads (a pairing, its version, a
    /// session), run on the caller's thread: see `read`.
    readers: Vec<Mutex<Connection>>,
    path: std::path::PathBuf,
}

/// Read-only connections beside the one that writes; more than the runtime's threads, so a
/// free one is almost always there.
const READERS: usize = 4;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

impl SqlitePairingStore {
    pub async fn open(path: &str) -> Result<Self, StoreError> {
        let path = std::path::PathBuf::from(path);
        let at = path.clone();
        let (conn, readers) = tokio::task::spawn_blocking(move || {
            let conn = Self::open_blocking(&at)?;
            let readers = (0..READERS)
                .map(|_| Self::open_reader(&at).map(Mutex::new))
                .collect::<Result<Vec<_>, StoreError>>()?;
            Ok::<_, StoreError>((conn, readers))
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))??;
        Ok(SqlitePairingStore {
            conn: Arc::new(Mutex::new(conn)),
            readers,
            path,
        })
    }

    fn open_blocking(path: &Path) -> Result<Connection, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(StoreError::Config(format!(
                    "store.url: directory {} does not exist",
                    dir.display()
                )));
            }
        }
        let mut conn = Connection::open(path).map_err(|e| {
            StoreError::Config(format!("store.url: cannot open {}: {e}", path.display()))
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        migrate(&mut conn)?;
        Ok(conn)
    }

    /// A query-only connection to the (already migrated) store.
    fn open_reader(path: &Path) -> Result<Connection, StoreError> {
        let conn = Connection::open(path).map_err(|e| {
            StoreError::Config(format!("store.url: cannot open {}: {e}", path.display()))
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "query_only", true)?;
        Ok(conn)
    }

    /// A point read on the calling thread, on a free read-only connection. An indexed look-up
    /// of a few cached pages takes microseconds: less than handing it to a blocking thread and
    /// back (two thread wake-ups), which is what a cold launch paid before. When every reader is
    /// busy, the read queues on the blocking pool like any other query.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        for reader in &self.readers {
            if let Some(conn) = reader.try_lock() {
                return f(&conn);
            }
        }
        self.with(move |c| f(c)).await
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&mut conn.lock()))
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if current as usize > MIGRATIONS.len() {
        return Err(StoreError::Config(format!(
            "store.url: the database is at schema version {current}, newer than this pkb-edge knows ({}); use a newer pkb-edge",
            MIGRATIONS.len()
        )));
    }
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (n + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

const COLUMNS: &str = "user_id, key_id, access_token, refresh_token, access_expires_at, created_at, refreshed_at, version";

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SealedPairing> {
    Ok(SealedPairing {
        user_id: r.get(0)?,
        key_id: r.get(1)?,
        access_token: r.get(2)?,
        refresh_token: r.get(3)?,
        access_expires_at: r.get(4)?,
        created_at: r.get(5)?,
        refreshed_at: r.get(6)?,
        version: r.get(7)?,
    })
}

fn select(conn: &Connection, user_id: &str) -> Result<Option<SealedPairing>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM pairings WHERE user_id = ?1"
    ))?;
    Ok(stmt.query_row([user_id], read_row).optional()?)
}

#[async_trait]
impl PairingRows for SqlitePairingStore {
    async fn get(&self, user_id: &str) -> Result<Option<SealedPairing>, StoreError> {
        let user_id = user_id.to_string();
        self.read(move |c| select(c, &user_id)).await
    }

    async fn version(&self, user_id: &str) -> Result<Option<i64>, StoreError> {
        let user_id = user_id.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached("SELECT version FROM pairings WHERE user_id = ?1")?;
            Ok(stmt.query_row([user_id], |r| r.get(0)).optional()?)
        })
        .await
    }

    async fn import(&self, rows: Vec<SealedPairing>) -> Result<usize, StoreError> {
        self.with(move |c| {
            let tx = c.transaction()?;
            let mut inserted = 0;
            {
                let mut stmt = tx.prepare_cached(&format!(
                    "INSERT INTO pairings ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT(user_id) DO UPDATE SET
                        key_id = excluded.key_id, access_token = excluded.access_token,
                        refresh_token = excluded.refresh_token,
                        access_expires_at = excluded.access_expires_at,
                        refreshed_at = excluded.refreshed_at, version = excluded.version
                     WHERE pairings.refreshed_at < excluded.refreshed_at"
                ))?;
                for row in &rows {
                    let version = next_version(&tx)?;
                    inserted += stmt.execute(params![
                        row.user_id,
                        row.key_id,
                        row.access_token,
                        row.refresh_token,
                        row.access_expires_at,
                        row.created_at,
                        row.refreshed_at,
                        version
                    ])?;
                }
            }
            tx.commit()?;
            Ok(inserted)
        })
        .await
    }

    async fn put(&self, row: SealedPairing) -> Result<SealedPairing, StoreError> {
        self.with(move |c| {
            let tx = c.transaction()?;
            let version = next_version(&tx)?;
            tx.execute(
                "INSERT INTO pairings (user_id, key_id, access_token, refresh_token, access_expires_at, created_at, refreshed_at, version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(user_id) DO UPDATE SET
                    key_id = excluded.key_id, access_token = excluded.access_token,
                    refresh_token = excluded.refresh_token, access_expires_at = excluded.access_expires_at,
                    refreshed_at = excluded.refreshed_at, version = excluded.version",
                params![row.user_id, row.key_id, row.access_token, row.refresh_token, row.access_expires_at, row.created_at, row.refreshed_at, version],
            )?;
            let stored = select(&tx, &row.user_id)?
                .ok_or_else(|| StoreError::Unavailable("row vanished inside its transaction".into()))?;
            tx.commit()?;
            Ok(stored)
        })
        .await
    }

    async fn replace_if_version(
        &self,
        row: SealedPairing,
        expected_version: i64,
    ) -> Result<Option<SealedPairing>, StoreError> {
        self.with(move |c| {
            let tx = c.transaction()?;
            let version = next_version(&tx)?;
            let changed = tx.execute(
                "UPDATE pairings SET key_id = ?2, access_token = ?3, refresh_token = ?4,
                    access_expires_at = ?5, refreshed_at = ?6, version = ?8
                 WHERE user_id = ?1 AND version = ?7",
                params![
                    row.user_id,
                    row.key_id,
                    row.access_token,
                    row.refresh_token,
                    row.access_expires_at,
                    row.refreshed_at,
                    expected_version,
                    version
                ],
            )?;
            let stored = if changed == 1 {
                select(&tx, &row.user_id)?
            } else {
                None
            };
            tx.commit()?;
            Ok(stored)
        })
        .await
    }

    async fn reseal_if_version(
        &self,
        row: SealedPairing,
        version: i64,
    ) -> Result<bool, StoreError> {
        self.with(move |c| {
            let changed = c.execute(
                "UPDATE pairings SET key_id = ?2, access_token = ?3, refresh_token = ?4
                 WHERE user_id = ?1 AND version = ?5",
                params![
                    row.user_id,
                    row.key_id,
                    row.access_token,
                    row.refresh_token,
                    version
                ],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn page(
        &self,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<SealedPairing>, StoreError> {
        self.with(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM pairings WHERE user_id > ?1 ORDER BY user_id LIMIT ?2"
            ))?;
            // User ids are never empty, so "after nothing" is "after the empty string".
            let rows = stmt.query_map(params![after.unwrap_or_default(), limit], read_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn delete(&self, user_id: &str) -> Result<bool, StoreError> {
        let user_id = user_id.to_string();
        self.with(move |c| {
            Ok(c.execute("DELETE FROM pairings WHERE user_id = ?1", [user_id])? == 1)
        })
        .await
    }

    async fn delete_if_version(&self, user_id: &str, version: i64) -> Result<bool, StoreError> {
        let user_id = user_id.to_string();
        self.with(move |c| {
            Ok(c.execute(
                "DELETE FROM pairings WHERE user_id = ?1 AND version = ?2",
                params![user_id, version],
            )? == 1)
        })
        .await
    }

    async fn key_checks(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT key_id, check_value FROM key_checks")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn add_key_check(&self, key_id: &str, check: Vec<u8>) -> Result<(), StoreError> {
        let key_id = key_id.to_string();
        self.with(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO key_checks (key_id, check_value) VALUES (?1, ?2)",
                params![key_id, check],
            )?;
            Ok(())
        })
        .await
    }

    async fn key_in_use(&self, key_id: &str) -> Result<bool, StoreError> {
        let key_id = key_id.to_string();
        self.with(move |c| {
            let mut stmt = c.prepare_cached("SELECT 1 FROM pairings WHERE key_id = ?1 LIMIT 1")?;
            Ok(stmt.exists([key_id])?)
        })
        .await
    }

    /// A read through the open connection, and a fresh read of the file's header: the open
    /// connection keeps working on a file that was deleted, replaced or made unreadable under it,
    /// and a restart would then find no store, so that is "not ready" too.
    async fn ping(&self) -> Result<(), StoreError> {
        let path = self.path.clone();
        self.with(move |c| {
            c.prepare_cached("SELECT 1 FROM pairings LIMIT 1")?
                .exists([])?;
            let mut header = [0u8; 16];
            std::fs::File::open(&path)
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header))
                .map_err(|e| {
                    StoreError::Unavailable(format!("cannot read {}: {e}", path.display()))
                })?;
            if &header != b"SQLite format 3\0" {
                return Err(StoreError::Unavailable(format!(
                    "{} is no longer an SQLite database",
                    path.display()
                )));
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store left by an older pkb-edge at schema `version`, with `rows` of (kind, expires_at)
    /// in `records`.
    fn older_store(path: &Path, version: usize, rows: &[(&str, i64)]) {
        let mut conn = Connection::open(path).unwrap();
        for sql in &MIGRATIONS[..version] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", version as i64)
            .unwrap();
        let tx = conn.transaction().unwrap();
        for (n, (kind, expires_at)) in rows.iter().enumerate() {
            tx.execute(
                "INSERT INTO records (kind, id_hash, key_id, sealed, expires_at)
                 VALUES (?1, ?2, 'k1', x'00', ?3)",
                params![kind, vec![n as u8; 32], expires_at],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }

    fn kinds(path: &Path) -> Vec<(String, i64)> {
        let conn = Connection::open(path).unwrap();
        let mut stmt = conn
            .prepare("SELECT kind, count(*) FROM records GROUP BY kind ORDER BY kind")
            .unwrap();
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }

    #[tokio::test]
    async fn upgrading_drops_old_login_states_and_keeps_everything_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let far = 4_000_000_000;
        older_store(
            &path,
            5,
            &[
                ("login_state", far),
                ("login_state", 1),
                ("session", far),
                ("pair_state", far),
            ],
        );
        SqlitePairingStore::open(path.to_str().unwrap())
            .await
            .unwrap();
        assert_eq!(
            kinds(&path),
            vec![("pair_state".to_string(), 1), ("session".to_string(), 1)]
        );
        let conn = Connection::open(&path).unwrap();
        let owned: i64 = conn
            .query_row(
                "SELECT count(*) FROM records WHERE owner_hash IS NOT NULL OR seq IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(owned, 0, "rows from before belong to nobody");
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version as usize, MIGRATIONS.len());
    }
}
