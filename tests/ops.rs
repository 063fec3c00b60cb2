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
                &[("outcome", "refreshed")]
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
