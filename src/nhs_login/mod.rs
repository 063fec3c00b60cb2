//! pkb-edge as the NHS login relying party (OpenID Connect, NHS login's interface specification):
//! discovery, the authorize redirect (`state`, `nonce`, `response_mode=query`, `vtr`), the code
//! exchange authenticated with `private_key_jwt` (RS512), id_token and userinfo checks, the
//! server-side session, and the `asserted_login_identity` tokens that carry a signed-in user into
//! PKB (and, from PKB or the NHS App, into the service without signing in again).
//!
//! Not here: HTTP routing and pages (`proxy`, `reply`). Signatures are jsonwebtoken's; nothing in
//! this module handles signature bytes itself.

pub mod gp;
pub mod session;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{NhsLoginSettings, Vector};
use crate::core::clock::Clock;
use crate::core::relative_path::RelativePath;
use crate::store::records::Records;
use crate::store::{RecordKind, StoreError};

pub use session::{Session, SessionId};

/// How long discovery metadata is used before it is fetched again.
const METADATA_TTL: Duration = Duration::from_secs(3600);
/// How long keys are used before they are fetched again (and at least this long between fetches
/// prompted by an unknown `kid`).
const JWKS_TTL: Duration = Duration::from_secs(3600);
const JWKS_REFETCH_MIN: Duration = Duration::from_secs(10);
/// After a failed fetch of discovery or keys, how long the next fetch waits.
const FETCH_FAILURE_BACKOFF: Duration = Duration::from_secs(5);
/// Lifetime of the JWTs pkb-edge signs: client assertions and `asserted_login_identity`
/// (NHS login: at most 60 s).
const ASSERTION_LIFETIME_SECS: i64 = 60;
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

impl NhsLoginError {
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

/// The OpenID provider's metadata, as much of it as pkb-edge uses.
#[derive(Debug, Clone, Deserialize)]
struct Metadata {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    userinfo_endpoint: String,
    jwks_uri: String,
}

/// A sign-in in progress, kept under its `state`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LoginState {
    nonce: String,
    return_to: String,
    /// Started with `asserted_login_identity` and `prompt=none`.
    silent: bool,
    /// Why it was started, when not by the user: `gp_refresh`.
    #[serde(default)]
    purpose: Option<String>,
    /// SHA-256 (hex) of the browser's login cookie: the callback must come from the browser
    /// that started the sign-in (no login CSRF).
    binding: String,
}

fn binding_hash(binding: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(binding.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
}

#[derive(Deserialize)]
struct TokenAnswer {
    id_token: Option<String>,
    access_token: Option<String>,
}

#[derive(Deserialize)]
struct OAuthErrorBody {
    error: Option<String>,
}

/// The id_token claims pkb-edge checks (signature, `iss`, `aud` are jsonwebtoken's).
#[derive(Debug, Deserialize)]
struct IdTokenClaims {
    sub: String,
    exp: i64,
    iat: i64,
    aud: serde_json::Value,
    azp: Option<String>,
    nonce: Option<String>,
    vot: Option<String>,
    jti: Option<String>,
}

#[derive(Serialize)]
struct ClientAssertion<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: String,
    iat: i64,
    exp: i64,
}

#[derive(Serialize)]
struct AssertedLoginIdentity<'a> {
    code: &'a str,
    iss: &'a str,
    jti: String,
    iat: i64,
    exp: i64,
}

struct Cached<T> {
    value: Arc<T>,
    fetched: Instant,
}

/// A cached document from NHS login, and when fetching it last failed.
struct Slot<T> {
    cached: Option<Cached<T>>,
    failed_at: Option<Instant>,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot {
            cached: None,
            failed_at: None,
        }
    }
}

impl<T> Slot<T> {
    /// Within the back-off after a failed fetch: callers use what is cached, or fail at once,
    /// instead of each waiting out its own timeout.
    fn backing_off(&self) -> bool {
        self.failed_at
            .is_some_and(|t| t.elapsed() < FETCH_FAILURE_BACKOFF)
    }

    fn stale(&self) -> Option<Arc<T>> {
        self.cached.as_ref().map(|c| c.value.clone())
    }

    fn store(&mut self, value: T) -> Arc<T> {
        let value = Arc::new(value);
        self.cached = Some(Cached {
            value: value.clone(),
            fetched: Instant::now(),
        });
        self.failed_at = None;
        value
    }
}

pub struct NhsLogin {
    settings: Arc<NhsLoginSettings>,
    signing_key: EncodingKey,
    http: OnceLock<Result<reqwest::Client, String>>,
    metadata: tokio::sync::Mutex<Slot<Metadata>>,
    jwks: tokio::sync::Mutex<Slot<JwkSet>>,
    sessions: session::Sessions,
    records: Records,
    clock: Arc<dyn Clock>,
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
    ) -> Result<NhsLogin, String> {
        let signing_key = EncodingKey::from_rsa_pem(settings.private_key.expose().as_bytes())
            .map_err(|e| format!("nhs_login.private_key_file: {e}"))?;
        Ok(NhsLogin {
            sessions: session::Sessions::new(
                records.clone(),
                settings.session_idle_secs,
                settings.session_max_secs,
            ),
            settings,
            signing_key,
            http: OnceLock::new(),
            metadata: tokio::sync::Mutex::new(Slot::default()),
            jwks: tokio::sync::Mutex::new(Slot::default()),
            records,
            clock,
        })
    }

    pub fn settings(&self) -> &NhsLoginSettings {
        &self.settings
    }

    pub fn sessions(&self) -> &session::Sessions {
        &self.sessions
    }

    fn http(&self) -> Result<&reqwest::Client, NhsLoginError> {
        self.http
            .get_or_init(|| {
                reqwest::Client::builder()
                    .timeout(self.settings.timeout)
                    .connect_timeout(self.settings.timeout)
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("pkb-edge/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| NhsLoginError::Unavailable(format!("HTTP client: {e}")))
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        what: &str,
    ) -> Result<T, NhsLoginError> {
        let r = self
            .http()?
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| NhsLoginError::Unavailable(format!("{what}: {e}")))?;
        if !r.status().is_success() {
            return Err(NhsLoginError::Unavailable(format!(
                "{what}: HTTP {}",
                r.status().as_u16()
            )));
        }
        r.json()
            .await
            .map_err(|e| NhsLoginError::Unavailable(format!("{what}: not the expected JSON: {e}")))
    }

    /// `{issuer}/.well-known/openid-configuration`, cached for an hour; its `issuer` must be the
    /// configured one exactly. One fetch at a time; when NHS login is unreachable the last copy
    /// is used, and for 5 s after a failure nobody waits on another fetch.
    async fn metadata(&self) -> Result<Arc<Metadata>, NhsLoginError> {
        let mut slot = self.metadata.lock().await;
        if let Some(c) = slot
            .cached
            .as_ref()
            .filter(|c| c.fetched.elapsed() < METADATA_TTL)
        {
            return Ok(c.value.clone());
        }
        if slot.backing_off() {
            return slot
                .stale()
                .ok_or_else(|| NhsLoginError::Unavailable("discovery failed moments ago".into()));
        }
        match self.fetch_metadata().await {
            Ok(m) => Ok(slot.store(m)),
            Err(e) => {
                slot.failed_at = Some(Instant::now());
                slot.stale().ok_or(e)
            }
        }
    }

    async fn fetch_metadata(&self) -> Result<Metadata, NhsLoginError> {
        let url = format!("{}/.well-known/openid-configuration", self.settings.issuer);
        let m: Metadata = self.get_json(&url, "discovery").await?;
        if m.issuer.trim_end_matches('/') != self.settings.issuer {
            return Err(NhsLoginError::Refused(format!(
                "discovery names issuer `{}`, not the configured nhs_login.issuer",
                m.issuer
            )));
        }
        Ok(m)
    }

    /// The key for `kid`, fetching the JWKS again (at most every 10 s) when the kid is unknown:
    /// NHS login may rotate its keys. A failed fetch keeps the keys already known.
    async fn key_for(&self, kid: &str, jwks_uri: &str) -> Result<DecodingKey, NhsLoginError> {
        let mut slot = self.jwks.lock().await;
        let fresh_enough = |c: &Cached<JwkSet>| c.fetched.elapsed() < JWKS_TTL;
        if let Some(jwk) = slot
            .cached
            .as_ref()
            .filter(|c| fresh_enough(c))
            .and_then(|c| c.value.find(kid).cloned())
        {
            return DecodingKey::from_jwk(&jwk)
                .map_err(|e| NhsLoginError::IdToken(format!("key `{kid}` is unusable: {e}")));
        }
        let may_fetch = !slot.backing_off()
            && slot
                .cached
                .as_ref()
                .is_none_or(|c| !fresh_enough(c) || c.fetched.elapsed() >= JWKS_REFETCH_MIN);
        if may_fetch {
            match self.get_json::<JwkSet>(jwks_uri, "jwks").await {
                Ok(set) => {
                    slot.store(set);
                }
                Err(e) => {
                    slot.failed_at = Some(Instant::now());
                    if slot.cached.is_none() {
                        return Err(e);
                    }
                }
            }
        }
        let jwk = slot
            .stale()
            .and_then(|set| set.find(kid).cloned())
            .ok_or_else(|| NhsLoginError::IdToken(format!("signed with unknown key `{kid}`")))?;
        DecodingKey::from_jwk(&jwk)
            .map_err(|e| NhsLoginError::IdToken(format!("key `{kid}` is unusable: {e}")))
    }

    fn sign<T: Serialize>(&self, claims: &T) -> Result<String, NhsLoginError> {
        let mut header = Header::new(Algorithm::RS512);
        header.typ = Some("JWT".into());
        header.kid = self.settings.key_id.clone();
        jsonwebtoken::encode(&header, claims, &self.signing_key)
            .map_err(|e| NhsLoginError::Refused(format!("cannot sign: {e}")))
    }

    /// Starts a sign-in: records the state and returns NHS login's authorize URL. With an
    /// asserted identity (from PKB or the NHS App) the sign-in is silent (`prompt=none`).
    /// `binding` is the value of the browser's login cookie (see `web`).
    pub async fn start(
        &self,
        return_to: &RelativePath,
        asserted: Option<&str>,
        binding: &str,
    ) -> Result<String, NhsLoginError> {
        self.start_for(return_to, asserted, None, binding).await
    }

    /// A silent sign-in as the session's own user (pkb-edge asserts the identity itself), to
    /// fetch fresh claims: GP credentials the service found invalid.
    pub async fn start_refresh(
        &self,
        return_to: &RelativePath,
        session: &Session,
        binding: &str,
    ) -> Result<String, NhsLoginError> {
        let assertion = self.assertion(session)?;
        self.start_for(
            return_to,
            Some(&assertion),
            Some(PURPOSE_GP_REFRESH),
            binding,
        )
        .await
    }

    async fn start_for(
        &self,
        return_to: &RelativePath,
        asserted: Option<&str>,
        purpose: Option<&str>,
        binding: &str,
    ) -> Result<String, NhsLoginError> {
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
            nonce: nonce.clone(),
            return_to: return_to.as_str().to_string(),
            silent: asserted.is_some(),
            purpose: purpose.map(str::to_string),
            binding: binding_hash(binding),
        };
        let expires_at = self.clock.now() + self.settings.login_ttl_secs;
        self.records
            .put(RecordKind::LoginState, &state, &pending, expires_at)
            .await?;
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
        Ok(url.into())
    }

    /// The callback: the state is spent whatever happens; then the error or the code.
    /// `binding`: the browser's login cookie; `previous`: the session the browser had, if any.
    pub async fn callback(
        &self,
        query: Option<&str>,
        binding: Option<&str>,
        previous: Option<&Session>,
    ) -> Result<SignedIn, CallbackFailure> {
        let mut params = std::collections::HashMap::new();
        for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            params
                .entry(k.into_owned())
                .or_insert_with(|| v.into_owned());
        }
        let fail = |error, return_to: Option<String>| CallbackFailure {
            error,
            return_to,
            purpose: None,
        };
        let Some(state) = params
            .get("state")
            .filter(|s| crate::core::random::state_is_well_formed(s))
        else {
            return Err(fail(NhsLoginError::StateUnknown, None));
        };
        let pending: LoginState = match self.records.take(RecordKind::LoginState, state).await {
            Ok(Some(r)) => r.value,
            Ok(None) => return Err(fail(NhsLoginError::StateUnknown, None)),
            Err(e) => return Err(fail(e.into(), None)),
        };
        if binding.map(binding_hash).as_deref() != Some(pending.binding.as_str()) {
            // Started in another browser (or cookies are blocked): never sign this one in.
            return Err(fail(NhsLoginError::OtherBrowser, None));
        }
        let return_to = Some(pending.return_to.clone());
        let fail = |error, return_to: Option<String>| CallbackFailure {
            error,
            return_to,
            purpose: pending.purpose.clone(),
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
        let now = self.clock.now();
        let assertion = self.sign(&ClientAssertion {
            iss: &self.settings.client_id,
            sub: &self.settings.client_id,
            aud: &metadata.token_endpoint,
            jti: random_id(),
            iat: now,
            exp: now + ASSERTION_LIFETIME_SECS,
        })?;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.settings.redirect_uri.as_str()),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion.as_str()),
        ];
        let r = self
            .http()?
            .post(&metadata.token_endpoint)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| NhsLoginError::Unavailable(format!("token: {e}")))?;
        let status = r.status();
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(NhsLoginError::Unavailable(format!(
                "token: HTTP {}",
                status.as_u16()
            )));
        }
        let body = r
            .bytes()
            .await
            .map_err(|e| NhsLoginError::Unavailable(format!("token: {e}")))?;
        if !status.is_success() {
            let code = serde_json::from_slice::<OAuthErrorBody>(&body)
                .ok()
                .and_then(|b| b.error)
                .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
            return Err(NhsLoginError::Refused(format!("token endpoint: {code}")));
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| NhsLoginError::Refused(format!("token answer is not JSON: {e}")))?;
        let id_token = answer
            .id_token
            .ok_or_else(|| NhsLoginError::IdToken("the token answer has no id_token".into()))?;
        let access_token = answer
            .access_token
            .ok_or_else(|| NhsLoginError::Refused("the token answer has no access_token".into()))?;
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

    async fn verify_id_token(
        &self,
        token: &str,
        metadata: &Metadata,
        pending: &LoginState,
    ) -> Result<IdTokenClaims, NhsLoginError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| NhsLoginError::IdToken(format!("not a JWT: {e}")))?;
        if header.alg != Algorithm::RS512 {
            return Err(NhsLoginError::IdToken(format!(
                "signed with {:?}, not RS512",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| NhsLoginError::IdToken("no `kid` in its header".into()))?;
        let key = self.key_for(&kid, &metadata.jwks_uri).await?;
        let mut validation = Validation::new(Algorithm::RS512);
        validation.set_issuer(&[metadata.issuer.as_str()]);
        validation.set_audience(&[self.settings.client_id.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub", "iat"]);
        // Times are checked below against pkb-edge's clock, so tests can move it.
        validation.validate_exp = false;
        let claims = jsonwebtoken::decode::<IdTokenClaims>(token, &key, &validation)
            .map_err(|e| NhsLoginError::IdToken(id_token_problem(&e)))?
            .claims;
        let (now, skew) = (self.clock.now(), self.settings.clock_skew_secs);
        if claims.exp + skew <= now {
            return Err(NhsLoginError::IdToken("expired (`exp`)".into()));
        }
        if claims.iat > now + skew {
            return Err(NhsLoginError::IdToken(
                "issued in the future (`iat`)".into(),
            ));
        }
        let several_audiences = claims.aud.as_array().is_some_and(|a| a.len() > 1);
        if several_audiences && claims.azp.as_deref() != Some(self.settings.client_id.as_str()) {
            return Err(NhsLoginError::IdToken(
                "several audiences and `azp` is not this client".into(),
            ));
        }
        if claims.nonce.as_deref() != Some(pending.nonce.as_str()) {
            return Err(NhsLoginError::IdToken(
                "`nonce` is not the one this sign-in sent".into(),
            ));
        }
        let vot = claims.vot.as_deref().and_then(Vector::parse);
        if !vot.is_some_and(|v| self.settings.vtr.contains(&v)) {
            return Err(NhsLoginError::IdToken(format!(
                "`vot` {:?} is not one of the requested vectors {:?}",
                claims.vot.as_deref().unwrap_or(""),
                self.settings.vtr
            )));
        }
        if claims.sub.is_empty() || claims.sub.len() > 256 {
            return Err(NhsLoginError::IdToken("`sub` is empty or too long".into()));
        }
        if claims.jti.as_deref().is_none_or(str::is_empty) {
            return Err(NhsLoginError::IdToken("no `jti`".into()));
        }
        Ok(claims)
    }

    async fn userinfo(
        &self,
        endpoint: &str,
        access_token: &str,
        sub: &str,
    ) -> Result<Userinfo, NhsLoginError> {
        let r = self
            .http()?
            .get(endpoint)
            .bearer_auth(access_token)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| NhsLoginError::Unavailable(format!("userinfo: {e}")))?;
        let status = r.status();
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(NhsLoginError::Unavailable(format!(
                "userinfo: HTTP {}",
                status.as_u16()
            )));
        }
        if !status.is_success() {
            return Err(NhsLoginError::Userinfo(format!("HTTP {}", status.as_u16())));
        }
        let info: Userinfo = r
            .json()
            .await
            .map_err(|e| NhsLoginError::Userinfo(format!("not the expected JSON: {e}")))?;
        if info.sub != sub {
            return Err(NhsLoginError::Userinfo(
                "its `sub` is not the id_token's".into(),
            ));
        }
        Ok(info)
    }

    /// `{pkb.base_url}{path}?assertedLoginIdentity=…[&prompt=…]` with a fresh assertion for the
    /// session's user: `code` is the `jti` of their NHS login id_token, and it lives 60 s.
    pub fn pkb_url(
        &self,
        pkb_base: &url::Url,
        path: &RelativePath,
        session: &Session,
    ) -> Result<String, NhsLoginError> {
        let token = self.assertion(session)?;
        let (before_fragment, fragment) = match path.as_str().split_once('#') {
            Some((p, f)) => (p, Some(f)),
            None => (path.as_str(), None),
        };
        let mut url = format!(
            "{}{before_fragment}",
            pkb_base.as_str().trim_end_matches('/')
        );
        url.push(if before_fragment.contains('?') {
            '&'
        } else {
            '?'
        });
        url.push_str("assertedLoginIdentity=");
        url.push_str(&token);
        if let Some(prompt) = &self.settings.pkb_prompt {
            url.push_str("&prompt=");
            url.push_str(prompt);
        }
        if let Some(f) = fragment {
            url.push('#');
            url.push_str(f);
        }
        Ok(url)
    }
}

impl NhsLogin {
    /// A fresh `asserted_login_identity` for the session's user.
    fn assertion(&self, session: &Session) -> Result<String, NhsLoginError> {
        let now = self.clock.now();
        self.sign(&AssertedLoginIdentity {
            code: &session.id_token_jti,
            iss: &self.settings.client_id,
            jti: random_id(),
            iat: now,
            exp: now + ASSERTION_LIFETIME_SECS,
        })
    }

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

/// userinfo, as much as pkb-edge passes on.
#[derive(Debug, Deserialize)]
struct Userinfo {
    sub: String,
    nhs_number: Option<String>,
    identity_proofing_level: Option<String>,
    gp_integration_credentials: Option<serde_json::Value>,
}

/// jsonwebtoken's error, said in terms of the check that failed.
fn id_token_problem(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::InvalidIssuer => "wrong issuer (`iss`)".into(),
        ErrorKind::InvalidAudience => "not for this client (`aud`)".into(),
        ErrorKind::ExpiredSignature => "expired (`exp`)".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("no `{c}` claim"),
        ErrorKind::InvalidAlgorithm => "not signed with RS512".into(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_parse_in_any_method_order_and_refuse_nonsense() {
        let v = Vector::parse("P9.Cp.Cd").unwrap();
        assert_eq!(v, Vector::parse("P9.Cd.Cp").unwrap());
        assert_ne!(v, Vector::parse("P5.Cp.Cd").unwrap());
        for bad in ["", "P9", "P7.Cp", "P9.Cx", "P9.Cp.Cp", "p9.cp", "P9..Cp"] {
            assert_eq!(Vector::parse(bad), None, "{bad}");
        }
    }
}
