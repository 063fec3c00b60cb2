//! `header` mode: the user id from the trusted identity header.
//!
//! The header is believed only from `identity.trusted_peers` (the hospital's authentication
//! layer). Like River's CIDR filter, the check fails closed: a peer whose address is unknown (a
//! Unix socket, say) is untrusted.

use std::net::IpAddr;

use http::HeaderName;
use ipnet::IpNet;

use super::{Asking, Identify, IdentityError};
use crate::config::IdentitySettings;

/// Longest user id accepted, in bytes.
const MAX_USER_ID_LEN: usize = 256;

#[derive(Debug, Clone)]
pub struct HeaderIdentity {
    header: HeaderName,
    trusted_peers: Vec<IpNet>,
    /// Names of verified client certificates (mTLS) whose header is believed.
    trusted_clients: Vec<String>,
    /// `nhs_login` mode: the header is pkb-edge's own, never read from a request.
    header_is_ours: bool,
}

impl HeaderIdentity {
    pub fn new(settings: &IdentitySettings) -> Self {
        HeaderIdentity {
            header: settings.header().clone(),
            trusted_peers: settings.trusted_peers().to_vec(),
            trusted_clients: settings.trusted_clients().to_vec(),
            header_is_ours: matches!(settings, IdentitySettings::NhsLogin { .. }),
        }
    }

    /// Whether pkb-edge sets the identity header itself (`nhs_login`): every client copy goes.
    pub fn header_is_ours(&self) -> bool {
        self.header_is_ours
    }

    /// The identity header's name (lower case).
    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// Whether the peer satisfies every rule configured: its address is in `trusted_peers`, its
    /// verified client certificate (`client`: the certificate's names) is one of
    /// `trusted_clients`. With neither configured, nobody is.
    pub fn peer_is_trusted(&self, peer: Option<IpAddr>, client: Option<&[String]>) -> bool {
        let (by_address, by_certificate) = (
            !self.trusted_peers.is_empty(),
            !self.trusted_clients.is_empty(),
        );
        if !by_address && !by_certificate {
            return false;
        }
        let address_ok = !by_address
            || peer.is_some_and(|peer| {
                let peer = peer.to_canonical();
                self.trusted_peers.iter().any(|net| net.contains(&peer))
            });
        let certificate_ok = !by_certificate
            || client.is_some_and(|names| names.iter().any(|n| self.trusted_clients.contains(n)));
        address_ok && certificate_ok
    }

    /// The user id, if the request carries exactly one well-formed identity header from a trusted
    /// peer. Anything else is "nobody": never an error the client could probe.
    pub fn resolve(&self, asking: &Asking<'_>) -> Option<String> {
        if self.header_is_ours || !self.peer_is_trusted(asking.peer, asking.client) {
            return None;
        }
        let headers = asking.headers;
        let mut values = headers.get_all(&self.header).iter();
        let value = values.next()?;
        if values.next().is_some() {
            tracing::warn!(header = %self.header, "identity header sent more than once; treated as absent");
            return None;
        }
        let user = std::str::from_utf8(value.as_bytes()).ok()?.trim();
        let well_formed = !user.is_empty()
            && user.len() <= MAX_USER_ID_LEN
            && !user.chars().any(char::is_control);
        well_formed.then(|| user.to_string())
    }
}

impl Identify for HeaderIdentity {
    type Found = String;

    async fn identify(&self, asking: &Asking<'_>) -> Result<Option<String>, IdentityError> {
        Ok(self.resolve(asking))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn resolver() -> HeaderIdentity {
        HeaderIdentity::new(&IdentitySettings::Header {
            header: HeaderName::from_static("x-authenticated-user"),
            trusted_peers: vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            trusted_clients: vec![],
        })
    }

    /// `resolve` for a request from `peer` without a client certificate.
    trait AskedBy {
        fn asked_by(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<String>;
    }

    impl AskedBy for HeaderIdentity {
        fn asked_by(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<String> {
            self.resolve(&Asking {
                peer,
                client: None,
                headers,
            })
        }
    }

    #[test]
    fn every_configured_rule_must_hold() {
        let both = HeaderIdentity::new(&IdentitySettings::Header {
            header: HeaderName::from_static("x-authenticated-user"),
            trusted_peers: vec!["10.0.0.0/8".parse().unwrap()],
            trusted_clients: vec!["sso.trust.nhs.uk".into()],
        });
        let inside = Some("10.0.0.1".parse().unwrap());
        let outside = Some("192.168.0.1".parse().unwrap());
        let gateway = ["other.example".to_string(), "sso.trust.nhs.uk".to_string()];
        let stranger = ["other.example".to_string()];
        assert!(both.peer_is_trusted(inside, Some(&gateway)));
        assert!(!both.peer_is_trusted(outside, Some(&gateway)));
        assert!(!both.peer_is_trusted(inside, Some(&stranger)));
        assert!(!both.peer_is_trusted(inside, None));
        let clients_only = HeaderIdentity::new(&IdentitySettings::Header {
            header: HeaderName::from_static("x-authenticated-user"),
            trusted_peers: vec![],
            trusted_clients: vec!["sso.trust.nhs.uk".into()],
        });
        assert!(clients_only.peer_is_trusted(outside, Some(&gateway)));
        assert!(clients_only.peer_is_trusted(None, Some(&gateway)));
        assert!(!clients_only.peer_is_trusted(inside, None));
        // Without trusted_clients, a certificate neither helps nor hurts.
        assert!(resolver().peer_is_trusted(inside, Some(&stranger)));
        assert!(!resolver().peer_is_trusted(outside, Some(&gateway)));
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::try_from(*k).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn header_trusted_only_from_trusted_peers() {
        let r = resolver();
        let h = headers(&[("X-Authenticated-User", "dr.jones")]);
        assert_eq!(
            r.asked_by(Some("10.1.2.3".parse().unwrap()), &h).as_deref(),
            Some("dr.jones")
        );
        assert_eq!(
            r.asked_by(Some("::1".parse().unwrap()), &h).as_deref(),
            Some("dr.jones")
        );
        assert_eq!(
            r.asked_by(Some("::ffff:10.0.0.1".parse().unwrap()), &h)
                .as_deref(),
            Some("dr.jones")
        );
        assert_eq!(r.asked_by(Some("192.168.1.1".parse().unwrap()), &h), None);
        assert_eq!(r.asked_by(None, &h), None, "unknown peer fails closed");
    }

    #[test]
    fn malformed_or_repeated_identity_is_absent() {
        let r = resolver();
        let peer = Some("10.0.0.1".parse().unwrap());
        assert_eq!(r.asked_by(peer, &headers(&[])), None);
        assert_eq!(
            r.asked_by(peer, &headers(&[("x-authenticated-user", "  ")])),
            None
        );
        assert_eq!(
            r.asked_by(
                peer,
                &headers(&[("x-authenticated-user", "a"), ("x-authenticated-user", "b")])
            ),
            None
        );
        let long = "a".repeat(MAX_USER_ID_LEN + 1);
        assert_eq!(
            r.asked_by(peer, &headers(&[("x-authenticated-user", &long)])),
            None
        );
    }
}
