//! `[upstream_tls]`: how pkb-edge speaks TLS to an `https://` upstream (the CA it trusts, its
//! client certificate, the name it verifies), and `upstream_dns_secs`. Verification is never off:
//! there is no key to turn it off. The files are opened at start-up (and by `check --deep`).
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Upstream, Validator};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamTlsSettings {
    /// The CA certificates the upstream's certificate must chain to; the system roots if unset.
    pub ca_file: Option<PathBuf>,
    /// pkb-edge's client certificate (chain) and key, for an upstream that asks for one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The name sent as SNI and verified in the upstream's certificate; the upstream's host
    /// when unset.
    pub server_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstreamTls {
    ca_file: Option<String>,
    client_cert_file: Option<String>,
    client_key_file: Option<String>,
    server_name: Option<String>,
}

const DEFAULT_DNS_SECS: u64 = 30;

impl Validator {
    /// `[upstream_tls]`, which only an https upstream uses. Outer `None`: invalid (the problem is
    /// recorded).
    pub(super) fn upstream_tls(
        &mut self,
        raw: Option<RawUpstreamTls>,
        upstream: Option<&Upstream>,
    ) -> Option<UpstreamTlsSettings> {
        let Some(raw) = raw else {
            return Some(UpstreamTlsSettings::default());
        };
        if upstream.is_some_and(|u| !u.tls) {
            self.problem(
                "upstream_tls",
                "is used only with an https:// upstream; remove it or make the upstream https",
            );
            return None;
        }
        let file = |v: Option<String>| v.filter(|p| !p.trim().is_empty()).map(PathBuf::from);
        let client_cert = match (file(raw.client_cert_file), file(raw.client_key_file)) {
            (Some(cert), Some(key)) => Some(Some((cert, key))),
            (None, None) => Some(None),
            (Some(_), None) => {
                self.problem(
                    "upstream_tls.client_key_file",
                    "is required with upstream_tls.client_cert_file",
                );
                None
            }
            (None, Some(_)) => {
                self.problem(
                    "upstream_tls.client_cert_file",
                    "is required with upstream_tls.client_key_file",
                );
                None
            }
        };
        let server_name = match raw.server_name {
            Some(name) if !valid_name(&name) => {
                self.problem(
                    "upstream_tls.server_name",
                    format!("`{name}` is not a DNS name or an IP address"),
                );
                None
            }
            name => Some(name),
        };
        Some(UpstreamTlsSettings {
            ca_file: file(raw.ca_file),
            client_cert: client_cert?,
            server_name: server_name?,
        })
    }

    /// `upstream_dns_secs`: how often a host name in `upstream` is resolved again.
    pub(super) fn upstream_dns(&mut self, secs: Option<u64>) -> Option<Duration> {
        match secs.unwrap_or(DEFAULT_DNS_SECS) {
            0 => {
                self.problem("upstream_dns_secs", "must be at least 1");
                None
            }
            s => Some(Duration::from_secs(s)),
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
}
