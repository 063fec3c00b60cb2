//! Launch, end to end over loopback: the real binary, the PKB simulator, pairings seeded through
//! the simulator's OAuth endpoints.

mod common;

use std::time::{Duration, Instant};

use common::*;

const NHS: &str = "9434765919";

fn query_param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

async fn follow_as_browser(location: &str) -> reqwest::Response {
    client()
        .get(location)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
}

#[test]
fn launch_lands_in_pkb_with_patient_context_and_the_otp_works_once() {
    let w = World::start();
    rt().block_on(async {
        w.config().pair(&w.sim, "dr.jones", "jones@pkb.example").await;
        let r = w
            .get_as("dr.jones", &format!("/_pkb/launch?contextNationalId={NHS}&contextNationalIdType=NHS"))
            .await;
        assert_eq!(r.status(), 302);
        assert_eq!(header(r.headers(), "cache-control"), "no-store");
        assert_eq!(header(r.headers(), "referrer-policy"), "no-referrer");
        let location = header(r.headers(), "location").to_string();
        assert!(location.starts_with(&format!("{}/otp.action?otpToken=", w.sim.url())), "{location}");
        let landing = query_param(&location, "redirect_uri").unwrap();
        assert_eq!(
            landing,
            format!("/auth/patientSummary.action?tab=patientSummary&contextNationalId={NHS}&contextNationalIdType=NHS")
        );

        let view = landing_of(&r).await;
        assert_eq!(view.user, "jones@pkb.example");
        assert_eq!(view.context.get("contextNationalId").map(String::as_str), Some(NHS));
        assert_eq!(view.context.get("contextNationalIdType").map(String::as_str), Some("NHS"));

        let second = follow_as_browser(&location).await;
        assert_eq!(second.status(), 403, "an OTP is single-use");
        assert_eq!(w.sim.count("otp"), 1);
        assert_eq!(w.sim.count("token_refresh"), 0, "a fresh token is not refreshed");
    });
}

#[test]
fn launch_with_email_context_and_own_landing_path() {
    let w = World::start();
    rt().block_on(async {
        w.config().pair(&w.sim, "dr.jones", "jones@pkb.example").await;
        let r = w
            .get_as("dr.jones", "/_pkb/launch?contextUserEmail=first%2Blast%40example.com&redirect_uri=%2FlistAppointments.action%3Fview%3Dweek")
            .await;
        assert_eq!(r.status(), 302);
        let location = header(r.headers(), "location").to_string();
        let landing = query_param(&location, "redirect_uri").unwrap();
        assert_eq!(landing, "/listAppointments.action?view=week&contextUserEmail=first%2Blast@example.com");
        let view = landing_of(&r).await;
        assert_eq!(view.context.get("contextUserEmail").map(String::as_str), Some("first+last@example.com"));

        // Without context or redirect_uri, PKB chooses the landing page.
        let r = w.get_as("dr.jones", "/_pkb/launch").await;
        assert_eq!(query_param(header(r.headers(), "location"), "redirect_uri"), None);
    });
}

#[test]
fn refusals_have_the_documented_statuses_and_pages() {
    let w = World::start();
    rt().block_on(async {
        // No identity at all.
        let r = client()
            .get(w.proxy.url("/_pkb/launch"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);

        // Not paired: a page offering to link, and JSON for API clients.
        let r = w
            .get_as(
                "nobody",
                "/_pkb/launch?contextNationalId=9434765919&contextNationalIdType=NHS",
            )
            .await;
        assert_eq!(r.status(), 404);
        assert!(header(r.headers(), "content-type").starts_with("text/html"));
        let html = r.text().await.unwrap();
        assert!(html.contains("Link your PKB account"), "{html}");
        assert!(
            html.contains("/_pkb/pair?return_to=%2F_pkb%2Flaunch%3FcontextNationalId%3D9434765919"),
            "{html}"
        );
        let r = client()
            .get(w.proxy.url("/_pkb/launch"))
            .header(USER_HEADER, "nobody")
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "not_paired");

        // Bad parameters are refused before PKB is asked anything.
        w.config()
            .pair(&w.sim, "dr.jones", "jones@pkb.example")
            .await;
        for q in [
            "contextNationalId=9434765918&contextNationalIdType=NHS",
            "contextNationalId=9434765919",
            "contextNationalId=9434765919&contextNationalIdType=NHS&contextUserEmail=a%40b.example",
            "redirect_uri=/a&redirect_uri=/b",
        ] {
            let r = w.get_as("dr.jones", &format!("/_pkb/launch?{q}")).await;
            assert_eq!(r.status(), 400, "{q}");
            assert!(r.text().await.unwrap().contains("not valid"));
        }
        let r = client()
            .post(w.proxy.url("/_pkb/launch"))
            .header(USER_HEADER, "dr.jones")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405);
        assert_eq!(w.get_as("dr.jones", "/_pkb/nope").await.status(), 404);
        assert_eq!(w.sim.count("otp"), 0);
    });
}

#[test]
fn hostile_redirect_uris_are_all_refused() {
    let w = World::start();
    rt().block_on(async {
        w.config()
            .pair(&w.sim, "dr.jones", "jones@pkb.example")
            .await;
        let examples = pkb_edge::core::relative_path::HOSTILE_EXAMPLES;
        assert!(examples.len() >= 30);
        for value in examples {
            let encoded: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
            let r = w
                .get_as("dr.jones", &format!("/_pkb/launch?redirect_uri={encoded}"))
                .await;
            assert_eq!(r.status(), 400, "redirect_uri {value:?} was not refused");
            assert!(r.headers().get("location").is_none());
        }
        assert_eq!(
            w.sim.count("otp"),
            0,
            "no OTP was issued for a hostile redirect"
        );
    });
}

#[test]
fn fifty_concurrent_launches_with_an_expired_token_refresh_once() {
    let w = World::start();
    rt().block_on(async {
        // PKB issues a token that expires in a second; later ones live 30 minutes.
        w.sim.knobs(serde_json::json!({ "access_token_lifetime_secs": 1 }));
        w.config().pair(&w.sim, "dr.jones", "jones@pkb.example").await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        w.sim.knobs(serde_json::json!({ "access_token_lifetime_secs": 1800, "latency_ms": { "token_refresh": 100 } }));

        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let url = w.proxy.url("/_pkb/launch");
                tokio::spawn(async move { client().get(url).header(USER_HEADER, "dr.jones").send().await.unwrap().status() })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), 302);
        }
        assert_eq!(w.sim.count("token_refresh"), 1, "exactly one refresh for 50 concurrent launches");
        assert_eq!(w.sim.count("otp"), 50);
        let stored = w.config().stored("dr.jones").await.unwrap();
        assert!(stored.tokens.access_expires_at > pkb_edge::core::clock::Clock::now(&pkb_edge::core::clock::SystemClock) + 1000);
    });
}

#[test]
fn rotated_refresh_tokens_are_stored_and_the_old_one_is_dead() {
    // Tokens live 1 s at PKB, and each launch comes after the last token expired: every launch
    // refreshes.
    let w = World::start();
    rt().block_on(async {
        w.sim
            .knobs(serde_json::json!({ "access_token_lifetime_secs": 1 }));
        let seeded = w
            .config()
            .pair(&w.sim, "dr.jones", "jones@pkb.example")
            .await;
        let first_refresh = seeded.tokens.refresh_token.clone().unwrap();

        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(w.get_as("dr.jones", "/_pkb/launch").await.status(), 302);
        let after_one = w.config().stored("dr.jones").await.unwrap();
        assert_ne!(
            after_one.tokens.refresh_token.as_ref(),
            Some(&first_refresh),
            "rotated token stored"
        );

        // The second launch can only succeed with the rotated token.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(w.get_as("dr.jones", "/_pkb/launch").await.status(), 302);
        assert_eq!(w.sim.count("token_refresh"), 2);
        assert_eq!(
            w.sim.spend_refresh_token(first_refresh.expose()).await,
            400,
            "the old refresh token is dead"
        );
    });
}

#[test]
fn a_rejected_grant_removes_the_pairing_and_offers_relinking() {
    let w = World::start();
    rt().block_on(async {
        w.sim
            .knobs(serde_json::json!({ "access_token_lifetime_secs": 1 }));
        let seeded = w
            .config()
            .pair(&w.sim, "dr.jones", "jones@pkb.example")
            .await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // Someone else spends the refresh token: the proxy's copy is now dead at PKB.
        assert_eq!(
            w.sim
                .spend_refresh_token(seeded.tokens.refresh_token.as_ref().unwrap().expose())
                .await,
            200
        );

        let r = w.get_as("dr.jones", "/_pkb/launch").await;
        assert_eq!(r.status(), 409);
        assert!(r.text().await.unwrap().contains("/_pkb/pair?return_to="));
        assert!(
            w.config().stored("dr.jones").await.is_none(),
            "the dead pairing is deleted"
        );
        assert_eq!(w.get_as("dr.jones", "/_pkb/launch").await.status(), 404);
    });
}

#[test]
fn pkb_slow_or_down_gives_503_within_the_timeout() {
    let w = World::start_with(|c| c.timeout_ms = 500);
    rt().block_on(async {
        w.config().pair(&w.sim, "dr.jones", "jones@pkb.example").await;
        w.sim.knobs(serde_json::json!({ "latency_ms": { "otp": 5000 } }));
        let started = Instant::now();
        let r = w.get_as("dr.jones", "/_pkb/launch").await;
        assert_eq!(r.status(), 503);
        assert!(started.elapsed() < Duration::from_secs(5), "answered before PKB did");
        assert_eq!(header(r.headers(), "retry-after"), "5");
        assert!(r.text().await.unwrap().contains("Try again"));

        w.sim.knobs(serde_json::json!({ "latency_ms": { "otp": 0 }, "fail_rate": { "otp": 1.0 }, "fail_status": 502 }));
        assert_eq!(w.get_as("dr.jones", "/_pkb/launch").await.status(), 503);
        assert!(w.config().stored("dr.jones").await.is_some(), "an outage never drops a pairing");
    });

    // Nothing listening at PKB's address at all.
    let dead = free_port();
    let w = World::start_with(|c| c.pkb_base = format!("http://127.0.0.1:{dead}"));
    rt().block_on(async {
        w.config()
            .pair(&w.sim, "dr.jones", "jones@pkb.example")
            .await;
        assert_eq!(w.get_as("dr.jones", "/_pkb/launch").await.status(), 503);
    });
}

#[test]
fn tokens_are_encrypted_at_rest_and_pairings_survive_a_restart() {
    let mut w = World::start();
    let seeded = rt().block_on(w.config().pair(&w.sim, "dr.jones", "jones@pkb.example"));
    assert_eq!(
        rt().block_on(w.get_as("dr.jones", "/_pkb/launch")).status(),
        302
    );

    let status = w.proxy.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    w.proxy = Proxy::start(&w.dir, &w.config().clone());
    assert_eq!(
        rt().block_on(w.get_as("dr.jones", "/_pkb/launch")).status(),
        302
    );

    let mut raw = Vec::new();
    for entry in std::fs::read_dir(w.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().contains("pairings.db") {
            raw.extend(std::fs::read(&path).unwrap());
        }
    }
    assert!(raw.len() > 4096, "the store files were found");
    let secrets = [
        seeded.tokens.access_token.expose().to_string(),
        seeded
            .tokens
            .refresh_token
            .as_ref()
            .unwrap()
            .expose()
            .to_string(),
    ];
    for secret in &secrets {
        assert!(
            !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "a token is stored in the clear"
        );
    }
}

#[test]
fn a_missing_or_wrong_key_stops_start_up_with_a_clear_error() {
    let mut w = World::start();
    rt().block_on(w.config().pair(&w.sim, "dr.jones", "jones@pkb.example"));
    let mut other = w.config().clone();
    w.proxy.terminate();

    other.port = free_port();
    other.keys = pkb_edge::store::crypto::Keyring::generate_line("k2");
    let log = Proxy::try_start(&w.dir, &other)
        .err()
        .expect("must not start without key k1");
    assert!(
        log.contains("`k1`") && log.contains("not configured"),
        "{log}"
    );

    other.keys = pkb_edge::store::crypto::Keyring::generate_line("k1");
    let log = Proxy::try_start(&w.dir, &other)
        .err()
        .expect("must not start with the wrong k1");
    assert!(log.contains("different material"), "{log}");
}
