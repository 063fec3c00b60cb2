//! The page (or JSON) for every way NHS login can fail. Each offers only links the person
//! chooses; nothing retries by itself.

use super::{Format, Reply};
use crate::nhs_login::NhsLoginError;
use crate::pages::MessagePage;

/// The one link an error page offers.
#[derive(Clone, Copy)]
enum Link {
    /// "Sign in again" / "Sign in with NHS login" / "Try again": to sign-in, then back.
    SignIn(&'static str),
    Home,
}

/// What the page says, decided from the error alone.
struct Content {
    status: u16,
    code: &'static str,
    title: &'static str,
    text: String,
    link: Link,
    footnote: Option<String>,
    retry_after: Option<&'static str>,
}

fn content(
    status: u16,
    code: &'static str,
    title: &'static str,
    text: &str,
    link: Link,
) -> Content {
    Content {
        status,
        code,
        title,
        text: text.to_string(),
        link,
        footnote: None,
        retry_after: None,
    }
}

const NOT_SIGNED_IN: &str = "Your NHS login could not be confirmed, so you have not been signed in. Please try again; if it keeps happening, tell the team that runs this service.";

/// The provider's own error codes (`error` on the callback).
fn provider_error(code: &str) -> Content {
    match code {
        "server_error" | "temporarily_unavailable" => Content {
            retry_after: Some("30"),
            ..content(
                503,
                "nhs_login_unavailable",
                "NHS login is not available",
                "NHS login is not working at the moment. Please try again in a few minutes.",
                Link::SignIn("Try again"),
            )
        },
        "login_required" | "interaction_required" => content(
            401,
            "login_required",
            "Sign in with NHS login",
            "NHS login needs you to sign in.",
            Link::SignIn("Sign in with NHS login"),
        ),
        _ => not_accepted(code),
    }
}

/// NHS login did not accept the sign-in request: a problem for the service's team.
fn not_accepted(code: &str) -> Content {
    Content {
        footnote: Some(format!("NHS login's error code: {code}")),
        ..content(
            502,
            "nhs_login_error",
            "Sign-in could not be completed",
            "NHS login did not accept this service's sign-in request. The team that runs this service needs to know; please tell them.",
            Link::Home,
        )
    }
}

fn describe(e: &NhsLoginError) -> Content {
    match e {
        NhsLoginError::StateUnknown => content(
            400,
            "state_unknown",
            "This sign-in has expired",
            "The sign-in link was already used, has expired, or was opened in another browser.",
            Link::SignIn("Sign in again"),
        ),
        NhsLoginError::OtherBrowser => content(
            400,
            "other_browser",
            "Sign in from this browser",
            "This sign-in was started in another browser, or this browser is blocking cookies. This service needs cookies to keep you signed in.",
            Link::SignIn("Sign in again"),
        ),
        NhsLoginError::Denied(description) => Content {
            footnote: Some("You can try again at any time; NHS login will ask you again.".into()),
            ..content(
                403,
                "access_denied",
                "You have not been signed in",
                if description.contains("ConsentNotGiven") {
                    "You chose not to share your NHS login information with this service, so you have not been signed in."
                } else {
                    "NHS login did not let you sign in to this service."
                },
                Link::Home,
            )
        },
        NhsLoginError::Provider { code, .. } => provider_error(code),
        NhsLoginError::NeedsInteraction(code) => not_accepted(code),
        NhsLoginError::Unavailable(_) => Content {
            retry_after: Some("5"),
            ..content(
                503,
                "nhs_login_unavailable",
                "NHS login is not responding",
                "NHS login did not answer in time. Please try again in a moment.",
                Link::SignIn("Try again"),
            )
        },
        NhsLoginError::Refused(_) | NhsLoginError::IdToken(_) | NhsLoginError::Userinfo(_) => {
            Content {
                footnote: Some(format!("Reason: {e}")),
                ..content(
                    502,
                    e.outcome(),
                    "Sign-in could not be completed",
                    NOT_SIGNED_IN,
                    Link::SignIn("Try again"),
                )
            }
        }
        NhsLoginError::BadRequest(why) => Content {
            text: format!("The link that brought you here is not valid: {why}"),
            ..content(400, "bad_request", "This link is not valid", "", Link::Home)
        },
        NhsLoginError::Store(_) => Content {
            retry_after: Some("5"),
            ..content(
                503,
                "store_unavailable",
                "Temporarily unavailable",
                "This service cannot read its records right now. Please try again in a moment.",
                Link::SignIn("Try again"),
            )
        },
    }
}

/// The page for every way NHS login can fail. Each offers only links the person chooses;
/// `sign_in` signs in again and comes back.
pub fn nhs_login_error(e: &NhsLoginError, format: Format, sign_in: String) -> Reply {
    let c = describe(e);
    let action = match c.link {
        Link::SignIn(label) => (label, sign_in),
        Link::Home => ("Go to the home page", "/".to_string()),
    };
    let reply = Reply::message(
        c.status,
        format,
        c.code,
        MessagePage {
            title: c.title,
            paragraphs: vec![c.text],
            action: Some(action),
            form: None,
            footnote: c.footnote,
        },
    );
    match c.retry_after {
        Some(secs) => reply.with_header("Retry-After", secs),
        None => reply,
    }
}
