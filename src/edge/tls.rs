//! The public listener's TLS on Pingora: the handshake (made by `connections::Guarded`, inside
//! the connection limits and under the head deadline), the reload of the serving certificate
//! (every `tls.reload_secs` and on SIGHUP), `Strict-Transport-Security` on every answer, and the
//! plain listener that only redirects to https.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::http::ResponseHeader;
use pingora::listeners::tls::Acceptor;
use pingora::modules::http::{HttpModule, HttpModuleBuilder, Module};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{Ssl as _, Stream};
use pingora::server::ShutdownWatch;

use crate::core::clock::{Clock, SystemClock};
use crate::tls::{ClientCerts, Connected, ListenerTls, ServingCert};

/// Makes the TLS handshake of an accepted connection.
pub struct Handshake {
    acceptor: Acceptor,
    clients: Option<Arc<ClientCerts>>,
    timeout: Duration,
}

impl Handshake {
    pub fn new(tls: &ListenerTls, timeout: Duration) -> Handshake {
        Handshake {
            acceptor: Acceptor::from_server_config(tls.config.clone()),
            clients: tls.clients.clone(),
            timeout,
        }
    }

    /// The TLS stream, and (while it is held) the names of a verified client certificate; None
    /// when the handshake failed or took longer than the head deadline.
    pub async fn accept(&self, stream: Stream) -> Option<(Stream, Option<Connected>)> {
        let Ok(plain) = stream.into_any().downcast::<L4Stream>() else {
            tracing::error!("a connection that is not TCP reached the TLS listener; closed");
            return None;
        };
        let tls =
            match pingora::time::timeout(self.timeout, self.acceptor.tls_handshake(*plain)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!("TLS handshake failed: {e}");
                    return None;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake not complete within the head deadline");
                    return None;
                }
            };
        let client = match (&self.clients, tls.get_ssl()) {
            (Some(clients), Some(ssl)) => ssl
                .peer_cert_chain_der()
                .and_then(|chain| clients.connected(chain)),
            _ => None,
        };
        Some((Box::new(tls), client))
    }
}

/// Reads the serving pair again every `every`, and at once on SIGHUP (even if unchanged).
pub struct CertReload {
    pub serving: Arc<ServingCert>,
    pub every: Duration,
}

#[async_trait]
impl pingora::services::background::BackgroundService for CertReload {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(
                    "cannot watch SIGHUP ({e}); certificates reload every tls.reload_secs only"
                );
                None
            }
        };
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is now: the pair was just loaded
        loop {
            let force = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { hangup.as_mut()?.recv().await } => true,
                _ = shutdown.changed() => return,
            };
            let now = SystemClock.now();
            let serving = self.serving.clone();
            // File reads and parsing off the runtime's threads.
            let _ = tokio::task::spawn_blocking(move || serving.reload(force, now)).await;
        }
    }
}

/// `Strict-Transport-Security` on every answer written to the client: the upstream's, pkb-edge's
/// own pages and its error pages alike.
pub struct Hsts {
    value: http::HeaderValue,
}

impl Hsts {
    pub fn new(max_age_secs: u64) -> Hsts {
        Hsts {
            value: http::HeaderValue::from_str(&format!("max-age={max_age_secs}"))
                .unwrap_or_else(|_| http::HeaderValue::from_static("max-age=0")),
        }
    }
}

impl HttpModuleBuilder for Hsts {
    fn init(&self) -> Module {
        Box::new(HstsHeader(self.value.clone()))
    }
}

struct HstsHeader(http::HeaderValue);

#[async_trait]
impl HttpModule for HstsHeader {
    async fn response_header_filter(
        &mut self,
        resp: &mut ResponseHeader,
        _end_of_stream: bool,
    ) -> pingora::Result<()> {
        resp.insert_header(http::header::STRICT_TRANSPORT_SECURITY, self.0.clone())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// The plain listener of `tls.redirect_listen`: every request is answered `308` to the same path
/// and query on the https origin. Nothing is proxied, nothing is read but the request head.
pub struct RedirectApp {
    /// `https://host[:port]`, from `public_url`.
    pub https_origin: String,
}

#[async_trait]
impl ServeHttp for RedirectApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let target = session
            .req_header()
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| p.starts_with('/'))
            .unwrap_or("/");
        let location = format!("{}{target}", self.https_origin);
        let body = format!("This site is served over HTTPS: {location}\n").into_bytes();
        let mut response = http::Response::new(body);
        *response.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
        let headers = response.headers_mut();
        if let Ok(v) = http::HeaderValue::from_str(&location) {
            headers.insert(http::header::LOCATION, v);
        }
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        let len = response.body().len();
        response
            .headers_mut()
            .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
        response
    }
}
