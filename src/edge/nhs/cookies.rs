//! Reading pkb-edge's own cookies from a request, and keeping them from the upstream.

use http::HeaderMap;

/// The value of cookie `name` from the `Cookie` header(s), if the browser sent it exactly once.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut found = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string());
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// The `Cookie` header without pkb-edge's session cookie (the upstream never sees it), or
/// `None` when nothing else is left.
pub fn cookies_without(headers: &HeaderMap, name: &str) -> Option<String> {
    let login = format!("{name}-login");
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
                    .is_none_or(|(k, _)| k != name && k != login)
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let twice = headers(&["pkb_edge_session=abc", "pkb_edge_session=def"]);
        assert_eq!(cookie_value(&twice, "pkb_edge_session"), None);
        assert_eq!(cookies_without(&twice, "pkb_edge_session"), None);
        assert_eq!(
            cookie_value(&headers(&["pkb_edge_sessionx=1"]), "pkb_edge_session"),
            None
        );
    }
}
