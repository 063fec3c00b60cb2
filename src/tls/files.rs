//! Certificate and key files: read, parsed, checked against each other and the clock. Every
//! problem names the file it is about.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// What is wrong with a certificate or key file.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FileProblem {
    #[error("{}: cannot read it ({error})", file.display())]
    Unreadable { file: PathBuf, error: String },
    #[error("{}: not a PEM certificate (expected -----BEGIN CERTIFICATE-----)", file.display())]
    NotPemCertificate { file: PathBuf },
    #[error("{}: not a PEM private key (expected -----BEGIN PRIVATE KEY----- or an RSA/EC key)", file.display())]
    NotPemKey { file: PathBuf },
    #[error("{}: the key does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{}: the certificate expired at {at} (Unix time {unix})", file.display())]
    Expired {
        file: PathBuf,
        at: String,
        unix: i64,
    },
    #[error("{}: the certificate is not valid before {at}", file.display())]
    NotYetValid { file: PathBuf, at: String },
    #[error("{}: {why}", file.display())]
    Unusable { file: PathBuf, why: String },
}

impl FileProblem {
    /// The file the problem is about.
    pub fn file(&self) -> &Path {
        match self {
            FileProblem::Unreadable { file, .. }
            | FileProblem::NotPemCertificate { file }
            | FileProblem::NotPemKey { file }
            | FileProblem::Expired { file, .. }
            | FileProblem::NotYetValid { file, .. }
            | FileProblem::Unusable { file, .. } => file,
            FileProblem::KeyMismatch { key, .. } => key,
        }
    }
}

/// A certificate chain and its key, ready to serve.
pub struct Pair {
    pub certified: Arc<CertifiedKey>,
    /// The leaf's notAfter, Unix seconds.
    pub not_after: i64,
    /// The leaf's serial number, hex.
    pub serial: String,
}

pub fn read(file: &Path) -> Result<Vec<u8>, FileProblem> {
    std::fs::read(file).map_err(|e| FileProblem::Unreadable {
        file: file.to_path_buf(),
        error: e.to_string(),
    })
}

/// Every certificate in a PEM file (at least one).
pub fn certificates(file: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, FileProblem> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<_, _>>()
        .map_err(|_| FileProblem::NotPemCertificate {
            file: file.to_path_buf(),
        })?;
    if certs.is_empty() {
        return Err(FileProblem::NotPemCertificate {
            file: file.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(file: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, FileProblem> {
    match rustls_pemfile::private_key(&mut &pem[..]) {
        Ok(Some(key)) => Ok(key),
        _ => Err(FileProblem::NotPemKey {
            file: file.to_path_buf(),
        }),
    }
}

/// The pair in `cert_file` (the chain, leaf first) and `key_file`, as read into `cert_pem` and
/// `key_pem`: parsed, the key matched to the leaf, the leaf valid at `now` (Unix seconds).
pub fn pair(
    cert_file: &Path,
    cert_pem: &[u8],
    key_file: &Path,
    key_pem: &[u8],
    now: i64,
) -> Result<Pair, FileProblem> {
    let chain = certificates(cert_file, cert_pem)?;
    let key = private_key(key_file, key_pem)?;
    let validity = Validity::of(cert_file, &chain[0])?;
    validity.check(cert_file, now)?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| {
        FileProblem::Unusable {
            file: key_file.to_path_buf(),
            why: format!("the key cannot sign ({e})"),
        }
    })?;
    let certified = CertifiedKey::new(chain, signer);
    // `Unknown`: the key type cannot say its public key; the handshake would show a mismatch.
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
        certified.keys_match()
    {
        return Err(FileProblem::KeyMismatch {
            cert: cert_file.to_path_buf(),
            key: key_file.to_path_buf(),
        });
    }
    Ok(Pair {
        certified: Arc::new(certified),
        not_after: validity.not_after,
        serial: validity.serial,
    })
}

/// Reads and checks a pair from its files.
pub fn load_pair(cert_file: &Path, key_file: &Path, now: i64) -> Result<Pair, FileProblem> {
    let cert_pem = read(cert_file)?;
    let key_pem = read(key_file)?;
    pair(cert_file, &cert_pem, key_file, &key_pem, now)
}

/// The CA certificates in `file`, as trust anchors.
pub fn roots(file: &Path) -> Result<RootCertStore, FileProblem> {
    let pem = read(file)?;
    let mut store = RootCertStore::empty();
    for cert in certificates(file, &pem)? {
        store.add(cert).map_err(|e| FileProblem::Unusable {
            file: file.to_path_buf(),
            why: format!("not a usable CA certificate ({e})"),
        })?;
    }
    Ok(store)
}

/// A certificate's validity period and serial number.
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
    pub serial: String,
}

impl Validity {
    pub fn of(file: &Path, der: &CertificateDer<'_>) -> Result<Validity, FileProblem> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| FileProblem::Unusable {
            file: file.to_path_buf(),
            why: format!("not a readable X.509 certificate ({e})"),
        })?;
        let v = cert.validity();
        Ok(Validity {
            not_before: v.not_before.timestamp(),
            not_after: v.not_after.timestamp(),
            serial: cert.raw_serial_as_string().replace(':', ""),
        })
    }

    pub fn check(&self, file: &Path, now: i64) -> Result<(), FileProblem> {
        if now > self.not_after {
            return Err(FileProblem::Expired {
                file: file.to_path_buf(),
                at: crate::core::clock::rfc3339(self.not_after),
                unix: self.not_after,
            });
        }
        if now < self.not_before {
            return Err(FileProblem::NotYetValid {
                file: file.to_path_buf(),
                at: crate::core::clock::rfc3339(self.not_before),
            });
        }
        Ok(())
    }
}

/// The names a client certificate is known by: its DNS SANs, or its CN when it has no SAN
/// extension; lower case.
pub fn client_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        return san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(name) => Some(name.to_ascii_lowercase()),
                _ => None,
            })
            .collect();
    }
    cert.subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(str::to_ascii_lowercase)
        .collect()
}
