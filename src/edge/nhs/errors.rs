//! The page (or JSON) for every way NHS login can fail. Each offers only links the person
//! chooses; nothing retries by itself.

use super::routes::NhsWeb;
use crate::edge::reply::{Format, Reply};
use crate::nhs_login::NhsLoginError;
use crate::pages::MessagePage;

impl NhsWeb {
    /// The page for every way NHS login can fail. Each offers only links the person chooses.
    pub fn error_page(&self, e: &NhsLoginError, format: Format, return_to: &str) -> Reply {
        let retry = self.login_href(return_to);
        let msg = |status: u16, code: &str, title: &str, text: String, action, footnote| {
            Reply::message(
                status,
                format,
                code,
                MessagePage {
                    title,
                    paragraphs: vec![text],
                    action,
                    form: None,
                    footnote,
                },
            )
        };
        let home = || Some(("Go to the home page", "/".to_string()));
        let try_again = || Some(("Try again", retry.clone()));
        match e {
            NhsLoginError::StateUnknown => msg(
                400,
                "state_unknown",
                "This sign-in has expired",
                "The sign-in link was already used, has expired, or was opened in another browser.".into(),
                Some(("Sign in again", retry.clone())),
                None,
            ),
            NhsLoginError::OtherBrowser => msg(
                400,
                "other_browser",
                "Sign in from this browser",
                "This sign-in was started in another browser, or this browser is blocking cookies. This service needs cookies to keep you signed in.".into(),
                Some(("Sign in again", retry.clone())),
                None,
            ),
            NhsLoginError::Denied(description) => {
                let text = if description.contains("ConsentNotGiven") {
                    "You chose not to share your NHS login information with this service, so you have not been signed in."
                } else {
                    "NHS login did not let you sign in to this service."
                };
                msg(
                    403,
                    "access_denied",
                    "You have not been signed in",
                    text.into(),
                    home(),
                    Some("You can try again at any time; NHS login will ask you again.".into()),
                )
            }
            NhsLoginError::Provider { code, .. }
                if code == "server_error" || code == "temporarily_unavailable" =>
            {
                msg(
                    503,
                    "nhs_login_unavailable",
                    "NHS login is not available",
                    "NHS login is not working at the moment. Please try again in a few minutes.".into(),
                    try_again(),
                    None,
                )
                .with_header("Retry-After", "30")
            }
            NhsLoginError::Provider { code, .. }
                if code == "login_required" || code == "interaction_required" =>
            {
                msg(
                    401,
                    "login_required",
                    "Sign in with NHS login",
                    "NHS login needs you to sign in.".into(),
                    Some(("Sign in with NHS login", retry.clone())),
                    None,
                )
            }
            NhsLoginError::Provider { code, .. } | NhsLoginError::NeedsInteraction(code) => msg(
                502,
                "nhs_login_error",
                "Sign-in could not be completed",
                "NHS login did not accept this service's sign-in request. The team that runs this service needs to know; please tell them.".into(),
                home(),
                Some(format!("NHS login's error code: {code}")),
            ),
            NhsLoginError::Unavailable(_) => msg(
                503,
                "nhs_login_unavailable",
                "NHS login is not responding",
                "NHS login did not answer in time. Please try again in a moment.".into(),
                try_again(),
                None,
            )
            .with_header("Retry-After", "5"),
            NhsLoginError::Refused(_) | NhsLoginError::IdToken(_) | NhsLoginError::Userinfo(_) => {
                msg(
                    502,
                    e.outcome(),
                    "Sign-in could not be completed",
                    "Your NHS login could not be confirmed, so you have not been signed in. Please try again; if it keeps happening, tell the team that runs this service.".into(),
                    try_again(),
                    Some(format!("Reason: {e}")),
                )
            }
            NhsLoginError::BadRequest(why) => msg(
                400,
                "bad_request",
                "This link is not valid",
                format!("The link that brought you here is not valid: {why}"),
                home(),
                None,
            ),
            NhsLoginError::Store(_) => msg(
                503,
                "store_unavailable",
                "Temporarily unavailable",
                "This service cannot read its records right now. Please try again in a moment.".into(),
                try_again(),
                None,
            )
            .with_header("Retry-After", "5"),
        }
    }
}
