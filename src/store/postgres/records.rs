//! Sealed records and counters in PostgreSQL: one table for every record kind.

use async_trait::async_trait;

use super::PostgresPairingStore;
use crate::store::{RecordKind, SealedRecord, SealedRecords, StoreError};

/// How long one owner's put waits for another put of the same owner.
const OWNER_LOCK_TIMEOUT: &str = "5s";

#[async_trait]
impl SealedRecords for PostgresPairingStore {
    async fn put_record(
        &self,
        kind: RecordKind,
        record: SealedRecord,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        tx.execute(
            "DELETE FROM records WHERE kind = $1 AND expires_at <= $2",
            &[&kind.as_str(), &now],
        )
        .await?;
        tx.execute(
            "INSERT INTO records (kind, id_hash, key_id, sealed, expires_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (kind, id_hash) DO UPDATE
             SET key_id = EXCLUDED.key_id, sealed = EXCLUDED.sealed, expires_at = EXCLUDED.expires_at",
            &[
                &kind.as_str(),
                &record.id_hash,
                &record.key_id,
                &record.sealed,
                &record.expires_at,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn put_owned_record(
        &self,
        kind: RecordKind,
        record: SealedRecord,
        owner_hash: &[u8],
        keep: u32,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        // One owner's puts, from every instance, one at a time: the count stays exact. A user
        // firing many at once waits at most OWNER_LOCK_TIMEOUT per put, so they cannot hold the
        // pool's connections for long.
        tx.batch_execute(&format!("SET LOCAL lock_timeout = '{OWNER_LOCK_TIMEOUT}'"))
            .await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&owner_lock(owner_hash)],
        )
        .await?;
        tx.execute(
            "DELETE FROM records WHERE kind = $1 AND expires_at <= $2",
            &[&kind.as_str(), &now],
        )
        .await?;
        tx.execute(
            "INSERT INTO records (kind, id_hash, key_id, sealed, expires_at, owner_hash, seq)
             VALUES ($1, $2, $3, $4, $5, $6,
               (SELECT COALESCE(MAX(seq), 0) + 1 FROM records WHERE kind = $1 AND owner_hash = $6))
             ON CONFLICT (kind, id_hash) DO UPDATE
             SET key_id = EXCLUDED.key_id, sealed = EXCLUDED.sealed, expires_at = EXCLUDED.expires_at,
                 owner_hash = EXCLUDED.owner_hash, seq = EXCLUDED.seq",
            &[
                &kind.as_str(),
                &record.id_hash,
                &record.key_id,
                &record.sealed,
                &record.expires_at,
                &owner_hash,
            ],
        )
        .await?;
        tx.execute(
            "DELETE FROM records WHERE kind = $1 AND owner_hash = $2 AND id_hash NOT IN
               (SELECT id_hash FROM records WHERE kind = $1 AND owner_hash = $2
                ORDER BY seq DESC LIMIT $3)",
            &[&kind.as_str(), &owner_hash, &i64::from(keep)],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_record(
        &self,
        kind: RecordKind,
        id_hash: &[u8],
        now: i64,
    ) -> Result<Option<SealedRecord>, StoreError> {
        let conn = self.conn().await?;
        let row = conn
            .query_opt(
                "SELECT id_hash, key_id, sealed, expires_at FROM records
                 WHERE kind = $1 AND id_hash = $2 AND expires_at > $3",
                &[&kind.as_str(), &id_hash, &now],
            )
            .await?;
        Ok(row.as_ref().map(read_record))
    }

    async fn take_record(
        &self,
        kind: RecordKind,
        id_hash: &[u8],
    ) -> Result<Option<SealedRecord>, StoreError> {
        let conn = self.conn().await?;
        let row = conn
            .query_opt(
                "DELETE FROM records WHERE kind = $1 AND id_hash = $2
                 RETURNING id_hash, key_id, sealed, expires_at",
                &[&kind.as_str(), &id_hash],
            )
            .await?;
        Ok(row.as_ref().map(read_record))
    }

    async fn extend_record(
        &self,
        kind: RecordKind,
        id_hash: &[u8],
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let conn = self.conn().await?;
        let n = conn
            .execute(
                "UPDATE records SET expires_at = $1
                 WHERE kind = $2 AND id_hash = $3 AND expires_at > $4",
                &[&expires_at, &kind.as_str(), &id_hash, &now],
            )
            .await?;
        Ok(n == 1)
    }

    async fn update_record(
        &self,
        kind: RecordKind,
        record: SealedRecord,
        now: i64,
    ) -> Result<bool, StoreError> {
        let conn = self.conn().await?;
        let n = conn
            .execute(
                "UPDATE records SET key_id = $1, sealed = $2
                 WHERE kind = $3 AND id_hash = $4 AND expires_at > $5",
                &[
                    &record.key_id,
                    &record.sealed,
                    &kind.as_str(),
                    &record.id_hash,
                    &now,
                ],
            )
            .await?;
        Ok(n == 1)
    }

    async fn delete_record(&self, kind: RecordKind, id_hash: &[u8]) -> Result<bool, StoreError> {
        let conn = self.conn().await?;
        let n = conn
            .execute(
                "DELETE FROM records WHERE kind = $1 AND id_hash = $2",
                &[&kind.as_str(), &id_hash],
            )
            .await?;
        Ok(n == 1)
    }

    async fn count_in_window(
        &self,
        kind: &str,
        id_hash: &[u8],
        now: i64,
        window_secs: i64,
    ) -> Result<i64, StoreError> {
        let conn = self.conn().await?;
        let row = conn
            .query_one(
                "INSERT INTO counters (kind, id_hash, window_start, count) VALUES ($1, $2, $3, 1)
                 ON CONFLICT (kind, id_hash) DO UPDATE SET
                   count = CASE WHEN counters.window_start <= $3 - $4 THEN 1 ELSE counters.count + 1 END,
                   window_start = CASE WHEN counters.window_start <= $3 - $4 THEN $3 ELSE counters.window_start END
                 RETURNING count",
                &[&kind, &id_hash, &now, &window_secs],
            )
            .await?;
        Ok(row.get(0))
    }
}

/// The advisory lock key of an owner's records: 64 bits of its (already hashed) id.
fn owner_lock(owner_hash: &[u8]) -> i64 {
    let mut key = [0u8; 8];
    for (k, b) in key.iter_mut().zip(owner_hash) {
        *k = *b;
    }
    i64::from_be_bytes(key)
}

fn read_record(r: &tokio_postgres::Row) -> SealedRecord {
    SealedRecord {
        id_hash: r.get(0),
        key_id: r.get(1),
        sealed: r.get(2),
        expires_at: r.get(3),
    }
}
