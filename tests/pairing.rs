//! Pairing with PKB over real HTTP: /pair → PKB's consent (the simulator) → /callback, and every
//! way a callback is refused with nothing stored; unpair's same-origin rule; status.

mod common;

use common::*;

fn param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A pairing started by `user`, answered at PKB by `pkb_user` with `decision`: the callback path
/// PKB sends the browser back to (not yet followed).
async fn consented(w: &World, user: &str, pkb_user: &str, decision: &str) -> String {
    let authorize = start_pairing(w, user, None).await;
    callback_path(w, &consent_at_pkb(&authorize, pkb_user, decision).await)
}

#[test]
fn pairing_round_trip_then_launch() {
    let w = World::start();
    rt().block_on(async {
        let launch = "/_pkb/launch?contextNationalId=9434765919&contextNationalIdType=NHS";
        let authorize = start_pairing(&w, "dr.jones", Some(launch)).await;
        assert!(authorize.starts_with(&format!("{}/apiAuthorize.action?", w.sim.url())));
        assert_eq!(param(&authorize, "response_type").as_deref(), Some("code"));
        assert_eq!(param(&authorize, "client_id").as_deref(), Some(CLIENT_ID));
        assert_eq!(
            param(&authorize, "redirect_uri"),
            Some(w.proxy.url("/_pkb/callback"))
        );
        assert_eq!(param(&authorize, "scope").as_deref(), Some("CLINICIAN"));
        assert_eq!(
            param(&authorize, "code_challenge_method").as_deref(),
            Some("S256")
        );
        assert_eq!(param(&authorize, "code_challenge").unwrap().len(), 43);
        assert_eq!(param(&authorize, "state").unwrap().len(), 43);
        assert_eq!(
            w.get_as("dr.jones", "/_pkb/status")
                .await
                .json::<serde_json::Value>()
                .await
                .unwrap()["paired"],
            false
        );

        let callback = consent_at_pkb(&authorize, "jones@pkb.example", "allow").await;
        let r = w.get_as("dr.jones", &callback_path(&w, &callback)).await;
        assert_eq!(r.status(), 302);
        assert_eq!(
            header(r.headers(), "location"),
            launch,
            "back to where the user was going"
        );

        let stored = w.config().stored("dr.jones").await.expect("paired");
        assert!(stored.tokens.refresh_token.is_some());
        assert_eq!(
            w.get_as("dr.jones", "/_pkb/status")
                .await
                .json::<serde_json::Value>()
                .await
                .unwrap()["paired"],
            true
        );
        let r = w.get_as("dr.jones", launch).await;
        assert_eq!(r.status(), 302);
        let view = landing_of(&r).await;
        assert_eq!(view.user, "jones@pkb.example");

        // Without return_to, a "linked" page.
        let callback = consented(&w, "dr.smith", "smith@pkb.example", "allow").await;
        let r = w.get_as("dr.smith", &callback).await;
        assert_eq!(r.status(), 200);
        let html = r.text().await.unwrap();
        assert!(html.contains("Your PKB account is linked"), "{html}");
        assert!(html.contains("action=\"/_pkb/unpair\""));
    });
}

#[test]
fn refused_callbacks_store_nothing() {
    let w = World::start();
    rt().block_on(async {
        // Missing, malformed and unknown states.
        for path in [
            "/_pkb/callback?code=abc",
            "/_pkb/callback?code=abc&state=short",
            &format!("/_pkb/callback?code=abc&state={}", "A".repeat(43)),
        ] {
            let r = w.get_as("dr.jones", path).await;
            assert_eq!(r.status(), 400, "{path}");
        }

        // Another user's state: refused, and spent.
        let callback = consented(&w, "dr.jones", "jones@pkb.example", "allow").await;
        let r = w.get_as("mallory", &callback).await;
        assert_eq!(r.status(), 403);
        assert!(r.text().await.unwrap().contains("different user"));
        assert_eq!(
            w.get_as("dr.jones", &callback).await.status(),
            400,
            "the state was spent by the refusal"
        );

        // Replay: the first use pairs, the second is refused.
        let callback = consented(&w, "dr.jones", "jones@pkb.example", "allow").await;
        assert_eq!(w.get_as("dr.jones", &callback).await.status(), 200);
        let version = w.config().stored("dr.jones").await.unwrap().version;
        let r = w.get_as("dr.jones", &callback).await;
        assert_eq!(r.status(), 400);
        assert!(r.text().await.unwrap().contains("already been used"));
        assert_eq!(
            w.config().stored("dr.jones").await.unwrap().version,
            version,
            "nothing rewritten by a replay"
        );

        // The user says no at PKB.
        let callback = consented(&w, "dr.brown", "brown@pkb.example", "deny").await;
        assert!(callback.contains("error=access_denied"));
        let r = w.get_as("dr.brown", &callback).await;
        assert_eq!(r.status(), 403);
        assert!(r
            .text()
            .await
            .unwrap()
            .contains("You chose not to allow access"));

        // PKB's token endpoint fails.
        w.sim
            .knobs(serde_json::json!({ "fail_rate": { "token_authorization_code": 1.0 } }));
        let callback = consented(&w, "dr.green", "green@pkb.example", "allow").await;
        assert_eq!(w.get_as("dr.green", &callback).await.status(), 503);
        w.sim
            .knobs(serde_json::json!({ "fail_rate": { "token_authorization_code": 0.0 } }));

        // A code PKB does not accept (tampered): nothing stored.
        let callback = consented(&w, "dr.white", "white@pkb.example", "allow").await;
        let tampered = callback.replace("code=", "code=x");
        assert_eq!(w.get_as("dr.white", &tampered).await.status(), 400);

        for user in ["mallory", "dr.brown", "dr.green", "dr.white"] {
            assert!(
                w.config().stored(user).await.is_none(),
                "{user} must not be paired"
            );
        }

        // Bad return_to and no identity at the start.
        assert_eq!(
            w.get_as("dr.jones", "/_pkb/pair?return_to=%2F%2Fevil.example")
                .await
                .status(),
            400
        );
        assert_eq!(
            client()
                .get(w.proxy.url("/_pkb/pair"))
                .send()
                .await
                .unwrap()
                .status(),
            401
        );
        assert_eq!(
            client()
                .get(w.proxy.url("/_pkb/status"))
                .send()
                .await
                .unwrap()
                .status(),
            401
        );
    });
}

#[test]
fn expired_state_is_refused() {
    let w = World::start_with(|c| c.state_ttl_secs = 1);
    rt().block_on(async {
        let callback = consented(&w, "dr.jones", "jones@pkb.example", "allow").await;
        tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
        let r = w.get_as("dr.jones", &callback).await;
        assert_eq!(r.status(), 400);
        assert!(r.text().await.unwrap().contains("expired"));
        assert!(w.config().stored("dr.jones").await.is_none());
    });
}

#[test]
fn re_pairing_replaces_the_old_pairing() {
    let w = World::start();
    rt().block_on(async {
        for pkb_user in ["first@pkb.example", "second@pkb.example"] {
            let callback = consented(&w, "dr.jones", pkb_user, "allow").await;
            assert_eq!(w.get_as("dr.jones", &callback).await.status(), 200);
        }
        let stored = w.config().stored("dr.jones").await.unwrap();
        assert_eq!(stored.version, 2);
        let r = w.get_as("dr.jones", "/_pkb/launch").await;
        let view = landing_of(&r).await;
        assert_eq!(view.user, "second@pkb.example");
    });
}

#[test]
fn unpair_requires_same_origin() {
    let w = World::start();
    rt().block_on(async {
        w.config()
            .pair(&w.sim, "dr.jones", "jones@pkb.example")
            .await;
        let unpair = |origin: Option<&'static str>, site: Option<&'static str>| {
            let mut r = client()
                .post(w.proxy.url("/_pkb/unpair"))
                .header(USER_HEADER, "dr.jones");
            if let Some(o) = origin {
                r = r.header("origin", o);
            }
            if let Some(s) = site {
                r = r.header("sec-fetch-site", s);
            }
            r.send()
        };
        assert_eq!(
            unpair(Some("https://evil.example"), Some("cross-site"))
                .await
                .unwrap()
                .status(),
            403
        );
        assert_eq!(
            unpair(Some("https://evil.example"), None)
                .await
                .unwrap()
                .status(),
            403
        );
        assert_eq!(unpair(None, None).await.unwrap().status(), 403);
        assert_eq!(unpair(None, Some("same-site")).await.unwrap().status(), 403);
        assert!(
            w.config().stored("dr.jones").await.is_some(),
            "refused unpairs change nothing"
        );
        assert_eq!(w.get_as("dr.jones", "/_pkb/unpair").await.status(), 405);

        let public_origin: &'static str = Box::leak(w.proxy.url("").into_boxed_str());
        let r = unpair(Some(public_origin), None).await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().contains("no longer linked"));
        assert!(w.config().stored("dr.jones").await.is_none());
        assert_eq!(
            w.get_as("dr.jones", "/_pkb/launch").await.status(),
            404,
            "the cache forgot too"
        );
        assert_eq!(
            w.get_as("dr.jones", "/_pkb/status")
                .await
                .json::<serde_json::Value>()
                .await
                .unwrap()["paired"],
            false
        );
    });
}

#[test]
fn a_user_keeps_at_most_five_pairings_in_progress_the_newest() {
    let w = World::start();
    rt().block_on(async {
        let others_first = start_pairing(&w, "dr.smith", None).await;
        let started: Vec<String> = {
            let mut v = Vec::new();
            for _ in 0..20 {
                v.push(start_pairing(&w, "dr.jones", None).await);
            }
            v
        };
        let others_last = start_pairing(&w, "dr.smith", None).await;
        assert_eq!(
            w.config().record_rows(Some("pair_state")),
            5 + 2,
            "dr.jones's five newest, and dr.smith's two"
        );

        // The oldest, and the sixth newest, are gone: the answer for a used or unknown link.
        for dropped in [&started[0], &started[14]] {
            let callback = consent_at_pkb(dropped, "jones@pkb.example", "allow").await;
            let r = w.get_as("dr.jones", &callback_path(&w, &callback)).await;
            assert_eq!(r.status(), 400);
            assert!(r.text().await.unwrap().contains("already been used"));
        }
        assert!(w.config().stored("dr.jones").await.is_none());
        // The newest pairs.
        let callback = consent_at_pkb(&started[19], "jones@pkb.example", "allow").await;
        let r = w.get_as("dr.jones", &callback_path(&w, &callback)).await;
        assert_eq!(r.status(), 200);
        assert!(w.config().stored("dr.jones").await.is_some());
        // Another user's pairings in progress were never touched.
        for (n, authorize) in [others_first, others_last].iter().enumerate() {
            let callback = consent_at_pkb(authorize, "smith@pkb.example", "allow").await;
            let r = w.get_as("dr.smith", &callback_path(&w, &callback)).await;
            assert_eq!(r.status(), 200, "dr.smith's pairing {n}");
        }
    });
}
