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

use crate::config::Upstream;
use crate::identity::{hop_by_hop, IdentityResolver};
use crate::launch::LaunchService;
use crate::pairing::{same_origin, PairingService};
use crate::reply::{self, Format, Reply};

pub struct EdgeProxy {
    pub upstream: Upstream,
    pub prefix: String,
    pub identity: IdentityResolver,
    pub launch: Arc<LaunchService>,
    pub pairing: Arc<PairingService>,
    /// `public_url`'s origin, for the same-origin check on state-changing POSTs.
    pub public_origin: String,
    /// Headers only pkb-edge may set towards the upstream: client copies are always removed.
    pub proxy_set_headers: Vec<HeaderName>,
}

/// What the proxy learned about a request before deciding where it goes.
#[derive(Debug, Default)]
pub struct RequestCtx {
    peer_trusted: bool,
    user: Option<String>,
}

/// The reserved routes under the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Launch,
    Pair,
    Callback,
    Unpair,
    Status,
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
        match route {
            Route::Unknown => Reply::not_found(format),
            Route::Unpair if method != Method::POST => Reply::method_not_allowed(format, "POST"),
            Route::Launch | Route::Pair | Route::Callback | Route::Status
                if method != Method::GET =>
            {
                Reply::method_not_allowed(format, "GET")
            }
            Route::Launch => match self.launch.launch(user, query).await {
                Ok(location) => {
                    tracing::info!(user = log_user, outcome = "redirect", "launch");
                    Reply::redirect(location)
                }
                Err(e) => {
                    tracing::info!(user = log_user, outcome = %e, "launch refused");
                    reply::launch_error(&e, format, &self.prefix, this_url)
                }
            },
            Route::Pair => match self.pairing.start(user, query).await {
                Ok(authorize_url) => Reply::redirect(authorize_url),
                Err(e) => {
                    tracing::info!(user = log_user, outcome = %e, "pairing refused");
                    reply::pairing_error(&e, format, &restart_pairing)
                }
            },
            Route::Callback => match self.pairing.callback(user, query).await {
                Ok(return_to) => {
                    tracing::info!(user = log_user, outcome = "paired", "pairing");
                    match return_to {
                        Some(path) => Reply::redirect(path.to_string()),
                        None => Reply::linked(format, &self.prefix),
                    }
                }
                Err(e) => {
                    tracing::info!(user = log_user, outcome = %e, "pairing refused");
                    reply::pairing_error(&e, format, &restart_pairing)
                }
            },
            Route::Unpair => {
                let origin = header(http::header::ORIGIN);
                let site = header(http::HeaderName::from_static("sec-fetch-site"));
                if !same_origin(&self.public_origin, origin, site) {
                    tracing::info!(user = log_user, outcome = "cross-site", "unpair refused");
                    return Reply::cross_site(format);
                }
                match self.pairing.unpair(user).await {
                    Ok(was_paired) => {
                        tracing::info!(user = log_user, was_paired, "unpaired");
                        Reply::unlinked(format, &self.prefix, was_paired)
                    }
                    Err(e) => reply::pairing_error(&e, format, &restart_pairing),
                }
            }
            Route::Status => match self.pairing.is_paired(user).await {
                Ok(paired) => Reply::status(paired),
                Err(e) => reply::pairing_error(&e, Format::Json, &restart_pairing),
            },
        }
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
        let peer = peer_ip(session);
        ctx.peer_trusted = self.identity.peer_is_trusted(peer);
        ctx.user = self.identity.resolve(peer, &session.req_header().headers);
        let Some(route) = self.route(session.req_header().uri.path()) else {
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
        let reply = self.serve(route, session.req_header(), ctx).await;
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
        if !ctx.peer_trusted {
            upstream_request.remove_header(self.identity.header());
        }
        for name in &self.proxy_set_headers {
            upstream_request.remove_header(name);
        }
        Ok(())
    }

    /// Used in Pingora's error log lines: no query string, which may hold a patient's id.
    fn request_summary(&self, session: &Session, _ctx: &RequestCtx) -> String {
        let req = session.req_header();
        format!("{} {}", req.method, req.uri.path())
    }
}
