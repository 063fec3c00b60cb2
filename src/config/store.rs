//! `[store]`: the token store, its connection and its encryption keys.
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::{Environment, Validator, ENV_KEYS, ENV_STORE_PASSWORD};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use crate::core::secret::SecretText;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("no keys given")]
    Empty,
    #[error("key {0}: expected KEY_ID:BASE64_32_BYTES")]
    Malformed(usize),
    #[error("key `{0}`: the id must be 1-64 letters, digits, - _ .")]
    BadId(String),
    #[error("key `{0}`: not 32 bytes of base64")]
    BadMaterial(String),
    #[error("key `{0}` is given twice")]
    Duplicate(String),
}

/// One store encryption key: its id and 32 bytes of key material. `Debug` shows the id only.
#[derive(Clone)]
pub struct StoreKey {
    pub id: String,
    material: [u8; 32],
}

impl StoreKey {
    pub fn material(&self) -> &[u8; 32] {
        &self.material
    }
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreKey({}, [redacted])", self.id)
    }
}

/// Key lines: `KEY_ID:BASE64_32_BYTES`, one per line or separated by commas; `#` starts a
/// comment line. The first key seals; every key opens.
pub fn parse_keys(text: &str) -> Result<Vec<StoreKey>, KeyError> {
    let mut keys: Vec<StoreKey> = Vec::new();
    let entries = text
        .split([',', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    for (n, entry) in entries.enumerate() {
        let (id, material) = entry.split_once(':').ok_or(KeyError::Malformed(n + 1))?;
        let (id, material) = (id.trim(), material.trim());
        if id.is_empty()
            || id.len() > 64
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(KeyError::BadId(id.to_string()));
        }
        let material: [u8; 32] = B64
            .decode(material)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| KeyError::BadMaterial(id.to_string()))?;
        if keys.iter().any(|k| k.id == id) {
            return Err(KeyError::Duplicate(id.to_string()));
        }
        keys.push(StoreKey {
            id: id.to_string(),
            material,
        });
    }
    if keys.is_empty() {
        return Err(KeyError::Empty);
    }
    Ok(keys)
}

/// `store.tls`: how the connection to the database is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, its certificate not checked (libpq's default, `prefer`):
    /// protects against eavesdroppers, not against an impostor.
    Prefer,
    /// TLS always, the certificate checked against `store.tls_ca_file` (or the public web PKI)
    /// and the host name (libpq's `verify-full`).
    Verify,
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
    pub tls: TlsMode,
    /// The raw key lines; parsed and checked by `store::crypto::Keyring::parse`.
    /// The keys, parsed; the first seals.
    pub keys: Vec<StoreKey>,
    /// Where the keys came from, for error messages (`store.keys_file`, `PKB_EDGE_KEYS`…).
    pub keys_source: String,
    pub cache_capacity: u64,
    pub cache_ttl: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    url: Option<String>,
    password_file: Option<PathBuf>,
    #[serde(default = "default_pool_size")]
    pool_size: usize,
    tls_ca_file: Option<PathBuf>,
    #[serde(default = "default_store_tls")]
    tls: TlsMode,
    keys: Option<String>,
    keys_file: Option<PathBuf>,
    #[serde(default = "default_cache_capacity")]
    cache_capacity: u64,
    #[serde(default = "default_cache_ttl")]
    cache_ttl_secs: u64,
}

fn default_store_tls() -> TlsMode {
    TlsMode::Prefer
}
fn default_pool_size() -> usize {
    16
}
pub(super) fn default_cache_capacity() -> u64 {
    100_000
}
fn default_cache_ttl() -> u64 {
    300
}

impl Validator {
    pub(super) fn store(&mut self, s: RawStore, env: &dyn Environment) -> Option<StoreSettings> {
        let url = self.required("store.url", s.url.clone());
        let (url, url_password) = match url {
            Some(u) => self.store_url(u, &s),
            None => (None, None),
        };
        let password = self.store_password(url_password, s.password_file.as_deref(), env);
        if !(1..=1000).contains(&s.pool_size) {
            self.problem("store.pool_size", "must be between 1 and 1000");
        }
        if let Some(ca) = &s.tls_ca_file {
            if s.tls != TlsMode::Verify {
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
        let (keys_source, keys) = self.store_keys(s.keys.clone(), s.keys_file.as_deref(), env);
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

    /// The store URL (a PostgreSQL password taken out of it), with the problems it has.
    fn store_url(&mut self, u: String, s: &RawStore) -> (Option<String>, Option<SecretText>) {
        let mut password = None;
        let url = match u {
            u if u.starts_with("sqlite://") => {
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
            u if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
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
            u => {
                self.problem(
                    "store.url",
                    format!(
                        "`{}` must be sqlite://PATH (e.g. sqlite:///var/lib/pkb-edge/pairings.db) or postgres://USER@HOST:PORT/DATABASE",
                        redact_url(&u)
                    ),
                );
                None
            }
        };
        (url, password)
    }

    /// The database password: from the URL, or `store.password_file`, or the environment; not
    /// from two places.
    fn store_password(
        &mut self,
        mut password: Option<SecretText>,
        password_file: Option<&std::path::Path>,
        env: &dyn Environment,
    ) -> Option<SecretText> {
        let from_elsewhere = match (password_file, env.var(ENV_STORE_PASSWORD)) {
            (Some(path), _) => match std::fs::read_to_string(path) {
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
        password
    }

    /// The encryption keys, parsed, and where they came from (for messages).
    fn store_keys(
        &mut self,
        inline: Option<String>,
        file: Option<&std::path::Path>,
        env: &dyn Environment,
    ) -> (String, Option<Vec<StoreKey>>) {
        let (keys_source, keys) = match (inline, file, env.var(ENV_KEYS)) {
            (Some(_), Some(_), _) => {
                self.problem("store.keys", "give store.keys or store.keys_file, not both");
                (String::new(), None)
            }
            (Some(k), None, _) => ("store.keys".to_string(), Some(SecretText::new(k))),
            (None, Some(path), _) => match std::fs::read_to_string(path) {
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
        let keys = keys.and_then(|k| match parse_keys(k.expose()) {
            Ok(keys) => Some(keys),
            Err(e) => {
                self.problem(&keys_source, e.to_string());
                None
            }
        });
        (keys_source, keys)
    }
}

/// A database URL with any password replaced, for messages.
pub fn redact_url(url: &str) -> String {
    let redacted = match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            if u.query_pairs().any(|(k, _)| k == "password") {
                let kept: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if k == "password" {
                            "***".into()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(kept);
            }
            u.to_string()
        }
        Err(_) => url.to_string(),
    };
    // A mistyped URL (`postgres:://u:p@h`, `mysql://u:p@h:99999`) is read with no password, or
    // not read at all, and may still show one to a person.
    redact_url_text(&redacted)
}

/// `redact_url` by eye, for what the url crate does not read as a URL with a password: after the
/// scheme, a `:` before the last `@` starts a password (masked up to that `@`), and so does a
/// `password=` (masked up to the next `&` or `#`).
fn redact_url_text(url: &str) -> String {
    let mut out = url.to_string();
    let after_scheme = url.find(':').map_or(0, |i| {
        url.len() - url[i + 1..].trim_start_matches([':', '/']).len()
    });
    if let Some(at) = url.rfind('@').filter(|&at| at > after_scheme) {
        if let Some(colon) = url[after_scheme..at].find(':') {
            out.replace_range(after_scheme + colon + 1..at, "***");
        }
    }
    let mut from = 0;
    while let Some(i) = out[from..]
        .find("password=")
        .map(|i| from + i + "password=".len())
    {
        let end = out[i..].find(['&', '#']).map_or(out.len(), |e| i + e);
        out.replace_range(i..end, "***");
        from = i + 3;
    }
    out
}
