//! The Prometheus metrics every part of pkb-edge reports to, registered once in the process's
//! default registry (the one Pingora's `pingora-prometheus` re-exports, and `/metrics` serves).
//! No Pingora types: the use cases and the store record here without depending on the edge.
//!
//! Labels never carry a user id, a patient id or a token: only outcomes, endpoints and statuses.

use std::sync::OnceLock;

use prometheus::{
    register_histogram, register_histogram_vec, register_int_counter, register_int_counter_vec,
    register_int_gauge, register_int_gauge_vec, Histogram, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec,
};

/// From half a millisecond (proxy overhead) to ten seconds (a PKB stall).
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub struct Metrics {
    pub launch_total: IntCounterVec,
    pub launch_duration_seconds: Histogram,
    pub pkb_request_duration_seconds: HistogramVec,
    pub pkb_requests_total: IntCounterVec,
    pub token_refresh_total: IntCounterVec,
    pub token_cache_total: IntCounterVec,
    pub decoration_total: IntCounterVec,
    pub pairing_total: IntCounterVec,
    pub nhs_login_total: IntCounterVec,
    pub gp_credentials_total: IntCounterVec,
    pub gp_credentials_refresh_total: IntCounterVec,
    pub audit_write_errors_total: IntCounter,
    pub downstream_connections: IntGauge,
    pub downstream_connections_closed_total: IntCounterVec,
    pub identity_total: IntCounterVec,
    pub tls_reload_total: IntCounterVec,
    pub tls_cert_expiry_timestamp_seconds: IntGaugeVec,
}

/// What a reading of the serving certificate and key came to (`tls_reload_total{outcome}`): a
/// changed pair taken, or a broken one refused (the old pair kept serving).
pub const TLS_RELOAD_OUTCOMES: [&str; 2] = ["reloaded", "refused"];

/// Why pkb-edge closed a downstream connection itself (`downstream_connections_closed_total`):
/// the oldest idle one shed for a new one at `server.max_connections`, a new one refused at the
/// limit with nothing idle to shed, or a request head not complete within
/// `server.header_timeout_secs`.
pub const CLOSED_REASONS: [&str; 3] = ["shed", "refused", "header_timeout"];
const CLOSED_HELP: &str = "Client connections pkb-edge closed itself, by reason.";

/// What jwt mode made of a request's identity (`identity_total{mode="jwt",outcome}`).
pub const IDENTITY_OUTCOMES: [&str; 11] = [
    "valid",
    "missing",
    "malformed",
    "bad_signature",
    "unknown_key",
    "expired",
    "not_yet_valid",
    "wrong_issuer",
    "wrong_audience",
    "no_user",
    "untrusted_peer",
];
/// The identity modes that count their outcomes.
pub const IDENTITY_MODES: [&str; 1] = ["jwt"];

/// The process's metrics, registered once in the registry `/metrics` serves. `build_server`
/// calls this before serving, so the registration (which fails only on a duplicate name) never
/// happens on a request.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        // CPU seconds, resident memory, open and maximum file descriptors, start time, threads
        // (`process_*`), read from /proc. A second registration (tests) is harmless.
        let _ = prometheus::register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        // Registration fails only for a duplicate name, which this one place rules out.
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register_int_counter_vec!(format!("pkb_edge_{name}"), help, labels)
                .unwrap_or_else(|e| panic!("metric {name}: {e}"))
        };
        Metrics {
            launch_total: counter("launch_total", "Launches by outcome.", &["outcome"]),
            launch_duration_seconds: register_histogram!(
                "pkb_edge_launch_duration_seconds",
                "Time to answer a launch, refresh and OTP included.",
                BUCKETS.to_vec()
            )
            .unwrap_or_else(|e| panic!("metric launch_duration_seconds: {e}")),
            pkb_request_duration_seconds: register_histogram_vec!(
                "pkb_edge_pkb_request_duration_seconds",
                "Time of each call to PKB, by endpoint.",
                &["endpoint"],
                BUCKETS.to_vec()
            )
            .unwrap_or_else(|e| panic!("metric pkb_request_duration_seconds: {e}")),
            pkb_requests_total: counter(
                "pkb_requests_total",
                "Calls to PKB by endpoint and HTTP status (or timeout/error).",
                &["endpoint", "status"],
            ),
            token_refresh_total: counter(
                "token_refresh_total",
                "Access-token refreshes by outcome and by what triggered them (a launch, \
                 refresh-ahead on a page view, a data-availability look-up).",
                &["outcome", "trigger"],
            ),
            token_cache_total: counter(
                "token_cache_total",
                "Pairing look-ups by cache result.",
                &["result"],
            ),
            decoration_total: counter(
                "decoration_total",
                "Decorated responses by header value.",
                &["value"],
            ),
            pairing_total: counter("pairing_total", "Pairing steps by outcome.", &["outcome"]),
            nhs_login_total: counter(
                "nhs_login_total",
                "NHS login steps (sign-in, sign-out, launch into PKB) by step and outcome.",
                &["step", "outcome"],
            ),
            gp_credentials_total: counter(
                "gp_credentials_total",
                "GP integration credentials retrieved at sign-in, by status.",
                &["status"],
            ),
            gp_credentials_refresh_total: counter(
                "gp_credentials_refresh_total",
                "GP credential refreshes (silent re-sign-ins) by outcome.",
                &["outcome"],
            ),
            audit_write_errors_total: register_int_counter!(
                "pkb_edge_audit_write_errors_total",
                "Audit lines that could not be written."
            )
            .unwrap_or_else(|e| panic!("metric audit_write_errors_total: {e}")),
            downstream_connections: connections_gauge(),
            downstream_connections_closed_total: closed_total(),
            identity_total: identity_total(),
            tls_reload_total: tls_reload_total(),
            tls_cert_expiry_timestamp_seconds: expiry_gauge(),
        }
    })
}

fn closed_total() -> IntCounterVec {
    let counter = register_int_counter_vec!(
        "pkb_edge_downstream_connections_closed_total",
        CLOSED_HELP,
        &["reason"]
    )
    .unwrap_or_else(|e| panic!("metric downstream_connections_closed_total: {e}"));
    labelled(counter, &CLOSED_REASONS)
}

fn tls_reload_total() -> IntCounterVec {
    let counter = register_int_counter_vec!(
        "pkb_edge_tls_reload_total",
        "Readings of a changed (or SIGHUP-requested) certificate and key, by outcome.",
        &["outcome"]
    )
    .unwrap_or_else(|e| panic!("metric tls_reload_total: {e}"));
    labelled(counter, &TLS_RELOAD_OUTCOMES)
}

/// Set when a listener serves a certificate, never exported as 0 (an expiry alert would read
/// that as long expired).
fn expiry_gauge() -> IntGaugeVec {
    register_int_gauge_vec!(
        "pkb_edge_tls_cert_expiry_timestamp_seconds",
        "The serving certificate's notAfter (Unix seconds), by listener.",
        &["listener"]
    )
    .unwrap_or_else(|e| panic!("metric tls_cert_expiry_timestamp_seconds: {e}"))
}

fn connections_gauge() -> IntGauge {
    register_int_gauge!(
        "pkb_edge_downstream_connections",
        "Client connections open on the public listener (and the https redirect listener)."
    )
    .unwrap_or_else(|e| panic!("metric downstream_connections: {e}"))
}

/// `counter` with each of `values` (its one label's known values) exported from start-up, at 0.
fn labelled(counter: IntCounterVec, values: &[&str]) -> IntCounterVec {
    for value in values {
        counter.with_label_values(&[value]);
    }
    counter
}

/// `identity_total{mode,outcome}`, every known pair exported from start-up.
fn identity_total() -> IntCounterVec {
    let counter = register_int_counter_vec!(
        "pkb_edge_identity_total",
        "Requests by identity mode and what the mode made of them.",
        &["mode", "outcome"]
    )
    .unwrap_or_else(|e| panic!("metric identity_total: {e}"));
    labelled_pairs(counter, &IDENTITY_MODES, &IDENTITY_OUTCOMES)
}

/// `counter` with every pair of its two labels' known values exported from start-up, at 0.
fn labelled_pairs(counter: IntCounterVec, firsts: &[&str], seconds: &[&str]) -> IntCounterVec {
    for first in firsts {
        for second in seconds {
            counter.with_label_values(&[first, second]);
        }
    }
    counter
}

impl Metrics {
    /// The names of every metric family pkb-edge exports, process metrics included (for
    /// checking dashboards and alerts against).
    pub fn family_names(&self) -> Vec<String> {
        use prometheus::core::Collector;
        let collectors: [&dyn Collector; 14] = [
            &self.launch_total,
            &self.launch_duration_seconds,
            &self.pkb_request_duration_seconds,
            &self.pkb_requests_total,
            &self.token_refresh_total,
            &self.token_cache_total,
            &self.decoration_total,
            &self.pairing_total,
            &self.audit_write_errors_total,
            &self.downstream_connections,
            &self.downstream_connections_closed_total,
            &self.identity_total,
            &self.tls_reload_total,
            &self.tls_cert_expiry_timestamp_seconds,
        ];
        let process = prometheus::process_collector::ProcessCollector::for_self();
        collectors
            .into_iter()
            .chain([&process as &dyn Collector])
            .flat_map(|c| c.desc().into_iter().map(|d| d.fq_name.clone()))
            .collect()
    }
}

/// Records one call to PKB: its duration and its status (`timeout`, `error` when none came back).
pub fn observe_pkb(endpoint: &str, started: std::time::Instant, status: &str) {
    let m = metrics();
    m.pkb_request_duration_seconds
        .with_label_values(&[endpoint])
        .observe(started.elapsed().as_secs_f64());
    m.pkb_requests_total
        .with_label_values(&[endpoint, status])
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric the shipped Grafana dashboard queries is one pkb-edge exports.
    #[test]
    fn the_dashboard_queries_only_metrics_that_exist() {
        let families = metrics().family_names();
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../conf/grafana-dashboard.json")).unwrap();
        let names = regex::Regex::new(r"\b(?:pkb_edge|process)_[a-z_]+").unwrap();
        let mut checked = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for name in names.find_iter(expr).map(|m| m.as_str()) {
                    let family = ["_bucket", "_count", "_sum"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .filter(|base| families.iter().any(|f| f == base))
                        .unwrap_or(name);
                    assert!(
                        families.iter().any(|f| f == family),
                        "panel {:?} queries {name}, which pkb-edge does not export",
                        panel["title"]
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked >= 15, "{checked}");
        assert!(families
            .iter()
            .any(|f| f == "process_resident_memory_bytes"));
    }
}
