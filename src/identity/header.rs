//! `header` mode: the user id from the trusted identity header.
//!
//! The header is believed only from `identity.trusted_peers` (the hospital's authentication
//! layer). Like River's CIDR filter, the check fails closed: a peer whose address is unknown (a
//! Unix socket, say) is untrusted.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName};
use ipnet::IpNet;

use super::{Asking, Identify, IdentityError};
use crate::config::IdentitySettings;

/// Longest user id accepted, in bytes.
const MAX_USER_ID_LEN: usize = 256;

#[derive(Debug, Clone)]
pub struct HeaderIdentity {
    header: HeaderName,
    trusted_peers: Vec<IpNet>,
    /// `nhs_login` mode: the header is pkb-edge's own, never read from a request.
    header_is_ours: bool,
}

impl HeaderIdentity {
    pub fn new(settings: &IdentitySettings) -> Self {
        HeaderIdentity {
            header: settings.header().clone(),
            trusted_peers: settings.trusted_peers().to_vec(),
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

    pub fn peer_is_trusted(&self, peer: Option<IpAddr>) -> bool {
        let Some(peer) = peer else { return false };
        let peer = peer.to_canonical();
        self.trusted_peers.iter().any(|net| net.contains(&peer))
    }

    /// The user id, if the request carries exactly one well-formed identity header from a trusted
    /// peer. Anything else is "nobody": never an error the client could probe.
    pub fn resolve(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<String> {
        if self.header_is_ours || !self.peer_is_trusted(peer) {
            return None;
        }
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
        Ok(self.resolve(asking.peer, asking.headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver() -> HeaderIdentity {
        HeaderIdentity::new(&IdentitySettings::Header {
            header: HeaderName::from_static("x-authenticated-user"),
            trusted_peers: vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
        })
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
            r.resolve(Some("10.1.2.3".parse().unwrap()), &h).as_deref(),
            Some("dr.jones")
        );
        assert_eq!(
            r.resolve(Some("::1".parse().unwrap()), &h).as_deref(),
            Some("dr.jones")
        );
        assert_eq!(
            r.resolve(Some("::ffff:10.0.0.1".parse().unwrap()), &h)
                .as_deref(),
            Some("dr.jones")
        );
        assert_eq!(r.resolve(Some("192.168.1.1".parse().unwrap()), &h), None);
        assert_eq!(r.resolve(None, &h), None, "unknown peer fails closed");
    }

    #[test]
    fn malformed_or_repeated_identity_is_absent() {
        let r = resolver();
        let peer = Some("10.0.0.1".parse().unwrap());
        assert_eq!(r.resolve(peer, &headers(&[])), None);
        assert_eq!(
            r.resolve(peer, &headers(&[("x-authenticated-user", "  ")])),
            None
        );
        assert_eq!(
            r.resolve(
                peer,
                &headers(&[("x-authenticated-user", "a"), ("x-authenticated-user", "b")])
            ),
            None
        );
        let long = "a".repeat(MAX_USER_ID_LEN + 1);
        assert_eq!(
            r.resolve(peer, &headers(&[("x-authenticated-user", &long)])),
            None
        );
    }
}
