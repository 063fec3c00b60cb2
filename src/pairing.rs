//! Pairing a user with their PKB account once: OAuth 2.0 authorization code with PKCE (S256),
//! `state` bound to the user, single use and short-lived. No Pingora types.
//!
//! Where the state lives: in the pairing store, keyed by the state's SHA-256, with the PKCE
//! verifier sealed beside it, and taken with one atomic delete. That makes it single-use across
//! restarts and across instances sharing a store by construction; a sealed value handed to the
//! browser would still need a shared list of used values to be single-use, so it would not save
//! the store round trip and would add a second mechanism. A user keeps at most
//! `PENDING_PAIRINGS_PER_USER` states, the newest, so pairings started and never finished cannot
//! fill the store.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::core::clock::Clock;
use crate::core::random::{random_token, state_is_well_formed};
use crate::core::relative_path::{self, RelativePath};
use crate::core::secret::CodeVerifier;
use crate::observe::audit::{Action, AuditLog, Caller, Event};
use crate::observe::metrics::metrics;
use crate::pkb::{urls, PkbClient, PkbError};
use crate::store::{PairState, Pairings, StoreError, TakenState, TokenSet};

/// Pairings in progress one user may have: a new one beyond this drops the user's oldest, so
/// nobody can fill the store by starting pairings and never finishing them.
pub const PENDING_PAIRINGS_PER_USER: u32 = 5;

/// RFC 7636 S256: BASE64URL(SHA256(ASCII(verifier))).
pub fn pkce_challenge(verifier: &str) -> String {
    B64URL.encode(Sha256::digest(verifier.as_bytes()))
}

/// Why a callback's state was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateProblem {
    /// Never issued, or already used.
    UnknownOrUsed,
    Expired,
    /// Started by a different user than the one completing it.
    OtherUser,
}

#[derive(Debug, thiserror::Error)]
pub enum PairingError {
    #[error("no authenticated user")]
    NoIdentity,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("state refused: {0:?}")]
    StateRefused(StateProblem),
    /// PKB answered the authorization with `error=` (the user denied, or PKB refused).
    #[error("PKB answered {0}")]
    PkbDenied(String),
    #[error("PKB unavailable: {0}")]
    PkbUnavailable(String),
    #[error("PKB refused the request: {0}")]
    PkbRefused(String),
    /// A state-changing request not sent by this site's own pages.
    #[error("not sent by this site's own pages (Origin / Sec-Fetch-Site)")]
    CrossSite,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Every `outcome` of `pkb_edge_pairing_total`: the steps' own, then `PairingError`'s.
pub const PAIRING_OUTCOMES: [&str; 12] = [
    "started",
    "paired",
    "unpaired",
    "was_not_paired",
    "no_identity",
    "bad_request",
    "state_refused",
    "pkb_denied",
    "pkb_unavailable",
    "pkb_refused",
    "cross_site",
    "store_error",
];

impl PairingError {
    /// The `outcome` label of `pkb_edge_pairing_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            PairingError::NoIdentity => "no_identity",
            PairingError::BadRequest(_) => "bad_request",
            PairingError::StateRefused(_) => "state_refused",
            PairingError::PkbDenied(_) => "pkb_denied",
            PairingError::PkbUnavailable(_) => "pkb_unavailable",
            PairingError::PkbRefused(_) => "pkb_refused",
            PairingError::CrossSite => "cross_site",
            PairingError::Store(_) => "store_error",
        }
    }
}

pub struct PairingService {
    pairings: Arc<Pairings>,
    pkb: Arc<PkbClient>,
    clock: Arc<dyn Clock>,
    state_ttl_secs: i64,
    audit: Arc<AuditLog>,
}

/// The named query parameters, each at most once (a repeated one is ambiguous, so refused).
fn single_params<const N: usize>(
    query: Option<&str>,
    names: [&str; N],
) -> Result<[Option<String>; N], PairingError> {
    let mut values: [Option<String>; N] = std::array::from_fn(|_| None);
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if let Some(i) = names.iter().position(|n| *n == key) {
            if values[i].replace(value.into_owned()).is_some() {
                return Err(PairingError::BadRequest(format!(
                    "`{key}` is given more than once"
                )));
            }
        }
    }
    Ok(values)
}

impl PairingService {
    pub fn new(
        pairings: Arc<Pairings>,
        pkb: Arc<PkbClient>,
        clock: Arc<dyn Clock>,
        state_ttl_secs: i64,
        audit: Arc<AuditLog>,
    ) -> Self {
        for outcome in PAIRING_OUTCOMES {
            metrics().pairing_total.with_label_values(&[outcome]);
        }
        PairingService {
            pairings,
            pkb,
            clock,
            state_ttl_secs,
            audit,
        }
    }

    /// `/pair`: PKB's authorize URL to send the browser to. Counted, logged and audited.
    pub async fn start(
        &self,
        caller: Caller<'_>,
        query: Option<&str>,
    ) -> Result<String, PairingError> {
        let result = self.begin(caller.user, query).await;
        self.record(caller, Action::Pair, result.as_ref().map(|_| "started"));
        result
    }

    /// `/callback`: PKB's answer; on success the tokens are stored, and the user goes back to
    /// where pairing started, if anywhere. Counted, logged and audited.
    pub async fn callback(
        &self,
        caller: Caller<'_>,
        query: Option<&str>,
    ) -> Result<Option<RelativePath>, PairingError> {
        let result = self.finish(caller.user, query).await;
        self.record(
            caller,
            Action::PairCallback,
            result.as_ref().map(|_| "paired"),
        );
        result
    }

    /// `/unpair`, only from this site's own pages: whether there was a pairing to remove.
    /// Counted, logged and audited.
    pub async fn unpair(
        &self,
        caller: Caller<'_>,
        same_origin: bool,
    ) -> Result<bool, PairingError> {
        let result = match (same_origin, caller.user) {
            (false, _) => Err(PairingError::CrossSite),
            (true, None) => Err(PairingError::NoIdentity),
            (true, Some(user)) => self.pairings.remove(user).await.map_err(Into::into),
        };
        let outcome = |&was_paired: &bool| {
            if was_paired {
                "unpaired"
            } else {
                "was_not_paired"
            }
        };
        self.record(caller, Action::Unpair, result.as_ref().map(outcome));
        result
    }

    /// A pairing step or its refusal: the metric, a log line and an audit line.
    fn record(&self, caller: Caller<'_>, action: Action, result: Result<&str, &PairingError>) {
        let (outcome, reason) = match result {
            Ok(outcome) => (outcome, None),
            Err(e) => (e.outcome(), Some(e.to_string())),
        };
        metrics().pairing_total.with_label_values(&[outcome]).inc();
        let user = caller.user;
        tracing::info!(user, ?action, outcome, reason, "pairing");
        self.audit.record(Event {
            request_id: caller.request_id,
            user,
            action,
            outcome,
            refused: reason.is_some(),
            patient: None,
            reason,
        });
    }

    /// Starts a pairing: records the state and returns PKB's authorize URL to send the browser to.
    async fn begin(
        &self,
        user_id: Option<&str>,
        query: Option<&str>,
    ) -> Result<String, PairingError> {
        let user_id = user_id.ok_or(PairingError::NoIdentity)?;
        let [return_to] = single_params(query, ["return_to"])?;
        let return_to = match return_to {
            Some(r) => Some(
                relative_path::parse(&r)
                    .map_err(|e| PairingError::BadRequest(format!("`return_to` {e}")))?
                    .to_string(),
            ),
            None => None,
        };
        let state = random_token();
        let verifier = random_token();
        let pending = PairState {
            user_id: user_id.to_string(),
            code_verifier: CodeVerifier::new(verifier.clone()),
            return_to,
            expires_at: self.clock.now() + self.state_ttl_secs,
        };
        self.pairings
            .put_pair_state(&state, &pending, PENDING_PAIRINGS_PER_USER)
            .await?;
        let s = self.pkb.settings();
        Ok(urls::authorize_url(&urls::AuthorizeRequest {
            base: s.base_url.as_str(),
            authorize_path: &s.authorize_path,
            client_id: &s.client_id,
            redirect_uri: &s.redirect_uri,
            scope: &s.scope,
            state: &state,
            code_challenge: &pkce_challenge(&verifier),
        }))
    }

    /// Completes a pairing; on success, where to send the browser (`return_to`), if anywhere.
    async fn finish(
        &self,
        user_id: Option<&str>,
        query: Option<&str>,
    ) -> Result<Option<RelativePath>, PairingError> {
        let [code, state, error] = single_params(query, ["code", "state", "error"])?;
        // Spend the state whatever else is wrong, so a refused callback cannot be retried.
        let taken = match &state {
            Some(s) if state_is_well_formed(s) => self.pairings.take_pair_state(s).await?,
            Some(_) => TakenState::Unknown,
            None => {
                return Err(PairingError::BadRequest(
                    "the `state` parameter is missing".into(),
                ))
            }
        };
        if let Some(error) = error {
            let code: String = error
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect();
            return Err(PairingError::PkbDenied(code));
        }
        let user_id = user_id.ok_or(PairingError::NoIdentity)?;
        let pending = match taken {
            TakenState::Unknown => {
                return Err(PairingError::StateRefused(StateProblem::UnknownOrUsed))
            }
            TakenState::Expired => return Err(PairingError::StateRefused(StateProblem::Expired)),
            TakenState::Valid(p) if p.user_id != user_id => {
                return Err(PairingError::StateRefused(StateProblem::OtherUser))
            }
            TakenState::Valid(p) => p,
        };
        let code = code
            .filter(|c| !c.is_empty())
            .ok_or_else(|| PairingError::BadRequest("the `code` parameter is missing".into()))?;
        let asked_at = self.clock.now();
        let answer = self
            .pkb
            .exchange_code(&code, pending.code_verifier.expose())
            .await
            .map_err(|e| match e {
                PkbError::Unavailable(why) => PairingError::PkbUnavailable(why),
                PkbError::InvalidGrant => PairingError::PkbDenied("invalid_grant".into()),
                PkbError::Unauthorized => PairingError::PkbRefused("unauthorized".into()),
                PkbError::Refused(why) | PkbError::Protocol(why) => PairingError::PkbRefused(why),
            })?;
        let tokens = TokenSet {
            access_token: answer.access_token,
            refresh_token: answer.refresh_token,
            access_expires_at: asked_at + answer.expires_in,
        };
        self.pairings.save(user_id, tokens).await?;
        // Validated when the pairing started; parsed again so the type says so.
        Ok(pending
            .return_to
            .and_then(|r| relative_path::parse(&r).ok()))
    }

    pub async fn is_paired(&self, user_id: Option<&str>) -> Result<bool, PairingError> {
        let user_id = user_id.ok_or(PairingError::NoIdentity)?;
        Ok(self.pairings.get(user_id).await?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every outcome pairing can count is exported from start-up.
    #[test]
    fn every_pairing_outcome_is_known() {
        let errors = [
            PairingError::NoIdentity,
            PairingError::BadRequest(String::new()),
            PairingError::StateRefused(StateProblem::Expired),
            PairingError::PkbDenied(String::new()),
            PairingError::PkbUnavailable(String::new()),
            PairingError::PkbRefused(String::new()),
            PairingError::CrossSite,
            PairingError::Store(StoreError::Unavailable(String::new())),
        ];
        let mut counted = vec!["started", "paired", "unpaired", "was_not_paired"];
        counted.extend(errors.iter().map(PairingError::outcome));
        assert_eq!(counted, PAIRING_OUTCOMES);
    }

    #[test]
    fn rfc7636_appendix_b() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
