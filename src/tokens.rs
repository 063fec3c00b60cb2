//! Fresh access tokens for a user: the store's single-flight refresh wired to PKB's refresh grant.
//! Launches, data-availability look-ups and refresh-ahead all come through here, so a user's
//! tokens are only ever refreshed one way, once at a time.
//!
//! Refresh-ahead: a launch whose access token has lapsed costs two PKB round trips (a refresh,
//! then the OTP), and PKB's tokens live 10–30 minutes, less than the gap between most launches.
//! So when a user who launched PKB recently (within `pkb.refresh_ahead_window_secs`) makes any
//! request and their token expires within `pkb.refresh_ahead_secs`, the token is refreshed in
//! the background and their next launch needs only the OTP call. The check on a page view reads
//! no store: a user who has not launched is one cache miss; a launching user's expiry is read
//! from the pairing cache; a user found unpaired is remembered for a minute.

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use tracing::Instrument;

use crate::core::clock::Clock;
use crate::pkb::{PkbClient, PkbError};
use crate::store::{FreshError, Pairing, Pairings, RefreshFailure, TokenSet};

/// What made a refresh happen (the `trigger` label of `pkb_edge_token_refresh_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Launch,
    Ahead,
    Decoration,
}

impl Trigger {
    pub const ALL: [Trigger; 3] = [Trigger::Launch, Trigger::Ahead, Trigger::Decoration];

    pub fn name(self) -> &'static str {
        match self {
            Trigger::Launch => "launch",
            Trigger::Ahead => "ahead",
            Trigger::Decoration => "decoration",
        }
    }
}

/// The outcomes of `pkb_edge_token_refresh_total`.
pub const REFRESH_OUTCOMES: [&str; 3] = ["refreshed", "invalid_grant", "failed"];

/// How long a user found unpaired is not looked up again by refresh-ahead.
const UNPAIRED_TTL: Duration = Duration::from_secs(60);
/// While a refresh-ahead for a user is in flight, their page views start no other (in this
/// process; across processes the store's refresh lock decides). A failed one is retried by a
/// page view after this long, so a PKB outage is not met with a refresh per page view.
const AHEAD_RETRY: Duration = Duration::from_secs(10);

pub struct TokenSource {
    pairings: Arc<Pairings>,
    pkb: Arc<PkbClient>,
    clock: Arc<dyn Clock>,
    refresh_skew_secs: i64,
    ahead: Option<Ahead>,
}

/// Refresh-ahead's memory: who launched lately, who is unpaired, whose refresh just started.
struct Ahead {
    secs: i64,
    launched: Cache<String, ()>,
    unpaired: Cache<String, ()>,
    started: Cache<String, ()>,
}

impl TokenSource {
    /// `capacity` bounds refresh-ahead's memory (users remembered), as `store.cache_capacity`
    /// bounds the pairing cache.
    pub fn new(
        pairings: Arc<Pairings>,
        pkb: Arc<PkbClient>,
        clock: Arc<dyn Clock>,
        capacity: u64,
    ) -> Self {
        let s = pkb.settings();
        let refresh_skew_secs = s.refresh_skew_secs;
        let ahead = (s.refresh_ahead_secs > 0).then(|| {
            let cache = |ttl: Duration| {
                Cache::builder()
                    .max_capacity(capacity)
                    .time_to_live(ttl)
                    .build()
            };
            Ahead {
                secs: s.refresh_ahead_secs,
                launched: cache(Duration::from_secs(s.refresh_ahead_window_secs as u64)),
                unpaired: cache(UNPAIRED_TTL),
                started: cache(AHEAD_RETRY),
            }
        });
        let m = crate::observe::metrics::metrics();
        for trigger in Trigger::ALL {
            for outcome in REFRESH_OUTCOMES {
                m.token_refresh_total
                    .with_label_values(&[outcome, trigger.name()]);
            }
        }
        TokenSource {
            pairings,
            pkb,
            clock,
            refresh_skew_secs,
            ahead,
        }
    }

    pub fn pkb(&self) -> &Arc<PkbClient> {
        &self.pkb
    }

    /// The user's pairing with an access token good for at least the refresh skew (at most
    /// half the token's lifetime); `stale_version` forces a refresh of that version (PKB refused
    /// its access token).
    pub async fn fresh(
        &self,
        user_id: &str,
        stale_version: Option<i64>,
        trigger: Trigger,
    ) -> Result<Arc<Pairing>, FreshError<PkbError>> {
        self.fresh_within(user_id, self.refresh_skew_secs, stale_version, trigger)
            .await
    }

    async fn fresh_within(
        &self,
        user_id: &str,
        skew_secs: i64,
        stale_version: Option<i64>,
        trigger: Trigger,
    ) -> Result<Arc<Pairing>, FreshError<PkbError>> {
        let pkb = self.pkb.clone();
        let clock = self.clock.clone();
        let refresh = move |old: TokenSet| async move {
            let Some(refresh_token) = old.refresh_token else {
                return Err(RefreshFailure::GrantRejected);
            };
            let asked_at = clock.now();
            let answer = pkb.refresh(&refresh_token).await;
            let outcome = match &answer {
                Ok(_) => "refreshed",
                Err(PkbError::InvalidGrant) => "invalid_grant",
                Err(_) => "failed",
            };
            crate::observe::metrics::metrics()
                .token_refresh_total
                .with_label_values(&[outcome, trigger.name()])
                .inc();
            match answer {
                Ok(answer) => Ok(TokenSet {
                    access_token: answer.access_token,
                    // No new refresh token issued: the old one stays valid (RFC 6749 §6).
                    refresh_token: answer.refresh_token.or(Some(refresh_token)),
                    access_expires_at: asked_at + answer.expires_in,
                }),
                Err(PkbError::InvalidGrant) => Err(RefreshFailure::GrantRejected),
                Err(e) => Err(RefreshFailure::Other(e)),
            }
        };
        self.pairings
            .fresh(user_id, skew_secs, stale_version, refresh)
            .await
    }

    /// A launch succeeded for this user: their page views may refresh ahead for the window.
    pub async fn launched(&self, user_id: &str) {
        if let Some(ahead) = &self.ahead {
            ahead.unpaired.invalidate(user_id).await;
            ahead.launched.insert(user_id.to_string(), ()).await;
        }
    }

    /// A request from this user went through pkb-edge: if they launch PKB and their access
    /// token is about to expire, refresh it in the background. Never waits for PKB or the store;
    /// what the refresh does (or fails to do) changes nothing for the request.
    pub async fn page_view(self: &Arc<Self>, user_id: &str) {
        let Some(ahead) = &self.ahead else {
            return;
        };
        if !ahead.launched.contains_key(user_id) || ahead.unpaired.contains_key(user_id) {
            return;
        }
        // Not in the pairing cache: the background task reads the store (and fills the cache).
        if let Some(pairing) = self.pairings.cached(user_id).await {
            if !pairing.expires_within(self.clock.now(), ahead.secs) {
                return;
            }
        }
        let entry = ahead
            .started
            .entry_by_ref(user_id)
            .or_insert_with(async {})
            .await;
        if !entry.is_fresh() {
            return;
        }
        let this = self.clone();
        let user = user_id.to_string();
        let secs = ahead.secs;
        // Counted, so shutdown waits for a refresh in flight (a rotated token is stored).
        crate::core::detached::spawn(
            async move {
                let Some(ahead) = &this.ahead else {
                    return;
                };
                match this.fresh_within(&user, secs, None, Trigger::Ahead).await {
                    // Fresh now (or found fresh): the pairing cache says so from here on.
                    Ok(_) => ahead.started.invalidate(&user).await,
                    Err(FreshError::NotPaired | FreshError::Revoked) => {
                        ahead.unpaired.insert(user.clone(), ()).await;
                        ahead.started.invalidate(&user).await;
                    }
                    // Kept in `started` until AHEAD_RETRY has passed.
                    Err(e) => tracing::debug!(error = %e, "refresh-ahead failed"),
                }
            }
            .in_current_span(),
        );
    }
}
