//! The ops listener (`/metrics`, `/livez`, `/readyz`): never the public listener, never proxies.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora_prometheus::prometheus::{Encoder, TextEncoder};

use crate::identity::JwtIdentity;
use crate::observe::metrics::metrics;
use crate::store::Pairings;

/// The ops listener's application.
pub struct OpsApp {
    pub pairings: Arc<Pairings>,
    /// jwt mode: not ready until its keys have been loaded once.
    pub jwt: Option<Arc<JwtIdentity>>,
}

fn plain(status: u16, content_type: &str, body: Vec<u8>) -> http::Response<Vec<u8>> {
    let mut response = http::Response::new(body);
    *response.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    let len = response.body().len();
    response
        .headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    response
}

#[async_trait]
impl ServeHttp for OpsApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/metrics" => {
                metrics();
                let encoder = TextEncoder::new();
                let mut buffer = Vec::new();
                match encoder.encode(&pingora_prometheus::prometheus::gather(), &mut buffer) {
                    Ok(()) => plain(200, encoder.format_type(), buffer),
                    Err(e) => plain(
                        500,
                        "text/plain",
                        format!("metrics could not be encoded: {e}\n").into_bytes(),
                    ),
                }
            }
            "/livez" => plain(200, "text/plain", b"live\n".to_vec()),
            "/readyz" if self.jwt.as_ref().is_some_and(|j| !j.keys_loaded()) => plain(
                503,
                "text/plain",
                b"not ready: the identity provider's keys have not been loaded yet\n".to_vec(),
            ),
            "/readyz" => match tokio::time::timeout(Duration::from_secs(2), self.pairings.ping())
                .await
            {
                Ok(Ok(())) => plain(200, "text/plain", b"ready\n".to_vec()),
                Ok(Err(e)) => plain(503, "text/plain", format!("not ready: {e}\n").into_bytes()),
                Err(_) => plain(
                    503,
                    "text/plain",
                    b"not ready: the token store did not answer within 2 s\n".to_vec(),
                ),
            },
            _ => plain(
                404,
                "text/plain",
                b"not found: /metrics, /livez, /readyz\n".to_vec(),
            ),
        }
    }
}
