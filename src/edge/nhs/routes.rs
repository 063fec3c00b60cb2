//! NHS login's routes and the sign-in gate in front of the upstream, as replies. The layer calls
//! these and records what they report (metrics, audit); the decisions are the use case's.
//!
//! Loops are ruled out by construction: the only automatic retry is one interactive sign-in after
//! a silent one (`prompt=none`) was refused, and an interactive sign-in never becomes silent.

use std::sync::Arc;

use http::HeaderMap;
use serde_json::json;

use crate::core::cookies::{clear_cookie, cookie_value, login_cookie_name, set_cookie};
use crate::core::relative_path::{self, RelativePath};
use crate::edge::reply::{nhs_login_error, page, Format, Reply};
use crate::nhs_login::gp::GpStatus;
use crate::nhs_login::{NhsLogin, NhsLoginError, Session, Step, PURPOSE_GP_REFRESH};
use crate::pages::MessagePage;

/// The query parameter PKB and the NHS App carry a signed-in user's identity in.
pub const ASSERTED_PARAM: &str = "assertedLoginIdentity";

/// Headers pkb-edge sets towards the upstream in `nhs_login` mode (besides the identity header).
pub const NHS_NUMBER_HEADER: &str = "x-nhs-number";
pub const PROOFING_LEVEL_HEADER: &str = "x-identity-proofing-level";

/// Headers carrying GP credentials to the upstream (on the configured paths only), and the
/// upstream's signal that they failed. None of them ever comes from, or goes to, the browser.
pub const GP_HEADERS: [&str; 4] = [
    "x-gp-user-id",
    "x-gp-linkage-key",
    "x-gp-ods-code",
    "x-gp-credentials-status",
];
pub const GP_INVALID_HEADER: &str = "x-gp-credentials-invalid";

pub struct NhsWeb {
    pub nhs: Arc<NhsLogin>,
    pub prefix: String,
    pub pkb_base: url::Url,
    pub public_origin: String,
}

fn step(name: &'static str, outcome: &'static str, user: Option<&Session>) -> Step {
    Step {
        name,
        outcome,
        user: user.map(|s| s.sub.clone()),
        refused: false,
        reason: None,
        gp: None,
        gp_refresh: None,
    }
}

fn refused(name: &'static str, e: &NhsLoginError, user: Option<&Session>) -> Step {
    Step {
        name,
        outcome: e.outcome(),
        user: user.map(|s| s.sub.clone()),
        refused: true,
        reason: Some(e.to_string()),
        gp: None,
        gp_refresh: None,
    }
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `path?query` without the asserted identity (and the `prompt` that may come with it).
fn without_assertion(path: &str, query: Option<&str>) -> String {
    let kept: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k != ASSERTED_PARAM && k != "prompt")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        return path.to_string();
    }
    let q: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(kept)
        .finish();
    format!("{path}?{q}")
}

/// A request target, as it goes on the wire, without the asserted identity (and the `prompt`
/// that comes with it) when its query carries one; names read as the gate reads them for a GET
/// (percent-decoded, this exact case). Every other parameter is kept byte for byte, in order.
/// `None`: nothing to take out, the target goes on untouched.
pub fn target_without_assertion(target: &[u8]) -> Option<Vec<u8>> {
    let q = target.iter().position(|&b| b == b'?')?;
    let (path, query) = (&target[..q], &target[q + 1..]);
    let name = |pair: &[u8]| {
        let raw = pair.split(|&b| b == b'=').next().unwrap_or_default();
        form_urlencoded::parse(raw)
            .next()
            .map(|(k, _)| k.into_owned())
    };
    let pairs: Vec<&[u8]> = query.split(|&b| b == b'&').collect();
    if !pairs
        .iter()
        .any(|p| name(p).as_deref() == Some(ASSERTED_PARAM))
    {
        return None;
    }
    let kept: Vec<&[u8]> = pairs
        .into_iter()
        .filter(|p| !p.is_empty() && !matches!(name(p).as_deref(), Some(ASSERTED_PARAM | "prompt")))
        .collect();
    let mut out = path.to_vec();
    if !kept.is_empty() {
        out.push(b'?');
        out.extend(kept.join(&b'&'));
    }
    Some(out)
}

impl NhsWeb {
    fn cookie_name(&self) -> &str {
        &self.nhs.settings().cookie_name
    }

    /// The login cookie: the sign-in in progress, sealed (state, nonce, where to go), for
    /// `login_ttl_secs`. One per browser: a newer sign-in replaces an older one's, whose
    /// callback is then refused with a page that offers to sign in again.
    pub fn login_cookie_name(&self) -> String {
        login_cookie_name(self.cookie_name())
    }

    /// `Set-Cookie` for a sign-in just started (`Started::pending`).
    fn pending_cookie(&self, pending: &str) -> String {
        set_cookie(
            &self.login_cookie_name(),
            pending,
            Some(self.nhs.settings().login_ttl_secs),
        )
    }

    pub fn login_href(&self, return_to: &str) -> String {
        let encoded: String = form_urlencoded::byte_serialize(return_to.as_bytes()).collect();
        format!("{}/nhs/login?return_to={encoded}", self.prefix)
    }

    /// Off to NHS login; on failure, the page that says why.
    async fn sign_in(
        &self,
        return_to: &RelativePath,
        asserted: Option<&str>,
        format: Format,
    ) -> (Reply, Step) {
        let name = if asserted.is_some() {
            "login_silent"
        } else {
            "login"
        };
        match self.nhs.start(return_to, asserted).await {
            Ok(started) => {
                let reply = Reply::redirect(started.authorize_url)
                    .with_header("Set-Cookie", self.pending_cookie(&started.pending));
                (reply, step(name, "started", None))
            }
            Err(e) => (
                self.error_page(&e, format, return_to.as_str()),
                refused(name, &e, None),
            ),
        }
    }

    /// The gate in front of the upstream. `None`: let the request through (signed in).
    pub async fn gate(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        format: Format,
        signed_in: bool,
        store_unavailable: bool,
    ) -> Option<(Reply, Step)> {
        let (path, query) = (uri.path(), uri.query());
        let readable = *method == http::Method::GET || *method == http::Method::HEAD;
        if readable {
            if let Some(asserted) = query_param(query, ASSERTED_PARAM) {
                // From PKB or the NHS App: sign in as the asserted user, even over a session
                // (the person at the browser may have changed).
                let return_to = relative_path::parse(&without_assertion(path, query))
                    .unwrap_or_else(|_| root());
                return Some(self.sign_in(&return_to, Some(&asserted), format).await);
            }
        }
        if store_unavailable {
            let e = NhsLoginError::Store(crate::store::StoreError::Unavailable(
                "session store".into(),
            ));
            return Some((
                self.error_page(&e, format, path),
                refused("session", &e, None),
            ));
        }
        if signed_in {
            return None;
        }
        let here = match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        let return_to = relative_path::parse(&here).unwrap_or_else(|_| root());
        if readable && format == Format::Html {
            return Some(self.sign_in(&return_to, None, format).await);
        }
        let reply = Reply::message(
            401,
            format,
            "unauthenticated",
            page(
                "Sign in with NHS login",
                "You need to sign in with NHS login to use this service.",
                Some((
                    "Sign in with NHS login",
                    self.login_href(return_to.as_str()),
                )),
            ),
        );
        Some((reply, step("session", "unauthenticated", None)))
    }

    /// `GET {prefix}/nhs/login?return_to=REL[&assertedLoginIdentity=…]`
    pub async fn login(&self, query: Option<&str>, format: Format) -> (Reply, Step) {
        let return_to = match query_param(query, "return_to") {
            None => root(),
            Some(r) => match relative_path::parse(&r) {
                Ok(p) => p,
                Err(why) => {
                    let e = NhsLoginError::BadRequest(format!("`return_to` {why}"));
                    return (self.error_page(&e, format, "/"), refused("login", &e, None));
                }
            },
        };
        let asserted = query_param(query, ASSERTED_PARAM);
        self.sign_in(&return_to, asserted.as_deref(), format).await
    }

    /// `GET {prefix}/nhs/callback`. A new session replaces the browser's old one; the login
    /// cookie is cleared once this callback used it, whatever the outcome.
    pub async fn callback(
        &self,
        query: Option<&str>,
        headers: &HeaderMap,
        previous: Option<&Session>,
        format: Format,
    ) -> (Reply, Step) {
        let pending = cookie_value(headers, &self.login_cookie_name());
        let clear_pending = clear_cookie(&self.login_cookie_name());
        match self.nhs.callback(query, pending.as_deref(), previous).await {
            Ok(signed_in) => {
                if let Some(old) = cookie_value(headers, self.cookie_name()) {
                    if let Err(e) = self.nhs.sessions().end(&old).await {
                        tracing::warn!(error = %e, "the replaced session could not be ended; it expires by itself");
                    }
                }
                let name = if signed_in.silent {
                    "callback_silent"
                } else {
                    "callback"
                };
                let reply = Reply::redirect(signed_in.return_to.clone())
                    .with_header(
                        "Set-Cookie",
                        set_cookie(self.cookie_name(), &signed_in.session_id.0, None),
                    )
                    .with_header("Set-Cookie", clear_pending);
                let mut s = step(name, "signed_in", Some(&signed_in.session));
                s.gp = signed_in
                    .session
                    .gp_status
                    .map(|status| (status.as_str(), signed_in.gp_reason));
                if signed_in.purpose.as_deref() == Some(PURPOSE_GP_REFRESH) {
                    s.gp_refresh = Some("refreshed");
                }
                (reply, s)
            }
            Err(failure) => {
                let refreshing = failure.purpose.as_deref() == Some(PURPOSE_GP_REFRESH);
                let return_to = failure
                    .return_to
                    .as_deref()
                    .and_then(|r| relative_path::parse(r).ok())
                    .unwrap_or_else(root);
                let mut s = refused("callback", &failure.error, None);
                s.gp_refresh = refreshing.then_some("failed");
                if let NhsLoginError::NeedsInteraction(_) = failure.error {
                    // Silent sign-in was refused: once, interactively (its login cookie
                    // replaces this one).
                    let (mut reply, _) = self.sign_in(&return_to, None, format).await;
                    if reply.header("Set-Cookie").is_none() {
                        reply = reply.with_header("Set-Cookie", clear_pending);
                    }
                    s.name = "callback_silent";
                    return (reply, s);
                }
                let mut reply = self.error_page(&failure.error, format, return_to.as_str());
                if failure.spent {
                    reply = reply.with_header("Set-Cookie", clear_pending);
                }
                (reply, s)
            }
        }
    }

    /// `POST {prefix}/nhs/logout` (same-origin only).
    pub async fn logout(
        &self,
        headers: &HeaderMap,
        session: Option<&Session>,
        format: Format,
    ) -> (Reply, Step) {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if !crate::core::same_origin::same_origin(
            &self.public_origin,
            header("origin"),
            header("sec-fetch-site"),
        ) {
            let mut s = step("logout", "cross_site", session);
            s.refused = true;
            s.reason = Some("not sent by this site's own pages (Origin / Sec-Fetch-Site)".into());
            return (Reply::cross_site(format), s);
        }
        let ended = match cookie_value(headers, self.cookie_name()) {
            Some(id) => match self.nhs.sessions().end(&id).await {
                Ok(ended) => ended,
                Err(e) => {
                    let e = NhsLoginError::Store(e);
                    return (
                        self.error_page(&e, format, "/"),
                        refused("logout", &e, session),
                    );
                }
            },
            None => false,
        };
        let reply = match format {
            Format::Json => Reply::json(200, json!({ "signed_in": false })),
            Format::Html => Reply::html(
                200,
                page(
                    "You have signed out",
                    "You have signed out of this service. NHS login may still remember you; close your browser to end that too.",
                    Some(("Sign in again", self.login_href("/"))),
                )
                .render(),
            ),
        }
        .with_header("Set-Cookie", clear_cookie(self.cookie_name()));
        let outcome = if ended { "signed_out" } else { "no_session" };
        (reply, step("logout", outcome, session))
    }

    /// `GET {prefix}/nhs/launch-pkb?path=REL`: into PKB as the signed-in user.
    pub async fn launch_pkb(
        &self,
        path_and_query: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        session: Option<&Session>,
        format: Format,
    ) -> (Reply, Step) {
        // A plain GET link, so a cross-site page must not be able to send a signed-in user
        // into PKB: the browser says where the request came from.
        let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        if site.is_some_and(|s| s != "same-origin" && s != "none") {
            let mut s = step("launch_pkb", "cross_site", session);
            s.refused = true;
            s.reason = Some("not sent by this site's own pages (Sec-Fetch-Site)".into());
            return (Reply::cross_site(format), s);
        }
        let path = match query_param(query, "path") {
            None => root(),
            Some(p) => match relative_path::parse(&p).map_err(|why| why.to_string()).and_then(|p| {
                let own = |k: &str| k == ASSERTED_PARAM || k == "prompt";
                let clashes = form_urlencoded::parse(p.query().unwrap_or_default().as_bytes())
                    .any(|(k, _)| own(&k));
                if clashes {
                    Err("must not carry `assertedLoginIdentity` or `prompt`: pkb-edge sets them".to_string())
                } else {
                    Ok(p)
                }
            }) {
                Ok(p) => p,
                Err(why) => {
                    let e = NhsLoginError::BadRequest(format!("`path` {why}"));
                    return (
                        self.error_page(&e, format, "/"),
                        refused("launch_pkb", &e, session),
                    );
                }
            },
        };
        let Some(session) = session else {
            // Sign in first, then carry on into PKB.
            let here = relative_path::parse(path_and_query).unwrap_or_else(|_| root());
            return self.sign_in(&here, None, format).await;
        };
        match self.nhs.pkb_url(&self.pkb_base, &path, session) {
            Ok(url) => (
                Reply::redirect(url),
                step("launch_pkb", "redirect", Some(session)),
            ),
            Err(e) => (
                self.error_page(&e, format, "/"),
                refused("launch_pkb", &e, Some(session)),
            ),
        }
    }

    /// The upstream said the session's GP credentials failed (`X-GP-Credentials-Invalid: 1`).
    /// Within `max_refreshes` per window, a silent sign-in fetches fresh ones and brings the
    /// user back to `return_to`; past that, the user is told and the session's status becomes
    /// `unavailable`, so nothing loops.
    pub async fn gp_invalid(
        &self,
        session_id: &str,
        session: &Session,
        return_to: &str,
        format: Format,
    ) -> (Reply, Step) {
        let return_to = relative_path::parse(return_to).unwrap_or_else(|_| root());
        let give_up = match self.nhs.may_refresh_gp(&session.sub).await {
            Ok(true) => match self.nhs.start_refresh(&return_to, session).await {
                Ok(started) => {
                    let mut s = step("gp_refresh", "started", Some(session));
                    s.gp_refresh = Some("started");
                    let reply = Reply::redirect(started.authorize_url)
                        .with_header("Set-Cookie", self.pending_cookie(&started.pending));
                    return (reply, s);
                }
                Err(e) => e,
            },
            Ok(false) => NhsLoginError::Refused("too many refreshes".into()),
            Err(e) => e,
        };
        let mut unavailable = session.clone();
        unavailable.gp_status = Some(GpStatus::Unavailable);
        unavailable.gp = None;
        if let Err(e) = self.nhs.sessions().replace(session_id, &unavailable).await {
            tracing::warn!(error = %e, "could not mark GP credentials unavailable in the session");
        }
        let reply = Reply::message(
            502,
            format,
            "gp_credentials_unavailable",
            MessagePage {
                title: "We could not get your GP online services details",
                paragraphs: vec![
                    "This service could not get the details it needs to connect to your GP practice's online services, so that part of the service is not available right now.".into(),
                    "You can keep using the rest of the service. Try again later, or ask your GP practice for your online services registration details (an account ID, linkage key and practice ODS code).".into(),
                ],
                action: Some(("Go to the home page", "/".to_string())),
                form: None,
                footnote: None,
            },
        );
        let mut s = refused("gp_refresh", &give_up, Some(session));
        s.outcome = "gave_up";
        s.gp_refresh = Some("gave_up");
        (reply, s)
    }
}

impl NhsWeb {
    /// The page for every way NHS login can fail, with a way to sign in again to `return_to`.
    pub fn error_page(&self, e: &NhsLoginError, format: Format, return_to: &str) -> Reply {
        nhs_login_error(e, format, self.login_href(return_to))
    }
}

fn root() -> RelativePath {
    relative_path::parse("/").expect("`/` is a relative path")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_assertion_is_taken_off_the_upstream_target_and_nothing_else() {
        let cases: [(&str, Option<&str>); 9] = [
            ("/f?assertedLoginIdentity=a.b.c&keep=1", Some("/f?keep=1")),
            (
                "/f?keep=%20x+y&%61ssertedLoginIdentity=a&prompt=none",
                Some("/f?keep=%20x+y"),
            ),
            ("/f?assertedLoginIdentity", Some("/f")),
            (
                "/f?assertedLoginIdentity=a&&b=1&assertedLoginIdentity=c",
                Some("/f?b=1"),
            ),
            (
                "http://h/f?x=1&assertedLoginIdentity=a",
                Some("http://h/f?x=1"),
            ),
            ("/f?prompt=login&a=1", None),
            ("/f?assertedloginidentity=a&AssertedLoginIdentity=b", None),
            ("/f?assertedLoginIdentityX=a", None),
            ("/assertedLoginIdentity=a", None),
        ];
        for (target, expected) in cases {
            let got = target_without_assertion(target.as_bytes());
            let got = got.map(|g| String::from_utf8(g).unwrap());
            assert_eq!(got.as_deref(), expected, "{target}");
        }
        // Bytes that are not UTF-8 elsewhere in the query are kept as they are.
        assert_eq!(
            target_without_assertion(b"/f?a=\xff&assertedLoginIdentity=x").unwrap(),
            b"/f?a=\xff"
        );
    }

    #[test]
    fn the_assertion_is_taken_off_the_return_path() {
        assert_eq!(
            without_assertion("/records", Some("assertedLoginIdentity=a.b.c&tab=2")),
            "/records?tab=2"
        );
        assert_eq!(
            without_assertion("/", Some("assertedLoginIdentity=a.b.c")),
            "/"
        );
    }
}
