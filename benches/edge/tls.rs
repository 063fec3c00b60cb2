//! The HTTPS variants: the serving certificates (ECDSA P-256, as pkb-edge's docs recommend, and
//! RSA 2048 for comparison), made here with one private CA, and what nginx needs to serve the
//! same certificate.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// A certificate and key written to files.
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pair {
    /// The `[tls]` table pkb-edge serves this pair with (HTTP/1.1 only: wrk speaks nothing else).
    pub fn table(&self) -> &'static str {
        let table = format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nhttp2 = false\n",
            self.cert.display(),
            self.key.display()
        );
        Box::leak(table.into_boxed_str())
    }
}

/// An ECDSA P-256 pair and an RSA 2048 pair for 127.0.0.1, signed by one CA (its PEM third).
pub fn pairs(dir: &Path) -> (Pair, Pair, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "bench CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issue = |name: &str, key: KeyPair| {
        let params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()]).unwrap();
        let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
        let pair = Pair {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&pair.cert, cert.pem()).unwrap();
        std::fs::write(&pair.key, key.serialize_pem()).unwrap();
        pair
    };
    let ecdsa = issue("ecdsa", KeyPair::generate().unwrap());
    let rsa_pem = pkb_edge::core::rsa_keys::generate_private_key().unwrap();
    let rsa = issue("rsa", KeyPair::from_pem(&rsa_pem).unwrap());
    (ecdsa, rsa, ca_cert.pem())
}

/// A TLS client trusting the bench CA.
pub fn connector(ca_pem: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// nginx's https server block for `pair`, forwarding to `upstream` as the plain one does.
/// TLS 1.2 and 1.3, as pkb-edge.
pub fn nginx_server(port: u16, pair: &Pair) -> String {
    format!(
        r#"
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
        }}
    }}"#,
        cert = pair.cert.display(),
        key = pair.key.display()
    )
}
