//! Shared set-up for the integration tests: the PKB simulator and a small upstream on one
//! long-lived runtime, the real `pkb-edge` binary as a child process on ephemeral loopback ports,
//! and pairings seeded through the simulator's real OAuth endpoints.
#![allow(dead_code)]

pub mod nhs;

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Query, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use sha2::{Digest, Sha256};

use pkb_edge::core::clock::SystemClock;
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
        let sim = Simulator::new(SimConfig {
            record_secrets: true,
            ..SimConfig::default()
        });
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
    /// `limits.launch_per_minute`: high by default so that load tests are not limited.
    pub launch_per_minute: u32,
    pub pkb_concurrency: usize,
    /// Where a new process (`run --upgrade`) takes the listening sockets over.
    pub upgrade_sock: PathBuf,
    pub pid_file: PathBuf,
    /// `store.url` when not the SQLite file at `db_path` (a PostgreSQL schema).
    pub store_url: Option<String>,
    /// An `[nhs_login]` table: the proxy then runs in `nhs_login` identity mode.
    pub nhs_login: Option<String>,
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
            launch_per_minute: 6000,
            pkb_concurrency: 256,
            upgrade_sock: dir.path().join("upgrade.sock"),
            pid_file: dir.path().join("pkb-edge.pid"),
            store_url: None,
            nhs_login: None,
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
upgrade_sock = "{upgrade_sock}"
pid_file = "{pid_file}"
[identity]
mode = "{mode}"
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
url = "{store_url}"
keys = "{keys}"
[limits]
launch_per_minute = {per_minute}
pkb_concurrency = {pkb_concurrency}
{nhs}
{extra}
"#,
            per_minute = self.launch_per_minute,
            upgrade_sock = self.upgrade_sock.display(),
            pid_file = self.pid_file.display(),
            pkb_concurrency = self.pkb_concurrency,
            port = self.port,
            upstream = self.upstream,
            peers = peers.join(", "),
            pkb = self.pkb_base,
            timeout = self.timeout_ms,
            skew = self.refresh_skew_secs,
            grace = self.grace_period_seconds,
            state_ttl = self.state_ttl_secs,
            store_url = self.store_url(),
            keys = self.keys,
            extra = self.extra_toml,
            mode = if self.nhs_login.is_some() {
                "nhs_login"
            } else {
                "header"
            },
            nhs = self.nhs_login.as_deref().unwrap_or_default(),
            ops = self
                .ops_port
                .map(|p| format!("ops_listen = \"127.0.0.1:{p}\""))
                .unwrap_or_default(),
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn store_url(&self) -> String {
        self.store_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.db_path.display()))
    }

    /// The store as the proxy sees it, opened from the test process.
    pub async fn pairings(&self) -> Arc<Pairings> {
        let backend = open_backend(&self.store_url()).await.unwrap();
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
    out: PathBuf,
}

impl Proxy {
    pub fn start(dir: &tempfile::TempDir, config: &ProxyConfig) -> Proxy {
        Proxy::try_start(dir, config).unwrap_or_else(|log| panic!("proxy did not start:\n{log}"))
    }

    /// Starts the proxy and waits until it accepts connections; on failure, its log.
    pub fn try_start(dir: &tempfile::TempDir, config: &ProxyConfig) -> Result<Proxy, String> {
        Proxy::spawn(dir, config, &[])
    }

    /// Starts `pkb-edge run` with extra arguments (`--log-format json`). Standard
    /// error (the log, at debug level for pkb-edge) and standard output (the audit log unless
    /// the config names a file) each go to a file in `dir`.
    pub fn spawn(
        dir: &tempfile::TempDir,
        config: &ProxyConfig,
        extra_args: &[&str],
    ) -> Result<Proxy, String> {
        let conf_path = dir.path().join(format!("pkb-edge-{}.toml", config.port));
        std::fs::write(&conf_path, config.toml()).unwrap();
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = dir.path().join(format!("proxy-{}-{n}.log", config.port));
        let out = dir.path().join(format!("proxy-{}-{n}.out", config.port));
        let log_file = std::fs::File::create(&log).unwrap();
        let out_file = std::fs::File::create(&out).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pkb-edge"))
            .args(["run", "--config"])
            .arg(&conf_path)
            .args(extra_args)
            .env("PKB_EDGE_LOG", "info,pkb_edge=debug")
            .stdout(out_file)
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
                    out,
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

    /// Everything the process wrote: standard output (audit lines) and standard error (logs).
    pub fn output(&self) -> String {
        format!("{}\n{}", read_log(&self.out), read_log(&self.log))
    }

    /// The audit lines it wrote to standard output, parsed.
    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        read_log(&self.out)
            .lines()
            .filter(|l| l.contains("\"type\":\"audit\""))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM, then wait for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(30))
    }

    pub fn signal(&self, name: &str) {
        let child = self.child.as_ref().expect("running");
        let _ = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(child.id().to_string())
            .status();
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("proxy did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A graceful upgrade as an operator runs it: a new process with `--upgrade`, then SIGQUIT
    /// to this one once the new one waits for the sockets. Returns the new process, serving.
    pub fn upgrade(&self, dir: &tempfile::TempDir) -> Proxy {
        let sock = &self.config.upgrade_sock;
        let _ = std::fs::remove_file(sock);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = dir
            .path()
            .join(format!("proxy-{}-{n}.log", self.config.port));
        let out = dir
            .path()
            .join(format!("proxy-{}-{n}.out", self.config.port));
        let conf_path = dir
            .path()
            .join(format!("pkb-edge-{}-{n}.toml", self.config.port));
        std::fs::write(&conf_path, self.config.toml()).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pkb-edge"))
            .args(["run", "--upgrade", "--config"])
            .arg(&conf_path)
            .env("PKB_EDGE_LOG", "info,pkb_edge=debug")
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sock.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("new process exited ({status}):\n{}", read_log(&log));
            }
            assert!(
                Instant::now() < deadline,
                "no upgrade socket:\n{}",
                read_log(&log)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self.signal("QUIT");
        while !read_log(&log).contains("pkb-edge starting") {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("new process exited ({status}):\n{}", read_log(&log));
            }
            assert!(
                Instant::now() < deadline,
                "new process not ready:\n{}",
                read_log(&log)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Proxy {
            child: Some(child),
            config: self.config.clone(),
            log,
            out,
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

static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Fails if any secret the simulator issued (codes, access and refresh tokens, OTPs, the client
/// secret) appears in `output`.
pub fn assert_no_secrets(sim: &Sim, output: &str) {
    assert_none_leaked(sim.sim.issued_secrets(), output);
}

/// Fails if any of `secrets` appears in `output`.
pub fn assert_none_leaked(secrets: Vec<String>, output: &str) {
    if secrets.is_empty() {
        return;
    }
    // One pass over the output for all of them (thousands after a load test).
    let matcher = aho_corasick::AhoCorasick::new(&secrets).unwrap();
    let leaks: Vec<aho_corasick::Match> = matcher.find_overlapping_iter(output).collect();
    // Where they leaked, with each secret replaced, so a failure can be diagnosed.
    let lines: std::collections::BTreeSet<String> = leaks
        .iter()
        .take(5)
        .map(|m| {
            let start = output[..m.start()].rfind('\n').map_or(0, |i| i + 1);
            let end = output[m.end()..]
                .find('\n')
                .map_or(output.len(), |i| m.end() + i);
            matcher.replace_all(&output[start..end], &vec!["<SECRET>"; secrets.len()])
        })
        .collect();
    assert!(
        leaks.is_empty(),
        "{} issued secrets appear in pkb-edge's output, e.g. in:\n{}",
        leaks.len(),
        lines.into_iter().collect::<Vec<_>>().join("\n")
    );
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

/// `POST {prefix}/unpair` as `user`, sent the way the site's own page sends it (same-origin).
pub async fn unpair_as(url: String, user: &str) -> reqwest::Response {
    client()
        .post(url)
        .header(USER_HEADER, user)
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap()
}

/// A client like `client()`, connecting from a chosen loopback address (to be a trusted or
/// untrusted peer).
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
        World::start_with_args(adjust, &[])
    }

    /// With extra `pkb-edge run` arguments, e.g. `--log-format json`.
    pub fn start_with_args(adjust: impl FnOnce(&mut ProxyConfig), args: &[&str]) -> World {
        let sim = Sim::start();
        let upstream = Upstream::start();
        let dir = tempfile::tempdir().unwrap();
        let mut config = ProxyConfig::new(&dir, &upstream, &sim);
        adjust(&mut config);
        let proxy = Proxy::spawn(&dir, &config, args)
            .unwrap_or_else(|log| panic!("proxy did not start:\n{log}"));
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
}

/// Every test with a `World` is also a check that nothing the simulator issued leaked into the
/// proxy's logs or audit lines.
impl Drop for World {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert_no_secrets(&self.sim, &self.proxy.output());
        }
    }
}

impl World {
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

/// /pair as `user`, returning PKB's authorize URL.
pub async fn start_pairing(w: &World, user: &str, return_to: Option<&str>) -> String {
    let path = match return_to {
        Some(r) => format!(
            "/_pkb/pair?return_to={}",
            form_urlencoded::byte_serialize(r.as_bytes()).collect::<String>()
        ),
        None => "/_pkb/pair".to_string(),
    };
    let r = w.get_as(user, &path).await;
    assert_eq!(r.status(), 302, "{}", r.text().await.unwrap());
    header(r.headers(), "location").to_string()
}

/// The callback URL PKB sends the browser back to, as a path on the proxy.
pub fn callback_path(w: &World, callback_url: &str) -> String {
    let prefix = w.proxy.url("");
    assert!(
        callback_url.starts_with(&format!("{prefix}/_pkb/callback?")),
        "{callback_url}"
    );
    callback_url[prefix.len()..].to_string()
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

/// What the echo upstream received: the request URI and its headers, in order.
pub async fn upstream_saw(r: reqwest::Response) -> (String, Vec<(String, String)>) {
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    let headers = body["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_string(),
                p[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (body["uri"].as_str().unwrap().to_string(), headers)
}

/// A header's value as text.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}
