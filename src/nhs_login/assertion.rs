//! The JWTs pkb-edge signs as the relying party: client assertions (`private_key_jwt`) and the
//! `asserted_login_identity` that carries a signed-in user into PKB.

use jsonwebtoken::{Algorithm, Header};
use serde::Serialize;

use super::{random_id, NhsLogin, NhsLoginError, Session};
use crate::core::relative_path::RelativePath;

/// Lifetime of the JWTs pkb-edge signs: client assertions and `asserted_login_identity`
/// (NHS login: at most 60 s).
const ASSERTION_LIFETIME_SECS: i64 = 60;

#[derive(Serialize)]
struct ClientAssertion<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: String,
    iat: i64,
    exp: i64,
}

#[derive(Serialize)]
struct AssertedLoginIdentity<'a> {
    code: &'a str,
    iss: &'a str,
    jti: String,
    iat: i64,
    exp: i64,
}

impl NhsLogin {
    fn sign<T: Serialize>(&self, claims: &T) -> Result<String, NhsLoginError> {
        let mut header = Header::new(Algorithm::RS512);
        header.typ = Some("JWT".into());
        header.kid = self.settings.key_id.clone();
        jsonwebtoken::encode(&header, claims, &self.signing_key)
            .map_err(|e| NhsLoginError::Refused(format!("cannot sign: {e}")))
    }

    /// `{pkb.base_url}{path}?assertedLoginIdentity=…[&prompt=…]` with a fresh assertion for the
    /// session's user: `code` is the `jti` of their NHS login id_token, and it lives 60 s.
    pub fn pkb_url(
        &self,
        pkb_base: &url::Url,
        path: &RelativePath,
        session: &Session,
    ) -> Result<String, NhsLoginError> {
        let token = self.assertion(session)?;
        let (before_fragment, fragment) = match path.as_str().split_once('#') {
            Some((p, f)) => (p, Some(f)),
            None => (path.as_str(), None),
        };
        let mut url = format!(
            "{}{before_fragment}",
            pkb_base.as_str().trim_end_matches('/')
        );
        url.push(if before_fragment.contains('?') {
            '&'
        } else {
            '?'
        });
        url.push_str("assertedLoginIdentity=");
        url.push_str(&token);
        if let Some(prompt) = &self.settings.pkb_prompt {
            url.push_str("&prompt=");
            url.push_str(prompt);
        }
        if let Some(f) = fragment {
            url.push('#');
            url.push_str(f);
        }
        Ok(url)
    }

    /// A client assertion for the token endpoint (`private_key_jwt`).
    pub(super) fn client_assertion(&self, token_endpoint: &str) -> Result<String, NhsLoginError> {
        let now = self.clock.now();
        self.sign(&ClientAssertion {
            iss: &self.settings.client_id,
            sub: &self.settings.client_id,
            aud: token_endpoint,
            jti: random_id(),
            iat: now,
            exp: now + ASSERTION_LIFETIME_SECS,
        })
    }

    /// A fresh `asserted_login_identity` for the session's user.
    pub(super) fn assertion(&self, session: &Session) -> Result<String, NhsLoginError> {
        let now = self.clock.now();
        self.sign(&AssertedLoginIdentity {
            code: &session.id_token_jti,
            iss: &self.settings.client_id,
            jti: random_id(),
            iat: now,
            exp: now + ASSERTION_LIFETIME_SECS,
        })
    }
}
