//! Fresh access tokens for a user: the store's single-flight refresh wired to PKB's refresh grant.
//! Launches and data-availability look-ups both come through here, so a user's tokens are only
//! ever refreshed one way, once at a time.

use std::sync::Arc;

use crate::core::clock::Clock;
use crate::pkb::{PkbClient, PkbError};
use crate::store::{FreshError, Pairing, Pairings, RefreshFailure, TokenSet};

pub struct TokenSource {
    pairings: Arc<Pairings>,
    pkb: Arc<PkbClient>,
    clock: Arc<dyn Clock>,
    refresh_skew_secs: i64,
}

impl TokenSource {
    pub fn new(pairings: Arc<Pairings>, pkb: Arc<PkbClient>, clock: Arc<dyn Clock>) -> Self {
        let refresh_skew_secs = pkb.settings().refresh_skew_secs;
        TokenSource {
            pairings,
            pkb,
            clock,
            refresh_skew_secs,
        }
    }

    pub fn pkb(&self) -> &Arc<PkbClient> {
        &self.pkb
    }

    /// The user's pairing with an access token good for at least the refresh skew; `stale_version`
    /// forces a refresh of that version (PKB refused its access token).
    pub async fn fresh(
        &self,
        user_id: &str,
        stale_version: Option<i64>,
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
                .with_label_values(&[outcome])
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
            .fresh(user_id, self.refresh_skew_secs, stale_version, refresh)
            .await
    }
}
