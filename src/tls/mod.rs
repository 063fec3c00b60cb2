//! TLS for the public listener, without Pingora: the certificate and key files (read, checked,
//! every problem naming its file), the serving certificate that reloads without a restart, the
//! client certificates of mTLS, and the rustls server configuration made of them. `edge/tls.rs`
//! puts this on the listener.

mod clients;
pub mod files;
mod serving;
mod upstream;

use std::sync::Arc;

use rustls::ServerConfig;

pub use clients::{ClientCerts, Connected};
pub use files::FileProblem;
pub use serving::{Reload, ServingCert, PUBLIC_LISTENER};
pub use upstream::UpstreamTls;

use crate::config::{TlsSettings, TlsVersion};

/// What the listener's TLS is made of, loaded from the files `[tls]` names.
pub struct ListenerTls {
    pub serving: Arc<ServingCert>,
    /// With `client_ca_file`.
    pub clients: Option<Arc<ClientCerts>>,
    pub config: Arc<ServerConfig>,
}

impl ListenerTls {
    /// Loads the files; a broken one is named in the error.
    pub fn open(settings: &TlsSettings, now: i64) -> Result<ListenerTls, FileProblem> {
        let serving = Arc::new(ServingCert::open(
            &settings.cert_file,
            &settings.key_file,
            now,
        )?);
        let clients = match &settings.client_ca_file {
            Some(ca) => Some(Arc::new(ClientCerts::open(ca, settings.client_auth)?)),
            None => None,
        };
        let config = server_config(settings, serving.clone(), clients.as_deref()).map_err(|e| {
            FileProblem::Unusable {
                file: settings.cert_file.clone(),
                why: format!("no TLS configuration can be made with it ({e})"),
            }
        })?;
        Ok(ListenerTls {
            serving,
            clients,
            config,
        })
    }
}

/// TLS 1.2 and 1.3 (or only 1.3), h2 by ALPN when `http2`, HTTP/1.1 always; session tickets so
/// a returning client resumes instead of a full handshake.
fn server_config(
    settings: &TlsSettings,
    serving: Arc<ServingCert>,
    clients: Option<&ClientCerts>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match settings.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider).with_protocol_versions(versions)?;
    let builder = match clients {
        Some(c) => builder.with_client_cert_verifier(c.verifier()),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(serving);
    config.alpn_protocols = if settings.http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    match rustls::crypto::ring::Ticketer::new() {
        Ok(ticketer) => config.ticketer = ticketer,
        Err(e) => tracing::warn!("no TLS session tickets ({e}); clients make full handshakes"),
    }
    Ok(Arc::new(config))
}

/// Every problem with the files `[tls]` names, each file checked on its own (`check --deep`):
/// the certificate (readable, PEM, valid now), the key (readable, PEM), the two together, the
/// client CA.
pub fn check(settings: &TlsSettings, now: i64) -> Vec<FileProblem> {
    let mut problems = check_pair(&settings.cert_file, &settings.key_file, now);
    if let Some(ca) = &settings.client_ca_file {
        problems.extend(files::roots(ca).err());
    }
    problems
}

/// A certificate file and a key file, each on its own, then together.
fn check_pair(
    cert_file: &std::path::Path,
    key_file: &std::path::Path,
    now: i64,
) -> Vec<FileProblem> {
    let cert = files::read(cert_file).and_then(|pem| {
        let chain = files::certificates(cert_file, &pem)?;
        files::Validity::of(cert_file, &chain[0])?.check(cert_file, now)?;
        Ok(pem)
    });
    let key = files::read(key_file).and_then(|pem| {
        files::private_key(key_file, &pem)?;
        Ok(pem)
    });
    match (cert, key) {
        (Ok(cert), Ok(key)) => files::pair(cert_file, &cert, key_file, &key, now)
            .err()
            .into_iter()
            .collect(),
        (cert, key) => cert.err().into_iter().chain(key.err()).collect(),
    }
}
