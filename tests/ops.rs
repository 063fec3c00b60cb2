//! The ops listener: Prometheus metrics that move as the traffic says, health endpoints, and
//! nothing of it on the public listener.

mod common;

use std::collections::BTreeMap;

use common::*;

/// A series: metric name and its labels, sorted.
type Series = (String, Vec<(String, String)>);

/// Prometheus text format → {series → value}.
fn parse_metrics(text: &str) -> BTreeMap<Series, f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let mut labels: Vec<(String, String)> = body
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                labels.sort();
                (name.to_string(), labels)
            }
            None => (series.to_string(), Vec::new()),
        };
        out.insert((name, labels), value.parse().expect("a number"));
    }
    out
}

fn sample(metrics: &BTreeMap<Series, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.sort();
    metrics
        .get(&(name.to_string(), labels))
        .copied()
        .unwrap_or(0.0)
}

fn scrape(ops_port: u16) -> BTreeMap<Series, f64> {
    parse_metrics(&rt().block_on(ops_metrics(ops_port)))
}

fn at_zero(m: &BTreeMap<Series, f64>, name: &str, labels: &[(&str, &str)]) {
    let mut key: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    key.sort();
    assert_eq!(
        m.get(&(name.to_string(), key)),
        Some(&0.0),
        "{name}{labels:?} is not exported at 0 from start-up"
    );
}

/// In NHS login mode, its steps and the GP credential series are there from start-up too.
#[test]
fn nhs_login_series_are_exported_at_zero_before_any_traffic() {
    let ops_port = free_port();
    let op = common::nhs::start_op();
    let _w = World::start_with(|c| {
        common::nhs::use_nhs_login(c, &op);
        c.ops_port = Some(ops_port);
    });
    let m = scrape(ops_port);
    for (step, outcome) in [
        ("login", "started"),
        ("callback", "signed_in"),
        ("callback", "id_token_invalid"),
        ("launch_pkb", "redirect"),
        ("logout", "signed_out"),
        ("gp_refresh", "gave_up"),
    ] {
        at_zero(
            &m,
            "pkb_edge_nhs_login_total",
            &[("step", step), ("outcome", outcome)],
        );
    }
    for status in ["valid", "unusable", "missing", "unavailable"] {
        at_zero(&m, "pkb_edge_gp_credentials_total", &[("status", status)]);
    }
    for outcome in ["started", "refreshed", "failed", "gave_up"] {
        at_zero(
            &m,
            "pkb_edge_gp_credentials_refresh_total",
            &[("outcome", outcome)],
        );
    }
}

/// Prometheus' "avoid missing metrics": before any traffic, every known label value of every
/// counter is exported at 0, so `rate()` and alerts work from the first scrape.
#[test]
fn every_known_series_is_exported_at_zero_before_any_traffic() {
    let ops_port = free_port();
    let _w = World::start_with(|c| c.ops_port = Some(ops_port));
    let m = scrape(ops_port);
    let at_zero = |name: &str, labels: &[(&str, &str)]| at_zero(&m, name, labels);
    for outcome in ["refreshed", "invalid_grant", "failed"] {
        for trigger in ["launch", "ahead", "decoration"] {
            at_zero(
                "pkb_edge_token_refresh_total",
                &[("outcome", outcome), ("trigger", trigger)],
            );
        }
    }
    for outcome in [
        "redirect",
        "no_identity",
        "bad_request",
        "not_paired",
        "rate_limited",
        "relink_needed",
        "pkb_unavailable",
        "pkb_refused",
        "store_error",
    ] {
        at_zero("pkb_edge_launch_total", &[("outcome", outcome)]);
    }
    for outcome in [
        "started",
        "paired",
        "unpaired",
        "state_refused",
        "store_error",
    ] {
        at_zero("pkb_edge_pairing_total", &[("outcome", outcome)]);
    }
    for result in ["hit", "miss", "stale"] {
        at_zero("pkb_edge_token_cache_total", &[("result", result)]);
    }
    for value in ["true", "false", "unknown"] {
        at_zero("pkb_edge_decoration_total", &[("value", value)]);
    }
    for endpoint in ["token", "otp", "dataFromOtherOrg"] {
        for status in ["200", "timeout", "error", "shed"] {
            at_zero(
                "pkb_edge_pkb_requests_total",
                &[("endpoint", endpoint), ("status", status)],
            );
        }
        at_zero(
            "pkb_edge_pkb_request_duration_seconds_count",
            &[("endpoint", endpoint)],
        );
    }
    for reason in ["shed", "refused", "header_timeout"] {
        at_zero(
            "pkb_edge_downstream_connections_closed_total",
            &[("reason", reason)],
        );
    }
    at_zero("pkb_edge_audit_write_errors_total", &[]);
    at_zero("pkb_edge_launch_duration_seconds_count", &[]);
}

#[test]
fn metrics_move_with_traffic_and_health_answers() {
    let ops_port = free_port();
    let w = World::start_with(|c| c.ops_port = Some(ops_port));
    let ops = |path: &str| format!("http://127.0.0.1:{ops_port}{path}");
    rt().block_on(async {
        w.config()
            .pair(&w.sim, "dr.jones", "jones@pkb.example")
            .await;
        assert_eq!(w.get_as("dr.jones", "/_pkb/launch").await.status(), 302);
        assert_eq!(w.get_as("dr.jones", "/_pkb/launch").await.status(), 302);
        assert_eq!(w.get_as("dr.nobody", "/_pkb/launch").await.status(), 404);
        assert_eq!(
            w.get_as("dr.jones", "/_pkb/launch?redirect_uri=//evil.example")
                .await
                .status(),
            400
        );

        let r = client().get(ops("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        let m = parse_metrics(&text);
        assert_eq!(
            sample(&m, "pkb_edge_launch_total", &[("outcome", "redirect")]),
            2.0
        );
        assert_eq!(
            sample(&m, "pkb_edge_launch_total", &[("outcome", "not_paired")]),
            1.0
        );
        assert_eq!(
            sample(&m, "pkb_edge_launch_total", &[("outcome", "bad_request")]),
            1.0
        );
        assert_eq!(
            sample(&m, "pkb_edge_launch_duration_seconds_count", &[]),
            4.0
        );
        assert_eq!(
            sample(
                &m,
                "pkb_edge_pkb_requests_total",
                &[("endpoint", "otp"), ("status", "200")]
            ),
            2.0
        );
        assert_eq!(
            sample(
                &m,
                "pkb_edge_pkb_request_duration_seconds_count",
                &[("endpoint", "otp")]
            ),
            2.0
        );
        // dr.jones: one miss then a hit; dr.nobody: a miss (and the bad request never looked).
        assert_eq!(
            sample(&m, "pkb_edge_token_cache_total", &[("result", "miss")]),
            2.0
        );
        assert_eq!(
            sample(&m, "pkb_edge_token_cache_total", &[("result", "hit")]),
            1.0
        );
        assert_eq!(
            sample(
                &m,
                "pkb_edge_token_refresh_total",
                &[("outcome", "refreshed"), ("trigger", "launch")]
            ),
            0.0
        );
        assert!(
            !text.contains("dr.jones") && !text.contains("dr.nobody"),
            "no user id in any label"
        );

        assert_eq!(
            client().get(ops("/livez")).send().await.unwrap().status(),
            200
        );
        assert_eq!(
            client().get(ops("/readyz")).send().await.unwrap().status(),
            200
        );
        assert_eq!(
            client()
                .get(ops("/elsewhere"))
                .send()
                .await
                .unwrap()
                .status(),
            404
        );

        // The public listener proxies these paths like any other: the upstream answers.
        let r = client().get(w.proxy.url("/metrics")).send().await.unwrap();
        let echo: serde_json::Value = r.json().await.unwrap();
        assert_eq!(echo["uri"], "/metrics");
    });
}

#[test]
fn process_metrics_are_exported_beside_ours() {
    let ops_port = free_port();
    let w = World::start_with(|c| c.ops_port = Some(ops_port));
    let text = rt().block_on(async {
        client()
            .get(format!("http://127.0.0.1:{ops_port}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    let m = parse_metrics(&text);
    assert!(sample(&m, "process_resident_memory_bytes", &[]) > 1_000_000.0);
    assert!(sample(&m, "process_open_fds", &[]) >= 3.0);
    assert!(sample(&m, "process_max_fds", &[]) >= 3.0);
    assert!(sample(&m, "process_start_time_seconds", &[]) > 1.7e9);
    drop(w);
}

#[test]
fn readiness_flips_when_the_store_file_is_unreadable_and_back() {
    let ops_port = free_port();
    let w = World::start_with(|c| c.ops_port = Some(ops_port));
    let db = w.config().db_path.clone();
    let aside = db.with_extension("moved");
    let ready = || {
        rt().block_on(async {
            let r = client()
                .get(format!("http://127.0.0.1:{ops_port}/readyz"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    assert_eq!(ready().0, 200);

    // As root, chmod cannot make a file unreadable; moving it away (a lost volume) can.
    std::fs::rename(&db, &aside).unwrap();
    let (status, body) = ready();
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("not ready") && body.contains("cannot read"),
        "{body}"
    );
    // Passthrough does not depend on the store.
    let r = rt()
        .block_on(client().get(w.proxy.url("/page")).send())
        .unwrap();
    assert_eq!(r.status(), 200);

    // Something that is not an SQLite database in its place is not ready either.
    std::fs::write(&db, b"this is not a database at all").unwrap();
    let (status, body) = ready();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no longer an SQLite database"), "{body}");

    std::fs::rename(&aside, &db).unwrap();
    assert_eq!(ready().0, 200);

    // And a file that cannot be read, when the tests do not run as root.
    #[cfg(unix)]
    if !running_as_root() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o000)).unwrap();
        let (status, body) = ready();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(status, 503, "{body}");
        assert_eq!(ready().0, 200);
    }
}

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

#[test]
fn calls_to_pkb_beyond_the_cap_are_refused_at_once() {
    let ops_port = free_port();
    let w = World::start_with(|c| {
        c.ops_port = Some(ops_port);
        c.pkb_concurrency = 2;
    });
    rt().block_on(async {
        for n in 0..6 {
            w.config()
                .pair(&w.sim, &format!("dr.{n}"), &format!("u{n}@pkb.example"))
                .await;
        }
        // PKB stalls: each OTP takes 1.5 s.
        w.sim
            .knobs(serde_json::json!({ "latency_ms": { "otp": 1500 } }));
        let tasks: Vec<_> = (0..6)
            .map(|n| {
                let url = w.proxy.url("/_pkb/launch");
                tokio::spawn(async move {
                    client()
                        .get(url)
                        .header(USER_HEADER, format!("dr.{n}"))
                        .send()
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        let statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
        assert_eq!(
            statuses.iter().filter(|s| **s == 302).count(),
            2,
            "{statuses:?}"
        );
        assert_eq!(
            statuses.iter().filter(|s| **s == 503).count(),
            4,
            "{statuses:?}"
        );
        for r in answers.iter().filter(|r| r.status() == 503) {
            assert_eq!(header(r.headers(), "retry-after"), "5");
        }
        // Only the two admitted calls reached PKB.
        assert_eq!(w.sim.count("otp"), 2);
        let text = client()
            .get(format!("http://127.0.0.1:{ops_port}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let m = parse_metrics(&text);
        assert_eq!(
            sample(
                &m,
                "pkb_edge_pkb_requests_total",
                &[("endpoint", "otp"), ("status", "shed")]
            ),
            4.0
        );
        assert_eq!(
            sample(
                &m,
                "pkb_edge_launch_total",
                &[("outcome", "pkb_unavailable")]
            ),
            4.0
        );
    });
}
