//! The command line: `check` explains problems by key, `keygen` prints a usable key.

use std::process::Command;

fn pkb_edge(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pkb-edge"))
        .args(args)
        .env_remove("PKB_EDGE_KEYS")
        .env_remove("PKB_EDGE_CLIENT_SECRET")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn check_names_each_bad_key_and_never_prints_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
listen = "everywhere"
upstream = "ftp://127.0.0.1:3000"
public_url = "https://ehr.example.nhs.uk"
[identity]
trusted_peers = []
[pkb]
base_url = "https://sandbox.patientsknowbest.com"
client_id = "pkb-edge"
client_secret = "super-secret-value"
scope = "DOCTOR"
[store]
url = "mysql://x"
keys = "k1:tooshort"
"#,
    )
    .unwrap();
    let (code, text) = pkb_edge(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{text}");
    for key in [
        "listen:",
        "upstream:",
        "identity.trusted_peers:",
        "pkb.scope:",
        "store.url:",
        "store.keys:",
    ] {
        assert!(text.contains(key), "{key} not named in:\n{text}");
    }
    assert!(!text.contains("super-secret-value"));
    assert!(!text.contains("tooshort"));
}

#[test]
fn keygen_prints_a_key_the_config_accepts() {
    let (code, line) = pkb_edge(&["keygen", "--id", "2026a"]);
    assert_eq!(code, 0);
    let keyring = pkb_edge::store::crypto::Keyring::parse(line.trim()).unwrap();
    assert_eq!(keyring.ids(), vec!["2026a"]);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.toml");
    std::fs::write(
        &path,
        format!(
            r#"
listen = "127.0.0.1:8080"
upstream = "http://127.0.0.1:3000"
public_url = "https://ehr.example.nhs.uk"
[identity]
trusted_peers = ["10.0.0.0/8"]
[pkb]
base_url = "https://sandbox.patientsknowbest.com"
client_id = "pkb-edge"
client_secret = "x"
[store]
url = "sqlite://{}/p.db"
keys = "{}"
"#,
            dir.path().display(),
            line.trim()
        ),
    )
    .unwrap();
    let (code, text) = pkb_edge(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("OK"));
}
