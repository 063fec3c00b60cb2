//! Responses pkb-edge writes itself, and the one place errors become an HTTP status plus a page
//! (or JSON, for clients that ask with `Accept: application/json`): `errors` for launch, pairing
//! and the store, `nhs_login` for NHS login.

use serde_json::json;

mod errors;
mod nhs_login;

pub use errors::{launch_error, pair_href, pairing_error};
pub use nhs_login::nhs_login_error;

use crate::pages::MessagePage;
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

    /// The upstream (the clinical system) could not be reached (refused, unreachable, its TLS
    /// failed: the log says which), or did not answer in time (504).
    pub fn upstream_failed(format: Format, status: u16) -> Reply {
        let (code, text) = match status {
            504 => (
                "upstream_timeout",
                "The clinical system did not answer in time. Please try again in a moment.",
            ),
            502 => (
                "upstream_unavailable",
                "The clinical system could not be reached just now. Please try again in a moment; if it keeps happening, tell the service desk.",
            ),
            _ => ("request_failed", "This request could not be completed."),
        };
        Reply::message(
            status,
            format,
            code,
            page("The page could not be loaded", text, None),
        )
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

    /// A request HTTP says is malformed (RFC 9110 §15.5.1), named for what is wrong with it.
    pub fn malformed(format: Format, why: &str) -> Reply {
        Reply::message(400, format, "bad_request", page("Bad request", why, None))
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

#[cfg(test)]
mod tests {
    use super::*;

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
