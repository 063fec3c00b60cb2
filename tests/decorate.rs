//! Data-availability decoration: PKB's dataFromOtherOrg as a header on the upstream's pages,
//! looked up beside the upstream call, cached, and never failing or stalling the page.

mod common;

use std::time::{Duration, Instant};

use common::*;

const WITH_DATA: &str = "9990000018"; // the simulator says dataFromOtherOrg: true
const WITHOUT_DATA: &str = "9990000026"; // false
const UNKNOWN_TO_PKB: &str = "9990000042"; // valid, but PKB answers 404

fn decorated(budget_ms: u64) -> impl FnOnce(&mut ProxyConfig) {
    move |c| {
        c.extra_toml = format!(
            "[decorate]\npatient_from = {{ path_regex = '^/patients/(\\d{{10}})' }}\nbudget_ms = {budget_ms}\nttl_secs = 300\n"
        )
    }
}

fn availability(r: &reqwest::Response) -> Option<String> {
    let values: Vec<_> = r.headers().get_all("x-pkb-data-available").iter().collect();
    assert!(
        values.len() <= 1,
        "the header is never duplicated: {values:?}"
    );
    values.first().map(|v| v.to_str().unwrap().to_string())
}

#[test]
fn pages_say_true_false_or_unknown_and_are_private() {
    let w = World::start_with(decorated(2000));
    rt().block_on(async {
        w.config()
            .pair(&w.sim, "dr.jones", "jones@pkb.example")
            .await;
        let r = w
            .get_as(
                "dr.jones",
                &format!("/patients/{WITH_DATA}?cc=public,max-age=60&vary=Accept-Encoding"),
            )
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(availability(&r).as_deref(), Some("true"));
        assert_eq!(header(r.headers(), "cache-control"), "private, max-age=60");
        assert_eq!(
            header(r.headers(), "vary").to_ascii_lowercase(),
            "accept-encoding, x-authenticated-user"
        );

        let r = w
            .get_as("dr.jones", &format!("/patients/{WITHOUT_DATA}"))
            .await;
        assert_eq!(availability(&r).as_deref(), Some("false"));
        let r = w
            .get_as("dr.jones", &format!("/patients/{UNKNOWN_TO_PKB}"))
            .await;
        assert_eq!(
            availability(&r).as_deref(),
            Some("false"),
            "PKB's 404: no data from other organisations"
        );

        // Not paired: `unknown`, without asking PKB. Anonymous: no header at all.
        let before = w.sim.count("data_from_other_org");
        let r = w
            .get_as("dr.unpaired", &format!("/patients/{WITH_DATA}"))
            .await;
        assert_eq!(availability(&r).as_deref(), Some("unknown"));
        let r = client()
            .get(w.proxy.url(&format!("/patients/{WITH_DATA}")))
            .send()
            .await
            .unwrap();
        assert_eq!(availability(&r), None);
        // An invalid NHS number is never sent to PKB; pages without a patient are left alone.
        let r = w.get_as("dr.jones", "/patients/9990000019").await;
        assert_eq!(availability(&r), None);
        let r = w.get_as("dr.jones", "/clinic-list").await;
        assert_eq!(availability(&r), None);
        assert_eq!(w.sim.count("data_from_other_org"), before);

        // Only 2xx responses to GET/HEAD are decorated.
        let r = w
            .get_as("dr.jones", &format!("/patients/{WITH_DATA}?status=404"))
            .await;
        assert_eq!(r.status(), 404);
        assert_eq!(availability(&r), None);
        let r = client()
            .post(w.proxy.url(&format!("/patients/{WITH_DATA}")))
            .header(USER_HEADER, "dr.jones")
            .send()
            .await
            .unwrap();
        assert_eq!(availability(&r), None);
        let r = client()
            .head(w.proxy.url(&format!("/patients/{WITH_DATA}")))
            .header(USER_HEADER, "dr.jones")
            .send()
            .await
            .unwrap();
        assert_eq!(availability(&r).as_deref(), Some("true"));
    });
}

#[test]
fn answers_are_cached_and_concurrent_requests_share_one_call() {
    let w = World::start_with(decorated(3000));
    rt().block_on(async {
        w.config()
            .pair(&w.sim, "dr.jones", "jones@pkb.example")
            .await;
        let path = format!("/patients/{WITH_DATA}");
        assert_eq!(
            availability(&w.get_as("dr.jones", &path).await).as_deref(),
            Some("true")
        );
        assert_eq!(
            availability(&w.get_as("dr.jones", &path).await).as_deref(),
            Some("true")
        );
        assert_eq!(
            w.sim.count("data_from_other_org"),
            1,
            "the second page came from the cache"
        );

        w.sim
            .knobs(serde_json::json!({ "latency_ms": { "data_from_other_org": 300 } }));
        let path = format!("/patients/{WITHOUT_DATA}");
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let url = w.proxy.url(&path);
                tokio::spawn(async move {
                    client()
                        .get(url)
                        .header(USER_HEADER, "dr.jones")
                        .send()
                        .await
                        .unwrap()
                })
            })
            .collect();
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(availability(&r).as_deref(), Some("false"));
        }
        assert_eq!(
            w.sim.count("data_from_other_org"),
            2,
            "100 concurrent pages, one PKB call"
        );
    });
}

#[test]
fn slow_pkb_gives_unknown_without_holding_the_page_and_the_late_answer_is_cached() {
    let w = World::start_with(decorated(100));
    rt().block_on(async {
        w.config()
            .pair(&w.sim, "dr.jones", "jones@pkb.example")
            .await;
        w.sim
            .knobs(serde_json::json!({ "latency_ms": { "data_from_other_org": 1500 } }));
        let path = format!("/patients/{WITH_DATA}");
        let started = Instant::now();
        let r = w.get_as("dr.jones", &path).await;
        let page_time = started.elapsed();
        assert_eq!(r.status(), 200);
        assert_eq!(availability(&r).as_deref(), Some("unknown"));
        assert!(
            page_time < Duration::from_millis(1500),
            "the page did not wait for PKB ({page_time:?})"
        );
        assert_eq!(w.sim.count("data_from_other_org"), 1);

        // PKB's late answer lands in the cache: a later page says `true` with no new PKB call.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = w.get_as("dr.jones", &path).await;
            if availability(&r).as_deref() == Some("true") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the late answer was never cached"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(w.sim.count("data_from_other_org"), 1);
    });
}

#[test]
fn pkb_errors_give_unknown_and_never_fail_the_page() {
    let w = World::start_with(decorated(2000));
    rt().block_on(async {
        w.config()
            .pair(&w.sim, "dr.jones", "jones@pkb.example")
            .await;
        w.sim.knobs(
            serde_json::json!({ "fail_rate": { "data_from_other_org": 1.0 }, "fail_status": 500 }),
        );
        let r = w
            .get_as("dr.jones", &format!("/patients/{WITH_DATA}"))
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(availability(&r).as_deref(), Some("unknown"));
        let echo: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            echo["uri"],
            format!("/patients/{WITH_DATA}"),
            "the upstream page itself came through"
        );
    });
    // PKB not listening at all.
    let dead = free_port();
    let w = World::start_with(|c| {
        decorated(2000)(c);
        c.pkb_base = format!("http://127.0.0.1:{dead}");
    });
    rt().block_on(async {
        w.config()
            .pair(&w.sim, "dr.jones", "jones@pkb.example")
            .await;
        let r = w
            .get_as("dr.jones", &format!("/patients/{WITH_DATA}"))
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(availability(&r).as_deref(), Some("unknown"));
    });
}

#[test]
fn spoofed_and_upstream_copies_of_the_header_never_pass() {
    let w = World::start_with(decorated(2000));
    rt().block_on(async {
        w.config()
            .pair(&w.sim, "dr.jones", "jones@pkb.example")
            .await;
        let r = client()
            .get(w.proxy.url(&format!("/patients/{WITHOUT_DATA}?forge=true")))
            .header(USER_HEADER, "dr.jones")
            .header("X-PKB-Data-Available", "true")
            .send()
            .await
            .unwrap();
        assert_eq!(
            availability(&r).as_deref(),
            Some("false"),
            "the upstream's forged copy was replaced"
        );
        let echo: serde_json::Value = r.json().await.unwrap();
        let sent: Vec<_> = echo["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h[0] == "x-pkb-data-available")
            .collect();
        assert!(
            sent.is_empty(),
            "a client-sent copy reached the upstream: {sent:?}"
        );

        // Not decorated (anonymous), but the upstream's copy is still not passed on.
        let r = client()
            .get(w.proxy.url("/anything?forge=true"))
            .send()
            .await
            .unwrap();
        assert_eq!(availability(&r), None);
    });
}

#[test]
fn the_json_endpoint_answers_for_front_ends() {
    let w = World::start_with(decorated(2000));
    rt().block_on(async {
        w.config()
            .pair(&w.sim, "dr.jones", "jones@pkb.example")
            .await;
        let ask = |user: Option<&'static str>, q: String| {
            let mut r = client().get(w.proxy.url(&format!("/_pkb/data-availability?{q}")));
            if let Some(u) = user {
                r = r.header(USER_HEADER, u);
            }
            r.send()
        };
        let body =
            |r: reqwest::Response| async move { r.json::<serde_json::Value>().await.unwrap() };
        let q = |id: &str| format!("contextNationalId={id}&contextNationalIdType=NHS");
        assert_eq!(
            body(ask(Some("dr.jones"), q(WITH_DATA)).await.unwrap()).await["available"],
            true
        );
        assert_eq!(
            body(ask(Some("dr.jones"), q(WITHOUT_DATA)).await.unwrap()).await["available"],
            false
        );
        assert_eq!(
            body(ask(Some("dr.unpaired"), q(WITH_DATA)).await.unwrap()).await["available"],
            serde_json::Value::Null
        );
        assert_eq!(ask(None, q(WITH_DATA)).await.unwrap().status(), 401);
        assert_eq!(
            ask(Some("dr.jones"), q("9990000019"))
                .await
                .unwrap()
                .status(),
            400
        );
        assert_eq!(
            ask(Some("dr.jones"), String::new()).await.unwrap().status(),
            400
        );
        let post = client()
            .post(
                w.proxy
                    .url(&format!("/_pkb/data-availability?{}", q(WITH_DATA))),
            )
            .header(USER_HEADER, "dr.jones")
            .send()
            .await
            .unwrap();
        assert_eq!(post.status(), 405);
    });
}
