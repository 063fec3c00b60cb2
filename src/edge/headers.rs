//! Header rules at the edge: hop-by-hop headers, request ids, and what log lines may show of a
//! request. No decisions about users here; those are in `identity` and the use cases.

use http::{HeaderMap, HeaderName};

/// Whether `name` is `protected` in another spelling: the same once case is ignored and `_` is
/// read as `-`, as CGI, WSGI, PHP and Rack do when they turn headers into variables. `name` is
/// as `http` stores it (lower case).
pub fn same_header(name: &str, protected: &HeaderName) -> bool {
    let protected = protected.as_str();
    name.len() == protected.len()
        && name
            .bytes()
            .zip(protected.bytes())
            .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
}

/// Removes from `headers` every copy of each `protected` header, in every spelling, except the
/// exact header `keep` (the identity header pkb-edge believed).
pub fn strip_spellings(
    headers: &HeaderMap,
    protected: &[HeaderName],
    keep: Option<&HeaderName>,
) -> Vec<HeaderName> {
    headers
        .keys()
        .filter(|name| keep != Some(*name))
        .filter(|name| protected.iter().any(|p| same_header(name.as_str(), p)))
        .cloned()
        .collect()
}

/// The request id header: taken from trusted peers, generated otherwise, passed upstream and
/// returned on pkb-edge's own answers.
pub const REQUEST_ID: &str = "x-request-id";

/// What to remove from a request before it goes upstream: the hop-by-hop headers a client named
/// in `Connection:` (a client could otherwise name a header the proxy sets, and have the next hop
/// drop it), plus `Connection`, `Keep-Alive` and `Proxy-Connection` themselves.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HopByHop {
    pub remove: Vec<HeaderName>,
    /// `Connection: upgrade` is put back for a protocol upgrade (WebSockets keep working).
    pub keep_upgrade: bool,
}

pub fn hop_by_hop(headers: &HeaderMap) -> HopByHop {
    let mut out = HopByHop::default();
    let tokens = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase());
    for token in tokens {
        match token.as_str() {
            "" | "keep-alive" | "close" => {}
            "upgrade" => out.keep_upgrade = headers.contains_key(http::header::UPGRADE),
            name => {
                if let Ok(name) = HeaderName::try_from(name) {
                    out.remove.push(name);
                }
            }
        }
    }
    for name in ["connection", "keep-alive", "proxy-connection"] {
        if headers.contains_key(name) {
            out.remove.push(HeaderName::from_static(name));
        }
    }
    out
}

/// The request id a trusted peer sent, if it is a sane token; otherwise a new random one.
pub fn request_id(trusted: bool, headers: &http::HeaderMap) -> String {
    let sent = headers
        .get(REQUEST_ID)
        .map(http::HeaderValue::as_bytes)
        .filter(|v| {
            trusted
                && (1..=128).contains(&v.len())
                && v.iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(b))
        });
    match sent {
        // Checked above: ASCII only.
        Some(v) => String::from_utf8_lossy(v).into_owned(),
        None => format!("{:032x}", rand::random::<u128>()),
    }
}

/// The path and query of a `Referer` on this site: where a form was posted from.
pub fn same_origin_referer(public_origin: &str, headers: &http::HeaderMap) -> Option<String> {
    let referer = headers.get(http::header::REFERER)?.to_str().ok()?;
    let url = url::Url::parse(referer).ok()?;
    if url.origin().ascii_serialization() != public_origin {
        return None;
    }
    Some(match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    })
}

/// A path as log lines may show it: segments holding six or more digits in a row (NHS and other
/// national numbers) or an `@` (email addresses) become `*`.
pub fn loggable_path(path: &str) -> String {
    let masked: Vec<&str> = path
        .split('/')
        .map(|segment| {
            let mut run = 0;
            let long_digits = segment.bytes().any(|b| {
                run = if b.is_ascii_digit() { run + 1 } else { 0 };
                run >= 6
            });
            let decoded_at = segment.contains('@') || segment.to_ascii_lowercase().contains("%40");
            if long_digits || decoded_at {
                "*"
            } else {
                segment
            }
        })
        .collect();
    masked.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::try_from(*k).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn connection_named_headers_are_removed() {
        let h = headers(&[
            ("connection", "keep-alive, X-Authenticated-User"),
            ("connection", "x-other"),
            ("x-authenticated-user", "evil"),
            ("x-other", "1"),
            ("x-kept", "1"),
            ("keep-alive", "timeout=5"),
        ]);
        let hop = hop_by_hop(&h);
        let names: Vec<&str> = hop.remove.iter().map(HeaderName::as_str).collect();
        assert_eq!(
            names,
            vec![
                "x-authenticated-user",
                "x-other",
                "connection",
                "keep-alive"
            ]
        );
        assert!(!hop.keep_upgrade);

        let ws = hop_by_hop(&headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ]));
        assert!(ws.keep_upgrade);
        assert_eq!(ws.remove, vec![HeaderName::from_static("connection")]);
    }

    #[test]
    fn protected_headers_are_found_in_every_spelling() {
        let identity = HeaderName::from_static("x-authenticated-user");
        let h = headers(&[
            ("x-authenticated-user", "alice"),
            ("X_Authenticated_User", "mallory"),
            ("x-authenticated_user", "mallory"),
            ("x-authenticated-users", "other"),
            ("accept", "*/*"),
        ]);
        let gone = strip_spellings(&h, std::slice::from_ref(&identity), Some(&identity));
        let names: Vec<&str> = gone.iter().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x_authenticated_user", "x-authenticated_user"]);
        let all = strip_spellings(&h, std::slice::from_ref(&identity), None);
        assert_eq!(all.len(), 3);
    }

    #[test]
    fn logged_paths_hide_patient_ids() {
        assert_eq!(
            loggable_path("/patients/9434765919/summary"),
            "/patients/*/summary"
        );
        assert_eq!(loggable_path("/p/nhs-943476-5919"), "/p/*");
        assert_eq!(loggable_path("/people/a%40b.example/x"), "/people/*/x");
        assert_eq!(loggable_path("/people/a@b.example"), "/people/*");
        assert_eq!(loggable_path("/_pkb/launch"), "/_pkb/launch");
        assert_eq!(loggable_path("/ward/12345/beds"), "/ward/12345/beds");
        assert_eq!(loggable_path("/"), "/");
    }
}
