//! A JWT taken apart and judged, as pure functions: the decision table of jwt mode.
//!
//! The threat model: whoever reaches pkb-edge may send any bytes as the assertion. So the token
//! is split strictly (three base64url segments; `=` padding only where AWS ALB needs it), its
//! header names only the algorithm and the key id pkb-edge will look at (`jku`, `x5u`, `jwk` and
//! `x5c` are never read, let alone followed; `crit` is refused), the algorithm must be one the
//! configuration allows and match the key's type, and no claim is read before the signature
//! holds.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::Value;

use crate::config::JwtSettings;
use crate::core::public_keys::{KeySet, KeyType};

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Longest user id accepted, in bytes (as in header mode).
const MAX_USER_ID_LEN: usize = 256;

/// What jwt mode made of a request: `valid`, or why there is no identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Valid,
    Missing,
    Malformed,
    BadSignature,
    UnknownKey,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    NoUser,
    UntrustedPeer,
}

impl Outcome {
    pub const ALL: [Outcome; 11] = [
        Outcome::Valid,
        Outcome::Missing,
        Outcome::Malformed,
        Outcome::BadSignature,
        Outcome::UnknownKey,
        Outcome::Expired,
        Outcome::NotYetValid,
        Outcome::WrongIssuer,
        Outcome::WrongAudience,
        Outcome::NoUser,
        Outcome::UntrustedPeer,
    ];

    /// The `outcome` label of `pkb_edge_identity_total`.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Valid => "valid",
            Outcome::Missing => "missing",
            Outcome::Malformed => "malformed",
            Outcome::BadSignature => "bad_signature",
            Outcome::UnknownKey => "unknown_key",
            Outcome::Expired => "expired",
            Outcome::NotYetValid => "not_yet_valid",
            Outcome::WrongIssuer => "wrong_issuer",
            Outcome::WrongAudience => "wrong_audience",
            Outcome::NoUser => "no_user",
            Outcome::UntrustedPeer => "untrusted_peer",
        }
    }
}

/// A token split and its header read; nothing in it is believed yet.
#[derive(Debug)]
pub struct Unverified<'t> {
    pub alg: Algorithm,
    pub kid: Option<String>,
    /// The header's `signer` (AWS ALB puts its ARN there, under the signature).
    pub signer: Option<String>,
    /// `header.payload` exactly as sent: what the signature covers.
    signing_input: &'t str,
    payload: &'t str,
    /// The signature segment, padding removed.
    signature: &'t str,
}

/// A base64url segment: the URL-safe alphabet, and `=` padding only when `padded` (AWS ALB).
fn decode_segment(segment: &str, padded: bool) -> Result<Vec<u8>, Outcome> {
    let bare = if padded {
        let bare = segment.trim_end_matches('=');
        if segment.len() - bare.len() > 2 {
            return Err(Outcome::Malformed);
        }
        bare
    } else {
        segment
    };
    URL_SAFE_NO_PAD.decode(bare).map_err(|_| Outcome::Malformed)
}

/// Splits `token` and reads its header. An algorithm that is `none`, unknown, HMAC or not in
/// `algorithms` is a bad signature: no key pkb-edge holds can vouch for it.
pub fn split<'t>(token: &'t str, settings: &JwtSettings) -> Result<Unverified<'t>, Outcome> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Outcome::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Outcome::Malformed);
    };
    if header.is_empty() || payload.is_empty() {
        return Err(Outcome::Malformed);
    }
    let padded = settings.padded_segments;
    let header_json: Value =
        serde_json::from_slice(&decode_segment(header, padded)?).map_err(|_| Outcome::Malformed)?;
    let Value::Object(header_json) = header_json else {
        return Err(Outcome::Malformed);
    };
    if header_json.contains_key("crit") {
        return Err(Outcome::Malformed);
    }
    let alg = match header_json.get("alg") {
        Some(Value::String(a)) => a.parse::<Algorithm>().map_err(|_| Outcome::BadSignature)?,
        _ => return Err(Outcome::Malformed),
    };
    if !settings.algorithms.contains(&alg) || KeyType::for_algorithm(alg).is_none() {
        return Err(Outcome::BadSignature);
    }
    let kid = match header_json.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(Outcome::Malformed),
    };
    let signer = header_json
        .get("signer")
        .and_then(Value::as_str)
        .map(str::to_string);
    let signature = if padded {
        signature.trim_end_matches('=')
    } else {
        signature
    };
    if signature.is_empty() {
        return Err(Outcome::BadSignature);
    }
    Ok(Unverified {
        alg,
        kid,
        signer,
        signing_input: &token[..header.len() + 1 + payload.len()],
        payload,
        signature,
    })
}

impl Unverified<'_> {
    /// Checks the signature with the keys the token may name, then returns its claims. No key
    /// for its `kid`: unknown key; keys of another type, or none that verifies: bad signature.
    pub fn verify(&self, keys: &KeySet, padded: bool) -> Result<Value, Outcome> {
        let mut candidates = keys.candidates(self.kid.as_deref()).peekable();
        if candidates.peek().is_none() {
            return Err(Outcome::UnknownKey);
        }
        let message = self.signing_input.as_bytes();
        let verified = candidates.filter(|k| k.verifies(self.alg)).any(|k| {
            jsonwebtoken::crypto::verify(self.signature, message, &k.key, self.alg).unwrap_or(false)
        });
        if !verified {
            return Err(Outcome::BadSignature);
        }
        let claims: Value = serde_json::from_slice(&decode_segment(self.payload, padded)?)
            .map_err(|_| Outcome::Malformed)?;
        if !claims.is_object() {
            return Err(Outcome::Malformed);
        }
        Ok(claims)
    }
}

/// A time claim: absent, a number of seconds (fractions dropped), or malformed.
fn time_claim(claims: &Value, name: &str) -> Result<Option<i64>, Outcome> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or(Outcome::Malformed),
    }
}

/// The user a verified token names, and until when (its `exp`), or why it names nobody.
/// `header_signer` is the verified header's `signer`, where AWS ALB names itself.
pub fn judge(
    claims: &Value,
    header_signer: Option<&str>,
    settings: &JwtSettings,
    now: i64,
) -> Result<(String, i64), Outcome> {
    let skew = settings.clock_skew_secs;
    let exp = time_claim(claims, "exp")?.ok_or(Outcome::Malformed)?;
    if now >= exp.saturating_add(skew) {
        return Err(Outcome::Expired);
    }
    for name in ["nbf", "iat"] {
        if time_claim(claims, name)?.is_some_and(|t| t > now.saturating_add(skew)) {
            return Err(Outcome::NotYetValid);
        }
    }
    if claims.get("iss").and_then(Value::as_str) != Some(settings.issuer.as_str()) {
        return Err(Outcome::WrongIssuer);
    }
    if !settings.audience.is_empty() {
        let wanted = |a: &Value| {
            a.as_str()
                .is_some_and(|a| settings.audience.iter().any(|w| w == a))
        };
        let ok = match claims.get("aud") {
            Some(Value::Array(auds)) => auds.iter().any(wanted),
            Some(aud) => wanted(aud),
            None => false,
        };
        if !ok {
            return Err(Outcome::WrongAudience);
        }
    }
    if let Some(signer) = &settings.signer {
        let named = header_signer.or_else(|| claims.get("signer").and_then(Value::as_str));
        if named != Some(signer.as_str()) {
            return Err(Outcome::WrongAudience);
        }
    }
    let user = settings
        .user_claim
        .iter()
        .try_fold(claims, |v, segment| v.get(segment))
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|u| !u.is_empty() && u.len() <= MAX_USER_ID_LEN && !u.chars().any(char::is_control))
        .ok_or(Outcome::NoUser)?;
    Ok((user.to_string(), exp))
}

#[cfg(test)]
mod tests;
