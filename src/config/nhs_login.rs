//! `[nhs_login]` and `[nhs_login.gp_credentials]`: pkb-edge as the NHS login relying party.
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Environment, Validator, ENV_NHS_LOGIN_KEY};
use crate::core::secret::SecretText;

/// A GP practice's ODS code: one letter and five digits (e.g. A12345).
pub fn ods_code_is_well_formed(code: &str) -> bool {
    let b = code.as_bytes();
    b.len() == 6 && b[0].is_ascii_uppercase() && b[1..].iter().all(u8::is_ascii_digit)
}

/// A vector of trust: identity proofing level and authentication methods, e.g. `P9.Cp.Cd`.
/// Two vectors are equal when their level and methods are (`P9.Cd.Cp` is `P9.Cp.Cd`); the text
/// as written is kept for the authorize request.
#[derive(Clone)]
pub struct Vector {
    pub level: String,
    /// Sorted, so `P9.Cd.Cp` and `P9.Cp.Cd` are the same vector.
    pub methods: Vec<String>,
    written: String,
}

impl PartialEq for Vector {
    fn eq(&self, other: &Vector) -> bool {
        self.level == other.level && self.methods == other.methods
    }
}

impl Eq for Vector {}

impl std::fmt::Debug for Vector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.written)
    }
}

impl Vector {
    pub fn parse(text: &str) -> Option<Vector> {
        let mut parts = text.split('.');
        let level = parts.next()?;
        if !["P0", "P5", "P9"].contains(&level) {
            return None;
        }
        let mut methods: Vec<String> = parts.map(str::to_string).collect();
        if methods.is_empty()
            || methods
                .iter()
                .any(|m| !["Cp", "Cd", "Ck", "Cm"].contains(&m.as_str()))
        {
            return None;
        }
        methods.sort();
        let before = methods.len();
        methods.dedup();
        (methods.len() == before).then(|| Vector {
            level: level.to_string(),
            methods,
            written: text.to_string(),
        })
    }

    /// The vector as written in the configuration.
    pub fn as_str(&self) -> &str {
        &self.written
    }
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
    pub vtr: Vec<Vector>,
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

/// NHS login's session rules for relying parties.
pub const NHS_LOGIN_IDLE_SECS: i64 = 30 * 60;
pub const NHS_LOGIN_MAX_SECS: i64 = 12 * 60 * 60;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNhsLogin {
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
    #[serde(default = "super::pkb::default_state_ttl")]
    login_ttl_secs: i64,
    #[serde(default = "default_nhs_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_clock_skew")]
    clock_skew_secs: i64,
    gp_credentials: Option<RawGpCredentials>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawGpCredentials {
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

impl Validator {
    pub(super) fn nhs_login(
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
        let private_key = self.rp_private_key(n.private_key, n.private_key_file.as_deref(), env);
        let redirect_uri = match n.redirect_uri {
            Some(uri) => self
                .base_url("nhs_login.redirect_uri", &uri)
                .map(|u| u.to_string()),
            None => callback,
        };
        self.nhs_scopes(&n.scopes);
        let vtr = self.vtr(&n.vtr);
        let wants_gp = n.scopes.iter().any(|s| s == "gp_integration_credentials");
        let gp_credentials = self.gp_table(n.gp_credentials, wants_gp);
        let pkb_prompt = self.pkb_prompt(&n.pkb_prompt);
        self.session_limits(n.session_idle_secs, n.session_max_secs, n.login_ttl_secs);
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
            vtr: vtr?,
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

    /// The relying party's RSA key, from exactly one place, checked as NHS login requires.
    fn rp_private_key(
        &mut self,
        inline: Option<String>,
        file: Option<&std::path::Path>,
        env: &dyn Environment,
    ) -> Option<SecretText> {
        self.secret(
            "nhs_login.private_key",
            inline,
            "nhs_login.private_key_file",
            file,
            ENV_NHS_LOGIN_KEY,
            env,
        )
        .and_then(
            |pem| match crate::core::rsa_keys::check_private_key(pem.expose()) {
                Ok(()) => Some(pem),
                Err(e) => {
                    self.problem("nhs_login.private_key_file", e);
                    None
                }
            },
        )
    }

    /// `prompt` sent into PKB with the assertion: blank (none sent), `none` or `login`.
    fn pkb_prompt(&mut self, prompt: &str) -> Option<Option<String>> {
        match prompt {
            "" => Some(None),
            "none" | "login" => Some(Some(prompt.to_string())),
            other => {
                self.problem(
                    "nhs_login.pkb_prompt",
                    format!("`{other}` is not one of \"\" (blank), \"none\", \"login\""),
                );
                None
            }
        }
    }

    fn nhs_scopes(&mut self, scopes: &[String]) {
        if !scopes.iter().any(|s| s == "openid") {
            self.problem("nhs_login.scopes", "must include `openid`");
        }
        if let Some(bad) = scopes.iter().find(|s| {
            s.is_empty()
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        }) {
            self.problem("nhs_login.scopes", format!("`{bad}` is not a scope name"));
        }
    }

    /// The vectors of trust, parsed; each bad one named by its index.
    fn vtr(&mut self, written: &[String]) -> Option<Vec<Vector>> {
        if written.is_empty() {
            self.problem(
                "nhs_login.vtr",
                "needs at least one vector, e.g. \"P9.Cp.Cd\"",
            );
        }
        let mut vectors = Some(Vec::with_capacity(written.len()));
        for (i, v) in written.iter().enumerate() {
            match (Vector::parse(v), vectors.as_mut()) {
                (Some(vector), Some(list)) => list.push(vector),
                (Some(_), None) => {}
                (None, _) => {
                    self.problem(
                        &format!("nhs_login.vtr[{i}]"),
                        format!("`{v}` is not a vector of trust (P0, P5 or P9, then Cp, Cd, Ck or Cm, e.g. P9.Cp.Cd)"),
                    );
                    vectors = None;
                }
            }
        }
        vectors
    }

    /// `[nhs_login.gp_credentials]`, which goes with the `gp_integration_credentials` scope.
    /// Outer `None`: invalid; inner `None`: not used.
    fn gp_table(
        &mut self,
        table: Option<RawGpCredentials>,
        wants_gp: bool,
    ) -> Option<Option<GpCredentialSettings>> {
        match (table, wants_gp) {
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
        }
    }

    /// Session and sign-in durations, within NHS login's rules.
    fn session_limits(&mut self, idle_secs: i64, max_secs: i64, login_ttl_secs: i64) {
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
            idle_secs,
            NHS_LOGIN_IDLE_SECS,
            "NHS login requires re-authentication after 30 minutes idle",
        );
        within(
            "nhs_login.session_max_secs",
            max_secs,
            NHS_LOGIN_MAX_SECS,
            "NHS login requires re-authentication after 12 hours",
        );
        within(
            "nhs_login.login_ttl_secs",
            login_ttl_secs,
            3600,
            "how long a sign-in may take",
        );
    }

    pub(super) fn gp_credentials(&mut self, g: RawGpCredentials) -> Option<GpCredentialSettings> {
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
            if !ods_code_is_well_formed(&code.to_ascii_uppercase()) {
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
}
