//! The launch path and passthrough, against the floor and against nginx, in one run.
//!
//! Everything on loopback: the PKB simulator (no added latency) and a small upstream in this
//! process; the release `pkb-edge` binary (one instance per variant that needs its own store or
//! settings); nginx as a plain forwarding hop when it is installed; and wrk, one load generator
//! for every variant. Pairings used by launches are seeded through the simulator's real OAuth
//! endpoints; the rows that only fill the big stores are bulk-loaded with made-up tokens.
//!
//! Load is closed-loop at fixed concurrency (wrk: N keep-alive connections, each sends its next
//! request when the last answer is in). Latency is each request's own time from send to answer;
//! with a fixed number of requests in flight there is no arrival schedule to fall behind, so
//! there is no omitted latency to correct for. What this does not measure is latency at a fixed
//! arrival rate above the saturation point (an open-loop test); the throughput columns say where
//! that point is.
//!
//! Run: `cargo bench --bench edge` (needs wrk; nginx is optional: `scripts/setup.sh --bench`
//! installs both). `PKB_EDGE_BENCH_SECS` (default 5) sets each measurement's length,
//! `PKB_EDGE_BENCH_BIG` (default 1000000, at least 100000) the size of the largest store, and
//! `PKB_EDGE_BENCH_CONCURRENCY` (default `1,16,64,256`) the levels, and `PKB_EDGE_BENCH_ONLY`
//! (comma-separated substrings of variant names, e.g. `launch via`) a subset to run;
//! `PKB_EDGE_BENCH_BIN` runs another pkb-edge binary instead, and `PKB_EDGE_BENCH_OLD_BIN` runs an older
//! build beside this one (rows marked "(old)") for an A/B comparison in one run. It also measures
//! the memory an idle keep-alive connection costs (2,000 of them), here and in bare Pingora.
//! HTTPS: pkb-edge with an ECDSA P-256 certificate against nginx serving the same one (keep-alive
//! small pages), and the handshake rate (one request per connection: ECDSA and RSA 2048, nginx,
//! and plain connections for the cost of a connection without TLS). Results:
//! `target/bench/edge.json`, and a table with the ratios on standard output.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;

use pkb_edge::core::clock::{Clock, SystemClock};
use pkb_edge::core::secret::{AccessToken, RefreshToken};
use pkb_edge::sim::{obtain_tokens, SimConfig, Simulator};
use pkb_edge::store::crypto::Keyring;
use pkb_edge::store::{open_backend, Pairings, TokenSet};

#[path = "../tests/common/process.rs"]
mod process;
#[path = "edge/tls.rs"]
mod tls;

use process::{free_port, wait_listening, Killed};

/// How long a process (pkb-edge, nginx, bare Pingora) may take to listen.
const STARTUP: Duration = Duration::from_secs(60);
const HOT_USER: &str = "hot.user";
/// Users with real tokens in the big stores, spread evenly over their id space.
const COLD_REAL: usize = 2_000;
/// Users with a lapsed token, per second of each concurrency level: each refresh launch takes
/// the next one (and a wrk thread every other one), so every launch refreshes.
const REFRESH_USERS_PER_SEC: usize = 15_000;
const SMALL: &str = "/page/small";
const LARGE: &str = "/page/large";
const PATIENT_PAGE: &str = "/patients/9990000018";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A pkb-edge instance: its process, port and start-up time.
struct Edge {
    process: Killed,
    port: u16,
    startup: Duration,
    /// The pkb-edge binary it runs (bare Pingora: this bench).
    binary: String,
    https: bool,
}

impl Edge {
    fn start(
        dir: &Path,
        name: &str,
        db: &Path,
        keys: &str,
        settings: Settings,
        common: &Common,
    ) -> Edge {
        let port = free_port();
        let ops = free_port();
        let config = format!(
            r#"listen = "127.0.0.1:{port}"
ops_listen = "127.0.0.1:{ops}"
upstream = "http://{upstream}"
public_url = "{scheme}://127.0.0.1:{port}"
[server]
threads = {threads}
grace_period_seconds = 0
{server_extra}
[identity]
{identity}
[pkb]
base_url = "{sim}"
client_id = "pkb-edge"
client_secret = "sim-secret"
refresh_skew_secs = {skew}
[store]
url = "sqlite://{db}"
keys = "{keys}"
cache_capacity = {cache}
[limits]
launch_per_minute = 0
pkb_concurrency = 4096
[audit]
file = "{audit}"
{extra}
{tls}
"#,
            scheme = if settings.tls.is_empty() {
                "http"
            } else {
                "https"
            },
            tls = settings.tls,
            upstream = common.upstream,
            sim = common.sim_url,
            db = db.display(),
            audit = dir.join(format!("{name}-audit.log")).display(),
            skew = settings.refresh_skew,
            cache = settings.cache_capacity,
            extra = settings.extra,
            identity = settings.identity,
            // For experiments: more `[server]` keys, e.g. `work_stealing = false`.
            server_extra = std::env::var("PKB_EDGE_BENCH_SERVER").unwrap_or_default(),
            threads = env_or("PKB_EDGE_BENCH_THREADS", 2),
        );
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        // `PKB_EDGE_BENCH_BIN`: another pkb-edge binary (an older build, for an A/B run).
        let binary = settings.binary.map(str::to_string).unwrap_or_else(|| {
            std::env::var("PKB_EDGE_BENCH_BIN")
                .unwrap_or_else(|_| env!("CARGO_BIN_EXE_pkb-edge").to_string())
        });
        let child = Command::new(&binary)
            .args(["run", "--config"])
            .arg(&path)
            .env("PKB_EDGE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let startup = wait_listening(port, name, STARTUP);
        Edge {
            process: Killed(child),
            port,
            startup,
            binary,
            https: !settings.tls.is_empty(),
        }
    }

    fn url(&self, path: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }

    fn pids(&self) -> Vec<u32> {
        vec![self.process.0.id()]
    }

    /// (resident now, peak resident) in MB, from /proc.
    fn rss_mb(&self) -> (f64, f64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.process.0.id())).unwrap();
        let kb = |key: &str| -> f64 {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
    }

    /// What `IDLE_CONNECTIONS` keep-alive connections cost while idle, each after one request
    /// for `path` (over TLS with `tls`: a handshake first), and what is still resident once
    /// they have closed.
    fn idle_memory(
        &self,
        path: &str,
        tls: Option<&tokio_rustls::TlsConnector>,
        rt: &tokio::runtime::Runtime,
    ) -> IdleMemory {
        use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
        trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
        impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}
        let before = self.rss_mb().0;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: bench\r\nX-Authenticated-User: {HOT_USER}\r\n\r\n"
        );
        let port = self.port;
        let open: Vec<Box<dyn Conn>> = rt.block_on(async {
            let mut open = Vec::with_capacity(IDLE_CONNECTIONS);
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            for _ in 0..IDLE_CONNECTIONS {
                let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .unwrap();
                let mut conn: Box<dyn Conn> = match tls {
                    Some(tls) => Box::new(tls.connect(name.clone(), tcp).await.unwrap()),
                    None => Box::new(tcp),
                };
                conn.write_all(request.as_bytes()).await.unwrap();
                // Small answers: the whole of one arrives before the blank line is found.
                let mut got = Vec::new();
                let mut buf = [0; 8192];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = conn.read(&mut buf).await.unwrap();
                    assert!(n > 0, "closed before answering");
                    got.extend_from_slice(&buf[..n]);
                }
                open.push(conn);
            }
            open
        });
        std::thread::sleep(Duration::from_millis(500));
        let with = self.rss_mb().0;
        rt.block_on(async move { drop(open) });
        std::thread::sleep(Duration::from_secs(2));
        let after = self.rss_mb().0;
        IdleMemory {
            per_connection_kb: (with - before) * 1024.0 / IDLE_CONNECTIONS as f64,
            before_mb: before,
            with_mb: with,
            after_close_mb: after,
        }
    }
}

/// Full TLS handshakes per second (`openssl s_time -new` for `secs`) and the server's CPU µs per
/// handshake, measured on `pids`; None without openssl.
fn full_handshakes(port: u16, secs: u64, pids: &[u32]) -> Option<(f64, f64)> {
    let before = cpu_seconds(pids);
    let out = Command::new("openssl")
        .args(["s_time", "-connect", &format!("127.0.0.1:{port}"), "-new"])
        .args(["-time", &secs.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let cpu = cpu_seconds(pids) - before;
    // "1234 connections in 6 real seconds, 567 bytes read per connection"
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("real seconds"))?;
    let mut words = line.split_whitespace();
    let count: f64 = words.next()?.parse().ok()?;
    let real: f64 = words.nth(2)?.parse().ok()?;
    (count > 0.0).then(|| (count / real.max(1.0), cpu * 1e6 / count))
}

/// Idle keep-alive connections held open for the memory measurement.
const IDLE_CONNECTIONS: usize = 2_000;

#[derive(Debug, Clone, serde::Serialize)]
struct IdleMemory {
    per_connection_kb: f64,
    before_mb: f64,
    with_mb: f64,
    after_close_mb: f64,
}

/// What differs between the instances.
#[derive(Clone, Copy)]
struct Settings {
    /// 1: (nearly) every launch reads and decrypts its row.
    cache_capacity: u64,
    /// Longer than the token lifetime: every launch refreshes.
    refresh_skew: i64,
    extra: &'static str,
    /// The `[identity]` table's keys.
    identity: &'static str,
    /// Another pkb-edge binary than this build's (`PKB_EDGE_BENCH_BIN`, or the A/B run's older
    /// build from `PKB_EDGE_BENCH_OLD_BIN`).
    binary: Option<&'static str>,
    /// A `[tls]` table: the listener speaks HTTPS.
    tls: &'static str,
}

const DEFAULTS: Settings = Settings {
    cache_capacity: 100_000,
    refresh_skew: 60,
    extra: "",
    identity: "trusted_peers = [\"127.0.0.1/32\"]",
    binary: None,
    tls: "",
};

struct Common {
    upstream: SocketAddr,
    sim_url: String,
}

/// nginx as a plain forwarding hop: one port to the upstream, one to the simulator.
struct Nginx {
    master: Option<Child>,
    upstream_port: u16,
    sim_port: u16,
    /// HTTPS to the upstream, with the certificate pkb-edge's https variant serves.
    tls_port: u16,
}

impl Nginx {
    fn start(dir: &Path, upstream: SocketAddr, sim: SocketAddr, tls: &tls::Pair) -> Option<Nginx> {
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())?;
        let (upstream_port, sim_port, tls_port) = (free_port(), free_port(), free_port());
        let https = tls::nginx_server(tls_port, tls);
        let prefix = dir.join("nginx");
        std::fs::create_dir_all(prefix.join("logs")).unwrap();
        let conf = format!(
            r#"worker_processes 2;
daemon off;
pid {pid};
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    # pkb-edge has no limit on requests per keep-alive connection; neither does nginx here.
    keepalive_requests 1000000;
    upstream app {{ server {upstream}; keepalive 256; }}
    upstream pkb {{ server {sim}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{upstream_port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
        }}
    }}
    server {{
        listen 127.0.0.1:{sim_port};
        location / {{
            proxy_pass http://pkb;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}{https}
}}
"#,
            pid = prefix.join("nginx.pid").display(),
            prefix = prefix.display(),
        );
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(binary)
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        wait_listening(upstream_port, "nginx", STARTUP);
        wait_listening(sim_port, "nginx", STARTUP);
        wait_listening(tls_port, "nginx", STARTUP);
        Some(Nginx {
            master: Some(child),
            upstream_port,
            sim_port,
            tls_port,
        })
    }
}

impl Nginx {
    /// The master and its workers.
    fn pids(&self) -> Vec<u32> {
        let Some(master) = self.master.as_ref().map(Child::id) else {
            return Vec::new();
        };
        let mut pids = vec![master];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
                continue;
            };
            if stat_fields(pid)
                .is_some_and(|f| f.get(1).map(String::as_str) == Some(&master.to_string()))
            {
                pids.push(pid);
            }
        }
        pids
    }
}

/// SIGKILL would leave the workers running: SIGTERM asks the master to stop them first.
impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut master) = self.master.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &master.id().to_string()])
                .status();
            let _ = master.wait();
        }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
struct Measured {
    rps: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    requests: u64,
    /// Answers outside 2xx/3xx, and socket errors.
    errors: u64,
    /// CPU time (user + system) the proxy in the path spent per request, in µs.
    proxy_cpu_us: Option<f64>,
}

/// CPU time (user + system) these processes have used, in seconds, from /proc.
fn cpu_seconds(pids: &[u32]) -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    });
    let used: u64 = pids
        .iter()
        .filter_map(|pid| stat_fields(*pid))
        .map(|f| {
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            n(11) + n(12) // utime, stime
        })
        .sum();
    used as f64 / ticks
}

/// The fields of /proc/PID/stat after the command name: state, ppid, …
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// wrk's duration text (`812.00us`, `1.23ms`, `2.00s`) in milliseconds.
fn millis(text: &str) -> f64 {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (text, 1.0)
    };
    number.parse::<f64>().unwrap_or(f64::NAN) * factor
}

fn parse_wrk(out: &str) -> Measured {
    let mut m = Measured::default();
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Latency", _avg, _stdev, max, ..] => m.max_ms = millis(max),
            ["50%", v] => m.p50_ms = millis(v),
            ["90%", v] => m.p90_ms = millis(v),
            ["99%", v] => m.p99_ms = millis(v),
            ["Requests/sec:", v] => m.rps = v.parse().unwrap_or(0.0),
            [n, "requests", "in", ..] => m.requests = n.parse().unwrap_or(0),
            ["Non-2xx", "or", "3xx", "responses:", n] => m.errors += n.parse::<u64>().unwrap_or(0),
            ["Socket", "errors:", rest @ ..] => {
                m.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    m
}

/// One wrk run: `connections` at once for `secs`, requests shaped by a Lua `script`.
fn wrk(url: &str, connections: usize, secs: u64, script: &Path) -> Measured {
    let threads = connections.min(2);
    let out = Command::new("wrk")
        .args([
            "--latency",
            "-t",
            &threads.to_string(),
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{secs}s"),
            "--timeout",
            "10s",
            "-s",
        ])
        .arg(script)
        .arg(url)
        .output()
        .expect("wrk runs (install it: scripts/setup.sh --bench)");
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

/// A wrk script: fixed method, path and headers; or a random user out of `users` per request
/// (`%d` in the user pattern is replaced by a number from the list's generator).
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(format!("{name}.lua"));
    std::fs::write(&path, body).unwrap();
    path
}

fn fixed(dir: &Path, name: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> PathBuf {
    let headers: Vec<String> = headers
        .iter()
        .map(|(k, v)| format!("wrk.headers[\"{k}\"] = \"{v}\""))
        .collect();
    script(
        dir,
        name,
        &format!(
            "wrk.method = \"{method}\"\nwrk.path = \"{path}\"\n{}\n",
            headers.join("\n")
        ),
    )
}

/// Each request as a user no request of this script has used, in any of its runs: wrk's threads
/// (at most 2) take every other number from where the last run stopped (kept in a file).
fn fresh_users(dir: &Path, name: &str, path: &str, prefix: &str) -> PathBuf {
    let counter = dir.join(format!("{name}.next"));
    script(
        dir,
        name,
        &format!(
            r#"local counter = "{counter}"
local start, threads = nil, 0
function setup(thread)
  if start == nil then
    start = 0
    local f = io.open(counter, "r")
    if f then start = tonumber(f:read("*a")) or 0; f:close() end
  end
  thread:set("next_user", start + threads)
  threads = threads + 1
end
function request()
  local n = next_user
  next_user = next_user + 2
  return wrk.format("GET", "{path}", {{["X-Authenticated-User"] = string.format("{prefix}%07d", n)}})
end
function done(summary, latency, requests)
  local f = io.open(counter, "w")
  f:write(tostring(start + 2 * (summary.requests + 1024)))
  f:close()
end
"#,
            counter = counter.display()
        ),
    )
}

/// Each request as a user chosen at random: `prefix` followed by `index * step` in 7 digits.
fn random_users(
    dir: &Path,
    name: &str,
    path: &str,
    prefix: &str,
    count: usize,
    step: usize,
) -> PathBuf {
    script(
        dir,
        name,
        &format!(
            "math.randomseed(os.time())\nrequest = function()\n  local n = math.random(0, {last}) * {step}\n  return wrk.format(\"GET\", \"{path}\", {{[\"X-Authenticated-User\"] = string.format(\"{prefix}%07d\", n)}})\nend\n",
            last = count - 1
        ),
    )
}

fn user(prefix: &str, n: usize) -> String {
    format!("{prefix}{n:07}")
}

async fn open_store(db: &Path, keys: &str) -> Arc<Pairings> {
    let backend = open_backend(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    Arc::new(
        Pairings::open(
            backend,
            Keyring::parse(keys).unwrap(),
            10,
            Duration::from_secs(60),
            Arc::new(SystemClock),
        )
        .await
        .unwrap(),
    )
}

/// Tokens for `n` PKB accounts, through the simulator's real authorize and token endpoints.
async fn real_tokens(sim_url: &str, prefix: &str, n: usize) -> Vec<TokenSet> {
    let mut out = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(32) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|i| {
                let sim_url = sim_url.to_string();
                let account = format!("{prefix}{i}@pkb.example");
                tokio::spawn(async move {
                    obtain_tokens(&sim_url, "pkb-edge", "sim-secret", &account)
                        .await
                        .unwrap()
                })
            })
            .collect();
        for t in tasks {
            out.push(t.await.unwrap());
        }
    }
    out
}

/// A store of `size` pairings, `prefix0000000`…: every `size / real.len()`-th user has real
/// tokens, the rest made-up ones (they decrypt, but PKB would not know them).
async fn big_store(db: &Path, keys: &str, prefix: &str, size: usize, real: &[TokenSet]) {
    let store = open_store(db, keys).await;
    let step = size / real.len();
    let fake = |n: usize| TokenSet {
        access_token: AccessToken::new(format!("filler-access-{n:07}-xxxxxxxxxxxxxxxx")),
        refresh_token: Some(RefreshToken::new(format!(
            "filler-refresh-{n:07}-xxxxxxxxxxxxxx"
        ))),
        access_expires_at: 4_000_000_000,
    };
    let mut batch = Vec::with_capacity(50_000);
    for n in 0..size {
        let tokens = if n % step == 0 && n / step < real.len() {
            real[n / step].clone()
        } else {
            fake(n)
        };
        batch.push((user(prefix, n), tokens));
        if batch.len() == 50_000 {
            store.import_tokens(&batch).await.unwrap();
            batch.clear();
        }
    }
    store.import_tokens(&batch).await.unwrap();
}

/// A Pingora proxy with no logic at all (default settings, `threads` as pkb-edge's): what any
/// proxy built on Pingora costs on this machine, the floor for pkb-edge's passthrough. It runs
/// in a copy of this bench binary started with `BARE_PINGORA` = `LISTEN|UPSTREAM`.
struct BarePingora {
    upstream: SocketAddr,
}

const BARE_PINGORA: &str = "PKB_EDGE_BENCH_BARE_PINGORA";

#[async_trait::async_trait]
impl pingora::proxy::ProxyHttp for BarePingora {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut pingora::proxy::Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<pingora::upstreams::peer::HttpPeer>> {
        Ok(Box::new(pingora::upstreams::peer::HttpPeer::new(
            self.upstream,
            false,
            String::new(),
        )))
    }
}

fn run_bare_pingora(spec: &str) -> ! {
    let (listen, upstream) = spec.split_once('|').expect("LISTEN|UPSTREAM");
    let conf = pingora::server::configuration::ServerConf {
        threads: env_or("PKB_EDGE_BENCH_THREADS", 2),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..Default::default()
    };
    let mut server = pingora::server::Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = pingora::proxy::http_proxy_service(
        &server.configuration,
        BarePingora {
            upstream: upstream.parse().expect("upstream address"),
        },
    );
    service.add_tcp(listen);
    server.add_service(service);
    server.run_forever()
}

/// The bare Pingora proxy, started as a child process.
fn start_bare_pingora(upstream: SocketAddr) -> Edge {
    let port = free_port();
    let child = Command::new(std::env::current_exe().unwrap())
        .env(BARE_PINGORA, format!("127.0.0.1:{port}|{upstream}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let startup = wait_listening(port, "bare Pingora", STARTUP);
    Edge {
        process: Killed(child),
        port,
        startup,
        binary: "bare Pingora".into(),
        https: false,
    }
}

/// pkb-edge in jwt mode (Pomerium's preset, the key from a file) and an ES256 assertion it
/// accepts, valid for two hours: after the first request, each one costs a hash and a cache hit.
fn start_jwt_edge(d: &Path, keys: &str, common: &Common) -> (Edge, String) {
    let key = pkb_edge::core::ec_keys::EcSigningKey::generate().unwrap();
    let pem = d.join("jwt-keys.pem");
    std::fs::write(&pem, key.public_pem()).unwrap();
    let identity = format!(
        "mode = \"jwt\"\npreset = \"pomerium\"\npublic_keys_file = \"{}\"\nissuer = \"bench-idp\"\naudience = [\"bench\"]",
        pem.display()
    );
    let settings = Settings {
        identity: Box::leak(identity.into_boxed_str()),
        ..DEFAULTS
    };
    let edge = Edge::start(d, "jwt", &d.join("jwt.db"), keys, settings, common);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({"iss": "bench-idp", "aud": "bench", "iat": now,
        "exp": now + 7200, "email": HOT_USER, "sub": HOT_USER});
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("bench".into());
    let token = jsonwebtoken::encode(&header, &claims, key.encoding_key()).unwrap();
    (edge, token)
}

fn main() {
    if let Ok(spec) = std::env::var(BARE_PINGORA) {
        run_bare_pingora(&spec);
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("edge bench: wrk is not installed (scripts/setup.sh --bench installs wrk and nginx); skipped");
        return;
    }
    let secs: u64 = env_or("PKB_EDGE_BENCH_SECS", 5);
    // The cold launches spread over COLD_REAL users with real tokens among the filler rows.
    let big: usize = env_or("PKB_EDGE_BENCH_BIG", 1_000_000).max(100_000);
    let levels: Vec<usize> = std::env::var("PKB_EDGE_BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "1,16,64,256".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // The simulator and the upstream, in this process.
    let sim = Simulator::new(SimConfig::default());
    let (sim_addr, upstream) = rt.block_on(async {
        let sim_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim_addr = sim_l.local_addr().unwrap();
        tokio::spawn(sim.clone().serve(sim_l));
        let small: &'static str = Box::leak("<p>patient summary</p>".repeat(100).into_boxed_str());
        let large = bytes::Bytes::from(vec![b'x'; 1 << 20]);
        let app = Router::new()
            .route(SMALL, get(move || async move { small }))
            .route(PATIENT_PAGE, get(move || async move { small }))
            .route(LARGE, get(move || async move { large.clone() }));
        let up_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = up_l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(up_l, app).await });
        (sim_addr, upstream)
    });
    let common = Common {
        upstream,
        sim_url: format!("http://{sim_addr}"),
    };
    let keys = Keyring::generate_line("bench");

    // Stores, seeded before any proxy starts (so start-up times can be compared).
    eprintln!("seeding stores ({big} pairings in the largest; this takes a while)…");
    let seeding = Instant::now();
    let (hot_tokens, real) = rt.block_on(async {
        let hot = real_tokens(&common.sim_url, "hot", 1).await;
        let hot_store = open_store(&d.join("hot.db"), &keys).await;
        hot_store.save(HOT_USER, hot[0].clone()).await.unwrap();
        let real = real_tokens(&common.sim_url, "cold", COLD_REAL).await;
        big_store(&d.join("cold100k.db"), &keys, "c", 100_000, &real).await;
        big_store(&d.join("coldbig.db"), &keys, "c", big, &real).await;
        // Tokens PKB knows, already lapsed: a launch refreshes whatever the skew (a token is
        // never due at birth: the skew is at most half its lifetime).
        let refresh_store = open_store(&d.join("refresh.db"), &keys).await;
        let lapsed = SystemClock.now() - 60;
        let rows: Vec<_> = (0..REFRESH_USERS_PER_SEC * secs as usize * levels.len())
            .map(|n| {
                let mut tokens = sim.issue_directly(&format!("refresh{n}@pkb.example"));
                tokens.access_expires_at = lapsed;
                (user("r", n), tokens)
            })
            .collect();
        for batch in rows.chunks(50_000) {
            refresh_store.import_tokens(batch).await.unwrap();
        }
        (hot, real)
    });
    eprintln!("seeded in {:.1} s", seeding.elapsed().as_secs_f64());
    let access = hot_tokens[0].access_token.expose().to_string();
    drop(real);

    // The proxies.
    let decorated_settings = Settings {
        extra: "[decorate]\npatient_from = { path_regex = '^/patients/(\\d{10})' }\n",
        ..DEFAULTS
    };
    let cold = Settings {
        cache_capacity: 1,
        ..DEFAULTS
    };
    let hot = Edge::start(d, "hot", &d.join("hot.db"), &keys, DEFAULTS, &common);
    let decorated = Edge::start(
        d,
        "decorated",
        &d.join("hot.db"),
        &keys,
        decorated_settings,
        &common,
    );
    let cold_small = Edge::start(d, "cold100k", &d.join("cold100k.db"), &keys, cold, &common);
    let cold_big = Edge::start(d, "coldbig", &d.join("coldbig.db"), &keys, cold, &common);
    let refresh = Edge::start(
        d,
        "refresh",
        &d.join("refresh.db"),
        &keys,
        DEFAULTS,
        &common,
    );
    // `PKB_EDGE_BENCH_OLD_BIN`: an older build run beside this one, for an A/B comparison in
    // one run (its rows are marked "(old)").
    let old = std::env::var("PKB_EDGE_BENCH_OLD_BIN").ok().map(|bin| {
        let binary: &'static str = Box::leak(bin.into_boxed_str());
        let settings = Settings {
            binary: Some(binary),
            ..DEFAULTS
        };
        // A store of its own: this build's stores have a newer schema than an older build opens.
        // (So no launch rows for it: its store has no pairing.)
        Edge::start(d, "old", &d.join("old.db"), &keys, settings, &common)
    });
    let (jwt, assertion) = start_jwt_edge(d, &keys, &common);
    let bare = start_bare_pingora(upstream);
    let (ecdsa, rsa, bench_ca) = tls::pairs(d);
    let https = |name: &str, pair: &tls::Pair| {
        let settings = Settings {
            tls: pair.table(),
            ..DEFAULTS
        };
        Edge::start(d, name, &d.join("hot.db"), &keys, settings, &common)
    };
    let (https_ecdsa, https_rsa) = (https("https", &ecdsa), https("https-rsa", &rsa));
    let nginx = Nginx::start(d, upstream, sim_addr, &ecdsa);
    if nginx.is_none() {
        eprintln!("nginx is not installed: the nginx rows are left out (scripts/setup.sh --bench)");
    }

    let s = |name: &str, method: &str, path: &str, headers: &[(&str, &str)]| {
        fixed(d, name, method, path, headers)
    };
    let bearer = format!("Bearer {access}");
    let as_hot = [("X-Authenticated-User", HOT_USER)];
    let otp = s(
        "otp",
        "POST",
        "/json/v1/users/self/otp",
        &[
            ("Authorization", bearer.as_str()),
            ("Accept", "application/json"),
        ],
    );
    let launch = s("launch", "GET", "/_pkb/launch", &as_hot);
    let small = s("small", "GET", SMALL, &as_hot);
    let small_jwt = s(
        "small-jwt",
        "GET",
        SMALL,
        &[("X-Pomerium-Jwt-Assertion", assertion.as_str())],
    );
    let large = s("large", "GET", LARGE, &as_hot);
    // One request per connection: wrk connects again after each answer (a TLS handshake each).
    let small_close = s(
        "small-close",
        "GET",
        SMALL,
        &[("X-Authenticated-User", HOT_USER), ("Connection", "close")],
    );
    let patient = s("patient", "GET", PATIENT_PAGE, &as_hot);
    let cold_launch_small = random_users(
        d,
        "cold100k",
        "/_pkb/launch",
        "c",
        COLD_REAL,
        100_000 / COLD_REAL,
    );
    let cold_launch_big = random_users(
        d,
        "coldbig",
        "/_pkb/launch",
        "c",
        COLD_REAL,
        big / COLD_REAL,
    );
    let refresh_launch = fresh_users(d, "refresh", "/_pkb/launch", "r");

    let sim_url = |p: &str| format!("http://{sim_addr}{p}");
    let up_url = |p: &str| format!("http://{upstream}{p}");
    let direct = Vec::new;
    let mut variants: Vec<(&str, String, &Path, Vec<u32>)> = vec![
        ("launch floor (OTP direct)", sim_url("/"), &otp, direct()),
        ("launch via pkb-edge", hot.url("/"), &launch, hot.pids()),
        (
            "cold launch, 100k pairings",
            cold_small.url("/"),
            &cold_launch_small,
            cold_small.pids(),
        ),
        (
            "cold launch, big store",
            cold_big.url("/"),
            &cold_launch_big,
            cold_big.pids(),
        ),
        (
            "refresh launch",
            refresh.url("/"),
            &refresh_launch,
            refresh.pids(),
        ),
        ("small page direct", up_url("/"), &small, direct()),
        (
            "small page via bare Pingora",
            bare.url("/"),
            &small,
            bare.pids(),
        ),
        ("small page via pkb-edge", hot.url("/"), &small, hot.pids()),
        (
            "small page via pkb-edge, jwt (cached token)",
            jwt.url("/"),
            &small_jwt,
            jwt.pids(),
        ),
        (
            "small page via pkb-edge + decoration",
            decorated.url("/"),
            &patient,
            decorated.pids(),
        ),
        ("1 MB page direct", up_url("/"), &large, direct()),
        ("1 MB page via pkb-edge", hot.url("/"), &large, hot.pids()),
        (
            "small page via pkb-edge, https",
            https_ecdsa.url("/"),
            &small,
            https_ecdsa.pids(),
        ),
        (
            "new connection per request, pkb-edge, plain",
            hot.url("/"),
            &small_close,
            hot.pids(),
        ),
        (
            "new handshake per request, pkb-edge, ECDSA",
            https_ecdsa.url("/"),
            &small_close,
            https_ecdsa.pids(),
        ),
        (
            "new handshake per request, pkb-edge, RSA",
            https_rsa.url("/"),
            &small_close,
            https_rsa.pids(),
        ),
    ];
    if let Some(n) = &nginx {
        let (sim_hop, app_hop) = (
            format!("http://127.0.0.1:{}/", n.sim_port),
            format!("http://127.0.0.1:{}/", n.upstream_port),
        );
        variants.insert(1, ("launch via nginx", sim_hop, &otp, n.pids()));
        variants.insert(
            7,
            ("small page via nginx", app_hop.clone(), &small, n.pids()),
        );
        variants.push(("1 MB page via nginx", app_hop, &large, n.pids()));
        let tls_hop = format!("https://127.0.0.1:{}/", n.tls_port);
        variants.push((
            "small page via nginx, https",
            tls_hop.clone(),
            &small,
            n.pids(),
        ));
        variants.push((
            "new handshake per request, nginx, ECDSA",
            tls_hop,
            &small_close,
            n.pids(),
        ));
    }
    if let Some(old) = &old {
        variants.push((
            "small page via pkb-edge (old)",
            old.url("/"),
            &small,
            old.pids(),
        ));
        variants.push((
            "1 MB page via pkb-edge (old)",
            old.url("/"),
            &large,
            old.pids(),
        ));
    }
    if let Ok(only) = std::env::var("PKB_EDGE_BENCH_ONLY") {
        let wanted: Vec<&str> = only.split(',').map(str::trim).collect();
        variants.retain(|(name, ..)| wanted.iter().any(|w| name.contains(w)));
    }
    // Warm every path once (connection pools, the decoration cache, the hot pairing).
    rt.block_on(async {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let r = http
            .get(decorated.url(PATIENT_PAGE))
            .header("X-Authenticated-User", HOT_USER)
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-pkb-data-available"], "true");
        let r = http
            .get(hot.url("/_pkb/launch"))
            .header("X-Authenticated-User", HOT_USER)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 302);
    });
    let refreshes_before = sim.count("token_refresh");

    let mut results: BTreeMap<usize, Vec<(String, Measured)>> = BTreeMap::new();
    for &c in &levels {
        for (name, url, script, pids) in &variants {
            let cpu_before = cpu_seconds(pids);
            let mut m = wrk(url, c, secs, script);
            if !pids.is_empty() && m.requests > 0 {
                m.proxy_cpu_us = Some((cpu_seconds(pids) - cpu_before) * 1e6 / m.requests as f64);
            }
            eprintln!(
                "c={c:<4} {name:<40} {:>9.0} req/s  p99 {:>8.2} ms  errors {}  proxy CPU/req {:.1} µs",
                m.rps,
                m.p99_ms,
                m.errors,
                m.proxy_cpu_us.unwrap_or(0.0)
            );
            results.entry(c).or_default().push((name.to_string(), m));
        }
    }
    let refresh_calls = sim.count("token_refresh") - refreshes_before;

    // Full handshakes, without session resumption (wrk resumes sessions, as browsers do):
    // `openssl s_time -new`, one connection at a time, so the rate is the client's; the server's
    // CPU per handshake is the figure to compare.
    let mut full: Vec<(&str, f64, f64)> = Vec::new();
    let mut s_time = vec![
        (
            "pkb-edge, ECDSA P-256",
            https_ecdsa.port,
            https_ecdsa.pids(),
        ),
        ("pkb-edge, RSA 2048", https_rsa.port, https_rsa.pids()),
    ];
    if let Some(n) = &nginx {
        s_time.push(("nginx, ECDSA P-256", n.tls_port, n.pids()));
    }
    if std::env::var("PKB_EDGE_BENCH_ONLY").map_or(true, |o| o.contains("handshake")) {
        for (name, port, pids) in &s_time {
            if let Some((rate, cpu_us)) = full_handshakes(*port, secs, pids) {
                eprintln!("full handshakes, {name}: {rate:.0}/s, server CPU {cpu_us:.0} µs each");
                full.push((name, rate, cpu_us));
            }
        }
    }

    // Memory per idle keep-alive connection, in fresh processes (one that has served load keeps
    // its freed memory for new connections, which would hide their cost): pkb-edge, bare
    // Pingora, and the older build.
    let fresh = |name: &str, binary: Option<&'static str>| {
        let db = d.join(format!("{name}.db"));
        let settings = Settings { binary, ..DEFAULTS };
        Edge::start(d, name, &db, &keys, settings, &common)
    };
    let mut idle: Vec<(&str, IdleMemory)> = vec![
        (
            "pkb-edge",
            fresh("idle", None).idle_memory(SMALL, None, &rt),
        ),
        (
            "bare Pingora",
            start_bare_pingora(upstream).idle_memory(SMALL, None, &rt),
        ),
    ];
    let https_idle = Settings {
        tls: ecdsa.table(),
        ..DEFAULTS
    };
    let https_idle = Edge::start(
        d,
        "idle-https",
        &d.join("idle-https.db"),
        &keys,
        https_idle,
        &common,
    );
    idle.push((
        "pkb-edge, HTTPS",
        https_idle.idle_memory(SMALL, Some(&tls::connector(&bench_ca)), &rt),
    ));
    if let Some(old) = &old {
        let binary = Some(Box::leak(old.binary.clone().into_boxed_str()) as &'static str);
        idle.push((
            "pkb-edge (old)",
            fresh("idle-old", binary).idle_memory(SMALL, None, &rt),
        ));
    }

    // Resident memory with 100,000 pairings in the cache: a fresh instance on the 100k store,
    // its cache filled by a status look-up of every user (no PKB call).
    let rss_instance = Edge::start(d, "rss", &d.join("cold100k.db"), &keys, DEFAULTS, &common);
    let (rss_before, _) = rss_instance.rss_mb();
    let filled: u64 = rt.block_on(async {
        let http = reqwest::Client::new();
        let url = rss_instance.url("/_pkb/status");
        let lanes = (0..16usize).map(|lane| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move {
                let mut paired = 0u64;
                for n in (lane..100_000).step_by(16) {
                    let r = http
                        .get(&url)
                        .header("X-Authenticated-User", user("c", n))
                        .send()
                        .await
                        .unwrap();
                    let body: serde_json::Value = r.json().await.unwrap();
                    paired += u64::from(body["paired"] == true);
                }
                paired
            })
        });
        let mut total = 0;
        for lane in lanes.collect::<Vec<_>>() {
            total += lane.await.unwrap();
        }
        total
    });
    assert_eq!(filled, 100_000, "every status look-up found its pairing");
    let (rss_cached, _) = rss_instance.rss_mb();

    let startup = [
        ("1 pairing", hot.startup),
        ("100k pairings", cold_small.startup),
        ("big store", cold_big.startup),
    ];
    let peak: Vec<(&str, f64)> = [
        ("hot", &hot),
        ("decorated", &decorated),
        ("cold100k", &cold_small),
        ("coldbig", &cold_big),
        ("refresh", &refresh),
    ]
    .iter()
    .map(|(n, e)| (*n, e.rss_mb().1))
    .collect();

    // The table.
    let find = |c: usize, name: &str| -> Option<Measured> {
        results
            .get(&c)?
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, m)| m.clone())
    };
    // (label, variant, against, p99 rather than throughput)
    const RATIOS: [(&str, &str, &str, bool); 19] = [
        (
            "small page via pkb-edge / (old), throughput",
            "small page via pkb-edge",
            "small page via pkb-edge (old)",
            false,
        ),
        (
            "1 MB page via pkb-edge / (old), throughput",
            "1 MB page via pkb-edge",
            "1 MB page via pkb-edge (old)",
            false,
        ),
        (
            "launch via pkb-edge / via nginx, throughput",
            "launch via pkb-edge",
            "launch via nginx",
            false,
        ),
        (
            "launch via pkb-edge / via nginx, p99",
            "launch via pkb-edge",
            "launch via nginx",
            true,
        ),
        (
            "launch via pkb-edge / floor, throughput",
            "launch via pkb-edge",
            "launch floor (OTP direct)",
            false,
        ),
        (
            "launch via pkb-edge / floor, p99",
            "launch via pkb-edge",
            "launch floor (OTP direct)",
            true,
        ),
        (
            "small page via pkb-edge / via nginx, throughput",
            "small page via pkb-edge",
            "small page via nginx",
            false,
        ),
        (
            "small page via bare Pingora / via nginx, throughput",
            "small page via bare Pingora",
            "small page via nginx",
            false,
        ),
        (
            "small page via pkb-edge / via bare Pingora, throughput",
            "small page via pkb-edge",
            "small page via bare Pingora",
            false,
        ),
        (
            "1 MB page via pkb-edge / via nginx, throughput",
            "1 MB page via pkb-edge",
            "1 MB page via nginx",
            false,
        ),
        (
            "jwt (cached token) / header mode, small page, throughput",
            "small page via pkb-edge, jwt (cached token)",
            "small page via pkb-edge",
            false,
        ),
        (
            "decoration (cache hit) / passthrough, throughput",
            "small page via pkb-edge + decoration",
            "small page via pkb-edge",
            false,
        ),
        (
            "https / plain, small page via pkb-edge, throughput",
            "small page via pkb-edge, https",
            "small page via pkb-edge",
            false,
        ),
        (
            "https / plain, small page via pkb-edge, p99",
            "small page via pkb-edge, https",
            "small page via pkb-edge",
            true,
        ),
        (
            "https small page: pkb-edge / nginx, throughput",
            "small page via pkb-edge, https",
            "small page via nginx, https",
            false,
        ),
        (
            "https small page: pkb-edge / nginx, p99",
            "small page via pkb-edge, https",
            "small page via nginx, https",
            true,
        ),
        (
            "handshakes/s: pkb-edge / nginx (ECDSA)",
            "new handshake per request, pkb-edge, ECDSA",
            "new handshake per request, nginx, ECDSA",
            false,
        ),
        (
            "handshakes/s: ECDSA / RSA (pkb-edge)",
            "new handshake per request, pkb-edge, ECDSA",
            "new handshake per request, pkb-edge, RSA",
            false,
        ),
        (
            "new connections/s: https (ECDSA) / plain (pkb-edge)",
            "new handshake per request, pkb-edge, ECDSA",
            "new connection per request, pkb-edge, plain",
            false,
        ),
    ];
    // The ratios both variants of which ran at concurrency `c`.
    let ratios = |c: usize| -> Vec<(&str, f64)> {
        RATIOS
            .iter()
            .filter_map(|&(label, a, b, p99)| {
                let (a, b) = (find(c, a)?, find(c, b)?);
                let value = if p99 {
                    a.p99_ms / b.p99_ms
                } else {
                    a.rps / b.rps
                };
                Some((label, value))
            })
            .collect()
    };
    println!("\npkb-edge benchmark: closed loop, wrk, {secs} s per cell, store of {big} pairings for the big cold launch");
    for &c in &levels {
        println!("\nconcurrency {c}");
        println!(
            "{:<40} {:>10} {:>8} {:>8} {:>8} {:>8} {:>7} {:>12}",
            "variant", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors", "proxy CPU µs"
        );
        for (name, m) in results.get(&c).into_iter().flatten() {
            let cpu = m.proxy_cpu_us.map_or("-".into(), |us| format!("{us:.1}"));
            println!(
                "{name:<40} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7} {cpu:>12}",
                m.rps, m.p50_ms, m.p90_ms, m.p99_ms, m.max_ms, m.errors
            );
        }
        for (label, value) in ratios(c) {
            println!("  {label:<58} {value:>7.3}");
        }
        if let (Some(cold), Some(hot)) = (
            find(c, "cold launch, big store"),
            find(c, "launch via pkb-edge"),
        ) {
            println!(
                "  {:<58} {:>7.3}",
                "cold launch (big store) p99 − hot launch p99, ms",
                cold.p99_ms - hot.p99_ms
            );
        }
    }
    for (name, rate, cpu_us) in &full {
        println!(
            "full handshakes (openssl s_time -new, no resumption), {name}: {rate:.0}/s, server CPU {cpu_us:.0} µs per handshake"
        );
    }
    println!("\nrefresh calls during the refresh-launch runs: {refresh_calls}");
    println!(
        "start-up (spawn to listening): {}",
        startup
            .iter()
            .map(|(n, t)| format!("{n} {:.0} ms", t.as_secs_f64() * 1000.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("resident memory, rss instance: {rss_before:.1} MB empty, {rss_cached:.1} MB with {filled} pairings cached");
    for (name, m) in &idle {
        println!(
            "idle connections, {name}: {:.1} KB each ({IDLE_CONNECTIONS} open: {:.1} → {:.1} MB; {:.1} MB after they closed)",
            m.per_connection_kb, m.before_mb, m.with_mb, m.after_close_mb
        );
    }
    println!(
        "peak resident memory: {}",
        peak.iter()
            .map(|(n, mb)| format!("{n} {mb:.1} MB"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let json = serde_json::json!({
        "seconds_per_cell": secs,
        "big_store": big,
        "nginx": nginx.is_some(),
        "results": results.iter().map(|(c, rows)| (c.to_string(), serde_json::json!(rows.iter().map(|(n, m)| serde_json::json!({"variant": n, "measured": m})).collect::<Vec<_>>()))).collect::<serde_json::Map<_, _>>(),
        "ratios": levels.iter().map(|&c| (c.to_string(), serde_json::json!(ratios(c).into_iter().collect::<BTreeMap<_, _>>()))).collect::<serde_json::Map<_, _>>(),
        "refresh_calls": refresh_calls,
        "startup_ms": startup.iter().map(|(n, t)| (n.to_string(), serde_json::json!(t.as_secs_f64() * 1000.0))).collect::<serde_json::Map<_, _>>(),
        "rss_mb": { "empty": rss_before, "with_100k_cached": rss_cached, "cached": filled },
        "idle_connections": idle.iter().map(|(n, m)| (n.to_string(), serde_json::json!(m))).collect::<serde_json::Map<_, _>>(),
        "peak_rss_mb": peak.iter().map(|(n, mb)| (n.to_string(), serde_json::json!(mb))).collect::<serde_json::Map<_, _>>(),
    });
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("edge.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
}
