//! Where jwt mode's verification keys come from: a JWKS URL (refetched every
//! `jwks_refresh_secs`, and when a token names an unknown `kid`, at most every 10 s), one PEM per
//! `kid` from a URL template (AWS ALB), or a file read at start-up. Fetching, caching and the
//! back-off while the source is down are `core::fetched`'s, shared with NHS login.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{JwtKeySource, JwtSettings};
use crate::core::fetched::{Fetched, RefetchPolicy};
use crate::core::public_keys::KeySet;

/// An unknown `kid` fetches keys again at most this often.
const UNKNOWN_KID_REFETCH: Duration = Duration::from_secs(10);
/// After a failed fetch, how long requests use what is cached without trying again.
const FETCH_BACKOFF: Duration = Duration::from_secs(5);
/// The timeout of one key fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Key ids remembered from a URL template; beyond this, new ones are not fetched.
const MAX_TEMPLATE_KIDS: usize = 256;
/// With a URL template, a `kid` never seen is fetched at most this often overall, so tokens
/// naming random key ids cannot turn pkb-edge into a fetcher for whoever sends them.
const NEW_KID_EVERY: Duration = Duration::from_secs(1);

enum Source {
    Jwks {
        url: String,
        doc: Fetched<KeySet>,
    },
    PerKid {
        template: String,
        docs: parking_lot::Mutex<HashMap<String, Arc<Fetched<KeySet>>>>,
        last_new_kid: parking_lot::Mutex<Option<Instant>>,
    },
    File(Arc<KeySet>),
}

pub struct KeySource {
    source: Source,
    policy: RefetchPolicy,
    http: reqwest::Client,
}

/// A `kid` pkb-edge will put in a URL: short, and only characters that need no escaping.
fn kid_fits_url(kid: &str) -> bool {
    (1..=128).contains(&kid.len())
        && !kid.starts_with('.')
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl KeySource {
    pub fn new(settings: &JwtSettings) -> Result<KeySource, String> {
        let http = crate::core::http::client_builder(FETCH_TIMEOUT)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let policy = RefetchPolicy {
            ttl: settings.jwks_refresh,
            min_interval: UNKNOWN_KID_REFETCH,
            backoff: FETCH_BACKOFF,
        };
        let source = match &settings.keys {
            JwtKeySource::JwksUrl(url) => Source::Jwks {
                url: url.to_string(),
                doc: Fetched::new(policy),
            },
            JwtKeySource::KeyUrlTemplate(template) => Source::PerKid {
                template: template.clone(),
                docs: parking_lot::Mutex::default(),
                last_new_kid: parking_lot::Mutex::default(),
            },
            JwtKeySource::File { keys, .. } => Source::File(Arc::new(keys.clone())),
        };
        Ok(KeySource {
            source,
            policy,
            http,
        })
    }

    /// Whether keys have been loaded once (a JWKS); a template or file source is always ready.
    pub fn loaded(&self) -> bool {
        match &self.source {
            Source::Jwks { doc, .. } => doc.loaded(),
            Source::PerKid { .. } | Source::File(_) => true,
        }
    }

    /// Fetches the JWKS when it is due (never loaded, or older than `jwks_refresh_secs`); the
    /// background task calls this every few seconds. Returns how long to wait before the next.
    pub async fn refresh(&self) -> Duration {
        if let Source::Jwks { url, doc } = &self.source {
            let _ = doc.get(|_| true, || self.fetch_jwks(url)).await;
        }
        self.policy.backoff.min(self.policy.ttl)
    }

    async fn fetch_jwks(&self, url: &str) -> Result<KeySet, String> {
        let result = crate::core::http::get_document(&self.http, url, "application/json", "jwks")
            .await
            .and_then(|body| {
                KeySet::from_jwks(&String::from_utf8_lossy(&body)).map_err(|e| format!("jwks {e}"))
            });
        match &result {
            Ok(keys) => tracing::info!(url, keys = keys.len(), "identity keys fetched"),
            Err(e) => {
                tracing::warn!(url, error = %e, "identity keys could not be fetched; the cached ones stay in use")
            }
        }
        result
    }

    async fn fetch_pem(&self, url: &str) -> Result<KeySet, String> {
        let accept = "application/x-pem-file, text/plain, */*";
        let result = crate::core::http::get_document(&self.http, url, accept, "key")
            .await
            .and_then(|body| {
                KeySet::from_pem(&String::from_utf8_lossy(&body)).map_err(|e| format!("key {e}"))
            });
        match &result {
            Ok(_) => tracing::info!(url, "identity key fetched"),
            Err(e) => tracing::warn!(url, error = %e, "identity key could not be fetched"),
        }
        result
    }

    /// The keys a token naming `kid` may have been signed with, fetching when `kid` is unknown
    /// (within the limits above). `None`: no keys at all (never loaded, or not fetchable).
    pub async fn for_kid(&self, kid: Option<&str>) -> Option<Arc<KeySet>> {
        match &self.source {
            Source::File(keys) => Some(keys.clone()),
            Source::Jwks { url, doc } => doc
                .get(|set| set.knows(kid), || self.fetch_jwks(url))
                .await
                .ok(),
            Source::PerKid {
                template,
                docs,
                last_new_kid,
            } => {
                let kid = kid.filter(|k| kid_fits_url(k))?;
                let doc = {
                    let mut docs = docs.lock();
                    match docs.get(kid) {
                        Some(doc) => doc.clone(),
                        None => {
                            let mut last = last_new_kid.lock();
                            if docs.len() >= MAX_TEMPLATE_KIDS {
                                // Key ids that never loaded make room; known keys stay.
                                docs.retain(|_, doc| doc.loaded());
                            }
                            if docs.len() >= MAX_TEMPLATE_KIDS
                                || last.is_some_and(|t| t.elapsed() < NEW_KID_EVERY)
                            {
                                return None;
                            }
                            *last = Some(Instant::now());
                            let doc = Arc::new(Fetched::new(self.policy));
                            docs.insert(kid.to_string(), doc.clone());
                            doc
                        }
                    }
                };
                let url = template.replace("{kid}", kid);
                doc.get(|set| !set.is_empty(), || self.fetch_pem(&url))
                    .await
                    .ok()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::kid_fits_url;

    #[test]
    fn only_plain_key_ids_go_into_a_url() {
        assert!(kid_fits_url("2a1b9f3c-3e2d-4c1a-9b0f-7d6e5c4b3a21"));
        assert!(kid_fits_url("key_1.pem"));
        for bad in [
            "",
            "..",
            ".hidden",
            "../admin",
            "a/b",
            "a?b",
            "a%2fb",
            "a b",
            &"k".repeat(129),
        ] {
            assert!(!kid_fits_url(bad), "{bad}");
        }
    }
}
