//! The PKB simulator on the shared runtime, and the check that none of the secrets it issued
//! appear in pkb-edge's output.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::StatusCode;

use pkb_edge::sim::{SimConfig, Simulator};
use pkb_edge::store::TokenSet;

use super::{client, rt, CLIENT_ID, CLIENT_SECRET};

/// A running simulator.
pub struct Sim {
    pub sim: Arc<Simulator>,
    pub addr: SocketAddr,
}

impl Sim {
    pub fn start() -> Sim {
        let sim = Simulator::new(SimConfig {
            record_secrets: true,
            ..SimConfig::default()
        });
        let listener = rt()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        rt().spawn(sim.clone().serve(listener));
        Sim { sim, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn count(&self, endpoint: &str) -> u64 {
        self.sim.count(endpoint)
    }

    pub fn knobs(&self, knobs: serde_json::Value) {
        self.sim.set_knobs(serde_json::from_value(knobs).unwrap());
    }

    /// Real PKB tokens for `pkb_user`, through the simulator's OAuth endpoints.
    pub async fn tokens_for(&self, pkb_user: &str) -> TokenSet {
        pkb_edge::sim::obtain_tokens(&self.url(), CLIENT_ID, CLIENT_SECRET, pkb_user)
            .await
            .unwrap()
    }

    /// Uses a refresh token directly at the simulator, as another party would.
    pub async fn spend_refresh_token(&self, refresh_token: &str) -> StatusCode {
        let r = client()
            .post(format!("{}/apiToken.action", self.url()))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ])
            .send()
            .await
            .unwrap();
        StatusCode::from_u16(r.status().as_u16()).unwrap()
    }
}

/// Fails if any secret the simulator issued (codes, access and refresh tokens, OTPs, the client
/// secret) appears in `output`.
pub fn assert_no_secrets(sim: &Sim, output: &str) {
    assert_none_leaked(sim.sim.issued_secrets(), output);
}

/// Fails if any of `secrets` appears in `output`.
pub fn assert_none_leaked(secrets: Vec<String>, output: &str) {
    if secrets.is_empty() {
        return;
    }
    // One pass over the output for all of them (thousands after a load test).
    let matcher = aho_corasick::AhoCorasick::new(&secrets).unwrap();
    let leaks: Vec<aho_corasick::Match> = matcher.find_overlapping_iter(output).collect();
    // Where they leaked, with each secret replaced, so a failure can be diagnosed.
    let lines: std::collections::BTreeSet<String> = leaks
        .iter()
        .take(5)
        .map(|m| {
            let start = output[..m.start()].rfind('\n').map_or(0, |i| i + 1);
            let end = output[m.end()..]
                .find('\n')
                .map_or(output.len(), |i| m.end() + i);
            matcher.replace_all(&output[start..end], &vec!["<SECRET>"; secrets.len()])
        })
        .collect();
    assert!(
        leaks.is_empty(),
        "{} issued secrets appear in pkb-edge's output, e.g. in:\n{}",
        leaks.len(),
        lines.into_iter().collect::<Vec<_>>().join("\n")
    );
}
