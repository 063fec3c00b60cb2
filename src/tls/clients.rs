//! Client certificates (mTLS): the verifier the handshake uses, and what a connection's verified
//! certificate names, for `identity.trusted_clients`.
//!
//! With `client_auth = "optional"` the handshake accepts a client without a certificate, or with
//! one that does not verify against `client_ca_file` (a browser may offer a smartcard's): such a
//! client is simply not a trusted client. The client must still prove it holds the key of any
//! certificate it sends. With `"required"` only a certificate that verifies gets through.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};

use super::files::{self, FileProblem};
use crate::config::ClientCertMode;

/// The client CA, and the names of the verified certificates of the connections open now.
pub struct ClientCerts {
    /// Verifies a chain against `client_ca_file` (used for the connection's verdict).
    strict: Arc<dyn ClientCertVerifier>,
    /// What the handshake uses.
    handshake: Arc<dyn ClientCertVerifier>,
    /// SHA-256 of a verified leaf → its names, and how many open connections presented it.
    open: Mutex<HashMap<[u8; 32], Open>>,
}

/// A verified leaf's names, and how many open connections presented it.
type Open = (Arc<[String]>, usize);

impl ClientCerts {
    pub fn open(ca_file: &Path, mode: ClientCertMode) -> Result<ClientCerts, FileProblem> {
        let roots = Arc::new(files::roots(ca_file)?);
        let unusable = |e: rustls::server::VerifierBuilderError| FileProblem::Unusable {
            file: ca_file.to_path_buf(),
            why: format!("cannot verify clients with it ({e})"),
        };
        let ring = || Arc::new(rustls::crypto::ring::default_provider());
        let strict = WebPkiClientVerifier::builder_with_provider(roots.clone(), ring())
            .build()
            .map_err(unusable)?;
        let handshake: Arc<dyn ClientCertVerifier> = match mode {
            ClientCertMode::Required => strict.clone(),
            ClientCertMode::Optional => Arc::new(Lenient(
                WebPkiClientVerifier::builder_with_provider(roots, ring())
                    .allow_unauthenticated()
                    .build()
                    .map_err(unusable)?,
            )),
        };
        Ok(ClientCerts {
            strict,
            handshake,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// The verifier for the listener's handshakes.
    pub fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        self.handshake.clone()
    }

    /// A connection presented `chain` (leaf first): its names are known, if the chain verifies,
    /// until the returned guard (held for the connection's life) is dropped.
    pub fn connected(self: &Arc<Self>, chain: &[CertificateDer<'static>]) -> Option<Connected> {
        let leaf = chain.first()?;
        let key: [u8; 32] = Sha256::digest(leaf.as_ref()).into();
        let mut open = self.open.lock();
        if let Some((_, count)) = open.get_mut(&key) {
            *count += 1;
        } else {
            let verified = self
                .strict
                .verify_client_cert(leaf, &chain[1..], UnixTime::now())
                .is_ok();
            if !verified {
                return None;
            }
            open.insert(key, (files::client_names(leaf.as_ref()).into(), 1));
        }
        Some(Connected {
            certs: self.clone(),
            key,
        })
    }

    /// The names of the verified certificate whose leaf has this SHA-256 (what Pingora's
    /// `SslDigest::cert_digest` holds), while a connection that presented it is open.
    pub fn names(&self, leaf_sha256: &[u8]) -> Option<Arc<[String]>> {
        let key: [u8; 32] = leaf_sha256.try_into().ok()?;
        self.open.lock().get(&key).map(|(names, _)| names.clone())
    }
}

/// A connection with a verified client certificate; its names are forgotten when the last such
/// connection closes.
pub struct Connected {
    certs: Arc<ClientCerts>,
    key: [u8; 32],
}

impl Drop for Connected {
    fn drop(&mut self) {
        let mut open = self.certs.open.lock();
        if let Some((_, count)) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// `optional`: a certificate that does not verify is let through (as none); the signatures that
/// prove the client holds its key are checked as always.
#[derive(Debug)]
struct Lenient(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for Lenient {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
