//! The Pingora glue: routes the reserved prefix to the use cases, passes everything else to the
//! upstream, and keeps identity headers honest on the way. Deliberately thin; the decisions live
//! in `identity`, `launch` and `reply`.

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::upstreams::peer::HttpPeer;
use tracing::Instrument;

use crate::config::Upstream;
use crate::core::patient::PatientContext;
use crate::core::same_origin::same_origin;
use crate::decorate::{merged_vary, private_cache_control, Decorator, Lookup};
use crate::edge::reply::{self, Format, Reply};
use crate::identity::{hop_by_hop, IdentityResolver};
use crate::launch::{LaunchError, LaunchService};
use crate::nhs_login::web::{self as nhs_web, NhsWeb, Step};
use crate::nhs_login::Session as NhsSession;
use crate::observe::audit::{Action, AuditLog, Event};
use crate::observe::metrics::metrics;
use crate::pairing::{PairingError, PairingService};

pub struct EdgeProxy {
    pub upstream: Upstream,
    pub prefix: String,
    pub identity: IdentityResolver,
    pub launch: Arc<LaunchService>,
    pub pairing: Arc<PairingService>,
    pub decorator: Arc<Decorator>,
    /// Request headers a decorated response depends on, merged into its `Vary`.
    pub vary_on: Vec<String>,
    /// `public_url`'s origin, for the same-origin check on state-changing POSTs.
    pub public_origin: String,
    /// Headers only pkb-edge may set towards the upstream: client copies are always removed.
    pub proxy_set_headers: Vec<HeaderName>,
    pub audit: Arc<AuditLog>,
    /// Set once the process is told to stop or hand over (SIGTERM, SIGQUIT): connections are
    /// no longer kept alive.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// `identity.mode = "nhs_login"`: pkb-edge signs users in itself.
    pub nhs: Option<NhsWeb>,
}

/// The request id header: taken from trusted peers, generated otherwise, passed upstream and
/// returned on pkb-edge's own answers.
pub const REQUEST_ID: &str = "x-request-id";

/// What the proxy learned about a request before deciding where it goes.
#[derive(Default)]
pub struct RequestCtx {
    peer_trusted: bool,
    request_id: String,
    user: Option<String>,
    /// The data-availability look-up running beside the upstream call.
    lookup: Option<Lookup>,
    /// `nhs_login` mode: the signed-in user's session, and its id (the cookie).
    session: Option<NhsSession>,
    session_id: Option<String>,
    /// The session store could not be read: routes that need the user answer 503 rather than
    /// treat a signed-in user as signed out.
    session_unavailable: bool,
    /// A response pkb-edge puts in place of the upstream's (headers already swapped in
    /// `response_filter`; the body goes out in `response_body_filter`).
    replacement_body: Option<Bytes>,
}

/// The reserved routes under the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Launch,
    Pair,
    Callback,
    Unpair,
    Status,
    DataAvailability,
    NhsLogin,
    NhsCallback,
    NhsLogout,
    NhsLaunchPkb,
    Unknown,
}

impl EdgeProxy {
    fn route(&self, path: &str) -> Option<Route> {
        let rest = path.strip_prefix(self.prefix.as_str())?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None; // `/_pkbfoo` is the upstream's
        }
        Some(match rest {
            "/launch" => Route::Launch,
            "/pair" => Route::Pair,
            "/callback" => Route::Callback,
            "/unpair" => Route::Unpair,
            "/status" => Route::Status,
            "/data-availability" => Route::DataAvailability,
            "/nhs/login" if self.nhs.is_some() => Route::NhsLogin,
            "/nhs/callback" if self.nhs.is_some() => Route::NhsCallback,
            "/nhs/logout" if self.nhs.is_some() => Route::NhsLogout,
            "/nhs/launch-pkb" if self.nhs.is_some() => Route::NhsLaunchPkb,
            _ => Route::Unknown,
        })
    }

    async fn serve(&self, route: Route, req: &RequestHeader, ctx: &RequestCtx) -> Reply {
        let header = |name: http::HeaderName| req.headers.get(name).and_then(|v| v.to_str().ok());
        let format = Format::from_accept(header(http::header::ACCEPT));
        let user = ctx.user.as_deref();
        let query = req.uri.query();
        let this_url = req.uri.path_and_query().map_or("", |p| p.as_str());
        let restart_pairing = format!("{}/pair", self.prefix);
        let (method, log_user) = (&req.method, user.unwrap_or(""));
        if let (true, Some(nhs)) = (ctx.session_unavailable, &self.nhs) {
            if !matches!(route, Route::Unknown | Route::NhsLogin | Route::NhsCallback) {
                let e = crate::nhs_login::NhsLoginError::Store(
                    crate::store::StoreError::Unavailable("session store".into()),
                );
                return nhs.error_page(&e, format, this_url);
            }
        }
        match route {
            Route::Unknown => Reply::not_found(format),
            Route::Unpair | Route::NhsLogout if method != Method::POST => {
                Reply::method_not_allowed(format, "POST")
            }
            Route::NhsLogin | Route::NhsCallback | Route::NhsLaunchPkb | Route::NhsLogout => {
                let Some(nhs) = &self.nhs else {
                    return Reply::not_found(format);
                };
                if route != Route::NhsLogout && method != Method::GET {
                    return Reply::method_not_allowed(format, "GET");
                }
                let session = ctx.session.as_ref();
                let (reply, step) = match route {
                    Route::NhsLogin => nhs.login(query, &req.headers, format).await,
                    Route::NhsCallback => nhs.callback(query, &req.headers, session, format).await,
                    Route::NhsLogout => nhs.logout(&req.headers, session, format).await,
                    _ => {
                        nhs.launch_pkb(this_url, query, &req.headers, session, format)
                            .await
                    }
                };
                self.nhs_step(ctx, step);
                reply
            }
            Route::Launch
            | Route::Pair
            | Route::Callback
            | Route::Status
            | Route::DataAvailability
                if method != Method::GET =>
            {
                Reply::method_not_allowed(format, "GET")
            }
            Route::Launch => {
                let started = std::time::Instant::now();
                let mut patient = None;
                let result = async {
                    let user = user.ok_or(LaunchError::NoIdentity)?;
                    let params = self.launch.params(query)?;
                    patient = params.context.clone();
                    self.launch.launch(user, &params).await
                }
                .await;
                let m = metrics();
                m.launch_duration_seconds
                    .observe(started.elapsed().as_secs_f64());
                let outcome = result.as_ref().map_or_else(|e| e.outcome(), |_| "redirect");
                m.launch_total.with_label_values(&[outcome]).inc();
                let reason = result.as_ref().err().map(ToString::to_string);
                tracing::info!(user = log_user, outcome, reason, "launch");
                self.audit.record(Event {
                    request_id: &ctx.request_id,
                    user,
                    action: Action::Launch,
                    outcome,
                    refused: result.is_err(),
                    patient: patient.as_ref(),
                    reason,
                });
                match result {
                    Ok(location) => Reply::redirect(location),
                    Err(e) => reply::launch_error(&e, format, &self.prefix, this_url),
                }
            }
            Route::Pair => match self.pairing.start(user, query).await {
                Ok(authorize_url) => {
                    self.pairing_step(ctx, Action::Pair, "started", None);
                    Reply::redirect(authorize_url)
                }
                Err(e) => {
                    self.pairing_refused(ctx, Action::Pair, &e);
                    reply::pairing_error(&e, format, &restart_pairing)
                }
            },
            Route::Callback => match self.pairing.callback(user, query).await {
                Ok(return_to) => {
                    self.pairing_step(ctx, Action::PairCallback, "paired", None);
                    match return_to {
                        Some(path) => Reply::redirect(path.to_string()),
                        None => Reply::linked(format, &self.prefix),
                    }
                }
                Err(e) => {
                    self.pairing_refused(ctx, Action::PairCallback, &e);
                    reply::pairing_error(&e, format, &restart_pairing)
                }
            },
            Route::Unpair => {
                let origin = header(http::header::ORIGIN);
                let site = header(http::HeaderName::from_static("sec-fetch-site"));
                if !same_origin(&self.public_origin, origin, site) {
                    let why = "not sent by this site's own pages (Origin / Sec-Fetch-Site)";
                    self.pairing_step(ctx, Action::Unpair, "cross_site", Some(why.into()));
                    return Reply::cross_site(format);
                }
                match self.pairing.unpair(user).await {
                    Ok(was_paired) => {
                        let outcome = if was_paired {
                            "unpaired"
                        } else {
                            "was_not_paired"
                        };
                        self.pairing_step(ctx, Action::Unpair, outcome, None);
                        Reply::unlinked(format, &self.prefix, was_paired)
                    }
                    Err(e) => {
                        self.pairing_refused(ctx, Action::Unpair, &e);
                        reply::pairing_error(&e, format, &restart_pairing)
                    }
                }
            }
            Route::DataAvailability => self.data_availability(user, query).await,
            Route::Status => match self.pairing.is_paired(user).await {
                Ok(paired) => Reply::status(paired),
                Err(e) => reply::pairing_error(&e, Format::Json, &restart_pairing),
            },
        }
    }
}

impl EdgeProxy {
    /// `{"available": true|false|null}` for the patient named by PKB's context parameters.
    async fn data_availability(&self, user: Option<&str>, query: Option<&str>) -> Reply {
        let Some(user) = user else {
            return reply::launch_error(
                &crate::launch::LaunchError::NoIdentity,
                Format::Json,
                &self.prefix,
                "",
            );
        };
        let names = self.launch.context_names();
        let mut id = None;
        let mut id_type = None;
        for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            if k == names.national_id.as_str() {
                id = Some(v.into_owned());
            } else if k == names.national_id_type.as_str() {
                id_type = Some(v.into_owned());
            }
        }
        let id_type = id_type.unwrap_or_else(|| self.decorator.settings().national_id_type.clone());
        let bad = |why: String| {
            reply::launch_error(
                &crate::launch::LaunchError::BadRequest(why),
                Format::Json,
                &self.prefix,
                "",
            )
        };
        let Some(id) = id else {
            return bad(format!("`{}` is required", names.national_id));
        };
        if let Err((_, e)) = PatientContext::national_id(&id, &id_type) {
            return bad(format!("`{}` {e}", names.national_id));
        }
        let wait = self.launch.deadline();
        let available = self.decorator.ask(user, &id, &id_type, wait).await;
        Reply::json(200, serde_json::json!({ "available": available.as_json() }))
    }
}

async fn write_reply(session: &mut Session, reply: Reply) -> Result<()> {
    let mut header = ResponseHeader::build(reply.status, Some(reply.headers.len() + 1))?;
    for (name, value) in reply.headers {
        header.insert_header(name, value)?;
    }
    header.insert_header(http::header::CONTENT_LENGTH, reply.body.len().to_string())?;
    let empty = reply.body.is_empty();
    session
        .write_response_header(Box::new(header), empty)
        .await?;
    if !empty {
        session
            .write_response_body(Some(Bytes::from(reply.body)), true)
            .await?;
    }
    Ok(())
}

impl EdgeProxy {
    /// Starts the data-availability look-up for an identified GET/HEAD with a patient in context,
    /// before the upstream is contacted.
    async fn begin_lookup(&self, session: &Session, ctx: &mut RequestCtx) {
        let req = session.req_header();
        let Some(user) = ctx.user.as_deref() else {
            return;
        };
        if req.method != Method::GET && req.method != Method::HEAD {
            return;
        }
        if let Some(patient) =
            self.decorator
                .patient_in(req.uri.path(), req.uri.query(), &req.headers)
        {
            ctx.lookup = Some(self.decorator.begin(user, patient).await);
        }
    }
}

impl EdgeProxy {
    /// An NHS login step: counted, logged and audited.
    fn nhs_step(&self, ctx: &RequestCtx, step: Step) {
        metrics()
            .nhs_login_total
            .with_label_values(&[step.name, step.outcome])
            .inc();
        let user = step.user.as_deref().or(ctx.user.as_deref());
        tracing::info!(
            user,
            step = step.name,
            outcome = step.outcome,
            reason = step.reason,
            "nhs_login"
        );
        let m = metrics();
        if let Some((status, reason)) = step.gp {
            m.gp_credentials_total.with_label_values(&[status]).inc();
            tracing::info!(user, status, reason, "gp_credentials");
            self.audit.record(Event {
                request_id: &ctx.request_id,
                user,
                action: Action::GpCredentials,
                outcome: status,
                refused: false,
                patient: None,
                reason: reason.map(str::to_string),
            });
        }
        if let Some(outcome) = step.gp_refresh {
            m.gp_credentials_refresh_total
                .with_label_values(&[outcome])
                .inc();
            self.audit.record(Event {
                request_id: &ctx.request_id,
                user,
                action: Action::GpCredentialsRefresh,
                outcome,
                refused: outcome == "gave_up" || outcome == "failed",
                patient: None,
                reason: None,
            });
        }
        let action = match step.name {
            "logout" => Action::NhsLogout,
            "launch_pkb" => Action::NhsLaunchPkb,
            _ => Action::NhsLogin,
        };
        self.audit.record(Event {
            request_id: &ctx.request_id,
            user,
            action,
            outcome: step.outcome,
            refused: step.refused,
            patient: None,
            reason: step.reason,
        });
    }

    /// `nhs_login` mode: the session named by the cookie, if any (a store failure is an error:
    /// the gate answers 503 rather than sending a signed-in user to sign in again).
    async fn nhs_session(
        &self,
        nhs: &NhsWeb,
        headers: &http::HeaderMap,
    ) -> std::result::Result<Option<(String, NhsSession)>, crate::store::StoreError> {
        match nhs_web::cookie_value(headers, &nhs.nhs.settings().cookie_name) {
            Some(id) => Ok(nhs.nhs.sessions().get(&id).await?.map(|s| (id, s))),
            None => Ok(None),
        }
    }

    /// `X-GP-Credentials-Invalid: 1` from the upstream on a GP credentials path: the reply that
    /// replaces the upstream's response (a silent refresh, or the give-up page). The signal never
    /// reaches the browser.
    async fn gp_signal(
        &self,
        nhs: &NhsWeb,
        session: &Session,
        upstream_response: &mut ResponseHeader,
        ctx: &RequestCtx,
    ) -> Option<Reply> {
        let signalled = upstream_response
            .headers
            .get(nhs_web::GP_INVALID_HEADER)
            .is_some_and(|v| v.as_bytes().trim_ascii() == b"1");
        // Never towards the browser, whether or not GP credentials are configured.
        upstream_response.remove_header(nhs_web::GP_INVALID_HEADER);
        for name in nhs_web::GP_HEADERS {
            upstream_response.remove_header(name);
        }
        let gp = nhs.nhs.settings().gp_credentials.as_ref()?;
        let req = session.req_header();
        if !signalled || !gp.applies_to(req.uri.path()) {
            return None;
        }
        let (Some(id), Some(user_session)) = (&ctx.session_id, &ctx.session) else {
            return None;
        };
        let return_to = if req.method == Method::GET || req.method == Method::HEAD {
            req.uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string()
        } else {
            same_origin_referer(&nhs.public_origin, &req.headers).unwrap_or_else(|| "/".into())
        };
        let format = Format::from_accept(
            req.headers
                .get(http::header::ACCEPT)
                .and_then(|v| v.to_str().ok()),
        );
        let (reply, step) = nhs
            .gp_invalid(id, user_session, &return_to, &req.headers, format)
            .await;
        self.nhs_step(ctx, step);
        Some(reply)
    }

    /// A pairing step (or its refusal, when `reason` is given): counted, logged and audited.
    fn pairing_step(
        &self,
        ctx: &RequestCtx,
        action: Action,
        outcome: &str,
        reason: Option<String>,
    ) {
        metrics().pairing_total.with_label_values(&[outcome]).inc();
        let user = ctx.user.as_deref();
        tracing::info!(user, ?action, outcome, reason, "pairing");
        self.audit.record(Event {
            request_id: &ctx.request_id,
            user,
            action,
            outcome,
            refused: reason.is_some(),
            patient: None,
            reason,
        });
    }

    fn pairing_refused(&self, ctx: &RequestCtx, action: Action, e: &PairingError) {
        self.pairing_step(ctx, action, e.outcome(), Some(e.to_string()));
    }
}

/// A path as log lines may show it: segments holding six or more digits in a row (NHS and other
/// national numbers) or an `@` (email addresses) become `*`.
pub fn loggable_path(path: &str) -> String {
    let masked: Vec<&str> = path
        .split('/')
        .map(|segment| {
            let mut run = 0;
            let long_digits = segment.bytes().any(|b| {
                run = if b.is_ascii_digit() { run + 1 } else { 0 };
                run >= 6
            });
            let decoded_at = segment.contains('@') || segment.to_ascii_lowercase().contains("%40");
            if long_digits || decoded_at {
                "*"
            } else {
                segment
            }
        })
        .collect();
    masked.join("/")
}

/// The path and query of a `Referer` on this site: where a form was posted from.
fn same_origin_referer(public_origin: &str, headers: &http::HeaderMap) -> Option<String> {
    let referer = headers.get(http::header::REFERER)?.to_str().ok()?;
    let url = url::Url::parse(referer).ok()?;
    if url.origin().ascii_serialization() != public_origin {
        return None;
    }
    Some(match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    })
}

/// The request id a trusted peer sent, if it is a sane token; otherwise a new random one.
fn request_id(trusted: bool, headers: &http::HeaderMap) -> String {
    let sent = headers
        .get(REQUEST_ID)
        .map(http::HeaderValue::as_bytes)
        .filter(|v| {
            trusted
                && (1..=128).contains(&v.len())
                && v.iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(b))
        });
    match sent {
        // Checked above: ASCII only.
        Some(v) => String::from_utf8_lossy(v).into_owned(),
        None => format!("{:032x}", rand::random::<u128>()),
    }
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if self.draining.load(std::sync::atomic::Ordering::Relaxed) {
            session.set_keepalive(None);
        }
        let peer = peer_ip(session);
        ctx.peer_trusted = self.identity.peer_is_trusted(peer);
        ctx.user = self.identity.resolve(peer, &session.req_header().headers);
        ctx.request_id = request_id(ctx.peer_trusted, &session.req_header().headers);
        if let Some(nhs) = &self.nhs {
            match self.nhs_session(nhs, &session.req_header().headers).await {
                Ok(Some((id, s))) => {
                    ctx.user = Some(s.sub.clone());
                    ctx.session_id = Some(id);
                    ctx.session = Some(s);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the session store cannot be read");
                    ctx.session_unavailable = true;
                }
            }
        }
        let Some(route) = self.route(session.req_header().uri.path()) else {
            let span = tracing::info_span!("request", request_id = %ctx.request_id);
            if let Some(nhs) = &self.nhs {
                let req = session.req_header();
                let format = Format::from_accept(
                    req.headers
                        .get(http::header::ACCEPT)
                        .and_then(|v| v.to_str().ok()),
                );
                let gate = nhs
                    .gate(
                        &req.method,
                        &req.uri,
                        &req.headers,
                        format,
                        ctx.session.is_some(),
                        ctx.session_unavailable,
                    )
                    .instrument(span.clone())
                    .await;
                if let Some((reply, step)) = gate {
                    let _entered = span.enter();
                    self.nhs_step(ctx, step);
                    drop(_entered);
                    let reply = reply.with_header("X-Request-Id", ctx.request_id.clone());
                    write_reply(session, reply).await?;
                    return Ok(true);
                }
            }
            self.begin_lookup(session, ctx).instrument(span).await;
            return Ok(false);
        };
        // Reserved routes read no request body; don't leave one on a reused connection.
        let has_body = session
            .req_header()
            .headers
            .contains_key(http::header::TRANSFER_ENCODING)
            || session
                .req_header()
                .headers
                .get(http::header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
        if has_body {
            session.set_keepalive(None);
        }
        let span = tracing::info_span!("request", request_id = %ctx.request_id);
        let reply = self
            .serve(route, session.req_header(), ctx)
            .instrument(span)
            .await
            .with_header("X-Request-Id", ctx.request_id.clone());
        write_reply(session, reply).await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let u = &self.upstream;
        Ok(Box::new(HttpPeer::new(u.addr, u.tls, u.host.clone())))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let hop = hop_by_hop(&upstream_request.headers);
        for name in &hop.remove {
            upstream_request.remove_header(name);
        }
        if hop.keep_upgrade {
            upstream_request.insert_header(http::header::CONNECTION, "upgrade")?;
        }
        if !ctx.peer_trusted || self.identity.header_is_ours() {
            upstream_request.remove_header(self.identity.header());
        }
        for name in &self.proxy_set_headers {
            upstream_request.remove_header(name);
        }
        if let Some(nhs) = &self.nhs {
            let cookies = nhs_web::cookies_without(
                &upstream_request.headers,
                &nhs.nhs.settings().cookie_name,
            );
            upstream_request.remove_header(&http::header::COOKIE);
            if let Some(cookies) = cookies {
                upstream_request.insert_header(http::header::COOKIE, cookies)?;
            }
            if let Some(s) = &ctx.session {
                upstream_request.insert_header(self.identity.header().clone(), s.sub.as_str())?;
                if let Some(n) = &s.nhs_number {
                    upstream_request.insert_header(nhs_web::NHS_NUMBER_HEADER, n.as_str())?;
                }
                if let Some(p) = &s.identity_proofing_level {
                    upstream_request.insert_header(nhs_web::PROOFING_LEVEL_HEADER, p.as_str())?;
                }
            }
            let gp_path = nhs
                .nhs
                .settings()
                .gp_credentials
                .as_ref()
                .is_some_and(|gp| gp.applies_to(_session.req_header().uri.path()));
            if let (true, Some(s)) = (gp_path, &ctx.session) {
                let status = s
                    .gp_status
                    .unwrap_or(crate::nhs_login::gp::GpStatus::Missing);
                upstream_request.insert_header("x-gp-credentials-status", status.as_str())?;
                if let (crate::nhs_login::gp::GpStatus::Valid, Some(gp)) = (status, &s.gp) {
                    upstream_request.insert_header("x-gp-user-id", gp.user_id.as_str())?;
                    upstream_request.insert_header("x-gp-linkage-key", gp.linkage_key.as_str())?;
                    upstream_request.insert_header("x-gp-ods-code", gp.ods_code.as_str())?;
                }
            }
        }
        upstream_request.insert_header(REQUEST_ID, ctx.request_id.as_str())?;
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(nhs) = &self.nhs {
            if let Some(reply) = self.gp_signal(nhs, session, upstream_response, ctx).await {
                let mut header =
                    ResponseHeader::build(reply.status, Some(reply.headers.len() + 2))?;
                for (name, value) in reply.headers {
                    header.insert_header(name, value)?;
                }
                header.insert_header("X-Request-Id", ctx.request_id.as_str())?;
                header.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
                *upstream_response = header;
                ctx.replacement_body = Some(Bytes::from(reply.body));
                ctx.lookup = None;
                return Ok(());
            }
        }
        let header = &self.decorator.settings().header;
        // The header is pkb-edge's: an upstream copy is never passed on, nor duplicated.
        upstream_response.remove_header(header);
        let Some(lookup) = ctx.lookup.take() else {
            return Ok(());
        };
        if !upstream_response.status.is_success() {
            return Ok(());
        }
        let value = Decorator::finish(lookup, self.decorator.settings().budget).await;
        metrics()
            .decoration_total
            .with_label_values(&[value.header_value()])
            .inc();
        upstream_response.insert_header(header.clone(), value.header_value())?;
        let values = |name: http::HeaderName| -> Vec<String> {
            upstream_response
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_string)
                .collect()
        };
        let vary_names: Vec<&str> = self.vary_on.iter().map(String::as_str).collect();
        let vary = merged_vary(&as_strs(&values(http::header::VARY)), &vary_names);
        let cache_control = private_cache_control(&as_strs(&values(http::header::CACHE_CONTROL)));
        upstream_response.insert_header(http::header::VARY, vary)?;
        upstream_response.insert_header(http::header::CACHE_CONTROL, cache_control)?;
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(replacement) = &ctx.replacement_body {
            *body = end_of_stream.then(|| replacement.clone());
        }
        Ok(None)
    }

    /// Used in Pingora's error log lines: the request id and a path that cannot carry a
    /// patient's id (no query string; long digit runs and email-like segments masked).
    fn request_summary(&self, session: &Session, ctx: &RequestCtx) -> String {
        let req = session.req_header();
        format!(
            "{} {} request_id={}",
            req.method,
            loggable_path(req.uri.path()),
            ctx.request_id
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_paths_hide_patient_ids() {
        assert_eq!(
            loggable_path("/patients/9434765919/summary"),
            "/patients/*/summary"
        );
        assert_eq!(loggable_path("/p/nhs-943476-5919"), "/p/*");
        assert_eq!(loggable_path("/people/a%40b.example/x"), "/people/*/x");
        assert_eq!(loggable_path("/people/a@b.example"), "/people/*");
        assert_eq!(loggable_path("/_pkb/launch"), "/_pkb/launch");
        assert_eq!(loggable_path("/ward/12345/beds"), "/ward/12345/beds");
        assert_eq!(loggable_path("/"), "/");
    }
}
