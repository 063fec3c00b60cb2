//! Everything outside the reserved prefix passes through unchanged, apart from the identity rules.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::time::Duration;

use common::*;
use sha2::{Digest, Sha256};

async fn echo_of(r: reqwest::Response) -> serde_json::Value {
    r.json().await.unwrap()
}

fn request_header(echo: &serde_json::Value, name: &str) -> Vec<String> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(name))
        .map(|h| h[1].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn methods_statuses_headers_and_paths_pass_unchanged() {
    let w = World::start();
    rt().block_on(async {
        let r = client()
            .put(w.proxy.url("/some/path;x=1?status=201&q=a%20b&q=c"))
            .header("x-custom", "one")
            .header("x-custom-2", "two")
            .body("hello upstream")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        assert_eq!(header(r.headers(), "x-upstream"), "echo");
        let cookies: Vec<_> = r.headers().get_all("set-cookie").iter().collect();
        assert_eq!(cookies.len(), 2, "multi-valued response headers kept");
        let echo = echo_of(r).await;
        assert_eq!(echo["method"], "PUT");
        assert_eq!(echo["uri"], "/some/path;x=1?status=201&q=a%20b&q=c");
        assert_eq!(request_header(&echo, "x-custom"), vec!["one"]);
        assert_eq!(request_header(&echo, "x-custom-2"), vec!["two"]);
        assert_eq!(echo["body_len"], 14);

        for status in [204u16, 302, 404, 500, 503] {
            let r = client()
                .get(w.proxy.url(&format!("/x?status={status}")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), status);
            if status == 302 {
                assert_eq!(
                    header(r.headers(), "location"),
                    "/elsewhere",
                    "upstream redirects are not followed"
                );
            }
        }
        // Paths that merely start like the prefix belong to the upstream.
        let r = client()
            .get(w.proxy.url("/_pkbx/launch"))
            .send()
            .await
            .unwrap();
        assert_eq!(echo_of(r).await["uri"], "/_pkbx/launch");
    });
}

#[test]
fn several_megabytes_stream_both_ways() {
    let w = World::start();
    rt().block_on(async {
        let len = 8 * 1024 * 1024;
        let r = client()
            .get(w.proxy.url(&format!("/big?bytes={len}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body = r.bytes().await.unwrap();
        assert_eq!(body.len(), len);
        assert_eq!(&body[..], &pattern(len)[..]);

        let upload = pattern(6 * 1024 * 1024);
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            upload.chunks(100_000).map(|c| Ok(c.to_vec())).collect();
        let stream = tokio_stream::iter(chunks);
        let r = client()
            .post(w.proxy.url("/upload"))
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .unwrap();
        let echo = echo_of(r).await;
        assert_eq!(echo["body_len"], upload.len());
        assert_eq!(echo["body_sha256"], hex(&Sha256::digest(&upload)));
        assert_eq!(
            request_header(&echo, "transfer-encoding"),
            vec!["chunked"],
            "streamed, not buffered"
        );
    });
}

#[test]
fn keep_alive_connections_are_reused() {
    let w = World::start();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", w.config().port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    for n in 0..3 {
        write!(stream, "GET /ka/{n} HTTP/1.1\r\nHost: ehr.test\r\n\r\n").unwrap();
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(
            status.starts_with("HTTP/1.1 200"),
            "request {n} on one connection: {status}"
        );
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            assert!(!line.to_ascii_lowercase().starts_with("connection: close"));
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        assert!(String::from_utf8_lossy(&body).contains(&format!("/ka/{n}")));
    }
}

#[test]
fn identity_headers_from_untrusted_peers_are_stripped() {
    // Only 127.0.0.2 (the "authentication layer") is trusted.
    let w = World::start_with(|c| c.trusted_peers = vec!["127.0.0.2/32".into()]);
    rt().block_on(async {
        w.config().pair(&w.sim, "admin", "admin@pkb.example").await;
        let spoofed = client_from("127.0.0.1")
            .get(w.proxy.url("/page"))
            .header(USER_HEADER, "admin")
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "hop-by-hop")
            .send()
            .await
            .unwrap();
        let echo = echo_of(spoofed).await;
        assert!(
            request_header(&echo, USER_HEADER).is_empty(),
            "spoofed identity reached the upstream"
        );
        assert!(
            request_header(&echo, "x-hop").is_empty(),
            "a header named in Connection reached the upstream"
        );

        let r = client_from("127.0.0.1")
            .get(w.proxy.url("/_pkb/launch"))
            .header(USER_HEADER, "admin")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "a spoofed identity does not launch");

        let trusted = client_from("127.0.0.2")
            .get(w.proxy.url("/page"))
            .header(USER_HEADER, "admin")
            .send()
            .await
            .unwrap();
        assert_eq!(
            request_header(&echo_of(trusted).await, USER_HEADER),
            vec!["admin"]
        );
        let r = client_from("127.0.0.2")
            .get(w.proxy.url("/_pkb/launch"))
            .header(USER_HEADER, "admin")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 302);
    });
}

#[test]
fn sigterm_lets_in_flight_requests_finish() {
    // In-flight requests get `grace_period_seconds` to finish; this one needs half of it.
    let mut w = World::start_with(|c| c.grace_period_seconds = 3);
    let url = w.proxy.url("/slow?ms=1500");
    let in_flight = rt().spawn(async move { client().get(url).send().await.map(|r| r.status()) });
    std::thread::sleep(Duration::from_millis(300));
    let status = w.proxy.terminate();
    assert!(status.success(), "{status:?}");
    let answered = rt()
        .block_on(in_flight)
        .unwrap()
        .expect("in-flight request answered");
    assert_eq!(answered, 200);
}

/// Every header the upstream received whose name is `name` once case is ignored and `_` is read
/// as `-` (as CGI, WSGI, PHP and Rack read them).
fn any_spelling(echo: &serde_json::Value, name: &str) -> Vec<String> {
    let key = |n: &str| n.to_ascii_lowercase().replace('_', "-");
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| key(h[0].as_str().unwrap()) == key(name))
        .map(|h| h[1].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn identity_header_spellings_and_refused_values_never_reach_the_upstream() {
    let w = World::start_with(|c| c.trusted_peers = vec!["127.0.0.2/32".into()]);
    rt().block_on(async {
        let send = |from: &'static str,
                    headers: Vec<(&'static str, reqwest::header::HeaderValue)>| {
            let mut r = client_from(from).get(w.proxy.url("/page"));
            for (name, value) in headers {
                r = r.header(name, value);
            }
            async move { echo_of(r.send().await.unwrap()).await }
        };
        let v = |s: &str| reqwest::header::HeaderValue::from_str(s).unwrap();

        // From an untrusted peer, no spelling of the identity header passes.
        let echo = send(
            "127.0.0.1",
            vec![
                ("X_Authenticated_User", v("admin")),
                ("X-Authenticated_User", v("admin")),
                ("x-authenticated-user", v("admin")),
            ],
        )
        .await;
        assert_eq!(any_spelling(&echo, USER_HEADER), Vec::<String>::new());

        // From the trusted peer, the believed header passes; other spellings of it do not.
        let echo = send(
            "127.0.0.2",
            vec![
                (USER_HEADER, v("admin")),
                ("X_Authenticated_User", v("mallory")),
            ],
        )
        .await;
        assert_eq!(any_spelling(&echo, USER_HEADER), vec!["admin"]);

        // From the trusted peer, values pkb-edge does not believe do not reach the upstream:
        // two values, a 300-character id, a value that is not UTF-8.
        let refused = [
            vec![(USER_HEADER, v("admin")), (USER_HEADER, v("mallory"))],
            vec![(USER_HEADER, v(&"a".repeat(300)))],
            vec![(
                USER_HEADER,
                reqwest::header::HeaderValue::from_bytes(b"adm\xffin").unwrap(),
            )],
        ];
        for headers in refused {
            let echo = send("127.0.0.2", headers).await;
            assert_eq!(any_spelling(&echo, USER_HEADER), Vec::<String>::new());
        }

        // The decoration header is pkb-edge's in every spelling too.
        let echo = send("127.0.0.2", vec![("X_PKB_Data_Available", v("yes"))]).await;
        assert_eq!(
            any_spelling(&echo, "x-pkb-data-available"),
            Vec::<String>::new()
        );
    });
}

/// Sends `request` on a new connection and returns the status line.
fn raw_status(port: u16, request: &str) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut status = String::new();
    BufReader::new(stream).read_line(&mut status).unwrap();
    status
}

#[test]
fn an_http11_request_without_exactly_one_host_is_refused() {
    let w = World::start();
    let port = w.config().port;
    for request in [
        "GET /page HTTP/1.1\r\n\r\n",
        "GET /page HTTP/1.1\r\nHost: ehr.test\r\nHost: evil.test\r\n\r\n",
        "GET /_pkb/status HTTP/1.1\r\nConnection: close\r\n\r\n",
    ] {
        let status = raw_status(port, request);
        assert!(status.starts_with("HTTP/1.1 400"), "{request:?}: {status}");
    }
    // With one Host the same request passes, and HTTP/1.0 needs none.
    let status = raw_status(port, "GET /page HTTP/1.1\r\nHost: ehr.test\r\n\r\n");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let status = raw_status(port, "GET /page HTTP/1.0\r\n\r\n");
    assert!(status.contains(" 200 "), "{status}");
}
