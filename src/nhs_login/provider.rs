//! The OpenID provider as pkb-edge reads it: discovery metadata and signing keys, fetched over
//! one HTTP client, cached, and served stale with a short back-off while NHS login is down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::DecodingKey;
use serde::Deserialize;

use super::{NhsLogin, NhsLoginError};

/// How long discovery metadata is used before it is fetched again.
const METADATA_TTL: Duration = Duration::from_secs(3600);
/// How long keys are used before they are fetched again (and at least this long between fetches
/// prompted by an unknown `kid`).
const JWKS_TTL: Duration = Duration::from_secs(3600);
const JWKS_REFETCH_MIN: Duration = Duration::from_secs(10);
/// After a failed fetch of discovery or keys, how long the next fetch waits.
const FETCH_FAILURE_BACKOFF: Duration = Duration::from_secs(5);

/// The OpenID provider's metadata, as much of it as pkb-edge uses.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Metadata {
    pub(super) issuer: String,
    pub(super) authorization_endpoint: String,
    pub(super) token_endpoint: String,
    pub(super) userinfo_endpoint: String,
    pub(super) jwks_uri: String,
}

struct Cached<T> {
    value: Arc<T>,
    fetched: Instant,
}

/// A cached document from NHS login, and when fetching it last failed.
pub(super) struct Slot<T> {
    cached: Option<Cached<T>>,
    failed_at: Option<Instant>,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot {
            cached: None,
            failed_at: None,
        }
    }
}

impl<T> Slot<T> {
    /// Within the back-off after a failed fetch: callers use what is cached, or fail at once,
    /// instead of each waiting out its own timeout.
    fn backing_off(&self) -> bool {
        self.failed_at
            .is_some_and(|t| t.elapsed() < FETCH_FAILURE_BACKOFF)
    }

    fn stale(&self) -> Option<Arc<T>> {
        self.cached.as_ref().map(|c| c.value.clone())
    }

    fn store(&mut self, value: T) -> Arc<T> {
        let value = Arc::new(value);
        self.cached = Some(Cached {
            value: value.clone(),
            fetched: Instant::now(),
        });
        self.failed_at = None;
        value
    }
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
        let r = self
            .http()?
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| NhsLoginError::Unavailable(format!("{what}: {e}")))?;
        if !r.status().is_success() {
            return Err(NhsLoginError::Unavailable(format!(
                "{what}: HTTP {}",
                r.status().as_u16()
            )));
        }
        r.json()
            .await
            .map_err(|e| NhsLoginError::Unavailable(format!("{what}: not the expected JSON: {e}")))
    }

    /// `{issuer}/.well-known/openid-configuration`, cached for an hour; its `issuer` must be the
    /// configured one exactly. One fetch at a time; when NHS login is unreachable the last copy
    /// is used, and for 5 s after a failure nobody waits on another fetch.
    pub(super) async fn metadata(&self) -> Result<Arc<Metadata>, NhsLoginError> {
        let mut slot = self.metadata.lock().await;
        if let Some(c) = slot
            .cached
            .as_ref()
            .filter(|c| c.fetched.elapsed() < METADATA_TTL)
        {
            return Ok(c.value.clone());
        }
        if slot.backing_off() {
            return slot
                .stale()
                .ok_or_else(|| NhsLoginError::Unavailable("discovery failed moments ago".into()));
        }
        match self.fetch_metadata().await {
            Ok(m) => Ok(slot.store(m)),
            Err(e) => {
                slot.failed_at = Some(Instant::now());
                slot.stale().ok_or(e)
            }
        }
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
        let mut slot = self.jwks.lock().await;
        let fresh_enough = |c: &Cached<JwkSet>| c.fetched.elapsed() < JWKS_TTL;
        if let Some(jwk) = slot
            .cached
            .as_ref()
            .filter(|c| fresh_enough(c))
            .and_then(|c| c.value.find(kid).cloned())
        {
            return DecodingKey::from_jwk(&jwk)
                .map_err(|e| NhsLoginError::IdToken(format!("key `{kid}` is unusable: {e}")));
        }
        let may_fetch = !slot.backing_off()
            && slot
                .cached
                .as_ref()
                .is_none_or(|c| !fresh_enough(c) || c.fetched.elapsed() >= JWKS_REFETCH_MIN);
        if may_fetch {
            match self.get_json::<JwkSet>(jwks_uri, "jwks").await {
                Ok(set) => {
                    slot.store(set);
                }
                Err(e) => {
                    slot.failed_at = Some(Instant::now());
                    if slot.cached.is_none() {
                        return Err(e);
                    }
                }
            }
        }
        let jwk = slot
            .stale()
            .and_then(|set| set.find(kid).cloned())
            .ok_or_else(|| NhsLoginError::IdToken(format!("signed with unknown key `{kid}`")))?;
        DecodingKey::from_jwk(&jwk)
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
