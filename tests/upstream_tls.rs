//! TLS to the upstream: an https EHR with a private CA, one that demands pkb-edge's client
//! certificate, the wrong CA (502 and a log line that says why), a broken file at start-up, and
//! an upstream given by host name.

mod common;

use std::sync::{Arc, Mutex};

use common::certs::{Issued, Leaf, TestCa};
use common::*;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The client certificates (leaf, DER) an upstream verified.
type Seen = Arc<Mutex<Vec<Vec<u8>>>>;

#[derive(Debug)]
struct Recording(Arc<dyn ClientCertVerifier>, Seen);

impl ClientCertVerifier for Recording {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.0.verify_client_cert(end_entity, intermediates, now)?;
        self.1.lock().unwrap().push(end_entity.as_ref().to_vec());
        Ok(verified)
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

fn der_of(pem: &str) -> Vec<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The echo upstream over HTTPS with `server`'s certificate; with `clients_from`, it demands a
/// client certificate from that CA and records each one it verified.
fn https_upstream(server: &Issued, clients_from: Option<&TestCa>) -> (Upstream, Seen) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let seen = Seen::default();
    let builder = match clients_from {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(der_of(&ca.pem).remove(0)).unwrap();
            let strict = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::new(rustls::crypto::ring::default_provider()),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(Arc::new(Recording(strict, seen.clone())))
        }
        None => builder.with_no_client_auth(),
    };
    let key = rustls_pemfile::private_key(&mut server.key_pem.as_bytes())
        .unwrap()
        .unwrap();
    let config = builder
        .with_single_cert(der_of(&server.cert_pem), key)
        .unwrap();
    (Upstream::start_tls(Arc::new(config)), seen)
}

fn pointed_at(c: &mut ProxyConfig, upstream: &Upstream, table: String) {
    c.upstream_url = Some(format!("https://127.0.0.1:{}", upstream.addr.port()));
    c.extra_toml = format!("[upstream_tls]\n{table}");
}

#[test]
fn an_https_upstream_with_a_private_ca_and_its_own_name() {
    let ca = TestCa::new("EHR CA");
    let dir = tempfile::tempdir().unwrap();
    let ehr = ca.issue(dir.path(), "ehr", &Leaf::server(&["ehr.internal"], 1));
    let ca_file = ca.write(dir.path(), "ehr-ca.pem");
    let (upstream, _) = https_upstream(&ehr, None);
    let w = World::start_with(|c| {
        let table = format!(
            "ca_file = \"{}\"\nserver_name = \"ehr.internal\"",
            ca_file.display()
        );
        pointed_at(c, &upstream, table);
    });
    rt().block_on(async {
        let r = w.get_as("dr.jones", "/chart?tab=1").await;
        assert_eq!(r.status(), 200);
        let (uri, headers) = upstream_saw(r).await;
        assert_eq!(uri, "/chart?tab=1");
        assert!(headers
            .iter()
            .any(|(k, v)| k == "x-authenticated-user" && v == "dr.jones"));
    });
    assert_eq!(upstream.seen(), vec!["/chart?tab=1"]);
}

#[test]
fn an_upstream_that_demands_a_client_certificate_gets_pkb_edges() {
    let ca = TestCa::new("EHR CA");
    let edge_ca = TestCa::new("Edge clients CA");
    let dir = tempfile::tempdir().unwrap();
    let ehr = ca.issue(dir.path(), "ehr", &Leaf::server(&["127.0.0.1"], 1));
    let ca_file = ca.write(dir.path(), "ehr-ca.pem");
    let mine = edge_ca.issue(
        dir.path(),
        "edge",
        &Leaf::client(&["pkb-edge.trust.test"], "pkb-edge"),
    );
    let (upstream, seen) = https_upstream(&ehr, Some(&edge_ca));

    let w = World::start_with(|c| {
        let table = format!(
            "ca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"",
            ca_file.display(),
            mine.cert_file.display(),
            mine.key_file.display()
        );
        pointed_at(c, &upstream, table);
    });
    rt().block_on(async {
        let r = w.get_as("dr.jones", "/chart").await;
        assert_eq!(r.status(), 200);
    });
    let presented = seen.lock().unwrap().clone();
    assert_eq!(presented, vec![der_of(&mine.cert_pem)[0].as_ref().to_vec()]);
    drop(w);

    // Without one, the EHR refuses the handshake: pkb-edge's 502 page.
    let w = World::start_with(|c| {
        pointed_at(c, &upstream, format!("ca_file = \"{}\"", ca_file.display()));
    });
    rt().block_on(async {
        let r = w.get_as("dr.jones", "/chart").await;
        assert_eq!(r.status(), 502);
        assert!(header(r.headers(), "content-type").starts_with("text/html"));
        assert!(r
            .text()
            .await
            .unwrap()
            .contains("could not be reached just now"));
    });
}

#[test]
fn the_wrong_ca_gives_502_and_a_log_line_that_says_why() {
    let ca = TestCa::new("EHR CA");
    let other = TestCa::new("Not the EHR's CA");
    let dir = tempfile::tempdir().unwrap();
    let ehr = ca.issue(dir.path(), "ehr", &Leaf::server(&["127.0.0.1"], 1));
    let wrong = other.write(dir.path(), "wrong-ca.pem");
    let (upstream, _) = https_upstream(&ehr, None);
    let w = World::start_with(|c| {
        pointed_at(c, &upstream, format!("ca_file = \"{}\"", wrong.display()));
    });
    rt().block_on(async {
        let r = client()
            .get(w.proxy.url("/chart"))
            .header(USER_HEADER, "dr.jones")
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "upstream_unavailable");
    });
    assert!(upstream.seen().is_empty(), "nothing reached the EHR");
    let log = w.proxy.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("the upstream could not be used"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains("UnknownIssuer") && lines[0].contains(&upstream.addr.to_string()),
        "{}",
        lines[0]
    );
}

#[test]
fn a_broken_upstream_file_stops_start_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("ehr-ca.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    let sim = Sim::start();
    let upstream = Upstream::start();
    let mut config = ProxyConfig::new(&dir, &upstream, &sim);
    config.upstream_url = Some(format!("https://127.0.0.1:{}", upstream.addr.port()));
    config.extra_toml = format!("[upstream_tls]\nca_file = \"{}\"", not_pem.display());
    let log = match Proxy::try_start(&dir, &config) {
        Ok(_) => panic!("started with an upstream CA file that is not PEM"),
        Err(log) => log,
    };
    assert!(log.contains(&not_pem.display().to_string()), "{log}");
    assert!(log.contains("not a PEM certificate"), "{log}");
}

#[test]
fn an_upstream_by_host_name() {
    let w = World::start_with(|c| {
        c.upstream_url = Some(format!("http://localhost:{}", c.upstream.port()));
        c.top_extra = "upstream_dns_secs = 1".into();
    });
    rt().block_on(async {
        for n in 0..3 {
            let r = w.get_as("dr.jones", &format!("/named/{n}")).await;
            assert_eq!(r.status(), 200);
            if n < 2 {
                // Across a re-resolution or two.
                tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
            }
        }
    });
    assert_eq!(w.upstream.seen().len(), 3);
}
