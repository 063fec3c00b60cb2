//! Passthrough through pkb-edge with and without data-availability decoration (cache hit), and
//! the upstream direct, measured in one run so the ratios mean something on a noisy machine.
//!
//! Everything on loopback: the PKB simulator and a small upstream in this process, the release
//! `pkb-edge` binary twice (one proxy without `[decorate]`, one with it). Load is a closed loop
//! at fixed concurrency (each worker keeps one keep-alive connection and sends the next request
//! when the last answer is in), so latency percentiles describe service time under that load,
//! not an open-loop arrival rate (no coordinated-omission correction is claimed). Variants are
//! interleaved over several rounds, in a rotating order, and the best round of each is kept.
//!
//! Run: `cargo bench --bench passthrough`. Results: `target/bench/passthrough.json`.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;

use pkb_edge::clock::SystemClock;
use pkb_edge::sim::{obtain_tokens, SimConfig, Simulator};
use pkb_edge::store::crypto::Keyring;
use pkb_edge::store::{open_backend, Pairings};

const CONCURRENCY: usize = 32;
const ROUND: Duration = Duration::from_secs(3);
const ROUNDS: usize = 5;
const USER: &str = "bench.user";
const PATH: &str = "/patients/9990000018";

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_proxy(
    dir: &std::path::Path,
    name: &str,
    upstream: SocketAddr,
    sim: &str,
    decorate: bool,
) -> (Killed, u16) {
    let port = free_port();
    let keys = Keyring::generate_line("bench");
    let db = dir.join(format!("{name}.db"));
    let tokens = obtain_tokens(sim, "pkb-edge", "sim-secret", "bench@pkb.example")
        .await
        .unwrap();
    let backend = open_backend(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let pairings = Pairings::open(
        backend,
        Keyring::parse(&keys).unwrap(),
        10,
        Duration::from_secs(60),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    pairings.save(USER, tokens).await.unwrap();
    let decorate = if decorate {
        "[decorate]\npatient_from = { path_regex = '^/patients/(\\d{10})' }\n"
    } else {
        ""
    };
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\nupstream = \"http://{upstream}\"\npublic_url = \"http://127.0.0.1:{port}\"\n\
         [server]\nthreads = 2\ngrace_period_seconds = 0\n[identity]\ntrusted_peers = [\"127.0.0.1/32\"]\n\
         [pkb]\nbase_url = \"{sim}\"\nclient_id = \"pkb-edge\"\nclient_secret = \"sim-secret\"\n\
         [store]\nurl = \"sqlite://{}\"\nkeys = \"{keys}\"\n{decorate}",
        db.display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_pkb-edge"))
        .args(["run", "--config"])
        .arg(&path)
        .env("PKB_EDGE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "proxy {name} did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (Killed(child), port)
}

#[derive(Clone, Copy, Default)]
struct Stats {
    rps: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
}

async fn load(url: String) -> Stats {
    let deadline = Instant::now() + ROUND;
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .build()
                    .unwrap();
                let mut latencies = Vec::with_capacity(50_000);
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let started = Instant::now();
                    match client
                        .get(&url)
                        .header("X-Authenticated-User", USER)
                        .send()
                        .await
                    {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            latencies.push(started.elapsed().as_micros() as u64);
                        }
                        _ => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let started = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (l, e) = w.await.unwrap();
        all.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Stats {
        rps: all.len() as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        errors,
    }
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sim = Simulator::new(SimConfig::default());
        let sim_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim_url = format!("http://{}", sim_l.local_addr().unwrap());
        tokio::spawn(sim.clone().serve(sim_l));
        let page: &'static str = Box::leak("<p>patient summary</p>".repeat(100).into_boxed_str());
        let upstream_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = upstream_l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(upstream_l, Router::new().route("/patients/{id}", get(move || async move { page }))).await });

        let dir = tempfile::tempdir().unwrap();
        let (_plain, plain_port) = start_proxy(dir.path(), "plain", upstream, &sim_url, false).await;
        let (_decorated, decorated_port) = start_proxy(dir.path(), "decorated", upstream, &sim_url, true).await;
        let variants = [
            ("upstream direct", format!("http://{upstream}{PATH}")),
            ("pkb-edge passthrough", format!("http://127.0.0.1:{plain_port}{PATH}")),
            ("pkb-edge + decoration (cache hit)", format!("http://127.0.0.1:{decorated_port}{PATH}")),
        ];
        // Warm the decoration cache (and every connection pool).
        for (_, url) in &variants {
            let r = reqwest::Client::new().get(url).header("X-Authenticated-User", USER).send().await.unwrap();
            assert!(r.status().is_success());
        }
        let warm = reqwest::Client::new().get(&variants[2].1).header("X-Authenticated-User", USER).send().await.unwrap();
        assert_eq!(warm.headers()["x-pkb-data-available"], "true", "decoration is on and cached");

        let mut best = [Stats::default(); 3];
        for round in 0..ROUNDS {
            // Rotate the order each round, so no variant always runs first or last.
            for k in 0..variants.len() {
                let i = (k + round) % variants.len();
                let s = load(variants[i].1.clone()).await;
                if s.rps > best[i].rps {
                    best[i] = s;
                }
            }
        }
        let calls = sim.count("data_from_other_org");
        println!("\npassthrough, {CONCURRENCY} connections, closed loop, best of {ROUNDS} × {ROUND:?}");
        println!("{:<36} {:>10} {:>9} {:>9} {:>7}", "variant", "req/s", "p50 µs", "p99 µs", "errors");
        for ((name, _), s) in variants.iter().zip(best) {
            println!("{name:<36} {:>10.0} {:>9} {:>9} {:>7}", s.rps, s.p50_us, s.p99_us, s.errors);
        }
        let decoration_ratio = best[2].rps / best[1].rps;
        let proxy_ratio = best[1].rps / best[0].rps;
        println!("decoration (cache hit) / passthrough throughput: {decoration_ratio:.3}");
        println!("passthrough / direct throughput: {proxy_ratio:.3}");
        println!("dataFromOtherOrg calls during the run: {calls} (1 expected: the warm-up)");

        let json = serde_json::json!({
            "concurrency": CONCURRENCY,
            "round_secs": ROUND.as_secs(),
            "rounds": ROUNDS,
            "variants": variants.iter().zip(best).map(|((name, _), s)| serde_json::json!({
                "name": name, "rps": s.rps, "p50_us": s.p50_us, "p99_us": s.p99_us, "errors": s.errors
            })).collect::<Vec<_>>(),
            "decoration_over_passthrough": decoration_ratio,
            "passthrough_over_direct": proxy_ratio,
            "data_from_other_org_calls": calls,
        });
        let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("passthrough.json"), serde_json::to_string_pretty(&json).unwrap()).unwrap();
    });
}
