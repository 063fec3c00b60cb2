//! Data availability: whether PKB holds data for the patient in context from other
//! organisations (`dataFromOtherOrg`), as a header on the upstream's own responses.
//!
//! The look-up starts as soon as a request is identified and runs beside the upstream call; the
//! response waits for it at most `decorate.budget_ms`, then says `unknown`. The look-up is a task
//! of its own, so an answer that comes after the budget is still cached for the next request.
//! Answers are cached per (user, patient); concurrent misses for one key share one PKB call.
//! Not for: deciding whether a response may carry the header (the proxy decides: GET/HEAD, 2xx).

use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

use http::HeaderMap;
use moka::future::Cache;
use moka::Expiry;

use crate::config::{DecorateSettings, PatientSource};
use crate::core::patient::PatientContext;
use crate::tokens::{TokenSource, Trigger};

/// How long a look-up that failed (PKB error or timeout) is remembered, so an outage does not
/// turn every page view into a PKB call.
const FAILURE_TTL: Duration = Duration::from_secs(10);
/// How long "this user is not paired" is remembered: linking shows up within this.
const NOT_PAIRED_TTL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Available,
    NotAvailable,
    Unknown,
}

impl Availability {
    pub fn header_value(self) -> &'static str {
        match self {
            Availability::Available => "true",
            Availability::NotAvailable => "false",
            Availability::Unknown => "unknown",
        }
    }

    pub fn as_json(self) -> serde_json::Value {
        match self {
            Availability::Available => serde_json::Value::Bool(true),
            Availability::NotAvailable => serde_json::Value::Bool(false),
            Availability::Unknown => serde_json::Value::Null,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    user: String,
    id_type: String,
    id: String,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    value: Availability,
    ttl: Duration,
}

struct PerEntryTtl;

impl Expiry<Key, Entry> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &Key,
        entry: &Entry,
        _created: std::time::Instant,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// A look-up in progress, held by the request while the upstream answers.
pub enum Lookup {
    Ready(Availability),
    Pending(tokio::task::JoinHandle<Availability>),
}

pub struct Decorator {
    settings: DecorateSettings,
    tokens: Arc<TokenSource>,
    cache: Cache<Key, Entry>,
}

impl Decorator {
    pub fn new(settings: DecorateSettings, tokens: Arc<TokenSource>) -> Self {
        for value in [
            Availability::Available,
            Availability::NotAvailable,
            Availability::Unknown,
        ] {
            crate::observe::metrics::metrics()
                .decoration_total
                .with_label_values(&[value.header_value()]);
        }
        let cache = Cache::builder()
            .max_capacity(settings.cache_capacity)
            .expire_after(PerEntryTtl)
            .build();
        Decorator {
            settings,
            tokens,
            cache,
        }
    }

    pub fn settings(&self) -> &DecorateSettings {
        &self.settings
    }

    /// The patient in context of a request, when there is one and it is a valid id of the
    /// configured type. An invalid NHS number is never sent to PKB.
    pub fn patient_in(
        &self,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Option<String> {
        let raw = match self.settings.patient_from.as_ref()? {
            PatientSource::Header(name) => headers.get(name)?.to_str().ok()?.trim().to_string(),
            PatientSource::Query(name) => form_urlencoded::parse(query?.as_bytes())
                .find(|(k, _)| k == name.as_str())?
                .1
                .into_owned(),
            PatientSource::PathRegex(re) => re.captures(path)?.get(1)?.as_str().to_string(),
        };
        PatientContext::national_id(&raw, &self.settings.national_id_type).ok()?;
        Some(raw)
    }

    /// Starts the look-up for a page (or finds the answer cached).
    pub async fn begin(self: &Arc<Self>, user: &str, patient: String) -> Lookup {
        let key = Key {
            user: user.to_string(),
            id_type: self.settings.national_id_type.clone(),
            id: patient,
        };
        if let Some(entry) = self.cache.get(&key).await {
            return Lookup::Ready(entry.value);
        }
        let this = self.clone();
        Lookup::Pending(tokio::spawn(
            async move { this.cached(key).await }.in_current_span(),
        ))
    }

    /// The answer, waiting for a pending look-up at most `budget`.
    pub async fn finish(lookup: Lookup, budget: Duration) -> Availability {
        match lookup {
            Lookup::Ready(value) => value,
            Lookup::Pending(task) => match tokio::time::timeout(budget, task).await {
                Ok(Ok(value)) => value,
                _ => Availability::Unknown,
            },
        }
    }

    /// For the JSON endpoint: any id type, waiting up to `wait`.
    pub async fn ask(
        self: &Arc<Self>,
        user: &str,
        id: &str,
        id_type: &str,
        wait: Duration,
    ) -> Availability {
        let key = Key {
            user: user.to_string(),
            id_type: id_type.to_string(),
            id: id.to_string(),
        };
        let this = self.clone();
        Decorator::finish(
            Lookup::Pending(tokio::spawn(
                async move { this.cached(key).await }.in_current_span(),
            )),
            wait,
        )
        .await
    }

    /// One PKB call per key at a time; everyone else waits for it and shares the answer.
    async fn cached(&self, key: Key) -> Availability {
        let fetch = self.fetch(&key);
        self.cache.get_with_by_ref(&key, fetch).await.value
    }

    async fn fetch(&self, key: &Key) -> Entry {
        let started = Instant::now();
        let pairing = match self
            .tokens
            .fresh(&key.user, None, Trigger::Decoration)
            .await
        {
            Ok(p) => p,
            Err(crate::store::FreshError::NotPaired | crate::store::FreshError::Revoked) => {
                return Entry {
                    value: Availability::Unknown,
                    ttl: NOT_PAIRED_TTL,
                };
            }
            Err(_) => {
                return Entry {
                    value: Availability::Unknown,
                    ttl: FAILURE_TTL,
                }
            }
        };
        let answer = self
            .tokens
            .pkb()
            .data_from_other_org(&pairing.tokens.access_token, &key.id, &key.id_type)
            .await;
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            ok = answer.is_ok(),
            "dataFromOtherOrg"
        );
        match answer {
            Ok(true) => Entry {
                value: Availability::Available,
                ttl: self.settings.ttl,
            },
            Ok(false) => Entry {
                value: Availability::NotAvailable,
                ttl: self.settings.ttl,
            },
            Err(_) => Entry {
                value: Availability::Unknown,
                ttl: FAILURE_TTL.min(self.settings.ttl),
            },
        }
    }
}

/// `Cache-Control` for a response whose content now depends on who asked: `private` added,
/// `public` and `s-maxage` (shared-cache permissions) removed, everything else kept.
pub fn private_cache_control(existing: &[&str]) -> String {
    let mut directives: Vec<String> = existing
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .filter(|d| {
            let name = d
                .split('=')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            name != "public" && name != "s-maxage"
        })
        .map(str::to_string)
        .collect();
    if !directives.iter().any(|d| d.eq_ignore_ascii_case("private")) {
        directives.insert(0, "private".into());
    }
    directives.join(", ")
}

/// `Vary` with `names` merged in, once each, case-insensitively; `*` stays `*`.
pub fn merged_vary(existing: &[&str], names: &[&str]) -> String {
    let mut tokens: Vec<String> = existing
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    if tokens.iter().any(|t| t == "*") {
        return "*".into();
    }
    for name in names {
        if !tokens.iter().any(|t| t.eq_ignore_ascii_case(name)) {
            tokens.push((*name).to_string());
        }
    }
    tokens.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_table() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "private"),
            (&["public, max-age=60"], "private, max-age=60"),
            (&["max-age=60, s-maxage=600"], "private, max-age=60"),
            (&["private, max-age=5"], "private, max-age=5"),
            (&["no-store"], "private, no-store"),
            (&["Public", "must-revalidate"], "private, must-revalidate"),
        ];
        for (input, want) in cases {
            assert_eq!(private_cache_control(input), *want, "{input:?}");
        }
    }

    #[test]
    fn vary_table() {
        let names = ["X-Authenticated-User"];
        let cases: &[(&[&str], &str)] = &[
            (&[], "X-Authenticated-User"),
            (
                &["Accept-Encoding"],
                "Accept-Encoding, X-Authenticated-User",
            ),
            (
                &["accept-encoding, x-authenticated-user"],
                "accept-encoding, x-authenticated-user",
            ),
            (
                &["Accept", "Cookie"],
                "Accept, Cookie, X-Authenticated-User",
            ),
            (&["*"], "*"),
        ];
        for (input, want) in cases {
            assert_eq!(merged_vary(input, &names), *want, "{input:?}");
        }
    }

    #[test]
    fn availability_values() {
        assert_eq!(Availability::Available.header_value(), "true");
        assert_eq!(Availability::NotAvailable.header_value(), "false");
        assert_eq!(Availability::Unknown.header_value(), "unknown");
        assert_eq!(Availability::Unknown.as_json(), serde_json::Value::Null);
    }
}
