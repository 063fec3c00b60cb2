//! The public listener as the TLS edge, over real TLS on loopback with certificates made here:
//! HTTPS and h2, TLS versions, certificate reload, mTLS-trusted identity, the redirect listener
//! and HSTS, and `check --deep` naming broken files.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::certs::{reqwest_identity, reqwest_root, Issued, Leaf, TestCa};
use common::*;
use x509_parser::prelude::{FromDer, X509Certificate};

const GATEWAY: &str = "sso-gateway.trust.test";

/// A World whose listener speaks HTTPS, and the directories of the files it reads (removed with
/// it, after the proxy has stopped).
struct TlsWorld {
    world: World,
    _files: Vec<tempfile::TempDir>,
}

impl std::ops::Deref for TlsWorld {
    type Target = World;
    fn deref(&self) -> &World {
        &self.world
    }
}

/// A World whose listener speaks HTTPS with a certificate for 127.0.0.1 from `ca`.
fn tls_world(ca: &TestCa, tls_extra: &str, adjust: impl FnOnce(&mut ProxyConfig)) -> TlsWorld {
    let dir = tempfile::tempdir().unwrap();
    let server = ca.issue(
        dir.path(),
        "server",
        &Leaf::server(&["127.0.0.1", "localhost"], 1),
    );
    let tls = format!(
        "cert_file = \"{}\"\nkey_file = \"{}\"\nreload_secs = 1\n{tls_extra}",
        server.cert_file.display(),
        server.key_file.display()
    );
    let world = World::start_with(|c| {
        c.tls = Some(tls);
        adjust(c);
    });
    TlsWorld {
        world,
        _files: vec![dir],
    }
}

fn https_client(ca: &TestCa) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest_root(ca))
        .use_rustls_tls()
}

#[test]
fn https_passthrough_and_launch_over_http1_and_h2() {
    let ca = TestCa::new("Test Edge CA");
    let w = tls_world(&ca, "http2 = true", |_| {});
    rt().block_on(async {
        w.config()
            .pair(&w.sim, "dr.jones", "jones@pkb.example")
            .await;
        let h1 = https_client(&ca).http1_only().build().unwrap();
        let h2 = https_client(&ca).build().unwrap();
        for (client, version) in [
            (&h1, reqwest::Version::HTTP_11),
            (&h2, reqwest::Version::HTTP_2),
        ] {
            let page = client
                .get(w.proxy.url("/chart?x=1"))
                .header(USER_HEADER, "dr.jones")
                .send()
                .await
                .unwrap();
            assert_eq!(page.version(), version, "negotiated by ALPN");
            assert_eq!(page.status(), 200);
            let (uri, headers) = upstream_saw(page).await;
            assert_eq!(uri, "/chart?x=1");
            assert!(headers
                .iter()
                .any(|(k, v)| k == "x-authenticated-user" && v == "dr.jones"));

            let launch = client
                .get(
                    w.proxy
                        .url("/_pkb/launch?contextNationalId=9434765919&contextNationalIdType=NHS"),
                )
                .header(USER_HEADER, "dr.jones")
                .send()
                .await
                .unwrap();
            assert_eq!(launch.version(), version);
            assert_eq!(launch.status(), 302);
            let location = header(launch.headers(), "location");
            assert!(
                location.starts_with(&format!("{}/otp.action?otpToken=", w.sim.url())),
                "{location}"
            );

            let big = client
                .get(w.proxy.url("/big?bytes=1048576"))
                .send()
                .await
                .unwrap();
            assert_eq!(big.version(), version);
            assert_eq!(big.status(), 200);
            let body = big.bytes().await.unwrap();
            assert_eq!(body.len(), 1_048_576);
            assert_eq!(&body[..], &pattern(1_048_576)[..]);
        }
        assert_eq!(w.sim.count("otp"), 2, "one launch over each protocol");
    });
}

#[test]
fn https_pairing_and_decoration() {
    let ca = TestCa::new("Test Edge CA");
    let w = tls_world(&ca, "", |c| {
        c.extra_toml =
            "[decorate]\npatient_from = { path_regex = '^/patients/(\\d{10})' }\n".into();
    });
    rt().block_on(async {
        let client = https_client(&ca).build().unwrap();
        // Pairing starts over HTTPS, and PKB is told to come back to the https callback.
        let pair = client
            .get(w.proxy.url("/_pkb/pair"))
            .header(USER_HEADER, "dr.jones")
            .send()
            .await
            .unwrap();
        assert_eq!(pair.status(), 302);
        let authorize = header(pair.headers(), "location").to_string();
        let callback = url::Url::parse(&authorize)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "redirect_uri")
            .map(|(_, v)| v.into_owned())
            .unwrap();
        assert_eq!(callback, w.proxy.url("/_pkb/callback"));

        w.config()
            .pair(&w.sim, "dr.jones", "jones@pkb.example")
            .await;
        let page = client
            .get(w.proxy.url("/patients/9990000018"))
            .header(USER_HEADER, "dr.jones")
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        assert_eq!(header(page.headers(), "x-pkb-data-available"), "true");
    });
}

#[test]
fn an_upgrade_hands_the_https_listener_over() {
    let ca = TestCa::new("Test Edge CA");
    let dir = tempfile::tempdir().unwrap();
    let first = ca.issue(dir.path(), "live", &Leaf::server(&["localhost"], 3001));
    let w = World::start_with(|c| {
        c.tls = Some(format!(
            "cert_file = \"{}\"\nkey_file = \"{}\"",
            first.cert_file.display(),
            first.key_file.display()
        ));
    });
    let port = w.config().port;
    rt().block_on(async {
        let mut held = Held::connect(&ca, port).await;
        assert!(held.get("/before").await.contains(" 200 "));
        // The new process reads the pair at start-up: a renewed one is served from then on.
        let renewed = ca.issue(dir.path(), "renewed", &Leaf::server(&["localhost"], 3002));
        swap_in(&renewed, &first.cert_file, &first.key_file);
        let new = w.proxy.upgrade(&w.dir);
        // The old process may accept for its grace period still; then only the new one does.
        until_served(&ca, port, 3002).await;
        let mut fresh = Held::connect(&ca, port).await;
        assert!(fresh.get("/after").await.contains(" 200 "));
        drop(new);
    });
}

#[test]
fn without_http2_only_http1_is_offered() {
    let ca = TestCa::new("Test Edge CA");
    let w = tls_world(&ca, "http2 = false", |_| {});
    rt().block_on(async {
        let r = https_client(&ca)
            .build()
            .unwrap()
            .get(w.proxy.url("/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.version(), reqwest::Version::HTTP_11);
    });
}

/// A ClientHello as a client of `version` (0x0302 TLS 1.1, 0x0303 TLS 1.2) sends it without the
/// supported_versions extension: ECDHE-ECDSA-AES128-GCM-SHA256 on P-256 or X25519.
fn client_hello(version: u16) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    body.extend([7u8; 32]); // random
    body.push(0); // no session id
    body.extend([0x00, 0x02, 0xc0, 0x2b]);
    body.extend([0x01, 0x00]); // null compression
    let extensions: &[u8] = &[
        0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17, // supported_groups
        0x00, 0x0b, 0x00, 0x02, 0x01, 0x00, // ec_point_formats
        0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03, // signature_algorithms
    ];
    body.extend((extensions.len() as u16).to_be_bytes());
    body.extend(extensions);
    let mut handshake = vec![0x01, 0, 0, body.len() as u8];
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01, 0, handshake.len() as u8];
    record.extend(handshake);
    record
}

/// The first record's type and first bytes of what the server answers `hello` with.
fn answer_to(port: u16, hello: &[u8]) -> [u8; 7] {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(hello).unwrap();
    let mut answer = [0u8; 7];
    stream.read_exact(&mut answer).unwrap();
    answer
}

#[test]
fn tls_1_1_is_refused_and_1_2_only_when_allowed() {
    let ca = TestCa::new("Test Edge CA");
    let w = tls_world(&ca, "", |_| {});
    let port = w.config().port;
    let tls12 = answer_to(port, &client_hello(0x0303));
    assert_eq!(
        (tls12[0], tls12[5]),
        (0x16, 0x02),
        "TLS 1.2: a ServerHello: {tls12:?}"
    );
    let tls11 = answer_to(port, &client_hello(0x0302));
    assert_eq!(
        (tls11[0], tls11[5]),
        (0x15, 2),
        "TLS 1.1: a fatal alert: {tls11:?}"
    );

    rt().block_on(async {
        let tls12 = https_client(&ca)
            .max_tls_version(reqwest::tls::Version::TLS_1_2)
            .build()
            .unwrap();
        assert_eq!(
            tls12.get(w.proxy.url("/")).send().await.unwrap().status(),
            200
        );
    });
    drop(w);

    let w = tls_world(&ca, "min_version = \"1.3\"", |_| {});
    rt().block_on(async {
        let tls12 = https_client(&ca)
            .max_tls_version(reqwest::tls::Version::TLS_1_2)
            .build()
            .unwrap();
        let refused = tls12.get(w.proxy.url("/")).send().await;
        assert!(
            refused.is_err(),
            "TLS 1.2 under min_version = 1.3: {refused:?}"
        );
        let tls13 = https_client(&ca).build().unwrap();
        assert_eq!(
            tls13.get(w.proxy.url("/")).send().await.unwrap().status(),
            200
        );
    });
}

/// A TLS connection that stays open: the serial of the certificate it was served, and requests
/// sent on it one after another.
struct Held {
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
}

fn client_config(ca: &TestCa) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let der = rustls_pemfile::certs(&mut ca.pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    roots.add(der).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

impl Held {
    async fn connect(ca: &TestCa, port: u16) -> Held {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(client_config(ca))
            .connect(name, tcp)
            .await
            .unwrap();
        Held { tls }
    }

    fn serial(&self) -> u64 {
        let der = &self.tls.get_ref().1.peer_certificates().unwrap()[0];
        let (_, cert) = X509Certificate::from_der(der.as_ref()).unwrap();
        cert.serial.to_u64_digits().first().copied().unwrap_or(0)
    }

    /// GET `path` on this connection; the status line.
    async fn get(&mut self, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        self.tls.write_all(request.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // The echo's answer has a Content-Length; read until the head and that many bytes.
        loop {
            let n = self.tls.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "connection closed: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    return head.lines().next().unwrap().to_string();
                }
            }
        }
    }
}

/// Waits (polling new connections) until one is served the certificate with `serial`.
async fn until_served(ca: &TestCa, port: u16, serial: u64) {
    let started = Instant::now();
    loop {
        if Held::connect(ca, port).await.serial() == serial {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "serial {serial} never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn swap_in(issued: &Issued, cert_file: &Path, key_file: &Path) {
    // As certbot does: new files renamed over the old, key first.
    let tmp = cert_file.with_extension("new");
    std::fs::write(&tmp, &issued.key_pem).unwrap();
    std::fs::rename(&tmp, key_file).unwrap();
    std::fs::write(&tmp, &issued.cert_pem).unwrap();
    std::fs::rename(&tmp, cert_file).unwrap();
}

#[test]
fn a_swapped_pair_serves_new_connections_while_open_ones_keep_theirs() {
    let ca = TestCa::new("Test Edge CA");
    let dir = tempfile::tempdir().unwrap();
    let first = ca.issue(dir.path(), "live", &Leaf::server(&["localhost"], 1001));
    let ops = free_port();
    let w = World::start_with(|c| {
        c.ops_port = Some(ops);
        c.tls = Some(format!(
            "cert_file = \"{}\"\nkey_file = \"{}\"\nreload_secs = 1",
            first.cert_file.display(),
            first.key_file.display()
        ));
    });
    let port = w.config().port;
    rt().block_on(async {
        let mut held = Held::connect(&ca, port).await;
        assert_eq!(held.serial(), 1001);
        assert!(held.get("/before").await.contains(" 200 "));
        let expiry = series_value(
            &ops_metrics(ops).await,
            "pkb_edge_tls_cert_expiry_timestamp_seconds{listener=\"public\"}",
        )
        .unwrap();

        let second = ca.issue(dir.path(), "second", &Leaf::server(&["localhost"], 1002));
        swap_in(&second, &first.cert_file, &first.key_file);
        until_served(&ca, port, 1002).await;
        assert!(
            held.get("/after").await.contains(" 200 "),
            "the open connection goes on"
        );
        assert_eq!(held.serial(), 1001, "and keeps its certificate");

        // A key that does not belong to the certificate: refused, the good pair still serves.
        let stranger = ca.issue(dir.path(), "stranger", &Leaf::server(&["localhost"], 1003));
        let mismatched = Issued {
            key_pem: second.key_pem.clone(),
            ..stranger
        };
        swap_in(&mismatched, &first.cert_file, &first.key_file);
        let refused = |text: &str| {
            series_value(text, "pkb_edge_tls_reload_total{outcome=\"refused\"}").unwrap()
        };
        let started = Instant::now();
        while refused(&ops_metrics(ops).await) < 1.0 {
            assert!(started.elapsed() < Duration::from_secs(20), "never refused");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(Held::connect(&ca, port).await.serial(), 1002);

        // An expired certificate with its own key: refused too.
        let expired = ca.issue(
            dir.path(),
            "expired",
            &Leaf {
                expired: true,
                ..Leaf::server(&["localhost"], 1004)
            },
        );
        swap_in(&expired, &first.cert_file, &first.key_file);
        let started = Instant::now();
        while refused(&ops_metrics(ops).await) < 2.0 {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "expired pair never refused"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(Held::connect(&ca, port).await.serial(), 1002);
        let metrics = ops_metrics(ops).await;
        assert_eq!(
            series_value(&metrics, "pkb_edge_tls_reload_total{outcome=\"reloaded\"}"),
            Some(1.0)
        );
        let now_expiry = series_value(
            &metrics,
            "pkb_edge_tls_cert_expiry_timestamp_seconds{listener=\"public\"}",
        )
        .unwrap();
        assert!(
            now_expiry >= expiry,
            "the gauge follows the serving certificate"
        );
        let cert = first.cert_file.display().to_string();
        let key = first.key_file.display().to_string();
        let log = w.proxy.log();
        let refusals: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("reload refused"))
            .collect();
        assert_eq!(
            refusals.len(),
            2,
            "one line per broken pair, not one per reading:\n{log}"
        );
        assert!(
            refusals[0].contains(&key) && refusals[0].contains("does not match"),
            "{}",
            refusals[0]
        );
        assert!(
            refusals[1].contains(&cert) && refusals[1].contains("expired"),
            "{}",
            refusals[1]
        );
    });
}

#[test]
fn sighup_reloads_at_once() {
    let ca = TestCa::new("Test Edge CA");
    let dir = tempfile::tempdir().unwrap();
    let first = ca.issue(dir.path(), "live", &Leaf::server(&["localhost"], 2001));
    let w = World::start_with(|c| {
        c.tls = Some(format!(
            "cert_file = \"{}\"\nkey_file = \"{}\"\nreload_secs = 3600",
            first.cert_file.display(),
            first.key_file.display()
        ));
    });
    rt().block_on(async {
        assert_eq!(Held::connect(&ca, w.config().port).await.serial(), 2001);
        let second = ca.issue(dir.path(), "second", &Leaf::server(&["localhost"], 2002));
        swap_in(&second, &first.cert_file, &first.key_file);
        w.proxy.signal("HUP");
        until_served(&ca, w.config().port, 2002).await;
    });
}

/// A world in header mode trusting client certificates named `GATEWAY` from the gateway CA.
fn mtls_world(gateway: &TestCa, server_ca: &TestCa, client_auth: &str, peers: &[&str]) -> TlsWorld {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = gateway.write(dir.path(), "gateway-ca.pem");
    let peers: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
    let mut w = tls_world(
        server_ca,
        &format!(
            "client_ca_file = \"{}\"\nclient_auth = \"{client_auth}\"",
            ca_file.display()
        ),
        |c| {
            c.identity = Some(format!(
                "mode = \"header\"\nheader = \"{USER_HEADER}\"\ntrusted_peers = [{}]\ntrusted_clients = [\"{GATEWAY}\"]",
                peers.join(", ")
            ));
        },
    );
    w._files.push(dir);
    w
}

async fn user_seen(w: &World, client: reqwest::Client) -> Option<String> {
    let r = client
        .get(w.proxy.url("/who"))
        .header(USER_HEADER, "dr.jones")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, headers) = upstream_saw(r).await;
    headers
        .into_iter()
        .find(|(k, _)| k == "x-authenticated-user")
        .map(|(_, v)| v)
}

#[test]
fn the_identity_header_is_believed_only_from_a_trusted_client_certificate() {
    let server_ca = TestCa::new("Test Edge CA");
    let gateway = TestCa::new("Gateway CA");
    let other = TestCa::new("Someone else's CA");
    let dir = tempfile::tempdir().unwrap();
    let right = gateway.issue(dir.path(), "right", &Leaf::client(&[GATEWAY], "gateway"));
    let by_cn = gateway.issue(dir.path(), "cn", &Leaf::client(&[], GATEWAY));
    let wrong_name = gateway.issue(
        dir.path(),
        "wrong",
        &Leaf::client(&["intruder.trust.test"], "intruder"),
    );
    let wrong_ca = other.issue(dir.path(), "other", &Leaf::client(&[GATEWAY], GATEWAY));
    let with = |issued: &Issued| {
        https_client(&server_ca)
            .identity(reqwest_identity(issued))
            .build()
            .unwrap()
    };

    let w = mtls_world(&gateway, &server_ca, "optional", &[]);
    rt().block_on(async {
        assert_eq!(
            user_seen(&w, with(&right)).await.as_deref(),
            Some("dr.jones")
        );
        assert_eq!(
            user_seen(&w, with(&by_cn)).await.as_deref(),
            Some("dr.jones"),
            "the CN, without SANs"
        );
        assert_eq!(
            user_seen(&w, https_client(&server_ca).build().unwrap()).await,
            None,
            "no certificate"
        );
        assert_eq!(user_seen(&w, with(&wrong_ca)).await, None, "another CA");
        assert_eq!(
            user_seen(&w, with(&wrong_name)).await,
            None,
            "the right CA, the wrong name"
        );
    });
    drop(w);

    // Both rules: the right certificate from outside trusted_peers is not enough.
    let w = mtls_world(&gateway, &server_ca, "optional", &["10.9.9.0/24"]);
    rt().block_on(async {
        assert_eq!(
            user_seen(&w, with(&right)).await,
            None,
            "peer outside trusted_peers"
        );
    });
    drop(w);
    let w = mtls_world(&gateway, &server_ca, "optional", &["127.0.0.1/32"]);
    rt().block_on(async {
        assert_eq!(
            user_seen(&w, with(&right)).await.as_deref(),
            Some("dr.jones"),
            "both rules hold"
        );
    });
}

#[test]
fn required_client_auth_fails_the_handshake_without_a_certificate() {
    let server_ca = TestCa::new("Test Edge CA");
    let gateway = TestCa::new("Gateway CA");
    let dir = tempfile::tempdir().unwrap();
    let right = gateway.issue(dir.path(), "right", &Leaf::client(&[GATEWAY], "gateway"));
    let w = mtls_world(&gateway, &server_ca, "required", &[]);
    rt().block_on(async {
        let bare = https_client(&server_ca).build().unwrap();
        let refused = bare.get(w.proxy.url("/")).send().await;
        assert!(
            refused.is_err(),
            "no certificate, no connection: {refused:?}"
        );
        let with = https_client(&server_ca)
            .identity(reqwest_identity(&right))
            .build()
            .unwrap();
        assert_eq!(user_seen(&w, with).await.as_deref(), Some("dr.jones"));
    });
}

#[test]
fn the_redirect_listener_answers_308_and_hsts_is_on_every_answer() {
    let ca = TestCa::new("Test Edge CA");
    let redirect = free_port();
    let w = tls_world(
        &ca,
        &format!("hsts_max_age_secs = 31536000\nredirect_listen = \"127.0.0.1:{redirect}\""),
        |_| {},
    );
    wait_listening(redirect, "redirect listener", Duration::from_secs(10));
    rt().block_on(async {
        let r = client()
            .get(format!(
                "http://127.0.0.1:{redirect}/chart/1?tab=meds&x=%2F"
            ))
            .header(USER_HEADER, "dr.jones")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 308);
        assert_eq!(
            header(r.headers(), "location"),
            format!(
                "https://127.0.0.1:{}/chart/1?tab=meds&x=%2F",
                w.config().port
            )
        );
        assert!(
            w.upstream.seen().is_empty(),
            "the redirect listener proxies nothing"
        );

        let https = https_client(&ca).build().unwrap();
        let hsts = "max-age=31536000";
        let page = https.get(w.proxy.url("/page")).send().await.unwrap();
        assert_eq!(
            header(page.headers(), "strict-transport-security"),
            hsts,
            "upstream page"
        );
        let own = https
            .get(w.proxy.url("/_pkb/status"))
            .header(USER_HEADER, "dr.jones")
            .send()
            .await
            .unwrap();
        assert_eq!(
            header(own.headers(), "strict-transport-security"),
            hsts,
            "own page"
        );
        let missing = https
            .get(w.proxy.url("/_pkb/nothing-here"))
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 404);
        assert_eq!(
            header(missing.headers(), "strict-transport-security"),
            hsts,
            "error page"
        );
    });
    drop(w);

    let w = tls_world(&ca, "", |_| {});
    rt().block_on(async {
        let page = https_client(&ca)
            .build()
            .unwrap()
            .get(w.proxy.url("/page"))
            .send()
            .await
            .unwrap();
        assert!(
            page.headers().get("strict-transport-security").is_none(),
            "off unless configured"
        );
    });
}

/// GET / on the redirect listener at `port`, on a new connection kept open: the status line.
fn redirect_once(port: u16) -> (TcpStream, String) {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: ehr.test\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            other => panic!("no answer from the redirect listener: {other:?}"),
        }
    }
    let text = String::from_utf8_lossy(&got).to_string();
    (conn, text.lines().next().unwrap_or_default().to_string())
}

#[test]
fn an_idle_flood_on_the_redirect_listener_leaves_the_https_listener_serving() {
    let ca = TestCa::new("Test Edge CA");
    let redirect = free_port();
    // 256 descriptors: more idle redirect connections than that would starve the process.
    let w = tls_world(
        &ca,
        &format!("redirect_listen = \"127.0.0.1:{redirect}\""),
        |c| {
            c.descriptor_limit = Some(256);
        },
    );
    wait_listening(redirect, "redirect listener", Duration::from_secs(10));
    let mut flood = Vec::new();
    for i in 0..300 {
        let (conn, status) = redirect_once(redirect);
        assert!(status.contains(" 308 "), "flood client {i}: {status}");
        flood.push(conn);
    }
    rt().block_on(async {
        let page = https_client(&ca)
            .build()
            .unwrap()
            .get(w.proxy.url("/after-flood"))
            .send()
            .await;
        assert_eq!(
            page.unwrap().status(),
            200,
            "the HTTPS listener still serves"
        );
    });
    assert!(redirect_once(redirect).1.contains(" 308 "));
}

#[test]
fn start_up_refuses_a_broken_pair_naming_the_file() {
    let ca = TestCa::new("Test Edge CA");
    let dir = tempfile::tempdir().unwrap();
    let good = ca.issue(dir.path(), "good", &Leaf::server(&["localhost"], 1));
    let other = ca.issue(dir.path(), "other", &Leaf::server(&["localhost"], 2));
    let sim = Sim::start();
    let upstream = Upstream::start();
    let mut config = ProxyConfig::new(&dir, &upstream, &sim);
    config.tls = Some(format!(
        "cert_file = \"{}\"\nkey_file = \"{}\"",
        good.cert_file.display(),
        other.key_file.display()
    ));
    let log = match Proxy::try_start(&dir, &config) {
        Ok(_) => panic!("started with a key that does not match its certificate"),
        Err(log) => log,
    };
    assert!(log.contains(&other.key_file.display().to_string()), "{log}");
    assert!(log.contains("does not match"), "{log}");
}

/// `pkb-edge check --deep` on the config file at `path`.
fn check_deep(path: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_pkb-edge"))
        .args(["check", "--deep", "--config"])
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn check_deep_names_each_broken_file() {
    let ca = TestCa::new("Test Edge CA");
    let dir = tempfile::tempdir().unwrap();
    let good = ca.issue(dir.path(), "good", &Leaf::server(&["localhost"], 1));
    let other = ca.issue(dir.path(), "other", &Leaf::server(&["localhost"], 2));
    let expired = ca.issue(
        dir.path(),
        "expired",
        &Leaf {
            expired: true,
            ..Leaf::server(&["localhost"], 3)
        },
    );
    let not_pem = dir.path().join("not-pem.pem");
    std::fs::write(&not_pem, "this is not a certificate").unwrap();
    let missing = dir.path().join("missing-ca.pem");
    let cases: Vec<(String, String, Vec<String>)> = vec![
        (
            format!(
                "cert_file = \"{}\"\nkey_file = \"{}\"",
                not_pem.display(),
                good.key_file.display()
            ),
            "not a PEM certificate".into(),
            vec![not_pem.display().to_string()],
        ),
        (
            format!(
                "cert_file = \"{}\"\nkey_file = \"{}\"",
                good.cert_file.display(),
                other.key_file.display()
            ),
            "does not match".into(),
            vec![other.key_file.display().to_string()],
        ),
        (
            format!(
                "cert_file = \"{}\"\nkey_file = \"{}\"",
                expired.cert_file.display(),
                expired.key_file.display()
            ),
            "expired".into(),
            vec![expired.cert_file.display().to_string()],
        ),
        (
            format!(
                "cert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"",
                good.cert_file.display(),
                not_pem.display(),
                missing.display()
            ),
            "cannot read".into(),
            vec![not_pem.display().to_string(), missing.display().to_string()],
        ),
    ];
    let sim = Sim::start();
    let upstream = Upstream::start();
    for (tls, problem, files) in cases {
        let mut config = ProxyConfig::new(&dir, &upstream, &sim);
        config.tls = Some(tls);
        let path = dir.path().join("check.toml");
        std::fs::write(&path, config.toml()).unwrap();
        let out = check_deep(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(&problem), "{problem}: {stderr}");
        for file in files {
            assert!(stderr.contains(&file), "{file} named: {stderr}");
        }
    }
    // The upstream's files too.
    let mut config = ProxyConfig::new(&dir, &upstream, &sim);
    config.upstream_url = Some(format!("https://127.0.0.1:{}", upstream.addr.port()));
    config.extra_toml = format!(
        "[upstream_tls]\nca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"",
        not_pem.display(),
        good.cert_file.display(),
        other.key_file.display()
    );
    let path = dir.path().join("upstream.toml");
    std::fs::write(&path, config.toml()).unwrap();
    let out = check_deep(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "upstream_tls: {}: not a PEM certificate",
            not_pem.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "upstream_tls: {}: the key does not match",
            other.key_file.display()
        )),
        "{stderr}"
    );

    // And a good pair passes.
    let mut config = ProxyConfig::new(&dir, &upstream, &sim);
    config.tls = Some(format!(
        "cert_file = \"{}\"\nkey_file = \"{}\"",
        good.cert_file.display(),
        good.key_file.display()
    ));
    let path = dir.path().join("good.toml");
    std::fs::write(&path, config.toml()).unwrap();
    let out = check_deep(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `promtool`, which `scripts/setup.sh` installs; the test fails (never skips) without it.
fn promtool(args: &[&str]) -> std::process::Output {
    std::process::Command::new("promtool")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("promtool not found ({e}): run scripts/setup.sh"))
}

#[test]
fn the_certificate_alerts_are_valid_and_fire_before_expiry() {
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/pkb-edge-alerts.yml");
    let checked = promtool(&["check", "rules", rules]);
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(String::from_utf8_lossy(&checked.stdout).contains("SUCCESS: 3 rules found"));

    // Two instances: one certificate expires at day 10, the other at day 60. Only the first
    // warns (after its `for`), and turns critical in its last 3 days; a refusal alerts.
    let dir = tempfile::tempdir().unwrap();
    let test = format!(
        r#"rule_files: ["{rules}"]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'pkb_edge_tls_cert_expiry_timestamp_seconds{{instance="a",listener="public"}}'
        values: '864000+0x12000'
      - series: 'pkb_edge_tls_cert_expiry_timestamp_seconds{{instance="b",listener="public"}}'
        values: '5184000+0x12000'
      - series: 'pkb_edge_tls_reload_total{{instance="a",outcome="refused"}}'
        values: '0+0x20 1+0x20'
    alert_rule_test:
      - eval_time: 30m
        alertname: PkbEdgeCertificateExpiresSoon
      - eval_time: 2h
        alertname: PkbEdgeCertificateExpiresSoon
        exp_alerts:
          - exp_labels: {{severity: warning, instance: a, listener: public}}
            exp_annotations:
              summary: "pkb-edge's public certificate expires in 9d 22h 0m 0s"
              description: "Renew it; pkb-edge picks the new pair up within tls.reload_secs (or on SIGHUP)."
      - eval_time: 6d
        alertname: PkbEdgeCertificateExpiresVerySoon
      - eval_time: 7d12h
        alertname: PkbEdgeCertificateExpiresVerySoon
        exp_alerts:
          - exp_labels: {{severity: critical, instance: a, listener: public}}
            exp_annotations:
              summary: "pkb-edge's public certificate expires in 2d 12h 0m 0s"
              description: "Browsers will refuse the site when it expires. Renew the certificate now."
      - eval_time: 20m
        alertname: PkbEdgeCertificateReloadRefused
      - eval_time: 30m
        alertname: PkbEdgeCertificateReloadRefused
        exp_alerts:
          - exp_labels: {{severity: warning, instance: a, outcome: refused}}
            exp_annotations:
              summary: "pkb-edge refused a new certificate or key"
              description: "The log line 'certificate reload refused' names the file and the problem; `pkb-edge check --deep` says the same."
"#
    );
    let path = dir.path().join("alerts-test.yml");
    std::fs::write(&path, test).unwrap();
    let tested = promtool(&["test", "rules", path.to_str().unwrap()]);
    assert!(
        tested.status.success(),
        "{}{}",
        String::from_utf8_lossy(&tested.stdout),
        String::from_utf8_lossy(&tested.stderr)
    );
}
