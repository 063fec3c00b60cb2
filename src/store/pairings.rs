//! `Pairings`: sealing, the memory cache and the one-refresh-per-user rule, over a backend.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use moka::future::Cache;
use tracing::Instrument;

use super::crypto::{Keyring, SealError};
use super::records::{Records, Taken};
use super::{Backend, RecordKind, SealedPairing, StoreError};
use crate::core::clock::Clock;
use crate::core::secret::{AccessToken, CodeVerifier, RefreshToken};

/// The plaintext these check values carry; a key that opens it is the key that sealed it.
const KEY_CHECK_PLAINTEXT: &[u8] = b"pkb-edge key check v1";
const KEY_CHECK_AAD: &[u8] = b"key-check";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSet {
    pub access_token: AccessToken,
    pub refresh_token: Option<RefreshToken>,
    /// Unix seconds.
    pub access_expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pairing {
    pub user_id: String,
    pub tokens: TokenSet,
    pub created_at: i64,
    pub refreshed_at: i64,
    pub version: i64,
}

/// A pairing as `pkb-edge pairings list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingInfo {
    pub user_id: String,
    pub key_id: String,
    pub created_at: i64,
    pub refreshed_at: i64,
    pub access_expires_at: i64,
}

/// What one page of `Pairings::rekey_page` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RekeyPage {
    pub scanned: usize,
    pub rekeyed: usize,
    /// Already sealed with the first key.
    pub already: usize,
    /// Written by someone else between the read and the rewrite; the next run takes them.
    pub changed: usize,
    /// The last user id of the page, to continue after.
    pub last: Option<String>,
}

/// A pairing in progress, as `Pairings::take_pair_state` hands it back. `Debug` hides the
/// verifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairState {
    pub user_id: String,
    pub code_verifier: CodeVerifier,
    pub return_to: Option<String>,
    pub expires_at: i64,
}

/// A pairing state as sealed in the store.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredPairState {
    user_id: String,
    code_verifier: String,
    return_to: Option<String>,
}

/// What taking a state found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TakenState {
    /// Unknown, or already used: the two are indistinguishable once a state is taken.
    Unknown,
    Expired,
    Valid(PairState),
}

/// What a refresh closure reports when it fails.
#[derive(Debug)]
pub enum RefreshFailure<E> {
    /// The grant is dead (`invalid_grant`): the pairing must go, if nobody replaced it meanwhile.
    GrantRejected,
    /// Anything else (PKB unreachable…): the pairing is kept.
    Other(E),
}

#[derive(Debug, thiserror::Error)]
pub enum FreshError<E> {
    #[error("not paired")]
    NotPaired,
    /// The pairing was deleted because its grant is dead; the user must link again.
    #[error("pairing revoked")]
    Revoked,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("refresh failed")]
    Refresh(E),
}

pub struct Pairings {
    backend: Arc<dyn Backend>,
    keyring: Arc<Keyring>,
    cache: Cache<String, Arc<Pairing>>,
    locks: UserLocks,
    clock: Arc<dyn Clock>,
}

impl Pairings {
    /// Checks the keys against the store before anything else: a store sealed with a key that is
    /// not configured, or with different material under the same id, is a start-up error.
    pub async fn open(
        backend: Arc<dyn Backend>,
        keyring: Keyring,
        cache_capacity: u64,
        cache_ttl: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Pairings, StoreError> {
        for (key_id, check) in backend.key_checks().await? {
            if keyring.has(&key_id) {
                if keyring.open(&key_id, &check, KEY_CHECK_AAD).is_err() {
                    return Err(StoreError::Keys(format!(
                        "key `{key_id}` is configured with different material than the key that sealed this store's pairings; restore the original key"
                    )));
                }
            } else if backend.key_in_use(&key_id).await? {
                return Err(StoreError::Keys(format!(
                    "pairings in the store are sealed with key `{key_id}`, which is not configured (configured: {}); add it back to the keys",
                    keyring.ids().join(", ")
                )));
            }
        }
        let check = keyring.seal(KEY_CHECK_PLAINTEXT, KEY_CHECK_AAD);
        backend.add_key_check(keyring.primary_id(), check).await?;
        Ok(Pairings {
            backend,
            keyring: Arc::new(keyring),
            cache: Cache::builder()
                .max_capacity(cache_capacity)
                .time_to_live(cache_ttl)
                .build(),
            locks: UserLocks::default(),
            clock,
        })
    }

    /// The user's pairing, from the cache or the store. With a store other processes write
    /// too, a cached pairing is used only while its version is still the stored one (one
    /// indexed look-up), so an unpairing, revocation or refresh anywhere is seen at once.
    pub async fn get(&self, user_id: &str) -> Result<Option<Arc<Pairing>>, StoreError> {
        let counted = &crate::observe::metrics::metrics().token_cache_total;
        if let Some(p) = self.cache.get(user_id).await {
            if self.backend.shared() {
                match self.backend.version(user_id).await? {
                    Some(v) if v == p.version => {}
                    Some(_) => {
                        counted.with_label_values(&["stale"]).inc();
                        return self.load(user_id).await;
                    }
                    None => {
                        counted.with_label_values(&["stale"]).inc();
                        self.cache.invalidate(user_id).await;
                        return Ok(None);
                    }
                }
            }
            counted.with_label_values(&["hit"]).inc();
            return Ok(Some(p));
        }
        counted.with_label_values(&["miss"]).inc();
        self.load(user_id).await
    }

    /// Reads the store, bypassing (and then refilling) the cache.
    async fn load(&self, user_id: &str) -> Result<Option<Arc<Pairing>>, StoreError> {
        match self.backend.get(user_id).await? {
            Some(row) => Ok(Some(self.remember(self.unseal(row)?).await)),
            None => {
                self.cache.invalidate(user_id).await;
                Ok(None)
            }
        }
    }

    async fn remember(&self, pairing: Pairing) -> Arc<Pairing> {
        let pairing = Arc::new(pairing);
        self.cache
            .insert(pairing.user_id.clone(), pairing.clone())
            .await;
        pairing
    }

    /// Stores a new pairing, replacing any old one for the user whole.
    pub async fn save(&self, user_id: &str, tokens: TokenSet) -> Result<Arc<Pairing>, StoreError> {
        let now = self.clock.now();
        let row = self.seal(user_id, &tokens, now, now, 0);
        let stored = self.backend.put(row).await?;
        Ok(self.remember(self.unseal(stored)?).await)
    }

    /// Stores many new pairings at once (seeding, bulk loads), skipping users that already
    /// have one. Returns how many were stored.
    pub async fn import_tokens(
        &self,
        pairings: &[(String, TokenSet)],
    ) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let rows = pairings
            .iter()
            .map(|(user, tokens)| self.seal(user, tokens, now, now, 1))
            .collect();
        self.backend.import(rows).await
    }

    pub async fn remove(&self, user_id: &str) -> Result<bool, StoreError> {
        let removed = self.backend.delete(user_id).await;
        self.cache.invalidate(user_id).await;
        removed
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.backend.ping().await
    }

    /// What an operator may see of up to `limit` pairings after `after` (never a token).
    pub async fn list_page(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<PairingInfo>, StoreError> {
        let rows = self.backend.page(after.map(str::to_string), limit).await?;
        Ok(rows
            .into_iter()
            .map(|r| PairingInfo {
                user_id: r.user_id,
                key_id: r.key_id,
                created_at: r.created_at,
                refreshed_at: r.refreshed_at,
                access_expires_at: r.access_expires_at,
            })
            .collect())
    }

    /// Opens every row of one page with the configured keys, failing on the first that does not
    /// open. Returns how many rows it checked and the last user id.
    pub async fn verify_page(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(usize, Option<String>), StoreError> {
        let rows = self.backend.page(after.map(str::to_string), limit).await?;
        let last = rows.last().map(|r| r.user_id.clone());
        let count = rows.len();
        for row in rows {
            let user = row.user_id.clone();
            self.unseal(row).map_err(|e| match e {
                StoreError::Sealing(e) => StoreError::Keys(format!("pairing of `{user}`: {e}")),
                other => other,
            })?;
        }
        Ok((count, last))
    }

    /// The short-lived sealed records (NHS login states and sessions, pairing states) in the
    /// same store, under the same keys.
    pub fn records(&self) -> Records {
        Records::new(
            self.backend.clone(),
            self.keyring.clone(),
            self.clock.clone(),
        )
    }

    /// The backend itself, for copying sealed rows between stores.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Re-encrypts, under the first configured key, the rows of one page that are sealed with
    /// another key. Each row is rewritten on its own, compare-and-swap on its version and without
    /// bumping it, so an interruption loses nothing and a refresh racing it wins; run again to
    /// pick up what changed meanwhile.
    pub async fn rekey_page(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<RekeyPage, StoreError> {
        let rows = self.backend.page(after.map(str::to_string), limit).await?;
        let mut page = RekeyPage {
            scanned: rows.len(),
            last: rows.last().map(|r| r.user_id.clone()),
            ..RekeyPage::default()
        };
        for row in rows {
            if row.key_id == self.keyring.primary_id() {
                page.already += 1;
                continue;
            }
            let version = row.version;
            let pairing = self.unseal(row)?;
            let resealed = self.seal(
                &pairing.user_id,
                &pairing.tokens,
                pairing.created_at,
                pairing.refreshed_at,
                version,
            );
            if self.backend.reseal_if_version(resealed, version).await? {
                page.rekeyed += 1;
            } else {
                page.changed += 1;
            }
        }
        Ok(page)
    }

    /// The user's pairing with an access token valid for at least `skew_secs` more, refreshing it
    /// with `refresh` when needed. `stale_version`: the caller saw PKB reject the access token of
    /// that version, so refresh it even if its clock says it is still valid.
    ///
    /// At most one refresh per user runs at a time in this process: concurrent callers wait on a
    /// per-user lock and then find the refreshed tokens. A refresh token is spent once; the result
    /// is written compare-and-swap on the row version, and a rejected grant deletes the row only
    /// if it is still the version that was refreshed.
    ///
    /// The refresh runs in a task of its own: if the caller goes away (the browser disconnects, a
    /// deadline passes) after PKB has rotated the refresh token, the new one is still stored.
    pub async fn fresh<E, F, Fut>(
        self: &Arc<Self>,
        user_id: &str,
        skew_secs: i64,
        stale_version: Option<i64>,
        refresh: F,
    ) -> Result<Arc<Pairing>, FreshError<E>>
    where
        E: Send + 'static,
        F: FnOnce(TokenSet) -> Fut + Send + 'static,
        Fut: Future<Output = Result<TokenSet, RefreshFailure<E>>> + Send + 'static,
    {
        let pairing = self.get(user_id).await?.ok_or(FreshError::NotPaired)?;
        if !needs_refresh(&pairing, self.clock.now(), skew_secs, stale_version) {
            return Ok(pairing);
        }
        let this = self.clone();
        let user_id = user_id.to_string();
        tokio::spawn(
            async move {
                this.refresh_serialized(&user_id, skew_secs, stale_version, refresh)
                    .await
            }
            .in_current_span(),
        )
        .await
        .map_err(|e| {
            FreshError::Store(StoreError::Unavailable(format!("refresh task failed: {e}")))
        })?
    }

    async fn refresh_serialized<E, F, Fut>(
        &self,
        user_id: &str,
        skew_secs: i64,
        stale_version: Option<i64>,
        refresh: F,
    ) -> Result<Arc<Pairing>, FreshError<E>>
    where
        E: Send,
        F: FnOnce(TokenSet) -> Fut + Send,
        Fut: Future<Output = Result<TokenSet, RefreshFailure<E>>> + Send,
    {
        let lock = self.locks.for_user(user_id);
        let _held = lock.lock().await;
        // And across processes sharing the store.
        let mut outcome = None;
        let work = async {
            outcome = Some(
                self.refresh_locked(user_id, skew_secs, stale_version, refresh)
                    .await,
            );
        };
        let locked = self.backend.locked(user_id, Box::pin(work)).await;
        // The refresh's own result stands even if releasing the lock failed afterwards (the
        // tokens are stored by then); a lock that could not be taken is the store's failure.
        if let (Some(_), Err(e)) = (&outcome, &locked) {
            tracing::warn!(error = %e, "releasing the refresh lock failed after the refresh");
        }
        if outcome.is_none() {
            locked?;
        }
        outcome.unwrap_or_else(|| {
            Err(FreshError::Store(StoreError::Unavailable(
                "the refresh lock was released before the refresh ran".into(),
            )))
        })
    }

    async fn refresh_locked<E, F, Fut>(
        &self,
        user_id: &str,
        skew_secs: i64,
        stale_version: Option<i64>,
        refresh: F,
    ) -> Result<Arc<Pairing>, FreshError<E>>
    where
        E: Send,
        F: FnOnce(TokenSet) -> Fut + Send,
        Fut: Future<Output = Result<TokenSet, RefreshFailure<E>>> + Send,
    {
        // Whoever held the lock before us may have refreshed already: the store is the truth.
        let pairing = self.load(user_id).await?.ok_or(FreshError::NotPaired)?;
        let now = self.clock.now();
        if !needs_refresh(&pairing, now, skew_secs, stale_version) {
            return Ok(pairing);
        }
        if pairing.tokens.refresh_token.is_none() {
            return self.drop_dead(&pairing).await;
        }
        match refresh(pairing.tokens.clone()).await {
            Ok(tokens) => {
                let row = self.seal(user_id, &tokens, pairing.created_at, now, pairing.version);
                // PKB has rotated the refresh token: the new one exists nowhere but here until
                // this write lands, so a store hiccup is retried rather than lose the pairing.
                let mut retries = 0u32;
                let written = loop {
                    match self
                        .backend
                        .replace_if_version(row.clone(), pairing.version)
                        .await
                    {
                        Err(StoreError::Unavailable(why)) if retries < 4 => {
                            retries += 1;
                            tracing::warn!(error = %why, retries, "storing refreshed tokens failed; retrying");
                            tokio::time::sleep(Duration::from_millis(250 * u64::from(retries)))
                                .await;
                        }
                        other => break other?,
                    }
                };
                match written {
                    Some(stored) => Ok(self.remember(self.unseal(stored)?).await),
                    // Re-paired or unpaired while we refreshed: that newer decision stands.
                    None => self.load(user_id).await?.ok_or(FreshError::NotPaired),
                }
            }
            Err(RefreshFailure::GrantRejected) => self.drop_dead(&pairing).await,
            Err(RefreshFailure::Other(e)) => Err(FreshError::Refresh(e)),
        }
    }

    /// Records a pairing in progress: a sealed record found by the hash of `state`.
    pub async fn put_pair_state(&self, state: &str, pending: &PairState) -> Result<(), StoreError> {
        let stored = StoredPairState {
            user_id: pending.user_id.clone(),
            code_verifier: pending.code_verifier.expose().to_string(),
            return_to: pending.return_to.clone(),
        };
        self.records()
            .put(RecordKind::PairState, state, &stored, pending.expires_at)
            .await
    }

    /// Takes the pairing in progress for `state`: whatever the answer, the state is spent.
    pub async fn take_pair_state(&self, state: &str) -> Result<TakenState, StoreError> {
        let taken = self
            .records()
            .take_checked::<StoredPairState>(RecordKind::PairState, state)
            .await?;
        Ok(match taken {
            Taken::Absent => TakenState::Unknown,
            Taken::Expired => TakenState::Expired,
            Taken::Valid(record) => TakenState::Valid(PairState {
                user_id: record.value.user_id,
                code_verifier: CodeVerifier::new(record.value.code_verifier),
                return_to: record.value.return_to,
                expires_at: record.expires_at,
            }),
        })
    }

    /// PKB rejected this version's grant. Deletes the row only if it is still that version;
    /// if someone (another instance) wrote a newer one meanwhile, that one is used instead: a
    /// stale refresh token never kills a pairing.
    async fn drop_dead<E>(&self, pairing: &Pairing) -> Result<Arc<Pairing>, FreshError<E>> {
        let deleted = self
            .backend
            .delete_if_version(&pairing.user_id, pairing.version)
            .await?;
        self.cache.invalidate(&pairing.user_id).await;
        if deleted {
            return Err(FreshError::Revoked);
        }
        self.load(&pairing.user_id)
            .await?
            .ok_or(FreshError::NotPaired)
    }

    fn seal(
        &self,
        user_id: &str,
        tokens: &TokenSet,
        created_at: i64,
        refreshed_at: i64,
        version: i64,
    ) -> SealedPairing {
        SealedPairing {
            user_id: user_id.to_string(),
            key_id: self.keyring.primary_id().to_string(),
            access_token: self.keyring.seal(
                tokens.access_token.expose().as_bytes(),
                &aad(user_id, "access"),
            ),
            refresh_token: tokens.refresh_token.as_ref().map(|t| {
                self.keyring
                    .seal(t.expose().as_bytes(), &aad(user_id, "refresh"))
            }),
            access_expires_at: tokens.access_expires_at,
            created_at,
            refreshed_at,
            version,
        }
    }

    fn unseal(&self, row: SealedPairing) -> Result<Pairing, StoreError> {
        let open = |sealed: &[u8], field: &str| -> Result<String, StoreError> {
            let plain = self
                .keyring
                .open(&row.key_id, sealed, &aad(&row.user_id, field))?;
            String::from_utf8(plain)
                .map_err(|_| StoreError::Sealing(SealError::Corrupt(row.key_id.clone())))
        };
        let access_token = AccessToken::new(open(&row.access_token, "access")?);
        let refresh_token = match &row.refresh_token {
            Some(sealed) => Some(RefreshToken::new(open(sealed, "refresh")?)),
            None => None,
        };
        Ok(Pairing {
            tokens: TokenSet {
                access_token,
                refresh_token,
                access_expires_at: row.access_expires_at,
            },
            user_id: row.user_id,
            created_at: row.created_at,
            refreshed_at: row.refreshed_at,
            version: row.version,
        })
    }
}

fn needs_refresh(p: &Pairing, now: i64, skew_secs: i64, stale_version: Option<i64>) -> bool {
    p.tokens.access_expires_at - skew_secs <= now || stale_version == Some(p.version)
}

fn aad(user_id: &str, field: &str) -> Vec<u8> {
    format!("pkb-edge|{user_id}|{field}").into_bytes()
}

/// One async mutex per user with a refresh in flight. Entries are weak, so users who are not
/// refreshing cost nothing; dead entries are swept when the map grows.
#[derive(Default)]
struct UserLocks {
    inner: parking_lot::Mutex<LockMap>,
}

#[derive(Default)]
struct LockMap {
    entries: HashMap<String, Weak<tokio::sync::Mutex<()>>>,
    /// Sweep dead entries when the map reaches this size.
    sweep_at: usize,
}

impl UserLocks {
    fn for_user(&self, user_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.inner.lock();
        if let Some(lock) = map.entries.get(user_id).and_then(Weak::upgrade) {
            return lock;
        }
        if map.entries.len() >= map.sweep_at.max(64) {
            map.entries.retain(|_, w| w.strong_count() > 0);
            map.sweep_at = map.entries.len() * 2;
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        map.entries
            .insert(user_id.to_string(), Arc::downgrade(&lock));
        lock
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::ManualClock;
    use crate::store::sqlite::SqlitePairingStore;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const NOW: i64 = 1_800_000_000;

    struct Fixture {
        _dir: tempfile::TempDir,
        path: String,
        clock: Arc<ManualClock>,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("p.db").to_string_lossy().into_owned();
            Fixture {
                _dir: dir,
                path,
                clock: Arc::new(ManualClock::at(NOW)),
            }
        }

        async fn open(&self, keys: &str) -> Result<Pairings, StoreError> {
            let backend = Arc::new(SqlitePairingStore::open(&self.path).await?);
            Pairings::open(
                backend,
                Keyring::parse(keys).unwrap(),
                100,
                Duration::from_secs(60),
                self.clock.clone(),
            )
            .await
        }
    }

    fn tokens(access: &str, refresh: Option<&str>, expires_at: i64) -> TokenSet {
        TokenSet {
            access_token: AccessToken::new(access),
            refresh_token: refresh.map(RefreshToken::new),
            access_expires_at: expires_at,
        }
    }

    #[tokio::test]
    async fn save_get_survives_reopen_and_key_rotation() {
        let f = Fixture::new();
        let k1 = Keyring::generate_line("k1");
        let k2 = Keyring::generate_line("k2");
        let p = f.open(&k1).await.unwrap();
        p.save("alice", tokens("at-1", Some("rt-1"), NOW + 1800))
            .await
            .unwrap();
        drop(p);
        let p = f.open(&format!("{k2}\n{k1}")).await.unwrap();
        let got = p.get("alice").await.unwrap().unwrap();
        assert_eq!(got.tokens, tokens("at-1", Some("rt-1"), NOW + 1800));
        assert_eq!(got.version, 1);
    }

    #[tokio::test]
    async fn rekey_moves_every_row_to_the_first_key_and_never_beats_a_refresh() {
        let f = Fixture::new();
        let (k1, k2) = (Keyring::generate_line("k1"), Keyring::generate_line("k2"));
        let old = f.open(&k1).await.unwrap();
        for n in 0..25 {
            old.save(
                &format!("user{n:02}"),
                tokens(&format!("at-{n}"), Some("rt"), NOW + 600),
            )
            .await
            .unwrap();
        }
        drop(old);
        let both = Arc::new(f.open(&format!("{k2}\n{k1}")).await.unwrap());
        // A first run stopped after one page of 10: those rows move, the rest wait.
        let first = both.rekey_page(None, 10).await.unwrap();
        assert_eq!((first.scanned, first.rekeyed, first.already), (10, 10, 0));
        // A refresh of user12 reads its row (k1, version 1) before the rekey run reaches it …
        let stale = both.backend.get("user12").await.unwrap().unwrap();
        // … the run goes on from the start and finds the first page done.
        let mut after = None;
        let mut total = RekeyPage::default();
        loop {
            let page = both.rekey_page(after.as_deref(), 10).await.unwrap();
            let Some(last) = page.last.clone() else { break };
            after = Some(last);
            total.rekeyed += page.rekeyed;
            total.already += page.already;
        }
        assert_eq!((total.rekeyed, total.already), (15, 10));
        // The refresh's compare-and-swap on the version it read still succeeds: rekeying did not
        // bump the version, so rotated tokens are never thrown away.
        let refreshed = both.seal(
            "user12",
            &tokens("at-new", Some("rt-new"), NOW + 1800),
            NOW,
            NOW,
            1,
        );
        assert!(both
            .backend
            .replace_if_version(refreshed, stale.version)
            .await
            .unwrap()
            .is_some());
        drop(both);
        // Every row opens with k2 alone now.
        let only_new = f.open(&k2).await.unwrap();
        let all = only_new.list_page(None, 100).await.unwrap();
        assert_eq!(all.len(), 25);
        assert!(all.iter().all(|p| p.key_id == "k2"));
        assert_eq!(
            only_new
                .get("user12")
                .await
                .unwrap()
                .unwrap()
                .tokens
                .access_token
                .expose(),
            "at-new"
        );
        assert_eq!(
            only_new
                .get("user03")
                .await
                .unwrap()
                .unwrap()
                .tokens
                .access_token
                .expose(),
            "at-3"
        );
    }

    #[tokio::test]
    async fn missing_or_wrong_key_is_a_startup_error() {
        let f = Fixture::new();
        let k1 = Keyring::generate_line("k1");
        f.open(&k1)
            .await
            .unwrap()
            .save("alice", tokens("a", None, NOW))
            .await
            .unwrap();

        let other = Keyring::generate_line("k2");
        let err = f.open(&other).await.err().unwrap().to_string();
        assert!(
            err.contains("`k1`") && err.contains("not configured"),
            "{err}"
        );

        let impostor = Keyring::generate_line("k1");
        let err = f.open(&impostor).await.err().unwrap().to_string();
        assert!(err.contains("different material"), "{err}");

        // The pairing is still there for the right key.
        assert!(f
            .open(&k1)
            .await
            .unwrap()
            .get("alice")
            .await
            .unwrap()
            .is_some());
    }

    #[tokio::test]
    async fn concurrent_expired_callers_refresh_once() {
        let f = Fixture::new();
        let p = Arc::new(f.open(&Keyring::generate_line("k")).await.unwrap());
        p.save("alice", tokens("old", Some("rt-old"), NOW - 1))
            .await
            .unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (p, calls) = (p.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                p.fresh("alice", 60, None, move |old| {
                    let calls = calls.clone();
                    async move {
                        assert_eq!(old.refresh_token.unwrap().expose(), "rt-old");
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok::<_, RefreshFailure<()>>(tokens("new", Some("rt-new"), NOW + 1800))
                    }
                })
                .await
                .map(|p| p.tokens.access_token.expose().to_string())
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), "new");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let stored = p.load("alice").await.unwrap().unwrap();
        assert_eq!(
            stored.tokens.refresh_token.as_ref().unwrap().expose(),
            "rt-new"
        );
        assert_eq!(stored.version, 2);
    }

    #[tokio::test]
    async fn rejected_grant_deletes_only_the_refreshed_version() {
        let f = Fixture::new();
        let p = Arc::new(f.open(&Keyring::generate_line("k")).await.unwrap());
        p.save("alice", tokens("old", Some("rt"), NOW - 1))
            .await
            .unwrap();
        let r = p
            .fresh("alice", 60, None, |_| async {
                Err::<TokenSet, _>(RefreshFailure::<()>::GrantRejected)
            })
            .await;
        assert!(matches!(r, Err(FreshError::Revoked)));
        assert!(p.get("alice").await.unwrap().is_none());

        // A re-pairing (or another instance's refresh) that lands while a refresh is failing is
        // kept, and used: the rejected grant was a stale one.
        p.save("bob", tokens("old", Some("rt"), NOW - 1))
            .await
            .unwrap();
        let during = p.clone();
        let r = p
            .fresh("bob", 60, None, move |_| async move {
                during
                    .save("bob", tokens("repaired", Some("rt2"), NOW + 1800))
                    .await
                    .unwrap();
                Err::<TokenSet, _>(RefreshFailure::<()>::GrantRejected)
            })
            .await;
        assert_eq!(r.unwrap().tokens.access_token.expose(), "repaired");
        let kept = p.get("bob").await.unwrap().unwrap();
        assert_eq!(kept.tokens.access_token.expose(), "repaired");
    }

    #[tokio::test]
    async fn other_failures_keep_the_pairing_and_missing_refresh_token_is_dead() {
        let f = Fixture::new();
        let p = Arc::new(f.open(&Keyring::generate_line("k")).await.unwrap());
        p.save("alice", tokens("old", Some("rt"), NOW - 1))
            .await
            .unwrap();
        let r = p
            .fresh("alice", 60, None, |_| async {
                Err::<TokenSet, _>(RefreshFailure::Other("down"))
            })
            .await;
        assert!(matches!(r, Err(FreshError::Refresh("down"))));
        assert!(p.get("alice").await.unwrap().is_some());

        p.save("carol", tokens("old", None, NOW - 1)).await.unwrap();
        let r = p
            .fresh("carol", 60, None, |_| async {
                Ok::<_, RefreshFailure<()>>(tokens("x", None, 0))
            })
            .await;
        assert!(matches!(r, Err(FreshError::Revoked)));
        assert!(p.get("carol").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn pair_states_are_single_use_expire_and_survive_reopen() {
        let f = Fixture::new();
        let keys = Keyring::generate_line("k");
        let p = f.open(&keys).await.unwrap();
        let pending = |user: &str, ttl: i64| PairState {
            user_id: user.into(),
            code_verifier: CodeVerifier::new("v".repeat(43)),
            return_to: Some("/x".into()),
            expires_at: NOW + ttl,
        };
        p.put_pair_state("state-a", &pending("alice", 600))
            .await
            .unwrap();
        p.put_pair_state("state-b", &pending("bob", 10))
            .await
            .unwrap();
        drop(p);
        let p = f.open(&keys).await.unwrap();
        assert_eq!(
            p.take_pair_state("state-a").await.unwrap(),
            TakenState::Valid(pending("alice", 600))
        );
        assert_eq!(
            p.take_pair_state("state-a").await.unwrap(),
            TakenState::Unknown,
            "replay"
        );
        f.clock.advance(11);
        assert_eq!(
            p.take_pair_state("state-b").await.unwrap(),
            TakenState::Expired
        );
        assert_eq!(
            p.take_pair_state("never-issued").await.unwrap(),
            TakenState::Unknown
        );
    }

    #[tokio::test]
    async fn skew_and_stale_version_force_refresh() {
        let f = Fixture::new();
        let p = Arc::new(f.open(&Keyring::generate_line("k")).await.unwrap());
        let saved = p
            .save("alice", tokens("a1", Some("r1"), NOW + 100))
            .await
            .unwrap();
        let fresh = |at: &'static str| {
            move |_| async move { Ok::<_, RefreshFailure<()>>(tokens(at, Some("r"), NOW + 1800)) }
        };
        // 100 s left, skew 60: still good.
        assert_eq!(
            p.fresh("alice", 60, None, fresh("a2"))
                .await
                .unwrap()
                .tokens
                .access_token
                .expose(),
            "a1"
        );
        f.clock.advance(50);
        // 50 s left, inside the skew: refreshed.
        assert_eq!(
            p.fresh("alice", 60, None, fresh("a2"))
                .await
                .unwrap()
                .tokens
                .access_token
                .expose(),
            "a2"
        );
        // PKB rejected version 2's token: refreshed although not expired; an older stale version is ignored.
        assert_eq!(
            p.fresh("alice", 60, Some(saved.version), fresh("a3"))
                .await
                .unwrap()
                .tokens
                .access_token
                .expose(),
            "a2"
        );
        assert_eq!(
            p.fresh("alice", 60, Some(2), fresh("a3"))
                .await
                .unwrap()
                .tokens
                .access_token
                .expose(),
            "a3"
        );
    }
}
