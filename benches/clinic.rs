//! "Clinic day": launch latency as clinicians feel it, over a deterministic, seeded trace.
//!
//! 200 clinicians (`PKB_EDGE_CLINIC_USERS`) work a shift (`PKB_EDGE_CLINIC_SHIFT_HOURS`, 8):
//! each arrives in the first half hour, alternates stretches of work (45 minutes on average) with
//! breaks (15 minutes), views EHR pages as a Poisson process while working (2 a minute), and
//! opens PKB a few times a shift (Poisson, mean 4, at least once); 15 % never open PKB.
//!
//! Time is compressed by `PKB_EDGE_CLINIC_COMPRESSION` (60, a divisor of 60): PKB's 1800 s access
//! tokens live 30 s in the simulator, the trace's gaps shrink by the same factor, and so do the
//! proxy's windows (`refresh_skew_secs` 60 → 1, `refresh_ahead_secs` 300 → 5,
//! `refresh_ahead_window_secs` 43200 → 720). PKB's round trip is not compressed: the simulator
//! adds `PKB_EDGE_CLINIC_LATENCIES` (40 and 150 ms) to every refresh and OTP call.
//!
//! Each latency runs twice, refresh-ahead on and off, all four at once (one simulator, store and
//! release pkb-edge each; the same trace). A launch's PKB calls are the simulator's refresh and
//! OTP calls for that user that started while the launch was in flight (a clinician does one
//! thing at a time, so nothing else of theirs overlaps it).
//!
//! Run: `cargo bench --bench clinic` (about 9 minutes with the defaults). Results:
//! `target/bench/clinic.json` and a table on standard output, with the issue's targets checked.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;

use pkb_edge::core::clock::SystemClock;
use pkb_edge::sim::{obtain_tokens, SimConfig, Simulator};
use pkb_edge::store::crypto::Keyring;
use pkb_edge::store::{open_backend, Pairings};

#[path = "../tests/common/process.rs"]
mod process;

use process::{free_port, wait_listening, Killed};

const USER_HEADER: &str = "X-Authenticated-User";
/// PKB's documented access-token lifetime, and pkb-edge's defaults, in real seconds.
const TOKEN_LIFETIME: i64 = 1800;
const SKEW: i64 = 60;
const AHEAD: i64 = 300;
const AHEAD_WINDOW: i64 = 43_200;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// The trace.

/// splitmix64: a small, seeded, portable generator, so the trace is the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }

    fn poisson(&mut self, mean: f64) -> u32 {
        let (limit, mut product, mut n) = ((-mean).exp(), self.unit(), 0);
        while product > limit {
            product *= self.unit();
            n += 1;
        }
        n
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Page,
    Launch,
}

/// One clinician's shift: events at real-time offsets (seconds from the shift's start).
struct Clinician {
    user: String,
    pkb_user: String,
    events: Vec<(f64, Kind)>,
    launches: bool,
}

fn trace(users: usize, shift_secs: f64, seed: u64) -> Vec<Clinician> {
    let mut rng = Rng(seed);
    (0..users)
        .map(|n| {
            let launches = rng.unit() >= 0.15;
            // Working stretches between arrival and the end of the shift.
            let mut stretches = Vec::new();
            let mut t = rng.unit() * 1800.0;
            while t < shift_secs {
                let end = (t + rng.exponential(45.0 * 60.0)).min(shift_secs);
                stretches.push((t, end));
                t = end + rng.exponential(15.0 * 60.0);
            }
            let mut events = Vec::new();
            for &(from, to) in &stretches {
                let mut t = from + rng.exponential(30.0);
                while t < to {
                    events.push((t, Kind::Page));
                    t += rng.exponential(30.0);
                }
            }
            if launches {
                let worked: f64 = stretches.iter().map(|(a, b)| b - a).sum();
                for _ in 0..rng.poisson(4.0).max(1) {
                    // A uniform instant of working time.
                    let mut at = rng.unit() * worked;
                    for &(from, to) in &stretches {
                        if at <= to - from {
                            events.push((from + at, Kind::Launch));
                            break;
                        }
                        at -= to - from;
                    }
                }
            }
            events.sort_by(|a, b| a.0.total_cmp(&b.0));
            Clinician {
                user: format!("clinician{n:03}"),
                pkb_user: format!("clinician{n:03}@pkb.example"),
                events,
                launches,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// One stack: simulator, store, pkb-edge.

struct Stack {
    name: String,
    latency_ms: u64,
    ahead: bool,
    sim: Arc<Simulator>,
    _edge: Killed,
    port: u16,
    ops: u16,
}

#[derive(Clone, Copy)]
struct Scale {
    compression: i64,
}

impl Scale {
    fn secs(self, real: i64) -> i64 {
        real / self.compression
    }
}

async fn start_stack(
    dir: &Path,
    upstream: std::net::SocketAddr,
    clinicians: &[Clinician],
    latency_ms: u64,
    ahead: bool,
    scale: Scale,
) -> Stack {
    let name = format!(
        "{latency_ms} ms, refresh-ahead {}",
        if ahead { "on" } else { "off" }
    );
    let tag = format!("{latency_ms}-{}", if ahead { "on" } else { "off" });
    let sim = Simulator::new(SimConfig {
        access_token_lifetime_secs: scale.secs(TOKEN_LIFETIME),
        ..SimConfig::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(sim.clone().serve(listener));

    // Every clinician is paired already (through the simulator's real OAuth endpoints).
    let keys = Keyring::generate_line("clinic");
    let db = dir.join(format!("{tag}.db"));
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
    for c in clinicians {
        let tokens = obtain_tokens(&sim_url, "pkb-edge", "sim-secret", &c.pkb_user)
            .await
            .unwrap();
        pairings.save(&c.user, tokens).await.unwrap();
    }
    let latency: BTreeMap<String, u64> = ["token_refresh", "otp"]
        .into_iter()
        .map(|e| (e.to_string(), latency_ms))
        .collect();
    sim.set_knobs(serde_json::from_value(serde_json::json!({ "latency_ms": latency })).unwrap());

    let (port, ops) = (free_port(), free_port());
    let config = format!(
        r#"listen = "127.0.0.1:{port}"
ops_listen = "127.0.0.1:{ops}"
upstream = "http://{upstream}"
public_url = "http://127.0.0.1:{port}"
[server]
threads = 2
grace_period_seconds = 0
[identity]
trusted_peers = ["127.0.0.1/32"]
[pkb]
base_url = "{sim_url}"
client_id = "pkb-edge"
client_secret = "sim-secret"
refresh_skew_secs = {skew}
refresh_ahead_secs = {ahead}
refresh_ahead_window_secs = {window}
[store]
url = "sqlite://{db}"
keys = "{keys}"
[limits]
launch_per_minute = 0
[audit]
file = "{audit}"
"#,
        db = db.display(),
        audit = dir.join(format!("{tag}-audit.log")).display(),
        skew = scale.secs(SKEW),
        ahead = if ahead { scale.secs(AHEAD) } else { 0 },
        window = scale.secs(AHEAD_WINDOW).max(60),
    );
    let path = dir.join(format!("{tag}.toml"));
    std::fs::write(&path, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_pkb-edge"))
        .args(["run", "--config"])
        .arg(&path)
        .env("PKB_EDGE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let edge = Killed(child);
    wait_listening(port, &name, Duration::from_secs(60));
    Stack {
        name,
        latency_ms,
        ahead,
        sim,
        _edge: edge,
        port,
        ops,
    }
}

// ---------------------------------------------------------------------------------------------
// Replay and results.

/// One launch as the clinician saw it.
#[derive(Debug, Clone, Copy)]
struct Launch {
    /// When in the replay it was sent, seconds.
    at: f64,
    ms: f64,
    ok: bool,
    calls: u64,
    /// The clinician's first launch of the shift: nobody refreshes ahead for a user who has not
    /// launched within the window, so this one pays for a lapsed token by design.
    first: bool,
}

async fn replay(stack: &Stack, clinicians: &[Clinician], scale: Scale) -> (Vec<Launch>, u64) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let start = tokio::time::Instant::now() + Duration::from_secs(1);
    let tasks: Vec<_> = clinicians
        .iter()
        .map(|c| {
            let (client, sim) = (client.clone(), stack.sim.clone());
            let base = format!("http://127.0.0.1:{}", stack.port);
            let (user, pkb_user) = (c.user.clone(), c.pkb_user.clone());
            let events = c.events.clone();
            let compression = scale.compression as f64;
            tokio::spawn(async move {
                let (mut launches, mut page_errors, mut first) = (Vec::new(), 0u64, true);
                for (at, kind) in events {
                    tokio::time::sleep_until(start + Duration::from_secs_f64(at / compression))
                        .await;
                    let path = match kind {
                        Kind::Page => "/chart",
                        Kind::Launch => "/_pkb/launch",
                    };
                    let calls = || {
                        sim.user_count(&pkb_user, "token_refresh")
                            + sim.user_count(&pkb_user, "otp")
                    };
                    let before = calls();
                    let sent = Instant::now();
                    let status = client
                        .get(format!("{base}{path}"))
                        .header(USER_HEADER, &user)
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0);
                    let ms = sent.elapsed().as_secs_f64() * 1000.0;
                    match kind {
                        Kind::Page => page_errors += u64::from(status != 200),
                        Kind::Launch => {
                            launches.push(Launch {
                                at: (sent - start.into_std()).as_secs_f64(),
                                ms,
                                ok: status == 302,
                                calls: calls() - before,
                                first,
                            });
                            first = false;
                        }
                    }
                }
                (launches, page_errors)
            })
        })
        .collect();
    let mut launches = Vec::new();
    let mut page_errors = 0;
    for task in tasks {
        let (l, e) = task.await.unwrap();
        launches.extend(l);
        page_errors += e;
    }
    (launches, page_errors)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// What one stack measured.
#[derive(Debug, serde::Serialize)]
struct Summary {
    name: String,
    latency_ms: u64,
    refresh_ahead: bool,
    launches: usize,
    failed_launches: usize,
    failed_pages: u64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    /// Launches after the clinician's first of the shift.
    later_p95_ms: f64,
    share_one_call: f64,
    share_two_calls: f64,
    share_more_calls: f64,
    later_share_one_call: f64,
    first_share_one_call: f64,
    pkb_calls_per_launch: f64,
    refreshes_per_user_hour: f64,
    /// Refreshes of launching users ÷ the token lifetimes their shift spans.
    refreshes_per_token_lifetime: f64,
    refreshes_of_users_who_never_launch: u64,
    refreshes_ahead: u64,
    refreshes_by_launch: u64,
    /// The five slowest launches: (seconds into the replay, ms). Slow launches at the same
    /// moment in every run point at the machine, not at one configuration.
    slowest: Vec<(f64, f64)>,
}

fn summarize(
    stack: &Stack,
    launches: &[Launch],
    page_errors: u64,
    clinicians: &[Clinician],
    shift_hours: f64,
    metrics: &str,
) -> Summary {
    let share = |set: &[&Launch], pred: &dyn Fn(&Launch) -> bool| {
        set.iter().filter(|l| pred(l)).count() as f64 / set.len().max(1) as f64
    };
    let all: Vec<&Launch> = launches.iter().collect();
    let later: Vec<&Launch> = launches.iter().filter(|l| !l.first).collect();
    let first: Vec<&Launch> = launches.iter().filter(|l| l.first).collect();
    let sorted = |set: &[&Launch]| {
        let mut ms: Vec<f64> = set.iter().map(|l| l.ms).collect();
        ms.sort_by(f64::total_cmp);
        ms
    };
    let ms = sorted(&all);
    let refreshes = |c: &Clinician| stack.sim.user_count(&c.pkb_user, "token_refresh");
    let launching: Vec<&Clinician> = clinicians.iter().filter(|c| c.launches).collect();
    let launching_refreshes: u64 = launching.iter().map(|c| refreshes(c)).sum();
    let lifetimes_per_shift = shift_hours * 3600.0 / TOKEN_LIFETIME as f64;
    let counter = |trigger: &str| -> u64 {
        let series =
            format!(r#"pkb_edge_token_refresh_total{{outcome="refreshed",trigger="{trigger}"}}"#);
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str())?.trim().parse().ok())
            .unwrap_or(0)
    };
    Summary {
        name: stack.name.clone(),
        latency_ms: stack.latency_ms,
        refresh_ahead: stack.ahead,
        launches: launches.len(),
        failed_launches: launches.iter().filter(|l| !l.ok).count(),
        failed_pages: page_errors,
        p50_ms: percentile(&ms, 50.0),
        p95_ms: percentile(&ms, 95.0),
        p99_ms: percentile(&ms, 99.0),
        later_p95_ms: percentile(&sorted(&later), 95.0),
        share_one_call: share(&all, &|l| l.calls == 1),
        share_two_calls: share(&all, &|l| l.calls == 2),
        share_more_calls: share(&all, &|l| l.calls > 2),
        later_share_one_call: share(&later, &|l| l.calls == 1),
        first_share_one_call: share(&first, &|l| l.calls == 1),
        pkb_calls_per_launch: launches.iter().map(|l| l.calls).sum::<u64>() as f64
            / launches.len().max(1) as f64,
        refreshes_per_user_hour: launching_refreshes as f64
            / (launching.len().max(1) as f64 * shift_hours),
        refreshes_per_token_lifetime: launching_refreshes as f64
            / (launching.len().max(1) as f64 * lifetimes_per_shift),
        refreshes_of_users_who_never_launch: clinicians
            .iter()
            .filter(|c| !c.launches)
            .map(refreshes)
            .sum(),
        refreshes_ahead: counter("ahead"),
        refreshes_by_launch: counter("launch"),
        slowest: {
            let mut by_ms: Vec<(f64, f64)> = launches.iter().map(|l| (l.at, l.ms)).collect();
            by_ms.sort_by(|a, b| b.1.total_cmp(&a.1));
            by_ms.truncate(5);
            by_ms
        },
    }
}

fn print(summaries: &[Summary]) {
    println!(
        "\n| run | launches | p50 ms | p95 ms | p99 ms | 1 PKB call | 2 | more | PKB calls/launch | refreshes/user-hour | refreshes/token lifetime | never-launch users' refreshes | failed |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for s in summaries {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} % | {:.1} % | {:.1} % | {:.2} | {:.2} | {:.2} | {} | {} |",
            s.name,
            s.launches,
            s.p50_ms,
            s.p95_ms,
            s.p99_ms,
            100.0 * s.share_one_call,
            100.0 * s.share_two_calls,
            100.0 * s.share_more_calls,
            s.pkb_calls_per_launch,
            s.refreshes_per_user_hour,
            s.refreshes_per_token_lifetime,
            s.refreshes_of_users_who_never_launch,
            s.failed_launches + s.failed_pages as usize,
        );
    }
    println!(
        "\n| run | later launches, 1 PKB call | first launch of the shift, 1 PKB call | later launches p95 ms | refreshes ahead / by launch |"
    );
    println!("|---|---:|---:|---:|---:|");
    for s in summaries {
        println!(
            "| {} | {:.1} % | {:.1} % | {:.1} | {} / {} |",
            s.name,
            100.0 * s.later_share_one_call,
            100.0 * s.first_share_one_call,
            s.later_p95_ms,
            s.refreshes_ahead,
            s.refreshes_by_launch
        );
    }
    println!("\nThe slowest launches (ms @ seconds into the replay):");
    for s in summaries {
        let slow: Vec<String> = s
            .slowest
            .iter()
            .map(|(at, ms)| format!("{ms:.0} @ {at:.1}"))
            .collect();
        println!("- {}: {}", s.name, slow.join(", "));
    }
    println!("\nTargets (refresh-ahead on):");
    for s in summaries.iter().filter(|s| s.refresh_ahead) {
        let rtt = s.latency_ms as f64;
        let check = |ok: bool| if ok { "met" } else { "MISSED" };
        println!(
            "- {}: later launches with one PKB call {:.1} % (≥ 95 %: {}); all launches {:.1} %; launch p95 {:.1} ms ≤ 1.2 × {rtt} ms: {}; later launches p95 {:.1} ms: {}; refreshes per token lifetime {:.2} (≤ 1: {}); never-launching users refreshed {} times (0: {}); failed launches {} (0: {})",
            s.name,
            100.0 * s.later_share_one_call,
            check(s.later_share_one_call >= 0.95),
            100.0 * s.share_one_call,
            s.p95_ms,
            check(s.p95_ms <= 1.2 * rtt),
            s.later_p95_ms,
            check(s.later_p95_ms <= 1.2 * rtt),
            s.refreshes_per_token_lifetime,
            check(s.refreshes_per_token_lifetime <= 1.0),
            s.refreshes_of_users_who_never_launch,
            check(s.refreshes_of_users_who_never_launch == 0),
            s.failed_launches,
            check(s.failed_launches == 0),
        );
    }
}

fn main() {
    let users: usize = env_or("PKB_EDGE_CLINIC_USERS", 200);
    let shift_hours: f64 = env_or("PKB_EDGE_CLINIC_SHIFT_HOURS", 8.0);
    let compression: i64 = env_or("PKB_EDGE_CLINIC_COMPRESSION", 60);
    let seed: u64 = env_or("PKB_EDGE_CLINIC_SEED", 17);
    let latencies: Vec<u64> = std::env::var("PKB_EDGE_CLINIC_LATENCIES")
        .unwrap_or_else(|_| "40,150".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    assert!(
        compression > 0 && 60 % compression == 0,
        "PKB_EDGE_CLINIC_COMPRESSION must divide 60 (the proxy's windows are whole seconds)"
    );
    let scale = Scale { compression };
    let clinicians = trace(users, shift_hours * 3600.0, seed);
    let (pages, launches) =
        clinicians
            .iter()
            .flat_map(|c| &c.events)
            .fold((0, 0), |(p, l), (_, kind)| match kind {
                Kind::Page => (p + 1, l),
                Kind::Launch => (p, l + 1),
            });
    eprintln!(
        "clinic day: {users} clinicians, {shift_hours} h shift compressed {compression}×, {pages} page views and {launches} launches per run; {} runs at once, {:.0} s",
        latencies.len() * 2,
        shift_hours * 3600.0 / compression as f64
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let summaries = rt.block_on(async {
        let page: &'static str = Box::leak("<p>chart</p>".repeat(100).into_boxed_str());
        let app = Router::new().fallback(move || async move { page });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let mut stacks = Vec::new();
        for &latency in &latencies {
            for ahead in [true, false] {
                stacks.push(
                    start_stack(dir.path(), upstream, &clinicians, latency, ahead, scale).await,
                );
            }
        }
        let runs = stacks.iter().map(|s| replay(s, &clinicians, scale));
        let results = futures_join_all(runs).await;
        let mut summaries = Vec::new();
        for (stack, (launches, page_errors)) in stacks.iter().zip(results) {
            let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", stack.ops))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            summaries.push(summarize(
                stack,
                &launches,
                page_errors,
                &clinicians,
                shift_hours,
                &metrics,
            ));
        }
        summaries
    });
    print(&summaries);
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("clinic.json"),
        serde_json::to_string_pretty(&summaries).unwrap(),
    )
    .unwrap();
}

/// Runs the futures concurrently on this task, in order of their results.
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, fut) in results.iter_mut().zip(pinned.iter_mut()) {
            if slot.is_none() {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    results.into_iter().map(|r| r.unwrap()).collect()
}
