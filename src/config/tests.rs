use super::*;

const KEY: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn minimal() -> String {
    format!(
        r#"
listen = "127.0.0.1:8080"
upstream = "http://127.0.0.1:3000"
public_url = "https://ehr.example.nhs.uk"
[identity]
trusted_peers = ["127.0.0.1/32", "::1"]
[pkb]
base_url = "https://sandbox.patientsknowbest.com"
client_id = "pkb-edge"
client_secret = "s3cret"
[store]
url = "sqlite:///tmp/x.db"
keys = "{KEY}"
"#
    )
}

fn no_env() -> BTreeMap<String, String> {
    BTreeMap::new()
}

fn keys_of(err: ConfigError) -> Vec<String> {
    err.problems.into_iter().map(|p| p.key).collect()
}

fn nhs_login_config(table: &str) -> String {
    minimal().replace("[identity]\n", "[identity]\nmode = \"nhs_login\"\n") + table
}

#[test]
fn nhs_login_mode_needs_its_table_and_checks_each_key() {
    let keys = keys_of(Config::parse(&nhs_login_config(""), &no_env()).unwrap_err());
    assert_eq!(keys, vec!["nhs_login"]);
    let ignored = minimal() + "[nhs_login]\nissuer = \"https://auth.login.nhs.uk\"\n";
    let keys = keys_of(Config::parse(&ignored, &no_env()).unwrap_err());
    assert_eq!(
        keys,
        vec!["nhs_login"],
        "a table that would be ignored is an error"
    );
    let table = r#"
[nhs_login]
issuer = "auth.login.nhs.uk"
client_id = ""
private_key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
scopes = ["profile"]
vtr = ["P9.Cp.Cd", "P7.Cx"]
pkb_prompt = "consent"
session_idle_secs = 3600
session_max_secs = 86400
cookie_name = "a b"
"#;
    let mut keys = keys_of(Config::parse(&nhs_login_config(table), &no_env()).unwrap_err());
    keys.sort();
    assert_eq!(
        keys,
        vec![
            "nhs_login.client_id",
            "nhs_login.cookie_name",
            "nhs_login.issuer",
            "nhs_login.pkb_prompt",
            "nhs_login.private_key_file",
            "nhs_login.scopes",
            "nhs_login.session_idle_secs",
            "nhs_login.session_max_secs",
            "nhs_login.vtr[1]",
        ]
    );
}

#[test]
fn nhs_login_defaults_follow_nhs_login_rules() {
    let pem = crate::core::rsa_keys::generate_private_key().unwrap();
    let table = format!(
            "[nhs_login]\nissuer = \"https://auth.sandpit.signin.nhs.uk/\"\nclient_id = \"portal\"\nprivate_key = '''{pem}'''\n"
        );
    let c = Config::parse(&nhs_login_config(&table), &no_env()).unwrap();
    let n = c.nhs_login.unwrap();
    assert_eq!(n.issuer, "https://auth.sandpit.signin.nhs.uk");
    assert_eq!(
        n.redirect_uri,
        "https://ehr.example.nhs.uk/_pkb/nhs/callback"
    );
    assert_eq!(
        n.vtr.iter().map(Vector::as_str).collect::<Vec<_>>(),
        DEFAULT_VTR
    );
    assert_eq!(n.scopes, ["openid", "profile"]);
    assert_eq!(n.pkb_prompt.as_deref(), Some("none"));
    assert_eq!((n.session_idle_secs, n.session_max_secs), (1800, 43200));
    assert!(
        !format!("{n:?}").contains("PRIVATE KEY"),
        "the key is never printed"
    );
}

#[test]
fn gp_credentials_need_their_scope_and_table() {
    let pem = crate::core::rsa_keys::generate_private_key().unwrap();
    let base = format!(
            "[nhs_login]\nissuer = \"https://auth.login.nhs.uk\"\nclient_id = \"portal\"\nprivate_key = '''{pem}'''\n"
        );
    let with_scope = format!("{base}scopes = [\"openid\", \"gp_integration_credentials\"]\n");
    let keys = keys_of(Config::parse(&nhs_login_config(&with_scope), &no_env()).unwrap_err());
    assert_eq!(keys, vec!["nhs_login.gp_credentials"]);
    let table_only = format!("{base}[nhs_login.gp_credentials]\npaths = [\"/im1\"]\n");
    let keys = keys_of(Config::parse(&nhs_login_config(&table_only), &no_env()).unwrap_err());
    assert_eq!(keys, vec!["nhs_login.scopes"]);
    let bad = format!(
            "{with_scope}[nhs_login.gp_credentials]\npaths = [\"im1\"]\nunusable_ods_codes = [\"XYZ\"]\nmax_refreshes = 0\n"
        );
    let mut keys = keys_of(Config::parse(&nhs_login_config(&bad), &no_env()).unwrap_err());
    keys.sort();
    assert_eq!(
        keys,
        vec![
            "nhs_login.gp_credentials.max_refreshes",
            "nhs_login.gp_credentials.paths[0]",
            "nhs_login.gp_credentials.unusable_ods_codes[0]",
        ]
    );
    let good = format!(
        "{with_scope}[nhs_login.gp_credentials]\npaths = [\"/im1/register\", \"/im1/api/*\"]\n"
    );
    let gp = Config::parse(&nhs_login_config(&good), &no_env())
        .unwrap()
        .nhs_login
        .unwrap()
        .gp_credentials
        .unwrap();
    assert_eq!(gp.unusable_gp_systems, ["MICROTEST"]);
    assert_eq!((gp.max_refreshes, gp.window_secs), (2, 3600));
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = Config::parse(&minimal(), &no_env()).unwrap();
    assert_eq!(c.prefix, "/_pkb");
    assert_eq!(
        c.pkb.redirect_uri,
        "https://ehr.example.nhs.uk/_pkb/callback"
    );
    assert_eq!(c.pkb.otp_login_path, "/otp.action");
    assert_eq!(c.pkb.otp_param, "otpToken");
    assert_eq!(c.pkb.token_path, "/apiToken.action");
    assert_eq!(c.pkb.authorize_path, "/apiAuthorize.action");
    assert_eq!(
        c.pkb.patient_landing_path,
        "/auth/patientSummary.action?tab=patientSummary"
    );
    assert_eq!(c.pkb.scope, "CLINICIAN");
    assert_eq!(c.pkb.client_auth, ClientAuth::Basic);
    assert_eq!(c.identity.header().as_str(), "x-authenticated-user");
    assert_eq!(c.store.cache_capacity, 100_000);
    assert_eq!(c.server.threads, 2);
}

#[test]
fn errors_name_their_keys() {
    let text = minimal()
        .replace("127.0.0.1:8080", "not-an-address")
        .replace("\"CLINICIAN\"", "\"x\"")
        .replace(
            "trusted_peers = [\"127.0.0.1/32\", \"::1\"]",
            "trusted_peers = [\"10.0.0.0/33\"]",
        )
        .replace("https://sandbox.patientsknowbest.com", "ftp://x");
    let keys = keys_of(Config::parse(&text, &no_env()).unwrap_err());
    assert!(keys.contains(&"listen".to_string()), "{keys:?}");
    assert!(
        keys.contains(&"identity.trusted_peers[0]".to_string()),
        "{keys:?}"
    );
    assert!(keys.contains(&"pkb.base_url".to_string()), "{keys:?}");
}

#[test]
fn a_mistyped_value_names_its_key() {
    let text = minimal().replace("[store]", "[store]\ncache_capacity = \"lots\"");
    assert_eq!(
        keys_of(Config::parse(&text, &no_env()).unwrap_err()),
        ["store.cache_capacity"]
    );
    let err = Config::parse("listen = 1\n", &no_env()).unwrap_err();
    assert_eq!(keys_of(err), ["listen"]);
}

#[test]
fn postgres_stores_keep_the_password_out_of_the_url() {
    let pg = |store: &str, env: &[(&str, &str)]| {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let text = minimal().replace(
            "url = \"sqlite:///tmp/x.db\"",
            &format!("url = \"postgres://edge:s%40cret@db.example:5432/pkb\"\n{store}"),
        );
        Config::parse(&text, &env)
    };
    let c = pg("pool_size = 4\ntls = \"verify\"", &[]).unwrap();
    assert_eq!(c.store.url, "postgres://edge@db.example:5432/pkb");
    assert_eq!(c.store.password.as_ref().unwrap().expose(), "s@cret");
    assert_eq!(c.store.pool_size, 4);
    assert_eq!(c.store.tls, crate::config::TlsMode::Verify);
    assert!(!format!("{c:?}").contains("s@cret"));
    let err = pg("", &[(ENV_STORE_PASSWORD, "other")]).unwrap_err();
    assert_eq!(keys_of(err.clone()), ["store.url"]);
    assert!(!err.to_string().contains("s@cret"), "{err}");
    assert_eq!(
        keys_of(pg("pool_size = 0", &[]).unwrap_err()),
        ["store.pool_size"]
    );
    assert_eq!(
        keys_of(pg("tls = \"maybe\"", &[]).unwrap_err()),
        ["store.tls"]
    );
    assert_eq!(
        keys_of(pg("tls_ca_file = \"Cargo.toml\"", &[]).unwrap_err()),
        ["store.tls_ca_file"]
    );
    let in_query = minimal().replace("sqlite:///tmp/x.db", "postgres://u@h/db?sslmode=disable");
    assert_eq!(
        keys_of(Config::parse(&in_query, &no_env()).unwrap_err()),
        ["store.url"]
    );
    let secret_typed = minimal().replace("client_secret = \"s3cret\"", "client_secret = 12345678");
    let err = Config::parse(&secret_typed, &no_env()).unwrap_err();
    assert!(!err.to_string().contains("12345678"), "{err}");
    let bad = minimal().replace("sqlite:///tmp/x.db", "mysql://u:hunter2@h/db");
    let err = Config::parse(&bad, &no_env()).unwrap_err();
    assert_eq!(keys_of(err.clone()), ["store.url"]);
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

/// Found by tests/properties.rs (`config_problems_never_hold_a_secret`): a mistyped URL that the
/// url crate reads without a password, or cannot read, was shown as it was, password and all.
#[test]
fn a_mistyped_store_url_is_shown_without_its_password() {
    for (url, shown) in [
        (
            "postgres:://edge:hunter2@db.example/pkb",
            "postgres:://edge:***@db.example/pkb",
        ),
        (
            "mysql://edge:hunter2@db.example:99999/pkb",
            "mysql://edge:***@db.example:99999/pkb",
        ),
        (
            "postgres:/edge:p@ss:hunter2@db example/pkb",
            "postgres:/edge:***@db%20example/pkb",
        ),
        (
            "pg://db.example:99999/pkb?password=hunter2&x=1",
            "pg://db.example:99999/pkb?password=***&x=1",
        ),
        (
            "sqlite:/var/lib/pkb-edge/pairings.db",
            "sqlite:/var/lib/pkb-edge/pairings.db",
        ),
        ("mysql://edge@db.example/pkb", "mysql://edge@db.example/pkb"),
    ] {
        assert_eq!(redact_url(url), shown, "{url}");
        let bad = minimal().replace("sqlite:///tmp/x.db", url);
        let err = Config::parse(&bad, &no_env()).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
    // Well-formed URLs are redacted as before.
    assert_eq!(
        redact_url("postgres://edge:hunter2@db.example/pkb"),
        "postgres://edge:***@db.example/pkb"
    );
}

#[test]
fn unknown_key_is_named() {
    let text = minimal().replace("[pkb]", "[pkb]\nclient_sekret = \"x\"");
    let keys = keys_of(Config::parse(&text, &no_env()).unwrap_err());
    assert_eq!(keys, vec!["client_sekret".to_string()]);
}

#[test]
fn secrets_come_from_exactly_one_place() {
    let text = minimal().replace("client_secret = \"s3cret\"", "");
    let keys = keys_of(Config::parse(&text, &no_env()).unwrap_err());
    assert_eq!(keys, vec!["pkb.client_secret".to_string()]);

    let mut env = no_env();
    env.insert(ENV_CLIENT_SECRET.into(), "from-env".into());
    let c = Config::parse(&text, &env).unwrap();
    assert_eq!(c.pkb.client_secret.expose(), "from-env");

    let both = minimal().replace(
        "client_secret = \"s3cret\"",
        "client_secret = \"a\"\nclient_secret_file = \"/x\"",
    );
    let keys = keys_of(Config::parse(&both, &no_env()).unwrap_err());
    assert_eq!(keys, vec!["pkb.client_secret".to_string()]);
}

#[test]
fn keys_from_environment_and_bad_keys_named() {
    let text = minimal().replace(&format!("keys = \"{KEY}\""), "");
    let keys = keys_of(Config::parse(&text, &no_env()).unwrap_err());
    assert_eq!(keys, vec!["store.keys_file".to_string()]);

    let mut env = no_env();
    env.insert(ENV_KEYS.into(), "k1:short".into());
    let keys = keys_of(Config::parse(&text, &env).unwrap_err());
    assert_eq!(keys, vec![ENV_KEYS.to_string()]);
}

#[test]
fn decorate_section() {
    let c = Config::parse(&minimal(), &no_env()).unwrap();
    assert!(
        c.decorate.patient_from.is_none(),
        "pages are not decorated unless configured"
    );
    assert_eq!(c.decorate.header.as_str(), "x-pkb-data-available");
    let with = format!("{}\n[decorate]\npatient_from = {{ path_regex = '^/patients/(\\d{{10}})' }}\nbudget_ms = 20\n", minimal());
    let c = Config::parse(&with, &no_env()).unwrap();
    assert!(matches!(
        c.decorate.patient_from,
        Some(crate::config::PatientSource::PathRegex(_))
    ));
    let two = format!(
        "{}\n[decorate]\npatient_from = {{ header = \"x-p\", query = \"nhs\" }}\n",
        minimal()
    );
    assert_eq!(
        keys_of(Config::parse(&two, &no_env()).unwrap_err()),
        vec!["decorate.patient_from".to_string()]
    );
    let no_group = format!(
        "{}\n[decorate]\npatient_from = {{ path_regex = '^/patients/' }}\n",
        minimal()
    );
    assert_eq!(
        keys_of(Config::parse(&no_group, &no_env()).unwrap_err()),
        vec!["decorate.patient_from.path_regex".to_string()]
    );
}

#[test]
fn ops_listen_is_optional_and_never_the_public_listener() {
    assert_eq!(
        Config::parse(&minimal(), &no_env()).unwrap().ops_listen,
        None
    );
    let with = format!("ops_listen = \"127.0.0.1:9090\"\n{}", minimal());
    assert_eq!(
        Config::parse(&with, &no_env()).unwrap().ops_listen,
        Some("127.0.0.1:9090".parse().unwrap())
    );
    let same = format!("ops_listen = \"127.0.0.1:8080\"\n{}", minimal());
    assert_eq!(
        keys_of(Config::parse(&same, &no_env()).unwrap_err()),
        vec!["ops_listen".to_string()]
    );
}

#[test]
fn secrets_never_printed_in_debug() {
    let c = Config::parse(&minimal(), &no_env()).unwrap();
    let shown = format!("{c:?}");
    assert!(!shown.contains("s3cret"));
    assert!(!shown.contains("AAECAwQF"));
}

#[test]
fn documented_example_is_valid() {
    let text = include_str!("../../conf/pkb-edge.toml");
    let mut env = no_env();
    env.insert(ENV_CLIENT_SECRET.into(), "x".into());
    env.insert(ENV_KEYS.into(), KEY.into());
    // The example's secret files do not exist on a build machine; replace them with the env.
    let text = text
        .lines()
        .filter(|l| !l.starts_with("client_secret_file") && !l.starts_with("keys_file"))
        .collect::<Vec<_>>()
        .join("\n");
    if let Err(e) = Config::parse(&text, &env) {
        panic!("conf/pkb-edge.toml does not validate:\n{e}");
    }
}

/// Each jwt preset block of the example, uncommented in place of header mode's keys, validates.
#[test]
fn documented_jwt_presets_are_valid() {
    let text = include_str!("../../conf/pkb-edge.toml");
    let mut env = no_env();
    env.insert(ENV_CLIENT_SECRET.into(), "x".into());
    env.insert(ENV_KEYS.into(), KEY.into());
    let mut presets = 0;
    for block in text.split("# --- jwt: ").skip(1) {
        let name = block.lines().next().unwrap_or_default().to_string();
        let identity: String = block
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with("# ") && !l.starts_with("# ---"))
            .map(|l| &l[2..])
            .filter(|l| !l.starts_with("key_url_template defaults"))
            .collect::<Vec<_>>()
            .join("\n");
        if !identity.starts_with("mode = \"jwt\"") {
            continue;
        }
        let config: String = text
            .lines()
            .filter(|l| !l.starts_with("client_secret_file") && !l.starts_with("keys_file"))
            .map(|l| match l {
                "mode = \"header\"" => identity.as_str(),
                "header = \"X-Authenticated-User\"" => "",
                l if l.starts_with("trusted_peers = ") => "",
                l => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        match Config::parse(&config, &env) {
            Ok(c) => assert!(c.identity.jwt().is_some(), "{name}"),
            Err(e) => panic!("conf/pkb-edge.toml's jwt block {name} does not validate:\n{e}"),
        }
        presets += 1;
    }
    assert_eq!(presets, 4, "a block per preset");
}

#[test]
fn vectors_parse_in_any_method_order_and_refuse_nonsense() {
    let v = Vector::parse("P9.Cp.Cd").unwrap();
    assert_eq!(v, Vector::parse("P9.Cd.Cp").unwrap());
    assert_ne!(v, Vector::parse("P5.Cp.Cd").unwrap());
    for bad in ["", "P9", "P7.Cp", "P9.Cx", "P9.Cp.Cp", "p9.cp", "P9..Cp"] {
        assert_eq!(Vector::parse(bad), None, "{bad}");
    }
}

fn with_tls(table: &str) -> String {
    minimal() + "[tls]\n" + table
}

#[test]
fn tls_defaults_and_each_key_named() {
    let ok = with_tls("cert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n");
    let tls = Config::parse(&ok, &no_env()).unwrap().tls.unwrap();
    assert_eq!(tls.min_version, TlsVersion::V1_2);
    assert!(tls.http2);
    assert_eq!(tls.reload, std::time::Duration::from_secs(60));
    assert_eq!(tls.client_auth, ClientCertMode::Optional);
    assert_eq!((tls.hsts_max_age_secs, tls.redirect_listen), (0, None));

    let bad = with_tls(
        "min_version = \"1.1\"\nreload_secs = 0\nclient_auth = \"required\"\nredirect_listen = \"127.0.0.1:8080\"\n",
    );
    let mut keys = keys_of(Config::parse(&bad, &no_env()).unwrap_err());
    keys.sort();
    assert_eq!(
        keys,
        vec![
            "tls.cert_file",
            "tls.client_auth",
            "tls.key_file",
            "tls.min_version",
            "tls.redirect_listen",
            "tls.reload_secs"
        ]
    );
    let plain = ok.replace("https://ehr.example.nhs.uk", "http://ehr.example.nhs.uk");
    assert_eq!(
        keys_of(Config::parse(&plain, &no_env()).unwrap_err()),
        vec!["public_url"]
    );
}

#[test]
fn trusted_clients_need_a_client_ca_and_header_mode() {
    let clients = |text: String| {
        text.replace(
            "trusted_peers = [\"127.0.0.1/32\", \"::1\"]",
            "trusted_clients = [\"SSO.trust.nhs.uk\"]",
        )
    };
    let without_tls = clients(minimal());
    assert_eq!(
        keys_of(Config::parse(&without_tls, &no_env()).unwrap_err()),
        vec!["identity.trusted_clients"]
    );
    let without_ca = clients(with_tls("cert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n"));
    assert_eq!(
        keys_of(Config::parse(&without_ca, &no_env()).unwrap_err()),
        vec!["identity.trusted_clients"]
    );
    let with_ca = clients(with_tls(
        "cert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\nclient_ca_file = \"/ca.pem\"\n",
    ));
    let config = Config::parse(&with_ca, &no_env()).unwrap();
    assert_eq!(config.identity.trusted_clients(), ["sso.trust.nhs.uk"]);
    assert!(
        config.identity.trusted_peers().is_empty(),
        "clients alone are a rule"
    );
    let in_jwt_mode = clients(minimal()).replace("[identity]\n", "[identity]\nmode = \"jwt\"\n");
    assert!(keys_of(Config::parse(&in_jwt_mode, &no_env()).unwrap_err())
        .contains(&"identity.trusted_clients".to_string()));
}

#[test]
fn upstream_tls_keys_are_named() {
    let https = minimal().replace("http://127.0.0.1:3000", "https://ehr.internal.example:8443");
    let https = https.replace("ehr.internal.example", "localhost");
    let config = Config::parse(&https, &no_env()).unwrap();
    assert_eq!(config.upstream_tls, UpstreamTlsSettings::default());
    assert_eq!(config.upstream_dns, std::time::Duration::from_secs(30));

    let half = https.clone() + "[upstream_tls]\nclient_cert_file = \"/e.pem\"\n";
    assert_eq!(
        keys_of(Config::parse(&half, &no_env()).unwrap_err()),
        vec!["upstream_tls.client_key_file"]
    );
    let plain = minimal() + "[upstream_tls]\nca_file = \"/ca.pem\"\n";
    assert_eq!(
        keys_of(Config::parse(&plain, &no_env()).unwrap_err()),
        vec!["upstream_tls"],
        "an http upstream never uses it"
    );
    let bad_name = https.clone() + "[upstream_tls]\nserver_name = \"ehr internal\"\n";
    assert_eq!(
        keys_of(Config::parse(&bad_name, &no_env()).unwrap_err()),
        vec!["upstream_tls.server_name"]
    );
    let zero = format!("upstream_dns_secs = 0\n{https}");
    assert_eq!(
        keys_of(Config::parse(&zero, &no_env()).unwrap_err()),
        vec!["upstream_dns_secs"]
    );
    let full = https
        + "[upstream_tls]\nca_file = \"/ca.pem\"\nclient_cert_file = \"/e.pem\"\nclient_key_file = \"/e.key\"\nserver_name = \"ehr.internal\"\n";
    let tls = Config::parse(&full, &no_env()).unwrap().upstream_tls;
    assert_eq!(tls.server_name.as_deref(), Some("ehr.internal"));
    assert_eq!(tls.client_cert, Some(("/e.pem".into(), "/e.key".into())));
}
