//! Launch latency as clinicians feel it (issue 17): a launching user's page views refresh their
//! access token ahead of need, so the next launch costs one PKB call; short-lived tokens are not
//! refreshed on every launch; users who never launch are never refreshed ahead.

mod common;

use std::time::Duration;

use common::*;

/// Polls `done` every 50 ms for up to `within`; false if it never held. (A wait for something
/// asynchronous to land, not a timing assertion.)
async fn eventually(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + within;
    while std::time::Instant::now() < until {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done()
}

/// One series' value from `/metrics` (on a thread of its own, so it can be called anywhere).
fn metric(ops_port: u16, series: &str) -> f64 {
    let text = off_thread(ops_metrics(ops_port));
    series_value(&text, series).unwrap_or_else(|| panic!("{series} not in /metrics"))
}

/// Runs `f` to completion on a thread and runtime of its own.
fn off_thread<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    })
    .join()
    .unwrap()
}

fn access_token(p: &pkb_edge::store::Pairing) -> String {
    p.tokens.access_token.expose().to_string()
}

/// Tokens of a few seconds with the default 60 s skew: the effective skew is half the lifetime,
/// so launches inside the first half use the token, and one after it refreshes once.
#[test]
fn a_short_lived_token_is_not_refreshed_on_every_launch() {
    let w = World::start();
    rt().block_on(async {
        w.sim
            .knobs(serde_json::json!({ "access_token_lifetime_secs": 20 }));
        w.config()
            .pair(&w.sim, "dr.jones", "jones@pkb.example")
            .await;
        for _ in 0..3 {
            assert_eq!(w.get_as("dr.jones", "/_pkb/launch").await.status(), 302);
        }
        assert_eq!(
            w.sim.count("token_refresh"),
            0,
            "a 20 s token is good for 10 s more at each of these launches: none refreshes"
        );
        assert_eq!(w.sim.count("otp"), 3);

        // A 2 s token: past half its life, the next launch refreshes it, once.
        w.sim
            .knobs(serde_json::json!({ "access_token_lifetime_secs": 2 }));
        w.config()
            .pair(&w.sim, "dr.smith", "smith@pkb.example")
            .await;
        w.sim
            .knobs(serde_json::json!({ "access_token_lifetime_secs": 1800 }));
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(w.get_as("dr.smith", "/_pkb/launch").await.status(), 302);
        assert_eq!(w.get_as("dr.smith", "/_pkb/launch").await.status(), 302);
        assert_eq!(w.sim.count("token_refresh"), 1);
    });
}

/// The whole point: a user who launched makes a page view as their token nears expiry; the token
/// is refreshed in the background (the page does not wait for it), and the next launch makes
/// one PKB call (the OTP), not two. A paired user who never launched is never refreshed ahead.
#[test]
fn a_launching_users_page_view_refreshes_ahead_and_the_next_launch_is_one_pkb_call() {
    let ops_port = free_port();
    let w = World::start_with(|c| {
        c.ops_port = Some(ops_port);
        // Launches refresh only what has expired: any refresh here is refresh-ahead's.
        c.refresh_skew_secs = 0;
    });
    rt().block_on(async {
        // 6 s tokens: refresh-ahead (300 s, capped at half the lifetime) is due after 3 s.
        w.sim
            .knobs(serde_json::json!({ "access_token_lifetime_secs": 6 }));
        w.config()
            .pair(&w.sim, "dr.jones", "jones@pkb.example")
            .await;
        let never_launches = w
            .config()
            .pair(&w.sim, "dr.smith", "smith@pkb.example")
            .await;
        w.sim.knobs(serde_json::json!({
            "access_token_lifetime_secs": 1800,
            "latency_ms": { "token_refresh": 1500 }
        }));
        assert_eq!(w.get_as("dr.jones", "/_pkb/launch").await.status(), 302);
        // Not yet due: page views change nothing.
        assert_eq!(w.get_as("dr.jones", "/chart").await.status(), 200);
        assert_eq!(w.get_as("dr.smith", "/chart").await.status(), 200);
        tokio::time::sleep(Duration::from_millis(3200)).await;
        assert_eq!(w.sim.count("token_refresh"), 0);

        let before = w.config().stored("dr.jones").await.unwrap();
        // Due now. dr.smith's page view first: if it were going to refresh, it would have by
        // the time dr.jones's has.
        assert_eq!(w.get_as("dr.smith", "/chart").await.status(), 200);
        assert_eq!(w.get_as("dr.jones", "/chart").await.status(), 200);
        assert_eq!(
            access_token(&w.config().stored("dr.jones").await.unwrap()),
            access_token(&before),
            "the page was answered while PKB (1.5 s) was still refreshing"
        );
        // More page views while the refresh is in flight start no other.
        for _ in 0..5 {
            assert_eq!(w.get_as("dr.jones", "/chart").await.status(), 200);
        }
        let mut refreshed = None;
        assert!(
            eventually(Duration::from_secs(10), || {
                refreshed = rt_stored(&w, "dr.jones");
                refreshed
                    .as_ref()
                    .is_some_and(|p| access_token(p) != access_token(&before))
            })
            .await,
            "the token was refreshed in the background"
        );
        assert_eq!(
            w.sim.count("token_refresh"),
            1,
            "one refresh, for dr.jones only"
        );
        assert_eq!(
            access_token(&w.config().stored("dr.smith").await.unwrap()),
            access_token(&never_launches),
            "a user who never launched is never refreshed ahead"
        );

        // The next launch: the OTP call only.
        let otp_before = w.sim.count("otp");
        assert_eq!(w.get_as("dr.jones", "/_pkb/launch").await.status(), 302);
        assert_eq!(w.sim.count("token_refresh"), 1);
        assert_eq!(w.sim.count("otp"), otp_before + 1);
    });
    assert_eq!(
        metric(
            ops_port,
            r#"pkb_edge_token_refresh_total{outcome="refreshed",trigger="ahead"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            ops_port,
            r#"pkb_edge_token_refresh_total{outcome="refreshed",trigger="launch"}"#
        ),
        0.0
    );
}

/// The stored pairing, read off the test's runtime (for `eventually`'s closure).
fn rt_stored(w: &World, user: &str) -> Option<std::sync::Arc<pkb_edge::store::Pairing>> {
    let config = w.config().clone();
    let user = user.to_string();
    off_thread(async move { config.stored(&user).await })
}

/// A refresh-ahead that fails (PKB down) changes nothing for the page, and is not retried on
/// every page view; a user who launched and then unlinked is looked up once, then remembered as
/// unpaired (no store read per page view).
#[test]
fn a_failed_refresh_ahead_is_harmless_and_an_unpaired_user_costs_no_store_reads() {
    let ops_port = free_port();
    let w = World::start_with(|c| {
        c.ops_port = Some(ops_port);
        c.refresh_skew_secs = 0;
    });
    rt().block_on(async {
        w.sim
            .knobs(serde_json::json!({ "access_token_lifetime_secs": 4 }));
        w.config()
            .pair(&w.sim, "dr.jones", "jones@pkb.example")
            .await;
        w.config()
            .pair(&w.sim, "dr.smith", "smith@pkb.example")
            .await;
        assert_eq!(w.get_as("dr.jones", "/_pkb/launch").await.status(), 302);
        assert_eq!(w.get_as("dr.smith", "/_pkb/launch").await.status(), 302);
        tokio::time::sleep(Duration::from_millis(2200)).await;

        // PKB's token endpoint is down: pages are unaffected, one attempt per back-off.
        w.sim.knobs(serde_json::json!({
            "fail_rate": { "token_refresh": 1.0 },
            "fail_status": 503
        }));
        for _ in 0..10 {
            assert_eq!(w.get_as("dr.jones", "/chart").await.status(), 200);
        }
        assert!(
            eventually(Duration::from_secs(5), || w.sim.count("token_refresh") >= 1).await,
            "the refresh was tried"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        for _ in 0..10 {
            assert_eq!(w.get_as("dr.jones", "/chart").await.status(), 200);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            w.sim.count("token_refresh"),
            1,
            "twenty page views during an outage: one refresh attempt"
        );
        assert!(
            w.config().stored("dr.jones").await.is_some(),
            "a failed refresh-ahead keeps the pairing"
        );

        // dr.smith unlinks. Their next page view looks them up once (a cache miss), then
        // they are known unpaired: more page views read nothing.
        assert_eq!(
            unpair_as(w.proxy.url("/_pkb/unpair"), "dr.smith")
                .await
                .status(),
            200
        );
        let misses = || metric(ops_port, r#"pkb_edge_token_cache_total{result="miss"}"#);
        let before = misses();
        assert_eq!(w.get_as("dr.smith", "/chart").await.status(), 200);
        assert!(
            eventually(Duration::from_secs(5), || misses() == before + 1.0).await,
            "the unpaired user was looked up once"
        );
        for _ in 0..10 {
            assert_eq!(w.get_as("dr.smith", "/chart").await.status(), 200);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            misses(),
            before + 1.0,
            "no store read per page view once known unpaired"
        );
    });
}

/// `pkb.refresh_ahead_secs = 0` turns it off: the page view refreshes nothing and the launch
/// pays the refresh itself.
#[test]
fn refresh_ahead_can_be_turned_off() {
    let w = World::start_with(|c| {
        c.refresh_skew_secs = 0;
        c.pkb_extra = "refresh_ahead_secs = 0".into();
    });
    rt().block_on(async {
        w.sim
            .knobs(serde_json::json!({ "access_token_lifetime_secs": 2 }));
        w.config()
            .pair(&w.sim, "dr.jones", "jones@pkb.example")
            .await;
        assert_eq!(w.get_as("dr.jones", "/_pkb/launch").await.status(), 302);
        w.sim
            .knobs(serde_json::json!({ "access_token_lifetime_secs": 1800 }));
        tokio::time::sleep(Duration::from_millis(2100)).await;
        for _ in 0..5 {
            assert_eq!(w.get_as("dr.jones", "/chart").await.status(), 200);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(w.sim.count("token_refresh"), 0);
        assert_eq!(w.get_as("dr.jones", "/_pkb/launch").await.status(), 302);
        assert_eq!(
            w.sim.count("token_refresh"),
            1,
            "the launch refreshed, as before"
        );
    });
}
