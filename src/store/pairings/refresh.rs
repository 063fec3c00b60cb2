//! The single-flight, rotation-safe refresh: at most one refresh per user at a time, in this
//! process (a per-user lock) and across processes sharing the store (the backend's `locked`);
//! the result written compare-and-swap on the row version.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tracing::Instrument;

use super::{FreshError, Pairing, Pairings, RefreshFailure, TokenSet};
use crate::store::StoreError;

impl Pairings {
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
        // Counted: shutdown waits for it, so a rotated refresh token is always stored.
        crate::core::detached::spawn(
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
}

fn needs_refresh(p: &Pairing, now: i64, skew_secs: i64, stale_version: Option<i64>) -> bool {
    p.tokens.access_expires_at - effective_skew(p, skew_secs) <= now
        || stale_version == Some(p.version)
}

/// The skew actually used for a pairing: at most half its access token's lifetime (as issued:
/// from the refresh that stored it to its expiry). A token PKB issues for less than twice the
/// skew is otherwise "about to expire" from birth, and every launch would refresh it.
pub(super) fn effective_skew(p: &Pairing, skew_secs: i64) -> i64 {
    let lifetime = p.tokens.access_expires_at - p.refreshed_at;
    skew_secs.min(lifetime / 2).max(0)
}

impl Pairing {
    /// Whether the access token expires within `skew_secs` (at most half its lifetime) of `now`.
    pub fn expires_within(&self, now: i64, skew_secs: i64) -> bool {
        needs_refresh(self, now, skew_secs, None)
    }
}

/// One async mutex per user with a refresh in flight. Entries are weak, so users who are not
/// refreshing cost nothing; dead entries are swept when the map grows.
#[derive(Default)]
pub(super) struct UserLocks {
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
