//! `[identity]`: who is asking, and whom pkb-edge believes.
use http::HeaderName;
use ipnet::IpNet;
use serde::Deserialize;

use super::Validator;

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentity {
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

impl Validator {
    pub(super) fn identity(&mut self, i: RawIdentity) -> Option<IdentitySettings> {
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
}

/// `10.0.0.0/8`, or a bare address meaning just that host.
fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}
