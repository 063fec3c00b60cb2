//! Launch and pairing errors as a status and a page (or JSON).

use super::{page, Format, Reply};
use crate::launch::LaunchError;
use crate::pairing::{PairingError, StateProblem};

/// Where the user goes to link (or re-link) their PKB account, coming back to `return_to`.
pub fn pair_href(prefix: &str, return_to: &str) -> String {
    let encoded: String = form_urlencoded::byte_serialize(return_to.as_bytes()).collect();
    format!("{prefix}/pair?return_to={encoded}")
}

/// The status and page for every way a launch can fail.
pub fn launch_error(e: &LaunchError, format: Format, prefix: &str, this_url: &str) -> Reply {
    match e {
        LaunchError::NoIdentity => Reply::no_identity(format),
        LaunchError::BadRequest(why) => Reply::bad_request(format, why),
        LaunchError::NotPaired => Reply::message(
            404,
            format,
            "not_paired",
            page(
                "Link your Patients Know Best account",
                "To open Patients Know Best from here, link your PKB account once. You will sign in to PKB and come straight back.",
                Some(("Link your PKB account", pair_href(prefix, this_url))),
            ),
        ),
        LaunchError::RelinkNeeded => Reply::message(
            409,
            format,
            "relink_needed",
            page(
                "Link your Patients Know Best account again",
                "Patients Know Best no longer accepts the link to your account (it may have been revoked or expired). Link it again to continue.",
                Some(("Link your PKB account again", pair_href(prefix, this_url))),
            ),
        ),
        LaunchError::RateLimited(wait) => Reply::message(
            429,
            format,
            "rate_limited",
            page(
                "Too many requests",
                "You have opened Patients Know Best many times in the last minute. Please wait a moment, then try again.",
                Some(("Try again", this_url.to_string())),
            ),
        )
        .with_header("Retry-After", wait.as_millis().div_ceil(1000).max(1).to_string()),
        LaunchError::PkbUnavailable(_) => Reply::pkb_unavailable(format, this_url),
        LaunchError::PkbRefused(_) => Reply::pkb_refused(format),
        LaunchError::Store(e) => Reply::store_error(format, e, this_url),
    }
}

/// The status and page for every way pairing can fail. `retry` starts pairing again.
pub fn pairing_error(e: &PairingError, format: Format, retry: &str) -> Reply {
    let start_again = || Some(("Start linking again", retry.to_string()));
    match e {
        PairingError::NoIdentity => Reply::no_identity(format),
        PairingError::BadRequest(why) => Reply::bad_request(format, why),
        PairingError::StateRefused(problem) => {
            let (status, text) = match problem {
                StateProblem::UnknownOrUsed => (400, "This linking link has already been used, or was not issued here. Links work once."),
                StateProblem::Expired => (400, "This linking link has expired. Linking must be finished within a few minutes."),
                StateProblem::OtherUser => (403, "This linking link was started by a different user. Each person links their own account."),
            };
            Reply::message(status, format, "state_refused", page("This link cannot be used", text, start_again()))
        }
        PairingError::PkbDenied(code) if code == "access_denied" => Reply::message(
            403,
            format,
            "access_denied",
            page(
                "Your PKB account was not linked",
                "You chose not to allow access at Patients Know Best, so nothing was linked.",
                start_again(),
            ),
        ),
        PairingError::PkbDenied(_) => Reply::message(
            400,
            format,
            "pkb_denied",
            page(
                "Your PKB account was not linked",
                "Patients Know Best did not complete the link (the request may have expired). Nothing was stored.",
                start_again(),
            ),
        ),
        PairingError::PkbUnavailable(_) => Reply::pkb_unavailable(format, retry),
        PairingError::PkbRefused(_) => Reply::pkb_refused(format),
        PairingError::CrossSite => Reply::cross_site(format),
        PairingError::Store(e) => Reply::store_error(format, e, retry),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    #[test]
    fn statuses_for_launch_errors() {
        let cases = [
            (LaunchError::NoIdentity, 401),
            (LaunchError::BadRequest("x".into()), 400),
            (LaunchError::NotPaired, 404),
            (LaunchError::RelinkNeeded, 409),
            (
                LaunchError::RateLimited(std::time::Duration::from_millis(1500)),
                429,
            ),
            (LaunchError::PkbUnavailable("t".into()), 503),
            (LaunchError::PkbRefused("r".into()), 502),
            (
                LaunchError::Store(StoreError::Unavailable("db".into())),
                503,
            ),
        ];
        for (e, status) in cases {
            for format in [Format::Html, Format::Json] {
                let r = launch_error(&e, format, "/_pkb", "/_pkb/launch");
                assert_eq!(r.status, status, "{e:?}");
                assert_eq!(r.header("Cache-Control"), Some("no-store"));
            }
        }
        let limited = launch_error(
            &LaunchError::RateLimited(std::time::Duration::from_millis(1500)),
            Format::Html,
            "/_pkb",
            "/_pkb/launch",
        );
        assert_eq!(limited.header("Retry-After"), Some("2"));
        let r = launch_error(
            &LaunchError::NotPaired,
            Format::Json,
            "/_pkb",
            "/_pkb/launch?a=1&b=2",
        );
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"], "not_paired");
        assert_eq!(
            v["action"],
            "/_pkb/pair?return_to=%2F_pkb%2Flaunch%3Fa%3D1%26b%3D2"
        );
    }

    #[test]
    fn statuses_for_pairing_errors() {
        let cases = [
            (PairingError::StateRefused(StateProblem::UnknownOrUsed), 400),
            (PairingError::StateRefused(StateProblem::Expired), 400),
            (PairingError::StateRefused(StateProblem::OtherUser), 403),
            (PairingError::PkbDenied("access_denied".into()), 403),
            (PairingError::PkbDenied("invalid_grant".into()), 400),
            (PairingError::PkbUnavailable("x".into()), 503),
        ];
        for (e, status) in cases {
            assert_eq!(
                pairing_error(&e, Format::Html, "/_pkb/pair").status,
                status,
                "{e:?}"
            );
        }
    }
}
