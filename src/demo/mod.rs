//! The pieces of `pkb-edge demo` besides the proxy and the simulator: a sample EHR (the upstream)
//! and a stand-in for the hospital's authentication layer (the "front").
//!
//! The front keeps `header` mode honest: it is the only trusted peer (it connects to the proxy from
//! 127.0.0.2, the only address in the demo's `trusted_peers`), it signs people in with a cookie,
//! and it sets the identity header after removing any copy the browser sent. A browser that goes
//! to the proxy directly arrives from 127.0.0.1 and is nobody.
//!
//! With `demo --identity jwt` the front plays Pomerium instead: it signs an ES256 assertion for
//! the signed-in user (`X-Pomerium-Jwt-Assertion`, reused until shortly before it expires, as
//! Pomerium reuses its own) and publishes its key at `/.well-known/pomerium/jwks.json`. The proxy
//! then trusts the signature, not the address.

use std::net::{IpAddr, SocketAddr};

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use axum::{Form, Router};
use serde::Deserialize;

pub mod tls;

use crate::pages::{document, html, Markup, PreEscaped};
use crate::sim::SimPatient;

/// Where the front connects from; the demo proxy trusts only this address.
pub const FRONT_SOURCE_IP: &str = "127.0.0.2";
const USER_COOKIE: &str = "demo_user";

const STYLE: &str = "body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f7f7f2;color:#1b1f23}\
header{background:#3c4f3a;color:#fff;padding:.8rem 1.5rem;display:flex;justify-content:space-between}\
main{max-width:48rem;margin:2rem auto;padding:0 1rem}table{border-collapse:collapse;width:100%;background:#fff}\
th,td{text-align:left;padding:.5rem;border-bottom:1px solid #ddd}a.pkb{background:#005eb8;color:#fff;\
padding:.3rem .7rem;border-radius:4px;text-decoration:none}form{display:inline}button{cursor:pointer}";

fn page(title: &str, user: &str, body: Markup) -> Html<String> {
    let banner = html! {
        span { "St Example Hospital · EHR" }
        span id="signed-in" { (user) }
    };
    Html(document(
        title,
        STYLE,
        Some(banner),
        html! { h1 { (title) } (body) },
    ))
}

/// The sample EHR: a patient list whose links open PKB in patient context.
pub fn sample_ehr(patients: Vec<SimPatient>) -> Router {
    Router::new()
        .route("/", get(ehr_home))
        .route("/patients/{nhs}", get(ehr_patient))
        .with_state(std::sync::Arc::new(patients))
}

type Patients = State<std::sync::Arc<Vec<SimPatient>>>;

fn signed_in_user(headers: &HeaderMap) -> String {
    headers
        .get("x-authenticated-user")
        .and_then(|v| v.to_str().ok())
        .map(|u| format!("Signed in as {u}"))
        .unwrap_or_else(|| "Not signed in".into())
}

fn launch_href(nhs: &str) -> String {
    format!("/_pkb/launch?contextNationalId={nhs}&contextNationalIdType=NHS")
}

async fn ehr_home(State(patients): Patients, headers: HeaderMap) -> Html<String> {
    page(
        "Patients",
        &signed_in_user(&headers),
        html! {
            table {
                thead { tr { th { "Name" } th { "NHS number" } th { "Patients Know Best" } } }
                tbody {
                    @for p in patients.iter() {
                        tr {
                            td { a href={ "/patients/" (p.nhs_number) } { (p.name) } }
                            td { (p.nhs_number) }
                            td {
                                a class="pkb" id={ "open-" (p.nhs_number) } href=(launch_href(&p.nhs_number)) {
                                    "Open in PKB"
                                }
                            }
                        }
                    }
                }
            }
            p {
                a href="/_pkb/launch" { "Open my PKB inbox" }
                " · "
                a href="/_pkb/status" { "PKB link status (JSON)" }
            }
            form method="post" action="/_pkb/unpair" { button id="unlink" { "Unlink my PKB account" } }
            " "
            form method="post" action="/_front/signout" { button { "Sign out" } }
        },
    )
}

async fn ehr_patient(
    State(patients): Patients,
    Path(nhs): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(p) = patients.iter().find(|p| p.nhs_number == nhs) else {
        return (
            StatusCode::NOT_FOUND,
            page(
                "No such patient",
                &signed_in_user(&headers),
                html! { p { a href="/" { "Back" } } },
            ),
        )
            .into_response();
    };
    // Asks for the page's own headers to show the decoration pkb-edge added.
    const SHOW_DECORATION: &str = "fetch(location.href,{method:'HEAD'}).then(r=>{document.getElementById('pkb-data').textContent=\
        r.headers.get('X-PKB-Data-Available')||'(not decorated)'})";
    page(
        &p.name,
        &signed_in_user(&headers),
        html! {
            p { "NHS number " (p.nhs_number) }
            p { "Data in PKB from other organisations: " strong id="pkb-data" { "…" } }
            p { a class="pkb" href=(launch_href(&p.nhs_number)) { "Open " (p.name) " in PKB" } }
            p { a href="/" { "All patients" } }
            script { (PreEscaped(SHOW_DECORATION)) }
        },
    )
    .into_response()
}

/// The sample patient portal for `demo --portal`: pkb-edge signs patients in with NHS login and
/// tells it who they are; it links into PKB through pkb-edge.
pub fn sample_portal() -> Router {
    Router::new()
        .route("/", get(portal_home))
        .route("/appointments", get(portal_home))
}

async fn portal_home(headers: HeaderMap, uri: axum::http::Uri) -> Html<String> {
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(none)")
            .to_string()
    };
    let user = h("x-authenticated-user");
    let banner = html! {
        span { "St Example Hospital · Patient portal" }
        span id="signed-in" { "Signed in with NHS login" }
    };
    let main = html! {
        h1 { "Welcome" }
        dl {
            dt { "NHS login user (sub)" } dd id="portal-user" { (user) }
            dt { "NHS number" } dd id="portal-nhs-number" { (h("x-nhs-number")) }
            dt { "Identity proofing level" } dd { (h("x-identity-proofing-level")) }
            dt { "This page" } dd id="portal-path" { (uri.path()) }
        }
        p {
            a class="pkb" id="open-pkb" href="/_pkb/nhs/launch-pkb?path=%2Fpatient%2Frecord" {
                "Open my record in Patients Know Best"
            }
        }
        form method="post" action="/_pkb/nhs/logout" { button id="sign-out" { "Sign out" } }
    };
    Html(document("Patient portal", STYLE, Some(banner), main))
}

/// The front: signs people in (a cookie) and forwards everything else to the proxy, with the
/// user in `identity_header`, or (with a `signer`) a signed assertion naming them.
pub fn front(
    proxy: SocketAddr,
    identity_header: String,
    signer: Option<AssertionSigner>,
    tls: Option<&tls::DemoCerts>,
) -> Result<Router, reqwest::Error> {
    let mut client = reqwest::Client::builder()
        .local_address(FRONT_SOURCE_IP.parse::<IpAddr>().ok())
        .redirect(reqwest::redirect::Policy::none());
    if let Some(certs) = tls {
        // pkb-edge over HTTPS, trusted by the demo CA, with the front's client certificate;
        // HTTP/1.1, as gateways speak to what they front (the browser's Host goes on as is, which
        // HTTP/2 would refuse as differing from the connection's authority).
        client = client
            .use_rustls_tls()
            .http1_only()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(certs.ca_pem.as_bytes())?)
            .identity(reqwest::Identity::from_pem(
                certs.front_identity_pem.as_bytes(),
            )?);
    }
    let state = std::sync::Arc::new(FrontState {
        client: client.build()?,
        proxy: match tls {
            Some(_) => format!("https://{proxy}"),
            None => format!("http://{proxy}"),
        },
        identity_header,
        signer,
    });
    Ok(Router::new()
        .route("/_front/signin", get(signin_page).post(signin))
        .route("/_front/signout", post(signout))
        .route(POMERIUM_JWKS_PATH, get(jwks))
        .fallback(any(forward))
        .with_state(state))
}

struct FrontState {
    client: reqwest::Client,
    /// pkb-edge's origin (https with `--tls`).
    proxy: String,
    identity_header: String,
    signer: Option<AssertionSigner>,
}

/// Where Pomerium publishes the keys its assertions are signed with.
pub const POMERIUM_JWKS_PATH: &str = "/.well-known/pomerium/jwks.json";
/// The header Pomerium puts its assertion in.
pub const POMERIUM_HEADER: &str = "X-Pomerium-Jwt-Assertion";
const ASSERTION_SECS: i64 = 300;

/// Signs assertions the way Pomerium does: ES256, its key's `kid` in the header, `iss` and `aud`
/// the route's host, the user's `email` and `sub`, five minutes of life.
pub struct AssertionSigner {
    key: crate::core::ec_keys::EcSigningKey,
    kid: String,
    issuer: String,
    audience: String,
    /// Each user's current assertion and its `exp`, reused until a minute before it.
    issued: parking_lot::Mutex<std::collections::HashMap<String, (String, i64)>>,
}

impl AssertionSigner {
    pub fn new(issuer: &str, audience: &str) -> Result<AssertionSigner, String> {
        Ok(AssertionSigner {
            key: crate::core::ec_keys::EcSigningKey::generate()?,
            kid: format!("demo-{:08x}", rand::random::<u32>()),
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            issued: Default::default(),
        })
    }

    fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [self.key.public_jwk(&self.kid)] })
    }

    fn assertion(&self, user: &str) -> Option<String> {
        use crate::core::clock::{Clock, SystemClock};
        let now = SystemClock.now();
        let mut issued = self.issued.lock();
        if let Some((token, exp)) = issued.get(user) {
            if exp - now > 60 {
                return Some(token.clone());
            }
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let claims = serde_json::json!({
            "iss": self.issuer, "aud": self.audience, "iat": now, "nbf": now,
            "exp": now + ASSERTION_SECS, "sub": user, "email": user,
            "jti": crate::core::random::random_token(),
        });
        let token = jsonwebtoken::encode(&header, &claims, self.key.encoding_key()).ok()?;
        issued.insert(user.to_string(), (token.clone(), now + ASSERTION_SECS));
        Some(token)
    }
}

async fn jwks(State(front): Front) -> Response {
    match &front.signer {
        Some(signer) => axum::Json(signer.jwks()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

type Front = State<std::sync::Arc<FrontState>>;

#[derive(Deserialize)]
struct Next {
    next: Option<String>,
}

#[derive(Deserialize)]
struct SignIn {
    user: String,
    next: Option<String>,
}

/// Only local paths, as the validator for `return_to` decides.
fn local_next(next: Option<&str>) -> String {
    next.and_then(|n| crate::core::relative_path::parse(n).ok())
        .map(|p| p.to_string())
        .unwrap_or_else(|| "/".into())
}

async fn signin_page(Query(q): Query<Next>) -> Html<String> {
    page(
        "Sign in",
        "Not signed in",
        html! {
            p { "This stands in for the hospital's single sign-on." }
            form method="post" action="/_front/signin" {
                input type="hidden" name="next" value=(local_next(q.next.as_deref()));
                label for="user" { "User name" }
                " "
                input id="user" name="user" value="dr.jones" required;
                " "
                button id="signin" type="submit" { "Sign in" }
            }
        },
    )
}

fn cookie_user(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == USER_COOKIE)
        .map(|c| c.value().to_string())
        .filter(|u| valid_user(u))
}

/// The front's sign-in cookie. Plain HTTP on loopback, so not `Secure`.
fn user_cookie(value: &str, max_age_secs: Option<i64>) -> String {
    crate::core::cookies::set_cookie_over(false, USER_COOKIE, value, max_age_secs)
}

fn valid_user(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 64
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
}

async fn signin(Form(f): Form<SignIn>) -> Response {
    if !valid_user(&f.user) {
        return (
            StatusCode::BAD_REQUEST,
            page(
                "Sign in",
                "Not signed in",
                html! { p { "Letters, digits and . _ @ - only." } },
            ),
        )
            .into_response();
    }
    let mut r = Redirect::to(&local_next(f.next.as_deref())).into_response();
    if let Ok(v) = HeaderValue::from_str(&user_cookie(&f.user, None)) {
        r.headers_mut().insert("set-cookie", v);
    }
    r
}

async fn signout() -> Response {
    let mut r = Redirect::to("/_front/signin").into_response();
    if let Ok(v) = HeaderValue::from_str(&user_cookie("", Some(0))) {
        r.headers_mut().insert("set-cookie", v);
    }
    r
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "host",
    "content-length",
];

async fn forward(State(front): Front, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Some(user) = cookie_user(&parts.headers) else {
        let next: String =
            form_urlencoded::byte_serialize(parts.uri.to_string().as_bytes()).collect();
        return Redirect::to(&format!("/_front/signin?next={next}")).into_response();
    };
    let Ok(body) = axum::body::to_bytes(body, 16 * 1024 * 1024).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response();
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = front
        .client
        .request(parts.method.clone(), format!("{}{path}", front.proxy));
    for (name, value) in parts.headers.iter() {
        let n = name.as_str();
        if !HOP_BY_HOP.contains(&n) && !n.eq_ignore_ascii_case(&front.identity_header) {
            request = request.header(name, value);
        }
    }
    if let Some(host) = parts.headers.get("host") {
        request = request.header("host", host);
    }
    let identity = match &front.signer {
        Some(signer) => signer.assertion(&user).unwrap_or_default(),
        None => user,
    };
    request = request
        .header(front.identity_header.as_str(), identity)
        .body(body);
    match request.send().await {
        Ok(upstream) => {
            let status = upstream.status();
            let mut headers = HeaderMap::new();
            for (name, value) in upstream.headers() {
                if !HOP_BY_HOP.contains(&name.as_str()) {
                    headers.append(name, value.clone());
                }
            }
            let bytes = upstream.bytes().await.unwrap_or_default();
            let mut response = Response::new(Body::from(bytes));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            response
        }
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            format!("the proxy did not answer: {e}"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_and_next() {
        let mut h = HeaderMap::new();
        h.insert("cookie", "a=b; demo_user=dr.jones; c=d".parse().unwrap());
        assert_eq!(cookie_user(&h).as_deref(), Some("dr.jones"));
        h.insert("cookie", "demo_user=<script>".parse().unwrap());
        assert_eq!(cookie_user(&h), None);
        assert_eq!(local_next(Some("//evil.example")), "/");
        assert_eq!(local_next(Some("/_pkb/launch?x=1")), "/_pkb/launch?x=1");
    }
}
