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
use crate::reply::{self, Format, Reply};

pub struct EdgeProxy {
    pub upstream: Upstream,
    pub prefix: String,
    pub identity: IdentityResolver,
    pub launch: Arc<LaunchService>,
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
            _ => Route::Unknown,
        })
    }

    async fn serve(&self, route: Route, req: &RequestHeader, ctx: &RequestCtx) -> Reply {
        let format = Format::from_accept(
            req.headers
                .get(http::header::ACCEPT)
                .and_then(|v| v.to_str().ok()),
        );
        match route {
            Route::Unknown => Reply::not_found(format),
            Route::Launch if req.method != Method::GET => Reply::method_not_allowed(format, "GET"),
            Route::Launch => {
                let this_url = req.uri.path_and_query().map_or("", |p| p.as_str());
                match self
                    .launch
                    .launch(ctx.user.as_deref(), req.uri.query())
                    .await
                {
                    Ok(location) => {
                        tracing::info!(
                            user = ctx.user.as_deref().unwrap_or(""),
                            outcome = "redirect",
                            "launch"
                        );
                        Reply::redirect(location)
                    }
                    Err(e) => {
                        tracing::info!(user = ctx.user.as_deref().unwrap_or(""), outcome = %e, "launch refused");
                        reply::launch_error(&e, format, &self.prefix, this_url)
                    }
                }
            }
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
