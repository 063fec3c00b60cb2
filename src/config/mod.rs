//! Typed configuration: the TOML file, secrets from files or the environment, and validation
//! whose every error names the key it is about.
//!
//! Not for: deciding anything at request time. Everything here is resolved once at start-up into
//! plain values the rest of the code takes as given.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;
use url::Url;

use crate::core::secret::SecretText;

mod audit;
mod decorate;
mod identity;
mod jwt;
mod nhs_login;
mod pkb;
mod server;
mod store;
mod tls;
mod upstream_tls;

use audit::RawAudit;
use decorate::RawDecorate;
use identity::RawIdentity;
use nhs_login::RawNhsLogin;
use pkb::RawPkb;
use server::{RawLimits, RawServer};
use store::RawStore;
use tls::RawTls;
use upstream_tls::RawUpstreamTls;

pub use audit::{AuditSettings, AuditSink};
pub use decorate::{DecorateSettings, PatientSource};
pub use identity::IdentitySettings;
pub use jwt::{JwtKeySource, JwtPreset, JwtSettings};
pub use nhs_login::{
    ods_code_is_well_formed, GpCredentialSettings, NhsLoginSettings, Vector, DEFAULT_VTR,
    NHS_LOGIN_IDLE_SECS, NHS_LOGIN_MAX_SECS,
};
pub use pkb::{pkb_default, ClientAuth, PkbSettings};
pub use server::{LimitSettings, ServerSettings, Upstream};
pub use store::{parse_keys, redact_url, KeyError, StoreKey, StoreSettings, TlsMode};
pub use tls::{ClientCertMode, TlsSettings, TlsVersion};
pub use upstream_tls::UpstreamTlsSettings;

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
    /// TLS to an https upstream (defaults: the system roots, no client certificate).
    pub upstream_tls: UpstreamTlsSettings,
    /// How often a host name in `upstream` is resolved again.
    pub upstream_dns: std::time::Duration,
    pub prefix: String,
    pub public_url: Url,
    pub server: ServerSettings,
    pub identity: IdentitySettings,
    pub pkb: PkbSettings,
    pub store: StoreSettings,
    pub decorate: DecorateSettings,
    pub limits: LimitSettings,
    pub audit: AuditSettings,
    /// Set exactly when `identity.mode = "nhs_login"`.
    pub nhs_login: Option<NhsLoginSettings>,
    /// The public listener speaks HTTPS when set.
    pub tls: Option<TlsSettings>,
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
    upstream_tls: Option<RawUpstreamTls>,
    upstream_dns_secs: Option<u64>,
    #[serde(default = "server::default_prefix")]
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
    tls: Option<RawTls>,
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
    pub(super) fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(KeyProblem {
            key: key.to_string(),
            message: message.into(),
        });
    }

    pub(super) fn required<T>(&mut self, key: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.problem(key, "is required");
        }
        value
    }

    pub(super) fn config(&mut self, raw: RawConfig, env: &dyn Environment) -> Option<Config> {
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
        let upstream_tls = self.upstream_tls(raw.upstream_tls, upstream.as_ref());
        let upstream_dns = self.upstream_dns(raw.upstream_dns_secs);
        let prefix = self.prefix(&raw.prefix);
        let public_url = self
            .required("public_url", raw.public_url)
            .and_then(|s| self.base_url("public_url", &s));
        let server = self.server(raw.server, listen.map_or(0, |l| l.port()));
        let identity = self
            .required("identity", raw.identity)
            .and_then(|i| self.identity(i));
        let callback = |path: &str| match (&public_url, &prefix) {
            (Some(base), Some(prefix)) => Some(format!(
                "{}{prefix}{path}",
                base.as_str().trim_end_matches('/')
            )),
            _ => None,
        };
        let pkb = self
            .required("pkb", raw.pkb)
            .and_then(|p| self.pkb(p, callback("/callback"), env));
        let store = self
            .required("store", raw.store)
            .and_then(|s| self.store(s, env));
        let decorate = self.decorate(raw.decorate.unwrap_or_default());
        let limits = self.limits(raw.limits);
        let audit = self.audit(raw.audit, env);
        let wants_nhs_login = matches!(identity, Some(IdentitySettings::NhsLogin { .. }));
        let nhs_login = self.nhs_login_table(
            raw.nhs_login,
            wants_nhs_login,
            callback("/nhs/callback"),
            env,
        );
        let tls = self.tls_table(raw.tls, listen, identity.as_ref(), public_url.as_ref());
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
            upstream_tls: upstream_tls?,
            upstream_dns: upstream_dns?,
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
            tls: tls?,
        })
    }

    /// `[nhs_login]`, which goes with `identity.mode = "nhs_login"`. Outer `None`: invalid (the
    /// problem is recorded); inner `None`: not configured.
    fn nhs_login_table(
        &mut self,
        table: Option<nhs_login::RawNhsLogin>,
        wanted: bool,
        callback: Option<String>,
        env: &dyn Environment,
    ) -> Option<Option<NhsLoginSettings>> {
        // Outer None: invalid (the problem is recorded); inner None: not configured.
        match (table, wanted) {
            (Some(n), true) => self.nhs_login(n, callback, env).map(Some),
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
        }
    }

    pub(super) fn base_url(&mut self, key: &str, s: &str) -> Option<Url> {
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

    /// One secret from exactly one of: inline, a file, the environment.
    pub(super) fn secret(
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

#[cfg(test)]
mod tests;
