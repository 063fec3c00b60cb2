//! pkb-edge's own cookies: reading them from a request (the `cookie` crate parses), keeping
//! them from the upstream, and the `Set-Cookie` values that set and clear them.

use cookie::{Cookie, SameSite};
use http::HeaderMap;

/// `Set-Cookie` for a cookie only this site's pages send back over HTTPS: `HttpOnly`,
/// `Secure`, `SameSite=Lax`, `Path=/`; for `max_age_secs` when given, else for the session.
pub fn set_cookie(name: &str, value: &str, max_age_secs: Option<i64>) -> String {
    set_cookie_over(true, name, value, max_age_secs)
}

/// `set_cookie`, `Secure` only when `https` (the demo's front runs on plain HTTP on loopback).
pub fn set_cookie_over(https: bool, name: &str, value: &str, max_age_secs: Option<i64>) -> String {
    let mut c = Cookie::build((name, value))
        .path("/")
        .http_only(true)
        .secure(https)
        .same_site(SameSite::Lax);
    if let Some(secs) = max_age_secs {
        c = c.max_age(cookie::time::Duration::seconds(secs));
    }
    c.build().to_string()
}

/// `Set-Cookie` that deletes `name` (same attributes, `Max-Age=0`).
pub fn clear_cookie(name: &str) -> String {
    set_cookie(name, "", Some(0))
}

/// The login cookie beside session cookie `name`: it holds a sign-in in progress. Always
/// `__Host-` (set by this host alone, over HTTPS, for the whole site), whatever the session
/// cookie is called.
pub fn login_cookie_name(name: &str) -> String {
    if name.starts_with("__Host-") {
        format!("{name}-login")
    } else {
        format!("__Host-{name}-login")
    }
}

/// The value of cookie `name` from the `Cookie` header(s), if the browser sent it exactly once
/// (two copies may be a fixation attempt through a sibling domain: neither is believed).
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut found = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .filter(|c| c.name() == name)
        .map(|c| c.value().to_string());
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// The `Cookie` header without pkb-edge's session cookie and its login cookie (the upstream
/// never sees them), or `None` when nothing else is left. The other cookies go on byte for byte,
/// so they are split here rather than parsed and written again.
pub fn cookies_without(headers: &HeaderMap, name: &str) -> Option<String> {
    let login = login_cookie_name(name);
    let kept: Vec<&str> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| {
            !pair.is_empty()
                && pair
                    .split_once('=')
                    // Named as the parser above reads names (trimmed), so a cookie it would
                    // believe is never passed on.
                    .is_none_or(|(k, _)| k.trim() != name && k.trim() != login)
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_cookie_has_every_attribute() {
        let set = set_cookie("__Host-s", "abc", None);
        assert!(set.starts_with("__Host-s=abc"), "{set}");
        for attribute in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
            assert!(set.contains(attribute), "{attribute}: {set}");
        }
        assert!(!set.contains("Max-Age"), "{set}");
        assert!(set_cookie("l", "x", Some(600)).contains("Max-Age=600"));
        assert!(clear_cookie("__Host-s").contains("Max-Age=0"));
    }

    #[test]
    fn the_login_cookie_is_always_host_only() {
        assert_eq!(
            login_cookie_name("__Host-pkb-edge-session"),
            "__Host-pkb-edge-session-login"
        );
        assert_eq!(login_cookie_name("portal"), "__Host-portal-login");
    }

    fn headers(cookies: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in cookies {
            h.append(http::header::COOKIE, c.parse().unwrap());
        }
        h
    }

    #[test]
    fn session_cookie_is_read_once_and_never_passed_upstream() {
        let h = headers(&["a=1; pkb_edge_session=abc; b=2", "c=3"]);
        assert_eq!(cookie_value(&h, "pkb_edge_session").as_deref(), Some("abc"));
        assert_eq!(
            cookies_without(&h, "pkb_edge_session").as_deref(),
            Some("a=1; b=2; c=3")
        );
        let with_login = headers(&["a=1; __Host-pkb_edge_session-login=x; pkb_edge_session=abc"]);
        assert_eq!(
            cookies_without(&with_login, "pkb_edge_session").as_deref(),
            Some("a=1")
        );
        let twice = headers(&["pkb_edge_session=abc", "pkb_edge_session=def"]);
        assert_eq!(cookie_value(&twice, "pkb_edge_session"), None);
        assert_eq!(cookies_without(&twice, "pkb_edge_session"), None);
        assert_eq!(
            cookie_value(&headers(&["pkb_edge_sessionx=1"]), "pkb_edge_session"),
            None
        );
        // A name with spaces around it is the same cookie to both.
        let spaced = headers(&["a=1; pkb_edge_session =abc"]);
        assert_eq!(
            cookie_value(&spaced, "pkb_edge_session").as_deref(),
            Some("abc")
        );
        assert_eq!(
            cookies_without(&spaced, "pkb_edge_session").as_deref(),
            Some("a=1")
        );
    }
}
