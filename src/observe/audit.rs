//! The audit log: one JSON line per launch, pairing, unpairing and refusal.
//!
//! A line holds the time, the request id, the user id, the action, the outcome, and the patient
//! context as its id type and a keyed hash of the id (HMAC-SHA256 under `audit.hash_key`, or a
//! key derived from the store's first encryption key): the same patient always hashes the same,
//! so an auditor can follow one patient, but nobody without the key can test a guessed NHS number
//! against the log. Tokens and OTPs are never handed to this module.
//!
//! Lines go to standard output or are appended to `audit.file`, each written whole with one
//! `write` call on a file opened for appending, so lines from concurrent requests (or two
//! processes during an upgrade) never interleave. A line that cannot be written is counted
//! (`pkb_edge_audit_write_errors_total`) and logged; the request itself is not failed.

use std::fs::{File, OpenOptions};
use std::io::Write;

use parking_lot::Mutex;
use serde::Serialize;

use crate::config::{AuditSettings, AuditSink};
use crate::core::hash::hmac_sha256;
use crate::core::patient::PatientContext;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Launch,
    Pair,
    PairCallback,
    Unpair,
    /// An admin command (`pkb-edge pairings revoke`).
    Revoke,
    /// An NHS login sign-in (its callback), sign-out, and launch into PKB with
    /// `assertedLoginIdentity`.
    NhsLogin,
    NhsLogout,
    NhsLaunchPkb,
    /// GP integration credentials retrieved at a sign-in (the outcome is their status; never
    /// their values), and a refresh of them.
    GpCredentials,
    GpCredentialsRefresh,
}

/// Whom a step is on behalf of: the request, and its user when known.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub request_id: &'a str,
    pub user: Option<&'a str>,
}

/// What happened, as one audit line says it.
pub struct Event<'a> {
    pub request_id: &'a str,
    pub user: Option<&'a str>,
    pub action: Action,
    /// `redirect`, `paired`, `unpaired`… or the refusal's outcome label (`not_paired`,
    /// `rate_limited`…), the same words as the metrics use.
    pub outcome: &'a str,
    /// Whether the request was refused.
    pub refused: bool,
    pub patient: Option<&'a PatientContext>,
    /// A short explanation for a refusal; never carries a token or a patient id.
    pub reason: Option<String>,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    #[serde(rename = "type")]
    kind: &'static str,
    request_id: &'a str,
    user: Option<&'a str>,
    action: Action,
    outcome: &'a str,
    refused: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    patient: Option<PatientLine>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[derive(Serialize)]
struct PatientLine {
    /// `NHS`, another national id type, or `email`.
    id_type: String,
    id_hash: String,
}

enum Sink {
    Stdout,
    File(Mutex<File>),
}

pub struct AuditLog {
    sink: Sink,
    key: [u8; 32],
}

impl AuditLog {
    /// Opens the sink (creating the file, mode 0600, if needed). `derived_key` is used when no
    /// `audit.hash_key` is configured.
    pub fn open(settings: &AuditSettings, derived_key: [u8; 32]) -> Result<AuditLog, String> {
        let sink = match &settings.sink {
            AuditSink::Stdout => Sink::Stdout,
            AuditSink::File(path) => {
                let mut options = OpenOptions::new();
                options.create(true).append(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    options.mode(0o600);
                }
                let file = options
                    .open(path)
                    .map_err(|e| format!("audit.file: cannot open {}: {e}", path.display()))?;
                Sink::File(Mutex::new(file))
            }
        };
        let key = match &settings.hash_key {
            Some(k) => hmac_sha256(k.expose().as_bytes(), b"pkb-edge audit patient hash v1"),
            None => derived_key,
        };
        Ok(AuditLog { sink, key })
    }

    /// The keyed hash of a patient id as audit lines carry it (hex, 128 bits).
    pub fn patient_hash(&self, id_type: &str, id: &str) -> String {
        let message = format!("{}\u{0}{id}", id_type.to_ascii_lowercase());
        hex(&hmac_sha256(&self.key, message.as_bytes())[..16])
    }

    pub fn record(&self, event: Event<'_>) {
        let patient = event.patient.map(|p| match p {
            PatientContext::NationalId { id, id_type } => PatientLine {
                id_type: id_type.clone(),
                id_hash: self.patient_hash(id_type, id),
            },
            PatientContext::Email(email) => PatientLine {
                id_type: "email".into(),
                id_hash: self.patient_hash("email", &email.to_ascii_lowercase()),
            },
        });
        let line = Line {
            time: crate::core::clock::rfc3339_millis(crate::core::clock::unix_millis_now()),
            kind: "audit",
            request_id: event.request_id,
            user: event.user,
            action: event.action,
            outcome: event.outcome,
            refused: event.refused,
            patient,
            reason: event.reason,
        };
        let mut text = match serde_json::to_vec(&line) {
            Ok(t) => t,
            Err(e) => return self.failed(&e.to_string()),
        };
        text.push(b'\n');
        let written = match &self.sink {
            Sink::Stdout => std::io::stdout().lock().write_all(&text),
            Sink::File(file) => file.lock().write_all(&text),
        };
        if let Err(e) = written {
            self.failed(&e.to_string());
        }
    }

    fn failed(&self, why: &str) {
        crate::observe::metrics::metrics()
            .audit_write_errors_total
            .inc();
        tracing::error!(error = why, "an audit line could not be written");
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::secret::SecretText;

    fn file_log(dir: &tempfile::TempDir, key: Option<&str>) -> (AuditLog, std::path::PathBuf) {
        let path = dir.path().join("audit.log");
        let settings = AuditSettings {
            sink: AuditSink::File(path.clone()),
            hash_key: key.map(|k| SecretText::new(k.to_string())),
        };
        (AuditLog::open(&settings, [7; 32]).unwrap(), path)
    }

    #[test]
    fn a_line_names_everything_but_the_patient_id() {
        let dir = tempfile::tempdir().unwrap();
        let (log, path) = file_log(&dir, None);
        let patient = PatientContext::national_id("9434765919", "NHS").unwrap();
        log.record(Event {
            request_id: "req-1",
            user: Some("dr.ada"),
            action: Action::Launch,
            outcome: "redirect",
            refused: false,
            patient: Some(&patient),
            reason: None,
        });
        log.record(Event {
            request_id: "req-2",
            user: None,
            action: Action::Unpair,
            outcome: "cross_site",
            refused: true,
            patient: None,
            reason: Some("cross-site request".into()),
        });
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("9434765919"), "{text}");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["user"], "dr.ada");
        assert_eq!(lines[0]["action"], "launch");
        assert_eq!(lines[0]["outcome"], "redirect");
        assert_eq!(lines[0]["refused"], false);
        assert_eq!(lines[0]["request_id"], "req-1");
        assert_eq!(lines[0]["patient"]["id_type"], "NHS");
        assert_eq!(
            lines[0]["patient"]["id_hash"],
            log.patient_hash("NHS", "9434765919")
        );
        assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(lines[1]["user"], serde_json::Value::Null);
        assert_eq!(lines[1]["refused"], true);
        assert!(lines[1].get("patient").is_none());
    }

    #[test]
    fn the_hash_is_keyed_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = file_log(&dir, Some("one key of sixteen+"));
        let (b, _) = file_log(&dir, Some("another key, also long"));
        let (derived, _) = file_log(&dir, None);
        let h = a.patient_hash("NHS", "9434765919");
        assert_eq!(h.len(), 32);
        assert_eq!(h, a.patient_hash("nhs", "9434765919"));
        assert_ne!(h, a.patient_hash("NHS", "9434765870"));
        assert_ne!(h, b.patient_hash("NHS", "9434765919"));
        assert_ne!(h, derived.patient_hash("NHS", "9434765919"));
        // An unkeyed SHA-256 of the id would let anyone test guesses; this is not that.
        use sha2::Digest;
        let plain = hex(&sha2::Sha256::digest(b"9434765919")[..16]);
        assert_ne!(h, plain);
    }

    #[test]
    fn an_unwritable_file_is_a_start_up_error_naming_the_key() {
        let settings = AuditSettings {
            sink: AuditSink::File("/nonexistent-dir/audit.log".into()),
            hash_key: None,
        };
        let err = AuditLog::open(&settings, [0; 32]).err().unwrap();
        assert!(err.starts_with("audit.file:"), "{err}");
    }
}
