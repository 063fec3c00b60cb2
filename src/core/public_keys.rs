//! Public keys that check JWT signatures, read from a JWKS document or from PEM `PUBLIC KEY`
//! blocks. Each key keeps its `kid` (a PEM key has none) and its type, so that a token's `alg`
//! can be held against the key it names: an RSA key never checks an HMAC "signature" (the
//! RS256 → HS256 confusion), and a symmetric key is never read at all.
//!
//! Not for: choosing, fetching or caching keys; checking tokens.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// The family of a public key; each verifies only its own algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Rsa,
    Ec,
    Ed,
}

impl KeyType {
    /// The key type that verifies `alg`; none for HMAC, which pkb-edge never accepts.
    pub fn for_algorithm(alg: Algorithm) -> Option<KeyType> {
        use Algorithm::*;
        match alg {
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Some(KeyType::Rsa),
            ES256 | ES384 => Some(KeyType::Ec),
            EdDSA => Some(KeyType::Ed),
            HS256 | HS384 | HS512 => None,
        }
    }
}

/// One verification key.
#[derive(Clone)]
pub struct PublicKey {
    pub kid: Option<String>,
    pub key_type: KeyType,
    /// The JWK's own `alg`, when it names a signature algorithm: the key checks only that one.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

impl PublicKey {
    /// Whether this key may check a signature made with `alg`.
    pub fn verifies(&self, alg: Algorithm) -> bool {
        KeyType::for_algorithm(alg) == Some(self.key_type) && self.alg.is_none_or(|a| a == alg)
    }
}

/// The keys one source publishes.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: Vec<PublicKey>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self
            .keys
            .iter()
            .map(|k| k.kid.as_deref().unwrap_or("(no kid)"))
            .collect();
        write!(f, "KeySet{kids:?}")
    }
}

impl KeySet {
    /// A JWKS document, `JSON` or PEM (`-----BEGIN`), told apart by its first character.
    pub fn from_document(bytes: &[u8]) -> Result<KeySet, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "is not UTF-8 text".to_string())?;
        if text.trim_start().starts_with('{') {
            KeySet::from_jwks(text)
        } else {
            KeySet::from_pem(text)
        }
    }

    /// A JWKS (`{"keys": [...]}`): RSA, EC (P-256, P-384) and Ed25519 signing keys. Symmetric
    /// keys, encryption keys and keys of other types are skipped, not refused, so one new key
    /// type in a provider's set does not stop the others from working.
    pub fn from_jwks(text: &str) -> Result<KeySet, String> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc =
            serde_json::from_str(text).map_err(|e| format!("is not a JWKS document: {e}"))?;
        let keys: Vec<PublicKey> = doc
            .keys
            .into_iter()
            .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
            .filter_map(|jwk| from_jwk(&jwk))
            .collect();
        if keys.is_empty() {
            return Err("holds no RSA, EC (P-256, P-384) or Ed25519 signing key".into());
        }
        Ok(KeySet { keys })
    }

    /// One or more PEM public keys (`BEGIN PUBLIC KEY`, or `BEGIN RSA PUBLIC KEY`).
    pub fn from_pem(text: &str) -> Result<KeySet, String> {
        let mut keys = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("-----BEGIN ") {
            let block = &rest[start..];
            let Some(end_at) = block.find("-----END ") else {
                return Err("has a PEM block without its END line".into());
            };
            let end = block[end_at + 9..]
                .find("-----")
                .map(|i| end_at + 9 + i + 5)
                .ok_or("has a PEM block without its END line")?;
            keys.push(from_pem_block(&block[..end])?);
            rest = &block[end..];
        }
        if keys.is_empty() {
            return Err("holds no PEM public key (-----BEGIN PUBLIC KEY-----)".into());
        }
        Ok(KeySet { keys })
    }

    /// The keys a token naming `kid` may have been signed with: those with that `kid`, and those
    /// without any (PEM keys), which are tried in turn.
    pub fn candidates<'a>(&'a self, kid: Option<&'a str>) -> impl Iterator<Item = &'a PublicKey> {
        self.keys
            .iter()
            .filter(move |k| k.kid.is_none() || k.kid.as_deref() == kid)
    }

    /// Whether some key could be the one a token naming `kid` was signed with.
    pub fn knows(&self, kid: Option<&str>) -> bool {
        self.candidates(kid).next().is_some()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn from_jwk(jwk: &Jwk) -> Option<PublicKey> {
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return None;
    }
    let key_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyType::Rsa,
        AlgorithmParameters::EllipticCurve(p)
            if matches!(p.curve, EllipticCurve::P256 | EllipticCurve::P384) =>
        {
            KeyType::Ec
        }
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => KeyType::Ed,
        _ => return None,
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(a) => Some(signature_algorithm(a)?),
    };
    Some(PublicKey {
        kid: jwk.common.key_id.clone(),
        key_type,
        alg,
        key: DecodingKey::from_jwk(jwk).ok()?,
    })
}

/// A JWK `alg` that names a signature algorithm (never HMAC: a public key set does not hold
/// shared secrets).
fn signature_algorithm(a: KeyAlgorithm) -> Option<Algorithm> {
    use KeyAlgorithm as K;
    Some(match a {
        K::ES256 => Algorithm::ES256,
        K::ES384 => Algorithm::ES384,
        K::RS256 => Algorithm::RS256,
        K::RS384 => Algorithm::RS384,
        K::RS512 => Algorithm::RS512,
        K::PS256 => Algorithm::PS256,
        K::PS384 => Algorithm::PS384,
        K::PS512 => Algorithm::PS512,
        K::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

fn from_pem_block(block: &str) -> Result<PublicKey, String> {
    let bytes = block.as_bytes();
    let (key_type, key) = if let Ok(k) = DecodingKey::from_ec_pem(bytes) {
        (KeyType::Ec, k)
    } else if let Ok(k) = DecodingKey::from_rsa_pem(bytes) {
        (KeyType::Rsa, k)
    } else if let Ok(k) = DecodingKey::from_ed_pem(bytes) {
        (KeyType::Ed, k)
    } else {
        let first = block.lines().next().unwrap_or_default();
        return Err(format!(
            "has a PEM block ({first}) that is not an RSA, EC or Ed25519 public key"
        ));
    };
    Ok(PublicKey {
        kid: None,
        key_type,
        alg: None,
        key,
    })
}

/// The SubjectPublicKeyInfo PEM of an uncompressed P-256 point (`04 || x || y`), as AWS
/// publishes its load balancers' keys.
pub fn p256_public_pem(point: &[u8]) -> String {
    use base64::Engine;
    // SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (65 bytes) }
    const PREFIX: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    let der = [&PREFIX[..], point].concat();
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_has_no_key_type_and_keys_check_only_their_family() {
        assert_eq!(KeyType::for_algorithm(Algorithm::HS256), None);
        assert_eq!(KeyType::for_algorithm(Algorithm::RS256), Some(KeyType::Rsa));
        assert_eq!(KeyType::for_algorithm(Algorithm::ES256), Some(KeyType::Ec));
        let set = KeySet::from_jwks(
            r#"{"keys":[
              {"kty":"oct","k":"c2VjcmV0","kid":"hmac"},
              {"kty":"EC","crv":"P-256","kid":"ec","alg":"ES256",
               "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
               "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
              {"kty":"EC","crv":"P-256","kid":"enc","use":"enc",
               "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
               "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
            ]}"#,
        )
        .unwrap();
        assert_eq!(set.len(), 1, "symmetric and encryption keys are skipped");
        let ec = set.candidates(Some("ec")).next().unwrap();
        assert!(ec.verifies(Algorithm::ES256));
        assert!(!ec.verifies(Algorithm::ES384), "the JWK's own alg binds it");
        assert!(!ec.verifies(Algorithm::HS256));
        assert!(!ec.verifies(Algorithm::RS256));
        assert!(!set.knows(Some("hmac")));
        assert!(!set.knows(None), "a token without kid names no JWKS key");
    }

    #[test]
    fn documents_without_usable_keys_are_refused() {
        assert!(KeySet::from_document(b"{\"keys\":[]}").is_err());
        assert!(KeySet::from_document(b"not a key").is_err());
        assert!(KeySet::from_document(b"-----BEGIN PUBLIC KEY-----\nAAAA\n").is_err());
        let point = [[4u8].as_slice(), &[1u8; 64]].concat();
        // Not a point on the curve, but well-formed DER: parsing the PEM accepts it.
        let pem = p256_public_pem(&point);
        let two = KeySet::from_document(format!("{pem}\n{pem}").as_bytes()).unwrap();
        assert_eq!(two.len(), 2);
        assert!(
            two.knows(Some("any")),
            "PEM keys have no kid: every token may try them"
        );
    }
}
