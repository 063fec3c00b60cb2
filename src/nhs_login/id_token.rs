//! The id_token and userinfo checks: signature by the key named in `kid`, issuer, audience,
//! expiry, nonce, the vector of trust, and userinfo's `sub`.

use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;

use super::{LoginState, Metadata, NhsLogin, NhsLoginError};
use crate::config::Vector;

/// The id_token claims pkb-edge checks (signature, `iss`, `aud` are jsonwebtoken's).
#[derive(Debug, Deserialize)]
pub(super) struct IdTokenClaims {
    pub(super) sub: String,
    pub(super) exp: i64,
    pub(super) iat: i64,
    pub(super) aud: serde_json::Value,
    pub(super) azp: Option<String>,
    pub(super) nonce: Option<String>,
    pub(super) vot: Option<String>,
    pub(super) jti: Option<String>,
}

/// userinfo, as much as pkb-edge passes on.
#[derive(Debug, Deserialize)]
pub(super) struct Userinfo {
    pub(super) sub: String,
    pub(super) nhs_number: Option<String>,
    pub(super) identity_proofing_level: Option<String>,
    pub(super) gp_integration_credentials: Option<serde_json::Value>,
}

impl NhsLogin {
    pub(super) async fn verify_id_token(
        &self,
        token: &str,
        metadata: &Metadata,
        pending: &LoginState,
    ) -> Result<IdTokenClaims, NhsLoginError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| NhsLoginError::IdToken(format!("not a JWT: {e}")))?;
        if header.alg != Algorithm::RS512 {
            return Err(NhsLoginError::IdToken(format!(
                "signed with {:?}, not RS512",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| NhsLoginError::IdToken("no `kid` in its header".into()))?;
        let key = self.key_for(&kid, &metadata.jwks_uri).await?;
        let mut validation = Validation::new(Algorithm::RS512);
        validation.set_issuer(&[metadata.issuer.as_str()]);
        validation.set_audience(&[self.settings.client_id.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub", "iat"]);
        // Times are checked below against pkb-edge's clock, so tests can move it.
        validation.validate_exp = false;
        let claims = jsonwebtoken::decode::<IdTokenClaims>(token, &key, &validation)
            .map_err(|e| NhsLoginError::IdToken(id_token_problem(&e)))?
            .claims;
        let (now, skew) = (self.clock.now(), self.settings.clock_skew_secs);
        if claims.exp + skew <= now {
            return Err(NhsLoginError::IdToken("expired (`exp`)".into()));
        }
        if claims.iat > now + skew {
            return Err(NhsLoginError::IdToken(
                "issued in the future (`iat`)".into(),
            ));
        }
        let several_audiences = claims.aud.as_array().is_some_and(|a| a.len() > 1);
        if several_audiences && claims.azp.as_deref() != Some(self.settings.client_id.as_str()) {
            return Err(NhsLoginError::IdToken(
                "several audiences and `azp` is not this client".into(),
            ));
        }
        if claims.nonce.as_deref() != Some(pending.nonce.as_str()) {
            return Err(NhsLoginError::IdToken(
                "`nonce` is not the one this sign-in sent".into(),
            ));
        }
        let vot = claims.vot.as_deref().and_then(Vector::parse);
        if !vot.is_some_and(|v| self.settings.vtr.contains(&v)) {
            return Err(NhsLoginError::IdToken(format!(
                "`vot` {:?} is not one of the requested vectors {:?}",
                claims.vot.as_deref().unwrap_or(""),
                self.settings.vtr
            )));
        }
        if claims.sub.is_empty() || claims.sub.len() > 256 {
            return Err(NhsLoginError::IdToken("`sub` is empty or too long".into()));
        }
        if claims.jti.as_deref().is_none_or(str::is_empty) {
            return Err(NhsLoginError::IdToken("no `jti`".into()));
        }
        Ok(claims)
    }

    pub(super) async fn userinfo(
        &self,
        endpoint: &str,
        access_token: &str,
        sub: &str,
    ) -> Result<Userinfo, NhsLoginError> {
        let r = self
            .http()?
            .get(endpoint)
            .bearer_auth(access_token)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| NhsLoginError::Unavailable(format!("userinfo: {e}")))?;
        let status = r.status();
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(NhsLoginError::Unavailable(format!(
                "userinfo: HTTP {}",
                status.as_u16()
            )));
        }
        if !status.is_success() {
            return Err(NhsLoginError::Userinfo(format!("HTTP {}", status.as_u16())));
        }
        let info: Userinfo = r
            .json()
            .await
            .map_err(|e| NhsLoginError::Userinfo(format!("not the expected JSON: {e}")))?;
        if info.sub != sub {
            return Err(NhsLoginError::Userinfo(
                "its `sub` is not the id_token's".into(),
            ));
        }
        Ok(info)
    }
}

/// jsonwebtoken's error, said in terms of the check that failed.
fn id_token_problem(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::InvalidIssuer => "wrong issuer (`iss`)".into(),
        ErrorKind::InvalidAudience => "not for this client (`aud`)".into(),
        ErrorKind::ExpiredSignature => "expired (`exp`)".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("no `{c}` claim"),
        ErrorKind::InvalidAlgorithm => "not signed with RS512".into(),
        other => format!("{other:?}"),
    }
}
