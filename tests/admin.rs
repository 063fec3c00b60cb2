//! `pkb-edge pairings list|revoke|rekey` against a real store, beside a running proxy.

mod common;

use std::process::Command;

use common::*;
use pkb_edge::store::crypto::Keyring;

/// Runs `pkb-edge pairings ARGS --config FILE`: exit code, stdout, stderr.
fn pairings(config: &ProxyConfig, dir: &tempfile::TempDir, args: &[&str]) -> (i32, String, String) {
    let path = dir.path().join(format!("admin-{}.toml", config.port));
    std::fs::write(&path, config.toml()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pkb-edge"))
        .arg("pairings")
        .args(args)
        .arg("--config")
        .arg(&path)
        .env_remove("PKB_EDGE_KEYS")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn list_revoke_and_rekey_beside_a_running_proxy() {
    let mut w = World::start();
    let config = w.config().clone();
    let stored = rt().block_on(async {
        let mut stored = Vec::new();
        for user in ["dr.a", "dr.b", "dr.c"] {
            stored.push(
                config
                    .pair(&w.sim, user, &format!("{user}@pkb.example"))
                    .await,
            );
        }
        stored
    });

    let (code, out, err) = pairings(&config, &w.dir, &["list"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "user_id\tcreated\trefreshed\taccess_expires\tkey_id"
    );
    let rows: Vec<Vec<&str>> = lines[1..4]
        .iter()
        .map(|l| l.split('\t').collect())
        .collect();
    assert_eq!(
        rows.iter().map(|r| r[0]).collect::<Vec<_>>(),
        ["dr.a", "dr.b", "dr.c"]
    );
    assert!(rows
        .iter()
        .all(|r| r.len() == 5 && r[4] == "k1" && r[1].ends_with('Z')));
    assert_eq!(lines[4], "# 3 pairing(s)");
    for p in &stored {
        assert!(!out.contains(p.tokens.access_token.expose()));
        assert!(!out.contains(p.tokens.refresh_token.as_ref().unwrap().expose()));
    }

    // Revoke: gone from the store, audited; a second revoke says there was nothing to do.
    let (code, out, err) = pairings(&config, &w.dir, &["revoke", "dr.b"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("revoked the pairing of `dr.b`"), "{out}");
    let audit: serde_json::Value = serde_json::from_str(
        out.lines()
            .find(|l| l.contains("\"type\":\"audit\""))
            .expect("an audit line"),
    )
    .unwrap();
    assert_eq!(
        (&audit["action"], &audit["user"], &audit["outcome"]),
        (&"revoke".into(), &"dr.b".into(), &"revoked".into())
    );
    assert!(rt().block_on(config.stored("dr.b")).is_none());
    let (code, _, err) = pairings(&config, &w.dir, &["revoke", "dr.b"]);
    assert_eq!(code, 1);
    assert!(err.contains("`dr.b` has no pairing"), "{err}");

    // Key rotation as an operator does it: every instance gets the new key first (restarted
    // with k2 before k1), then `rekey` runs beside them, then k1 can go.
    let mut rotated = config.clone();
    let k2 = Keyring::generate_line("k2");
    rotated.keys = format!("{k2},{}", config.keys);
    w.proxy.terminate();
    w.proxy = Proxy::start(&w.dir, &rotated);
    let (code, out, err) = pairings(&rotated, &w.dir, &["rekey"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        "2 pairing(s): 2 re-encrypted under key `k2`, 0 already were, 0 changed meanwhile"
    );
    // Run again: nothing left to do (resumable, idempotent).
    let (_, out, _) = pairings(&rotated, &w.dir, &["rekey"]);
    assert!(
        out.starts_with("2 pairing(s): 0 re-encrypted under key `k2`, 2 already were"),
        "{out}"
    );
    // The running proxy launches from the re-encrypted rows.
    let r = rt().block_on(w.get_as("dr.c", "/_pkb/launch"));
    assert_eq!(r.status(), 302);

    // k1 can go now: the store opens with k2 alone and every pairing decrypts.
    let mut only_k2 = config.clone();
    only_k2.keys = k2;
    let (code, out, err) = pairings(&only_k2, &w.dir, &["list"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.ends_with("\tk2")).count(),
        2,
        "{out}"
    );
    let a = rt().block_on(only_k2.stored("dr.a")).unwrap();
    assert_eq!(a.tokens, stored[0].tokens);
}

#[test]
fn a_bad_config_or_store_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "listen = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pkb-edge"))
        .args(["pairings", "list", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen"));
}

/// `check --deep` opens what start-up opens, so a reload with the wrong keys is refused before
/// the running process hands over.
#[test]
fn a_deep_check_opens_the_store_with_the_keys_and_the_audit_file() {
    let w = World::start();
    rt().block_on(w.config().pair(&w.sim, "dr.a", "a@pkb.example"));
    let check = |config: &ProxyConfig| {
        let path = w
            .dir
            .path()
            .join(format!("check-{}.toml", rand::random::<u32>()));
        std::fs::write(&path, config.toml()).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_pkb-edge"))
            .args(["check", "--deep", "--config"])
            .arg(&path)
            .env_remove("PKB_EDGE_KEYS")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(check(w.config()).0, 0);
    let mut wrong_keys = w.config().clone();
    wrong_keys.keys = Keyring::generate_line("k9");
    let (code, err) = check(&wrong_keys);
    assert_eq!(code, 1);
    assert!(
        err.contains("`k1`") && err.contains("not configured"),
        "{err}"
    );
    let mut bad_audit = w.config().clone();
    bad_audit.extra_toml = "[audit]\nfile = \"/nonexistent-dir/audit.log\"\n".into();
    let (code, err) = check(&bad_audit);
    assert_eq!(code, 1);
    assert!(err.contains("audit.file"), "{err}");
}
