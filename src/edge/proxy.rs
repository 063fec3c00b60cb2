//! The Pingora glue for header mode: a short dispatcher. Each callback does one thing and hands
//! the decision to a route handler (`routes`), a header rule (`headers`) or a use case. NHS login
//! wraps this proxy as a layer (`edge::nhs`) instead of being tangled into it.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora::upstreams::peer::HttpPeer;
use tracing::Instrument;

use super::headers::{hop_by_hop, loggable_path, request_id, strip_spellings, REQUEST_ID};
use super::reply::Reply;
use super::routes::Route;
use super::upstream::UpstreamPeers;
use crate::decorate::{merged_vary, private_cache_control, Decorator, Lookup};
use crate::identity::{Asking, HeaderIdentity, Identify, JwtIdentity};
use crate::launch::LaunchService;
use crate::observe::audit::AuditLog;
use crate::observe::metrics::metrics;
use crate::pairing::PairingService;
use crate::tls::ClientCerts;

pub struct EdgeProxy {
    pub upstream: Arc<UpstreamPeers>,
    pub prefix: String,
    pub identity: HeaderIdentity,
    /// jwt mode: the user is the verified assertion's (`identity` then only says whose
    /// `X-Request-Id` is taken), and goes upstream in `forward_header`.
    pub jwt: Option<Arc<JwtIdentity>>,
    pub launch: Arc<LaunchService>,
    pub pairing: Arc<PairingService>,
    pub decorator: Arc<Decorator>,
    /// Request headers a decorated response depends on, merged into its `Vary`.
    pub vary_on: Vec<String>,
    /// `public_url`'s origin, for the same-origin check on state-changing POSTs.
    pub public_origin: String,
    /// Headers only pkb-edge may set or believe towards the upstream (the identity header
    /// included): client copies, in every spelling, are removed.
    pub protected_headers: Vec<HeaderName>,
    pub audit: Arc<AuditLog>,
    /// Set once the process is told to stop or hand over (SIGTERM, SIGQUIT): connections are
    /// no longer kept alive.
    pub draining: Arc<AtomicBool>,
    /// With `tls.client_ca_file`: the names of the verified client certificates of the
    /// connections open now, by the leaf's SHA-256.
    pub client_certs: Option<Arc<ClientCerts>>,
    /// `tls.hsts_max_age_secs`, when HSTS is on.
    pub hsts_max_age_secs: Option<u64>,
}

/// What the proxy learned about a request before deciding where it goes.
#[derive(Default)]
pub struct RequestCtx {
    pub peer_trusted: bool,
    pub request_id: String,
    pub user: Option<String>,
    /// The data-availability look-up running beside the upstream call.
    pub lookup: Option<Lookup>,
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Writes one of pkb-edge's own answers, with the request id.
/// A reply's headers onto a response: each `Set-Cookie` added (a reply may set several
/// cookies), any other header set once.
pub fn put_headers(
    header: &mut ResponseHeader,
    headers: Vec<(&'static str, String)>,
) -> Result<()> {
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("set-cookie") {
            header.append_header(name, value)?;
        } else {
            header.insert_header(name, value)?;
        }
    }
    Ok(())
}

pub async fn write_reply(session: &mut Session, request_id: &str, reply: Reply) -> Result<()> {
    let reply = reply.with_header("X-Request-Id", request_id.to_string());
    let mut header = ResponseHeader::build(reply.status, Some(reply.headers.len() + 1))?;
    put_headers(&mut header, reply.headers)?;
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

fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// The span every log line of one request is written in.
pub fn request_span(ctx: &RequestCtx) -> tracing::Span {
    tracing::info_span!("request", request_id = %ctx.request_id)
}

impl EdgeProxy {
    /// What is known before routing: draining, the peer's trust, the user, the request id.
    pub async fn begin(&self, session: &mut Session, ctx: &mut RequestCtx) {
        if self.draining.load(Ordering::Relaxed) {
            session.set_keepalive(None);
        }
        let peer = peer_ip(session);
        let client = self.client_names(session);
        let client = client.as_deref();
        let headers = &session.req_header().headers;
        ctx.peer_trusted = self.identity.peer_is_trusted(peer, client);
        // Header and jwt modes never fail to answer: a bad, untrusted or unverified claim is
        // nobody.
        let asking = Asking {
            peer,
            client,
            headers,
        };
        ctx.user = match &self.jwt {
            Some(jwt) => jwt.identify(&asking).await,
            None => self.identity.identify(&asking).await,
        }
        .unwrap_or(None);
        ctx.request_id = request_id(ctx.peer_trusted, headers);
    }

    /// A request that could not be proxied. An upstream failure gets pkb-edge's own page (502,
    /// or 504 when the upstream timed out; HSTS and the request id on it like every answer),
    /// unless an answer had begun, and one log line that says why; any other error is answered
    /// as Pingora answers it.
    pub async fn failed(
        &self,
        session: &mut Session,
        e: &pingora::Error,
        ctx: &RequestCtx,
    ) -> FailToProxy {
        use pingora::{ErrorSource, ErrorType};
        let upstream = matches!(e.esource(), ErrorSource::Upstream)
            && !matches!(e.etype(), ErrorType::HTTPStatus(_));
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout if upstream => 504,
            _ if upstream => 502,
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
            _ if matches!(e.esource(), ErrorSource::Downstream) => 400,
            _ => 500,
        };
        if upstream {
            let _span = request_span(ctx).entered();
            tracing::error!(upstream = %self.upstream.addr().get(), "the upstream could not be used: {e}");
        }
        if upstream && session.response_written().is_none() {
            let format = super::routes::format_of(session.req_header());
            let reply = Reply::upstream_failed(format, code);
            session.set_keepalive(None);
            let _ = write_reply(session, &ctx.request_id, reply).await;
        } else if code > 0 {
            // Everything else as Pingora answers it.
            let _ = session.respond_error(code).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// The names of the connection's client certificate, if it verified against
    /// `tls.client_ca_file`.
    fn client_names(&self, session: &Session) -> Option<Arc<[String]>> {
        let certs = self.client_certs.as_ref()?;
        let tls = session.digest()?.ssl_digest.as_ref()?;
        certs.names(&tls.cert_digest)
    }

    /// A request pkb-edge answers 400 before anything else looks at it: an HTTP/1.1 request
    /// without exactly one `Host` (RFC 9112 §3.2), which the next hop could read either way.
    pub fn malformed(&self, session: &Session) -> Option<Reply> {
        let req = session.req_header();
        let hosts = req.headers.get_all(http::header::HOST).iter().count();
        (req.version == http::Version::HTTP_11 && hosts != 1).then(|| {
            let why = "An HTTP/1.1 request must carry exactly one Host header.";
            Reply::malformed(super::routes::format_of(req), why)
        })
    }

    /// Answers a reserved route. Reserved routes read no request body; a connection that sent
    /// one is not reused.
    pub async fn answer(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        reply: Reply,
    ) -> Result<bool> {
        let headers = &session.req_header().headers;
        let has_body = headers.contains_key(http::header::TRANSFER_ENCODING)
            || headers
                .get(http::header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
        if has_body {
            session.set_keepalive(None);
        }
        write_reply(session, &ctx.request_id, reply).await?;
        Ok(true)
    }

    /// Starts the data-availability look-up for an identified GET/HEAD with a patient in context,
    /// before the upstream is contacted.
    /// Also tells refresh-ahead about the identified user's request (it never waits).
    pub async fn begin_lookup(&self, session: &Session, ctx: &mut RequestCtx) {
        let req = session.req_header();
        let Some(user) = ctx.user.as_deref() else {
            return;
        };
        self.launch.token_source().page_view(user).await;
        if req.method != Method::GET && req.method != Method::HEAD {
            return;
        }
        if let Some(patient) =
            self.decorator
                .patient_in(req.uri.path(), req.uri.query(), &req.headers)
        {
            let lookup = self
                .decorator
                .begin(user, patient)
                .instrument(request_span(ctx))
                .await;
            ctx.lookup = Some(lookup);
        }
    }

    /// The decoration header, with `Vary` and `Cache-Control` made safe for a per-user answer.
    async fn decorate(&self, response: &mut ResponseHeader, lookup: Lookup) -> Result<()> {
        let value = Decorator::finish(lookup, self.decorator.settings().budget).await;
        metrics()
            .decoration_total
            .with_label_values(&[value.header_value()])
            .inc();
        let header = &self.decorator.settings().header;
        response.insert_header(header.clone(), value.header_value())?;
        let values = |name: HeaderName| -> Vec<String> {
            response
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_string)
                .collect()
        };
        let (vary, cache_control) = (
            values(http::header::VARY),
            values(http::header::CACHE_CONTROL),
        );
        let vary = merged_vary(&strs(&vary), &strs(&self.vary_on));
        let cache_control = private_cache_control(&strs(&cache_control));
        response.insert_header(http::header::VARY, vary)?;
        response.insert_header(http::header::CACHE_CONTROL, cache_control)?;
        Ok(())
    }
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        self.begin(session, ctx).await;
        if let Some(reply) = self.malformed(session) {
            return self.answer(session, ctx, reply).await;
        }
        match Route::of(&self.prefix, session.req_header().uri.path()) {
            Some(route) => {
                let reply = self
                    .serve(route, session.req_header(), ctx)
                    .instrument(request_span(ctx))
                    .await;
                self.answer(session, ctx, reply).await
            }
            None => {
                self.begin_lookup(session, ctx).await;
                Ok(false)
            }
        }
    }

    fn init_downstream_modules(&self, modules: &mut pingora::modules::http::HttpModules) {
        // Pingora's default: response compression, off.
        modules
            .add_module(pingora::modules::http::compression::ResponseCompressionBuilder::enable(0));
        if let Some(max_age) = self.hsts_max_age_secs {
            modules.add_module(Box::new(super::tls::Hsts::new(max_age)));
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.upstream.peer()))
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
        // What pkb-edge does not believe, the upstream does not receive: the identity header
        // goes unless it named the user (in this exact spelling), and every other spelling or
        // copy of it, and of the headers pkb-edge sets, goes always.
        let believed =
            (ctx.user.is_some() && !self.identity.header_is_ours() && self.jwt.is_none())
                .then(|| self.identity.header());
        for name in strip_spellings(&upstream_request.headers, &self.protected_headers, believed) {
            upstream_request.remove_header(&name);
        }
        // jwt mode: the assertion goes on unchanged (the upstream may check it too), and the
        // user it names in `forward_header`.
        if let (Some(jwt), Some(user)) = (&self.jwt, &ctx.user) {
            upstream_request.insert_header(jwt.settings().forward_header.clone(), user.as_str())?;
        }
        upstream_request.insert_header(REQUEST_ID, ctx.request_id.as_str())?;
        // An absolute-form target (`GET http://host/path`, which Pingora accepts when its host
        // is the Host header's) goes on in origin form, as an origin server expects it: an
        // upstream that matched paths against the raw target could otherwise be confused.
        let raw = upstream_request.raw_path();
        if !raw.starts_with(b"/") && raw != b"*" {
            let target = upstream_request.uri.path_and_query().map(|p| p.as_str());
            let target = match target {
                Some(t) if t.starts_with('/') => t.to_string(),
                Some(t) if t.starts_with('?') => format!("/{t}"),
                _ => {
                    return Err(pingora::Error::explain(
                        pingora::ErrorType::HTTPStatus(400),
                        "unusable request target",
                    ))
                }
            };
            let uri = target.parse::<http::Uri>().map_err(|e| {
                pingora::Error::because(pingora::ErrorType::HTTPStatus(400), "request target", e)
            })?;
            upstream_request.set_uri(uri);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // The header is pkb-edge's: an upstream copy is never passed on, nor duplicated.
        upstream_response.remove_header(&self.decorator.settings().header);
        match ctx.lookup.take() {
            Some(lookup) if upstream_response.status.is_success() => {
                self.decorate(upstream_response, lookup).await
            }
            _ => Ok(()),
        }
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &pingora::Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        self.failed(session, e, ctx).await
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
