//! jwt mode's decision table, one row per way a token can be wrong.

use std::sync::OnceLock;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::*;
use crate::config::{JwtKeySource, JwtSettings};
use crate::core::ec_keys::EcSigningKey;
use crate::core::public_keys::KeySet;

const NOW: i64 = 1_800_000_000;

struct Keys {
    ec: EcSigningKey,
    rsa_pem: String,
    set: KeySet,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let ec = EcSigningKey::generate().unwrap();
        let rsa_pem = crate::core::rsa_keys::generate_private_key().unwrap();
        let mut rsa_jwk = crate::core::rsa_keys::public_jwk(&rsa_pem, "rsa").unwrap();
        rsa_jwk["alg"] = json!("RS256");
        let jwks = json!({ "keys": [ec.public_jwk("ec"), rsa_jwk] });
        let set = KeySet::from_jwks(&jwks.to_string()).unwrap();
        Keys { ec, rsa_pem, set }
    })
}

fn settings() -> JwtSettings {
    JwtSettings {
        preset: None,
        header: http::HeaderName::from_static("x-pomerium-jwt-assertion"),
        keys: JwtKeySource::JwksUrl("https://idp.example/jwks.json".parse().unwrap()),
        issuer: "idp.example".into(),
        audience: vec!["ehr.example".into()],
        signer: None,
        algorithms: vec![Algorithm::ES256, Algorithm::RS256],
        user_claim: vec!["email".into()],
        clock_skew_secs: 30,
        forward_header: http::HeaderName::from_static("x-authenticated-user"),
        trusted_peers: vec![],
        jwks_refresh: Duration::from_secs(300),
        padded_segments: false,
    }
}

fn claims() -> Value {
    json!({
        "iss": "idp.example",
        "aud": ["other.example", "ehr.example"],
        "exp": NOW + 300,
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "email": "dr.jones@example.nhs.uk",
    })
}

fn es256(kid: &str, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(kid.into());
    encode(&h, claims, keys().ec.encoding_key()).unwrap()
}

/// A change to a good token's claims.
type Edit = Box<dyn FnOnce(&mut Value)>;

fn judge_token(token: &str, s: &JwtSettings) -> Result<(String, i64), Outcome> {
    let unverified = split(token, s)?;
    let claims = unverified.verify(&keys().set, s.padded_segments)?;
    judge(&claims, unverified.signer.as_deref(), s, NOW)
}

/// A token with `claims` changed by `edit`, signed ES256 with the known key.
fn with(edit: impl FnOnce(&mut Value)) -> String {
    let mut c = claims();
    edit(&mut c);
    es256("ec", &c)
}

fn raw(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        B64URL.encode(header.to_string()),
        B64URL.encode(claims.to_string())
    )
}

#[test]
fn a_good_token_names_its_user_until_exp() {
    let s = settings();
    assert_eq!(
        judge_token(&with(|_| {}), &s),
        Ok(("dr.jones@example.nhs.uk".into(), NOW + 300))
    );
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("rsa".into());
    let rsa = EncodingKey::from_rsa_pem(keys().rsa_pem.as_bytes()).unwrap();
    let token = encode(&h, &claims(), &rsa).unwrap();
    assert!(judge_token(&token, &s).is_ok(), "RS256 with the RSA key");
}

#[test]
fn times_are_checked_with_the_skew() {
    let s = settings();
    let cases: Vec<(&str, Edit, Result<(), Outcome>)> = vec![
        (
            "expired",
            Box::new(|c| c["exp"] = json!(NOW - 31)),
            Err(Outcome::Expired),
        ),
        (
            "exp within skew",
            Box::new(|c| c["exp"] = json!(NOW - 29)),
            Ok(()),
        ),
        (
            "no exp",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            Err(Outcome::Malformed),
        ),
        (
            "exp a string",
            Box::new(|c| c["exp"] = json!("soon")),
            Err(Outcome::Malformed),
        ),
        (
            "nbf ahead",
            Box::new(|c| c["nbf"] = json!(NOW + 31)),
            Err(Outcome::NotYetValid),
        ),
        (
            "nbf within skew",
            Box::new(|c| c["nbf"] = json!(NOW + 29)),
            Ok(()),
        ),
        (
            "iat ahead",
            Box::new(|c| c["iat"] = json!(NOW + 120)),
            Err(Outcome::NotYetValid),
        ),
        (
            "no nbf, no iat",
            Box::new(|c| {
                let o = c.as_object_mut().unwrap();
                o.remove("nbf");
                o.remove("iat");
            }),
            Ok(()),
        ),
        (
            "fractional exp",
            Box::new(|c| c["exp"] = json!(NOW as f64 + 100.5)),
            Ok(()),
        ),
    ];
    for (name, edit, want) in cases {
        let got = judge_token(&with(edit), &s).map(|_| ());
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn issuer_audience_signer_and_user_are_checked() {
    let s = settings();
    let cases: Vec<(&str, Edit, Outcome)> = vec![
        (
            "wrong iss",
            Box::new(|c| c["iss"] = json!("evil.example")),
            Outcome::WrongIssuer,
        ),
        (
            "no iss",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("iss");
            }),
            Outcome::WrongIssuer,
        ),
        (
            "wrong aud",
            Box::new(|c| c["aud"] = json!("other.example")),
            Outcome::WrongAudience,
        ),
        (
            "no aud",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
            Outcome::WrongAudience,
        ),
        (
            "aud a number",
            Box::new(|c| c["aud"] = json!(7)),
            Outcome::WrongAudience,
        ),
        (
            "no user",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("email");
            }),
            Outcome::NoUser,
        ),
        (
            "empty user",
            Box::new(|c| c["email"] = json!("  ")),
            Outcome::NoUser,
        ),
        (
            "user a number",
            Box::new(|c| c["email"] = json!(42)),
            Outcome::NoUser,
        ),
        (
            "user with a newline",
            Box::new(|c| c["email"] = json!("a\nb")),
            Outcome::NoUser,
        ),
    ];
    for (name, edit, want) in cases {
        assert_eq!(judge_token(&with(edit), &s), Err(want), "{name}");
    }
    assert_eq!(
        judge_token(&with(|c| c["aud"] = json!("ehr.example")), &s).map(|_| ()),
        Ok(()),
        "a single aud string"
    );

    let mut alb = settings();
    alb.audience = vec![];
    alb.signer = Some("arn:aws:elasticloadbalancing:eu-west-2:1:loadbalancer/app/ehr/1".into());
    let signed_by = |arn: &str| with(|c| c["signer"] = json!(arn));
    assert!(judge_token(&signed_by(alb.signer.as_deref().unwrap()), &alb).is_ok());
    assert_eq!(
        judge_token(
            &signed_by("arn:aws:elasticloadbalancing:eu-west-2:1:loadbalancer/app/other/2"),
            &alb
        ),
        Err(Outcome::WrongAudience)
    );

    // Where the ALB puts it: in the (signed) header.
    let arn = alb.signer.clone().unwrap();
    let header = json!({"alg": "ES256", "kid": "ec", "signer": arn});
    let input = format!(
        "{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(claims().to_string())
    );
    let sig =
        jsonwebtoken::crypto::sign(input.as_bytes(), keys().ec.encoding_key(), Algorithm::ES256)
            .unwrap();
    assert!(judge_token(&format!("{input}.{sig}"), &alb).is_ok());

    let mut nested = settings();
    nested.user_claim = vec!["user".into(), "id".into()];
    let token = with(|c| c["user"] = json!({ "id": "u-17" }));
    assert_eq!(judge_token(&token, &nested).unwrap().0, "u-17");
}

#[test]
fn signatures_and_algorithms_are_refused_when_they_cannot_vouch() {
    let s = settings();
    let good = with(|_| {});
    let (head, rest) = good.split_once('.').unwrap();
    let (payload, sig) = rest.split_once('.').unwrap();
    // A claim changed after signing.
    let forged_claims = B64URL.encode(
        json!({"iss": "idp.example", "aud": "ehr.example", "exp": NOW + 300, "email": "admin@x"})
            .to_string(),
    );
    assert_eq!(
        judge_token(&format!("{head}.{forged_claims}.{sig}"), &s),
        Err(Outcome::BadSignature)
    );
    // Signed by a key nobody published, under a published kid.
    let stranger = EcSigningKey::generate().unwrap();
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("ec".into());
    let t = encode(&h, &claims(), stranger.encoding_key()).unwrap();
    assert_eq!(judge_token(&t, &s), Err(Outcome::BadSignature));
    // An unknown kid, and none at all.
    assert_eq!(
        judge_token(&es256("rotated", &claims()), &s),
        Err(Outcome::UnknownKey)
    );
    let t = encode(
        &Header::new(Algorithm::ES256),
        &claims(),
        keys().ec.encoding_key(),
    )
    .unwrap();
    assert_eq!(judge_token(&t, &s), Err(Outcome::UnknownKey));
    // alg none, with or without a signature.
    let none = json!({"alg": "none", "kid": "ec"});
    assert_eq!(
        judge_token(&raw(&none, &claims(), ""), &s),
        Err(Outcome::BadSignature)
    );
    assert_eq!(
        judge_token(&raw(&none, &claims(), sig), &s),
        Err(Outcome::BadSignature)
    );
    // HS256 with the RSA public key (its PEM) as the shared secret: the classic confusion.
    let public_pem = crate::core::rsa_keys::public_pem(&keys().rsa_pem).unwrap();
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("rsa".into());
    let t = encode(
        &h,
        &claims(),
        &EncodingKey::from_secret(public_pem.as_bytes()),
    )
    .unwrap();
    assert_eq!(judge_token(&t, &s), Err(Outcome::BadSignature));
    // ES256 is allowed, but the kid names the RSA key.
    assert_eq!(
        judge_token(&es256("rsa", &claims()), &s),
        Err(Outcome::BadSignature)
    );
    // RS256 is not allowed here.
    let mut only_es = settings();
    only_es.algorithms = vec![Algorithm::ES256];
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("rsa".into());
    let rsa = EncodingKey::from_rsa_pem(keys().rsa_pem.as_bytes()).unwrap();
    assert_eq!(
        judge_token(&encode(&h, &claims(), &rsa).unwrap(), &only_es),
        Err(Outcome::BadSignature)
    );
    // The payload stays as sent.
    assert_eq!(payload, good.split('.').nth(1).unwrap());
}

#[test]
fn malformed_tokens_are_refused_before_any_key_is_used() {
    let s = settings();
    let good = with(|_| {});
    let long = format!("{good}{}", "A".repeat(MAX_TOKEN_BYTES));
    let jku =
        json!({"alg": "ES256", "kid": "ec", "jku": "http://127.0.0.1:1/jwks", "crit": ["jku"]});
    for (name, token) in [
        ("empty", String::new()),
        ("two segments", good.rsplit_once('.').unwrap().0.to_string()),
        ("four segments", format!("{good}.x")),
        ("not base64", "%%%.%%%.%%%".to_string()),
        (
            "header not JSON",
            format!("{}.e30.c2ln", B64URL.encode("nope")),
        ),
        (
            "header not an object",
            format!("{}.e30.c2ln", B64URL.encode("[1]")),
        ),
        ("no alg", raw(&json!({"kid": "ec"}), &claims(), "c2ln")),
        ("crit", raw(&jku, &claims(), "c2ln")),
        (
            "kid a number",
            raw(&json!({"alg": "ES256", "kid": 1}), &claims(), "c2ln"),
        ),
        ("too long", long),
    ] {
        assert_eq!(
            split(&token, &s).map(|_| ()),
            Err(Outcome::Malformed),
            "{name}"
        );
    }
}

#[test]
fn padded_segments_are_accepted_for_aws_alb_only() {
    let good = with(|_| {});
    let padded: Vec<String> = good
        .split('.')
        .map(|seg| {
            let pad = (4 - seg.len() % 4) % 4;
            format!("{seg}{}", "=".repeat(pad))
        })
        .collect();
    assert!(
        padded.iter().any(|s| s.ends_with('=')),
        "the test pads something"
    );
    // Signed over the padded text, as the ALB does.
    let signing_input = format!("{}.{}", padded[0], padded[1]);
    let sig = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        keys().ec.encoding_key(),
        Algorithm::ES256,
    )
    .unwrap();
    let token = format!("{signing_input}.{sig}==");
    let mut alb = settings();
    alb.padded_segments = true;
    assert!(judge_token(&token, &alb).is_ok());
    assert_eq!(judge_token(&token, &settings()), Err(Outcome::Malformed));
    let over_padded = format!("{}===.{}.{sig}", padded[0].trim_end_matches('='), padded[1]);
    assert_eq!(judge_token(&over_padded, &alb), Err(Outcome::Malformed));
}
