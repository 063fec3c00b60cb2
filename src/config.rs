//! Typed configuration: the TOML file, secrets from files or the environment, and validation
//! whose every error names the key it is about.
//!
//! Not for: deciding anything at request time. Everything here is resolved once at start-up into
//! plain values the rest of the code takes as given.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;
use serde::Deserialize;
use url::Url;

use crate::core::secret::{ClientSecret, SecretText};

/// Environment variable that may hold the PKB client secret.
pub const ENV_CLIENT_SECRET: &str = "PKB_EDGE_CLIENT_SECRET";
/// Environment variable that may hold the encryption keys (`KEY_ID:BASE64` per line or comma).
pub const ENV_KEYS: &str = "PKB_EDGE_KEYS";
/// Environment variable that may hold the PostgreSQL password.
pub const ENV_STORE_PASSWORD: &str = "PKB_EDGE_STORE_PASSWORD";
/// Environment variable that may hold the NHS login relying party's private key (PEM).
pub const ENV_NHS_LOGIN_KEY: &str = "PKB_EDGE_NHS_LOGIN_KEY";
/// Environment variable that may hold the audit log's patient-hash key.
pub const ENV_AUDIT_KEY: &str = "PKB_EDGE_AUDIT_KEY";

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Where `/metrics`, `/livez` and `/readyz` are served; none when unset.
    pub ops_listen: Option<SocketAddr>,
    pub upstream: Upstream,
    pub prefix: String,
    pub public_url: Url,
    pub server: ServerSettings,
    pub identity: IdentitySettings,
    pub pkb: PkbSettings,
    pub store: StoreSettings,
    pub decorate: crate::decorate::DecorateSettings,
    pub limits: LimitSettings,
    pub audit: AuditSettings,
    /// Set exactly when `identity.mode = "nhs_login"`.
    pub nhs_login: Option<NhsLoginSettings>,
}

/// NHS login's vectors of trust: identity proofing P0/P5/P9 with authentication Cp/Cd/Ck/Cm.
pub const DEFAULT_VTR: [&str; 3] = ["P9.Cp.Cd", "P9.Cp.Ck", "P9.Cm"];

/// pkb-edge as the NHS login relying party (`[nhs_login]`).
#[derive(Debug, Clone)]
pub struct NhsLoginSettings {
    /// `https://auth.login.nhs.uk` (production), `https://auth.aos.signin.nhs.uk` (integration),
    /// `https://auth.sandpit.signin.nhs.uk` (sandpit); no trailing slash.
    pub issuer: String,
    pub client_id: String,
    /// The RP's RSA private key (PEM, at least 2048 bits): signs client assertions and
    /// `asserted_login_identity` tokens.
    pub private_key: SecretText,
    /// `kid` put in the header of what pkb-edge signs, when NHS login has the key under a kid.
    pub key_id: Option<String>,
    /// `{public_url}{prefix}/nhs/callback` unless set.
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    pub vtr: Vec<String>,
    /// `prompt` sent with `assertedLoginIdentity` into PKB; none when empty.
    pub pkb_prompt: Option<String>,
    /// Re-authenticate after this long without a request (NHS login's rule: 30 minutes).
    pub session_idle_secs: i64,
    /// ...or this long after signing in, whatever the activity (NHS login's rule: 12 hours).
    pub session_max_secs: i64,
    pub cookie_name: String,
    /// How long a sign-in may take from the redirect to NHS login to the callback.
    pub login_ttl_secs: i64,
    pub timeout: Duration,
    /// Clock difference tolerated on `exp` and `iat` of tokens NHS login issues.
    pub clock_skew_secs: i64,
    /// Set when `gp_integration_credentials` is among the scopes.
    pub gp_credentials: Option<GpCredentialSettings>,
}

/// GP integration credentials for IM1 services (`[nhs_login.gp_credentials]`).
#[derive(Debug, Clone)]
pub struct GpCredentialSettings {
    /// Upstream paths that receive the credentials: exact, or a prefix when ending in `*`.
    pub paths: Vec<String>,
    /// Practices whose credentials NHS login returns as dummies (ODS codes, upper case).
    pub unusable_ods_codes: Vec<String>,
    /// GP systems whose credentials are dummies (`gp_system_id`, upper case), e.g. MICROTEST.
    pub unusable_gp_systems: Vec<String>,
    /// Silent re-sign-ins to refresh invalid credentials, per user per window.
    pub max_refreshes: u32,
    pub window_secs: i64,
}

impl GpCredentialSettings {
    /// Whether requests to `path` carry the credentials. A path that a later hop could read
    /// differently (dot segments, escaped `/`, `.` or `\\`, `//`) never matches.
    pub fn applies_to(&self, path: &str) -> bool {
        let lower = path.to_ascii_lowercase();
        let ambiguous = path.contains("//")
            || path.contains('\\')
            || path.split('/').any(|seg| seg == "." || seg == "..")
            || ["%2f", "%2e", "%5c"].iter().any(|e| lower.contains(e));
        !ambiguous
            && self.paths.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => path.starts_with(prefix),
                None => path == p,
            })
    }
}
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// Launches one user may make per minute (bursts up to this many); 0 turns the limit off.
    pub launch_per_minute: u32,
    /// Calls to PKB in flight at once, over all users; more are refused at once (503).
    pub pkb_concurrency: usize,
}

/// Where audit lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct AuditSettings {
    pub sink: AuditSink,
    /// Keys the patient-id hash. `None`: derived from the store's first encryption key.
    pub hash_key: Option<SecretText>,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    /// Resolved once at start-up.
    pub addr: SocketAddr,
    pub tls: bool,
    /// The host name, for SNI and certificate checks when `tls`.
    pub host: String,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub threads: usize,
    /// One tokio runtime shared by all threads (tasks move between them) when true; one
    /// runtime per thread, each connection staying on the thread that accepted it, when false.
    pub work_stealing: bool,
    pub grace_period_seconds: u64,
    pub graceful_shutdown_timeout_seconds: u64,
    pub upstream_keepalive_pool_size: usize,
    /// Pingora's pid file, and the socket a new process (`run --upgrade`) takes the listening
    /// sockets over from.
    pub pid_file: PathBuf,
    pub upgrade_sock: PathBuf,
}

#[derive(Debug, Clone)]
pub enum IdentitySettings {
    Header {
        header: HeaderName,
        trusted_peers: Vec<IpNet>,
    },
    /// pkb-edge signs users in with NHS login and sets `header` itself. `trusted_peers` only
    /// says whose `X-Request-Id` is taken.
    NhsLogin {
        header: HeaderName,
        trusted_peers: Vec<IpNet>,
    },
}

impl IdentitySettings {
    pub fn header(&self) -> &HeaderName {
        match self {
            IdentitySettings::Header { header, .. } | IdentitySettings::NhsLogin { header, .. } => {
                header
            }
        }
    }

    pub fn trusted_peers(&self) -> &[IpNet] {
        match self {
            IdentitySettings::Header { trusted_peers, .. }
            | IdentitySettings::NhsLogin { trusted_peers, .. } => trusted_peers,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    Basic,
    Body,
}

#[derive(Debug, Clone)]
pub struct PkbSettings {
    pub base_url: Url,
    pub client_id: String,
    pub client_secret: ClientSecret,
    pub client_auth: ClientAuth,
    pub scope: String,
    pub timeout: Duration,
    pub refresh_skew_secs: i64,
    /// How long a pairing may take from `/pair` to `/callback`.
    pub state_ttl_secs: i64,
    /// The registered pairing callback, `{public_url}{prefix}/callback` unless set.
    pub redirect_uri: String,
    pub authorize_path: String,
    pub token_path: String,
    pub otp_path: String,
    pub otp_field: String,
    pub otp_login_path: String,
    pub otp_param: String,
    pub patient_landing_path: String,
    pub national_id_param: String,
    pub national_id_type_param: String,
    pub email_param: String,
    pub data_from_other_org_path: String,
}

#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// `sqlite://PATH` or `postgres://…`, without a password (that is in `password`).
    pub url: String,
    /// The database password: from the URL, `store.password_file` or PKB_EDGE_STORE_PASSWORD.
    pub password: Option<SecretText>,
    /// PostgreSQL connections per pool.
    pub pool_size: usize,
    /// PEM CA certificates the database's TLS certificate must chain to.
    pub tls_ca_file: Option<PathBuf>,
    /// How the PostgreSQL connection is protected.
    pub tls: crate::store::postgres::TlsMode,
    /// The raw key lines; parsed and checked by `store::crypto::Keyring::parse`.
    pub keys: SecretText,
    /// Where the keys came from, for error messages (`store.keys_file`, `PKB_EDGE_KEYS`…).
    pub keys_source: String,
    pub cache_capacity: u64,
    pub cache_ttl: Duration,
}

/// Every problem found in a configuration, each tied to its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<KeyProblem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyProblem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "the configuration has {} problem(s):",
            self.problems.len()
        )?;
        for p in &self.problems {
            writeln!(f, "  - {}: {}", p.key, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    fn one(key: &str, message: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![KeyProblem {
                key: key.to_string(),
                message: message.into(),
            }],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The file as written.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    ops_listen: Option<String>,
    upstream: Option<String>,
    #[serde(default = "default_prefix")]
    prefix: String,
    public_url: Option<String>,
    #[serde(default)]
    server: RawServer,
    identity: Option<RawIdentity>,
    pkb: Option<RawPkb>,
    store: Option<RawStore>,
    decorate: Option<RawDecorate>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    audit: RawAudit,
    nhs_login: Option<RawNhsLogin>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNhsLogin {
    issuer: Option<String>,
    client_id: Option<String>,
    private_key: Option<String>,
    private_key_file: Option<PathBuf>,
    key_id: Option<String>,
    redirect_uri: Option<String>,
    #[serde(default = "default_nhs_scopes")]
    scopes: Vec<String>,
    #[serde(default = "default_vtr")]
    vtr: Vec<String>,
    #[serde(default = "default_pkb_prompt")]
    pkb_prompt: String,
    #[serde(default = "default_session_idle")]
    session_idle_secs: i64,
    #[serde(default = "default_session_max")]
    session_max_secs: i64,
    #[serde(default = "default_cookie_name")]
    cookie_name: String,
    #[serde(default = "default_state_ttl")]
    login_ttl_secs: i64,
    #[serde(default = "default_nhs_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_clock_skew")]
    clock_skew_secs: i64,
    gp_credentials: Option<RawGpCredentials>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawGpCredentials {
    paths: Vec<String>,
    unusable_ods_codes: Vec<String>,
    unusable_gp_systems: Vec<String>,
    max_refreshes: u32,
    window_secs: i64,
}

impl Default for RawGpCredentials {
    fn default() -> Self {
        RawGpCredentials {
            paths: Vec::new(),
            unusable_ods_codes: Vec::new(),
            // NHS login returns dummy credentials for practices on Microtest.
            unusable_gp_systems: vec!["MICROTEST".into()],
            max_refreshes: 2,
            window_secs: 3600,
        }
    }
}

fn default_nhs_scopes() -> Vec<String> {
    vec!["openid".into(), "profile".into()]
}
fn default_vtr() -> Vec<String> {
    DEFAULT_VTR.iter().map(|v| v.to_string()).collect()
}
fn default_pkb_prompt() -> String {
    "none".into()
}
fn default_session_idle() -> i64 {
    NHS_LOGIN_IDLE_SECS
}
fn default_session_max() -> i64 {
    NHS_LOGIN_MAX_SECS
}
fn default_cookie_name() -> String {
    "__Host-pkb-edge-session".into()
}
fn default_nhs_timeout_ms() -> u64 {
    5000
}
fn default_clock_skew() -> i64 {
    30
}

/// NHS login's session rules for relying parties.
pub const NHS_LOGIN_IDLE_SECS: i64 = 30 * 60;
pub const NHS_LOGIN_MAX_SECS: i64 = 12 * 60 * 60;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    launch_per_minute: u32,
    pkb_concurrency: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            launch_per_minute: 30,
            pkb_concurrency: 256,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    /// A file to append to; `-` or absent: standard output.
    file: Option<PathBuf>,
    hash_key: Option<String>,
    hash_key_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDecorate {
    #[serde(default = "default_decorate_header")]
    header: String,
    patient_from: Option<RawPatientFrom>,
    #[serde(default = "default_national_id_type")]
    national_id_type: String,
    #[serde(default = "default_decorate_ttl")]
    ttl_secs: u64,
    #[serde(default = "default_budget_ms")]
    budget_ms: u64,
    #[serde(default = "default_cache_capacity")]
    cache_capacity: u64,
}

impl Default for RawDecorate {
    fn default() -> Self {
        RawDecorate {
            header: default_decorate_header(),
            patient_from: None,
            national_id_type: default_national_id_type(),
            ttl_secs: default_decorate_ttl(),
            budget_ms: default_budget_ms(),
            cache_capacity: default_cache_capacity(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPatientFrom {
    header: Option<String>,
    query: Option<String>,
    path_regex: Option<String>,
}

fn default_decorate_header() -> String {
    "X-PKB-Data-Available".into()
}
fn default_national_id_type() -> String {
    "NHS".into()
}
fn default_decorate_ttl() -> u64 {
    300
}
fn default_budget_ms() -> u64 {
    50
}

fn default_prefix() -> String {
    "/_pkb".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    threads: usize,
    work_stealing: bool,
    grace_period_seconds: u64,
    graceful_shutdown_timeout_seconds: u64,
    upstream_keepalive_pool_size: usize,
    pid_file: Option<PathBuf>,
    upgrade_sock: Option<PathBuf>,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            threads: 2,
            work_stealing: true,
            grace_period_seconds: 30,
            graceful_shutdown_timeout_seconds: 10,
            upstream_keepalive_pool_size: 256,
            pid_file: None,
            upgrade_sock: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    #[serde(default = "default_mode")]
    mode: String,
    #[serde(default = "default_identity_header")]
    header: String,
    #[serde(default)]
    trusted_peers: Vec<String>,
}

fn default_mode() -> String {
    "header".into()
}
fn default_identity_header() -> String {
    "X-Authenticated-User".into()
}

macro_rules! pkb_defaults {
    ($($field:ident = $value:expr),* $(,)?) => {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawPkb {
            base_url: Option<String>,
            client_id: Option<String>,
            client_secret: Option<String>,
            client_secret_file: Option<PathBuf>,
            #[serde(default = "default_client_auth")]
            client_auth: ClientAuth,
            #[serde(default = "default_scope")]
            scope: String,
            #[serde(default = "default_timeout_ms")]
            timeout_ms: u64,
            #[serde(default = "default_refresh_skew")]
            refresh_skew_secs: i64,
            #[serde(default = "default_state_ttl")]
            state_ttl_secs: i64,
            redirect_uri: Option<String>,
            $(#[serde(default)] $field: Option<String>,)*
        }

        /// PKB's documented (or, where PKB publishes none, the simulator's) paths and names.
        /// Named after their config keys, so `pkb_default::otp_path` reads as the key it defaults.
        #[allow(non_upper_case_globals)]
        pub mod pkb_default {
            $(pub const $field: &str = $value;)*
        }

        impl RawPkb {
            fn names(&self) -> Vec<(&'static str, String)> {
                vec![$((stringify!($field), self.$field.clone().unwrap_or_else(|| $value.to_string())),)*]
            }
        }
    };
}

pkb_defaults! {
    authorize_path = "/apiAuthorize.action",
    token_path = "/apiToken.action",
    otp_path = "/json/v1/users/self/otp",
    otp_field = "otp",
    otp_login_path = "/otp.action",
    otp_param = "otpToken",
    patient_landing_path = "/auth/patientSummary.action?tab=patientSummary",
    national_id_param = "contextNationalId",
    national_id_type_param = "contextNationalIdType",
    email_param = "contextUserEmail",
    data_from_other_org_path = "/json/v1/patients/dataFromOtherOrg",
}

fn default_client_auth() -> ClientAuth {
    ClientAuth::Basic
}
fn default_scope() -> String {
    "CLINICIAN".into()
}
fn default_timeout_ms() -> u64 {
    3000
}
fn default_refresh_skew() -> i64 {
    60
}
fn default_state_ttl() -> i64 {
    600
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: Option<String>,
    password_file: Option<PathBuf>,
    #[serde(default = "default_pool_size")]
    pool_size: usize,
    tls_ca_file: Option<PathBuf>,
    #[serde(default = "default_store_tls")]
    tls: crate::store::postgres::TlsMode,
    keys: Option<String>,
    keys_file: Option<PathBuf>,
    #[serde(default = "default_cache_capacity")]
    cache_capacity: u64,
    #[serde(default = "default_cache_ttl")]
    cache_ttl_secs: u64,
}

fn default_store_tls() -> crate::store::postgres::TlsMode {
    crate::store::postgres::TlsMode::Prefer
}
fn default_pool_size() -> usize {
    16
}
fn default_cache_capacity() -> u64 {
    100_000
}
fn default_cache_ttl() -> u64 {
    300
}

// ---------------------------------------------------------------------------------------------
// Loading and validation.

/// Where a secret may come from, besides the file itself.
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Environment for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl Config {
    /// Reads and validates the file at `path`. Relative `*_file` paths are read relative to the
    /// working directory, as operators type them.
    pub fn load(path: &Path, env: &dyn Environment) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::one("(file)", format!("cannot read {}: {e}", path.display()))
        })?;
        Config::parse(&text, env)
    }

    pub fn parse(text: &str, env: &dyn Environment) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(e, text))?;
        let mut v = Validator::default();
        let config = v.config(raw, env);
        match config {
            Some(c) if v.problems.is_empty() => Ok(c),
            _ => Err(ConfigError {
                problems: v.problems,
            }),
        }
    }
}

/// serde's message for an unknown key names it; for a mistyped value, the key is read off the
/// file at the error's position (the `[table]` above it and the key on its line).
fn toml_error(e: toml::de::Error, text: &str) -> ConfigError {
    let message = e.message().to_string();
    let unknown = message
        .split('`')
        .nth(1)
        .filter(|_| message.starts_with("unknown field"))
        .map(str::to_string);
    let key = unknown
        .or_else(|| e.span().and_then(|s| key_at(text, s.start)))
        .unwrap_or_else(|| "(syntax)".to_string());
    // serde quotes the offending value; for a secret, say only what kind of value it was.
    let secret = ["secret", "keys", "hash_key", "password"]
        .iter()
        .any(|s| key.ends_with(s));
    let message = if secret {
        "has the wrong type (a secret is a string)".to_string()
    } else {
        message
    };
    let location = e
        .span()
        .map(|s| format!(" (at byte {})", s.start))
        .unwrap_or_default();
    ConfigError::one(&key, format!("{message}{location}"))
}

/// The dotted key whose value starts at or contains byte `at` of `text`, if a plain
/// `key = value` line holds it.
fn key_at(text: &str, at: usize) -> Option<String> {
    let before = text.get(..at)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let (key, _) = text[line_start..].split_once('=')?;
    let key = key.trim();
    if key.is_empty()
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
    {
        return None;
    }
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_string(),
    })
}

#[derive(Default)]
struct Validator {
    problems: Vec<KeyProblem>,
}

impl Validator {
    fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(KeyProblem {
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn required<T>(&mut self, key: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.problem(key, "is required");
        }
        value
    }

    fn config(&mut self, raw: RawConfig, env: &dyn Environment) -> Option<Config> {
        let listen = self
            .required("listen", raw.listen)
            .and_then(|s| self.socket_addr("listen", &s));
        // Outer None: invalid (the problem is recorded); inner None: not configured.
        let ops_listen = match raw.ops_listen {
            Some(s) => self.socket_addr("ops_listen", &s).map(Some),
            None => Some(None),
        };
        let upstream = self
            .required("upstream", raw.upstream)
            .and_then(|s| self.upstream(&s));
        let prefix = self.prefix(&raw.prefix);
        let public_url = self
            .required("public_url", raw.public_url)
            .and_then(|s| self.base_url("public_url", &s));
        let server = self.server(raw.server, listen.map_or(0, |l| l.port()));
        let identity = self
            .required("identity", raw.identity)
            .and_then(|i| self.identity(i));
        let pkb = self.required("pkb", raw.pkb).and_then(|p| {
            let callback = match (&public_url, &prefix) {
                (Some(base), Some(prefix)) => Some(format!(
                    "{}{prefix}/callback",
                    base.as_str().trim_end_matches('/')
                )),
                _ => None,
            };
            self.pkb(p, callback, env)
        });
        let store = self
            .required("store", raw.store)
            .and_then(|s| self.store(s, env));
        let decorate = self.decorate(raw.decorate.unwrap_or_default());
        let limits = self.limits(raw.limits);
        let audit = self.audit(raw.audit, env);
        let nhs_callback = match (&public_url, &prefix) {
            (Some(base), Some(prefix)) => Some(format!(
                "{}{prefix}/nhs/callback",
                base.as_str().trim_end_matches('/')
            )),
            _ => None,
        };
        let wants_nhs_login = matches!(identity, Some(IdentitySettings::NhsLogin { .. }));
        // Outer None: invalid (the problem is recorded); inner None: not configured.
        let nhs_login = match (raw.nhs_login, wants_nhs_login) {
            (Some(n), true) => self.nhs_login(n, nhs_callback, env).map(Some),
            (None, true) => {
                self.problem(
                    "nhs_login",
                    "identity.mode = \"nhs_login\" needs an [nhs_login] table (issuer, client_id, private_key_file)",
                );
                None
            }
            (Some(_), false) => {
                self.problem(
                    "nhs_login",
                    "is used only with identity.mode = \"nhs_login\"; set that mode or remove the table",
                );
                None
            }
            (None, false) => Some(None),
        };
        if let (Some(Some(ops)), Some(listen)) = (&ops_listen, &listen) {
            if ops == listen {
                self.problem(
                    "ops_listen",
                    "must differ from listen: the ops endpoints are never on the public listener",
                );
            }
        }
        Some(Config {
            listen: listen?,
            ops_listen: ops_listen?,
            upstream: upstream?,
            prefix: prefix?,
            public_url: public_url?,
            server: server?,
            identity: identity?,
            pkb: pkb?,
            store: store?,
            decorate: decorate?,
            limits: limits?,
            audit: audit?,
            nhs_login: nhs_login?,
        })
    }

    fn nhs_login(
        &mut self,
        n: RawNhsLogin,
        callback: Option<String>,
        env: &dyn Environment,
    ) -> Option<NhsLoginSettings> {
        let issuer = self
            .required("nhs_login.issuer", n.issuer)
            .and_then(|s| self.base_url("nhs_login.issuer", &s))
            .map(|u| u.as_str().trim_end_matches('/').to_string());
        let client_id = self
            .required("nhs_login.client_id", n.client_id)
            .filter(|id| {
                let ok = !id.trim().is_empty();
                if !ok {
                    self.problem("nhs_login.client_id", "is empty");
                }
                ok
            });
        let private_key = self
            .secret(
                "nhs_login.private_key",
                n.private_key,
                "nhs_login.private_key_file",
                n.private_key_file.as_deref(),
                ENV_NHS_LOGIN_KEY,
                env,
            )
            .and_then(
                |pem| match crate::nhs_login::keys::check_private_key(pem.expose()) {
                    Ok(()) => Some(pem),
                    Err(e) => {
                        self.problem("nhs_login.private_key_file", e);
                        None
                    }
                },
            );
        let redirect_uri = match n.redirect_uri {
            Some(uri) => self
                .base_url("nhs_login.redirect_uri", &uri)
                .map(|u| u.to_string()),
            None => callback,
        };
        if !n.scopes.iter().any(|s| s == "openid") {
            self.problem("nhs_login.scopes", "must include `openid`");
        }
        if let Some(bad) = n.scopes.iter().find(|s| {
            s.is_empty()
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        }) {
            self.problem("nhs_login.scopes", format!("`{bad}` is not a scope name"));
        }
        if n.vtr.is_empty() {
            self.problem(
                "nhs_login.vtr",
                "needs at least one vector, e.g. \"P9.Cp.Cd\"",
            );
        }
        for (i, v) in n.vtr.iter().enumerate() {
            if crate::nhs_login::Vector::parse(v).is_none() {
                self.problem(
                    &format!("nhs_login.vtr[{i}]"),
                    format!("`{v}` is not a vector of trust (P0, P5 or P9, then Cp, Cd, Ck or Cm, e.g. P9.Cp.Cd)"),
                );
            }
        }
        let wants_gp = n.scopes.iter().any(|s| s == "gp_integration_credentials");
        // Outer None: invalid; inner None: not used.
        let gp_credentials = match (n.gp_credentials, wants_gp) {
            (Some(g), true) => self.gp_credentials(g).map(Some),
            (None, true) => {
                self.problem(
                    "nhs_login.gp_credentials",
                    "the gp_integration_credentials scope needs [nhs_login.gp_credentials] with the paths that receive them",
                );
                None
            }
            (Some(_), false) => {
                self.problem(
                    "nhs_login.scopes",
                    "[nhs_login.gp_credentials] needs `gp_integration_credentials` in the scopes",
                );
                None
            }
            (None, false) => Some(None),
        };
        let pkb_prompt = match n.pkb_prompt.as_str() {
            "" => Some(None),
            "none" | "login" => Some(Some(n.pkb_prompt.clone())),
            other => {
                self.problem(
                    "nhs_login.pkb_prompt",
                    format!("`{other}` is not one of \"\" (blank), \"none\", \"login\""),
                );
                None
            }
        };
        let mut within = |key: &str, value: i64, max: i64, rule: &str| {
            if value < 60 || value > max {
                self.problem(
                    key,
                    format!("must be between 60 and {max} seconds ({rule})"),
                );
            }
        };
        within(
            "nhs_login.session_idle_secs",
            n.session_idle_secs,
            NHS_LOGIN_IDLE_SECS,
            "NHS login requires re-authentication after 30 minutes idle",
        );
        within(
            "nhs_login.session_max_secs",
            n.session_max_secs,
            NHS_LOGIN_MAX_SECS,
            "NHS login requires re-authentication after 12 hours",
        );
        within(
            "nhs_login.login_ttl_secs",
            n.login_ttl_secs,
            3600,
            "how long a sign-in may take",
        );
        let cookie_ok = !n.cookie_name.is_empty()
            && n.cookie_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !cookie_ok {
            self.problem(
                "nhs_login.cookie_name",
                format!(
                    "`{}` is not a cookie name (letters, digits, - _ .)",
                    n.cookie_name
                ),
            );
        }
        if !(100..=60_000).contains(&n.timeout_ms) {
            self.problem("nhs_login.timeout_ms", "must be between 100 and 60000");
        }
        if !(0..=300).contains(&n.clock_skew_secs) {
            self.problem("nhs_login.clock_skew_secs", "must be between 0 and 300");
        }
        Some(NhsLoginSettings {
            issuer: issuer?,
            client_id: client_id?,
            private_key: private_key?,
            key_id: n.key_id.filter(|k| !k.is_empty()),
            redirect_uri: redirect_uri?,
            scopes: n.scopes,
            vtr: n.vtr,
            pkb_prompt: pkb_prompt?,
            session_idle_secs: n.session_idle_secs,
            session_max_secs: n.session_max_secs,
            cookie_name: cookie_ok.then_some(n.cookie_name)?,
            login_ttl_secs: n.login_ttl_secs,
            timeout: Duration::from_millis(n.timeout_ms),
            clock_skew_secs: n.clock_skew_secs,
            gp_credentials: gp_credentials?,
        })
    }

    fn gp_credentials(&mut self, g: RawGpCredentials) -> Option<GpCredentialSettings> {
        let key = "nhs_login.gp_credentials";
        if g.paths.is_empty() {
            self.problem(
                &format!("{key}.paths"),
                "name at least one upstream path that receives the credentials (e.g. \"/im1/register\")",
            );
        }
        for (i, p) in g.paths.iter().enumerate() {
            let bare = p.strip_suffix('*').unwrap_or(p);
            if !bare.starts_with('/') || bare.contains(['?', '#', '*']) {
                self.problem(
                    &format!("{key}.paths[{i}]"),
                    format!("`{p}` is not a path (starts with /, no query; a trailing * makes it a prefix)"),
                );
            }
        }
        for (i, code) in g.unusable_ods_codes.iter().enumerate() {
            if !crate::nhs_login::gp::ods_code_is_well_formed(&code.to_ascii_uppercase()) {
                self.problem(
                    &format!("{key}.unusable_ods_codes[{i}]"),
                    format!("`{code}` is not a GP practice ODS code (a letter and five digits, e.g. A12345)"),
                );
            }
        }
        if !(1..=10).contains(&g.max_refreshes) {
            self.problem(&format!("{key}.max_refreshes"), "must be between 1 and 10");
        }
        if !(60..=86_400).contains(&g.window_secs) {
            self.problem(
                &format!("{key}.window_secs"),
                "must be between 60 and 86400",
            );
        }
        let upper = |v: Vec<String>| {
            v.into_iter()
                .map(|s| s.trim().to_ascii_uppercase())
                .collect()
        };
        Some(GpCredentialSettings {
            paths: g.paths,
            unusable_ods_codes: upper(g.unusable_ods_codes),
            unusable_gp_systems: upper(g.unusable_gp_systems),
            max_refreshes: g.max_refreshes,
            window_secs: g.window_secs,
        })
    }

    fn limits(&mut self, l: RawLimits) -> Option<LimitSettings> {
        if l.launch_per_minute > 6000 {
            self.problem(
                "limits.launch_per_minute",
                "must be at most 6000 (0 turns the limit off)",
            );
        }
        if !(1..=100_000).contains(&l.pkb_concurrency) {
            self.problem("limits.pkb_concurrency", "must be between 1 and 100000");
        }
        Some(LimitSettings {
            launch_per_minute: l.launch_per_minute,
            pkb_concurrency: l.pkb_concurrency,
        })
    }

    fn audit(&mut self, a: RawAudit, env: &dyn Environment) -> Option<AuditSettings> {
        let sink = match a.file {
            None => AuditSink::Stdout,
            Some(p) if p.as_os_str() == "-" => AuditSink::Stdout,
            Some(p) if p.as_os_str().is_empty() => {
                self.problem(
                    "audit.file",
                    "is empty; give a path, or `-` for standard output",
                );
                return None;
            }
            Some(p) => AuditSink::File(p),
        };
        let given =
            a.hash_key.is_some() || a.hash_key_file.is_some() || env.var(ENV_AUDIT_KEY).is_some();
        let hash_key = if given {
            let key = self.secret(
                "audit.hash_key",
                a.hash_key,
                "audit.hash_key_file",
                a.hash_key_file.as_deref(),
                ENV_AUDIT_KEY,
                env,
            )?;
            if key.expose().len() < 16 {
                self.problem(
                    "audit.hash_key",
                    "must be at least 16 characters (e.g. the output of `pkb-edge keygen`)",
                );
            }
            Some(key)
        } else {
            None
        };
        Some(AuditSettings { sink, hash_key })
    }

    fn socket_addr(&mut self, key: &str, s: &str) -> Option<SocketAddr> {
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(
                    key,
                    format!("`{s}` is not an IP address and port, e.g. 0.0.0.0:8080"),
                );
                None
            }
        }
    }

    fn upstream(&mut self, s: &str) -> Option<Upstream> {
        let key = "upstream";
        let url = match Url::parse(s) {
            Ok(u) => u,
            Err(e) => {
                self.problem(
                    key,
                    format!("`{s}` is not a URL ({e}); e.g. http://127.0.0.1:3000"),
                );
                return None;
            }
        };
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            other => {
                self.problem(key, format!("scheme `{other}` is not http or https"));
                return None;
            }
        };
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            self.problem(
                key,
                "must be a scheme, host and port only (requests keep their own paths)",
            );
            return None;
        }
        let host = url.host_str().unwrap_or_default().to_string();
        let port = url.port_or_known_default().unwrap_or(80);
        let lookup_host = host.trim_start_matches('[').trim_end_matches(']');
        match (lookup_host, port).to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(addr)) => Some(Upstream { addr, tls, host }),
            _ => {
                self.problem(key, format!("cannot resolve `{host}`"));
                None
            }
        }
    }

    fn prefix(&mut self, p: &str) -> Option<String> {
        let ok = p.len() > 1
            && p.starts_with('/')
            && !p.ends_with('/')
            && p[1..].split('/').all(|seg| {
                !seg.is_empty()
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                    && seg != "."
                    && seg != ".."
            });
        if ok {
            Some(p.to_string())
        } else {
            self.problem("prefix", format!("`{p}` must be a path like /_pkb: a leading slash, no trailing slash, letters, digits, - _ ."));
            None
        }
    }

    fn base_url(&mut self, key: &str, s: &str) -> Option<Url> {
        match Url::parse(s) {
            Ok(u)
                if (u.scheme() == "https" || u.scheme() == "http")
                    && u.host().is_some()
                    && u.query().is_none()
                    && u.fragment().is_none()
                    && u.username().is_empty() =>
            {
                Some(u)
            }
            Ok(_) => {
                self.problem(key, format!("`{s}` must be an absolute http(s) URL with no query, fragment or user info"));
                None
            }
            Err(e) => {
                self.problem(key, format!("`{s}` is not a URL ({e})"));
                None
            }
        }
    }

    fn server(&mut self, s: RawServer, port: u16) -> Option<ServerSettings> {
        if s.threads == 0 || s.threads > 1024 {
            self.problem("server.threads", "must be between 1 and 1024");
            return None;
        }
        if s.upstream_keepalive_pool_size == 0 {
            self.problem("server.upstream_keepalive_pool_size", "must be at least 1");
            return None;
        }
        Some(ServerSettings {
            threads: s.threads,
            work_stealing: s.work_stealing,
            grace_period_seconds: s.grace_period_seconds,
            graceful_shutdown_timeout_seconds: s.graceful_shutdown_timeout_seconds,
            upstream_keepalive_pool_size: s.upstream_keepalive_pool_size,
            pid_file: s
                .pid_file
                .unwrap_or_else(|| std::env::temp_dir().join(format!("pkb-edge-{port}.pid"))),
            upgrade_sock: s.upgrade_sock.unwrap_or_else(|| {
                std::env::temp_dir().join(format!("pkb-edge-{port}-upgrade.sock"))
            }),
        })
    }

    fn identity(&mut self, i: RawIdentity) -> Option<IdentitySettings> {
        let header = match HeaderName::try_from(i.header.as_str()) {
            Ok(h) => Some(h),
            Err(_) => {
                self.problem(
                    "identity.header",
                    format!("`{}` is not a valid header name", i.header),
                );
                None
            }
        };
        let mut peers = Vec::new();
        for (n, p) in i.trusted_peers.iter().enumerate() {
            match parse_cidr(p) {
                Some(net) => peers.push(net),
                None => self.problem(
                    &format!("identity.trusted_peers[{n}]"),
                    format!("`{p}` is not a CIDR (e.g. 10.0.0.0/8) or an IP address"),
                ),
            }
        }
        match i.mode.as_str() {
            "header" => {
                if i.trusted_peers.is_empty() {
                    self.problem(
                        "identity.trusted_peers",
                        "header mode needs at least one trusted peer (the address of the authentication layer in front of pkb-edge)",
                    );
                }
                Some(IdentitySettings::Header {
                    header: header?,
                    trusted_peers: peers,
                })
            }
            "nhs_login" => Some(IdentitySettings::NhsLogin {
                header: header?,
                trusted_peers: peers,
            }),
            "jwt" => {
                self.problem(
                    "identity.mode",
                    "`jwt` is not available in this version; use `header` or `nhs_login`",
                );
                None
            }
            other => {
                self.problem(
                    "identity.mode",
                    format!("`{other}` is not one of header, jwt, nhs_login"),
                );
                None
            }
        }
    }

    fn pkb(
        &mut self,
        p: RawPkb,
        callback: Option<String>,
        env: &dyn Environment,
    ) -> Option<PkbSettings> {
        let names = p.names();
        for (name, value) in &names {
            let key = format!("pkb.{name}");
            let is_path = name.ends_with("_path");
            if is_path && (!value.starts_with('/') || value.starts_with("//")) {
                self.problem(
                    &key,
                    format!("`{value}` must be a path starting with a single /"),
                );
            }
            if !is_path
                && (value.is_empty()
                    || !value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)))
            {
                self.problem(
                    &key,
                    format!("`{value}` must be a non-empty name of letters, digits, _ - ."),
                );
            }
        }
        let name = |n: &str| {
            names
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let base_url = self
            .required("pkb.base_url", p.base_url)
            .and_then(|s| self.base_url("pkb.base_url", &s));
        let client_id = self.required("pkb.client_id", p.client_id.filter(|c| !c.is_empty()));
        let client_secret = self.secret(
            "pkb.client_secret",
            p.client_secret,
            "pkb.client_secret_file",
            p.client_secret_file.as_deref(),
            ENV_CLIENT_SECRET,
            env,
        );
        if !["PATIENT", "CLINICIAN", "TEAMCOORD"].contains(&p.scope.as_str()) {
            self.problem(
                "pkb.scope",
                format!("`{}` is not one of PATIENT, CLINICIAN, TEAMCOORD", p.scope),
            );
        }
        if !(100..=60_000).contains(&p.timeout_ms) {
            self.problem("pkb.timeout_ms", "must be between 100 and 60000");
        }
        if !(0..=3600).contains(&p.refresh_skew_secs) {
            self.problem("pkb.refresh_skew_secs", "must be between 0 and 3600");
        }
        if !(1..=3600).contains(&p.state_ttl_secs) {
            self.problem("pkb.state_ttl_secs", "must be between 1 and 3600");
        }
        let redirect_uri = match p.redirect_uri {
            Some(r) => self.base_url("pkb.redirect_uri", &r).map(|u| u.to_string()),
            None => callback,
        };
        Some(PkbSettings {
            base_url: base_url?,
            client_id: client_id?,
            client_secret: ClientSecret::new(client_secret?.expose()),
            client_auth: p.client_auth,
            scope: p.scope,
            timeout: Duration::from_millis(p.timeout_ms),
            refresh_skew_secs: p.refresh_skew_secs,
            state_ttl_secs: p.state_ttl_secs,
            redirect_uri: redirect_uri?,
            authorize_path: name("authorize_path"),
            token_path: name("token_path"),
            otp_path: name("otp_path"),
            otp_field: name("otp_field"),
            otp_login_path: name("otp_login_path"),
            otp_param: name("otp_param"),
            patient_landing_path: name("patient_landing_path"),
            national_id_param: name("national_id_param"),
            national_id_type_param: name("national_id_type_param"),
            email_param: name("email_param"),
            data_from_other_org_path: name("data_from_other_org_path"),
        })
    }

    fn store(&mut self, s: RawStore, env: &dyn Environment) -> Option<StoreSettings> {
        let url = self.required("store.url", s.url);
        let mut password = None;
        let url = match url {
            Some(u) if u.starts_with("sqlite://") => {
                if u.len() == "sqlite://".len() {
                    self.problem("store.url", "names no file: sqlite://PATH");
                }
                if s.password_file.is_some() || s.tls_ca_file.is_some() {
                    self.problem(
                        "store.url",
                        "store.password_file and store.tls_ca_file are for postgres:// stores",
                    );
                }
                Some(u)
            }
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                match Url::parse(&u) {
                    Ok(parsed)
                        if parsed
                            .query_pairs()
                            .any(|(k, _)| k == "sslmode" || k == "password") =>
                    {
                        self.problem(
                            "store.url",
                            "must not carry sslmode or password parameters: set store.tls, and the password in the URL's user part, store.password_file or PKB_EDGE_STORE_PASSWORD",
                        );
                        None
                    }
                    Ok(mut parsed) if parsed.host_str().is_some_and(|h| !h.is_empty()) => {
                        if let Some(p) = parsed.password() {
                            let p = percent_encoding::percent_decode_str(p)
                                .decode_utf8_lossy()
                                .into_owned();
                            password = Some(SecretText::new(p));
                            let _ = parsed.set_password(None);
                        }
                        Some(parsed.to_string())
                    }
                    _ => {
                        self.problem(
                            "store.url",
                            "is not a valid postgres://USER@HOST:PORT/DATABASE URL",
                        );
                        None
                    }
                }
            }
            Some(u) => {
                self.problem(
                    "store.url",
                    format!(
                        "`{}` must be sqlite://PATH (e.g. sqlite:///var/lib/pkb-edge/pairings.db) or postgres://USER@HOST:PORT/DATABASE",
                        crate::store::redact_url(&u)
                    ),
                );
                None
            }
            None => None,
        };
        let from_elsewhere = match (s.password_file, env.var(ENV_STORE_PASSWORD)) {
            (Some(path), _) => match std::fs::read_to_string(&path) {
                Ok(p) if !p.trim().is_empty() => Some(SecretText::new(p.trim().to_string())),
                Ok(_) => {
                    self.problem(
                        "store.password_file",
                        format!("{} is empty", path.display()),
                    );
                    None
                }
                Err(e) => {
                    self.problem(
                        "store.password_file",
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            },
            (None, Some(p)) => Some(SecretText::new(p)),
            (None, None) => None,
        };
        if let Some(p) = from_elsewhere {
            if password.is_some() {
                self.problem(
                    "store.url",
                    "holds a password and store.password_file (or PKB_EDGE_STORE_PASSWORD) gives one too; give one",
                );
            }
            password = Some(p);
        }
        if !(1..=1000).contains(&s.pool_size) {
            self.problem("store.pool_size", "must be between 1 and 1000");
        }
        if let Some(ca) = &s.tls_ca_file {
            if s.tls != crate::store::postgres::TlsMode::Verify {
                self.problem(
                    "store.tls_ca_file",
                    "is only used with store.tls = \"verify\"; set that too (or remove the CA file)",
                );
            }
            if !ca.is_file() {
                self.problem(
                    "store.tls_ca_file",
                    format!("{} is not a readable file", ca.display()),
                );
            }
        }
        let (keys_source, keys) = match (s.keys, s.keys_file, env.var(ENV_KEYS)) {
            (Some(_), Some(_), _) => {
                self.problem("store.keys", "give store.keys or store.keys_file, not both");
                (String::new(), None)
            }
            (Some(k), None, _) => ("store.keys".to_string(), Some(SecretText::new(k))),
            (None, Some(path), _) => match std::fs::read_to_string(&path) {
                Ok(k) => ("store.keys_file".to_string(), Some(SecretText::new(k))),
                Err(e) => {
                    self.problem(
                        "store.keys_file",
                        format!("cannot read {}: {e}", path.display()),
                    );
                    (String::new(), None)
                }
            },
            (None, None, Some(k)) => (ENV_KEYS.to_string(), Some(SecretText::new(k))),
            (None, None, None) => {
                self.problem(
                    "store.keys_file",
                    format!("no encryption keys: set store.keys_file, store.keys or {ENV_KEYS} (make one with `pkb-edge keygen`)"),
                );
                (String::new(), None)
            }
        };
        if let Some(k) = &keys {
            if let Err(e) = crate::store::crypto::Keyring::parse(k.expose()) {
                self.problem(&keys_source, e.to_string());
            }
        }
        if s.cache_capacity == 0 {
            self.problem("store.cache_capacity", "must be at least 1");
        }
        if !(1..=3600).contains(&s.cache_ttl_secs) {
            self.problem("store.cache_ttl_secs", "must be between 1 and 3600");
        }
        Some(StoreSettings {
            url: url?,
            password,
            pool_size: s.pool_size,
            tls_ca_file: s.tls_ca_file,
            tls: s.tls,
            keys: keys?,
            keys_source,
            cache_capacity: s.cache_capacity,
            cache_ttl: Duration::from_secs(s.cache_ttl_secs),
        })
    }

    fn decorate(&mut self, d: RawDecorate) -> Option<crate::decorate::DecorateSettings> {
        use crate::decorate::{DecorateSettings, PatientSource};
        let header = HeaderName::try_from(d.header.as_str())
            .map_err(|_| {
                self.problem(
                    "decorate.header",
                    format!("`{}` is not a valid header name", d.header),
                )
            })
            .ok();
        let patient_from = match d.patient_from {
            None => Some(None),
            Some(p) => match (p.header, p.query, p.path_regex) {
                (Some(h), None, None) => match HeaderName::try_from(h.as_str()) {
                    Ok(name) => Some(Some(PatientSource::Header(name))),
                    Err(_) => {
                        self.problem(
                            "decorate.patient_from.header",
                            format!("`{h}` is not a valid header name"),
                        );
                        None
                    }
                },
                (None, Some(q), None) if !q.is_empty() => Some(Some(PatientSource::Query(q))),
                (None, None, Some(r)) => match regex::Regex::new(&r) {
                    Ok(re) if re.captures_len() == 2 => Some(Some(PatientSource::PathRegex(re))),
                    Ok(_) => {
                        self.problem(
                            "decorate.patient_from.path_regex",
                            "must have exactly one capture group: the patient id",
                        );
                        None
                    }
                    Err(e) => {
                        self.problem(
                            "decorate.patient_from.path_regex",
                            format!("is not a valid regex: {e}"),
                        );
                        None
                    }
                },
                _ => {
                    self.problem(
                        "decorate.patient_from",
                        "give exactly one of header, query or path_regex",
                    );
                    None
                }
            },
        };
        if d.national_id_type.is_empty()
            || !d
                .national_id_type
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            self.problem("decorate.national_id_type", "must be a name like NHS");
        }
        if !(1..=86_400).contains(&d.ttl_secs) {
            self.problem("decorate.ttl_secs", "must be between 1 and 86400");
        }
        if !(1..=10_000).contains(&d.budget_ms) {
            self.problem("decorate.budget_ms", "must be between 1 and 10000");
        }
        if d.cache_capacity == 0 {
            self.problem("decorate.cache_capacity", "must be at least 1");
        }
        Some(DecorateSettings {
            header: header?,
            patient_from: patient_from?,
            national_id_type: d.national_id_type,
            ttl: Duration::from_secs(d.ttl_secs),
            budget: Duration::from_millis(d.budget_ms),
            cache_capacity: d.cache_capacity,
        })
    }

    /// One secret from exactly one of: inline, a file, the environment.
    fn secret(
        &mut self,
        key: &str,
        inline: Option<String>,
        file_key: &str,
        file: Option<&Path>,
        env_name: &str,
        env: &dyn Environment,
    ) -> Option<SecretText> {
        match (inline, file) {
            (Some(_), Some(_)) => {
                self.problem(key, format!("give {key} or {file_key}, not both"));
                None
            }
            (Some(s), None) if !s.is_empty() => Some(SecretText::new(s)),
            (Some(_), None) => {
                self.problem(key, "is empty");
                None
            }
            (None, Some(path)) => match std::fs::read_to_string(path) {
                Ok(s) if !s.trim().is_empty() => Some(SecretText::new(s.trim().to_string())),
                Ok(_) => {
                    self.problem(file_key, format!("{} is empty", path.display()));
                    None
                }
                Err(e) => {
                    self.problem(file_key, format!("cannot read {}: {e}", path.display()));
                    None
                }
            },
            (None, None) => {
                match env.var(env_name) {
                    Some(s) => Some(SecretText::new(s)),
                    None => {
                        self.problem(key, format!("missing: set {key}, {file_key} or the environment variable {env_name}"));
                        None
                    }
                }
            }
        }
    }
}

/// `10.0.0.0/8`, or a bare address meaning just that host.
fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn minimal() -> String {
        format!(
            r#"
listen = "127.0.0.1:8080"
upstream = "http://127.0.0.1:3000"
public_url = "https://ehr.example.nhs.uk"
[identity]
trusted_peers = ["127.0.0.1/32", "::1"]
[pkb]
base_url = "https://sandbox.patientsknowbest.com"
client_id = "pkb-edge"
client_secret = "s3cret"
[store]
url = "sqlite:///tmp/x.db"
keys = "{KEY}"
"#
        )
    }

    fn no_env() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    fn keys_of(err: ConfigError) -> Vec<String> {
        err.problems.into_iter().map(|p| p.key).collect()
    }

    fn nhs_login_config(table: &str) -> String {
        minimal().replace("[identity]\n", "[identity]\nmode = \"nhs_login\"\n") + table
    }

    #[test]
    fn nhs_login_mode_needs_its_table_and_checks_each_key() {
        let keys = keys_of(Config::parse(&nhs_login_config(""), &no_env()).unwrap_err());
        assert_eq!(keys, vec!["nhs_login"]);
        let ignored = minimal() + "[nhs_login]\nissuer = \"https://auth.login.nhs.uk\"\n";
        let keys = keys_of(Config::parse(&ignored, &no_env()).unwrap_err());
        assert_eq!(
            keys,
            vec!["nhs_login"],
            "a table that would be ignored is an error"
        );
        let table = r#"
[nhs_login]
issuer = "auth.login.nhs.uk"
client_id = ""
private_key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
scopes = ["profile"]
vtr = ["P9.Cp.Cd", "P7.Cx"]
pkb_prompt = "consent"
session_idle_secs = 3600
session_max_secs = 86400
cookie_name = "a b"
"#;
        let mut keys = keys_of(Config::parse(&nhs_login_config(table), &no_env()).unwrap_err());
        keys.sort();
        assert_eq!(
            keys,
            vec![
                "nhs_login.client_id",
                "nhs_login.cookie_name",
                "nhs_login.issuer",
                "nhs_login.pkb_prompt",
                "nhs_login.private_key_file",
                "nhs_login.scopes",
                "nhs_login.session_idle_secs",
                "nhs_login.session_max_secs",
                "nhs_login.vtr[1]",
            ]
        );
    }

    #[test]
    fn nhs_login_defaults_follow_nhs_login_rules() {
        let pem = crate::nhs_login::keys::generate_private_key().unwrap();
        let table = format!(
            "[nhs_login]\nissuer = \"https://auth.sandpit.signin.nhs.uk/\"\nclient_id = \"portal\"\nprivate_key = '''{pem}'''\n"
        );
        let c = Config::parse(&nhs_login_config(&table), &no_env()).unwrap();
        let n = c.nhs_login.unwrap();
        assert_eq!(n.issuer, "https://auth.sandpit.signin.nhs.uk");
        assert_eq!(
            n.redirect_uri,
            "https://ehr.example.nhs.uk/_pkb/nhs/callback"
        );
        assert_eq!(n.vtr, DEFAULT_VTR);
        assert_eq!(n.scopes, ["openid", "profile"]);
        assert_eq!(n.pkb_prompt.as_deref(), Some("none"));
        assert_eq!((n.session_idle_secs, n.session_max_secs), (1800, 43200));
        assert!(
            !format!("{n:?}").contains("PRIVATE KEY"),
            "the key is never printed"
        );
    }

    #[test]
    fn gp_credentials_need_their_scope_and_table() {
        let pem = crate::nhs_login::keys::generate_private_key().unwrap();
        let base = format!(
            "[nhs_login]\nissuer = \"https://auth.login.nhs.uk\"\nclient_id = \"portal\"\nprivate_key = '''{pem}'''\n"
        );
        let with_scope = format!("{base}scopes = [\"openid\", \"gp_integration_credentials\"]\n");
        let keys = keys_of(Config::parse(&nhs_login_config(&with_scope), &no_env()).unwrap_err());
        assert_eq!(keys, vec!["nhs_login.gp_credentials"]);
        let table_only = format!("{base}[nhs_login.gp_credentials]\npaths = [\"/im1\"]\n");
        let keys = keys_of(Config::parse(&nhs_login_config(&table_only), &no_env()).unwrap_err());
        assert_eq!(keys, vec!["nhs_login.scopes"]);
        let bad = format!(
            "{with_scope}[nhs_login.gp_credentials]\npaths = [\"im1\"]\nunusable_ods_codes = [\"XYZ\"]\nmax_refreshes = 0\n"
        );
        let mut keys = keys_of(Config::parse(&nhs_login_config(&bad), &no_env()).unwrap_err());
        keys.sort();
        assert_eq!(
            keys,
            vec![
                "nhs_login.gp_credentials.max_refreshes",
                "nhs_login.gp_credentials.paths[0]",
                "nhs_login.gp_credentials.unusable_ods_codes[0]",
            ]
        );
        let good = format!(
            "{with_scope}[nhs_login.gp_credentials]\npaths = [\"/im1/register\", \"/im1/api/*\"]\n"
        );
        let gp = Config::parse(&nhs_login_config(&good), &no_env())
            .unwrap()
            .nhs_login
            .unwrap()
            .gp_credentials
            .unwrap();
        assert_eq!(gp.unusable_gp_systems, ["MICROTEST"]);
        assert_eq!((gp.max_refreshes, gp.window_secs), (2, 3600));
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::parse(&minimal(), &no_env()).unwrap();
        assert_eq!(c.prefix, "/_pkb");
        assert_eq!(
            c.pkb.redirect_uri,
            "https://ehr.example.nhs.uk/_pkb/callback"
        );
        assert_eq!(c.pkb.otp_login_path, "/otp.action");
        assert_eq!(c.pkb.otp_param, "otpToken");
        assert_eq!(c.pkb.token_path, "/apiToken.action");
        assert_eq!(c.pkb.authorize_path, "/apiAuthorize.action");
        assert_eq!(
            c.pkb.patient_landing_path,
            "/auth/patientSummary.action?tab=patientSummary"
        );
        assert_eq!(c.pkb.scope, "CLINICIAN");
        assert_eq!(c.pkb.client_auth, ClientAuth::Basic);
        assert_eq!(c.identity.header().as_str(), "x-authenticated-user");
        assert_eq!(c.store.cache_capacity, 100_000);
        assert_eq!(c.server.threads, 2);
    }

    #[test]
    fn errors_name_their_keys() {
        let text = minimal()
            .replace("127.0.0.1:8080", "not-an-address")
            .replace("\"CLINICIAN\"", "\"x\"")
            .replace(
                "trusted_peers = [\"127.0.0.1/32\", \"::1\"]",
                "trusted_peers = [\"10.0.0.0/33\"]",
            )
            .replace("https://sandbox.patientsknowbest.com", "ftp://x");
        let keys = keys_of(Config::parse(&text, &no_env()).unwrap_err());
        assert!(keys.contains(&"listen".to_string()), "{keys:?}");
        assert!(
            keys.contains(&"identity.trusted_peers[0]".to_string()),
            "{keys:?}"
        );
        assert!(keys.contains(&"pkb.base_url".to_string()), "{keys:?}");
    }

    #[test]
    fn a_mistyped_value_names_its_key() {
        let text = minimal().replace("[store]", "[store]\ncache_capacity = \"lots\"");
        assert_eq!(
            keys_of(Config::parse(&text, &no_env()).unwrap_err()),
            ["store.cache_capacity"]
        );
        let err = Config::parse("listen = 1\n", &no_env()).unwrap_err();
        assert_eq!(keys_of(err), ["listen"]);
    }

    #[test]
    fn postgres_stores_keep_the_password_out_of_the_url() {
        let pg = |store: &str, env: &[(&str, &str)]| {
            let env: BTreeMap<String, String> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let text = minimal().replace(
                "url = \"sqlite:///tmp/x.db\"",
                &format!("url = \"postgres://edge:s%40cret@db.example:5432/pkb\"\n{store}"),
            );
            Config::parse(&text, &env)
        };
        let c = pg("pool_size = 4\ntls = \"verify\"", &[]).unwrap();
        assert_eq!(c.store.url, "postgres://edge@db.example:5432/pkb");
        assert_eq!(c.store.password.as_ref().unwrap().expose(), "s@cret");
        assert_eq!(c.store.pool_size, 4);
        assert_eq!(c.store.tls, crate::store::postgres::TlsMode::Verify);
        assert!(!format!("{c:?}").contains("s@cret"));
        let err = pg("", &[(ENV_STORE_PASSWORD, "other")]).unwrap_err();
        assert_eq!(keys_of(err.clone()), ["store.url"]);
        assert!(!err.to_string().contains("s@cret"), "{err}");
        assert_eq!(
            keys_of(pg("pool_size = 0", &[]).unwrap_err()),
            ["store.pool_size"]
        );
        assert_eq!(
            keys_of(pg("tls = \"maybe\"", &[]).unwrap_err()),
            ["store.tls"]
        );
        assert_eq!(
            keys_of(pg("tls_ca_file = \"Cargo.toml\"", &[]).unwrap_err()),
            ["store.tls_ca_file"]
        );
        let in_query = minimal().replace("sqlite:///tmp/x.db", "postgres://u@h/db?sslmode=disable");
        assert_eq!(
            keys_of(Config::parse(&in_query, &no_env()).unwrap_err()),
            ["store.url"]
        );
        let secret_typed =
            minimal().replace("client_secret = \"s3cret\"", "client_secret = 12345678");
        let err = Config::parse(&secret_typed, &no_env()).unwrap_err();
        assert!(!err.to_string().contains("12345678"), "{err}");
        let bad = minimal().replace("sqlite:///tmp/x.db", "mysql://u:hunter2@h/db");
        let err = Config::parse(&bad, &no_env()).unwrap_err();
        assert_eq!(keys_of(err.clone()), ["store.url"]);
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let text = minimal().replace("[pkb]", "[pkb]\nclient_sekret = \"x\"");
        let keys = keys_of(Config::parse(&text, &no_env()).unwrap_err());
        assert_eq!(keys, vec!["client_sekret".to_string()]);
    }

    #[test]
    fn secrets_come_from_exactly_one_place() {
        let text = minimal().replace("client_secret = \"s3cret\"", "");
        let keys = keys_of(Config::parse(&text, &no_env()).unwrap_err());
        assert_eq!(keys, vec!["pkb.client_secret".to_string()]);

        let mut env = no_env();
        env.insert(ENV_CLIENT_SECRET.into(), "from-env".into());
        let c = Config::parse(&text, &env).unwrap();
        assert_eq!(c.pkb.client_secret.expose(), "from-env");

        let both = minimal().replace(
            "client_secret = \"s3cret\"",
            "client_secret = \"a\"\nclient_secret_file = \"/x\"",
        );
        let keys = keys_of(Config::parse(&both, &no_env()).unwrap_err());
        assert_eq!(keys, vec!["pkb.client_secret".to_string()]);
    }

    #[test]
    fn keys_from_environment_and_bad_keys_named() {
        let text = minimal().replace(&format!("keys = \"{KEY}\""), "");
        let keys = keys_of(Config::parse(&text, &no_env()).unwrap_err());
        assert_eq!(keys, vec!["store.keys_file".to_string()]);

        let mut env = no_env();
        env.insert(ENV_KEYS.into(), "k1:short".into());
        let keys = keys_of(Config::parse(&text, &env).unwrap_err());
        assert_eq!(keys, vec![ENV_KEYS.to_string()]);
    }

    #[test]
    fn decorate_section() {
        let c = Config::parse(&minimal(), &no_env()).unwrap();
        assert!(
            c.decorate.patient_from.is_none(),
            "pages are not decorated unless configured"
        );
        assert_eq!(c.decorate.header.as_str(), "x-pkb-data-available");
        let with = format!("{}\n[decorate]\npatient_from = {{ path_regex = '^/patients/(\\d{{10}})' }}\nbudget_ms = 20\n", minimal());
        let c = Config::parse(&with, &no_env()).unwrap();
        assert!(matches!(
            c.decorate.patient_from,
            Some(crate::decorate::PatientSource::PathRegex(_))
        ));
        let two = format!(
            "{}\n[decorate]\npatient_from = {{ header = \"x-p\", query = \"nhs\" }}\n",
            minimal()
        );
        assert_eq!(
            keys_of(Config::parse(&two, &no_env()).unwrap_err()),
            vec!["decorate.patient_from".to_string()]
        );
        let no_group = format!(
            "{}\n[decorate]\npatient_from = {{ path_regex = '^/patients/' }}\n",
            minimal()
        );
        assert_eq!(
            keys_of(Config::parse(&no_group, &no_env()).unwrap_err()),
            vec!["decorate.patient_from.path_regex".to_string()]
        );
    }

    #[test]
    fn ops_listen_is_optional_and_never_the_public_listener() {
        assert_eq!(
            Config::parse(&minimal(), &no_env()).unwrap().ops_listen,
            None
        );
        let with = format!("ops_listen = \"127.0.0.1:9090\"\n{}", minimal());
        assert_eq!(
            Config::parse(&with, &no_env()).unwrap().ops_listen,
            Some("127.0.0.1:9090".parse().unwrap())
        );
        let same = format!("ops_listen = \"127.0.0.1:8080\"\n{}", minimal());
        assert_eq!(
            keys_of(Config::parse(&same, &no_env()).unwrap_err()),
            vec!["ops_listen".to_string()]
        );
    }

    #[test]
    fn secrets_never_printed_in_debug() {
        let c = Config::parse(&minimal(), &no_env()).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"));
        assert!(!shown.contains("AAECAwQF"));
    }

    #[test]
    fn documented_example_is_valid() {
        let text = include_str!("../conf/pkb-edge.toml");
        let mut env = no_env();
        env.insert(ENV_CLIENT_SECRET.into(), "x".into());
        env.insert(ENV_KEYS.into(), KEY.into());
        // The example's secret files do not exist on a build machine; replace them with the env.
        let text = text
            .lines()
            .filter(|l| !l.starts_with("client_secret_file") && !l.starts_with("keys_file"))
            .collect::<Vec<_>>()
            .join("\n");
        if let Err(e) = Config::parse(&text, &env) {
            panic!("conf/pkb-edge.toml does not validate:\n{e}");
        }
    }
}
