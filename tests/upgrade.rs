//! A graceful upgrade under steady traffic, as Pingora does it: a new process started with
//! `--upgrade` takes the listening sockets over, the old one gets SIGQUIT, keeps answering for a
//! while, stops accepting, and finishes what it has in flight. Counted from the clients' side:
//! no connection refused, no request lost or failed.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    failures: parking_lot::Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, what: &str, result: Result<u16, String>, want: u16) {
        match result {
            Ok(status) if status == want => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            other => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut f = self.failures.lock();
                if f.len() < 20 {
                    f.push(format!("{what}: {other:?}"));
                }
            }
        }
    }
}

/// Sends GETs to `url` in a loop until `stop`, each on a new connection or on pooled keep-alive
/// connections.
fn drive(
    url: String,
    user: Option<&'static str>,
    want: u16,
    fresh_connections: bool,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> tokio::task::JoinHandle<()> {
    rt().spawn(async move {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20));
        if fresh_connections {
            builder = builder.pool_max_idle_per_host(0);
        }
        let http = builder.build().unwrap();
        while !stop.load(Ordering::Relaxed) {
            let mut request = http.get(&url);
            if let Some(user) = user {
                request = request.header(USER_HEADER, user);
            }
            let result = match request.send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    r.bytes()
                        .await
                        .map(|_| status)
                        .map_err(|e| format!("body: {e}"))
                }
                Err(e) => Err(format!("{e:?}")),
            };
            tally.record(&url, result, want);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
}

#[test]
fn an_upgrade_under_load_refuses_no_connection_and_loses_no_request() {
    let mut w = World::start_with(|c| c.grace_period_seconds = 4);
    rt().block_on(w.config().pair(&w.sim, "dr.jones", "jones@pkb.example"));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut drivers = Vec::new();
    for fresh in [true, true, false, false] {
        drivers.push(drive(
            w.proxy.url("/page"),
            None,
            200,
            fresh,
            stop.clone(),
            tally.clone(),
        ));
    }
    drivers.push(drive(
        w.proxy.url("/_pkb/launch"),
        Some("dr.jones"),
        302,
        false,
        stop.clone(),
        tally.clone(),
    ));
    std::thread::sleep(Duration::from_millis(500));
    let before = tally.ok.load(Ordering::Relaxed);

    let new = w.proxy.upgrade(&w.dir);
    let mut old = std::mem::replace(&mut w.proxy, new);
    let old_pid = old.pid();
    assert_ne!(old_pid, w.proxy.pid());
    // The old process keeps accepting for about five seconds after SIGQUIT, then stops and
    // finishes its in-flight requests. Slow requests started just before that moment are in
    // flight in whichever process accepted them when it stops accepting.
    std::thread::sleep(Duration::from_millis(4300));
    let slow: Vec<_> = (0..8)
        .map(|_| {
            let url = w.proxy.url("/slow?ms=2500");
            rt().spawn(async move {
                let http = reqwest::Client::builder()
                    .pool_max_idle_per_host(0)
                    .build()
                    .unwrap();
                match http.get(url).send().await {
                    Ok(r) => r.text().await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            })
        })
        .collect();
    let status = old.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "the old process exits cleanly: {status}");
    let at_old_exit = tally.ok.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    rt().block_on(async {
        for d in drivers {
            d.await.unwrap();
        }
        for s in slow {
            assert_eq!(s.await.unwrap().as_deref(), Ok("slow done"));
        }
    });

    eprintln!(
        "upgrade under load: {} requests answered ({before} before the upgrade, {at_old_exit} when the old process exited), {} failed",
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed)
    );
    let failures = tally.failures.lock().clone();
    assert_eq!(
        tally.failed.load(Ordering::Relaxed),
        0,
        "failed requests: {failures:#?}"
    );
    let ok = tally.ok.load(Ordering::Relaxed);
    assert!(before > 20, "traffic flowed before the upgrade ({before})");
    assert!(
        ok > at_old_exit + 20,
        "the new process served after the old one left ({at_old_exit} → {ok})"
    );
    assert!(old.log().contains("SIGQUIT received"), "{}", old.log());
    assert_no_secrets(&w.sim, &old.output());
}

/// The systemd flow (`Type=forking`, `PIDFile=`, `ExecReload=` SIGQUIT then `run --daemon
/// --upgrade`): the daemon writes its pid file, the upgrade replaces it, the old process leaves.
#[test]
fn a_daemon_upgrades_the_same_way_and_hands_over_its_pid_file() {
    let sim = Sim::start();
    let upstream = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let config = ProxyConfig::new(&dir, &upstream, &sim);
    let conf_path = dir.path().join("daemon.toml");
    std::fs::write(&conf_path, config.toml()).unwrap();
    let run = |extra: &[&str]| {
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_pkb-edge"))
            .args(["run", "--daemon", "--config"])
            .arg(&conf_path)
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "the foreground part exits 0 once the daemon is up"
        );
    };
    let pid_in_file = || -> u32 {
        for _ in 0..500 {
            if let Some(pid) = std::fs::read_to_string(&config.pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                return pid;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no pid in {}", config.pid_file.display());
    };
    // Running, not a zombie waiting for a reaper.
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
    };
    let get = || {
        rt().block_on(async {
            client()
                .get(config.url("/page"))
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };

    run(&[]);
    let first = pid_in_file();
    assert!(alive(first));
    // The foreground part exits once it has forked; the daemon binds its listeners after that,
    // so the first request waits for the port (what a load balancer's health check does).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", config.port)).is_err() {
        assert!(alive(first), "the daemon died before it listened");
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon was not listening after 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(get().unwrap(), 200);

    std::process::Command::new("kill")
        .args(["-QUIT", &first.to_string()])
        .status()
        .unwrap();
    run(&["--upgrade"]);
    let second = pid_in_file();
    assert_ne!(first, second, "the pid file names the new process");
    assert_eq!(get().unwrap(), 200);
    // The old process leaves after its close timeout and grace period.
    for _ in 0..300 {
        if !alive(first) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(first), "the old process exited");
    assert_eq!(get().unwrap(), 200);
    std::process::Command::new("kill")
        .args(["-TERM", &second.to_string()])
        .status()
        .unwrap();
    for _ in 0..300 {
        if !alive(second) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the daemon did not exit on SIGTERM");
}
