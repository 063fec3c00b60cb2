//! Shared set-up for the integration tests: the PKB simulator and a small upstream on one
//! long-lived runtime, the real `pkb-edge` binary as a child process on ephemeral loopback ports,
//! and pairings seeded through the simulator's real OAuth endpoints.
#![allow(dead_code)]

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Query, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use sha2::{Digest, Sha256};

use pkb_edge::clock::SystemClock;
use pkb_edge::sim::{SimConfig, Simulator};
use pkb_edge::store::crypto::Keyring;
use pkb_edge::store::{open_backend, Pairing, Pairings, TokenSet};

pub const CLIENT_ID: &str = "pkb-edge";
pub const CLIENT_SECRET: &str = "sim-secret";
pub const USER_HEADER: &str = "X-Authenticated-User";

/// One runtime for every server a test binary starts (servers must outlive each test's futures).
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("test runtime")
    })
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running simulator.
pub struct Sim {
    pub sim: Arc<Simulator>,
    pub addr: SocketAddr,
}

impl Sim {
    pub fn start() -> Sim {
        let sim = Simulator::new(SimConfig::default());
        let listener = rt()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        rt().spawn(sim.clone().serve(listener));
        Sim { sim, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn count(&self, endpoint: &str) -> u64 {
        self.sim.count(endpoint)
    }

    pub fn knobs(&self, knobs: serde_json::Value) {
        self.sim.set_knobs(serde_json::from_value(knobs).unwrap());
    }

    /// Real PKB tokens for `pkb_user`, through the simulator's OAuth endpoints.
    pub async fn tokens_for(&self, pkb_user: &str) -> TokenSet {
        pkb_edge::sim::obtain_tokens(&self.url(), CLIENT_ID, CLIENT_SECRET, pkb_user)
            .await
            .unwrap()
    }

    /// Uses a refresh token directly at the simulator, as another party would.
    pub async fn spend_refresh_token(&self, refresh_token: &str) -> StatusCode {
        let r = client()
            .post(format!("{}/apiToken.action", self.url()))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ])
            .send()
            .await
            .unwrap();
        StatusCode::from_u16(r.status().as_u16()).unwrap()
    }
}

/// A small upstream standing in for the EHR.
pub struct Upstream {
    pub addr: SocketAddr,
}

async fn echo(Query(q): Query<Vec<(String, String)>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
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
            _ => {}
        }
    }
    response
}

/// Deterministic bytes: byte i is (i * 7 + 3) mod 251.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + 3) % 251) as u8).collect()
}

async fn big(Query(q): Query<std::collections::HashMap<String, usize>>) -> Response {
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

async fn slow(Query(q): Query<std::collections::HashMap<String, u64>>) -> &'static str {
    tokio::time::sleep(Duration::from_millis(q.get("ms").copied().unwrap_or(500))).await;
    "slow done"
}

impl Upstream {
    pub fn start() -> Upstream {
        let app = Router::new()
            .route("/big", get(big))
            .route("/slow", get(slow))
            .fallback(any(echo));
        let listener = rt()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        rt().spawn(async move { axum::serve(listener, app).await });
        Upstream { addr }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A test's proxy settings; `toml()` renders the config file.
#[derive(Clone)]
pub struct ProxyConfig {
    pub port: u16,
    pub upstream: SocketAddr,
    pub pkb_base: String,
    pub db_path: PathBuf,
    pub keys: String,
    pub trusted_peers: Vec<String>,
    pub timeout_ms: u64,
    pub refresh_skew_secs: i64,
    pub grace_period_seconds: u64,
    pub state_ttl_secs: i64,
    /// Appended to the config file as is (e.g. a `[decorate]` table).
    pub extra_toml: String,
    /// Serve `/metrics`, `/livez`, `/readyz` on this port.
    pub ops_port: Option<u16>,
}

impl ProxyConfig {
    pub fn new(dir: &tempfile::TempDir, upstream: &Upstream, sim: &Sim) -> ProxyConfig {
        ProxyConfig {
            port: free_port(),
            upstream: upstream.addr,
            pkb_base: sim.url(),
            db_path: dir.path().join("pairings.db"),
            keys: Keyring::generate_line("k1"),
            trusted_peers: vec!["127.0.0.1/32".into()],
            timeout_ms: 3000,
            refresh_skew_secs: 60,
            grace_period_seconds: 1,
            state_ttl_secs: 600,
            extra_toml: String::new(),
            ops_port: None,
        }
    }

    pub fn toml(&self) -> String {
        let peers: Vec<String> = self
            .trusted_peers
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect();
        format!(
            r#"
{ops}
listen = "127.0.0.1:{port}"
upstream = "http://{upstream}"
public_url = "http://127.0.0.1:{port}"
[server]
threads = 2
grace_period_seconds = {grace}
graceful_shutdown_timeout_seconds = 5
[identity]
mode = "header"
header = "{USER_HEADER}"
trusted_peers = [{peers}]
[pkb]
base_url = "{pkb}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
timeout_ms = {timeout}
refresh_skew_secs = {skew}
state_ttl_secs = {state_ttl}
[store]
url = "sqlite://{db}"
keys = "{keys}"
{extra}
"#,
            port = self.port,
            upstream = self.upstream,
            peers = peers.join(", "),
            pkb = self.pkb_base,
            timeout = self.timeout_ms,
            skew = self.refresh_skew_secs,
            grace = self.grace_period_seconds,
            state_ttl = self.state_ttl_secs,
            db = self.db_path.display(),
            keys = self.keys,
            extra = self.extra_toml,
            ops = self
                .ops_port
                .map(|p| format!("ops_listen = \"127.0.0.1:{p}\""))
                .unwrap_or_default(),
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The store as the proxy sees it, opened from the test process.
    pub async fn pairings(&self) -> Arc<Pairings> {
        let backend = open_backend(&format!("sqlite://{}", self.db_path.display()))
            .await
            .unwrap();
        let keyring = Keyring::parse(&self.keys).unwrap();
        Arc::new(
            Pairings::open(
                backend,
                keyring,
                10,
                Duration::from_secs(1),
                Arc::new(SystemClock),
            )
            .await
            .unwrap(),
        )
    }

    /// Pairs `user` with the PKB account `pkb_user` through the simulator's OAuth endpoints.
    pub async fn pair(&self, sim: &Sim, user: &str, pkb_user: &str) -> Arc<Pairing> {
        let tokens = sim.tokens_for(pkb_user).await;
        self.pairings().await.save(user, tokens).await.unwrap()
    }

    pub async fn stored(&self, user: &str) -> Option<Arc<Pairing>> {
        self.pairings().await.get(user).await.unwrap()
    }
}

/// The real binary, running `pkb-edge run`.
pub struct Proxy {
    child: Option<Child>,
    pub config: ProxyConfig,
    log: PathBuf,
}

impl Proxy {
    pub fn start(dir: &tempfile::TempDir, config: &ProxyConfig) -> Proxy {
        Proxy::try_start(dir, config).unwrap_or_else(|log| panic!("proxy did not start:\n{log}"))
    }

    /// Starts the proxy and waits until it accepts connections; on failure, its log.
    pub fn try_start(dir: &tempfile::TempDir, config: &ProxyConfig) -> Result<Proxy, String> {
        let conf_path = dir.path().join(format!("pkb-edge-{}.toml", config.port));
        std::fs::write(&conf_path, config.toml()).unwrap();
        let log = dir.path().join(format!("proxy-{}.log", config.port));
        let log_file = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pkb-edge"))
            .args(["run", "--config"])
            .arg(&conf_path)
            .env("PKB_EDGE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return Err(read_log(&log));
            }
            if std::net::TcpStream::connect(("127.0.0.1", config.port)).is_ok() {
                return Ok(Proxy {
                    child: Some(child),
                    config: config.clone(),
                    log,
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!("not listening after 30 s\n{}", read_log(&log)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        self.config.url(path)
    }

    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// SIGTERM, then wait for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("proxy did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn read_log(path: &PathBuf) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// An HTTP client that does not follow redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The same, connecting from a chosen loopback address (to be a trusted or untrusted peer).
pub fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// Everything one test needs: simulator, upstream, a temp dir and a running proxy.
pub struct World {
    pub sim: Sim,
    pub upstream: Upstream,
    pub dir: tempfile::TempDir,
    pub proxy: Proxy,
}

impl World {
    pub fn start() -> World {
        World::start_with(|_| {})
    }

    pub fn start_with(adjust: impl FnOnce(&mut ProxyConfig)) -> World {
        let sim = Sim::start();
        let upstream = Upstream::start();
        let dir = tempfile::tempdir().unwrap();
        let mut config = ProxyConfig::new(&dir, &upstream, &sim);
        adjust(&mut config);
        let proxy = Proxy::start(&dir, &config);
        World {
            sim,
            upstream,
            dir,
            proxy,
        }
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.proxy.config
    }

    /// GET a proxy path as `user` (from a trusted peer).
    pub async fn get_as(&self, user: &str, path: &str) -> reqwest::Response {
        client()
            .get(self.proxy.url(path))
            .header(USER_HEADER, user)
            .send()
            .await
            .unwrap()
    }
}

/// Plays the person at PKB's consent page: loads it, then answers `decision` ("allow" or "deny")
/// as `pkb_user`. Returns where PKB sends the browser back to (the callback URL).
pub async fn consent_at_pkb(authorize_url: &str, pkb_user: &str, decision: &str) -> String {
    let http = client();
    let page = http.get(authorize_url).send().await.unwrap();
    assert_eq!(page.status(), 200, "PKB's consent page");
    let url = url::Url::parse(authorize_url).unwrap();
    let mut form: Vec<(String, String)> = url
        .query_pairs()
        .into_owned()
        .filter(|(k, _)| k != "response_type")
        .collect();
    form.push(("decision".into(), decision.into()));
    form.push(("pkb_user".into(), pkb_user.into()));
    let action = format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap(),
        url.port().map(|p| format!(":{p}")).unwrap_or_default()
    );
    let answer = http
        .post(format!("{action}{}", url.path()))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert!(
        answer.status().is_redirection(),
        "consent answers with a redirect"
    );
    header(answer.headers(), "location").to_string()
}

/// Follows a launch's redirect to the simulator's OTP login, as a browser would, and reads who
/// PKB signed in and with what context.
pub async fn landing_of(launch: &reqwest::Response) -> pkb_edge::sim::LoginView {
    client()
        .get(header(launch.headers(), "location"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A header's value as text.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}
