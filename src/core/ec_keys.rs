//! P-256 signing keys, made here for those who sign ES256 assertions in pkb-edge's own pieces
//! (the demo's sign-on front, which signs the way Pomerium does; the tests and benchmarks) and
//! published as a JWK or as AWS's PEM. Signing is jsonwebtoken's; this only makes key material.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use jsonwebtoken::EncodingKey;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

/// A P-256 key pair.
pub struct EcSigningKey {
    encoding: EncodingKey,
    /// The public point, uncompressed: `04 || x || y`.
    point: Vec<u8>,
}

impl EcSigningKey {
    pub fn generate() -> Result<EcSigningKey, String> {
        let rng = SystemRandom::new();
        let alg = &ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng)
            .map_err(|_| "cannot generate a P-256 key".to_string())?;
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng)
            .map_err(|_| "cannot read the P-256 key just made".to_string())?;
        Ok(EcSigningKey {
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            point: pair.public_key().as_ref().to_vec(),
        })
    }

    /// The key jsonwebtoken signs ES256 with.
    pub fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }

    /// The public half as a JWK, as Pomerium publishes it.
    pub fn public_jwk(&self, kid: &str) -> serde_json::Value {
        serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "alg": "ES256",
            "use": "sig",
            "kid": kid,
            "x": B64URL.encode(&self.point[1..33]),
            "y": B64URL.encode(&self.point[33..65]),
        })
    }

    /// The public half as a SubjectPublicKeyInfo PEM, as AWS publishes its ALB keys.
    pub fn public_pem(&self) -> String {
        crate::core::public_keys::p256_public_pem(&self.point)
    }
}
