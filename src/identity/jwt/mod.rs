//! `jwt` mode: the user is a claim of a JWT the identity-aware proxy in front signed (Pomerium,
//! Cloudflare Access, AWS ALB, an OIDC id_token), so trust does not rest on network position.
//!
//! A request's token is refused before parsing when too long, split and judged by `token`, with
//! keys from `keys`. A verified token is remembered by its SHA-256 until its `exp` (bounded), so
//! the next page view with it costs a hash and a look-up, not a signature check. Every outcome is
//! counted in `pkb_edge_identity_total{mode="jwt",outcome}`; nothing is logged per request, and
//! the token never is.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use ipnet::IpNet;
use prometheus::IntCounter;
use sha2::{Digest, Sha256};

use super::{Asking, Identify, IdentityError};
use crate::config::JwtSettings;
use crate::core::clock::Clock;
use crate::observe::metrics::metrics;

mod keys;
mod token;

pub use keys::KeySource;
pub use token::{Outcome, MAX_TOKEN_BYTES};

/// Verified tokens remembered at most.
const VERIFIED_CAPACITY: u64 = 100_000;

/// A verified token: its user, and its `exp`.
#[derive(Clone)]
struct Verified {
    user: Arc<str>,
    exp: i64,
}

/// Remembers a verified token until its `exp` (plus the skew), by the clock it was judged with.
struct UntilExp {
    clock: Arc<dyn Clock>,
    skew: i64,
}

impl moka::Expiry<[u8; 32], Verified> for UntilExp {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Verified,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        let left = value.exp.saturating_add(self.skew) - self.clock.now();
        Some(Duration::from_secs(left.max(0) as u64))
    }
}

pub struct JwtIdentity {
    settings: Arc<JwtSettings>,
    keys: KeySource,
    verified: moka::future::Cache<[u8; 32], Verified>,
    clock: Arc<dyn Clock>,
    /// `identity_total{mode="jwt",outcome}`, one counter per outcome in `Outcome::ALL` order.
    counters: Vec<IntCounter>,
}

impl JwtIdentity {
    pub fn new(settings: Arc<JwtSettings>, clock: Arc<dyn Clock>) -> Result<JwtIdentity, String> {
        let keys = KeySource::new(&settings)?;
        let verified = moka::future::Cache::builder()
            .max_capacity(VERIFIED_CAPACITY)
            .expire_after(UntilExp {
                clock: clock.clone(),
                skew: settings.clock_skew_secs,
            })
            .build();
        let counters = Outcome::ALL
            .iter()
            .map(|o| {
                metrics()
                    .identity_total
                    .with_label_values(&["jwt", o.name()])
            })
            .collect();
        Ok(JwtIdentity {
            settings,
            keys,
            verified,
            clock,
            counters,
        })
    }

    pub fn settings(&self) -> &JwtSettings {
        &self.settings
    }

    /// Whether the keys have been loaded once: `/readyz` waits for this.
    pub fn keys_loaded(&self) -> bool {
        self.keys.loaded()
    }

    /// Keeps the keys fresh; the background task runs this until shutdown.
    pub async fn refresh_keys(&self) -> Duration {
        self.keys.refresh().await
    }

    fn peer_is_trusted(&self, peer: Option<IpAddr>) -> bool {
        let peers: &[IpNet] = &self.settings.trusted_peers;
        if peers.is_empty() {
            return true;
        }
        let Some(peer) = peer.map(|p| p.to_canonical()) else {
            return false;
        };
        peers.iter().any(|net| net.contains(&peer))
    }

    /// The token a request carries: exactly one header, within the size limit, `Bearer` when
    /// the header is `Authorization`.
    fn token<'h>(&self, headers: &'h HeaderMap) -> Result<&'h str, Outcome> {
        let mut values = headers.get_all(&self.settings.header).iter();
        let value = values.next().ok_or(Outcome::Missing)?;
        if values.next().is_some() {
            return Err(Outcome::Malformed);
        }
        let bytes = value.as_bytes();
        if bytes.len() > MAX_TOKEN_BYTES + "Bearer ".len() {
            return Err(Outcome::Malformed);
        }
        let text = std::str::from_utf8(bytes).map_err(|_| Outcome::Malformed)?;
        let token = if self.settings.bearer() {
            let (scheme, rest) = text.split_once(' ').ok_or(Outcome::Malformed)?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(Outcome::Malformed);
            }
            rest
        } else {
            text
        };
        match token.trim() {
            "" => Err(Outcome::Missing),
            t if t.len() > MAX_TOKEN_BYTES => Err(Outcome::Malformed),
            t => Ok(t),
        }
    }

    /// The verified user of a request, or why there is none.
    pub async fn decide(
        &self,
        peer: Option<IpAddr>,
        headers: &HeaderMap,
    ) -> Result<String, Outcome> {
        if !self.peer_is_trusted(peer) {
            return Err(Outcome::UntrustedPeer);
        }
        let token = self.token(headers)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = self.clock.now();
        if let Some(seen) = self.verified.get(&digest).await {
            if now < seen.exp.saturating_add(self.settings.clock_skew_secs) {
                return Ok(seen.user.to_string());
            }
            self.verified.invalidate(&digest).await;
            return Err(Outcome::Expired);
        }
        let (user, exp) = self.verify(token, now).await?;
        let user: Arc<str> = user.into();
        self.verified
            .insert(
                digest,
                Verified {
                    user: user.clone(),
                    exp,
                },
            )
            .await;
        Ok(user.to_string())
    }

    /// The first look at a token: split, signature, claims.
    async fn verify(&self, token: &str, now: i64) -> Result<(String, i64), Outcome> {
        let unverified = token::split(token, &self.settings)?;
        let keys = self
            .keys
            .for_kid(unverified.kid.as_deref())
            .await
            .ok_or(Outcome::UnknownKey)?;
        let claims = unverified.verify(&keys, self.settings.padded_segments)?;
        token::judge(&claims, unverified.signer.as_deref(), &self.settings, now)
    }

    fn count(&self, outcome: Outcome) {
        if let Some(c) = Outcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .and_then(|i| self.counters.get(i))
        {
            c.inc();
        }
    }
}

impl Identify for JwtIdentity {
    type Found = String;

    /// Never an error: a missing or invalid token is nobody, counted by its reason.
    async fn identify(&self, asking: &Asking<'_>) -> Result<Option<String>, IdentityError> {
        match self.decide(asking.peer, asking.headers).await {
            Ok(user) => {
                self.count(Outcome::Valid);
                Ok(Some(user))
            }
            Err(outcome) => {
                self.count(outcome);
                tracing::debug!(outcome = outcome.name(), "no identity from the assertion");
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_its_exported_label() {
        use crate::observe::metrics::IDENTITY_OUTCOMES;
        let names: Vec<&str> = Outcome::ALL.iter().map(|o| o.name()).collect();
        assert_eq!(names, IDENTITY_OUTCOMES);
    }
}
