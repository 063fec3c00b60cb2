//! The RSA keys of NHS login relying parties: checking the configured one, making new ones
//! (`pkb-edge keygen --nhs-login`, the simulator, the demo), and publishing public halves as JWKs.
//! Signing and verifying are jsonwebtoken's (ring); this module only handles key material.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;

/// NHS login requires 2048-bit RSA keys (or larger).
pub const MIN_BITS: usize = 2048;

fn parse(pem: &str) -> Result<RsaPrivateKey, String> {
    RsaPrivateKey::from_pkcs8_pem(pem)
        .or_else(|_| RsaPrivateKey::from_pkcs1_pem(pem))
        .map_err(|_| {
            "is not an RSA private key in PEM (PKCS#8 `BEGIN PRIVATE KEY` or PKCS#1 `BEGIN RSA PRIVATE KEY`); make one with `pkb-edge keygen --nhs-login`".to_string()
        })
}

/// Whether `pem` is an RSA private key NHS login accepts and jsonwebtoken can sign with.
pub fn check_private_key(pem: &str) -> Result<(), String> {
    let key = parse(pem)?;
    let bits = key.size() * 8;
    if bits < MIN_BITS {
        return Err(format!(
            "is a {bits}-bit RSA key; NHS login needs at least {MIN_BITS} bits"
        ));
    }
    jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes())
        .map(|_| ())
        .map_err(|e| format!("cannot be used for signing: {e}"))
}

/// A new 2048-bit RSA private key, PKCS#8 PEM.
pub fn generate_private_key() -> Result<String, String> {
    let key = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, MIN_BITS)
        .map_err(|e| format!("cannot generate an RSA key: {e}"))?;
    key.to_pkcs8_pem(LineEnding::LF)
        .map(|pem| pem.to_string())
        .map_err(|e| format!("cannot encode the key: {e}"))
}

/// The public half of a private key, as the SubjectPublicKeyInfo PEM NHS login asks RPs for.
pub fn public_pem(private_pem: &str) -> Result<String, String> {
    parse(private_pem)?
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| e.to_string())
}

/// The public half as a JWK (`kty` RSA, `alg` RS512, `use` sig).
pub fn public_jwk(private_pem: &str, kid: &str) -> Result<serde_json::Value, String> {
    let key = parse(private_pem)?;
    Ok(serde_json::json!({
        "kty": "RSA",
        "alg": "RS512",
        "use": "sig",
        "kid": kid,
        "n": B64URL.encode(key.n().to_bytes_be()),
        "e": B64URL.encode(key.e().to_bytes_be()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_pass_the_check_and_publish_as_jwk() {
        let pem = generate_private_key().unwrap();
        assert_eq!(check_private_key(&pem), Ok(()));
        let jwk = public_jwk(&pem, "k").unwrap();
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk).unwrap();
        assert!(jsonwebtoken::DecodingKey::from_jwk(&jwk).is_ok());
        assert!(public_pem(&pem)
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----"));
    }

    #[test]
    fn small_or_foreign_keys_are_refused_with_a_reason() {
        let small = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024)
            .unwrap()
            .to_pkcs8_pem(LineEnding::LF)
            .unwrap();
        let e = check_private_key(&small).unwrap_err();
        assert!(e.contains("1024-bit"), "{e}");
        let e = check_private_key("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
            .unwrap_err();
        assert!(e.contains("not an RSA private key"), "{e}");
    }
}
