//! `demo --tls`: a private CA made for the run, the certificate pkb-edge (and the EHR demo's
//! front) serves, the front's client certificate (mTLS to pkb-edge), and an HTTPS listener for
//! the front. Nothing here is for production: the keys live in the demo's state directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};

/// The name in the front's client certificate (`identity.trusted_clients`).
pub const FRONT_CLIENT_NAME: &str = "demo-front.pkb-edge.test";

/// The demo's certificates, written under its state directory.
pub struct DemoCerts {
    pub ca_file: PathBuf,
    pub ca_pem: String,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The front's client certificate and key, PEM, concatenated.
    pub front_identity_pem: String,
    /// base64 SHA-256 of the server certificate's public key, for Chromium's
    /// `--ignore-certificate-errors-spki-list`.
    pub spki_sha256: String,
}

fn issue(
    names: Vec<String>,
    cn: &str,
    usage: ExtendedKeyUsagePurpose,
    ca: &(Certificate, KeyPair),
) -> Result<(Certificate, KeyPair), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![usage];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, &ca.0, &ca.1)?;
    Ok((cert, key))
}

impl DemoCerts {
    /// Makes a CA, a server certificate for 127.0.0.1 and localhost, and the front's client
    /// certificate, and writes what pkb-edge reads to `dir`.
    pub fn make(dir: &Path) -> Result<DemoCerts, String> {
        let made = || -> Result<_, rcgen::Error> {
            let ca_key = KeyPair::generate()?;
            let mut ca = CertificateParams::new(Vec::<String>::new())?;
            ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            ca.distinguished_name
                .push(DnType::CommonName, "pkb-edge demo CA");
            ca.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let ca = (ca.self_signed(&ca_key)?, ca_key);
            let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
            let server = issue(names, "localhost", ExtendedKeyUsagePurpose::ServerAuth, &ca)?;
            let front = issue(
                vec![FRONT_CLIENT_NAME.to_string()],
                FRONT_CLIENT_NAME,
                ExtendedKeyUsagePurpose::ClientAuth,
                &ca,
            )?;
            Ok((ca, server, front))
        };
        let (ca, server, front) = made().map_err(|e| format!("cannot make certificates: {e}"))?;
        let certs = DemoCerts {
            ca_file: dir.join("demo-ca.pem"),
            ca_pem: ca.0.pem(),
            server_cert: dir.join("demo-server.pem"),
            server_key: dir.join("demo-server.key"),
            front_identity_pem: format!("{}{}", front.0.pem(), front.1.serialize_pem()),
            spki_sha256: base64::engine::general_purpose::STANDARD
                .encode(Sha256::digest(server.1.public_key_der())),
        };
        let write = |path: &Path, text: String| {
            std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
        };
        write(&certs.ca_file, certs.ca_pem.clone())?;
        write(&certs.server_cert, server.0.pem())?;
        write(&certs.server_key, server.1.serialize_pem())?;
        Ok(certs)
    }

    /// The `[tls]` table pkb-edge serves with; with `client_ca`, it asks for client certificates
    /// from the demo CA.
    pub fn table(&self, client_ca: bool) -> String {
        let mut table = format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nhsts_max_age_secs = 300\n",
            self.server_cert.display(),
            self.server_key.display()
        );
        if client_ca {
            table += &format!("client_ca_file = \"{}\"\n", self.ca_file.display());
        }
        table
    }

    /// The front's TLS listener, serving the same certificate as pkb-edge.
    pub fn listener(&self, tcp: TcpListener) -> Result<TlsListener, String> {
        use crate::tls::files;
        let read = |path: &Path| files::read(path).map_err(|e| e.to_string());
        let chain = files::certificates(&self.server_cert, &read(&self.server_cert)?)
            .map_err(|e| e.to_string())?;
        let key = files::private_key(&self.server_key, &read(&self.server_key)?)
            .map_err(|e| e.to_string())?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| format!("the front's TLS: {e}"))?;
        let mut config = config;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsListener::spawn(tcp, tokio_rustls::TlsAcceptor::from(Arc::new(config)))
            .map_err(|e| format!("the front's listener: {e}"))
    }
}

/// An HTTPS listener for axum: connections are accepted and their handshakes made in the
/// background, several at once (a browser opens connections it may never use).
pub struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream, SocketAddr)>,
    addr: SocketAddr,
}

type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

impl TlsListener {
    /// Accepts on `tcp` from now on (in the current runtime), each connection's handshake in a
    /// task of its own.
    pub fn spawn(
        tcp: TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
    ) -> std::io::Result<TlsListener> {
        let addr = tcp.local_addr()?;
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = tcp.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let handshake = acceptor.accept(stream);
                    if let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(10), handshake).await
                    {
                        let _ = tx.send((tls, peer)).await;
                    }
                });
            }
        });
        Ok(TlsListener { ready, addr })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accepting task never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
