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

#[test]
fn nhs_login_keys_and_the_simulator_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("rp.pem");
    let (code, text) = pkb_edge(&["keygen", "--nhs-login", "--out", key.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    let public: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"), "{text}");
    let private = std::fs::read_to_string(&key).unwrap();
    assert_eq!(
        pkb_edge::core::rsa_keys::check_private_key(&private),
        Ok(())
    );
    assert!(
        !text.contains(private.lines().nth(1).unwrap()),
        "the private key is not printed"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (code, text) = pkb_edge(&["keygen", "--nhs-login", "--out", key.to_str().unwrap()]);
    assert_eq!(code, 1, "never overwritten: {text}");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), private);

    // The simulators alone, with that key registered.
    let public_file = dir.path().join("rp.pub.pem");
    std::fs::write(&public_file, public).unwrap();
    let port = |_| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (pkb, op) = (port(0), port(1));
    let callback = "https://portal.example/_pkb/nhs/callback";
    let mut child = Command::new(env!("CARGO_BIN_EXE_pkb-edge"))
        .args(["sim", "--listen", &format!("127.0.0.1:{pkb}")])
        .args(["--nhs-login", &format!("127.0.0.1:{op}")])
        .args(["--nhs-rp-client-id", "portal"])
        .args(["--nhs-rp-public-key", public_file.to_str().unwrap()])
        .args(["--nhs-rp-redirect-uri", callback])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(async {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let discovery = format!("http://127.0.0.1:{op}/.well-known/openid-configuration");
        let mut tries = 0;
        let metadata: serde_json::Value = loop {
            match http.get(&discovery).send().await {
                Ok(r) => break r.json().await.unwrap(),
                Err(_) if tries < 200 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("the NHS login simulator did not start: {e}"),
            }
        };
        assert_eq!(metadata["issuer"], format!("http://127.0.0.1:{op}"));
        let authorize = |client: &str| {
            let mut u = url::Url::parse(&format!("http://127.0.0.1:{op}/authorize")).unwrap();
            u.query_pairs_mut()
                .append_pair("response_type", "code")
                .append_pair("client_id", client)
                .append_pair("redirect_uri", callback)
                .append_pair("scope", "openid")
                .append_pair("state", "s")
                .append_pair("nonce", "n");
            http.get(u.to_string()).send()
        };
        let registered = authorize("portal").await.unwrap().status().as_u16();
        let unknown = authorize("someone").await.unwrap().status().as_u16();
        (registered, unknown)
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        result,
        (200, 400),
        "the registered client gets the sign-in page"
    );
}
