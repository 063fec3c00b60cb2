//! Sealed records and counters in SQLite: one table for every record kind.

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

use super::SqlitePairingStore;
use crate::store::{RecordKind, SealedRecord, SealedRecords, StoreError};

#[async_trait]
impl SealedRecords for SqlitePairingStore {
    async fn put_record(
        &self,
        kind: RecordKind,
        record: SealedRecord,
        now: i64,
    ) -> Result<(), StoreError> {
        self.with(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "DELETE FROM records WHERE kind = ?1 AND expires_at <= ?2",
                params![kind.as_str(), now],
            )?;
            tx.execute(
                "INSERT OR REPLACE INTO records (kind, id_hash, key_id, sealed, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    kind.as_str(),
                    record.id_hash,
                    record.key_id,
                    record.sealed,
                    record.expires_at
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn put_owned_record(
        &self,
        kind: RecordKind,
        record: SealedRecord,
        owner_hash: &[u8],
        keep: u32,
        now: i64,
    ) -> Result<(), StoreError> {
        let owner_hash = owner_hash.to_vec();
        // One connection writes, so one owner's puts never interleave.
        self.with(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "DELETE FROM records WHERE kind = ?1 AND expires_at <= ?2",
                params![kind.as_str(), now],
            )?;
            tx.execute(
                "INSERT OR REPLACE INTO records (kind, id_hash, key_id, sealed, expires_at, owner_hash, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6,
                   (SELECT COALESCE(MAX(seq), 0) + 1 FROM records WHERE kind = ?1 AND owner_hash = ?6))",
                params![
                    kind.as_str(),
                    record.id_hash,
                    record.key_id,
                    record.sealed,
                    record.expires_at,
                    owner_hash
                ],
            )?;
            tx.execute(
                "DELETE FROM records WHERE kind = ?1 AND owner_hash = ?2 AND id_hash NOT IN
                   (SELECT id_hash FROM records WHERE kind = ?1 AND owner_hash = ?2
                    ORDER BY seq DESC LIMIT ?3)",
                params![kind.as_str(), owner_hash, keep],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn get_record(
        &self,
        kind: RecordKind,
        id_hash: &[u8],
        now: i64,
    ) -> Result<Option<SealedRecord>, StoreError> {
        let id_hash = id_hash.to_vec();
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT id_hash, key_id, sealed, expires_at FROM records
                 WHERE kind = ?1 AND id_hash = ?2 AND expires_at > ?3",
            )?
            .query_row(params![kind.as_str(), id_hash, now], read_record)
            .optional()?)
        })
        .await
    }

    async fn take_record(
        &self,
        kind: RecordKind,
        id_hash: &[u8],
    ) -> Result<Option<SealedRecord>, StoreError> {
        let id_hash = id_hash.to_vec();
        self.with(move |c| {
            let taken = c
                .prepare_cached(
                    "DELETE FROM records WHERE kind = ?1 AND id_hash = ?2
                     RETURNING id_hash, key_id, sealed, expires_at",
                )?
                .query_row(params![kind.as_str(), id_hash], read_record)
                .optional()?;
            Ok(taken)
        })
        .await
    }

    async fn extend_record(
        &self,
        kind: RecordKind,
        id_hash: &[u8],
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let id_hash = id_hash.to_vec();
        self.with(move |c| {
            Ok(c.prepare_cached(
                "UPDATE records SET expires_at = ?1
                 WHERE kind = ?2 AND id_hash = ?3 AND expires_at > ?4",
            )?
            .execute(params![expires_at, kind.as_str(), id_hash, now])?
                == 1)
        })
        .await
    }

    async fn update_record(
        &self,
        kind: RecordKind,
        record: SealedRecord,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.with(move |c| {
            Ok(c.prepare_cached(
                "UPDATE records SET key_id = ?1, sealed = ?2
                 WHERE kind = ?3 AND id_hash = ?4 AND expires_at > ?5",
            )?
            .execute(params![
                record.key_id,
                record.sealed,
                kind.as_str(),
                record.id_hash,
                now
            ])? == 1)
        })
        .await
    }

    async fn delete_record(&self, kind: RecordKind, id_hash: &[u8]) -> Result<bool, StoreError> {
        let id_hash = id_hash.to_vec();
        self.with(move |c| {
            Ok(
                c.prepare_cached("DELETE FROM records WHERE kind = ?1 AND id_hash = ?2")?
                    .execute(params![kind.as_str(), id_hash])?
                    == 1,
            )
        })
        .await
    }

    async fn count_in_window(
        &self,
        kind: &str,
        id_hash: &[u8],
        now: i64,
        window_secs: i64,
    ) -> Result<i64, StoreError> {
        let (kind, id_hash) = (kind.to_string(), id_hash.to_vec());
        self.with(move |c| {
            Ok(c.prepare_cached(
                "INSERT INTO counters (kind, id_hash, window_start, count) VALUES (?1, ?2, ?3, 1)
                 ON CONFLICT (kind, id_hash) DO UPDATE SET
                   count = CASE WHEN counters.window_start <= ?3 - ?4 THEN 1 ELSE counters.count + 1 END,
                   window_start = CASE WHEN counters.window_start <= ?3 - ?4 THEN ?3 ELSE counters.window_start END
                 RETURNING count",
            )?
            .query_row(params![kind, id_hash, now, window_secs], |r| r.get(0))?)
        })
        .await
    }
}

fn read_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<SealedRecord> {
    Ok(SealedRecord {
        id_hash: r.get(0)?,
        key_id: r.get(1)?,
        sealed: r.get(2)?,
        expires_at: r.get(3)?,
    })
}
