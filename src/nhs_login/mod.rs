//! pkb-edge as the NHS login relying party (OpenID Connect, NHS login's interface specification):
//! discovery, the authorize redirect (`state`, `nonce`, `response_mode=query`, `vtr`), the code
//! exchange authenticated with `private_key_jwt` (RS512), id_token and userinfo checks, the
//! server-side session, and the `asserted_login_identity` tokens that carry a signed-in user into
//! PKB (and, from PKB or the NHS App, into the service without signing in again).
//!
//! Not here: HTTP routing and pages (`edge::nhs`). Signatures are jsonwebtoken's; nothing in
//! this module handles signature bytes itself.

mod assertion;
pub mod gp;
mod id_token;
mod provider;
pub mod session;

use std::sync::{Arc, OnceLock};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::EncodingKey;
use serde::{Deserialize, Serialize};

use crate::config::{NhsLoginSettings, Vector};
use crate::core::clock::Clock;
use crate::core::relative_path::RelativePath;
use crate::observe::audit::{Action, AuditLog, Caller, Event};
use crate::observe::metrics::metrics;
use crate::store::records::{Records, Taken};
use crate::store::StoreError;

use crate::core::fetched::Fetched;
use provider::{Metadata, JWKS_POLICY, METADATA_POLICY};
pub use session::{Session, SessionId};

/// Longest `assertedLoginIdentity` accepted from a browser, in bytes.
const MAX_ASSERTION_LEN: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum NhsLoginError {
    /// The callback's `state` is unknown, used already or expired.
    #[error("the sign-in link is not valid (used already, or expired)")]
    StateUnknown,
    /// The callback came to a browser that did not start this sign-in, or without cookies.
    #[error("the sign-in was started in another browser, or cookies are blocked")]
    OtherBrowser,
    /// The user said no (`access_denied`, e.g. `ConsentNotGiven`).
    #[error("access denied at NHS login: {0}")]
    Denied(String),
    /// Silent sign-in was not possible and interactive sign-in is what comes next.
    #[error("NHS login needs the user to sign in ({0})")]
    NeedsInteraction(String),
    /// NHS login answered the authorize request with another error code.
    #[error("NHS login refused the sign-in: {code}")]
    Provider { code: String, description: String },
    /// NHS login could not be reached, timed out or answered 5xx.
    #[error("NHS login unavailable: {0}")]
    Unavailable(String),
    /// NHS login refused pkb-edge's own request (client assertion, code, configuration).
    #[error("NHS login refused the request: {0}")]
    Refused(String),
    /// The id_token failed a check.
    #[error("id_token refused: {0}")]
    IdToken(String),
    /// userinfo failed a check.
    #[error("userinfo refused: {0}")]
    Userinfo(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Every step the NHS login layer counts in `pkb_edge_nhs_login_total`, with the outcomes it
/// reaches itself; any step may also be refused with one of `NhsLoginError::OUTCOMES`. All of
/// them are exported at 0 from start-up (in NHS login mode), and debug builds check that every
/// step counted is one of these.
pub const STEPS: [(&str, &[&str]); 8] = [
    ("login", &["started"]),
    ("login_silent", &["started"]),
    ("callback", &["signed_in"]),
    ("callback_silent", &["signed_in"]),
    ("session", &["unauthenticated"]),
    ("logout", &["signed_out", "no_session", "cross_site"]),
    ("launch_pkb", &["redirect", "cross_site"]),
    ("gp_refresh", &["started", "gave_up"]),
];

/// The `outcome` label of `pkb_edge_gp_credentials_refresh_total`.
pub const GP_REFRESH_OUTCOMES: [&str; 4] = ["started", "refreshed", "failed", "gave_up"];

impl NhsLoginError {
    pub const OUTCOMES: [&'static str; 11] = [
        "state_unknown",
        "other_browser",
        "denied",
        "needs_interaction",
        "provider_error",
        "nhs_login_unavailable",
        "nhs_login_refused",
        "id_token_invalid",
        "userinfo_invalid",
        "bad_request",
        "store_unavailable",
    ];

    /// The `outcome` label in metrics and audit lines.
    pub fn outcome(&self) -> &'static str {
        match self {
            NhsLoginError::StateUnknown => "state_unknown",
            NhsLoginError::OtherBrowser => "other_browser",
            NhsLoginError::Denied(_) => "denied",
            NhsLoginError::NeedsInteraction(_) => "needs_interaction",
            NhsLoginError::Provider { .. } => "provider_error",
            NhsLoginError::Unavailable(_) => "nhs_login_unavailable",
            NhsLoginError::Refused(_) => "nhs_login_refused",
            NhsLoginError::IdToken(_) => "id_token_invalid",
            NhsLoginError::Userinfo(_) => "userinfo_invalid",
            NhsLoginError::BadRequest(_) => "bad_request",
            NhsLoginError::Store(_) => "store_unavailable",
        }
    }
}

/// A sign-in in progress. Not stored: it travels sealed in the browser's login cookie (see
/// `Started`), so an anonymous request costs no store write, and only the browser that started
/// the sign-in can finish it (no login CSRF). One per browser: a newer sign-in's cookie
/// replaces an older one's.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LoginState {
    /// The `state` sent to NHS login: the callback's must be this one.
    state: String,
    nonce: String,
    return_to: String,
    /// Started with `asserted_login_identity` and `prompt=none`.
    silent: bool,
    /// Why it was started, when not by the user: `gp_refresh`.
    #[serde(default)]
    purpose: Option<String>,
}

/// What a `LoginState` is sealed as (`Records::seal_for_browser`).
const LOGIN_STATE: &str = "nhs_login_state";

/// A sign-in started: where to send the browser, and what it keeps meanwhile (the login
/// cookie's value, for `login_ttl_secs`).
#[derive(Debug)]
pub struct Started {
    pub authorize_url: String,
    /// The sign-in in progress, sealed.
    pub pending: String,
}

/// What a step of NHS login did (sign-in, callback, sign-out, launch into PKB, GP refresh), as
/// `record` counts, logs and audits it.
#[derive(Debug)]
pub struct Step {
    pub name: &'static str,
    pub outcome: &'static str,
    /// The user it concerned, when known.
    pub user: Option<String>,
    pub refused: bool,
    pub reason: Option<String>,
    /// GP credentials retrieved at this sign-in: their status, and why not `valid`.
    pub gp: Option<(&'static str, Option<&'static str>)>,
    /// A step of a GP credential refresh: `started`, `refreshed`, `failed`, `gave_up`.
    pub gp_refresh: Option<&'static str>,
}

/// A sign-in started to fetch fresh GP credentials.
pub const PURPOSE_GP_REFRESH: &str = "gp_refresh";

/// How a callback ended well.
#[derive(Debug)]
pub struct SignedIn {
    pub session_id: SessionId,
    pub session: Session,
    pub return_to: String,
    pub silent: bool,
    pub purpose: Option<String>,
    /// Why the GP credentials are not `valid`, when they are asked for.
    pub gp_reason: Option<&'static str>,
}

/// What a failed callback should lead to.
#[derive(Debug)]
pub struct CallbackFailure {
    pub error: NhsLoginError,
    /// Where the user was going, when the state was known.
    pub return_to: Option<String>,
    pub purpose: Option<String>,
    /// The browser's sign-in in progress was this callback's, or is no use to anyone: the
    /// login cookie goes. False when it belongs to another sign-in (a newer tab's), which it
    /// is left for.
    pub spent: bool,
}

pub struct NhsLogin {
    settings: Arc<NhsLoginSettings>,
    signing_key: EncodingKey,
    http: OnceLock<Result<reqwest::Client, String>>,
    metadata: Fetched<Metadata>,
    jwks: Fetched<JwkSet>,
    sessions: session::Sessions,
    records: Records,
    clock: Arc<dyn Clock>,
    audit: Arc<AuditLog>,
}

fn random_id() -> String {
    crate::core::random::random_token()
}

impl NhsLogin {
    /// `settings` were validated by the config check; a key that does not load is an error here
    /// only for hand-built settings.
    pub fn new(
        settings: Arc<NhsLoginSettings>,
        records: Records,
        clock: Arc<dyn Clock>,
        audit: Arc<AuditLog>,
    ) -> Result<NhsLogin, String> {
        let signing_key = EncodingKey::from_rsa_pem(settings.private_key.expose().as_bytes())
            .map_err(|e| format!("nhs_login.private_key_file: {e}"))?;
        export_known_metrics();
        Ok(NhsLogin {
            sessions: session::Sessions::new(
                records.clone(),
                settings.session_idle_secs,
                settings.session_max_secs,
            ),
            settings,
            signing_key,
            http: OnceLock::new(),
            metadata: Fetched::new(METADATA_POLICY),
            jwks: Fetched::new(JWKS_POLICY),
            records,
            clock,
            audit,
        })
    }

    /// An NHS login step: counted, logged and audited (with the GP credential status it
    /// brought, and the refresh step it was).
    pub fn record(&self, caller: Caller<'_>, step: Step) {
        debug_assert!(
            is_known(step.name, step.outcome),
            "NHS login step {}/{} is not in STEPS",
            step.name,
            step.outcome
        );
        let m = metrics();
        m.nhs_login_total
            .with_label_values(&[step.name, step.outcome])
            .inc();
        let user = step.user.as_deref().or(caller.user);
        let (name, outcome, reason) = (step.name, step.outcome, step.reason.as_deref());
        tracing::info!(user, step = name, outcome, reason, "nhs_login");
        let audit = |action, outcome, refused, reason: Option<String>| {
            self.audit.record(Event {
                request_id: caller.request_id,
                user,
                action,
                outcome,
                refused,
                patient: None,
                reason,
            })
        };
        if let Some((status, reason)) = step.gp {
            m.gp_credentials_total.with_label_values(&[status]).inc();
            tracing::info!(user, status, reason, "gp_credentials");
            let reason = reason.map(str::to_string);
            audit(Action::GpCredentials, status, false, reason);
        }
        if let Some(outcome) = step.gp_refresh {
            m.gp_credentials_refresh_total
                .with_label_values(&[outcome])
                .inc();
            let refused = outcome == "gave_up" || outcome == "failed";
            audit(Action::GpCredentialsRefresh, outcome, refused, None);
        }
        let action = match step.name {
            "logout" => Action::NhsLogout,
            "launch_pkb" => Action::NhsLaunchPkb,
            _ => Action::NhsLogin,
        };
        audit(action, step.outcome, step.refused, step.reason);
    }

    pub fn settings(&self) -> &NhsLoginSettings {
        &self.settings
    }

    pub fn sessions(&self) -> &session::Sessions {
        &self.sessions
    }

    /// Starts a sign-in: NHS login's authorize URL, and the sign-in in progress sealed for the
    /// browser to keep. With an asserted identity (from PKB or the NHS App) the sign-in is
    /// silent (`prompt=none`). Nothing is written to the store.
    pub async fn start(
        &self,
        return_to: &RelativePath,
        asserted: Option<&str>,
    ) -> Result<Started, NhsLoginError> {
        self.start_for(return_to, asserted, None).await
    }

    /// A silent sign-in as the session's own user (pkb-edge asserts the identity itself), to
    /// fetch fresh claims: GP credentials the service found invalid.
    pub async fn start_refresh(
        &self,
        return_to: &RelativePath,
        session: &Session,
    ) -> Result<Started, NhsLoginError> {
        let assertion = self.assertion(session)?;
        self.start_for(return_to, Some(&assertion), Some(PURPOSE_GP_REFRESH))
            .await
    }

    async fn start_for(
        &self,
        return_to: &RelativePath,
        asserted: Option<&str>,
        purpose: Option<&str>,
    ) -> Result<Started, NhsLoginError> {
        if let Some(a) = asserted {
            let jwt_like = !a.is_empty()
                && a.len() <= MAX_ASSERTION_LEN
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && a.split('.').count() == 3;
            if !jwt_like {
                return Err(NhsLoginError::BadRequest(
                    "`assertedLoginIdentity` is not a signed token".into(),
                ));
            }
        }
        let metadata = self.metadata().await?;
        let (state, nonce) = (random_id(), random_id());
        let pending = LoginState {
            state: state.clone(),
            nonce: nonce.clone(),
            return_to: return_to.as_str().to_string(),
            silent: asserted.is_some(),
            purpose: purpose.map(str::to_string),
        };
        let expires_at = self.clock.now() + self.settings.login_ttl_secs;
        let pending = self
            .records
            .seal_for_browser(LOGIN_STATE, &pending, expires_at)?;
        let mut url = url::Url::parse(&metadata.authorization_endpoint).map_err(|e| {
            NhsLoginError::Refused(format!("discovery's authorization_endpoint: {e}"))
        })?;
        let vtr: Vec<&str> = self.settings.vtr.iter().map(Vector::as_str).collect();
        let vtr = serde_json::to_string(&vtr).unwrap_or_default();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &self.settings.client_id)
                .append_pair("redirect_uri", &self.settings.redirect_uri)
                .append_pair("scope", &self.settings.scopes.join(" "))
                .append_pair("state", &state)
                .append_pair("nonce", &nonce)
                .append_pair("response_mode", "query")
                .append_pair("vtr", &vtr);
            if let Some(a) = asserted {
                q.append_pair("asserted_login_identity", a)
                    .append_pair("prompt", "none");
            }
        }
        Ok(Started {
            authorize_url: url.into(),
            pending,
        })
    }

    /// The browser's sign-in in progress (its login cookie, `pending`), if the callback's
    /// `state` is that sign-in's; else the error, and whether the cookie is spent.
    fn pending_for(
        &self,
        state: Option<&String>,
        pending: Option<&str>,
    ) -> Result<LoginState, (NhsLoginError, bool)> {
        use subtle::ConstantTimeEq;
        let Some(state) = state.filter(|s| crate::core::random::state_is_well_formed(s)) else {
            return Err((NhsLoginError::StateUnknown, false));
        };
        let Some(pending) = pending else {
            // Started in another browser, or cookies are blocked, or this callback was used.
            return Err((NhsLoginError::OtherBrowser, false));
        };
        let pending = match self
            .records
            .open_from_browser::<LoginState>(LOGIN_STATE, pending)
        {
            Taken::Valid(r) => r.value,
            Taken::Expired => return Err((NhsLoginError::StateUnknown, true)),
            Taken::Absent => return Err((NhsLoginError::OtherBrowser, true)),
            Taken::Unreadable(e) => {
                tracing::warn!(error = %e, "a login cookie does not open (altered, or sealed with a key no longer configured)");
                return Err((NhsLoginError::OtherBrowser, true));
            }
        };
        if !bool::from(state.as_bytes().ct_eq(pending.state.as_bytes())) {
            // Another sign-in's callback (an older tab's, or one sent by someone else): this
            // browser's own sign-in stays.
            return Err((NhsLoginError::StateUnknown, false));
        }
        Ok(pending)
    }

    /// The callback: the browser's sign-in in progress must be this `state`'s; then the error
    /// or the code. `pending`: the browser's login cookie, spent whatever happens once it
    /// matched (the edge clears it); `previous`: the session the browser had, if any.
    pub async fn callback(
        &self,
        query: Option<&str>,
        pending: Option<&str>,
        previous: Option<&Session>,
    ) -> Result<SignedIn, CallbackFailure> {
        let mut params = std::collections::HashMap::new();
        for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            params
                .entry(k.into_owned())
                .or_insert_with(|| v.into_owned());
        }
        let pending = match self.pending_for(params.get("state"), pending) {
            Ok(p) => p,
            Err((error, spent)) => {
                return Err(CallbackFailure {
                    error,
                    return_to: None,
                    purpose: None,
                    spent,
                })
            }
        };
        let return_to = Some(pending.return_to.clone());
        let fail = |error, return_to: Option<String>| CallbackFailure {
            error,
            return_to,
            purpose: pending.purpose.clone(),
            spent: true,
        };
        if let Some(code) = params.get("error") {
            let description = params.get("error_description").cloned().unwrap_or_default();
            let error = match code.as_str() {
                "login_required"
                | "interaction_required"
                | "consent_required"
                | "account_selection_required"
                    if pending.silent =>
                {
                    NhsLoginError::NeedsInteraction(code.clone())
                }
                "access_denied" => NhsLoginError::Denied(description),
                _ => NhsLoginError::Provider {
                    code: code.chars().take(64).collect(),
                    description: description.chars().take(256).collect(),
                },
            };
            return Err(fail(error, return_to));
        }
        let Some(code) = params.get("code").filter(|c| !c.is_empty()) else {
            return Err(fail(
                NhsLoginError::BadRequest("the callback has neither `code` nor `error`".into()),
                return_to,
            ));
        };
        match self.finish(code, &pending, previous).await {
            Ok((session_id, session, gp_reason)) => Ok(SignedIn {
                session_id,
                session,
                return_to: pending.return_to,
                silent: pending.silent,
                purpose: pending.purpose,
                gp_reason,
            }),
            Err(error) => Err(fail(error, return_to)),
        }
    }

    async fn finish(
        &self,
        code: &str,
        pending: &LoginState,
        previous: Option<&Session>,
    ) -> Result<(SessionId, Session, Option<&'static str>), NhsLoginError> {
        let metadata = self.metadata().await?;
        let (id_token, access_token) = self.exchange_code(code, &metadata).await?;
        let claims = self.verify_id_token(&id_token, &metadata, pending).await?;
        let userinfo = self
            .userinfo(&metadata.userinfo_endpoint, &access_token, &claims.sub)
            .await?;
        let verdict = self.settings.gp_credentials.as_ref().map(|gp| {
            gp::evaluate(
                userinfo.gp_integration_credentials.as_ref(),
                userinfo.identity_proofing_level.as_deref(),
                gp,
            )
        });
        let gp_reason = verdict.as_ref().and_then(|v| v.reason);
        let (gp_status, gp) = match verdict {
            Some(v) => (Some(v.status), v.credentials),
            None => (None, None),
        };
        // A refresh of GP credentials is not a new sign-in by the person: the 12-hour limit
        // still counts from theirs.
        let created_at = match previous {
            Some(p) if pending.purpose.is_some() && p.sub == claims.sub => p.created_at,
            _ => self.clock.now(),
        };
        let session = Session {
            sub: claims.sub,
            nhs_number: userinfo.nhs_number,
            identity_proofing_level: userinfo.identity_proofing_level,
            id_token_jti: claims.jti.unwrap_or_default(),
            vot: claims.vot.unwrap_or_default(),
            created_at,
            gp_status,
            gp,
        };
        let id = self.sessions.create(&session).await?;
        Ok((id, session, gp_reason))
    }
}

impl NhsLogin {
    /// One more refresh of `user`'s GP credentials in the current window, counted in the store
    /// (so every instance counts together); true while within `max_refreshes`.
    pub async fn may_refresh_gp(&self, user: &str) -> Result<bool, NhsLoginError> {
        let Some(gp) = &self.settings.gp_credentials else {
            return Ok(false);
        };
        let n = self
            .records
            .count_in_window(PURPOSE_GP_REFRESH, user, gp.window_secs)
            .await?;
        Ok(n <= i64::from(gp.max_refreshes))
    }
}

fn is_known(step: &str, outcome: &str) -> bool {
    STEPS.iter().any(|(name, own)| {
        *name == step && (own.contains(&outcome) || NhsLoginError::OUTCOMES.contains(&outcome))
    })
}

/// Every known label value of NHS login's metrics, at 0.
fn export_known_metrics() {
    let m = metrics();
    for (step, own) in STEPS {
        for outcome in own.iter().chain(NhsLoginError::OUTCOMES.iter()) {
            m.nhs_login_total.with_label_values(&[step, outcome]);
        }
    }
    for status in [
        gp::GpStatus::Valid,
        gp::GpStatus::Unusable,
        gp::GpStatus::Missing,
        gp::GpStatus::Unavailable,
    ] {
        m.gp_credentials_total.with_label_values(&[status.as_str()]);
    }
    for outcome in GP_REFRESH_OUTCOMES {
        m.gp_credentials_refresh_total.with_label_values(&[outcome]);
    }
}
