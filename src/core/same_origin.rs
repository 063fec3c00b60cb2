//! The same-origin rule for state-changing requests (unpair, NHS login sign-out).

/// CSRF defence for state-changing POSTs: the browser must say the request is same-origin
/// (`Sec-Fetch-Site`), or, for browsers that do not send that, carry our exact `Origin`.
/// A request with neither is refused: fail closed.
pub fn same_origin(
    public_origin: &str,
    origin: Option<&str>,
    sec_fetch_site: Option<&str>,
) -> bool {
    match (sec_fetch_site, origin) {
        (Some(site), _) => site.eq_ignore_ascii_case("same-origin"),
        (None, Some(origin)) => origin == public_origin,
        (None, None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_table() {
        let o = "https://ehr.example.nhs.uk";
        let cases = [
            (Some(o), Some("same-origin"), true),
            (None, Some("same-origin"), true),
            (Some(o), Some("cross-site"), false),
            (Some(o), Some("same-site"), false),
            (Some("https://evil.example"), Some("same-origin"), true), // the browser's own verdict wins
            (Some(o), None, true),
            (Some("https://evil.example"), None, false),
            (Some("null"), None, false),
            (Some("https://ehr.example.nhs.uk.evil.example"), None, false),
            (None, None, false),
        ];
        for (origin, site, want) in cases {
            assert_eq!(same_origin(o, origin, site), want, "{origin:?} {site:?}");
        }
    }
}
