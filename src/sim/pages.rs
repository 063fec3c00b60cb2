//! The simulator's pages: PKB's consent screen and the "you are in PKB" landing, stand-ins that a
//! person can click through in the demo and a browser test can read.

use std::collections::HashMap;

use super::{LoginView, NhsLoginView, SimPatient};
use crate::pages::{document, html, Markup};

const STYLE: &str = "body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#eef3f7;color:#1b1f23}\
header{background:#2d6e8e;color:#fff;padding:.8rem 1.5rem;font-weight:700}\
main{max-width:38rem;margin:2rem auto;padding:2rem;background:#fff;border-radius:8px}\
button{padding:.6rem 1.2rem;border-radius:4px;border:0;font-weight:600;margin-right:.5rem;cursor:pointer}\
.allow{background:#2d6e8e;color:#fff}.deny{background:#ddd}dt{font-weight:600}label{display:block;margin:.5rem 0}dd{overflow-wrap:anywhere}";

fn page(title: &str, body: Markup) -> String {
    let banner = html! { "Patients Know Best (simulator)" };
    document(title, STYLE, Some(banner), html! { h1 { (title) } (body) })
}

pub fn home() -> String {
    page(
        "PKB simulator",
        html! { p { "This is a local simulator of Patients Know Best, for pkb-edge's demo and tests." } },
    )
}

/// A PKB page reached with NHS login (`assertedLoginIdentity`), with a way back to the service.
pub fn nhs_logged_in(view: &NhsLoginView, back: Option<&str>) -> String {
    page(
        "Signed in to PKB with NHS login",
        html! {
            dl {
                dt { "NHS login user" } dd id="nhs-name" { (view.name) }
                dt { "NHS number" } dd id="nhs-number" { (view.nhs_number) }
                dt { "PKB page" } dd id="pkb-path" { (view.path) }
            }
            @if let Some(href) = back {
                p {
                    a id="back-to-portal" href=(href) { "Open the patient portal" }
                    " (signed in with NHS login, no password)"
                }
            }
        },
    )
}

pub fn authorize_error(problem: &str) -> String {
    page("Authorization request refused", html! { p { (problem) } })
}

pub fn consent(action: &str, q: &HashMap<String, String>) -> String {
    let value = |key: &str| {
        q.get(key)
            .map(String::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let hidden = [
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "code_challenge",
        "code_challenge_method",
    ];
    page(
        "Allow access to your PKB account?",
        html! {
            p {
                strong { (value("client_id")) }
                " asks to open Patients Know Best for you without a second sign-in."
            }
            form method="post" action=(action) {
                @for key in hidden {
                    input type="hidden" name=(key) value=(value(key));
                }
                label for="pkb_user" { "Signed in to PKB as" }
                input id="pkb_user" name="pkb_user" value="dr.jones@pkb.example" required;
                p {
                    button class="allow" id="allow" name="decision" value="allow" { "Allow" }
                    button class="deny" id="deny" name="decision" value="deny" { "Deny" }
                }
            }
        },
    )
}

pub fn otp_refused() -> String {
    page(
        "Sign-in link not valid",
        html! {
            p id="otp-refused" {
                "This one-time sign-in link has expired or has already been used."
            }
        },
    )
}

pub fn logged_in(view: &LoginView, patient: Option<&SimPatient>) -> String {
    let mut keys: Vec<_> = view.context.keys().collect();
    keys.sort();
    page(
        "You are signed in to PKB",
        html! {
            dl {
                dt { "User" } dd id="user" { (view.user) }
                dt { "Landing page" } dd id="landing" { (view.landing.as_deref().unwrap_or("(PKB home)")) }
                @for k in keys {
                    dt { (k) } dd data-context=(k) { (view.context[k]) }
                }
            }
            @if let Some(p) = patient {
                p { "Patient record: " strong id="patient-name" { (p.name) } }
            }
        },
    )
}
