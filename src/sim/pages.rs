//! The simulator's pages: PKB's consent screen and the "you are in PKB" landing, stand-ins that a
//! person can click through in the demo and a browser test can read.

use std::collections::HashMap;

use super::{LoginView, NhsLoginView, SimPatient};
use crate::pages::escape;

const STYLE: &str = "body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#eef3f7;color:#1b1f23}\
header{background:#2d6e8e;color:#fff;padding:.8rem 1.5rem;font-weight:700}\
main{max-width:38rem;margin:2rem auto;padding:2rem;background:#fff;border-radius:8px}\
button{padding:.6rem 1.2rem;border-radius:4px;border:0;font-weight:600;margin-right:.5rem;cursor:pointer}\
.allow{background:#2d6e8e;color:#fff}.deny{background:#ddd}dt{font-weight:600}label{display:block;margin:.5rem 0}dd{overflow-wrap:anywhere}";

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>{STYLE}</style></head><body><header>Patients Know Best (simulator)</header>\
         <main><h1>{t}</h1>{body}</main></body></html>",
        t = escape(title)
    )
}

pub fn home() -> String {
    page(
        "PKB simulator",
        "<p>This is a local simulator of Patients Know Best, for pkb-edge's demo and tests.</p>",
    )
}

/// A PKB page reached with NHS login (`assertedLoginIdentity`), with a way back to the service.
pub fn nhs_logged_in(view: &NhsLoginView, back: Option<&str>) -> String {
    let back = back
        .map(|href| {
            format!(
                "<p><a id=\"back-to-portal\" href=\"{}\">Open the patient portal</a> (signed in with NHS login, no password)</p>",
                escape(href)
            )
        })
        .unwrap_or_default();
    page(
        "Signed in to PKB with NHS login",
        &format!(
            "<dl><dt>NHS login user</dt><dd id=\"nhs-name\">{}</dd><dt>NHS number</dt><dd id=\"nhs-number\">{}</dd>\
             <dt>PKB page</dt><dd id=\"pkb-path\">{}</dd></dl>{back}",
            escape(&view.name),
            escape(&view.nhs_number),
            escape(&view.path)
        ),
    )
}

pub fn authorize_error(problem: &str) -> String {
    page(
        "Authorization request refused",
        &format!("<p>{}</p>", escape(problem)),
    )
}

pub fn consent(action: &str, q: &HashMap<String, String>) -> String {
    let mut hidden = String::new();
    for key in [
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "code_challenge",
        "code_challenge_method",
    ] {
        let value = q.get(key).map(String::as_str).unwrap_or_default();
        hidden.push_str(&format!(
            "<input type=\"hidden\" name=\"{key}\" value=\"{}\">",
            escape(value)
        ));
    }
    let client = q.get("client_id").map(String::as_str).unwrap_or_default();
    page(
        "Allow access to your PKB account?",
        &format!(
            "<p><strong>{client}</strong> asks to open Patients Know Best for you without a second sign-in.</p>\
             <form method=\"post\" action=\"{action}\">{hidden}\
             <label for=\"pkb_user\">Signed in to PKB as</label>\
             <input id=\"pkb_user\" name=\"pkb_user\" value=\"dr.jones@pkb.example\" required>\
             <p><button class=\"allow\" id=\"allow\" name=\"decision\" value=\"allow\">Allow</button>\
             <button class=\"deny\" id=\"deny\" name=\"decision\" value=\"deny\">Deny</button></p></form>",
            client = escape(client),
            action = escape(action),
        ),
    )
}

pub fn otp_refused() -> String {
    page(
        "Sign-in link not valid",
        "<p id=\"otp-refused\">This one-time sign-in link has expired or has already been used.</p>",
    )
}

pub fn logged_in(view: &LoginView, patient: Option<&SimPatient>) -> String {
    let mut context = String::new();
    let mut keys: Vec<_> = view.context.keys().collect();
    keys.sort();
    for k in keys {
        context.push_str(&format!(
            "<dt>{}</dt><dd data-context=\"{k}\">{}</dd>",
            escape(k),
            escape(&view.context[k]),
            k = escape(k)
        ));
    }
    let patient = patient
        .map(|p| {
            format!(
                "<p>Patient record: <strong id=\"patient-name\">{}</strong></p>",
                escape(&p.name)
            )
        })
        .unwrap_or_default();
    page(
        "You are signed in to PKB",
        &format!(
            "<dl><dt>User</dt><dd id=\"user\">{}</dd><dt>Landing page</dt><dd id=\"landing\">{}</dd>{context}</dl>{patient}",
            escape(&view.user),
            escape(view.landing.as_deref().unwrap_or("(PKB home)")),
        ),
    )
}
