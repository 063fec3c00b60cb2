//! The certificate the public listener serves, swapped without a restart: every reading that
//! finds the files changed (or a SIGHUP) loads the pair again; a broken pair is refused with one
//! log line naming the file, and the old pair goes on serving. New handshakes get the pair
//! current when they start; a connection keeps the one it was made with.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

use super::files::{self, FileProblem};
use crate::observe::metrics::metrics;

/// The listener label of the public listener's expiry gauge.
pub const PUBLIC_LISTENER: &str = "public";

pub struct ServingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' digest when last read (whether taken or refused), so an unchanged pair, good
    /// or broken, is not read again, nor logged again.
    seen: Mutex<[u8; 32]>,
}

/// What a reading came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    /// The files are as they were when last read.
    Unchanged,
    /// A changed pair now serves new handshakes.
    Reloaded { serial: String, not_after: i64 },
    /// The changed pair is broken; the old one goes on serving.
    Refused(FileProblem),
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("cert_file", &self.cert_file)
            .finish_non_exhaustive()
    }
}

impl ServingCert {
    /// Loads the pair: start-up fails (naming the file) if it is broken.
    pub fn open(cert_file: &Path, key_file: &Path, now: i64) -> Result<ServingCert, FileProblem> {
        let (cert_pem, key_pem) = (files::read(cert_file)?, files::read(key_file)?);
        let pair = files::pair(cert_file, &cert_pem, key_file, &key_pem, now)?;
        tracing::info!(
            cert_file = %cert_file.display(),
            serial = %pair.serial,
            not_after = pair.not_after,
            "serving certificate loaded"
        );
        expiry_gauge(pair.not_after);
        Ok(ServingCert {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: RwLock::new(pair.certified),
            seen: Mutex::new(digest(&cert_pem, &key_pem)),
        })
    }

    /// Reads the files again and takes the pair if it changed (or always, with `force`). A file
    /// written in the last `SETTLE` is left for the next reading: a renewal caught half-way (the
    /// new key beside the old certificate) is not refused.
    pub fn reload(&self, force: bool, now: i64) -> Reload {
        if !force && (written_lately(&self.cert_file) || written_lately(&self.key_file)) {
            return Reload::Unchanged;
        }
        let read = files::read(&self.cert_file).and_then(|c| Ok((c, files::read(&self.key_file)?)));
        let outcome = match read {
            // An unreadable file (mid-rename, say) is refused once, then again only if forced.
            Err(problem) => self.refused_once(force, [0; 32], problem),
            Ok((cert_pem, key_pem)) => {
                let seen = digest(&cert_pem, &key_pem);
                if !force && *self.seen.lock() == seen {
                    return Reload::Unchanged;
                }
                match files::pair(&self.cert_file, &cert_pem, &self.key_file, &key_pem, now) {
                    Ok(pair) => {
                        *self.seen.lock() = seen;
                        *self.current.write() = pair.certified;
                        expiry_gauge(pair.not_after);
                        Reload::Reloaded {
                            serial: pair.serial,
                            not_after: pair.not_after,
                        }
                    }
                    Err(problem) => self.refused_once(true, seen, problem),
                }
            }
        };
        self.record(&outcome);
        outcome
    }

    fn refused_once(&self, force: bool, seen: [u8; 32], problem: FileProblem) -> Reload {
        let mut last = self.seen.lock();
        if !force && *last == seen {
            return Reload::Unchanged;
        }
        *last = seen;
        Reload::Refused(problem)
    }

    fn record(&self, outcome: &Reload) {
        match outcome {
            Reload::Unchanged => {}
            Reload::Reloaded { serial, not_after } => {
                metrics()
                    .tls_reload_total
                    .with_label_values(&["reloaded"])
                    .inc();
                tracing::info!(
                    cert_file = %self.cert_file.display(),
                    serial = %serial,
                    not_after,
                    "serving certificate reloaded; new connections get it"
                );
            }
            Reload::Refused(problem) => {
                metrics()
                    .tls_reload_total
                    .with_label_values(&["refused"])
                    .inc();
                tracing::error!(
                    file = %problem.file().display(),
                    "certificate reload refused, the old certificate still serves: {problem}"
                );
            }
        }
    }

    /// The pair new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().clone()
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// How long a changed file is left to settle before it is read.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

fn written_lately(file: &Path) -> bool {
    std::fs::metadata(file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < SETTLE)
}

fn expiry_gauge(not_after: i64) {
    metrics()
        .tls_cert_expiry_timestamp_seconds
        .with_label_values(&[PUBLIC_LISTENER])
        .set(not_after);
}

fn digest(cert_pem: &[u8], key_pem: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((cert_pem.len() as u64).to_be_bytes());
    h.update(cert_pem);
    h.update(key_pem);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::Clock;

    fn pair(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn a_pair_caught_mid_renewal_waits_for_the_next_reading() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path(), "live");
        let now = crate::core::clock::SystemClock.now();
        let serving = ServingCert::open(&cert, &key, now).unwrap();
        // The renewal has written its new key, not yet its certificate.
        let (_, new_key) = pair(dir.path(), "next");
        std::fs::copy(&new_key, &key).unwrap();
        assert_eq!(
            serving.reload(false, now),
            Reload::Unchanged,
            "left to settle"
        );
        // Asked for (SIGHUP), the pair is read now, and this one is refused.
        assert!(matches!(
            serving.reload(true, now),
            Reload::Refused(FileProblem::KeyMismatch { .. })
        ));
    }
}
