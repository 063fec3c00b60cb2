//! `Pairings`: sealing, the memory cache and the one-refresh-per-user rule, over a backend.

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;

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
        for result in ["hit", "miss", "stale"] {
            crate::observe::metrics::metrics()
                .token_cache_total
                .with_label_values(&[result]);
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

    /// The user's pairing if the memory cache holds it: no store read, no version check. For
    /// cheap guesses only (is a refresh-ahead due?); what a guess starts goes through `fresh`.
    pub async fn cached(&self, user_id: &str) -> Option<Arc<Pairing>> {
        self.cache.get(user_id).await
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

    /// The short-lived sealed records (NHS login sessions, pairing states) in the same store,
    /// under the same keys; and values sealed under them for the browser to keep.
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

    /// Records a pairing in progress: a sealed record found by the hash of `state`. The user
    /// keeps at most `keep` pairings in progress, the newest: one more drops the oldest.
    pub async fn put_pair_state(
        &self,
        state: &str,
        pending: &PairState,
        keep: u32,
    ) -> Result<(), StoreError> {
        let stored = StoredPairState {
            user_id: pending.user_id.clone(),
            code_verifier: pending.code_verifier.expose().to_string(),
            return_to: pending.return_to.clone(),
        };
        self.records()
            .put_owned(
                RecordKind::PairState,
                state,
                &pending.user_id,
                &stored,
                pending.expires_at,
                keep,
            )
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
            // A state sealed with a key since retired, or altered: the store's problem, not
            // the user's.
            Taken::Unreadable(e) => return Err(e),
            Taken::Valid(record) => TakenState::Valid(PairState {
                user_id: record.value.user_id,
                code_verifier: CodeVerifier::new(record.value.code_verifier),
                return_to: record.value.return_to,
                expires_at: record.expires_at,
            }),
        })
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

fn aad(user_id: &str, field: &str) -> Vec<u8> {
    format!("pkb-edge|{user_id}|{field}").into_bytes()
}

mod refresh;

use refresh::UserLocks;

#[cfg(test)]
mod tests;
