//! AES-256-GCM sealing of tokens at rest, with named keys so they can rotate.
//!
//! Key lines are `KEY_ID:BASE64_32_BYTES`, one per line or separated by commas. The first key
//! seals; every key opens. A sealed value is `nonce (12 bytes) || ciphertext+tag`; the row
//! carries the key id. The associated data binds a value to its user and field, so a ciphertext
//! copied into another user's row does not open.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::RngCore;

const NONCE_LEN: usize = 12;

pub use crate::config::{parse_keys, KeyError, StoreKey};
pub use crate::core::hash::hmac_sha256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("key `{0}` is not configured")]
    UnknownKey(String),
    #[error("a value sealed with key `{0}` does not open: wrong key, or the value was altered")]
    Corrupt(String),
}

/// The configured keys. `Debug` shows ids only.
pub struct Keyring {
    keys: Vec<(String, Aes256Gcm)>,
    /// A key for other purposes (the audit log's patient hash), derived from the first key so
    /// that it is never the sealing key itself.
    derived: [u8; 32],
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").field("ids", &self.ids()).finish()
    }
}

impl Keyring {
    /// The keyring for the configured keys (at least one; the first seals).
    pub fn new(keys: &[StoreKey]) -> Result<Keyring, KeyError> {
        let first = keys.first().ok_or(KeyError::Empty)?;
        let derived = hmac_sha256(first.material(), b"pkb-edge derived key v1");
        let keys = keys
            .iter()
            .map(|k| {
                Aes256Gcm::new_from_slice(k.material())
                    .map(|cipher| (k.id.clone(), cipher))
                    .map_err(|_| KeyError::BadMaterial(k.id.clone()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Keyring { keys, derived })
    }

    /// Key lines (`KEY_ID:BASE64_32_BYTES`), parsed and made into a keyring.
    pub fn parse(text: &str) -> Result<Keyring, KeyError> {
        Keyring::new(&parse_keys(text)?)
    }

    /// A new random key line, as `pkb-edge keygen` prints it.
    pub fn generate_line(id: &str) -> String {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        format!("{id}:{}", B64.encode(bytes))
    }

    /// A 32-byte key derived from the first key, for keyed hashes that must not be reversible
    /// by anyone without the keys.
    pub fn derived_key(&self) -> [u8; 32] {
        self.derived
    }

    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|(id, _)| id.as_str()).collect()
    }

    /// The id of the key that seals new values.
    pub fn primary_id(&self) -> &str {
        &self.keys[0].0
    }

    pub fn has(&self, id: &str) -> bool {
        self.keys.iter().any(|(k, _)| k == id)
    }

    /// Seals with the primary key.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let (_, cipher) = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let mut out = nonce.to_vec();
        // Encryption with a valid key and a 12-byte nonce cannot fail for inputs of this size.
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .unwrap_or_default();
        out.extend_from_slice(&ct);
        out
    }

    pub fn open(&self, key_id: &str, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        let (_, cipher) = self
            .keys
            .iter()
            .find(|(k, _)| k == key_id)
            .ok_or_else(|| SealError::UnknownKey(key_id.to_string()))?;
        if sealed.len() < NONCE_LEN + 16 {
            return Err(SealError::Corrupt(key_id.to_string()));
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| SealError::Corrupt(key_id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_key_seals_all_keys_open() {
        let old = Keyring::generate_line("old");
        let new = Keyring::generate_line("new");
        let before = Keyring::parse(&old).unwrap();
        let sealed = before.seal(b"token", b"alice|access");
        let after = Keyring::parse(&format!("{new}\n{old}")).unwrap();
        assert_eq!(after.primary_id(), "new");
        assert_eq!(
            after.open("old", &sealed, b"alice|access").unwrap(),
            b"token"
        );
        let resealed = after.seal(b"token", b"alice|access");
        assert_eq!(
            after.open("new", &resealed, b"alice|access").unwrap(),
            b"token"
        );
        assert_eq!(
            before.open("new", &resealed, b"alice|access"),
            Err(SealError::UnknownKey("new".into()))
        );
    }

    #[test]
    fn value_bound_to_its_user_and_field() {
        let ring = Keyring::parse(&Keyring::generate_line("k")).unwrap();
        let sealed = ring.seal(b"token", b"alice|access");
        assert!(ring.open("k", &sealed, b"bob|access").is_err());
        assert!(ring.open("k", &sealed, b"alice|refresh").is_err());
        assert!(!sealed.windows(5).any(|w| w == b"token"));
    }

    #[test]
    fn wrong_key_material_does_not_open() {
        let a = Keyring::parse(&Keyring::generate_line("k")).unwrap();
        let b = Keyring::parse(&Keyring::generate_line("k")).unwrap();
        let sealed = a.seal(b"token", b"x");
        assert_eq!(
            b.open("k", &sealed, b"x"),
            Err(SealError::Corrupt("k".into()))
        );
        assert_eq!(
            b.open("k", &sealed[..10], b"x"),
            Err(SealError::Corrupt("k".into()))
        );
    }

    #[test]
    fn malformed_key_text_is_refused() {
        assert_eq!(Keyring::parse("").unwrap_err(), KeyError::Empty);
        assert_eq!(
            Keyring::parse("nocolon").unwrap_err(),
            KeyError::Malformed(1)
        );
        assert_eq!(
            Keyring::parse("k:c2hvcnQ=").unwrap_err(),
            KeyError::BadMaterial("k".into())
        );
        assert_eq!(
            Keyring::parse("bad id:AAAA").unwrap_err(),
            KeyError::BadId("bad id".into())
        );
        let line = Keyring::generate_line("k");
        assert_eq!(
            Keyring::parse(&format!("{line},{line}")).unwrap_err(),
            KeyError::Duplicate("k".into())
        );
        assert_eq!(
            Keyring::parse(&format!("# comment\n{line}\n"))
                .unwrap()
                .ids(),
            vec!["k"]
        );
    }
}
