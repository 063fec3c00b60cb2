//! The audit log, request ids, JSON logs and the per-user launch rate limit, seen from outside:
//! the lines the process writes and the headers the upstream and the browser get.

mod common;

use common::*;

const NHS: &str = "9434765919";

fn launch_with_patient() -> String {
    format!("/_pkb/launch?contextNationalId={NHS}&contextNationalIdType=NHS")
}

/// The one audit line for `request_id`.
fn line_for<'a>(lines: &'a [serde_json::Value], request_id: &str) -> &'a serde_json::Value {
    let found: Vec<_> = lines
        .iter()
        .filter(|l| l["request_id"] == request_id)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one audit line for {request_id}: {lines:#?}"
    );
    found[0]
}

async fn get_with_id(w: &World, user: &str, path: &str, request_id: &str) -> reqwest::Response {
    client()
        .get(w.proxy.url(path))
        .header(USER_HEADER, user)
        .header("x-request-id", request_id)
        .send()
        .await
        .unwrap()
}

#[test]
fn every_launch_pairing_unpairing_and_refusal_writes_one_audit_line() {
    let mut w = World::start_with_args(|c| c.launch_per_minute = 2, &["--log-format", "json"]);
    rt().block_on(async {
        let authorize = start_pairing(&w, "dr.jones", None).await;
        let back = consent_at_pkb(&authorize, "jones@pkb.example", "allow").await;
        let r = get_with_id(&w, "dr.jones", &callback_path(&w, &back), "cb-1").await;
        assert_eq!(r.status(), 200);

        let r = get_with_id(&w, "dr.jones", &launch_with_patient(), "launch-1").await;
        assert_eq!(r.status(), 302);
        assert_eq!(header(r.headers(), "x-request-id"), "launch-1");
        let r = get_with_id(&w, "dr.jones", &launch_with_patient(), "launch-2").await;
        assert_eq!(r.status(), 302);
        // The third within the minute is over the limit of 2.
        let r = get_with_id(&w, "dr.jones", "/_pkb/launch", "launch-3").await;
        assert_eq!(r.status(), 429);
        let wait: u64 = header(r.headers(), "retry-after").parse().unwrap();
        assert!((1..=30).contains(&wait), "Retry-After {wait}");
        // Other users have their own allowance.
        let r = get_with_id(&w, "dr.nobody", "/_pkb/launch", "launch-4").await;
        assert_eq!(r.status(), 404);

        let unpair = |origin: &str, id: &str| {
            client()
                .post(w.proxy.url("/_pkb/unpair"))
                .header(USER_HEADER, "dr.jones")
                .header("origin", origin)
                .header("x-request-id", id)
                .send()
        };
        assert_eq!(
            unpair("https://evil.example", "unpair-1")
                .await
                .unwrap()
                .status(),
            403
        );
        assert_eq!(
            unpair(&w.proxy.url(""), "unpair-2").await.unwrap().status(),
            200
        );
    });
    w.proxy.terminate();
    let lines = w.proxy.audit_lines();

    let pair = lines
        .iter()
        .find(|l| l["action"] == "pair")
        .expect("a line for /pair");
    assert_eq!(pair["outcome"], "started");
    assert_eq!(pair["user"], "dr.jones");
    let cb = line_for(&lines, "cb-1");
    assert_eq!(
        (&cb["action"], &cb["outcome"], &cb["refused"]),
        (&"pair_callback".into(), &"paired".into(), &false.into())
    );

    let l1 = line_for(&lines, "launch-1");
    assert_eq!(l1["user"], "dr.jones");
    assert_eq!(l1["action"], "launch");
    assert_eq!(l1["outcome"], "redirect");
    assert_eq!(l1["refused"], false);
    assert_eq!(l1["patient"]["id_type"], "NHS");
    let hash = l1["patient"]["id_hash"].as_str().unwrap();
    assert_eq!(hash.len(), 32);
    assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(l1["time"].as_str().unwrap().ends_with('Z'));
    // The same patient hashes the same, so an auditor can follow one patient.
    assert_eq!(line_for(&lines, "launch-2")["patient"]["id_hash"], hash);

    let l3 = line_for(&lines, "launch-3");
    assert_eq!(
        (&l3["outcome"], &l3["refused"]),
        (&"rate_limited".into(), &true.into())
    );
    assert!(l3.get("patient").is_none());
    let l4 = line_for(&lines, "launch-4");
    assert_eq!(
        (&l4["user"], &l4["outcome"]),
        (&"dr.nobody".into(), &"not_paired".into())
    );

    let u1 = line_for(&lines, "unpair-1");
    assert_eq!(
        (&u1["action"], &u1["outcome"], &u1["refused"]),
        (&"unpair".into(), &"cross_site".into(), &true.into())
    );
    let u2 = line_for(&lines, "unpair-2");
    assert_eq!(
        (&u2["outcome"], &u2["refused"]),
        (&"unpaired".into(), &false.into())
    );
    assert_eq!(lines.len(), 8, "{lines:#?}");

    let output = w.proxy.output();
    assert!(
        !output.contains(NHS),
        "the patient's NHS number is in the output"
    );
    // JSON logs: every line on standard error is one JSON object, and the launch's log line
    // carries its request id.
    let log = w.proxy.log();
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["message"] == "launch" && e["span"]["request_id"] == "launch-1"),
        "{log}"
    );
}

#[test]
fn request_ids_are_kept_from_trusted_peers_only_and_passed_upstream() {
    let w = World::start();
    let upstream_ids = |client: reqwest::Client, sent: Option<&str>| {
        rt().block_on(async {
            let mut request = client.get(w.proxy.url("/page"));
            if let Some(id) = sent {
                request = request.header("x-request-id", id);
            }
            let r = request.send().await.unwrap();
            let echo: serde_json::Value = r.json().await.unwrap();
            echo["headers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|h| h[0] == "x-request-id")
                .map(|h| h[1].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
    };
    let generated = |ids: &[String]| {
        ids.len() == 1 && ids[0].len() == 32 && ids[0].bytes().all(|b| b.is_ascii_hexdigit())
    };
    assert_eq!(
        upstream_ids(client(), Some("ehr-7f3a:01")),
        vec!["ehr-7f3a:01".to_string()]
    );
    let spoofed = upstream_ids(client_from("127.0.0.2"), Some("ehr-7f3a:01"));
    assert!(generated(&spoofed), "{spoofed:?}");
    for unusable in ["has space", &"x".repeat(129)] {
        let ids = upstream_ids(client(), Some(unusable));
        assert!(generated(&ids), "{unusable}: {ids:?}");
    }
    let (a, b) = (upstream_ids(client(), None), upstream_ids(client(), None));
    assert!(generated(&a) && generated(&b) && a != b, "{a:?} {b:?}");
}

/// A full run (pairing through PKB's consent page, launches that each refresh and fetch an OTP,
/// a data-availability look-up, unpairing) with the most verbose logging pkb-edge has, JSON logs
/// and the audit log in a file: none of the codes, tokens or OTPs the simulator issued, nor the
/// client secret, appears anywhere in what the process wrote.
#[test]
fn no_code_token_refresh_token_or_otp_appears_in_any_output() {
    let audit_file = tempfile::NamedTempFile::new().unwrap();
    let audit_path = audit_file.path().to_path_buf();
    let mut w = World::start_with_args(
        |c| {
            c.extra_toml = format!(
                "[audit]\nfile = \"{}\"\n[decorate]\npatient_from = {{ query = \"nhs\" }}\n",
                audit_path.display()
            )
        },
        &["--log-format", "json"],
    );
    let mut seen = Vec::new();
    rt().block_on(async {
        let authorize = start_pairing(&w, "dr.jones", None).await;
        // Every access token PKB issues from now on lives 1 s: each launch below, a second
        // after the last, refreshes.
        w.sim
            .knobs(serde_json::json!({ "access_token_lifetime_secs": 1 }));
        let back = consent_at_pkb(&authorize, "jones@pkb.example", "allow").await;
        seen.push(back.clone());
        assert_eq!(
            w.get_as("dr.jones", &callback_path(&w, &back))
                .await
                .status(),
            200
        );
        for _ in 0..3 {
            tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
            let r = w.get_as("dr.jones", &launch_with_patient()).await;
            assert_eq!(r.status(), 302);
            seen.push(header(r.headers(), "location").to_string());
        }
        let r = w.get_as("dr.jones", &format!("/patients?nhs={NHS}")).await;
        assert_eq!(r.status(), 200);
        let stored = w.config().stored("dr.jones").await.unwrap();
        seen.push(stored.tokens.access_token.expose().to_string());
        seen.push(
            stored
                .tokens
                .refresh_token
                .as_ref()
                .unwrap()
                .expose()
                .to_string(),
        );
        let r = unpair_as(w.proxy.url("/_pkb/unpair"), "dr.jones").await;
        assert_eq!(r.status(), 200);
    });
    w.proxy.terminate();

    let issued = w.sim.sim.issued_secrets();
    // The check covers what the test saw: the code in the callback, each OTP, the last tokens.
    for s in &seen {
        assert!(
            issued.iter().any(|i| s.contains(i.as_str())),
            "{s} carries no issued secret"
        );
    }
    // A code, the tokens of the exchange and of at least three refreshes, three OTPs, the secret.
    assert!(issued.len() > 1 + 2 * 4 + 3, "{} secrets", issued.len());

    let audit = std::fs::read_to_string(&audit_path).unwrap();
    assert_eq!(audit.lines().count(), 6, "{audit}");
    let everything = format!("{}\n{audit}", w.proxy.output());
    assert_no_secrets(&w.sim, &everything);
}
