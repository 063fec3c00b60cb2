//! The PKB API client (reqwest): token grants and the one-time password, with PKB's failures
//! mapped to typed errors the use cases decide on.
//!
//! The reqwest client is built lazily, on first use, so it lives in the runtime of the service
//! that uses it (a hyper pool driven from a runtime that is later dropped can hang).

use std::sync::{Arc, OnceLock};

use serde::Deserialize;

use crate::config::{ClientAuth, PkbSettings};
use crate::core::secret::{AccessToken, Otp, RefreshToken};

#[derive(Debug, thiserror::Error)]
pub enum PkbError {
    /// PKB could not be reached, timed out, or answered 5xx/429: try again later.
    #[error("PKB unavailable: {0}")]
    Unavailable(String),
    /// `invalid_grant`: the refresh token or code is dead; the pairing cannot be used again.
    #[error("PKB rejected the grant (invalid_grant)")]
    InvalidGrant,
    /// PKB refused the access token (401/403 on an API call).
    #[error("PKB rejected the access token")]
    Unauthorized,
    /// PKB refused pkb-edge's request for another reason (client credentials, configuration).
    #[error("PKB refused the request: {0}")]
    Refused(String),
    /// PKB answered, but not in the documented shape.
    #[error("unexpected answer from PKB: {0}")]
    Protocol(String),
}

/// A token endpoint answer. `expires_in` is read, never assumed.
#[derive(Debug, Clone)]
pub struct TokenResponse {
    pub access_token: AccessToken,
    pub refresh_token: Option<RefreshToken>,
    pub expires_in: i64,
    pub scope: Option<String>,
}

#[derive(Deserialize)]
struct RawTokenResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    refresh_token: Option<String>,
    scope: Option<String>,
}

#[derive(Deserialize)]
struct OAuthErrorBody {
    error: String,
}

pub struct PkbClient {
    settings: Arc<PkbSettings>,
    http: OnceLock<Result<reqwest::Client, String>>,
    /// Calls in flight, over all users (`limits.pkb_concurrency`). When PKB stalls, calls beyond
    /// the cap are refused at once instead of piling up.
    in_flight: tokio::sync::Semaphore,
    max_in_flight: usize,
}

/// The `endpoint` label of `pkb_edge_pkb_requests_total` and `…_duration_seconds`.
pub const ENDPOINTS: [&str; 3] = ["token", "otp", "dataFromOtherOrg"];
/// The `status` values exported from start-up for each endpoint: success, and every way a call
/// fails without an HTTP status. Other statuses appear when PKB first answers with them.
pub const STATUSES: [&str; 4] = ["200", "timeout", "error", "shed"];

impl PkbClient {
    pub fn new(settings: Arc<PkbSettings>, max_in_flight: usize) -> Self {
        let m = crate::observe::metrics::metrics();
        for endpoint in ENDPOINTS {
            m.pkb_request_duration_seconds
                .with_label_values(&[endpoint]);
            for status in STATUSES {
                m.pkb_requests_total.with_label_values(&[endpoint, status]);
            }
        }
        PkbClient {
            settings,
            http: OnceLock::new(),
            in_flight: tokio::sync::Semaphore::new(max_in_flight),
            max_in_flight,
        }
    }

    /// A place among the calls in flight, or `Unavailable` at once when all are taken.
    fn slot(&self, endpoint: &str) -> Result<tokio::sync::SemaphorePermit<'_>, PkbError> {
        self.in_flight.try_acquire().map_err(|_| {
            crate::observe::metrics::metrics()
                .pkb_requests_total
                .with_label_values(&[endpoint, "shed"])
                .inc();
            PkbError::Unavailable(format!(
                "{} calls to PKB are already in flight (limits.pkb_concurrency)",
                self.max_in_flight
            ))
        })
    }

    pub fn settings(&self) -> &PkbSettings {
        &self.settings
    }

    fn http(&self) -> Result<&reqwest::Client, PkbError> {
        self.http
            .get_or_init(|| {
                crate::core::http::client_builder(self.settings.timeout)
                    .pool_idle_timeout(std::time::Duration::from_secs(50))
                    .pool_max_idle_per_host(256)
                    .tcp_nodelay(true)
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| PkbError::Unavailable(format!("HTTP client: {e}")))
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}{path}",
            self.settings.base_url.as_str().trim_end_matches('/')
        )
    }

    /// The refresh grant. PKB may rotate the refresh token; the answer then carries the new one.
    pub async fn refresh(&self, refresh_token: &RefreshToken) -> Result<TokenResponse, PkbError> {
        self.token_request(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose()),
        ])
        .await
    }

    /// The authorization code grant, with the PKCE verifier and the registered redirect URI.
    pub async fn exchange_code(
        &self,
        code: &str,
        code_verifier: &str,
    ) -> Result<TokenResponse, PkbError> {
        self.token_request(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &self.settings.redirect_uri),
            ("code_verifier", code_verifier),
        ])
        .await
    }

    async fn token_request(&self, form: &[(&str, &str)]) -> Result<TokenResponse, PkbError> {
        let _slot = self.slot("token")?;
        let started = std::time::Instant::now();
        let s = &self.settings;
        let mut body: Vec<(&str, &str)> = form.to_vec();
        let mut request = self.http()?.post(self.url(&s.token_path));
        match s.client_auth {
            ClientAuth::Basic => {
                // RFC 6749 §2.3.1: form-encode the id and secret before Basic encoding.
                let id =
                    form_urlencoded::byte_serialize(s.client_id.as_bytes()).collect::<String>();
                let secret = form_urlencoded::byte_serialize(s.client_secret.expose().as_bytes())
                    .collect::<String>();
                request = request.basic_auth(id, Some(secret));
            }
            ClientAuth::Body => {
                body.push(("client_id", &s.client_id));
                body.push(("client_secret", s.client_secret.expose()));
            }
        }
        let response = request
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&body)
            .send()
            .await
            .map_err(|e| {
                crate::observe::metrics::observe_pkb(
                    "token",
                    started,
                    if e.is_timeout() { "timeout" } else { "error" },
                );
                transport_error(e)
            })?;
        let status = response.status();
        crate::observe::metrics::observe_pkb("token", started, status.as_str());
        let bytes = response.bytes().await.map_err(transport_error)?;
        if status.is_success() {
            return parse_token_response(&bytes);
        }
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(PkbError::Unavailable(format!(
                "token endpoint answered {status}"
            )));
        }
        match serde_json::from_slice::<OAuthErrorBody>(&bytes) {
            Ok(e) if e.error == "invalid_grant" => Err(PkbError::InvalidGrant),
            Ok(e) => Err(PkbError::Refused(format!(
                "token endpoint: {}",
                sanitize(&e.error)
            ))),
            Err(_) => Err(PkbError::Refused(format!(
                "token endpoint answered {status}"
            ))),
        }
    }

    /// Asks PKB for a one-time password for the user the access token belongs to.
    pub async fn request_otp(&self, access_token: &AccessToken) -> Result<Otp, PkbError> {
        let s = &self.settings;
        let request = self.http()?.post(self.url(&s.otp_path));
        let Some(body) = self.call_api(request, access_token, "otp").await? else {
            return Err(PkbError::Refused("OTP endpoint answered 404".into()));
        };
        match body.get(&s.otp_field).and_then(|v| v.as_str()) {
            Some(otp) if !otp.is_empty() => Ok(Otp::new(otp)),
            _ => Err(PkbError::Protocol(format!(
                "OTP answer has no `{}` string",
                s.otp_field
            ))),
        }
    }

    /// Whether PKB holds data for the patient from other organisations. PKB answers 404 for a
    /// patient it does not know: that is "no data", `Ok(false)`.
    pub async fn data_from_other_org(
        &self,
        access_token: &AccessToken,
        national_id: &str,
        id_type: &str,
    ) -> Result<bool, PkbError> {
        let request = self
            .http()?
            .get(self.url(&self.settings.data_from_other_org_path))
            .query(&[("nationalId", national_id), ("nationalIdType", id_type)]);
        match self
            .call_api(request, access_token, "dataFromOtherOrg")
            .await?
        {
            None => Ok(false),
            Some(body) => body
                .get("dataFromOtherOrg")
                .and_then(serde_json::Value::as_bool)
                .ok_or_else(|| {
                    PkbError::Protocol(
                        "dataFromOtherOrg answer has no boolean `dataFromOtherOrg`".into(),
                    )
                }),
        }
    }

    /// A call to PKB's JSON API with the user's bearer token: the JSON answer, or `None` for 404;
    /// PKB's failures mapped to `PkbError` the same way for every endpoint.
    async fn call_api(
        &self,
        request: reqwest::RequestBuilder,
        access_token: &AccessToken,
        what: &str,
    ) -> Result<Option<serde_json::Value>, PkbError> {
        let _slot = self.slot(what)?;
        let started = std::time::Instant::now();
        let response = request
            .bearer_auth(access_token.expose())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| {
                crate::observe::metrics::observe_pkb(
                    what,
                    started,
                    if e.is_timeout() { "timeout" } else { "error" },
                );
                transport_error(e)
            })?;
        let status = response.status();
        crate::observe::metrics::observe_pkb(what, started, status.as_str());
        match status.as_u16() {
            200..=299 => {}
            404 => return Ok(None),
            401 | 403 => return Err(PkbError::Unauthorized),
            429 | 500..=599 => {
                return Err(PkbError::Unavailable(format!(
                    "{what} endpoint answered {status}"
                )))
            }
            _ => {
                return Err(PkbError::Refused(format!(
                    "{what} endpoint answered {status}"
                )))
            }
        }
        let bytes = response.bytes().await.map_err(transport_error)?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| PkbError::Protocol(format!("{what} answer is not JSON")))
    }
}

fn transport_error(e: reqwest::Error) -> PkbError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    PkbError::Unavailable(what.to_string())
}

/// PKB's error codes are short ASCII words; anything else is not echoed into our logs verbatim.
fn sanitize(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect()
}

fn parse_token_response(bytes: &[u8]) -> Result<TokenResponse, PkbError> {
    let raw: RawTokenResponse = serde_json::from_slice(bytes)
        .map_err(|_| PkbError::Protocol("token answer is not the documented JSON".into()))?;
    let access_token = raw
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| PkbError::Protocol("token answer has no access_token".into()))?;
    if let Some(t) = &raw.token_type {
        if !t.eq_ignore_ascii_case("bearer") {
            return Err(PkbError::Protocol(format!(
                "token_type `{}` is not Bearer",
                sanitize(t)
            )));
        }
    }
    // Some servers send expires_in as a string; accept a whole number either way.
    let expires_in = match &raw.expires_in {
        Some(serde_json::Value::Number(n)) => n.as_i64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .filter(|n| *n > 0)
    .ok_or_else(|| PkbError::Protocol("token answer has no positive expires_in".into()))?;
    Ok(TokenResponse {
        access_token: AccessToken::new(access_token),
        refresh_token: raw
            .refresh_token
            .filter(|t| !t.is_empty())
            .map(RefreshToken::new),
        expires_in,
        scope: raw.scope,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_answers() {
        let ok = parse_token_response(br#"{"access_token":"a","token_type":"bearer","expires_in":600,"refresh_token":"r","scope":"CLINICIAN"}"#).unwrap();
        assert_eq!(ok.expires_in, 600);
        assert_eq!(ok.refresh_token.unwrap().expose(), "r");
        let no_refresh = parse_token_response(
            br#"{"access_token":"a","token_type":"Bearer","expires_in":"1800"}"#,
        )
        .unwrap();
        assert_eq!(no_refresh.expires_in, 1800);
        assert!(no_refresh.refresh_token.is_none());
        for bad in [
            &br#"{"token_type":"Bearer","expires_in":1}"#[..],
            br#"{"access_token":"a"}"#,
            br#"{"access_token":"a","expires_in":1,"token_type":"mac"}"#,
            b"<html>",
        ] {
            assert!(matches!(
                parse_token_response(bad),
                Err(PkbError::Protocol(_))
            ));
        }
    }
}
