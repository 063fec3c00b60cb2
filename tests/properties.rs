//! Property tests for every parser that reads what a client sends: the launch query, relative
//! paths (also in `core::relative_path`), the cookie reader, request ids, the identity header's
//! value, the NHS number check, and the config loader. Properties: never a panic; never an
//! off-site target; what is accepted comes back the same when written out and read again.
//!
//! 256 cases per property (proptest's default); `PROPTEST_CASES=10000 cargo test --test
//! properties` runs more.

use std::collections::BTreeMap;
use std::net::IpAddr;

use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;

use pkb_edge::config::Config;
use pkb_edge::core::cookies::cookie_value;
use pkb_edge::core::patient::{nhs_number_is_valid, PatientContext};
use pkb_edge::edge::headers::request_id;
use pkb_edge::identity::HeaderIdentity;
use pkb_edge::launch::LaunchParams;
use pkb_edge::pkb::urls::ContextParams;

const USER_HEADER: &str = "x-authenticated-user";

/// A config that loads, with `extra` appended (tables or keys of its own).
fn config_text(extra: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:18080"
upstream = "http://127.0.0.1:18081"
public_url = "https://ehr.example"
[identity]
header = "{USER_HEADER}"
trusted_peers = ["127.0.0.1/32"]
[pkb]
base_url = "https://pkb.example"
client_id = "pkb-edge"
client_secret = "secret"
[store]
url = "sqlite:///tmp/pkb-edge-properties.db"
keys = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
{extra}
"#
    )
}

/// Keys of the config's tables, for values of every type under each.
const KNOWN_KEYS: &[&str] = &[
    "threads",
    "max_connections",
    "keepalive_idle_secs",
    "header_timeout_secs",
    "grace_period_seconds",
    "mode",
    "header",
    "trusted_peers",
    "timeout_ms",
    "refresh_skew_secs",
    "cache_capacity",
    "launch_per_minute",
    "pkb_concurrency",
    "patient_from",
    "ttl_secs",
    "file",
    "hash_key",
    "url",
    "keys",
    "base_url",
    "client_id",
    "state_ttl_secs",
];

fn no_env() -> BTreeMap<String, String> {
    BTreeMap::new()
}

/// Whether `target` (a redirect or return path) stays on `host` when a browser resolves it,
/// also after one more round of percent-decoding (a second hop that decodes again).
fn stays_on_host(target: &str) -> bool {
    let base = url::Url::parse("https://pkb.example/").unwrap();
    let once = base
        .join(target)
        .map(|u| u.host_str() == Some("pkb.example"));
    let decoded = percent_encoding::percent_decode_str(target).decode_utf8_lossy();
    let twice = base
        .join(&decoded)
        .map(|u| u.host_str() == Some("pkb.example"));
    once == Ok(true) && twice == Ok(true)
}

/// A launch query's parameters, as one is written: names from PKB's set (and others), values
/// from ordinary and hostile characters.
fn launch_query() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        Just("redirect_uri".to_string()),
        Just("contextNationalId".to_string()),
        Just("contextNationalIdType".to_string()),
        Just("contextUserEmail".to_string()),
        "[a-zA-Z_]{1,12}",
    ];
    let value = prop_oneof![
        "/[a-zA-Z0-9/?=&%._~-]{0,30}",
        "[ -~\\t\\n%/\\\\]{0,30}",
        "[0-9]{10}",
        Just("NHS".to_string()),
        "[a-z]{1,8}@[a-z]{1,8}\\.example",
    ];
    proptest::collection::vec((name, value), 0..5).prop_map(|pairs| {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            s.append_pair(&k, &v);
        }
        s.finish()
    })
}

/// The query `params` parse from, written out again.
fn launch_query_of(params: &LaunchParams) -> String {
    let names = ContextParams::default();
    let mut s = form_urlencoded::Serializer::new(String::new());
    if let Some(r) = &params.redirect_uri {
        s.append_pair("redirect_uri", r.as_str());
    }
    match &params.context {
        Some(PatientContext::NationalId { id, id_type }) => {
            s.append_pair(&names.national_id, id);
            s.append_pair(&names.national_id_type, id_type);
        }
        Some(PatientContext::Email(email)) => {
            s.append_pair(&names.email, email);
        }
        None => {}
    }
    s.finish()
}

fn identity() -> HeaderIdentity {
    let config = Config::parse(&config_text(""), &no_env()).expect("the base config loads");
    HeaderIdentity::new(&config.identity)
}

fn trusted() -> Option<IpAddr> {
    Some("127.0.0.1".parse().unwrap())
}

proptest! {
    #[test]
    fn the_launch_query_never_panics_never_leaves_and_round_trips(query in launch_query()) {
        let names = ContextParams::default();
        if let Ok(params) = LaunchParams::parse(Some(&query), &names) {
            if let Some(r) = &params.redirect_uri {
                prop_assert!(stays_on_host(r.as_str()), "{:?}", r.as_str());
            }
            let again = LaunchParams::parse(Some(&launch_query_of(&params)), &names);
            prop_assert_eq!(again.ok(), Some(params));
        }
    }

    #[test]
    fn any_launch_query_bytes_never_panic(query in "[ -~\\t\\n\\r\\u{80}-\\u{10ffff}]{0,80}") {
        let _ = LaunchParams::parse(Some(&query), &ContextParams::default());
    }

    #[test]
    fn return_paths_never_leave_and_round_trip(input in "[ -~\\t\\n%/\\\\]{0,40}") {
        if let Ok(p) = pkb_edge::core::relative_path::parse(&input) {
            prop_assert!(stays_on_host(p.as_str()), "{:?}", p.as_str());
            let again = pkb_edge::core::relative_path::parse(p.as_str());
            prop_assert_eq!(again.map(|q| q.as_str().to_string()).ok(), Some(p.as_str().to_string()));
        }
    }

    #[test]
    fn the_cookie_reader_never_panics_and_round_trips(
        header in proptest::collection::vec(any::<u8>(), 0..120),
        value in "[!#-+\\--:<-\\[\\]-~]{0,40}",
    ) {
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_bytes(&header) {
            headers.append(http::header::COOKIE, v);
            if let Some(found) = cookie_value(&headers, "s") {
                prop_assert!(!found.contains(';'), "{found:?}");
            }
        }
        // A cookie value as a browser sends it comes back as it was.
        let mut headers = HeaderMap::new();
        headers.append(http::header::COOKIE, HeaderValue::from_str(&format!("a=1; s={value}; b=2")).unwrap());
        prop_assert_eq!(cookie_value(&headers, "s"), Some(value));
    }

    #[test]
    fn request_ids_are_always_sane_and_a_sane_one_is_kept(
        sent in proptest::collection::vec(any::<u8>(), 0..200),
        sane in "[a-zA-Z0-9._:/+=@-]{1,128}",
    ) {
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_bytes(&sent) {
            headers.insert("x-request-id", v);
        }
        let id = request_id(true, &headers);
        prop_assert!((1..=128).contains(&id.len()));
        prop_assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(&b)), "{id:?}");
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", HeaderValue::from_str(&sane).unwrap());
        prop_assert_eq!(request_id(true, &headers), sane.clone());
        // From an untrusted peer, never.
        prop_assert_ne!(request_id(false, &headers), sane);
    }

    #[test]
    fn the_identity_value_is_believed_only_when_sane_and_round_trips(
        sent in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let identity = identity();
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_bytes(&sent) {
            headers.insert(USER_HEADER, v);
        }
        if let Some(user) = identity.resolve(trusted(), &headers) {
            prop_assert!(!user.is_empty() && user.len() <= 256, "{user:?}");
            prop_assert!(!user.chars().any(char::is_control), "{user:?}");
            let mut again = HeaderMap::new();
            again.insert(USER_HEADER, HeaderValue::from_str(&user).unwrap());
            prop_assert_eq!(identity.resolve(trusted(), &again), Some(user));
        }
        prop_assert_eq!(identity.resolve(Some("10.9.9.9".parse().unwrap()), &headers), None);
    }

    #[test]
    fn nhs_numbers_never_panic_and_exactly_one_check_digit_fits(
        any_text in "\\PC{0,14}",
        nine in "[0-9]{9}",
    ) {
        if nhs_number_is_valid(&any_text) {
            prop_assert!(any_text.len() == 10 && any_text.bytes().all(|b| b.is_ascii_digit()));
        }
        let valid: Vec<char> = ('0'..='9')
            .filter(|d| nhs_number_is_valid(&format!("{nine}{d}")))
            .collect();
        prop_assert!(valid.len() <= 1, "{nine}: {valid:?}");
    }

    #[test]
    fn the_config_loader_never_panics_on_any_text(text in "\\PC{0,200}") {
        let _ = Config::parse(&text, &no_env());
    }

    #[test]
    fn the_config_loader_never_panics_on_any_value_of_a_known_key(
        table in prop_oneof![Just("server"), Just("identity"), Just("pkb"), Just("store"), Just("limits"), Just("decorate"), Just("audit")],
        key in prop_oneof![
            proptest::sample::select(KNOWN_KEYS).prop_map(str::to_string),
            "[a-z_]{1,12}",
        ],
        value in prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            "[ -~]{0,20}".prop_map(|s| format!("{s:?}")),
            proptest::collection::vec(any::<i32>(), 0..3).prop_map(|v| format!("{v:?}")),
            Just("{ path_regex = '(' }".to_string()),
            Just("1e400".to_string()),
        ],
    ) {
        let text = config_text("").replace(&format!("[{table}]\n"), &format!("[{table}]\n{key} = {value}\n"));
        let text = if text.contains(&format!("[{table}]")) {
            text
        } else {
            config_text(&format!("[{table}]\n{key} = {value}\n"))
        };
        let _ = Config::parse(&text, &no_env());
    }
}
