//! GP integration credentials from NHS login for an IM1 service behind pkb-edge: which reach the
//! upstream (valid ones, on the configured paths only), which are `missing` or `unusable`, the
//! silent refresh when the service finds them invalid, and the limit on refreshes shared by
//! instances. NHS login's simulator records every credential it hands out; each test ends by
//! checking that none appears in pkb-edge's output.

mod common;

use std::sync::Arc;

use common::nhs::*;
use common::*;
use pkb_edge::sim::nhs::{NhsKnobs, NhsLoginSim};

const GP_PATH: &str = "/im1/register";

/// Proxies (sharing one SQLite store and one NHS login registration) configured for GP
/// credentials, and the simulators.
struct GpWorld {
    sim: Sim,
    _upstream: Upstream,
    _dir: tempfile::TempDir,
    op: Arc<NhsLoginSim>,
    proxies: Vec<Proxy>,
}

impl Drop for GpWorld {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            for p in &self.proxies {
                let mut secrets = self.op.issued_secrets();
                secrets.extend(self.sim.sim.issued_secrets());
                assert_none_leaked(secrets, &p.output());
            }
        }
    }
}

fn start(instances: usize, gp_table: &str) -> GpWorld {
    start_logging(instances, gp_table, None)
}

/// `start`, the proxies logging at `log_filter` (`PKB_EDGE_LOG`).
fn start_logging(instances: usize, gp_table: &str, log_filter: Option<&str>) -> GpWorld {
    let sim = Sim::start();
    let upstream = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let op = start_op();
    let keys = pkb_edge::store::crypto::Keyring::generate_line("k1");
    let proxies = (0..instances)
        .map(|_| {
            let mut c = ProxyConfig::new(&dir, &upstream, &sim);
            c.keys = keys.clone();
            c.upgrade_sock = dir.path().join(format!("upgrade-{}.sock", c.port));
            c.pid_file = dir.path().join(format!("pid-{}", c.port));
            c.ops_port = Some(free_port());
            c.log_filter = log_filter.map(str::to_string);
            use_nhs_login(&mut c, &op);
            let table = c.nhs_login.take().unwrap();
            c.nhs_login = Some(format!(
                "{table}scopes = [\"openid\", \"profile\", \"gp_integration_credentials\"]\n\
                 vtr = [\"P9.Cp.Cd\", \"P5.Cp.Cd\"]\n[nhs_login.gp_credentials]\n\
                 paths = [\"{GP_PATH}\"]\n{gp_table}"
            ));
            Proxy::start(&dir, &c)
        })
        .collect();
    GpWorld {
        sim,
        _upstream: upstream,
        _dir: dir,
        op,
        proxies,
    }
}

async fn get(p: &Proxy, path: &str, cookie: &str) -> reqwest::Response {
    client()
        .get(p.url(path))
        .header("cookie", cookie)
        .header("x-gp-linkage-key", "spoofed")
        .header("x-gp-credentials-status", "valid")
        .send()
        .await
        .unwrap()
}

/// Signs in at `p` as simulator user `user`; the session cookie.
async fn sign_in(p: &Proxy, user: usize) -> String {
    let r = client().get(p.url("/")).send().await.unwrap();
    let login = login_cookie(&r).unwrap();
    let callback = nhs_login_page(header(r.headers(), "location"), user, "allow").await;
    let r = client()
        .get(&callback)
        .header("cookie", login)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302, "{}", r.text().await.unwrap());
    session_cookie(&r)
}

/// The x-gp-* headers the upstream received.
async fn gp_headers(r: reqwest::Response) -> Vec<(String, String)> {
    let (_, headers) = upstream_saw(r).await;
    headers
        .into_iter()
        .filter(|(k, _)| k.starts_with("x-gp-"))
        .collect()
}

fn value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let mut found = headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str());
    let first = found.next();
    assert!(found.next().is_none(), "{name} sent once");
    first
}

/// Follows a silent refresh from the proxy's redirect to its callback; the new session cookie
/// and where the user went back to.
async fn follow_silent(p: &Proxy, r: reqwest::Response, cookie: &str) -> (String, String) {
    assert_eq!(r.status(), 302);
    assert!(
        r.headers().get("x-gp-credentials-invalid").is_none(),
        "the signal stays inside"
    );
    let login = login_cookie(&r).unwrap();
    let authorize = header(r.headers(), "location").to_string();
    let q = query_of(&authorize);
    assert_eq!(q["prompt"], "none");
    assert!(q.contains_key("asserted_login_identity"));
    let r = client().get(&authorize).send().await.unwrap();
    let callback = header(r.headers(), "location").to_string();
    assert!(
        callback.starts_with(&p.url("/_pkb/nhs/callback?code=")),
        "{callback}"
    );
    // The browser still sends its old session cookie with the callback.
    let r = client()
        .get(&callback)
        .header("cookie", format!("{cookie}; {login}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    (
        session_cookie(&r),
        header(r.headers(), "location").to_string(),
    )
}

#[test]
fn valid_credentials_reach_the_configured_path_and_no_other() {
    let w = start(1, "");
    let p = &w.proxies[0];
    rt().block_on(async {
        let cookie = sign_in(p, 0).await;
        let ada = w.op.users()[0].gp.clone().unwrap();
        let seen = gp_headers(get(p, GP_PATH, &cookie).await).await;
        assert_eq!(value(&seen, "x-gp-credentials-status"), Some("valid"));
        assert_eq!(value(&seen, "x-gp-user-id"), Some(ada.user_id.as_str()));
        assert_eq!(value(&seen, "x-gp-ods-code"), Some("A12345"));
        let linkage_key = value(&seen, "x-gp-linkage-key").unwrap().to_string();
        assert!(linkage_key.starts_with(&ada.linkage_key), "{linkage_key}");
        assert!(!cookie.contains(&linkage_key));

        for elsewhere in ["/", "/im1/register/other", "/im1"] {
            let seen = gp_headers(get(p, elsewhere, &cookie).await).await;
            assert!(seen.is_empty(), "{elsewhere}: {seen:?}");
        }
        let audit: Vec<serde_json::Value> = p
            .audit_lines()
            .into_iter()
            .filter(|l| l["action"] == "gp_credentials")
            .collect();
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0]["outcome"], "valid");
        assert!(!audit[0].to_string().contains(&linkage_key));
        assert!(!p.output().contains(&linkage_key));
    });
}

#[test]
fn missing_partial_and_dummy_credentials_are_not_passed_on() {
    let w = start(1, "unusable_ods_codes = [\"C81081\"]\n");
    let p = &w.proxies[0];
    rt().block_on(async {
        let status = |cookie: String| async move {
            let seen = gp_headers(get(p, GP_PATH, &cookie).await).await;
            assert!(value(&seen, "x-gp-linkage-key").is_none(), "{seen:?}");
            assert!(value(&seen, "x-gp-user-id").is_none(), "{seen:?}");
            value(&seen, "x-gp-credentials-status").unwrap().to_string()
        };
        // Mary's practice is on Microtest (gp_system_id): dummies.
        assert_eq!(status(sign_in(p, 1).await).await, "unusable");
        // Alan is P5: none.
        assert_eq!(status(sign_in(p, 2).await).await, "missing");
        let cases = [
            (serde_json::json!({"gp_user_id": "U1", "gp_ods_code": "A12345"}), "missing"),
            (serde_json::json!({"gp_user_id": "U1", "gp_linkage_key": "", "gp_ods_code": "A12345"}), "missing"),
            (serde_json::json!({"gp_user_id": "U1", "gp_linkage_key": "K1", "gp_ods_code": "not-ods"}), "missing"),
            (serde_json::json!({"gp_user_id": "U1", "gp_linkage_key": "K1", "gp_ods_code": "C81081", "gp_system_id": "EMIS"}), "unusable"),
        ];
        for (claim, want) in cases {
            w.op.set_knobs(NhsKnobs {
                gp_credentials: Some(claim.clone()),
                ..NhsKnobs::default()
            });
            assert_eq!(status(sign_in(p, 0).await).await, want, "{claim}");
        }
        let statuses: Vec<String> = p
            .audit_lines()
            .into_iter()
            .filter(|l| l["action"] == "gp_credentials")
            .map(|l| l["outcome"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(statuses, ["unusable", "missing", "missing", "missing", "missing", "unusable"]);
    });
}

#[test]
fn credentials_signalled_invalid_are_refreshed_silently_and_the_user_returns() {
    let w = start(1, "");
    let p = &w.proxies[0];
    rt().block_on(async {
        let cookie = sign_in(p, 0).await;
        let before = gp_headers(get(p, GP_PATH, &cookie).await).await;
        let r = get(p, &format!("{GP_PATH}?gp_invalid=1"), &cookie).await;
        let (fresh, back_to) = follow_silent(p, r, &cookie).await;
        assert_eq!(
            back_to,
            format!("{GP_PATH}?gp_invalid=1"),
            "back where they were"
        );
        let after = gp_headers(get(p, GP_PATH, &fresh).await).await;
        assert_eq!(value(&after, "x-gp-credentials-status"), Some("valid"));
        assert_ne!(
            value(&after, "x-gp-linkage-key"),
            value(&before, "x-gp-linkage-key"),
            "fresh credentials"
        );
        assert_eq!(
            get(p, GP_PATH, &cookie).await.status(),
            302,
            "the old session was replaced"
        );
        assert_eq!(w.op.count("login_page"), 1, "the user signed in once");
        assert_eq!(w.op.count("authorize_silent"), 1);
        assert_eq!(w.op.count("assertion_accepted"), 1);

        // From a form: back to the page it was posted from.
        let r = client()
            .post(p.url(&format!("{GP_PATH}?gp_invalid=1")))
            .header("cookie", &fresh)
            .header("referer", p.url("/im1/start?step=2"))
            .send()
            .await
            .unwrap();
        let (fresh, back_to) = follow_silent(p, r, &fresh).await;
        assert_eq!(back_to, "/im1/start?step=2");
        // The signal counts only on the configured paths.
        let r = get(p, "/other?gp_invalid=1", &fresh).await;
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("x-gp-credentials-invalid").is_none());
    });
}

#[test]
fn repeated_invalid_credentials_stop_after_max_refreshes_across_two_instances() {
    let w = start(2, "max_refreshes = 2\nwindow_secs = 3600\n");
    let (a, b) = (&w.proxies[0], &w.proxies[1]);
    rt().block_on(async {
        let mut cookie = sign_in(a, 0).await;
        let signal = format!("{GP_PATH}?gp_invalid=1");
        for p in [a, b] {
            let r = get(p, &signal, &cookie).await;
            cookie = follow_silent(p, r, &cookie).await.0;
        }
        // The third time in the hour, on A: a page, not another sign-in.
        let r = client()
            .get(a.url(&signal))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
        assert!(r.headers().get("x-gp-credentials-invalid").is_none());
        let page = r.text().await.unwrap();
        assert!(
            page.contains("We could not get your GP online services details"),
            "{page}"
        );
        assert!(page.contains("ask your GP practice"), "{page}");
        // And the service is told, on either instance.
        for p in [a, b] {
            let seen = gp_headers(get(p, GP_PATH, &cookie).await).await;
            assert_eq!(value(&seen, "x-gp-credentials-status"), Some("unavailable"));
            assert!(value(&seen, "x-gp-linkage-key").is_none());
        }
        assert_eq!(w.op.count("authorize_silent"), 2);
        let outcomes: Vec<String> = [a, b]
            .iter()
            .flat_map(|p| p.audit_lines())
            .filter(|l| l["action"] == "gp_credentials_refresh")
            .map(|l| l["outcome"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(outcomes.iter().filter(|o| *o == "started").count(), 2);
        assert_eq!(outcomes.iter().filter(|o| *o == "refreshed").count(), 2);
        assert_eq!(outcomes.iter().filter(|o| *o == "gave_up").count(), 1);

        let metrics = |p: &Proxy| {
            let url = format!("http://127.0.0.1:{}/metrics", p.config.ops_port.unwrap());
            async move {
                client()
                    .get(url)
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap()
            }
        };
        let (ma, mb) = (metrics(a).await, metrics(b).await);
        assert!(
            ma.contains("pkb_edge_gp_credentials_total{status=\"valid\"} 2"),
            "{ma}"
        );
        assert!(
            ma.contains("pkb_edge_gp_credentials_refresh_total{outcome=\"gave_up\"} 1"),
            "{ma}"
        );
        assert!(
            mb.contains("pkb_edge_gp_credentials_refresh_total{outcome=\"started\"} 1"),
            "{mb}"
        );
        let linkage_key = &w.op.users()[0].gp.as_ref().unwrap().linkage_key;
        assert!(!ma.contains(linkage_key.as_str()) && !mb.contains(linkage_key.as_str()));
    });
}

#[test]
fn a_sign_in_with_gp_credentials_at_trace_level_logs_no_secret() {
    let w = start_logging(1, "", Some("trace"));
    let p = &w.proxies[0];
    let cookie = rt().block_on(async {
        let cookie = sign_in(p, 0).await;
        let seen = gp_headers(get(p, &format!("{GP_PATH}?nhs=1"), &cookie).await).await;
        assert_eq!(value(&seen, "x-gp-credentials-status"), Some("valid"));
        cookie
    });
    let session = cookie.split_once('=').unwrap().1.to_string();
    let output = p.output();
    let ada = &w.op.users()[0];
    assert_none_leaked(vec![session, ada.nhs_number.clone()], &output);
    // (GpWorld checks every code, token, id_token and GP credential NHS login issued.)
}
