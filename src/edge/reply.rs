//! Responses pkb-edge writes itself, and the one place errors become an HTTP status plus a page
//! (or JSON, for clients that ask with `Accept: application/json`).

use serde_json::json;

use crate::launch::LaunchError;
use crate::pages::MessagePage;
use crate::pairing::{PairingError, StateProblem};
use crate::store::StoreError;

const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Html,
    Json,
}

impl Format {
    /// JSON only when the client prefers it over HTML; browsers get pages.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/json") && !a.contains("text/html") => Format::Json,
            _ => Format::Html,
        }
    }
}

/// A page: title, explanation, and at most one link and one POST button.
pub(crate) fn page<'a>(
    title: &'a str,
    text: &str,
    action: Option<(&'a str, String)>,
) -> MessagePage<'a> {
    MessagePage {
        title,
        paragraphs: vec![text.to_string()],
        action,
        form: None,
        footnote: None,
    }
}

impl Reply {
    fn base(status: u16) -> Reply {
        Reply {
            status,
            headers: vec![
                ("Cache-Control", "no-store".into()),
                ("Referrer-Policy", "no-referrer".into()),
                ("X-Content-Type-Options", "nosniff".into()),
            ],
            body: Vec::new(),
        }
    }

    /// `302 Found`. An OTP in `location` must go nowhere else: no-store, no referrer.
    pub fn redirect(location: String) -> Reply {
        let mut r = Reply::base(302);
        r.headers.push(("Location", location));
        r
    }

    pub fn html(status: u16, html: String) -> Reply {
        let mut r = Reply::base(status);
        r.headers
            .push(("Content-Type", "text/html; charset=utf-8".into()));
        r.headers.push(("Content-Security-Policy", CSP.into()));
        r.body = html.into_bytes();
        r
    }

    pub fn json(status: u16, value: serde_json::Value) -> Reply {
        let mut r = Reply::base(status);
        r.headers.push(("Content-Type", "application/json".into()));
        r.body = value.to_string().into_bytes();
        r
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A page for people, or `{"error", "message", "action"?}` for API clients.
    pub(crate) fn message(status: u16, format: Format, code: &str, page: MessagePage<'_>) -> Reply {
        match format {
            Format::Json => {
                let mut body = json!({ "error": code, "message": page.paragraphs.join(" ") });
                if let Some((_, href)) = &page.action {
                    body["action"] = json!(href);
                }
                Reply::json(status, body)
            }
            Format::Html => Reply::html(status, page.render()),
        }
    }

    pub fn not_found(format: Format) -> Reply {
        Reply::message(
            404,
            format,
            "not_found",
            page(
                "Not found",
                "There is no such Patients Know Best page here.",
                None,
            ),
        )
    }

    pub fn method_not_allowed(format: Format, allow: &'static str) -> Reply {
        Reply::message(
            405,
            format,
            "method_not_allowed",
            page(
                "Method not allowed",
                &format!("This address only answers {allow}."),
                None,
            ),
        )
        .with_header("Allow", allow)
    }

    fn no_identity(format: Format) -> Reply {
        Reply::message(
            401,
            format,
            "no_identity",
            page(
                "Sign-in required",
                "We could not tell who you are. Sign in to the hospital system again, then retry.",
                None,
            ),
        )
    }

    fn bad_request(format: Format, why: &str) -> Reply {
        Reply::message(
            400,
            format,
            "bad_request",
            MessagePage {
                title: "This link is not valid",
                paragraphs: vec![
                    "The link that brought you here is not valid:".into(),
                    why.to_string(),
                ],
                action: None,
                form: None,
                footnote: Some("Tell the team that runs the system you came from.".into()),
            },
        )
    }

    fn pkb_unavailable(format: Format, retry: &str) -> Reply {
        Reply::message(
            503,
            format,
            "pkb_unavailable",
            page(
                "Patients Know Best is not responding",
                "Patients Know Best did not answer in time. Please try again in a moment.",
                Some(("Try again", retry.to_string())),
            ),
        )
        .with_header("Retry-After", "5")
    }

    fn pkb_refused(format: Format) -> Reply {
        Reply::message(
            502,
            format,
            "pkb_refused",
            page(
                "Patients Know Best refused the request",
                "Patients Know Best refused this service's request. This needs the team that runs it; please tell them.",
                None,
            ),
        )
    }

    fn store_error(format: Format, e: &StoreError, retry: &str) -> Reply {
        match e {
            StoreError::Unavailable(_) => Reply::message(
                503,
                format,
                "store_unavailable",
                page(
                    "Temporarily unavailable",
                    "This service cannot read its records right now. Please try again in a moment.",
                    Some(("Try again", retry.to_string())),
                ),
            )
            .with_header("Retry-After", "5"),
            StoreError::Sealing(_) | StoreError::Keys(_) | StoreError::Config(_) => Reply::message(
                500,
                format,
                "store_error",
                page(
                    "Your PKB link cannot be read",
                    "The stored link to your PKB account cannot be read. It has been kept for the team that runs this service to look at; please tell them.",
                    None,
                ),
            ),
        }
    }

    /// After a successful pairing with nowhere to return to.
    pub fn linked(format: Format, prefix: &str) -> Reply {
        match format {
            Format::Json => Reply::json(200, json!({ "paired": true })),
            Format::Html => Reply::html(
                200,
                MessagePage {
                    title: "Your PKB account is linked",
                    paragraphs: vec!["You can now open Patients Know Best from this system without signing in again.".into()],
                    action: Some(("Back to the system", "/".into())),
                    form: Some(("Unlink my PKB account", format!("{prefix}/unpair"))),
                    footnote: None,
                }
                .render(),
            ),
        }
    }

    pub fn unlinked(format: Format, prefix: &str, was_paired: bool) -> Reply {
        let text = if was_paired {
            "Your PKB account is no longer linked to this system. PKB will ask you to sign in next time."
        } else {
            "There was no linked PKB account to remove."
        };
        match format {
            Format::Json => Reply::json(200, json!({ "paired": false })),
            Format::Html => Reply::html(
                200,
                page(
                    "PKB account unlinked",
                    text,
                    Some(("Link your PKB account", format!("{prefix}/pair"))),
                )
                .render(),
            ),
        }
    }

    pub fn status(paired: bool) -> Reply {
        Reply::json(200, json!({ "paired": paired }))
    }

    pub fn cross_site(format: Format) -> Reply {
        Reply::message(
            403,
            format,
            "cross_site",
            page(
                "Request refused",
                "This request did not come from this site's own pages, so it was refused.",
                None,
            ),
        )
    }
}

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
        PairingError::Store(e) => Reply::store_error(format, e, retry),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn accept_header() {
        assert_eq!(Format::from_accept(Some("application/json")), Format::Json);
        assert_eq!(
            Format::from_accept(Some(
                "text/html,application/xhtml+xml,application/json;q=0.9"
            )),
            Format::Html
        );
        assert_eq!(Format::from_accept(None), Format::Html);
    }
}
