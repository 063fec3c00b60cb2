//! A small upstream standing in for the EHR: it echoes each request as JSON (method, URI,
//! headers, the body's length and digest), with a status and response headers chosen by query
//! parameters, and serves `/big` (a large streamed body) and `/slow` (a late answer).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Extension, Router};
use sha2::{Digest, Sha256};

use super::rt;

/// A small upstream standing in for the EHR.
pub struct Upstream {
    pub addr: SocketAddr,
    /// The target (path and query) of every request the echo answered, in order.
    seen: Seen,
}

type Seen = Arc<Mutex<Vec<String>>>;

impl Upstream {
    pub fn start() -> Upstream {
        let (seen, app, listener, addr) = Upstream::parts();
        rt().spawn(async move { axum::serve(listener, app).await });
        Upstream { addr, seen }
    }

    /// The same echo over HTTPS with `config` (an upstream EHR with its own certificate, and
    /// perhaps a demand for client certificates).
    pub fn start_tls(config: Arc<rustls::ServerConfig>) -> Upstream {
        let (seen, app, listener, addr) = Upstream::parts();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let tls = {
            let _in_runtime = rt().enter();
            pkb_edge::demo::tls::TlsListener::spawn(listener, acceptor).unwrap()
        };
        rt().spawn(async move { axum::serve(tls, app).await });
        Upstream { addr, seen }
    }

    /// The echo's record, its app and a loopback listener for it.
    fn parts() -> (Seen, Router, tokio::net::TcpListener, SocketAddr) {
        let seen = Seen::default();
        let app = Router::new()
            .route("/big", get(big))
            .route("/slow", get(slow))
            .fallback(any(echo))
            .layer(Extension(seen.clone()));
        let listener = rt()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        (seen, app, listener, addr)
    }

    /// The target of every request the echo has answered so far.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

async fn echo(
    Extension(seen): Extension<Seen>,
    Query(q): Query<Vec<(String, String)>>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    seen.lock().unwrap().push(parts.uri.to_string());
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let status = q
        .iter()
        .find(|(k, _)| k == "status")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(200u16);
    let body = serde_json::json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "headers": headers,
        "body_len": bytes.len(),
        "body_sha256": hex(&Sha256::digest(&bytes)),
    });
    let mut response = (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
    let h = response.headers_mut();
    h.insert("x-upstream", "echo".parse().unwrap());
    h.append("set-cookie", "a=1; Path=/".parse().unwrap());
    h.append("set-cookie", "b=2; Path=/".parse().unwrap());
    if status == 302 {
        h.insert("location", "/elsewhere".parse().unwrap());
    }
    for (k, v) in &q {
        match k.as_str() {
            "cc" => {
                h.insert("cache-control", v.parse().unwrap());
            }
            "vary" => {
                h.insert("vary", v.parse().unwrap());
            }
            "forge" => {
                h.insert("x-pkb-data-available", v.parse().unwrap());
            }
            "gp_invalid" => {
                h.insert("x-gp-credentials-invalid", v.parse().unwrap());
            }
            _ => {}
        }
    }
    response
}

/// Deterministic bytes: byte i is (i * 7 + 3) mod 251.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + 3) % 251) as u8).collect()
}

async fn big(Query(q): Query<HashMap<String, usize>>) -> Response {
    let len = q.get("bytes").copied().unwrap_or(1 << 20);
    let data = pattern(len);
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = data
        .chunks(64 * 1024)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    Body::from_stream(futures_stream(chunks)).into_response()
}

fn futures_stream(
    chunks: Vec<Result<bytes::Bytes, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    tokio_stream::iter(chunks)
}

async fn slow(Query(q): Query<HashMap<String, u64>>) -> &'static str {
    tokio::time::sleep(Duration::from_millis(q.get("ms").copied().unwrap_or(500))).await;
    "slow done"
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
