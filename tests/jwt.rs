//! jwt identity, end to end: the real binary believes a signed assertion from the identity-aware
//! proxy in front. For each preset a token is made and its keys served the way that product does
//! it (a JWKS, or AWS's PEM per `kid`, from a key server on loopback that counts its requests);
//! what the upstream saw, what `launch` answered, how often keys were fetched and what
//! `/metrics` counted are the evidence.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use pkb_edge::core::ec_keys::EcSigningKey;
use serde_json::{json, Value};

use common::*;

const POMERIUM: &str = "X-Pomerium-Jwt-Assertion";
const CLOUDFLARE: &str = "Cf-Access-Jwt-Assertion";
const ALB: &str = "x-amzn-oidc-data";
const ISSUER: &str = "authenticate.example.nhs.uk";
const AUDIENCE: &str = "ehr.example.nhs.uk";
const CF_TEAM: &str = "https://trust.cloudflareaccess.com";
const CF_AUD: &str = "4714c1358e65fe4b408ad6d432a5f878f08194bdb4752441fd56faefa9b2b6f2";
const ALB_ARN: &str =
    "arn:aws:elasticloadbalancing:eu-west-2:123456789012:loadbalancer/app/ehr/50dc6c495c0c9188";
const ALB_ISSUER: &str = "https://login.trust.example/oauth2";
const OIDC_ISSUER: &str = "https://idp.trust.example";
const OIDC_CLIENT: &str = "ehr-portal";

// ---------------------------------------------------------------------------------------------
// The identity provider: keys, and the server that publishes them.

struct Signers {
    ec: EcSigningKey,
    rsa_pem: String,
    rsa: EncodingKey,
}

fn signers() -> &'static Signers {
    static S: OnceLock<Signers> = OnceLock::new();
    S.get_or_init(|| {
        let rsa_pem = pkb_edge::core::rsa_keys::generate_private_key().unwrap();
        Signers {
            ec: EcSigningKey::generate().unwrap(),
            rsa: EncodingKey::from_rsa_pem(rsa_pem.as_bytes()).unwrap(),
            rsa_pem,
        }
    })
}

fn rsa_jwk(kid: &str) -> Value {
    let mut jwk = pkb_edge::core::rsa_keys::public_jwk(&signers().rsa_pem, kid).unwrap();
    jwk["alg"] = json!("RS256");
    jwk
}

#[derive(Default)]
struct Published {
    jwks: Mutex<Vec<Value>>,
    pems: Mutex<HashMap<String, String>>,
    hits: Mutex<HashMap<String, usize>>,
    down: AtomicBool,
}

/// A key server on loopback: the JWKS where Pomerium (`/.well-known/pomerium/jwks.json`) and
/// Cloudflare Access (`/cdn-cgi/access/certs`) publish it, one PEM per kid as AWS does
/// (`/alb/{kid}`), and an attacker's JWKS (`/attacker/jwks`). It counts every request by path and
/// can be taken down (503).
struct KeyServer {
    addr: SocketAddr,
    published: Arc<Published>,
}

type Keys = State<Arc<Published>>;

impl Published {
    fn hit(&self, path: &str) -> bool {
        *self
            .hits
            .lock()
            .unwrap()
            .entry(path.to_string())
            .or_default() += 1;
        !self.down.load(Ordering::SeqCst)
    }
}

async fn jwks(State(p): Keys, uri: axum::http::Uri) -> Response {
    if !p.hit(uri.path()) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let keys = p.jwks.lock().unwrap().clone();
    // Cloudflare's certs document carries its certificates beside the keys.
    axum::Json(
        json!({ "keys": keys, "public_cert": {"kid": "x", "cert": "..."}, "public_certs": [] }),
    )
    .into_response()
}

async fn alb_key(State(p): Keys, Path(kid): Path<String>) -> Response {
    if !p.hit(&format!("/alb/{kid}")) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    match p.pems.lock().unwrap().get(&kid) {
        Some(pem) => pem.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn attacker(State(p): Keys) -> Response {
    p.hit("/attacker/jwks");
    let stranger = EcSigningKey::generate().unwrap();
    axum::Json(json!({ "keys": [stranger.public_jwk("attacker")] })).into_response()
}

impl KeyServer {
    fn start() -> KeyServer {
        let published = Arc::new(Published::default());
        published
            .jwks
            .lock()
            .unwrap()
            .extend([signers().ec.public_jwk("ec-1"), rsa_jwk("rsa-1")]);
        published
            .pems
            .lock()
            .unwrap()
            .insert("alb-1".into(), signers().ec.public_pem());
        let app = Router::new()
            .route("/.well-known/pomerium/jwks.json", get(jwks))
            .route("/cdn-cgi/access/certs", get(jwks))
            .route("/alb/{kid}", get(alb_key))
            .route("/attacker/jwks", get(attacker))
            .with_state(published.clone());
        let listener = rt()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        rt().spawn(async move { axum::serve(listener, app).await });
        KeyServer { addr, published }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self, path: &str) -> usize {
        self.published
            .hits
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    fn set_down(&self, down: bool) {
        self.published.down.store(down, Ordering::SeqCst);
    }

    fn publish(&self, jwk: Value) {
        self.published.jwks.lock().unwrap().push(jwk);
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens, made the way each product makes them.

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Pomerium's claims: the route as audience, the user's email, a fresh jti.
fn pomerium_claims(email: &str) -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": now() + 300,
        "iat": now(),
        "nbf": now(),
        "sub": format!("sub-{email}"),
        "email": email,
        "groups": ["clinicians"],
        "jti": format!("{:x}", rand::random::<u64>()),
    })
}

fn es256(kid: &str, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(kid.into());
    encode(&h, claims, signers().ec.encoding_key()).unwrap()
}

fn rs256(kid: &str, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(kid.into());
    encode(&h, claims, &signers().rsa).unwrap()
}

/// An AWS ALB `x-amzn-oidc-data`: the signer and the issuer in the header, base64url segments
/// with `=` padding, ES256 over the padded text.
fn alb_token(kid: &str, signer: &str, email: &str) -> String {
    let exp = now() + 120;
    let header = json!({"typ": "JWT", "kid": kid, "alg": "ES256", "iss": ALB_ISSUER,
        "client": "alb-client", "signer": signer, "exp": exp});
    let claims = json!({"sub": format!("sub-{email}"), "email": email, "exp": exp, "iss": ALB_ISSUER,
        "jti": format!("{:x}", rand::random::<u64>())});
    let input = format!(
        "{}.{}",
        URL_SAFE.encode(header.to_string()),
        URL_SAFE.encode(claims.to_string())
    );
    let sig = jsonwebtoken::crypto::sign(
        input.as_bytes(),
        signers().ec.encoding_key(),
        Algorithm::ES256,
    )
    .unwrap();
    let sig = URL_SAFE.encode(URL_SAFE_NO_PAD.decode(sig).unwrap());
    format!("{input}.{sig}")
}

// ---------------------------------------------------------------------------------------------
// The proxy in jwt mode, and what it counted.

fn pomerium_identity(keys: &KeyServer, extra: &str) -> String {
    format!(
        "mode = \"jwt\"\npreset = \"pomerium\"\njwks_url = \"{}\"\nissuer = \"{ISSUER}\"\naudience = [\"{AUDIENCE}\"]\n{extra}",
        keys.url("/.well-known/pomerium/jwks.json")
    )
}

fn start(identity: String) -> World {
    World::start_with(|c| {
        c.identity = Some(identity);
        c.ops_port = Some(free_port());
    })
}

async fn ops_get(w: &World, path: &str) -> reqwest::Response {
    let port = w.config().ops_port.unwrap();
    client()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .unwrap()
}

async fn metrics_text(w: &World) -> String {
    ops_metrics(w.config().ops_port.unwrap()).await
}

/// `pkb_edge_identity_total{mode="jwt",outcome}`, or `None` when the series is not exported.
fn identity_count(text: &str, outcome: &str) -> Option<u64> {
    let series = format!("pkb_edge_identity_total{{mode=\"jwt\",outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map(|v| v.trim().parse().unwrap())
}

async fn outcome_count(w: &World, outcome: &str) -> u64 {
    identity_count(&metrics_text(w).await, outcome).unwrap_or(0)
}

/// Waits until `/readyz` answers `status`, failing after 15 s.
async fn wait_ready(w: &World, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if ops_get(w, "/readyz").await.status() == status {
            return;
        }
        assert!(Instant::now() < deadline, "/readyz never answered {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GET `path` with these headers.
async fn get_with(w: &World, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = client().get(w.proxy.url(path));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

/// The values of `name` the upstream received (any case of the name).
fn seen(headers: &[(String, String)], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .collect()
}

/// A proxied page with `token` in `header`, plus a forged identity in two spellings: what user
/// the upstream was told, having checked the forgeries are gone and the assertion passed on.
async fn user_upstream(w: &World, header: &str, token: &str) -> Option<String> {
    let r = get_with(
        w,
        "/ward/beds",
        &[
            (header, token),
            (USER_HEADER, "mallory"),
            ("X_Authenticated_User", "mallory"),
        ],
    )
    .await;
    let (_, headers) = upstream_saw(r).await;
    assert_eq!(
        seen(&headers, header),
        [token],
        "the assertion passes unchanged"
    );
    assert!(
        seen(&headers, "x_authenticated_user").is_empty(),
        "client spellings of forward_header are removed"
    );
    let users = seen(&headers, USER_HEADER);
    assert!(users.len() <= 1, "{users:?}");
    assert!(!users.contains(&"mallory".to_string()), "{users:?}");
    users.into_iter().next()
}

/// A launch with `token` in `header` for a paired user: it lands in PKB as that user.
async fn launch_works(w: &World, header: &str, token: &str, user: &str) {
    w.config().pair(&w.sim, user, "jones@pkb.example").await;
    let r = get_with(w, "/_pkb/launch", &[(header, token)]).await;
    assert_eq!(r.status(), 302, "{}", r.text().await.unwrap());
    assert_eq!(landing_of(&r).await.user, "jones@pkb.example");
}

// ---------------------------------------------------------------------------------------------
// Accepted: each preset.

#[test]
fn pomerium_assertion_names_the_user_upstream_and_launches() {
    let keys = KeyServer::start();
    let w = start(pomerium_identity(&keys, ""));
    rt().block_on(async {
        let token = es256("ec-1", &pomerium_claims("dr.jones@trust.nhs.uk"));
        assert_eq!(
            user_upstream(&w, POMERIUM, &token).await.as_deref(),
            Some("dr.jones@trust.nhs.uk")
        );
        launch_works(&w, POMERIUM, &token, "dr.jones@trust.nhs.uk").await;
        assert_eq!(outcome_count(&w, "valid").await, 2);
        assert_eq!(
            keys.hits("/.well-known/pomerium/jwks.json"),
            1,
            "keys fetched once at start-up, the token verified once and then remembered"
        );
        let r = get_with(&w, "/_pkb/launch", &[]).await;
        assert_eq!(r.status(), 401, "no token, no launch");
    });
}

#[test]
fn cloudflare_access_assertion_is_checked_against_the_aud_tag() {
    let keys = KeyServer::start();
    let w = start(format!(
        "mode = \"jwt\"\npreset = \"cloudflare_access\"\nissuer = \"{CF_TEAM}\"\naudience = [\"{CF_AUD}\"]\njwks_url = \"{}\"\n",
        keys.url("/cdn-cgi/access/certs")
    ));
    rt().block_on(async {
        let claims = |aud: &str| {
            json!({"aud": [aud], "email": "nurse.patel@trust.nhs.uk", "exp": now() + 300,
                "iat": now(), "nbf": now(), "iss": CF_TEAM, "type": "app",
                "identity_nonce": "6ei69kawdKzMIAPF", "sub": "7335d417-61da-459d-899c-0a01c76a2f94",
                "country": "GB"})
        };
        let token = rs256("rsa-1", &claims(CF_AUD));
        assert_eq!(
            user_upstream(&w, CLOUDFLARE, &token).await.as_deref(),
            Some("nurse.patel@trust.nhs.uk")
        );
        launch_works(&w, CLOUDFLARE, &token, "nurse.patel@trust.nhs.uk").await;
        let other_app = rs256("rsa-1", &claims("another-application-aud-tag"));
        assert_eq!(user_upstream(&w, CLOUDFLARE, &other_app).await, None);
        assert_eq!(outcome_count(&w, "wrong_audience").await, 1);
        // Cloudflare signs RS256 only: an ES256 token, even with a published key, is refused.
        let es = es256("ec-1", &claims(CF_AUD));
        assert_eq!(user_upstream(&w, CLOUDFLARE, &es).await, None);
        assert_eq!(outcome_count(&w, "bad_signature").await, 1);
    });
}

#[test]
fn aws_alb_data_with_padded_segments_is_verified_with_the_pem_for_its_kid() {
    let keys = KeyServer::start();
    let w = start(format!(
        "mode = \"jwt\"\npreset = \"aws_alb\"\nissuer = \"{ALB_ISSUER}\"\nsigner = \"{ALB_ARN}\"\nkey_url_template = \"{}\"\n",
        keys.url("/alb/{kid}")
    ));
    rt().block_on(async {
        wait_ready(&w, 200).await;
        let token = alb_token("alb-1", ALB_ARN, "dr.khan@trust.nhs.uk");
        assert!(token.contains('='), "AWS pads its segments: {token}");
        assert_eq!(
            user_upstream(&w, ALB, &token).await.as_deref(),
            Some("dr.khan@trust.nhs.uk")
        );
        launch_works(&w, ALB, &token, "dr.khan@trust.nhs.uk").await;
        let again = alb_token("alb-1", ALB_ARN, "dr.khan@trust.nhs.uk");
        assert!(user_upstream(&w, ALB, &again).await.is_some());
        assert_eq!(
            keys.hits("/alb/alb-1"),
            1,
            "the PEM for a kid is fetched once"
        );

        let other_lb = ALB_ARN.replace("50dc6c495c0c9188", "0000000000000000");
        let wrong_signer = alb_token("alb-1", &other_lb, "dr.khan@trust.nhs.uk");
        assert_eq!(user_upstream(&w, ALB, &wrong_signer).await, None);
        assert_eq!(outcome_count(&w, "wrong_audience").await, 1);
        // A kid that is not a plain name never reaches the key URL.
        let traversal = alb_token("../attacker/jwks", ALB_ARN, "dr.khan@trust.nhs.uk");
        assert_eq!(user_upstream(&w, ALB, &traversal).await, None);
        assert_eq!(keys.hits("/attacker/jwks"), 0);
        assert_eq!(outcome_count(&w, "unknown_key").await, 1);
    });
}

#[test]
fn oidc_id_token_as_a_bearer_token() {
    let keys = KeyServer::start();
    let w = start(format!(
        "mode = \"jwt\"\npreset = \"oidc\"\nissuer = \"{OIDC_ISSUER}\"\naudience = [\"{OIDC_CLIENT}\"]\njwks_url = \"{}\"\n",
        keys.url("/.well-known/pomerium/jwks.json")
    ));
    rt().block_on(async {
        let id_token = rs256(
            "rsa-1",
            &json!({"iss": OIDC_ISSUER, "aud": OIDC_CLIENT, "sub": "248289761001", "exp": now() + 300,
                "iat": now(), "nonce": "n-0S6_WzA2Mj", "email": "janedoe@trust.nhs.uk"}),
        );
        let bearer = format!("Bearer {id_token}");
        assert_eq!(
            user_upstream(&w, "authorization", &bearer).await.as_deref(),
            Some("248289761001"),
            "oidc's user is the sub"
        );
        launch_works(&w, "authorization", &bearer, "248289761001").await;
        let basic = "Basic ZHI6c2VjcmV0";
        assert_eq!(user_upstream(&w, "authorization", basic).await, None);
        assert_eq!(outcome_count(&w, "malformed").await, 1);
    });
}

// ---------------------------------------------------------------------------------------------
// Refused: each its own check, each counted.

/// Tokens that must name nobody, with the outcome each must be counted as.
fn refused_tokens(keys: &KeyServer) -> Vec<(&'static str, String, &'static str)> {
    let good = pomerium_claims("dr.jones@trust.nhs.uk");
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        c
    };
    let stranger = EcSigningKey::generate().unwrap();
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("ec-1".into());
    let bad_signature = encode(&h, &good, stranger.encoding_key()).unwrap();
    let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"ec-1","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(good.to_string());
    let public_pem = pkb_edge::core::rsa_keys::public_pem(&signers().rsa_pem).unwrap();
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("rsa-1".into());
    let confused = encode(&h, &good, &EncodingKey::from_secret(public_pem.as_bytes())).unwrap();
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("attacker".into());
    h.jku = Some(keys.url("/attacker/jwks"));
    let jku = encode(&h, &good, stranger.encoding_key()).unwrap();
    let padded = {
        let t = es256("ec-1", &good);
        let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
        for p in &mut parts {
            let pad = (4 - p.len() % 4) % 4;
            p.push_str(&"=".repeat(pad));
        }
        assert!(parts.iter().any(|p| p.ends_with('=')));
        parts.join(".")
    };
    let huge = es256(
        "ec-1",
        &edit(&|c| c["padding"] = json!("x".repeat(20 * 1024))),
    );
    vec![
        (
            "expired",
            es256("ec-1", &edit(&|c| c["exp"] = json!(now() - 120))),
            "expired",
        ),
        (
            "not yet valid",
            es256("ec-1", &edit(&|c| c["nbf"] = json!(now() + 600))),
            "not_yet_valid",
        ),
        (
            "iat in the future",
            es256("ec-1", &edit(&|c| c["iat"] = json!(now() + 600))),
            "not_yet_valid",
        ),
        (
            "wrong iss",
            es256("ec-1", &edit(&|c| c["iss"] = json!("evil.example"))),
            "wrong_issuer",
        ),
        (
            "wrong aud",
            es256(
                "ec-1",
                &edit(&|c| c["aud"] = json!("billing.example.nhs.uk")),
            ),
            "wrong_audience",
        ),
        ("bad signature", bad_signature, "bad_signature"),
        ("unknown kid", es256("ec-9", &good), "unknown_key"),
        (
            "alg none",
            format!("{none_header}.{payload}."),
            "bad_signature",
        ),
        (
            "HS256 with the RSA public key as secret",
            confused,
            "bad_signature",
        ),
        ("jku to the test's key server", jku, "unknown_key"),
        (
            "no user claim",
            es256(
                "ec-1",
                &edit(&|c| {
                    c.as_object_mut().unwrap().remove("email");
                }),
            ),
            "no_user",
        ),
        ("malformed", "not-a-jwt".to_string(), "malformed"),
        ("padded segments (not aws_alb)", padded, "malformed"),
        ("20 KiB", huge, "malformed"),
    ]
}

#[test]
fn refused_tokens_are_nobody_each_counted_and_never_shown() {
    let keys = KeyServer::start();
    let w = start(pomerium_identity(
        &keys,
        "algorithms = [\"ES256\", \"RS256\"]",
    ));
    rt().block_on(async {
        let before = metrics_text(&w).await;
        for outcome in [
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
        ] {
            assert_eq!(
                identity_count(&before, outcome),
                Some(0),
                "{outcome} exported at 0"
            );
        }
        let cases = refused_tokens(&keys);
        for (name, token, outcome) in &cases {
            let was = outcome_count(&w, outcome).await;
            assert_eq!(user_upstream(&w, POMERIUM, token).await, None, "{name}");
            let r = get_with(&w, "/_pkb/launch", &[(POMERIUM, token)]).await;
            assert_eq!(r.status(), 401, "{name}: launch");
            assert_eq!(
                outcome_count(&w, outcome).await,
                was + 2,
                "{name}: counted as {outcome}"
            );
        }
        assert_eq!(keys.hits("/attacker/jwks"), 0, "jku is never followed");

        // Two identity headers, even both valid: refused.
        let token = es256("ec-1", &pomerium_claims("dr.jones@trust.nhs.uk"));
        let was = outcome_count(&w, "malformed").await;
        let r = get_with(&w, "/ward", &[(POMERIUM, &token), (POMERIUM, &token)]).await;
        let (_, headers) = upstream_saw(r).await;
        assert!(seen(&headers, USER_HEADER).is_empty());
        assert_eq!(outcome_count(&w, "malformed").await, was + 1, "two headers");
        // No token at all.
        let was = outcome_count(&w, "missing").await;
        let r = get_with(&w, "/ward", &[(USER_HEADER, "mallory")]).await;
        let (_, headers) = upstream_saw(r).await;
        assert!(
            seen(&headers, USER_HEADER).is_empty(),
            "forged user stripped"
        );
        assert_eq!(outcome_count(&w, "missing").await, was + 1);
        assert_eq!(
            user_upstream(&w, POMERIUM, &token).await.as_deref(),
            Some("dr.jones@trust.nhs.uk")
        );

        // No token, nor any part of one that could be replayed, in the output, audit or metrics.
        let metrics = metrics_text(&w).await;
        let output = w.proxy.output();
        let info_about_identity: Vec<&str> = output
            .lines()
            .filter(|l| l.contains("INFO") && l.contains("pkb_edge::identity"))
            .filter(|l| !l.contains("identity key"))
            .collect();
        assert!(
            info_about_identity.is_empty(),
            "nothing at info per request: {info_about_identity:?}"
        );
        assert!(
            output.contains("no identity from the assertion"),
            "debug lines say why"
        );
        for (name, token, _) in cases.iter().chain([&("valid", token.clone(), "valid")]) {
            for part in token.split('.').filter(|p| p.len() > 16) {
                assert!(!output.contains(part), "{name}: token in the output");
                assert!(!metrics.contains(part), "{name}: token in /metrics");
            }
        }
        let audit = w.proxy.audit_lines();
        assert!(!audit.is_empty(), "the launches were audited");
        assert!(!format!("{audit:?}").contains(&token[..40]));
    });
}

// ---------------------------------------------------------------------------------------------
// Keys: rotation, a source down, a cold start.

#[test]
fn a_new_kid_is_fetched_once() {
    let keys = KeyServer::start();
    let w = start(pomerium_identity(&keys, ""));
    let jwks = "/.well-known/pomerium/jwks.json";
    rt().block_on(async {
        wait_ready(&w, 200).await;
        assert_eq!(keys.hits(jwks), 1);
        // The provider rotates: a new key appears, and tokens name it.
        let next = EcSigningKey::generate().unwrap();
        keys.publish(next.public_jwk("ec-2"));
        let signed_by_next = |email: &str| {
            let mut h = Header::new(Algorithm::ES256);
            h.kid = Some("ec-2".into());
            encode(&h, &pomerium_claims(email), next.encoding_key()).unwrap()
        };
        let rotated = signed_by_next("dr.jones@trust.nhs.uk");
        // Within 10 s of the last fetch, an unknown kid does not fetch again.
        assert_eq!(user_upstream(&w, POMERIUM, &rotated).await, None);
        assert_eq!(keys.hits(jwks), 1, "no refetch within 10 s");
        assert_eq!(outcome_count(&w, "unknown_key").await, 1);
        tokio::time::sleep(Duration::from_millis(10_200)).await;
        assert_eq!(
            user_upstream(&w, POMERIUM, &rotated).await.as_deref(),
            Some("dr.jones@trust.nhs.uk")
        );
        let other = signed_by_next("nurse.patel@trust.nhs.uk");
        assert!(user_upstream(&w, POMERIUM, &other).await.is_some());
        let old_key = es256("ec-1", &pomerium_claims("dr.khan@trust.nhs.uk"));
        assert!(user_upstream(&w, POMERIUM, &old_key).await.is_some());
        assert_eq!(keys.hits(jwks), 2, "the new kid fetched the keys once");
        let unknown = es256("ec-3", &pomerium_claims("dr.jones@trust.nhs.uk"));
        assert_eq!(user_upstream(&w, POMERIUM, &unknown).await, None);
        assert_eq!(keys.hits(jwks), 2, "another unknown kid waits its 10 s");
    });
}

#[test]
fn with_the_key_server_down_the_cached_keys_stay_in_use() {
    let keys = KeyServer::start();
    let w = start(pomerium_identity(&keys, "jwks_refresh_secs = 10"));
    let jwks = "/.well-known/pomerium/jwks.json";
    rt().block_on(async {
        wait_ready(&w, 200).await;
        let token = es256("ec-1", &pomerium_claims("dr.jones@trust.nhs.uk"));
        assert!(user_upstream(&w, POMERIUM, &token).await.is_some());
        keys.set_down(true);
        // The keys go stale and the refresh fails; new tokens are still verified.
        tokio::time::sleep(Duration::from_millis(11_000)).await;
        assert!(keys.hits(jwks) >= 2, "the refresh tried the key server");
        for email in ["dr.khan@trust.nhs.uk", "nurse.patel@trust.nhs.uk"] {
            let fresh = es256("ec-1", &pomerium_claims(email));
            assert_eq!(
                user_upstream(&w, POMERIUM, &fresh).await.as_deref(),
                Some(email)
            );
            let rsa = rs256("rsa-1", &pomerium_claims(email));
            assert_eq!(
                user_upstream(&w, POMERIUM, &rsa).await,
                None,
                "pomerium is ES256 only"
            );
        }
        wait_ready(&w, 200).await;
    });
}

#[test]
fn at_a_cold_start_with_the_key_server_down_it_is_not_ready_until_keys_load() {
    let keys = KeyServer::start();
    keys.set_down(true);
    let w = start(pomerium_identity(&keys, ""));
    rt().block_on(async {
        // Start-up did not wait for the keys: the proxy serves, anonymously.
        let token = es256("ec-1", &pomerium_claims("dr.jones@trust.nhs.uk"));
        assert_eq!(user_upstream(&w, POMERIUM, &token).await, None);
        let r = ops_get(&w, "/readyz").await;
        assert_eq!(r.status(), 503);
        assert!(r.text().await.unwrap().contains("keys"));
        keys.set_down(false);
        wait_ready(&w, 200).await;
        let token = es256("ec-1", &pomerium_claims("dr.jones@trust.nhs.uk"));
        assert_eq!(
            user_upstream(&w, POMERIUM, &token).await.as_deref(),
            Some("dr.jones@trust.nhs.uk")
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Combined rules.

#[test]
fn with_trusted_peers_both_the_peer_and_the_token_are_required() {
    let keys = KeyServer::start();
    let w = start(pomerium_identity(
        &keys,
        "trusted_peers = [\"127.0.0.2/32\"]",
    ));
    rt().block_on(async {
        wait_ready(&w, 200).await;
        let token = es256("ec-1", &pomerium_claims("dr.jones@trust.nhs.uk"));
        // A valid token from an untrusted peer: nobody.
        assert_eq!(user_upstream(&w, POMERIUM, &token).await, None);
        assert_eq!(outcome_count(&w, "untrusted_peer").await, 1);
        // The trusted peer with the token: the user.
        let r = client_from("127.0.0.2")
            .get(w.proxy.url("/ward"))
            .header(POMERIUM, &token)
            .send()
            .await
            .unwrap();
        let (_, headers) = upstream_saw(r).await;
        assert_eq!(seen(&headers, USER_HEADER), ["dr.jones@trust.nhs.uk"]);
        // The trusted peer without one: nobody.
        let r = client_from("127.0.0.2")
            .get(w.proxy.url("/ward"))
            .header(USER_HEADER, "dr.jones@trust.nhs.uk")
            .send()
            .await
            .unwrap();
        let (_, headers) = upstream_saw(r).await;
        assert!(seen(&headers, USER_HEADER).is_empty());
        assert_eq!(outcome_count(&w, "missing").await, 1);
    });
}
