//! NHS login as a layer around the header-mode proxy (the huskarl-pingora pattern): the layer
//! owns its routes, the sign-in gate, the session cookie and the headers it sets upstream, and
//! keeps its state in its own context. Header mode runs [`EdgeProxy`] alone and carries none of
//! this.

pub mod routes;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::upstreams::peer::HttpPeer;
use tracing::Instrument;

use self::routes::target_without_assertion;
pub use self::routes::{NhsWeb, GP_HEADERS, NHS_NUMBER_HEADER, PROOFING_LEVEL_HEADER};
use super::headers::{same_origin_referer, strip_spellings};
use super::proxy::{put_headers, request_span, write_reply, EdgeProxy, RequestCtx};
use super::reply::Reply;
use super::routes::{format_of, Route};
use crate::core::cookies::cookies_without;
use crate::identity::{Asking, Identify, NhsSessionIdentity};
use crate::nhs_login::gp::GpStatus;
use crate::nhs_login::Step;
use crate::nhs_login::{NhsLoginError, Session as NhsSession};
use crate::observe::audit::Caller;
use crate::store::StoreError;

/// The header-mode proxy with NHS login in front.
pub struct NhsLoginLayer {
    pub inner: EdgeProxy,
    pub web: NhsWeb,
    /// Who is asking, in this mode: the session the cookie names.
    pub sessions: NhsSessionIdentity,
    /// The headers this layer sets upstream; client copies, in every spelling, are removed.
    pub own_headers: Vec<HeaderName>,
}

impl NhsLoginLayer {
    pub fn new(inner: EdgeProxy, web: NhsWeb, sessions: NhsSessionIdentity) -> Self {
        let own_headers = [NHS_NUMBER_HEADER, PROOFING_LEVEL_HEADER]
            .into_iter()
            .chain(GP_HEADERS)
            .map(HeaderName::from_static)
            .collect();
        NhsLoginLayer {
            inner,
            web,
            sessions,
            own_headers,
        }
    }
}

/// The layer's state for one request, around the inner proxy's.
#[derive(Default)]
pub struct NhsCtx {
    inner: RequestCtx,
    /// The signed-in user's session, and its id (the cookie).
    session: Option<NhsSession>,
    session_id: Option<String>,
    /// The session store could not be read: routes that need the user answer 503 rather than
    /// treat a signed-in user as signed out.
    session_unavailable: bool,
    /// A response pkb-edge puts in place of the upstream's (headers swapped in
    /// `response_filter`; the body goes out in `response_body_filter`).
    replacement_body: Option<Bytes>,
}

/// NHS login's own routes under the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NhsRoute {
    Login,
    Callback,
    Logout,
    LaunchPkb,
}

impl NhsRoute {
    fn of(prefix: &str, path: &str) -> Option<NhsRoute> {
        Some(match path.strip_prefix(prefix)?.strip_prefix("/nhs/")? {
            "login" => NhsRoute::Login,
            "callback" => NhsRoute::Callback,
            "logout" => NhsRoute::Logout,
            "launch-pkb" => NhsRoute::LaunchPkb,
            _ => return None,
        })
    }
}

fn store_unavailable() -> NhsLoginError {
    NhsLoginError::Store(StoreError::Unavailable("session store".into()))
}

impl NhsLoginLayer {
    /// The session named by the cookie, if any. A store failure is remembered, not treated as
    /// "signed out": the gate answers 503 rather than sending a signed-in user to sign in again.
    async fn load_session(&self, asking: &Asking<'_>, ctx: &mut NhsCtx) {
        match self.sessions.identify(asking).await {
            Ok(Some(found)) => {
                ctx.inner.user = Some(found.session.sub.clone());
                ctx.session_id = Some(found.id);
                ctx.session = Some(found.session);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "the session store cannot be read");
                ctx.session_unavailable = true;
            }
        }
    }

    async fn serve(&self, route: NhsRoute, req: &RequestHeader, ctx: &NhsCtx) -> Reply {
        let format = format_of(req);
        let this_url = req.uri.path_and_query().map_or("", |p| p.as_str());
        let needs_session = matches!(route, NhsRoute::Logout | NhsRoute::LaunchPkb);
        if ctx.session_unavailable && needs_session {
            return self.web.error_page(&store_unavailable(), format, this_url);
        }
        let allowed = match route {
            NhsRoute::Logout => Method::POST,
            _ => Method::GET,
        };
        if req.method != allowed {
            let allow = if allowed == Method::POST {
                "POST"
            } else {
                "GET"
            };
            return Reply::method_not_allowed(format, allow);
        }
        let (query, headers, session) = (req.uri.query(), &req.headers, ctx.session.as_ref());
        let (reply, step) = match route {
            NhsRoute::Login => self.web.login(query, format).await,
            NhsRoute::Callback => self.web.callback(query, headers, session, format).await,
            NhsRoute::Logout => self.web.logout(headers, session, format).await,
            NhsRoute::LaunchPkb => {
                self.web
                    .launch_pkb(this_url, query, headers, session, format)
                    .await
            }
        };
        self.record(&ctx.inner, step);
        reply
    }

    /// A reserved route of the inner proxy; none but a 404 answers while sessions are unreadable.
    async fn serve_inner(&self, route: Route, req: &RequestHeader, ctx: &NhsCtx) -> Reply {
        if ctx.session_unavailable && route != Route::Unknown {
            let this_url = req.uri.path_and_query().map_or("", |p| p.as_str());
            return self
                .web
                .error_page(&store_unavailable(), format_of(req), this_url);
        }
        self.inner.serve(route, req, &ctx.inner).await
    }

    fn record(&self, ctx: &RequestCtx, step: Step) {
        let caller = Caller {
            request_id: &ctx.request_id,
            user: ctx.user.as_deref(),
        };
        self.web.nhs.record(caller, step);
    }

    /// `X-GP-Credentials-Invalid: 1` from the upstream on a GP credentials path: the reply that
    /// replaces the upstream's response (a silent refresh, or the give-up page). The signal never
    /// reaches the browser.
    async fn gp_signal(
        &self,
        req: &RequestHeader,
        upstream_response: &mut ResponseHeader,
        ctx: &NhsCtx,
    ) -> Option<Reply> {
        let signalled = upstream_response
            .headers
            .get(routes::GP_INVALID_HEADER)
            .is_some_and(|v| v.as_bytes().trim_ascii() == b"1");
        // Never towards the browser, whether or not GP credentials are configured.
        upstream_response.remove_header(routes::GP_INVALID_HEADER);
        for name in GP_HEADERS {
            upstream_response.remove_header(name);
        }
        let gp = self.web.nhs.settings().gp_credentials.as_ref()?;
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
            same_origin_referer(&self.web.public_origin, &req.headers).unwrap_or_else(|| "/".into())
        };
        let (reply, step) = self
            .web
            .gp_invalid(id, user_session, &return_to, format_of(req))
            .await;
        self.record(&ctx.inner, step);
        Some(reply)
    }

    /// What the layer sets upstream: the cookie header without its own cookies, the signed-in
    /// user's identity headers, and GP credentials on the configured paths.
    fn set_upstream_headers(
        &self,
        path: &str,
        upstream_request: &mut RequestHeader,
        ctx: &NhsCtx,
    ) -> Result<()> {
        for name in strip_spellings(&upstream_request.headers, &self.own_headers, None) {
            upstream_request.remove_header(&name);
        }
        let settings = self.web.nhs.settings();
        let cookies = cookies_without(&upstream_request.headers, &settings.cookie_name);
        upstream_request.remove_header(&http::header::COOKIE);
        if let Some(cookies) = cookies {
            upstream_request.insert_header(http::header::COOKIE, cookies)?;
        }
        let Some(s) = &ctx.session else {
            return Ok(());
        };
        upstream_request.insert_header(self.inner.identity.header().clone(), s.sub.as_str())?;
        if let Some(n) = &s.nhs_number {
            upstream_request.insert_header(NHS_NUMBER_HEADER, n.as_str())?;
        }
        if let Some(p) = &s.identity_proofing_level {
            upstream_request.insert_header(PROOFING_LEVEL_HEADER, p.as_str())?;
        }
        let gp_path = settings
            .gp_credentials
            .as_ref()
            .is_some_and(|gp| gp.applies_to(path));
        if gp_path {
            let status = s.gp_status.unwrap_or(GpStatus::Missing);
            upstream_request.insert_header("x-gp-credentials-status", status.as_str())?;
            if let (GpStatus::Valid, Some(gp)) = (status, &s.gp) {
                upstream_request.insert_header("x-gp-user-id", gp.user_id.as_str())?;
                upstream_request.insert_header("x-gp-linkage-key", gp.linkage_key.as_str())?;
                upstream_request.insert_header("x-gp-ods-code", gp.ods_code.as_str())?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl ProxyHttp for NhsLoginLayer {
    type CTX = NhsCtx;

    fn new_ctx(&self) -> NhsCtx {
        NhsCtx::default()
    }

    fn init_downstream_modules(&self, modules: &mut pingora::modules::http::HttpModules) {
        self.inner.init_downstream_modules(modules);
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut NhsCtx) -> Result<bool> {
        self.inner.begin(session, &mut ctx.inner).await;
        if let Some(reply) = self.inner.malformed(session) {
            return self.inner.answer(session, &ctx.inner, reply).await;
        }
        let asking = Asking {
            peer: None,
            client: None,
            headers: &session.req_header().headers,
        };
        self.load_session(&asking, ctx).await;
        let span = request_span(&ctx.inner);
        let req = session.req_header();
        let path = req.uri.path();
        let reply = if let Some(route) = NhsRoute::of(&self.inner.prefix, path) {
            self.serve(route, req, ctx).instrument(span).await
        } else if let Some(route) = Route::of(&self.inner.prefix, path) {
            self.serve_inner(route, req, ctx).instrument(span).await
        } else {
            let gate = self
                .web
                .gate(
                    &req.method,
                    &req.uri,
                    format_of(req),
                    ctx.session.is_some(),
                    ctx.session_unavailable,
                )
                .instrument(span.clone())
                .await;
            if let Some((reply, step)) = gate {
                span.in_scope(|| self.record(&ctx.inner, step));
                write_reply(session, &ctx.inner.request_id, reply).await?;
                return Ok(true);
            }
            self.inner.begin_lookup(session, &mut ctx.inner).await;
            return Ok(false);
        };
        self.inner.answer(session, &ctx.inner, reply).await
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut NhsCtx,
    ) -> Result<Box<HttpPeer>> {
        self.inner.upstream_peer(session, &mut ctx.inner).await
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut NhsCtx,
    ) -> Result<()> {
        self.inner
            .upstream_request_filter(session, upstream_request, &mut ctx.inner)
            .await?;
        // The asserted identity is pkb-edge's to use (a GET carrying it never gets here: it
        // signs in); whatever the method, it never reaches the upstream.
        if let Some(target) = target_without_assertion(upstream_request.raw_path()) {
            upstream_request.set_raw_path(&target)?;
        }
        self.set_upstream_headers(session.req_header().uri.path(), upstream_request, ctx)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut NhsCtx,
    ) -> Result<()> {
        let Some(reply) = self
            .gp_signal(session.req_header(), upstream_response, ctx)
            .await
        else {
            return self
                .inner
                .response_filter(session, upstream_response, &mut ctx.inner)
                .await;
        };
        let mut header = ResponseHeader::build(reply.status, Some(reply.headers.len() + 2))?;
        put_headers(&mut header, reply.headers)?;
        header.insert_header("X-Request-Id", ctx.inner.request_id.as_str())?;
        header.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
        *upstream_response = header;
        ctx.replacement_body = Some(Bytes::from(reply.body));
        ctx.inner.lookup = None;
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut NhsCtx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(replacement) = &ctx.replacement_body {
            *body = end_of_stream.then(|| replacement.clone());
        }
        Ok(None)
    }

    fn request_summary(&self, session: &Session, ctx: &NhsCtx) -> String {
        self.inner.request_summary(session, &ctx.inner)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &pingora::Error,
        ctx: &mut NhsCtx,
    ) -> pingora::proxy::FailToProxy {
        self.inner.failed(session, e, &ctx.inner).await
    }
}
