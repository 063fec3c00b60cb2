//! `[identity]`: who is asking, and whom pkb-edge believes.
use http::HeaderName;
use ipnet::IpNet;
use serde::Deserialize;

use super::jwt::{jwt_only_keys, JwtSettings};
use super::Validator;

#[derive(Debug, Clone)]
pub enum IdentitySettings {
    Header {
        header: HeaderName,
        trusted_peers: Vec<IpNet>,
        /// Names (DNS SAN, or CN without SANs) of verified client certificates whose header is
        /// believed. A peer must satisfy every rule configured (peers and clients).
        trusted_clients: Vec<String>,
    },
    /// pkb-edge signs users in with NHS login and sets `header` itself. `trusted_peers` only
    /// says whose `X-Request-Id` is taken.
    NhsLogin {
        header: HeaderName,
        trusted_peers: Vec<IpNet>,
    },
    /// The user id is a claim of a JWT the identity-aware proxy in front signed.
    Jwt(Box<JwtSettings>),
}

impl IdentitySettings {
    pub fn header(&self) -> &HeaderName {
        match self {
            IdentitySettings::Header { header, .. } | IdentitySettings::NhsLogin { header, .. } => {
                header
            }
            IdentitySettings::Jwt(jwt) => &jwt.header,
        }
    }

    pub fn trusted_peers(&self) -> &[IpNet] {
        match self {
            IdentitySettings::Header { trusted_peers, .. }
            | IdentitySettings::NhsLogin { trusted_peers, .. } => trusted_peers,
            IdentitySettings::Jwt(jwt) => &jwt.trusted_peers,
        }
    }

    /// Names of verified client certificates believed (header mode only).
    pub fn trusted_clients(&self) -> &[String] {
        match self {
            IdentitySettings::Header {
                trusted_clients, ..
            } => trusted_clients,
            _ => &[],
        }
    }

    /// jwt mode's settings.
    pub fn jwt(&self) -> Option<&JwtSettings> {
        match self {
            IdentitySettings::Jwt(jwt) => Some(jwt),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentity {
    #[serde(default = "default_mode")]
    mode: String,
    pub(super) header: Option<String>,
    #[serde(default)]
    trusted_peers: Vec<String>,
    #[serde(default)]
    trusted_clients: Vec<String>,
    // jwt mode (config/jwt.rs).
    pub(super) preset: Option<String>,
    pub(super) jwks_url: Option<String>,
    pub(super) key_url_template: Option<String>,
    pub(super) public_keys_file: Option<String>,
    pub(super) issuer: Option<String>,
    pub(super) audience: Option<Vec<String>>,
    pub(super) signer: Option<String>,
    pub(super) algorithms: Option<Vec<String>>,
    pub(super) user_claim: Option<String>,
    pub(super) clock_skew_secs: Option<i64>,
    pub(super) forward_header: Option<String>,
    pub(super) jwks_refresh_secs: Option<u64>,
}

fn default_mode() -> String {
    "header".into()
}
const DEFAULT_IDENTITY_HEADER: &str = "X-Authenticated-User";

impl Validator {
    pub(super) fn identity(&mut self, i: RawIdentity) -> Option<IdentitySettings> {
        let written = i.header.as_deref().unwrap_or(DEFAULT_IDENTITY_HEADER);
        let header = match HeaderName::try_from(written) {
            Ok(h) => Some(h),
            Err(_) if i.mode == "jwt" => None, // config/jwt.rs says so
            Err(_) => {
                self.problem(
                    "identity.header",
                    format!("`{written}` is not a valid header name"),
                );
                None
            }
        };
        if i.mode != "jwt" {
            for key in jwt_only_keys(&i) {
                self.problem(
                    &format!("identity.{key}"),
                    "is used only with identity.mode = \"jwt\"",
                );
            }
        }
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
        if i.mode != "header" && !i.trusted_clients.is_empty() {
            self.problem(
                "identity.trusted_clients",
                "is used only with identity.mode = \"header\"",
            );
        }
        match i.mode.as_str() {
            "header" => {
                if i.trusted_peers.is_empty() && i.trusted_clients.is_empty() {
                    self.problem(
                        "identity.trusted_peers",
                        "header mode needs at least one trusted peer (the address of the authentication layer in front of pkb-edge) or trusted client (identity.trusted_clients)",
                    );
                }
                let trusted_clients = self.client_names(&i.trusted_clients);
                Some(IdentitySettings::Header {
                    header: header?,
                    trusted_peers: peers,
                    trusted_clients,
                })
            }
            "nhs_login" => Some(IdentitySettings::NhsLogin {
                header: header?,
                trusted_peers: peers,
            }),
            "jwt" => self
                .jwt(i, peers)
                .map(|jwt| IdentitySettings::Jwt(Box::new(jwt))),
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

impl Validator {
    /// `identity.trusted_clients`: DNS names as certificates carry them (lower case).
    fn client_names(&mut self, names: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for (n, name) in names.iter().enumerate() {
            let ok = !name.is_empty()
                && name.len() <= 253
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if ok {
                out.push(name.to_ascii_lowercase());
            } else {
                self.problem(
                    &format!("identity.trusted_clients[{n}]"),
                    format!("`{name}` is not a DNS name (e.g. sso-gateway.trust.nhs.uk)"),
                );
            }
        }
        out
    }
}

/// `10.0.0.0/8`, or a bare address meaning just that host.
fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}
