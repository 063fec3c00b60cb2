//! The validator for caller-chosen landing paths: `redirect_uri` on launch, `return_to` on pairing.
//!
//! Threat model: the value ends up in a `Location` header, either ours (`return_to`) or PKB's
//! (`redirect_uri`, which PKB decodes and follows after login). An attacker who controls it wants
//! the browser to leave the intended host: `//evil`, `/\evil` (browsers treat `\` as `/`),
//! `https:evil`, `javascript:`, a tab or newline that browsers strip (`/\t/evil`), or an escape
//! that a later decoding step turns into one of those (`/%2F%2Fevil`, `%5C`, double encoding).
//!
//! The stand we take: **refuse anything ambiguous; never rewrite.** Being helpful by
//! canonicalising is how this bug class happens. Accepted values are plain ASCII, start with
//! exactly one `/`, have no backslash, no whitespace or control characters, no dot segments, and in
//! the path part no escape for a delimiter, a dot, a control character or `%` itself, so decoding
//! them once more cannot change which host they point at.

use std::fmt;

/// Longest accepted landing path, in bytes.
pub const MAX_LEN: usize = 2048;

/// A landing path that is certainly relative to the host it is sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelativePath(String);

impl RelativePath {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The query part (after `?`, before `#`), if any.
    pub fn query(&self) -> Option<&str> {
        let before_fragment = self.0.split('#').next().unwrap_or_default();
        before_fragment.split_once('?').map(|(_, q)| q)
    }
}

impl fmt::Display for RelativePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathRefusal {
    #[error("is empty")]
    Empty,
    #[error("is longer than {MAX_LEN} characters")]
    TooLong,
    #[error("must be a relative path starting with a single /")]
    NotRooted,
    #[error("must not start with // (that names another host)")]
    OtherHost,
    #[error("must not contain a backslash")]
    Backslash,
    #[error("must not contain spaces, control characters or non-ASCII characters")]
    Unprintable,
    #[error("contains a character that is not allowed in a URL")]
    BadCharacter,
    #[error("contains a malformed %-escape")]
    BadEscape,
    #[error("contains an encoded character that could change where it leads")]
    EncodedDelimiter,
    #[error("must not contain . or .. segments")]
    DotSegment,
}

/// Characters allowed as they are: RFC 3986 unreserved, sub-delims, `:` `@` `/` `?` `#` and `%`
/// (escapes are checked separately).
fn allowed_raw(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?#%".contains(&b)
}

pub fn parse(input: &str) -> Result<RelativePath, PathRefusal> {
    let bytes = input.as_bytes();
    if bytes.is_empty() {
        return Err(PathRefusal::Empty);
    }
    if bytes.len() > MAX_LEN {
        return Err(PathRefusal::TooLong);
    }
    if bytes.contains(&b'\\') {
        return Err(PathRefusal::Backslash);
    }
    if bytes.iter().any(|&b| b <= b' ' || b >= 0x7f) {
        return Err(PathRefusal::Unprintable);
    }
    if bytes[0] != b'/' {
        return Err(PathRefusal::NotRooted);
    }
    if bytes.get(1) == Some(&b'/') {
        return Err(PathRefusal::OtherHost);
    }
    if let Some(&b) = bytes.iter().find(|&&b| !allowed_raw(b)) {
        let _ = b;
        return Err(PathRefusal::BadCharacter);
    }
    if bytes.iter().filter(|&&b| b == b'#').count() > 1 {
        return Err(PathRefusal::BadCharacter);
    }
    let path_end = bytes
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(bytes.len());
    check_escapes(&bytes[..path_end], true)?;
    check_escapes(&bytes[path_end..], false)?;
    let path = &input[..path_end];
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(PathRefusal::DotSegment);
    }
    Ok(RelativePath(input.to_string()))
}

fn check_escapes(part: &[u8], in_path: bool) -> Result<(), PathRefusal> {
    let mut i = 0;
    while i < part.len() {
        if part[i] == b'%' {
            let hex = part.get(i + 1..i + 3).ok_or(PathRefusal::BadEscape)?;
            let hex = std::str::from_utf8(hex).map_err(|_| PathRefusal::BadEscape)?;
            let decoded = u8::from_str_radix(hex, 16).map_err(|_| PathRefusal::BadEscape)?;
            let always_bad =
                decoded < 0x20 || decoded == 0x7f || decoded == b'%' || decoded == b'\\';
            let bad_in_path = decoded >= 0x80 || b" /.?#:@".contains(&decoded);
            if always_bad || (in_path && bad_in_path) {
                return Err(PathRefusal::EncodedDelimiter);
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// Values attackers and confused integrators send; each must be refused. Shared by the unit
/// tests here and the integration tests that send them through the proxy.
#[doc(hidden)]
pub const HOSTILE_EXAMPLES: &[&str] = &[
    "",
    "//evil.example",
    "//evil.example/path",
    "///evil.example",
    "/\\evil.example",
    "\\\\evil.example",
    "\\/evil.example",
    "/\\/evil.example",
    "https:evil.example",
    "https://evil.example",
    "http://evil.example/",
    "HTTPS://evil.example",
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "%2F%2Fevil.example",
    "/%2F%2Fevil.example",
    "/%2fevil.example",
    "/%5Cevil.example",
    "/%5cevil.example",
    "/%252F%252Fevil.example",
    "/%25",
    "/\t/evil.example",
    "/\n/evil.example",
    "/\r\n/evil.example",
    "\t//evil.example",
    " /x",
    "/x y",
    "/%09/evil.example",
    "/%0d%0aSet-Cookie:x=1",
    "/x?a=%0d%0a",
    "/..//evil.example",
    "/../x",
    "/a/./b",
    "/%2e%2e/x",
    "/%2E/x",
    "/\u{0}x",
    "/\u{7f}x",
    "/caf\u{e9}",
    "/\u{ff0f}evil.example",
    "/x#a#b",
    "/<script>",
    "/x\"onload=",
    "/%",
    "/%zz",
    "/%2",
    "evil.example",
    "./x",
    "?x=1",
    "#x",
];

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hostile_values_are_refused() {
        assert!(HOSTILE_EXAMPLES.len() >= 30);
        for value in HOSTILE_EXAMPLES {
            assert!(parse(value).is_err(), "accepted hostile value {value:?}");
        }
        assert_eq!(
            parse(&format!("/{}", "a".repeat(MAX_LEN))),
            Err(PathRefusal::TooLong)
        );
    }

    #[test]
    fn ordinary_paths_are_kept_as_given() {
        for value in [
            "/",
            "/auth/patientSummary.action?tab=patientSummary",
            "/listAppointments.action",
            "/a/b.c/d?x=1&y=a%40b.example&next=%2Fhome#section",
            "/path;param=1/x~y",
            "/messages?filter=unread%20first",
        ] {
            assert_eq!(
                parse(value).map(|p| p.as_str().to_string()),
                Ok(value.to_string())
            );
        }
        assert_eq!(parse("/a?b=1#c").unwrap().query(), Some("b=1"));
        assert_eq!(parse("/a#c?d").unwrap().query(), None);
    }

    proptest! {
        /// Whatever is accepted stays on PKB's host when resolved, and still does after a second
        /// round of percent-decoding.
        #[test]
        fn accepted_paths_stay_on_host(input in "[ -~\\t\\n%/\\\\]{0,40}") {
            if let Ok(p) = parse(&input) {
                let base = url::Url::parse("https://pkb.example/").unwrap();
                let joined = base.join(p.as_str()).unwrap();
                prop_assert_eq!(joined.host_str(), Some("pkb.example"));
                let decoded = percent_encoding::percent_decode_str(p.as_str()).decode_utf8_lossy().into_owned();
                let joined = base.join(&decoded).unwrap();
                prop_assert_eq!(joined.host_str(), Some("pkb.example"));
            }
        }

        #[test]
        fn never_rewrites(input in "/[a-zA-Z0-9/?=&%._-]{0,40}") {
            if let Ok(p) = parse(&input) {
                prop_assert_eq!(p.as_str(), input.as_str());
            }
        }
    }
}
