//! Random tokens: OAuth `state`, PKCE verifiers, session and login ids. 256 bits from the
//! operating system's generator, in unpadded base64url.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use rand::RngCore;

/// Length of a state or verifier: 32 random bytes in unpadded base64url.
const TOKEN_CHARS: usize = 43;

/// A new random state or PKCE verifier (RFC 7636 §4.1: 43 characters of the unreserved set).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    B64URL.encode(bytes)
}

/// Whether a presented state could be one of ours; anything else is refused without a look-up.
pub fn state_is_well_formed(state: &str) -> bool {
    state.len() == TOKEN_CHARS
        && state
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_codec() {
        let a = random_token();
        let b = random_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), TOKEN_CHARS);
        assert!(state_is_well_formed(&a));
        for bad in [
            "",
            "short",
            &format!("{a}x"),
            &a.replace(&a[..1], "+"),
            &format!("{}=", &a[..42]),
        ] {
            assert!(!state_is_well_formed(bad), "{bad}");
        }
    }
}
