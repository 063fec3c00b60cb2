//! What pkb-edge presents and trusts towards an https upstream (`[upstream_tls]`), read from
//! its files once at start-up; every problem names its file.

use super::files::{self, FileProblem};
use crate::config::UpstreamTlsSettings;

/// The upstream's CA certificates and pkb-edge's client certificate, DER.
#[derive(Default)]
pub struct UpstreamTls {
    /// None: the system roots.
    pub ca: Option<Vec<Vec<u8>>>,
    /// The client certificate chain (leaf first) and its PKCS#8/PKCS#1/SEC1 key.
    pub client: Option<(Vec<Vec<u8>>, Vec<u8>)>,
}

impl UpstreamTls {
    /// Reads the files: the CA certificates must parse; the client pair must match and be
    /// valid at `now`.
    pub fn load(settings: &UpstreamTlsSettings, now: i64) -> Result<UpstreamTls, FileProblem> {
        let ca = match &settings.ca_file {
            Some(file) => {
                files::roots(file)?; // each one usable as a trust anchor
                let pem = files::read(file)?;
                let certs = files::certificates(file, &pem)?;
                Some(certs.iter().map(|c| c.as_ref().to_vec()).collect())
            }
            None => None,
        };
        let client = match &settings.client_cert {
            Some((cert_file, key_file)) => {
                let pair = files::load_pair(cert_file, key_file, now)?;
                let key = files::private_key(key_file, &files::read(key_file)?)?;
                let chain = pair.certified.cert.iter().map(|c| c.as_ref().to_vec());
                Some((chain.collect(), key.secret_der().to_vec()))
            }
            None => None,
        };
        Ok(UpstreamTls { ca, client })
    }

    /// Every problem with the files (`check --deep`), each file on its own.
    pub fn check(settings: &UpstreamTlsSettings, now: i64) -> Vec<FileProblem> {
        let mut problems = Vec::new();
        if let Some(file) = &settings.ca_file {
            problems.extend(files::roots(file).err());
        }
        if let Some((cert, key)) = &settings.client_cert {
            problems.extend(super::check_pair(cert, key, now));
        }
        problems
    }
}
