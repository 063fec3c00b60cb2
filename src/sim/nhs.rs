//! The NHS login simulator: an OpenID provider faithful to what pkb-edge relies on in NHS login's
//! interface specification. Discovery and JWKS; `/authorize` with `state`, `nonce`,
//! `response_mode=query`, `vtr`, `prompt` and `asserted_login_identity` (signature checked against
//! the asserting RP's registered key, `code` a `jti` this provider issued, at most 60 s of life,
//! single use); `/token` accepting only `private_key_jwt` (RS512) client authentication; RS512
//! id_tokens with `kid`, `nonce`, `vot` and `jti`; `/userinfo`. Knobs make each id_token check
//! fail on purpose and make `/authorize` answer with any error code. Counts calls per endpoint.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::Vector;
use crate::core::clock::{Clock, SystemClock};
use crate::core::rsa_keys as keys;
use crate::pages::{document, html, Markup};

/// What the simulator counts, by the names `count` takes.
pub const NHS_ENDPOINTS: &[&str] = &[
    "discovery",
    "jwks",
    "authorize",
    "authorize_silent",
    "login_page",
    "login_decision",
    "token",
    "userinfo",
    "assertion_accepted",
    "assertion_refused",
    "client_assertion_refused",
];

/// Longest life NHS login allows an `asserted_login_identity`.
const MAX_ASSERTION_LIFE_SECS: i64 = 60;

/// A test user of the simulated NHS login.
#[derive(Debug, Clone)]
pub struct NhsUser {
    pub sub: String,
    pub nhs_number: String,
    pub given_name: String,
    pub family_name: String,
    pub email: String,
    /// P0, P5 or P9.
    pub proofing_level: String,
    /// What `gp_integration_credentials` holds for this user (P9 users only); the linkage key
    /// gets a fresh suffix on every userinfo call, as if the practice had issued a new one.
    pub gp: Option<SimGpCredentials>,
}

#[derive(Debug, Clone)]
pub struct SimGpCredentials {
    pub user_id: String,
    pub linkage_key: String,
    pub ods_code: String,
    pub system_id: Option<String>,
}

pub fn demo_users() -> Vec<NhsUser> {
    let u = |sub: &str, nhs: &str, name: (&str, &str), level: &str, gp: Option<(&str, &str)>| {
        let (given, family) = name;
        NhsUser {
            sub: sub.into(),
            nhs_number: nhs.into(),
            given_name: given.into(),
            family_name: family.into(),
            email: format!(
                "{}.{}@example.com",
                given.to_lowercase(),
                family.to_lowercase()
            ),
            proofing_level: level.into(),
            gp: gp.map(|(ods, system)| SimGpCredentials {
                user_id: format!("{}-{}", given.to_uppercase(), &sub[..8]),
                linkage_key: format!("LK{}", &nhs[6..]),
                ods_code: ods.into(),
                system_id: Some(system.into()),
            }),
        }
    };
    vec![
        u(
            "49f470a1-cc52-49b7-beba-0f9cec937c46",
            "9990000018",
            ("Ada", "Lovelace"),
            "P9",
            Some(("A12345", "EMIS")),
        ),
        // Her practice is on Microtest: NHS login returns dummy credentials.
        u(
            "8f1c2d3e-4b5a-4c6d-9e8f-7a6b5c4d3e2f",
            "9990000026",
            ("Mary", "Seacole"),
            "P9",
            Some(("B82001", "MICROTEST")),
        ),
        // P5: no GP credentials, whatever the scope.
        u(
            "0d7e6f5a-1b2c-4d3e-8f9a-0b1c2d3e4f5a",
            "9990000034",
            ("Alan", "Turing"),
            "P5",
            None,
        ),
    ]
}

/// A relying party registered with the simulator.
#[derive(Clone)]
pub struct RegisteredClient {
    pub client_id: String,
    /// The RP's public key (SubjectPublicKeyInfo PEM), as RPs register it with NHS login.
    pub public_key_pem: String,
    pub redirect_uris: Vec<String>,
}

/// Ways to spoil the next id_tokens, one check at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdTokenFault {
    /// Signed with a key that is not the published one (same `kid`).
    BadSignature,
    /// Signed with the real key but under a `kid` the JWKS does not have.
    UnknownKid,
    WrongIssuer,
    WrongAudience,
    Expired,
    WrongNonce,
    /// `vot` weaker than any vector asked for.
    WeakVot,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NhsKnobs {
    /// The next interactive `/authorize` answers with this error (`code`, `description`).
    #[serde(default)]
    pub authorize_error: Option<(String, String)>,
    /// Every silent (`prompt=none`) `/authorize` answers with this error, e.g. `login_required`.
    #[serde(default)]
    pub silent_error: Option<String>,
    #[serde(default)]
    pub id_token_fault: Option<IdTokenFault>,
    /// userinfo names another `sub` than the id_token.
    #[serde(default)]
    pub userinfo_other_sub: bool,
    /// `gp_integration_credentials` as userinfo answers it, in place of the user's own (e.g. a
    /// partial claim).
    #[serde(default)]
    pub gp_credentials: Option<serde_json::Value>,
}

struct CodeGrant {
    user: usize,
    scope: String,
    client_id: String,
    redirect_uri: String,
    nonce: String,
    vot: String,
}

/// The keys the simulator signs with; made once per process (RSA generation is slow).
struct SimKeys {
    signing_pem: String,
    impostor_pem: String,
}

fn sim_keys() -> &'static SimKeys {
    static KEYS: OnceLock<SimKeys> = OnceLock::new();
    KEYS.get_or_init(|| SimKeys {
        signing_pem: keys::generate_private_key().expect("simulator key"),
        impostor_pem: keys::generate_private_key().expect("simulator key"),
    })
}

const KID: &str = "nhs-login-sim-1";

pub struct NhsLoginSim {
    issuer: String,
    users: Vec<NhsUser>,
    clients: Mutex<HashMap<String, RegisteredClient>>,
    signing: EncodingKey,
    impostor: EncodingKey,
    codes: Mutex<HashMap<String, CodeGrant>>,
    /// Access token → (user, scope).
    access: Mutex<HashMap<String, (usize, String)>>,
    userinfo_calls: AtomicU64,
    /// `jti` of every id_token issued → (user, client it was issued to).
    id_token_jtis: Mutex<HashMap<String, (usize, String)>>,
    /// `jti`s of assertions and client assertions already presented.
    spent: Mutex<HashSet<String>>,
    knobs: Mutex<NhsKnobs>,
    counters: HashMap<&'static str, AtomicU64>,
    clock: Arc<dyn Clock>,
    record_secrets: bool,
    issued: Mutex<Vec<String>>,
}

#[derive(Deserialize)]
struct AssertionClaims {
    code: String,
    iss: String,
    jti: String,
    iat: i64,
    exp: i64,
}

#[derive(Deserialize)]
struct ClientAssertionClaims {
    iss: String,
    sub: String,
    jti: String,
    exp: i64,
    iat: Option<i64>,
}

impl NhsLoginSim {
    /// `issuer` is the simulator's own base URL (it serves at the root).
    pub fn new(issuer: &str, users: Vec<NhsUser>, record_secrets: bool) -> Arc<NhsLoginSim> {
        let k = sim_keys();
        Arc::new(NhsLoginSim {
            issuer: issuer.trim_end_matches('/').to_string(),
            users,
            clients: Mutex::new(HashMap::new()),
            signing: EncodingKey::from_rsa_pem(k.signing_pem.as_bytes()).expect("sim key"),
            impostor: EncodingKey::from_rsa_pem(k.impostor_pem.as_bytes()).expect("sim key"),
            codes: Mutex::new(HashMap::new()),
            access: Mutex::new(HashMap::new()),
            userinfo_calls: AtomicU64::new(0),
            id_token_jtis: Mutex::new(HashMap::new()),
            spent: Mutex::new(HashSet::new()),
            knobs: Mutex::new(NhsKnobs::default()),
            counters: NHS_ENDPOINTS
                .iter()
                .map(|e| (*e, AtomicU64::new(0)))
                .collect(),
            clock: Arc::new(SystemClock),
            record_secrets,
            issued: Mutex::new(Vec::new()),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn users(&self) -> &[NhsUser] {
        &self.users
    }

    pub fn register(&self, client: RegisteredClient) {
        self.clients.lock().insert(client.client_id.clone(), client);
    }

    pub fn registration(&self, client_id: &str) -> Option<RegisteredClient> {
        self.clients.lock().get(client_id).cloned()
    }

    pub fn set_knobs(&self, knobs: NhsKnobs) {
        *self.knobs.lock() = knobs;
    }

    pub fn count(&self, endpoint: &str) -> u64 {
        self.counters
            .get(endpoint)
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }

    fn bump(&self, endpoint: &str) {
        if let Some(c) = self.counters.get(endpoint) {
            c.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Every code, access token and id_token issued (with `record_secrets`).
    pub fn issued_secrets(&self) -> Vec<String> {
        self.issued.lock().clone()
    }

    fn remember(&self, secret: &str) {
        if self.record_secrets {
            self.issued.lock().push(secret.to_string());
        }
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/.well-known/jwks.json", get(jwks))
            .route("/authorize", get(authorize).post(login_decision))
            .route("/token", post(token))
            .route("/userinfo", get(userinfo))
            .route("/_sim/nhs/knobs", post(set_knobs))
            .with_state(self.clone())
    }

    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }

    fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer)
    }

    /// Checks an `asserted_login_identity` and spends it: signed (RS512) by the registered RP
    /// named in `iss`, `code` a `jti` of an id_token this provider issued to that RP, at most
    /// 60 s of life, not expired, never presented before. Returns the user.
    pub fn accept_assertion(&self, token: &str) -> Result<usize, String> {
        let result = self.check_assertion(token);
        self.bump(if result.is_ok() {
            "assertion_accepted"
        } else {
            "assertion_refused"
        });
        result
    }

    fn check_assertion(&self, token: &str) -> Result<usize, String> {
        let iss = unverified_claim(token, "iss").ok_or("not a JWT with `iss`")?;
        let client = self
            .clients
            .lock()
            .get(&iss)
            .cloned()
            .ok_or_else(|| format!("`iss` {iss} is not a registered client"))?;
        let key = DecodingKey::from_rsa_pem(client.public_key_pem.as_bytes())
            .map_err(|e| format!("registered key: {e}"))?;
        let mut validation = Validation::new(Algorithm::RS512);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "iss"]);
        let claims = jsonwebtoken::decode::<AssertionClaims>(token, &key, &validation)
            .map_err(|e| format!("signature or shape: {e}"))?
            .claims;
        let now = self.clock.now();
        if claims.exp - claims.iat > MAX_ASSERTION_LIFE_SECS {
            return Err("lives longer than 60 s".into());
        }
        if claims.exp <= now {
            return Err("expired".into());
        }
        if !self.spent.lock().insert(format!("ali:{}", claims.jti)) {
            return Err("used already".into());
        }
        let jtis = self.id_token_jtis.lock();
        let (user, issued_to) = jtis
            .get(&claims.code)
            .ok_or("`code` is not the jti of an id_token NHS login issued")?;
        if *issued_to != claims.iss {
            return Err("`code` belongs to an id_token issued to another client".into());
        }
        Ok(*user)
    }

    /// What an RP that signed the user in itself holds: the `jti` of an id_token issued to
    /// `client_id` for `user` (PKB's simulator uses this for its own "signed in" state).
    pub fn issue_id_token_jti(&self, user: usize, client_id: &str) -> String {
        let jti = crate::core::random::random_token();
        self.id_token_jtis
            .lock()
            .insert(jti.clone(), (user, client_id.to_string()));
        jti
    }

    fn id_token(&self, user: usize, client_id: &str, nonce: &str, vot: &str) -> String {
        let fault = self.knobs.lock().id_token_fault;
        let now = self.clock.now();
        let jti = self.issue_id_token_jti(user, client_id);
        let u = &self.users[user];
        let claims = json!({
            "iss": if fault == Some(IdTokenFault::WrongIssuer) { "https://auth.evil.example" } else { &self.issuer },
            "aud": if fault == Some(IdTokenFault::WrongAudience) { "someone-else" } else { client_id },
            "sub": u.sub,
            "iat": now - if fault == Some(IdTokenFault::Expired) { 7200 } else { 0 },
            "exp": now + if fault == Some(IdTokenFault::Expired) { -3600 } else { 3600 },
            "auth_time": now,
            "nonce": if fault == Some(IdTokenFault::WrongNonce) { "not-the-nonce" } else { nonce },
            "vot": if fault == Some(IdTokenFault::WeakVot) { "P0.Cp" } else { vot },
            "vtm": format!("{}/trustmark/{}", self.issuer, self.issuer.trim_start_matches("http://").trim_start_matches("https://")),
            "jti": jti,
            "identity_proofing_level": u.proofing_level,
        });
        let mut header = Header::new(Algorithm::RS512);
        header.kid = Some(if fault == Some(IdTokenFault::UnknownKid) {
            "not-published".into()
        } else {
            KID.into()
        });
        let key = if fault == Some(IdTokenFault::BadSignature) {
            &self.impostor
        } else {
            &self.signing
        };
        jsonwebtoken::encode(&header, &claims, key).expect("sim signs")
    }

    /// The client assertion of `/token`, checked: RS512 by the client's registered key, `iss` =
    /// `sub` = client_id, `aud` the token endpoint, not expired, `jti` never seen.
    fn check_client_assertion(&self, assertion: &str) -> Result<String, String> {
        let client_id = unverified_claim(assertion, "iss").ok_or("not a JWT with `iss`")?;
        let client = self
            .clients
            .lock()
            .get(&client_id)
            .cloned()
            .ok_or("unknown client")?;
        let key = DecodingKey::from_rsa_pem(client.public_key_pem.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut validation = Validation::new(Algorithm::RS512);
        validation.validate_exp = false;
        validation.set_audience(&[self.token_endpoint()]);
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        let claims = jsonwebtoken::decode::<ClientAssertionClaims>(assertion, &key, &validation)
            .map_err(|e| format!("client assertion: {e}"))?
            .claims;
        let now = self.clock.now();
        if claims.sub != claims.iss {
            return Err("`sub` must equal `iss`".into());
        }
        if claims.exp <= now || claims.iat.is_some_and(|iat| claims.exp - iat > 300) {
            return Err("expired or too long-lived".into());
        }
        if !self.spent.lock().insert(format!("ca:{}", claims.jti)) {
            return Err("`jti` used already".into());
        }
        Ok(client_id)
    }
}

/// A claim read without checking the signature: only to find whose key checks it.
fn unverified_claim(token: &str, claim: &str) -> Option<String> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = B64URL.decode(payload).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value.get(claim)?.as_str().map(str::to_string)
}

type Op = State<Arc<NhsLoginSim>>;

async fn discovery(State(op): Op) -> Json<serde_json::Value> {
    op.bump("discovery");
    let i = &op.issuer;
    Json(json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}/authorize"),
        "token_endpoint": format!("{i}/token"),
        "userinfo_endpoint": format!("{i}/userinfo"),
        "jwks_uri": format!("{i}/.well-known/jwks.json"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS512"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS512"],
        "scopes_supported": ["openid", "profile", "email", "phone", "profile_extended", "basic_demographics", "gp_registration_details", "gp_integration_credentials"],
        "vtr_values_supported": ["P0.Cp", "P0.Cp.Cd", "P0.Cp.Ck", "P0.Cm", "P5.Cp", "P5.Cp.Cd", "P5.Cp.Ck", "P5.Cm", "P9.Cp", "P9.Cp.Cd", "P9.Cp.Ck", "P9.Cm"],
        "prompt_values_supported": ["none", "login"],
    }))
}

async fn jwks() -> Json<serde_json::Value> {
    let jwk = keys::public_jwk(&sim_keys().signing_pem, KID).expect("sim key");
    Json(json!({ "keys": [jwk] }))
}

fn redirect_with(redirect_uri: &str, pairs: &[(&str, &str)]) -> Response {
    match url::Url::parse(redirect_uri) {
        Ok(mut u) => {
            u.query_pairs_mut().extend_pairs(pairs);
            Redirect::to(u.as_str()).into_response()
        }
        Err(_) => (StatusCode::BAD_REQUEST, "redirect_uri is not a URL").into_response(),
    }
}

const OP_STYLE: &str = "body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f0f4f5}\
header{background:#005eb8;color:#fff;padding:.8rem 1.5rem;font-weight:700}\
main{max-width:34rem;margin:2rem auto;padding:2rem;background:#fff}\
button{padding:.6rem 1.2rem;border:0;font-weight:600;margin:.3rem .5rem .3rem 0;cursor:pointer}\
.go{background:#007f3b;color:#fff}label{display:block;margin:.4rem 0}";

fn op_page(title: &str, body: Markup) -> Html<String> {
    let banner = html! { "NHS login (simulator)" };
    Html(document(
        title,
        OP_STYLE,
        Some(banner),
        html! { h1 { (title) } (body) },
    ))
}

/// The users a vector list admits, and the vector each gets (the first one asked for that the
/// user's proofing level reaches).
fn vot_for(user: &NhsUser, vtr: &[Vector]) -> Option<String> {
    let rank = |level: &str| match level {
        "P9" => 9,
        "P5" => 5,
        _ => 0,
    };
    vtr.iter()
        .find(|v| rank(&v.level) <= rank(&user.proofing_level))
        .map(|v| format!("{}.{}", v.level, v.methods.join(".")))
}

async fn authorize(State(op): Op, Query(q): Query<HashMap<String, String>>) -> Response {
    op.bump("authorize");
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    let client = op.clients.lock().get(&get("client_id")).cloned();
    let Some(client) = client else {
        return (
            StatusCode::BAD_REQUEST,
            op_page("Error", html! { p { "unknown client_id" } }),
        )
            .into_response();
    };
    let redirect_uri = get("redirect_uri");
    if !client.redirect_uris.contains(&redirect_uri) {
        return (
            StatusCode::BAD_REQUEST,
            op_page("Error", html! { p { "redirect_uri is not registered" } }),
        )
            .into_response();
    }
    let state = get("state");
    let error = |code: &str, description: &str| {
        redirect_with(
            &redirect_uri,
            &[
                ("error", code),
                ("error_description", description),
                ("state", &state),
            ],
        )
    };
    let vtr: Vec<Vector> = match q.get("vtr") {
        None => vec![Vector::parse("P9.Cp.Cd").expect("vector")],
        Some(v) => match serde_json::from_str::<Vec<String>>(v) {
            Ok(list) if !list.is_empty() => match list.iter().map(|s| Vector::parse(s)).collect() {
                Some(parsed) => parsed,
                None => return error("invalid_request", "vtr holds an unknown vector"),
            },
            _ => return error("invalid_request", "vtr must be a JSON array of vectors"),
        },
    };
    let problem = authorize_problem(&q);
    if let Some((code, description)) = problem {
        return error(code, description);
    }
    if get("prompt") == "none" {
        return silent_authorize(&op, &q, &client.client_id, &vtr, error);
    }
    if let Some((code, description)) = op.knobs.lock().authorize_error.take() {
        return error(&code, &description);
    }
    op.bump("login_page");
    login_page(&op, &client.client_id, &q)
}

/// What is wrong with an authorize request's parameters, as NHS login would say it.
fn authorize_problem(q: &HashMap<String, String>) -> Option<(&'static str, &'static str)> {
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    if get("response_type") != "code" {
        Some(("unsupported_response_type", "response_type must be code"))
    } else if !get("scope").split(' ').any(|s| s == "openid") {
        Some(("invalid_scope", "scope must include openid"))
    } else if get("state").is_empty() {
        Some(("invalid_request", "state is required"))
    } else if get("nonce").is_empty() {
        Some(("invalid_request", "nonce is required"))
    } else if q.get("response_mode").is_some_and(|m| m != "query") {
        Some(("invalid_request", "response_mode must be query"))
    } else if !["", "none", "login"].contains(&get("prompt").as_str()) {
        Some(("invalid_request", "prompt must be blank, none or login"))
    } else {
        None
    }
}

/// `prompt=none`: sign in as the asserted user, or say why not. The simulator keeps no browser
/// session of its own.
fn silent_authorize(
    op: &NhsLoginSim,
    q: &HashMap<String, String>,
    client_id: &str,
    vtr: &[Vector],
    error: impl Fn(&str, &str) -> Response,
) -> Response {
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    op.bump("authorize_silent");
    if let Some(code) = op.knobs.lock().silent_error.clone() {
        return error(&code, "simulated");
    }
    let Some(asserted) = q.get("asserted_login_identity") else {
        // The simulator keeps no browser session of its own.
        return error("login_required", "no session");
    };
    let user = match op.accept_assertion(asserted) {
        Ok(user) => user,
        Err(why) => {
            return error(
                "login_required",
                &format!("asserted_login_identity refused: {why}"),
            )
        }
    };
    let Some(vot) = vot_for(&op.users[user], vtr) else {
        return error("access_denied", "proofing level too low");
    };
    issue_code(
        op,
        CodeGrant {
            user,
            scope: get("scope"),
            client_id: client_id.to_string(),
            redirect_uri: get("redirect_uri"),
            nonce: get("nonce"),
            vot,
        },
        &get("state"),
    )
}

/// The interactive sign-in page: choose a test user, then Continue or "Do not share".
fn login_page(op: &NhsLoginSim, client_id: &str, q: &HashMap<String, String>) -> Response {
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    let hidden = [
        "client_id",
        "redirect_uri",
        "state",
        "nonce",
        "vtr",
        "scope",
    ];
    op_page(
        "Sign in with NHS login",
        html! {
            p {
                "Choose a test user. " em { (client_id) }
                " asks to use your NHS login information."
            }
            form method="post" action="/authorize" {
                @for key in hidden {
                    input type="hidden" name=(key) value=(get(key));
                }
                @for (i, u) in op.users.iter().enumerate() {
                    label {
                        input type="radio" name="user" value=(i) checked[i == 0];
                        " " (u.given_name) " " (u.family_name) " (NHS number " (u.nhs_number) ")"
                    }
                }
                button class="go" id="continue" name="decision" value="allow" { "Continue" }
                button id="decline" name="decision" value="deny" { "Do not share my information" }
            }
        },
    )
    .into_response()
}

/// Issues a code for `grant` and sends the browser back to the RP with it.
fn issue_code(op: &NhsLoginSim, grant: CodeGrant, state: &str) -> Response {
    let code = crate::core::random::random_token();
    op.remember(&code);
    let redirect_uri = grant.redirect_uri.clone();
    op.codes.lock().insert(code.clone(), grant);
    redirect_with(&redirect_uri, &[("code", &code), ("state", state)])
}

async fn login_decision(State(op): Op, Form(f): Form<HashMap<String, String>>) -> Response {
    op.bump("login_decision");
    let get = |k: &str| f.get(k).cloned().unwrap_or_default();
    let client = op.clients.lock().get(&get("client_id")).cloned();
    let redirect_uri = get("redirect_uri");
    let Some(client) = client.filter(|c| c.redirect_uris.contains(&redirect_uri)) else {
        return (StatusCode::BAD_REQUEST, "unknown client or redirect_uri").into_response();
    };
    let state = get("state");
    if get("decision") != "allow" {
        return redirect_with(
            &redirect_uri,
            &[
                ("error", "access_denied"),
                ("error_description", "ConsentNotGiven"),
                ("state", &state),
            ],
        );
    }
    let Some(user) = get("user")
        .parse::<usize>()
        .ok()
        .filter(|u| *u < op.users.len())
    else {
        return (StatusCode::BAD_REQUEST, "choose a user").into_response();
    };
    let vtr: Vec<Vector> = serde_json::from_str::<Vec<String>>(&get("vtr"))
        .ok()
        .and_then(|l| l.iter().map(|s| Vector::parse(s)).collect())
        .unwrap_or_else(|| vec![Vector::parse("P9.Cp.Cd").expect("vector")]);
    let Some(vot) = vot_for(&op.users[user], &vtr) else {
        return redirect_with(
            &redirect_uri,
            &[("error", "access_denied"), ("state", &state)],
        );
    };
    issue_code(
        &op,
        CodeGrant {
            user,
            scope: get("scope"),
            client_id: client.client_id.clone(),
            redirect_uri: redirect_uri.clone(),
            nonce: get("nonce"),
            vot,
        },
        &state,
    )
}

fn token_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

async fn token(State(op): Op, Form(f): Form<HashMap<String, String>>) -> Response {
    op.bump("token");
    let get = |k: &str| f.get(k).cloned().unwrap_or_default();
    if get("grant_type") != "authorization_code" {
        return token_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "authorization_code only",
        );
    }
    if get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
        return token_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "private_key_jwt is required",
        );
    }
    let client_id = match op.check_client_assertion(&get("client_assertion")) {
        Ok(id) => id,
        Err(why) => {
            op.bump("client_assertion_refused");
            return token_error(StatusCode::UNAUTHORIZED, "invalid_client", &why);
        }
    };
    let Some(grant) = op.codes.lock().remove(&get("code")) else {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "unknown or used code",
        );
    };
    if grant.client_id != client_id || grant.redirect_uri != get("redirect_uri") {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "code issued to another client or redirect_uri",
        );
    }
    let access = crate::core::random::random_token();
    op.remember(&access);
    op.access
        .lock()
        .insert(access.clone(), (grant.user, grant.scope.clone()));
    let id_token = op.id_token(grant.user, &client_id, &grant.nonce, &grant.vot);
    op.remember(&id_token);
    Json(json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": 3600,
        "id_token": id_token,
    }))
    .into_response()
}

async fn userinfo(State(op): Op, headers: HeaderMap) -> Response {
    op.bump("userinfo");
    let user = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| op.access.lock().get(t).cloned());
    let Some((user, scope)) = user else {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "invalid_token" })),
        )
            .into_response();
    };
    let u = &op.users[user];
    let sub = if op.knobs.lock().userinfo_other_sub {
        "someone-else".to_string()
    } else {
        u.sub.clone()
    };
    let mut info = json!({
        "sub": sub,
        "nhs_number": u.nhs_number,
        "given_name": u.given_name,
        "family_name": u.family_name,
        "email": u.email,
        "email_verified": true,
        "identity_proofing_level": u.proofing_level,
    });
    if scope.split(' ').any(|s| s == "gp_integration_credentials") {
        let n = op.userinfo_calls.fetch_add(1, Ordering::SeqCst) + 1;
        let claim = match op.knobs.lock().gp_credentials.clone() {
            Some(forced) => Some(forced),
            None => {
                u.gp.as_ref()
                    .filter(|_| u.proofing_level == "P9")
                    .map(|gp| {
                        let linkage_key = format!("{}-{n}", gp.linkage_key);
                        op.remember(&linkage_key);
                        op.remember(&gp.user_id);
                        json!({
                            "gp_user_id": gp.user_id,
                            "gp_linkage_key": linkage_key,
                            "gp_ods_code": gp.ods_code,
                            "gp_system_id": gp.system_id,
                        })
                    })
            }
        };
        if let Some(claim) = claim {
            info["gp_integration_credentials"] = claim;
        }
    }
    Json(info).into_response()
}

async fn set_knobs(State(op): Op, Json(knobs): Json<NhsKnobs>) -> Json<NhsKnobs> {
    op.set_knobs(knobs.clone());
    Json(knobs)
}

/// A key pair for an RP registered with the simulator (PKB's, in the simulator; tests' and the
/// demo's pkb-edge): the private PEM and the registration.
pub fn new_client(client_id: &str, redirect_uris: Vec<String>) -> (String, RegisteredClient) {
    let private = keys::generate_private_key().expect("a relying party key for the simulator");
    let public = keys::public_pem(&private).expect("fresh key");
    (
        private,
        RegisteredClient {
            client_id: client_id.to_string(),
            public_key_pem: public,
            redirect_uris,
        },
    )
}
