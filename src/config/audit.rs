//! `[audit]`: where audit lines go, and the key that hashes patient ids in them.
use std::path::PathBuf;

use serde::Deserialize;

use super::{Environment, Validator, ENV_AUDIT_KEY};
use crate::core::secret::SecretText;

/// Where audit lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct AuditSettings {
    pub sink: AuditSink,
    /// Keys the patient-id hash. `None`: derived from the store's first encryption key.
    pub hash_key: Option<SecretText>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    /// A file to append to; `-` or absent: standard output.
    file: Option<PathBuf>,
    hash_key: Option<String>,
    hash_key_file: Option<PathBuf>,
}

impl Validator {
    pub(super) fn audit(&mut self, a: RawAudit, env: &dyn Environment) -> Option<AuditSettings> {
        let sink = match a.file {
            None => AuditSink::Stdout,
            Some(p) if p.as_os_str() == "-" => AuditSink::Stdout,
            Some(p) if p.as_os_str().is_empty() => {
                self.problem(
                    "audit.file",
                    "is empty; give a path, or `-` for standard output",
                );
                return None;
            }
            Some(p) => AuditSink::File(p),
        };
        let given =
            a.hash_key.is_some() || a.hash_key_file.is_some() || env.var(ENV_AUDIT_KEY).is_some();
        let hash_key = if given {
            let key = self.secret(
                "audit.hash_key",
                a.hash_key,
                "audit.hash_key_file",
                a.hash_key_file.as_deref(),
                ENV_AUDIT_KEY,
                env,
            )?;
            if key.expose().len() < 16 {
                self.problem(
                    "audit.hash_key",
                    "must be at least 16 characters (e.g. the output of `pkb-edge keygen`)",
                );
            }
            Some(key)
        } else {
            None
        };
        Some(AuditSettings { sink, hash_key })
    }
}
