//! The PKB simulator: a small, faithful stand-in for PKB's OAuth, OTP and `dataFromOtherOrg`
//! endpoints, used by `pkb-edge demo`, the tests and the benchmarks.
//!
//! Faithful where it matters to pkb-edge: authorization codes are single-use and need the PKCE
//! verifier; refresh tokens rotate and a used one is dead (`invalid_grant`); access tokens expire
//! after a configurable lifetime; OTPs are single-use and live 60 s. It counts calls per endpoint
//! (`GET /_sim/stats`) and has knobs for added latency and failures (`POST /_sim/knobs`).

pub mod nhs;
mod pages;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use parking_lot::Mutex;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::pkb_default;
use crate::core::clock::{Clock, SystemClock};

/// OTPs live this long, as PKB documents.
pub const OTP_LIFETIME_SECS: i64 = 60;
/// Authorization codes live this long.
pub const CODE_LIFETIME_SECS: i64 = 60;

/// The endpoints the simulator counts, by the names `/_sim/stats` and the knobs use.
pub const ENDPOINTS: &[&str] = &[
    "authorize",
    "consent",
    "token_authorization_code",
    "token_refresh",
    "otp",
    "otp_login",
    "data_from_other_org",
    "asserted_login",
];

/// PKB's client id at the simulated NHS login.
pub const PKB_NHS_CLIENT_ID: &str = "pkb-sim";

/// PKB as an NHS login relying party: its key, and where its pages link back to.
struct NhsLink {
    op: Arc<nhs::NhsLoginSim>,
    key: jsonwebtoken::EncodingKey,
    /// The patient-facing service PKB's pages offer a way back to (the demo's portal).
    portal_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct SimPatient {
    pub nhs_number: String,
    pub name: String,
    pub data_from_other_org: bool,
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub client_id: String,
    pub client_secret: String,
    pub access_token_lifetime_secs: i64,
    pub patients: Vec<SimPatient>,
    /// Keep every code, token and OTP issued, for tests that check none leaks into logs.
    pub record_secrets: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            client_id: "pkb-edge".into(),
            client_secret: "sim-secret".into(),
            access_token_lifetime_secs: 1800,
            patients: demo_patients(),
            record_secrets: false,
        }
    }
}

/// Synthetic patients (NHS numbers from the 999 test range, with valid check digits).
pub fn demo_patients() -> Vec<SimPatient> {
    let p = |nhs: &str, name: &str, data| SimPatient {
        nhs_number: nhs.into(),
        name: name.into(),
        data_from_other_org: data,
    };
    vec![
        p("9990000018", "Ada Lovelace", true),
        p("9990000026", "Mary Seacole", false),
        p("9990000034", "Alan Turing", true),
        p("9434765919", "Florence Nightingale", false),
    ]
}

/// Runtime-adjustable behaviour. Every field is optional in `POST /_sim/knobs`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Knobs {
    /// Added latency per endpoint name, in milliseconds.
    #[serde(default)]
    pub latency_ms: HashMap<String, u64>,
    /// Fraction (0..=1) of calls per endpoint answered with `fail_status` instead.
    #[serde(default)]
    pub fail_rate: HashMap<String, f64>,
    #[serde(default)]
    pub fail_status: Option<u16>,
    #[serde(default)]
    pub access_token_lifetime_secs: Option<i64>,
}

struct CodeGrant {
    user: String,
    client_id: String,
    redirect_uri: String,
    challenge: String,
    scope: String,
    issued_at: i64,
}

struct AccessGrant {
    user: String,
    expires_at: i64,
}

struct RefreshGrant {
    user: String,
    scope: String,
    used: bool,
}

struct OtpGrant {
    user: String,
    expires_at: i64,
    used: bool,
}

#[derive(Default)]
struct Grants {
    codes: HashMap<String, CodeGrant>,
    access: HashMap<String, AccessGrant>,
    refresh: HashMap<String, RefreshGrant>,
    otps: HashMap<String, OtpGrant>,
    /// The generation of OTPs before `otps` (see `remember_otp`).
    older_otps: HashMap<String, OtpGrant>,
}

/// OTPs remembered per generation: the simulator forgets the older generation when the newer one
/// fills, so it keeps between this many and twice this many. Unbounded, a load test's millions of
/// OTPs would make the map's occasional doubling stall every request for hundreds of ms.
const OTP_GENERATION: usize = 1 << 16;

impl Grants {
    /// Remembers an OTP; returns the generation it retired, to be dropped outside the lock.
    fn remember_otp(&mut self, otp: String, grant: OtpGrant) -> Option<HashMap<String, OtpGrant>> {
        let retired = (self.otps.len() >= OTP_GENERATION).then(|| {
            let full = std::mem::replace(&mut self.otps, HashMap::with_capacity(OTP_GENERATION));
            std::mem::replace(&mut self.older_otps, full)
        });
        self.otps.insert(otp, grant);
        retired
    }

    fn otp(&mut self, otp: &str) -> Option<&mut OtpGrant> {
        match self.otps.get_mut(otp) {
            Some(grant) => Some(grant),
            None => self.older_otps.get_mut(otp),
        }
    }
}

pub struct Simulator {
    config: SimConfig,
    paths: SimPaths,
    grants: Mutex<Grants>,
    knobs: Mutex<Knobs>,
    counters: HashMap<&'static str, AtomicU64>,
    /// Refresh and OTP calls per PKB user, counted as they arrive (before any added latency).
    user_calls: Mutex<HashMap<(String, &'static str), u64>>,
    clock: Arc<dyn Clock>,
    issued: Mutex<Vec<String>>,
    nhs: std::sync::OnceLock<NhsLink>,
}

/// The paths the simulator serves; PKB's documented (or assumed) defaults.
#[derive(Debug, Clone)]
pub struct SimPaths {
    pub authorize: String,
    pub token: String,
    pub otp: String,
    pub otp_login: String,
    pub data_from_other_org: String,
}

impl Default for SimPaths {
    fn default() -> Self {
        SimPaths {
            authorize: pkb_default::authorize_path.into(),
            token: pkb_default::token_path.into(),
            otp: pkb_default::otp_path.into(),
            otp_login: pkb_default::otp_login_path.into(),
            data_from_other_org: pkb_default::data_from_other_org_path.into(),
        }
    }
}

fn random_token(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    B64URL.encode(b)
}

pub use crate::pairing::pkce_challenge;

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({ "error": error }))).into_response()
}

impl Simulator {
    pub fn new(config: SimConfig) -> Arc<Simulator> {
        Arc::new(Simulator {
            config,
            paths: SimPaths::default(),
            grants: Mutex::new(Grants::default()),
            knobs: Mutex::new(Knobs::default()),
            counters: ENDPOINTS.iter().map(|e| (*e, AtomicU64::new(0))).collect(),
            user_calls: Mutex::new(HashMap::new()),
            clock: Arc::new(SystemClock),
            issued: Mutex::new(Vec::new()),
            nhs: std::sync::OnceLock::new(),
        })
    }

    /// Makes PKB a relying party of the simulated NHS login: its pages then accept
    /// `assertedLoginIdentity`, and offer a way back to `portal_url` carrying one of PKB's own.
    pub fn attach_nhs_login(&self, op: Arc<nhs::NhsLoginSim>, portal_url: Option<String>) {
        let (private, registration) = nhs::new_client(PKB_NHS_CLIENT_ID, Vec::new());
        op.register(registration);
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(private.as_bytes()).expect("fresh key");
        let _ = self.nhs.set(NhsLink {
            op,
            key,
            portal_url: portal_url.map(|u| u.trim_end_matches('/').to_string()),
        });
    }

    /// What PKB puts in a link to a service for an NHS login user it has signed in: an
    /// `asserted_login_identity` signed with PKB's key, `code` the jti of PKB's id_token.
    pub fn assertion_from_pkb(&self, user: usize) -> Option<String> {
        let link = self.nhs.get()?;
        let code = link.op.issue_id_token_jti(user, PKB_NHS_CLIENT_ID);
        let now = self.clock.now();
        let claims = json!({
            "code": code,
            "iss": PKB_NHS_CLIENT_ID,
            "jti": random_token(24),
            "iat": now,
            "exp": now + 60,
        });
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS512);
        jsonwebtoken::encode(&header, &claims, &link.key).ok()
    }

    /// A new random secret (code, token, OTP), remembered when `record_secrets` is on.
    fn mint(&self, bytes: usize) -> String {
        let secret = random_token(bytes);
        if self.config.record_secrets {
            self.issued.lock().push(secret.clone());
        }
        secret
    }

    /// Every code, token and OTP issued so far (with `record_secrets`), and the client secret.
    pub fn issued_secrets(&self) -> Vec<String> {
        let mut all = self.issued.lock().clone();
        all.push(self.config.client_secret.clone());
        all
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    pub fn router(self: &Arc<Self>) -> Router {
        let p = &self.paths;
        Router::new()
            .route(&p.authorize, get(authorize_page).post(authorize_decision))
            .route(&p.token, post(token))
            .route(&p.otp, post(issue_otp))
            .route(&p.otp_login, get(otp_login))
            .route(&p.data_from_other_org, get(data_from_other_org))
            .route("/_sim/stats", get(stats))
            .route("/_sim/knobs", post(set_knobs).get(get_knobs))
            .route("/", get(home))
            .fallback(asserted_page)
            .with_state(self.clone())
    }

    /// Serves until the process ends.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }

    pub fn count(&self, endpoint: &str) -> u64 {
        self.counters
            .get(endpoint)
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }

    /// Calls to `endpoint` (`token_refresh` or `otp`) made for one PKB user, counted when they
    /// arrive: what a benchmark attributes to one user's launch or page view.
    pub fn user_count(&self, user: &str, endpoint: &str) -> u64 {
        self.user_calls
            .lock()
            .get(&(user.to_string(), endpoint))
            .copied()
            .unwrap_or(0)
    }

    fn count_for_user(&self, user: Option<String>, endpoint: &'static str) {
        if let Some(user) = user {
            *self.user_calls.lock().entry((user, endpoint)).or_default() += 1;
        }
    }

    pub fn set_knobs(&self, knobs: Knobs) {
        let mut k = self.knobs.lock();
        k.latency_ms.extend(knobs.latency_ms);
        k.fail_rate.extend(knobs.fail_rate);
        if knobs.fail_status.is_some() {
            k.fail_status = knobs.fail_status;
        }
        if knobs.access_token_lifetime_secs.is_some() {
            k.access_token_lifetime_secs = knobs.access_token_lifetime_secs;
        }
    }

    /// Counts the call, waits out any added latency, and says whether to fail it.
    async fn enter(&self, endpoint: &'static str) -> Option<Response> {
        if let Some(c) = self.counters.get(endpoint) {
            c.fetch_add(1, Ordering::SeqCst);
        }
        let (latency, fail_rate, fail_status) = {
            let k = self.knobs.lock();
            (
                k.latency_ms.get(endpoint).copied().unwrap_or(0),
                k.fail_rate.get(endpoint).copied().unwrap_or(0.0),
                k.fail_status.unwrap_or(503),
            )
        };
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let fail = fail_rate > 0.0 && (rand::rng().next_u64() as f64 / u64::MAX as f64) < fail_rate;
        fail.then(|| {
            let status =
                StatusCode::from_u16(fail_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            (
                status,
                Json(json!({ "error": "server_error", "error_description": "simulated failure" })),
            )
                .into_response()
        })
    }

    fn access_lifetime(&self) -> i64 {
        self.knobs
            .lock()
            .access_token_lifetime_secs
            .unwrap_or(self.config.access_token_lifetime_secs)
    }

    fn issue_tokens(&self, grants: &mut Grants, user: &str, scope: &str) -> serde_json::Value {
        let lifetime = self.access_lifetime();
        let access = self.mint(24);
        let refresh = self.mint(24);
        grants.access.insert(
            access.clone(),
            AccessGrant {
                user: user.to_string(),
                expires_at: self.clock.now() + lifetime,
            },
        );
        grants.refresh.insert(
            refresh.clone(),
            RefreshGrant {
                user: user.to_string(),
                scope: scope.to_string(),
                used: false,
            },
        );
        json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "refresh_token": refresh,
            "scope": scope,
        })
    }

    /// Tokens for `user` as the token endpoint would issue them, without the OAuth dance: for
    /// benchmarks that need many thousands of pairings PKB knows.
    pub fn issue_directly(&self, user: &str) -> crate::store::TokenSet {
        let issued = self.issue_tokens(&mut self.grants.lock(), user, "CLINICIAN");
        let field = |name: &str| issued[name].as_str().unwrap_or_default().to_string();
        crate::store::TokenSet {
            access_token: crate::core::secret::AccessToken::new(field("access_token")),
            refresh_token: Some(crate::core::secret::RefreshToken::new(field(
                "refresh_token",
            ))),
            access_expires_at: self.clock.now() + self.access_lifetime(),
        }
    }

    /// The user an `Authorization: Bearer` token belongs to, if it is live.
    fn bearer_user(&self, headers: &HeaderMap) -> Option<String> {
        let token = headers
            .get("authorization")?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?;
        let grants = self.grants.lock();
        let grant = grants.access.get(token)?;
        (grant.expires_at > self.clock.now()).then(|| grant.user.clone())
    }

    /// Client authentication: HTTP Basic (form-encoded id and secret) or the form body.
    fn client_ok(&self, headers: &HeaderMap, form: &HashMap<String, String>) -> bool {
        let from_basic = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                let (id, secret) = s.split_once(':')?;
                let dec = |x: &str| {
                    percent_encoding::percent_decode_str(&x.replace('+', " "))
                        .decode_utf8_lossy()
                        .into_owned()
                };
                Some((dec(id), dec(secret)))
            });
        let (id, secret) = match from_basic {
            Some(pair) => pair,
            None => (
                form.get("client_id").cloned().unwrap_or_default(),
                form.get("client_secret").cloned().unwrap_or_default(),
            ),
        };
        id == self.config.client_id && secret == self.config.client_secret
    }
}

type Sim = State<Arc<Simulator>>;

async fn home(
    State(sim): Sim,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if q.contains_key("assertedLoginIdentity") {
        return asserted_page(State(sim), headers, uri, Query(q)).await;
    }
    Html(pages::home()).into_response()
}

/// What a PKB page shows a user who arrived with NHS login (JSON for tests that ask).
#[derive(Debug, Serialize, Deserialize)]
pub struct NhsLoginView {
    pub sub: String,
    pub nhs_number: String,
    pub name: String,
    pub path: String,
    pub prompt: Option<String>,
}

/// Any PKB page opened with `assertedLoginIdentity`: PKB, as an NHS login RP, has NHS login check
/// and spend it, and the user is in PKB without signing in.
async fn asserted_page(
    State(sim): Sim,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(asserted) = q.get("assertedLoginIdentity") else {
        return (
            StatusCode::NOT_FOUND,
            Html(pages::authorize_error("no such page")),
        )
            .into_response();
    };
    if let Some(fail) = sim.enter("asserted_login").await {
        return fail;
    }
    let Some(link) = sim.nhs.get() else {
        return (
            StatusCode::BAD_REQUEST,
            Html(pages::authorize_error("this PKB does not use NHS login")),
        )
            .into_response();
    };
    let user = match link.op.accept_assertion(asserted) {
        Ok(user) => user,
        Err(why) => {
            return (
                StatusCode::UNAUTHORIZED,
                Html(pages::authorize_error(&format!(
                    "NHS login refused the assertedLoginIdentity: {why}"
                ))),
            )
                .into_response()
        }
    };
    let u = &link.op.users()[user];
    let view = NhsLoginView {
        sub: u.sub.clone(),
        nhs_number: u.nhs_number.clone(),
        name: format!("{} {}", u.given_name, u.family_name),
        path: uri.path().to_string(),
        prompt: q.get("prompt").cloned(),
    };
    let wants_json = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    if wants_json {
        return Json(view).into_response();
    }
    let back = link.portal_url.as_ref().and_then(|portal| {
        let assertion = sim.assertion_from_pkb(user)?;
        Some(format!("{portal}/?assertedLoginIdentity={assertion}"))
    });
    Html(pages::nhs_logged_in(&view, back.as_deref())).into_response()
}

async fn authorize_page(State(sim): Sim, Query(q): Query<HashMap<String, String>>) -> Response {
    if let Some(fail) = sim.enter("authorize").await {
        return fail;
    }
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    let problem = if get("response_type") != "code" {
        Some("response_type must be code")
    } else if get("client_id") != sim.config.client_id {
        Some("unknown client_id")
    } else if get("redirect_uri").is_empty() {
        Some("redirect_uri is required")
    } else if get("code_challenge").len() < 43 || get("code_challenge_method") != "S256" {
        Some("PKCE with S256 is required")
    } else if get("state").is_empty() {
        Some("state is required")
    } else if !["PATIENT", "CLINICIAN", "TEAMCOORD"].contains(&get("scope").as_str()) {
        Some("scope must be PATIENT, CLINICIAN or TEAMCOORD")
    } else {
        None
    };
    match problem {
        Some(p) => (StatusCode::BAD_REQUEST, Html(pages::authorize_error(p))).into_response(),
        None => Html(pages::consent(&sim.paths.authorize, &q)).into_response(),
    }
}

async fn authorize_decision(State(sim): Sim, Form(f): Form<HashMap<String, String>>) -> Response {
    if let Some(fail) = sim.enter("consent").await {
        return fail;
    }
    let get = |k: &str| f.get(k).cloned().unwrap_or_default();
    let redirect_uri = get("redirect_uri");
    let Ok(mut target) = url::Url::parse(&redirect_uri) else {
        return (
            StatusCode::BAD_REQUEST,
            Html(pages::authorize_error("redirect_uri is not a URL")),
        )
            .into_response();
    };
    if get("decision") != "allow" {
        target
            .query_pairs_mut()
            .append_pair("error", "access_denied")
            .append_pair("state", &get("state"));
        return Redirect::to(target.as_str()).into_response();
    }
    let user = get("pkb_user");
    if user.trim().is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            Html(pages::authorize_error("choose a PKB user")),
        )
            .into_response();
    }
    let code = sim.mint(18);
    sim.grants.lock().codes.insert(
        code.clone(),
        CodeGrant {
            user: user.trim().to_string(),
            client_id: get("client_id"),
            redirect_uri: redirect_uri.clone(),
            challenge: get("code_challenge"),
            scope: get("scope"),
            issued_at: sim.clock.now(),
        },
    );
    target
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &get("state"));
    Redirect::to(target.as_str()).into_response()
}

async fn token(
    State(sim): Sim,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let grant_type = f.get("grant_type").map(String::as_str).unwrap_or_default();
    let endpoint = if grant_type == "refresh_token" {
        "token_refresh"
    } else {
        "token_authorization_code"
    };
    if endpoint == "token_refresh" {
        let user = f
            .get("refresh_token")
            .and_then(|t| Some(sim.grants.lock().refresh.get(t)?.user.clone()));
        sim.count_for_user(user, endpoint);
    }
    if let Some(fail) = sim.enter(endpoint).await {
        return fail;
    }
    if !sim.client_ok(&headers, &f) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let get = |k: &str| f.get(k).cloned().unwrap_or_default();
    let now = sim.clock.now();
    let mut grants = sim.grants.lock();
    match grant_type {
        "authorization_code" => {
            // Single use: the code is gone whatever happens next.
            let Some(code) = grants.codes.remove(&get("code")) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            };
            let valid = code.issued_at + CODE_LIFETIME_SECS > now
                && code.client_id == sim.config.client_id
                && code.redirect_uri == get("redirect_uri")
                && pkce_challenge(&get("code_verifier")) == code.challenge;
            if !valid {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            Json(sim.issue_tokens(&mut grants, &code.user, &code.scope)).into_response()
        }
        "refresh_token" => {
            let presented = get("refresh_token");
            let (user, scope) = match grants.refresh.get_mut(&presented) {
                Some(r) if !r.used => {
                    r.used = true;
                    (r.user.clone(), r.scope.clone())
                }
                _ => return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant"),
            };
            Json(sim.issue_tokens(&mut grants, &user, &scope)).into_response()
        }
        _ => oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    }
}

async fn issue_otp(State(sim): Sim, headers: HeaderMap) -> Response {
    sim.count_for_user(sim.bearer_user(&headers), "otp");
    if let Some(fail) = sim.enter("otp").await {
        return fail;
    }
    let Some(user) = sim.bearer_user(&headers) else {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_token");
    };
    let otp = sim.mint(18);
    let retired = sim.grants.lock().remember_otp(
        otp.clone(),
        OtpGrant {
            user,
            expires_at: sim.clock.now() + OTP_LIFETIME_SECS,
            used: false,
        },
    );
    drop(retired);
    Json(json!({ "otp": otp })).into_response()
}

/// What the OTP login page shows; also its JSON form for tests.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LoginView {
    pub user: String,
    pub landing: Option<String>,
    pub context: HashMap<String, String>,
}

async fn otp_login(
    State(sim): Sim,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(fail) = sim.enter("otp_login").await {
        return fail;
    }
    let now = sim.clock.now();
    let user = {
        let mut grants = sim.grants.lock();
        match q.get("otpToken").and_then(|o| grants.otp(o)) {
            Some(g) if !g.used && g.expires_at > now => {
                g.used = true;
                Some(g.user.clone())
            }
            _ => None,
        }
    };
    let Some(user) = user else {
        return (StatusCode::FORBIDDEN, Html(pages::otp_refused())).into_response();
    };
    let landing = q.get("redirect_uri").cloned();
    let context = landing
        .as_deref()
        .and_then(|l| url::Url::parse("https://pkb.invalid").ok()?.join(l).ok())
        .map(|u| {
            u.query_pairs()
                .filter(|(k, _)| k.starts_with("context"))
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default();
    let view = LoginView {
        user,
        landing,
        context,
    };
    let wants_json = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    if wants_json {
        Json(view).into_response()
    } else {
        let patient = view
            .context
            .get("contextNationalId")
            .and_then(|id| sim.config.patients.iter().find(|p| &p.nhs_number == id));
        Html(pages::logged_in(&view, patient)).into_response()
    }
}

async fn data_from_other_org(
    State(sim): Sim,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(fail) = sim.enter("data_from_other_org").await {
        return fail;
    }
    if sim.bearer_user(&headers).is_none() {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_token");
    }
    let id = q.get("nationalId").cloned().unwrap_or_default();
    let id_type = q.get("nationalIdType").cloned().unwrap_or_default();
    match sim
        .config
        .patients
        .iter()
        .find(|p| p.nhs_number == id && id_type == "NHS")
    {
        Some(p) => Json(json!({ "dataFromOtherOrg": p.data_from_other_org })).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": "patient_not_found" })),
        )
            .into_response(),
    }
}

async fn stats(State(sim): Sim) -> Json<serde_json::Value> {
    let counts: serde_json::Map<String, serde_json::Value> = ENDPOINTS
        .iter()
        .map(|e| (e.to_string(), json!(sim.count(e))))
        .collect();
    Json(serde_json::Value::Object(counts))
}

async fn set_knobs(State(sim): Sim, Json(knobs): Json<Knobs>) -> Json<Knobs> {
    sim.set_knobs(knobs);
    Json(sim.knobs.lock().clone())
}

async fn get_knobs(State(sim): Sim) -> Json<Knobs> {
    Json(sim.knobs.lock().clone())
}

/// Real tokens for `pkb_user` from a simulator at `base_url`, the way a browser and pkb-edge get
/// them: the consent page, the user's "allow", then the code exchange with the PKCE verifier.
/// For seeding pairings in tests, benchmarks and the admin tools, never by writing rows by hand.
pub async fn obtain_tokens(
    base_url: &str,
    client_id: &str,
    client_secret: &str,
    pkb_user: &str,
) -> Result<crate::store::TokenSet, String> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?;
    let paths = SimPaths::default();
    let verifier = crate::core::random::random_token();
    let state = crate::core::random::random_token();
    let challenge = pkce_challenge(&verifier);
    let redirect_uri = "https://seed.invalid/_pkb/callback";
    let authorize = format!("{base_url}{}", paths.authorize);
    let params = [
        ("client_id", client_id),
        ("redirect_uri", redirect_uri),
        ("scope", "CLINICIAN"),
        ("state", state.as_str()),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    let err = |e: reqwest::Error| e.to_string();
    let mut query = params.to_vec();
    query.push(("response_type", "code"));
    let page = http
        .get(&authorize)
        .query(&query)
        .send()
        .await
        .map_err(err)?;
    if !page.status().is_success() {
        return Err(format!("consent page answered {}", page.status()));
    }
    let mut form = params.to_vec();
    form.extend([("decision", "allow"), ("pkb_user", pkb_user)]);
    let consent = http
        .post(&authorize)
        .form(&form)
        .send()
        .await
        .map_err(err)?;
    let location = consent
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or("consent did not redirect")?;
    let code = url::Url::parse(location)
        .map_err(|e| e.to_string())?
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .ok_or("no code in the consent redirect")?;
    let asked_at = crate::core::clock::Clock::now(&SystemClock);
    let answer: serde_json::Value = http
        .post(format!("{base_url}{}", paths.token))
        .basic_auth(client_id, Some(client_secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier.as_str()),
        ])
        .send()
        .await
        .map_err(err)?
        .json()
        .await
        .map_err(err)?;
    let field = |k: &str| answer[k].as_str().map(str::to_string);
    Ok(crate::store::TokenSet {
        access_token: crate::core::secret::AccessToken::new(
            field("access_token").ok_or("no access_token")?,
        ),
        refresh_token: field("refresh_token").map(crate::core::secret::RefreshToken::new),
        access_expires_at: asked_at + answer["expires_in"].as_i64().ok_or("no expires_in")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otps_are_remembered_for_at_least_one_generation_and_at_most_two() {
        let mut grants = Grants::default();
        let grant = |n: usize| OtpGrant {
            user: format!("u{n}"),
            expires_at: 0,
            used: false,
        };
        for n in 0..=2 * OTP_GENERATION {
            drop(grants.remember_otp(format!("otp{n}"), grant(n)));
        }
        assert!(
            grants.otp("otp0").is_none(),
            "the oldest generation is forgotten"
        );
        let recent = OTP_GENERATION + 1;
        assert_eq!(
            grants.otp(&format!("otp{recent}")).unwrap().user,
            format!("u{recent}")
        );
        assert!(grants.otp(&format!("otp{}", 2 * OTP_GENERATION)).is_some());
        assert!(grants.otps.len() + grants.older_otps.len() <= 2 * OTP_GENERATION);
    }

    #[test]
    fn demo_patients_have_valid_nhs_numbers() {
        for p in demo_patients() {
            assert!(
                crate::core::patient::nhs_number_is_valid(&p.nhs_number),
                "{}",
                p.nhs_number
            );
        }
    }
}
