//! `[decorate]`: the data-availability header on upstream responses.
use std::time::Duration;

use http::HeaderName;
use regex::Regex;
use serde::Deserialize;

use super::Validator;

/// Where the patient in context comes from.
#[derive(Debug, Clone)]
pub enum PatientSource {
    Header(HeaderName),
    Query(String),
    /// A regex with exactly one capture group, matched against the path.
    PathRegex(Regex),
}

#[derive(Debug, Clone)]
pub struct DecorateSettings {
    pub header: HeaderName,
    /// `None`: pages are not decorated (the JSON endpoint still answers).
    pub patient_from: Option<PatientSource>,
    pub national_id_type: String,
    pub ttl: Duration,
    pub budget: Duration,
    pub cache_capacity: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDecorate {
    #[serde(default = "default_decorate_header")]
    header: String,
    patient_from: Option<RawPatientFrom>,
    #[serde(default = "default_national_id_type")]
    national_id_type: String,
    #[serde(default = "default_decorate_ttl")]
    ttl_secs: u64,
    #[serde(default = "default_budget_ms")]
    budget_ms: u64,
    #[serde(default = "super::store::default_cache_capacity")]
    cache_capacity: u64,
}

impl Default for RawDecorate {
    fn default() -> Self {
        RawDecorate {
            header: default_decorate_header(),
            patient_from: None,
            national_id_type: default_national_id_type(),
            ttl_secs: default_decorate_ttl(),
            budget_ms: default_budget_ms(),
            cache_capacity: super::store::default_cache_capacity(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPatientFrom {
    header: Option<String>,
    query: Option<String>,
    path_regex: Option<String>,
}

fn default_decorate_header() -> String {
    "X-PKB-Data-Available".into()
}
fn default_national_id_type() -> String {
    "NHS".into()
}
fn default_decorate_ttl() -> u64 {
    300
}
fn default_budget_ms() -> u64 {
    50
}

impl Validator {
    pub(super) fn decorate(&mut self, d: RawDecorate) -> Option<DecorateSettings> {
        let header = HeaderName::try_from(d.header.as_str())
            .map_err(|_| {
                self.problem(
                    "decorate.header",
                    format!("`{}` is not a valid header name", d.header),
                )
            })
            .ok();
        let patient_from = match d.patient_from {
            None => Some(None),
            Some(p) => match (p.header, p.query, p.path_regex) {
                (Some(h), None, None) => match HeaderName::try_from(h.as_str()) {
                    Ok(name) => Some(Some(PatientSource::Header(name))),
                    Err(_) => {
                        self.problem(
                            "decorate.patient_from.header",
                            format!("`{h}` is not a valid header name"),
                        );
                        None
                    }
                },
                (None, Some(q), None) if !q.is_empty() => Some(Some(PatientSource::Query(q))),
                (None, None, Some(r)) => match regex::Regex::new(&r) {
                    Ok(re) if re.captures_len() == 2 => Some(Some(PatientSource::PathRegex(re))),
                    Ok(_) => {
                        self.problem(
                            "decorate.patient_from.path_regex",
                            "must have exactly one capture group: the patient id",
                        );
                        None
                    }
                    Err(e) => {
                        self.problem(
                            "decorate.patient_from.path_regex",
                            format!("is not a valid regex: {e}"),
                        );
                        None
                    }
                },
                _ => {
                    self.problem(
                        "decorate.patient_from",
                        "give exactly one of header, query or path_regex",
                    );
                    None
                }
            },
        };
        if d.national_id_type.is_empty()
            || !d
                .national_id_type
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            self.problem("decorate.national_id_type", "must be a name like NHS");
        }
        if !(1..=86_400).contains(&d.ttl_secs) {
            self.problem("decorate.ttl_secs", "must be between 1 and 86400");
        }
        if !(1..=10_000).contains(&d.budget_ms) {
            self.problem("decorate.budget_ms", "must be between 1 and 10000");
        }
        if d.cache_capacity == 0 {
            self.problem("decorate.cache_capacity", "must be at least 1");
        }
        Some(DecorateSettings {
            header: header?,
            patient_from: patient_from?,
            national_id_type: d.national_id_type,
            ttl: Duration::from_secs(d.ttl_secs),
            budget: Duration::from_millis(d.budget_ms),
            cache_capacity: d.cache_capacity,
        })
    }
}
