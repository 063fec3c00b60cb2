//! Several instances on one PostgreSQL store: one refresh per user across instances, stale caches
//! that never refresh twice, revocations seen everywhere at once, database cuts that only
//! launches notice, and migration from SQLite. Each test works in a schema of its own in the
//! database named by PKB_EDGE_TEST_POSTGRES_URL (default: the local server,
//! postgres://postgres@127.0.0.1:5432/postgres, as `scripts/setup.sh` leaves it). An unreachable
//! server fails every test with a message saying how to start it; only PKB_EDGE_SKIP_POSTGRES=1
//! skips them, and each skipped test then prints NOT RUN on the terminal.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pkb_edge::store::crypto::Keyring;
use pkb_edge::store::TokenSet;

/// A schema of its own, dropped afterwards.
struct Schema {
    base: String,
    name: String,
}

/// The server the tests use unless PKB_EDGE_TEST_POSTGRES_URL names another: the local one, as
/// `scripts/setup.sh` leaves it (database `postgres`, which every server has).
const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

impl Schema {
    /// A fresh schema, or `None` when PKB_EDGE_SKIP_POSTGRES=1 (said on the terminal: the test
    /// reports "ok" without having tested anything). Fails the test when the server cannot be
    /// used, saying how to start it.
    fn create() -> Option<Schema> {
        if std::env::var("PKB_EDGE_SKIP_POSTGRES").is_ok_and(|v| v == "1") {
            not_run();
            return None;
        }
        let base =
            std::env::var("PKB_EDGE_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.into());
        let name = format!("t_{:016x}", rand::random::<u64>());
        let created = rt().block_on(async {
            let mut config: tokio_postgres::Config = base.parse()?;
            // An address that drops packets fails the test too, rather than hanging it.
            config.connect_timeout(Duration::from_secs(10));
            let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
            let driver = tokio::spawn(connection);
            client
                .batch_execute(&format!("CREATE SCHEMA {name}"))
                .await?;
            drop(client);
            let _ = driver.await;
            Ok::<_, tokio_postgres::Error>(())
        });
        if let Err(e) = created {
            panic!(
                "PostgreSQL at {base} cannot be used: {e}{cause}\n\
                 These tests need a PostgreSQL server. Start the local one: `{start}` \
                 (`bash scripts/setup.sh` installs PostgreSQL, starts it and lets the `postgres` \
                 role in over 127.0.0.1); or point PKB_EDGE_TEST_POSTGRES_URL at another server; \
                 or set PKB_EDGE_SKIP_POSTGRES=1 to leave these tests out (they then report \
                 \"ok\" having tested nothing).",
                cause = std::error::Error::source(&e)
                    .map(|c| format!(" ({c})"))
                    .unwrap_or_default(),
                start = start_command(),
            );
        }
        Some(Schema { base, name })
    }

    /// The store URL for this schema, through `via` (a relay) if given.
    fn url_via(&self, via: Option<SocketAddr>) -> String {
        let mut url = url::Url::parse(&self.base).unwrap();
        if let Some(addr) = via {
            url.set_host(Some(&addr.ip().to_string())).unwrap();
            url.set_port(Some(addr.port())).unwrap();
        }
        // `options` is handed to the server as command-line options; a space must be %20.
        url.set_query(Some(&format!("options=-c%20search_path%3D{}", self.name)));
        url.to_string()
    }

    fn url(&self) -> String {
        self.url_via(None)
    }

    fn sql(&self, sql: &str) {
        rt().block_on(execute(&self.url(), sql));
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name);
        rt().block_on(execute(&self.base, &sql));
    }
}

/// Says on the terminal, past the test harness's capture of `eprintln!` (which hides the output
/// of passing tests), that this test did not run.
fn not_run() {
    use std::io::Write;
    let current = std::thread::current();
    let test = current.name().unwrap_or("a PostgreSQL test");
    let _ = writeln!(
        std::io::stderr(),
        "NOT RUN: {test} (PKB_EDGE_SKIP_POSTGRES=1; its \"ok\" means nothing was tested)"
    );
}

/// How to start the local server: the cluster Debian's `postgresql` package made, if any.
fn start_command() -> String {
    let version = std::fs::read_dir("/etc/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .max_by_key(|v| v.parse::<u32>().unwrap_or(0));
    match version {
        Some(v) => format!("sudo pg_ctlcluster {v} main start"),
        None => "sudo apt-get install postgresql".into(),
    }
}

async fn execute(url: &str, sql: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    client.batch_execute(sql).await.unwrap();
    drop(client);
    let _ = driver.await;
}

/// Several proxies on one store, each with its own port and ops port.
fn instances(
    n: usize,
    store_url: &str,
    adjust: impl Fn(&mut ProxyConfig),
) -> (Sim, Upstream, tempfile::TempDir, Vec<Proxy>) {
    let sim = Sim::start();
    let upstream = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let keys = Keyring::generate_line("k1");
    let proxies = (0..n)
        .map(|_| {
            let mut c = ProxyConfig::new(&dir, &upstream, &sim);
            c.store_url = Some(store_url.to_string());
            c.keys = keys.clone();
            c.ops_port = Some(free_port());
            c.upgrade_sock = dir.path().join(format!("upgrade-{}.sock", c.port));
            c.pid_file = dir.path().join(format!("pid-{}", c.port));
            adjust(&mut c);
            Proxy::start(&dir, &c)
        })
        .collect();
    (sim, upstream, dir, proxies)
}

async fn launch(proxy: &Proxy, user: &str) -> reqwest::Response {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(client)
        .get(proxy.url("/_pkb/launch"))
        .header(USER_HEADER, user)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
}

#[test]
fn three_instances_one_expired_user_300_launches_one_refresh_per_round() {
    let Some(schema) = Schema::create() else {
        return;
    };
    let (sim, _upstream, _dir, proxies) = instances(3, &schema.url(), |_| {});
    rt().block_on(
        proxies[0]
            .config
            .pair(&sim, "dr.jones", "jones@pkb.example"),
    );
    let proxies = Arc::new(proxies);
    for round in 1..=20u64 {
        // The access token expires (as if its time had come): written to the store the way a
        // refresh writes, so every instance sees a new version.
        schema.sql(
            "UPDATE pairings SET access_expires_at = 0, version = nextval('pairing_versions')",
        );
        let otp_before = sim.count("otp");
        let t0 = std::time::Instant::now();
        let statuses = rt().block_on(async {
            let tasks: Vec<_> = (0..300)
                .map(|n| {
                    let proxies = proxies.clone();
                    tokio::spawn(async move {
                        launch(&proxies[n % 3], "dr.jones").await.status().as_u16()
                    })
                })
                .collect();
            let mut statuses = Vec::new();
            for t in tasks {
                statuses.push(t.await.unwrap());
            }
            statuses
        });
        eprintln!("round {round}: {:?}", t0.elapsed());
        let redirects = statuses.iter().filter(|s| **s == 302).count();
        assert_eq!(redirects, 300, "round {round}: {statuses:?}");
        assert_eq!(
            sim.count("token_refresh"),
            round,
            "round {round}: exactly one refresh across the three instances"
        );
        assert_eq!(sim.count("otp") - otp_before, 300);
    }
    let stored = rt().block_on(proxies[0].config.stored("dr.jones"));
    assert!(stored.is_some(), "the pairing survived 20 rounds");
    for p in proxies.iter() {
        assert_no_secrets(&sim, &p.output());
    }
}

#[test]
fn an_instance_with_stale_cached_tokens_does_not_refresh_them_again() {
    let Some(schema) = Schema::create() else {
        return;
    };
    let (sim, _upstream, _dir, proxies) = instances(2, &schema.url(), |c| c.refresh_skew_secs = 1);
    let (a, b) = (&proxies[0], &proxies[1]);
    rt().block_on(async {
        // Tokens that are good for two more seconds beyond the 1 s refresh skew.
        sim.knobs(serde_json::json!({ "access_token_lifetime_secs": 4 }));
        a.config.pair(&sim, "dr.jones", "jones@pkb.example").await;
        sim.knobs(serde_json::json!({ "access_token_lifetime_secs": 1800 }));
        // Both instances cache the same tokens.
        assert_eq!(launch(a, "dr.jones").await.status(), 302);
        assert_eq!(launch(b, "dr.jones").await.status(), 302);
        tokio::time::sleep(Duration::from_millis(3200)).await;
        // A refreshes; B's cached copy has expired too, and still holds the old refresh token.
        assert_eq!(launch(a, "dr.jones").await.status(), 302);
        assert_eq!(sim.count("token_refresh"), 1);
        assert_eq!(launch(b, "dr.jones").await.status(), 302);
        assert_eq!(
            sim.count("token_refresh"),
            1,
            "B used A's new tokens, and never spent the old refresh token"
        );
    });
    // The rotated refresh token is the stored one; the first was spent once.
    let stored = rt().block_on(a.config.stored("dr.jones")).unwrap();
    assert_eq!(
        rt().block_on(
            sim.spend_refresh_token(stored.tokens.refresh_token.as_ref().unwrap().expose())
        ),
        200
    );
}

#[test]
fn an_unpairing_or_revocation_on_one_instance_is_seen_by_the_others_at_once() {
    let Some(schema) = Schema::create() else {
        return;
    };
    let (sim, _upstream, dir, proxies) = instances(2, &schema.url(), |_| {});
    let (a, b) = (&proxies[0], &proxies[1]);
    rt().block_on(async {
        a.config.pair(&sim, "dr.jones", "jones@pkb.example").await;
        assert_eq!(launch(b, "dr.jones").await.status(), 302);
        let r = unpair_as(a.url("/_pkb/unpair"), "dr.jones").await;
        assert_eq!(r.status(), 200);
        // B had the pairing cached a moment ago; the bound is zero: the next launch knows.
        assert_eq!(launch(b, "dr.jones").await.status(), 404);

        // The same for `pkb-edge pairings revoke`, and for a re-pairing in between.
        a.config.pair(&sim, "dr.jones", "jones@pkb.example").await;
        assert_eq!(launch(b, "dr.jones").await.status(), 302);
    });
    let conf = dir.path().join("admin.toml");
    std::fs::write(&conf, a.config.toml()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pkb-edge"))
        .args(["pairings", "revoke", "dr.jones", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    rt().block_on(async {
        assert_eq!(launch(b, "dr.jones").await.status(), 404);
        assert_eq!(launch(a, "dr.jones").await.status(), 404);
    });
}

/// A TCP relay between the proxies and PostgreSQL that the test can cut and restore.
struct Relay {
    addr: SocketAddr,
    open: tokio::sync::watch::Sender<bool>,
}

impl Relay {
    fn start(target: SocketAddr) -> Relay {
        let listener = rt()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (open, watch) = tokio::sync::watch::channel(true);
        rt().spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !*watch.borrow() {
                    drop(inbound); // cut: closed at once
                    continue;
                }
                let mut watch = watch.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = watch.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Relay { addr, open }
    }

    fn set(&self, open: bool) {
        self.open.send_replace(open);
    }
}

#[test]
fn a_database_cut_fails_launches_fast_spares_passthrough_and_heals_by_itself() {
    let Some(schema) = Schema::create() else {
        return;
    };
    let base = url::Url::parse(&schema.base).unwrap();
    let target = format!(
        "{}:{}",
        base.host_str().unwrap(),
        base.port().unwrap_or(5432)
    )
    .parse()
    .unwrap();
    let relay = Relay::start(target);
    let (sim, _upstream, _dir, proxies) = instances(1, &schema.url_via(Some(relay.addr)), |_| {});
    let proxy = &proxies[0];
    let ops = format!("http://127.0.0.1:{}/readyz", proxy.config.ops_port.unwrap());
    rt().block_on(async {
        proxy
            .config
            .pair(&sim, "dr.jones", "jones@pkb.example")
            .await;
        assert_eq!(launch(proxy, "dr.jones").await.status(), 302);
        assert_eq!(client().get(&ops).send().await.unwrap().status(), 200);

        relay.set(false);
        for _ in 0..3 {
            let r = launch(proxy, "dr.jones").await;
            assert_eq!(r.status(), 503);
            assert!(r.headers().contains_key("retry-after"));
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["error"], "store_unavailable", "{body}");
            let page = client().get(proxy.url("/page")).send().await.unwrap();
            assert_eq!(page.status(), 200, "passthrough does not need the database");
        }
        let ready = client().get(&ops).send().await.unwrap();
        assert_eq!(ready.status(), 503);
        assert!(ready.text().await.unwrap().contains("not ready"));

        relay.set(true);
        let mut healed = false;
        for _ in 0..100 {
            if launch(proxy, "dr.jones").await.status() == 302 {
                healed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(healed, "launches work again without a restart");
        assert_eq!(client().get(&ops).send().await.unwrap().status(), 200);
    });
}

#[test]
fn migrating_10000_pairings_from_sqlite_keeps_every_one_decryptable() {
    let Some(schema) = Schema::create() else {
        return;
    };
    let sim = Sim::start();
    let upstream = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = ProxyConfig::new(&dir, &upstream, &sim);
    config.store_url = Some(schema.url());
    let sqlite_url = format!("sqlite://{}", config.db_path.display());
    let sqlite = rt().block_on(async {
        let mut c = config.clone();
        c.store_url = Some(sqlite_url.clone());
        c.pairings().await
    });
    let tokens = |n: usize| TokenSet {
        access_token: pkb_edge::core::secret::AccessToken::new(format!("at-{n}")),
        refresh_token: Some(pkb_edge::core::secret::RefreshToken::new(format!("rt-{n}"))),
        access_expires_at: 2_000_000_000 + n as i64,
    };
    rt().block_on(async {
        for n in 0..10_000 {
            sqlite
                .save(&format!("user{n:05}"), tokens(n))
                .await
                .unwrap();
        }
    });
    let conf = dir.path().join("migrate.toml");
    std::fs::write(&conf, config.toml()).unwrap();
    let migrate = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pkb-edge"))
            .args(["pairings", "migrate", "--config"])
            .arg(&conf)
            .args(["--from", &sqlite_url, "--to", &schema.url()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        migrate(),
        "10000 pairing(s) written, 0 already up to date; the target holds 10000, all of which open with the configured keys"
    );
    assert!(
        migrate().starts_with("0 pairing(s) written, 10000 already up to date"),
        "run again: nothing copied twice"
    );
    // A user refreshed at the source after the copy is brought over by the next run.
    rt().block_on(async {
        let backend = sqlite.backend();
        let mut row = backend.get("user00042").await.unwrap().unwrap();
        row.refreshed_at += 60;
        assert!(backend
            .replace_if_version(row.clone(), row.version)
            .await
            .unwrap()
            .is_some());
    });
    assert!(
        migrate().starts_with("1 pairing(s) written, 9999 already up to date"),
        "the later refresh is copied"
    );
    let pg = rt().block_on(config.pairings());
    rt().block_on(async {
        for n in 0..10_000 {
            let p = pg.get(&format!("user{n:05}")).await.unwrap().unwrap();
            assert_eq!(p.tokens, tokens(n));
        }
    });
}

#[test]
fn nhs_login_sessions_are_shared_by_every_instance() {
    let Some(schema) = Schema::create() else {
        return;
    };
    let op = nhs::start_op();
    let (_sim, _upstream, _dir, proxies) =
        instances(2, &schema.url(), |c| nhs::use_nhs_login(c, &op));
    let (a, b) = (&proxies[0], &proxies[1]);
    rt().block_on(async {
        let get = |p: &Proxy, cookie: Option<&str>| {
            let mut r = client().get(p.url("/records"));
            if let Some(c) = cookie {
                r = r.header("cookie", c);
            }
            r.send()
        };
        let r = get(a, None).await.unwrap();
        let login = nhs::login_cookie(&r).unwrap();
        let callback = nhs::nhs_login_page(header(r.headers(), "location"), 0, "allow").await;
        let r = client()
            .get(&callback)
            .header("cookie", login)
            .send()
            .await
            .unwrap();
        let cookie = nhs::session_cookie(&r);
        // Signed in on A, known on B.
        let (_, seen) = upstream_saw(get(b, Some(&cookie)).await.unwrap()).await;
        let user = seen.iter().find(|(k, _)| k == "x-authenticated-user");
        assert_eq!(
            user.map(|(_, v)| v.as_str()),
            Some(op.users()[0].sub.as_str())
        );
        // Signed out on B, gone on A.
        let r = client()
            .post(b.url("/_pkb/nhs/logout"))
            .header("cookie", &cookie)
            .header("sec-fetch-site", "same-origin")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(get(a, Some(&cookie)).await.unwrap().status(), 302);
    });
}

#[test]
fn a_store_from_before_user_owned_records_upgrades_and_keeps_its_rows() {
    let Some(schema) = Schema::create() else {
        return;
    };
    rt().block_on(async {
        // The schema as pkb-edge left it at version 3, with rows in it.
        drop(pkb_edge::store::open_backend(&schema.url()).await.unwrap());
        execute(
            &schema.url(),
            "DROP INDEX records_by_owner;
             ALTER TABLE records DROP COLUMN owner_hash, DROP COLUMN seq;
             DELETE FROM pkb_edge_schema WHERE version > 3;
             INSERT INTO records (kind, id_hash, key_id, sealed, expires_at) VALUES
               ('login_state', decode('01', 'hex'), 'k1', decode('00', 'hex'), 4000000000),
               ('session', decode('02', 'hex'), 'k1', decode('00', 'hex'), 4000000000),
               ('pair_state', decode('03', 'hex'), 'k1', decode('00', 'hex'), 4000000000);",
        )
        .await;
        drop(pkb_edge::store::open_backend(&schema.url()).await.unwrap());
        let rows = "SELECT count(*) FROM records WHERE kind IN ('session', 'pair_state')
                    AND owner_hash IS NULL AND seq IS NULL";
        assert_eq!(count(&schema.url(), rows).await, 2, "kept, owned by nobody");
        let old = "SELECT count(*) FROM records WHERE kind = 'login_state'";
        assert_eq!(count(&schema.url(), old).await, 0);
        let version = "SELECT max(version)::bigint FROM pkb_edge_schema";
        assert_eq!(count(&schema.url(), version).await, 5);
    });
}

/// A pairing started at PKB's `authorize` URL, consented to and finished at `p` as `user`: the
/// callback's status.
async fn finish_pairing(p: &Proxy, user: &str, authorize: String) -> u16 {
    let callback = consent_at_pkb(&authorize, "x@pkb.example", "allow").await;
    // PKB sends the browser to the instance that started it; the load balancer may pick another.
    let path = &callback[callback.find("/_pkb/callback?").unwrap()..];
    client()
        .get(p.url(path))
        .header(USER_HEADER, user)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A number the database answers `sql` with.
async fn count(url: &str, sql: &str) -> i64 {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    let n = client.query_one(sql, &[]).await.unwrap().get(0);
    drop(client);
    let _ = driver.await;
    n
}

#[test]
fn a_user_keeps_at_most_five_pairings_in_progress_across_instances() {
    let Some(schema) = Schema::create() else {
        return;
    };
    let (_sim, _upstream, _dir, proxies) = instances(2, &schema.url(), |_| {});
    rt().block_on(async {
        let pair = |p: &Proxy, user: &'static str| {
            client()
                .get(p.url("/_pkb/pair"))
                .header(USER_HEADER, user)
                .send()
        };
        let others = pair(&proxies[0], "dr.smith").await.unwrap();
        let others = header(others.headers(), "location").to_string();
        let mut started = Vec::new();
        for n in 0..20 {
            let r = pair(&proxies[n % 2], "dr.jones").await.unwrap();
            assert_eq!(r.status(), 302);
            started.push(header(r.headers(), "location").to_string());
        }
        let pending = "SELECT count(*) FROM records WHERE kind = 'pair_state'";
        assert_eq!(count(&schema.url(), pending).await, 5 + 1);

        // Refused at another instance than the one that started them. (A pairing finishes at
        // the instance that started it: here each has its own public URL, which PKB checks
        // again at the token step.)
        let oldest = finish_pairing(&proxies[1], "dr.jones", started[0].clone()).await;
        assert_eq!(oldest, 400, "the oldest was dropped");
        let sixth = finish_pairing(&proxies[1], "dr.jones", started[14].clone()).await;
        assert_eq!(sixth, 400, "the sixth newest was dropped");
        let newest = finish_pairing(&proxies[1], "dr.jones", started[19].clone()).await;
        assert_eq!(newest, 200, "the newest pairs");
        let others = finish_pairing(&proxies[0], "dr.smith", others).await;
        assert_eq!(
            others, 200,
            "another user's pairing in progress is untouched"
        );
    });
}

#[test]
fn event_counts_in_a_window_are_shared_and_restart_when_it_ends() {
    let Some(schema) = Schema::create() else {
        return;
    };
    rt().block_on(async {
        let a = pkb_edge::store::open_backend(&schema.url()).await.unwrap();
        let b = pkb_edge::store::open_backend(&schema.url()).await.unwrap();
        let id = b"user-hash";
        let mut counts = Vec::new();
        for (store, now) in [(&a, 1000), (&b, 1001), (&a, 4599), (&b, 4600), (&a, 4601)] {
            counts.push(
                store
                    .count_in_window("gp_refresh", id, now, 3600)
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(counts, [1, 2, 3, 1, 2]);
        assert_eq!(
            a.count_in_window("gp_refresh", b"other", 4601, 3600)
                .await
                .unwrap(),
            1
        );
    });
}

/// Refresh-ahead across instances: a user who launched through both instances makes page views
/// on both at once as their token nears expiry. The token is refreshed once, and both instances
/// then use the new one.
#[test]
fn page_views_on_two_instances_refresh_ahead_once() {
    let Some(schema) = Schema::create() else {
        return;
    };
    let (sim, _upstream, _dir, proxies) = instances(2, &schema.url(), |c| c.refresh_skew_secs = 0);
    let (a, b) = (&proxies[0], &proxies[1]);
    rt().block_on(async {
        // 4 s tokens: refresh-ahead is due after 2 s (half the lifetime).
        sim.knobs(serde_json::json!({ "access_token_lifetime_secs": 4 }));
        a.config.pair(&sim, "dr.jones", "jones@pkb.example").await;
        sim.knobs(serde_json::json!({
            "access_token_lifetime_secs": 1800,
            "latency_ms": { "token_refresh": 300 }
        }));
        assert_eq!(launch(a, "dr.jones").await.status(), 302);
        assert_eq!(launch(b, "dr.jones").await.status(), 302);
        tokio::time::sleep(Duration::from_millis(2200)).await;
        assert_eq!(sim.count("token_refresh"), 0);

        let views: Vec<_> = (0..20)
            .map(|n| {
                let url = [a, b][n % 2].url("/chart");
                tokio::spawn(async move {
                    client()
                        .get(url)
                        .header(USER_HEADER, "dr.jones")
                        .send()
                        .await
                        .unwrap()
                        .status()
                })
            })
            .collect();
        for view in views {
            assert_eq!(view.await.unwrap(), 200);
        }
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while sim.count("token_refresh") == 0 && std::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Let any second refresh (there must be none) arrive.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(
            sim.count("token_refresh"),
            1,
            "one refresh for the token, across instances"
        );
        let otp_before = sim.count("otp");
        assert_eq!(launch(a, "dr.jones").await.status(), 302);
        assert_eq!(launch(b, "dr.jones").await.status(), 302);
        assert_eq!(
            sim.count("token_refresh"),
            1,
            "both launches used the new token"
        );
        assert_eq!(sim.count("otp"), otp_before + 2);
    });
}
