//! The OpenID provider as pkb-edge reads it: discovery metadata and signing keys, fetched over
//! one HTTP client, cached, and served stale with a short back-off while NHS login is down
//! (`core::fetched`, which the JWT identity's keys use too).

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::DecodingKey;
use serde::Deserialize;

use super::{NhsLogin, NhsLoginError};
use crate::core::fetched::{FetchFailed, RefetchPolicy};

/// Discovery metadata is used for an hour; keys too, and an unknown `kid` fetches them again at
/// most every 10 s. After a failed fetch, the next waits 5 s (the stale copy is used meanwhile).
pub(super) const METADATA_POLICY: RefetchPolicy = RefetchPolicy {
    ttl: Duration::from_secs(3600),
    min_interval: Duration::from_secs(10),
    backoff: Duration::from_secs(5),
};
pub(super) const JWKS_POLICY: RefetchPolicy = METADATA_POLICY;

/// The OpenID provider's metadata, as much of it as pkb-edge uses.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Metadata {
    pub(super) issuer: String,
    pub(super) authorization_endpoint: String,
    pub(super) token_endpoint: String,
    pub(super) userinfo_endpoint: String,
    pub(super) jwks_uri: String,
}

#[derive(Deserialize)]
struct TokenAnswer {
    id_token: Option<String>,
    access_token: Option<String>,
}

#[derive(Deserialize)]
struct OAuthErrorBody {
    error: Option<String>,
}

impl NhsLogin {
    pub(super) fn http(&self) -> Result<&reqwest::Client, NhsLoginError> {
        self.http
            .get_or_init(|| {
                crate::core::http::client_builder(self.settings.timeout)
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| NhsLoginError::Unavailable(format!("HTTP client: {e}")))
    }

    pub(super) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        what: &str,
    ) -> Result<T, NhsLoginError> {
        let body = crate::core::http::get_document(self.http()?, url, "application/json", what)
            .await
            .map_err(NhsLoginError::Unavailable)?;
        serde_json::from_slice(&body)
            .map_err(|e| NhsLoginError::Unavailable(format!("{what}: not the expected JSON: {e}")))
    }

    /// `{issuer}/.well-known/openid-configuration`, cached for an hour; its `issuer` must be the
    /// configured one exactly. One fetch at a time; when NHS login is unreachable the last copy
    /// is used, and for 5 s after a failure nobody waits on another fetch.
    pub(super) async fn metadata(&self) -> Result<Arc<Metadata>, NhsLoginError> {
        self.metadata
            .get(|_| true, || self.fetch_metadata())
            .await
            .map_err(|e| match e {
                FetchFailed::Failed(e) => e,
                FetchFailed::BackingOff => {
                    NhsLoginError::Unavailable("discovery failed moments ago".into())
                }
            })
    }

    async fn fetch_metadata(&self) -> Result<Metadata, NhsLoginError> {
        let url = format!("{}/.well-known/openid-configuration", self.settings.issuer);
        let m: Metadata = self.get_json(&url, "discovery").await?;
        if m.issuer.trim_end_matches('/') != self.settings.issuer {
            return Err(NhsLoginError::Refused(format!(
                "discovery names issuer `{}`, not the configured nhs_login.issuer",
                m.issuer
            )));
        }
        Ok(m)
    }

    /// The key for `kid`, fetching the JWKS again (at most every 10 s) when the kid is unknown:
    /// NHS login may rotate its keys. A failed fetch keeps the keys already known.
    pub(super) async fn key_for(
        &self,
        kid: &str,
        jwks_uri: &str,
    ) -> Result<DecodingKey, NhsLoginError> {
        let unknown = || NhsLoginError::IdToken(format!("signed with unknown key `{kid}`"));
        let set = self
            .jwks
            .get(
                |set| set.find(kid).is_some(),
                || self.get_json::<JwkSet>(jwks_uri, "jwks"),
            )
            .await
            .map_err(|e| match e {
                FetchFailed::Failed(e) => e,
                FetchFailed::BackingOff => unknown(),
            })?;
        let jwk = set.find(kid).ok_or_else(unknown)?;
        DecodingKey::from_jwk(jwk)
            .map_err(|e| NhsLoginError::IdToken(format!("key `{kid}` is unusable: {e}")))
    }

    /// The authorization code exchanged at the token endpoint, authenticated with a client
    /// assertion: the id_token and the access token.
    pub(super) async fn exchange_code(
        &self,
        code: &str,
        metadata: &Metadata,
    ) -> Result<(String, String), NhsLoginError> {
        let assertion = self.client_assertion(&metadata.token_endpoint)?;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.settings.redirect_uri.as_str()),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion.as_str()),
        ];
        let r = self
            .http()?
            .post(&metadata.token_endpoint)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| NhsLoginError::Unavailable(format!("token: {e}")))?;
        let status = r.status();
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(NhsLoginError::Unavailable(format!(
                "token: HTTP {}",
                status.as_u16()
            )));
        }
        let body = r
            .bytes()
            .await
            .map_err(|e| NhsLoginError::Unavailable(format!("token: {e}")))?;
        if !status.is_success() {
            let code = serde_json::from_slice::<OAuthErrorBody>(&body)
                .ok()
                .and_then(|b| b.error)
                .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
            return Err(NhsLoginError::Refused(format!("token endpoint: {code}")));
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| NhsLoginError::Refused(format!("token answer is not JSON: {e}")))?;
        let id_token = answer
            .id_token
            .ok_or_else(|| NhsLoginError::IdToken("the token answer has no id_token".into()))?;
        let access_token = answer
            .access_token
            .ok_or_else(|| NhsLoginError::Refused("the token answer has no access_token".into()))?;
        Ok((id_token, access_token))
    }
}
