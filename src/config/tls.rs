//! `[tls]`: the public listener speaks HTTPS. Only paths and numbers are checked here; the files
//! are opened at start-up (and by `check --deep`), where a problem names the file.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Validator;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub min_version: TlsVersion,
    /// Offer HTTP/2 by ALPN (HTTP/1.1 always).
    pub http2: bool,
    /// How often the pair is read again (and taken when it changed).
    pub reload: Duration,
    /// Ask for client certificates signed by these CAs.
    pub client_ca_file: Option<PathBuf>,
    pub client_auth: ClientCertMode,
    /// `Strict-Transport-Security: max-age=…` on every answer when > 0.
    pub hsts_max_age_secs: u64,
    /// A plain listener that answers 308 to the https URL.
    pub redirect_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

/// Whether a client certificate is asked for or demanded (with `client_ca_file`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCertMode {
    /// The handshake goes on without one (or with one that does not verify); such a client is
    /// simply not a trusted client.
    Optional,
    /// The handshake fails without a certificate that verifies.
    Required,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    cert_file: Option<String>,
    key_file: Option<String>,
    min_version: Option<String>,
    http2: Option<bool>,
    reload_secs: Option<u64>,
    client_ca_file: Option<String>,
    client_auth: Option<String>,
    hsts_max_age_secs: Option<u64>,
    redirect_listen: Option<String>,
}

const DEFAULT_RELOAD_SECS: u64 = 60;

impl Validator {
    pub(super) fn tls(&mut self, t: RawTls, listen: Option<SocketAddr>) -> Option<TlsSettings> {
        let cert_file = self.path("tls.cert_file", t.cert_file);
        let key_file = self.path("tls.key_file", t.key_file);
        let min_version = match t.min_version.as_deref() {
            None | Some("1.2") => Some(TlsVersion::V1_2),
            Some("1.3") => Some(TlsVersion::V1_3),
            Some(other) => {
                self.problem(
                    "tls.min_version",
                    format!("`{other}` is not \"1.2\" or \"1.3\""),
                );
                None
            }
        };
        let reload_secs = t.reload_secs.unwrap_or(DEFAULT_RELOAD_SECS);
        if reload_secs == 0 {
            self.problem(
                "tls.reload_secs",
                "must be at least 1 (SIGHUP reloads at once)",
            );
        }
        let client_ca_file = t
            .client_ca_file
            .map(|p| self.path("tls.client_ca_file", Some(p)));
        let client_auth = match (t.client_auth.as_deref(), &client_ca_file) {
            (None | Some("optional"), _) => Some(ClientCertMode::Optional),
            (Some("required"), Some(_)) => Some(ClientCertMode::Required),
            (Some("required"), None) => {
                self.problem(
                    "tls.client_auth",
                    "\"required\" needs tls.client_ca_file (the CA that signs the clients' certificates)",
                );
                None
            }
            (Some(other), _) => {
                self.problem(
                    "tls.client_auth",
                    format!("`{other}` is not \"optional\" or \"required\""),
                );
                None
            }
        };
        let redirect_listen = match t.redirect_listen {
            Some(s) => match self.socket_addr("tls.redirect_listen", &s) {
                Some(addr) if Some(addr) == listen => {
                    self.problem("tls.redirect_listen", "must differ from listen");
                    None
                }
                Some(addr) => Some(Some(addr)),
                None => None,
            },
            None => Some(None),
        };
        Some(TlsSettings {
            cert_file: cert_file?,
            key_file: key_file?,
            min_version: min_version?,
            http2: t.http2.unwrap_or(true),
            reload: Duration::from_secs(reload_secs.max(1)),
            client_ca_file: client_ca_file.flatten(),
            client_auth: client_auth?,
            hsts_max_age_secs: t.hsts_max_age_secs.unwrap_or(0),
            redirect_listen: redirect_listen?,
        })
    }

    /// A required, non-empty path.
    fn path(&mut self, key: &str, value: Option<String>) -> Option<PathBuf> {
        match value {
            Some(p) if !p.trim().is_empty() => Some(PathBuf::from(p)),
            Some(_) => {
                self.problem(key, "is empty");
                None
            }
            None => {
                self.problem(key, "is required");
                None
            }
        }
    }
}

impl Validator {
    /// `[tls]` if present, and what it asks of the rest of the file. Outer `None`: invalid (the
    /// problem is recorded); inner `None`: not configured.
    pub(super) fn tls_table(
        &mut self,
        raw: Option<RawTls>,
        listen: Option<SocketAddr>,
        identity: Option<&super::IdentitySettings>,
        public_url: Option<&url::Url>,
    ) -> Option<Option<TlsSettings>> {
        let tls = match raw {
            Some(t) => self.tls(t, listen).map(Some),
            None => Some(None),
        };
        match (&tls, identity) {
            (Some(Some(tls)), Some(identity)) => self.tls_fits(tls, identity, public_url),
            (Some(None), Some(identity)) if !identity.trusted_clients().is_empty() => self.problem(
                "identity.trusted_clients",
                "needs a [tls] table with client_ca_file: client certificates come with HTTPS",
            ),
            _ => {}
        }
        tls
    }

    /// What `[tls]` asks of the rest of the file: an https `public_url`, and a client CA for
    /// `identity.trusted_clients`.
    pub(super) fn tls_fits(
        &mut self,
        tls: &TlsSettings,
        identity: &super::IdentitySettings,
        public_url: Option<&url::Url>,
    ) {
        if let super::IdentitySettings::Header {
            trusted_clients, ..
        } = identity
        {
            if !trusted_clients.is_empty() && tls.client_ca_file.is_none() {
                self.problem(
                    "identity.trusted_clients",
                    "needs tls.client_ca_file (the CA that signs the clients' certificates)",
                );
            }
        }
        if public_url.is_some_and(|u| u.scheme() != "https") {
            self.problem(
                "public_url",
                "must be an https:// URL when [tls] is set (browsers come back to it)",
            );
        }
    }
}
