//! Hostile clients, as raw bytes on a socket: idle and trickling connections, floods at the
//! descriptor limit, malformed and ambiguous framing. Each test asserts what reached the echo
//! upstream, and that a normal client is still served.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// A client speaking HTTP/1.1 by hand.
struct Raw {
    reader: BufReader<TcpStream>,
}

/// One response as a raw client reads it.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn connect(port: u16) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Raw {
            reader: BufReader::new(stream),
        }
    }

    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.reader.get_mut().write_all(bytes)
    }

    /// The next response, or None if the connection closed first.
    fn answer(&mut self) -> Option<Answer> {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return None,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => head.push_str(&line),
            }
        }
        let status = head.get(9..12)?.parse().ok()?;
        let lower = head.to_ascii_lowercase();
        let length = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse::<usize>().unwrap());
        let body = match length {
            Some(n) => {
                let mut body = vec![0; n];
                self.reader.read_exact(&mut body).ok()?;
                body
            }
            None if lower.contains("transfer-encoding: chunked") => self.chunked()?,
            None => Vec::new(),
        };
        Some(Answer { status, head, body })
    }

    fn chunked(&mut self) -> Option<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            self.reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim(), 16).ok()?;
            let mut chunk = vec![0; size + 2];
            self.reader.read_exact(&mut chunk).ok()?;
            if size == 0 {
                return Some(body);
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }

    /// Whether the server closes the connection within `within` (nothing more to read).
    fn closed_within(&mut self, within: Duration) -> bool {
        let stream = self.reader.get_ref();
        stream.set_read_timeout(Some(within)).unwrap();
        let mut byte = [0; 1];
        let closed = match self.reader.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        };
        let stream = self.reader.get_ref();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        closed
    }
}

const GET_PAGE: &[u8] = b"GET /page HTTP/1.1\r\nHost: ehr.test\r\n\r\n";

/// A normal client on a new connection gets the page.
fn served(port: u16) -> bool {
    let mut client = Raw::connect(port);
    client.send(GET_PAGE).is_ok() && client.answer().is_some_and(|a| a.status == 200)
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_keepalive_idle_secs() {
    let w = World::start_with(|c| c.server_extra = "keepalive_idle_secs = 1".into());
    let mut client = Raw::connect(w.config().port);
    // Whatever the client asks for (Pingora ignores this header anyway), the limit holds.
    client
        .send(b"GET /page HTTP/1.1\r\nHost: ehr.test\r\nKeep-Alive: timeout=600\r\n\r\n")
        .unwrap();
    assert_eq!(client.answer().unwrap().status, 200);
    assert!(client.closed_within(Duration::from_secs(15)));

    // A connection that never sends a request is closed too.
    let mut silent = Raw::connect(w.config().port);
    assert!(silent.closed_within(Duration::from_secs(15)));
    assert!(served(w.config().port));
}

#[test]
fn a_trickled_head_is_cut_off_at_header_timeout_secs() {
    let w = World::start_with(|c| c.server_extra = "header_timeout_secs = 1".into());
    let mut client = Raw::connect(w.config().port);
    client
        .send(b"GET /trickled HTTP/1.1\r\nHost: ehr.test\r\n")
        .unwrap();
    // One byte every 200 ms: each read is quick, the head never ends. The server must cut the
    // connection off well before the twelve seconds this would take.
    let started = Instant::now();
    let mut cut_off = false;
    for _ in 0..60 {
        if client.send(b"X").is_err() || client.closed_within(Duration::from_millis(200)) {
            cut_off = true;
            break;
        }
    }
    assert!(cut_off, "still open after {:?}", started.elapsed());
    assert_eq!(w.upstream.seen(), Vec::<String>::new());

    // A head that arrives in pieces within the deadline is served.
    let mut slow = Raw::connect(w.config().port);
    for piece in GET_PAGE.chunks(10) {
        slow.send(piece).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(slow.answer().unwrap().status, 200);
    assert_eq!(w.upstream.seen(), vec!["/page"]);
}

/// `pkb_edge_downstream_connections` as the ops listener reports it.
fn open_connections(ops_port: u16) -> u64 {
    let mut ops = Raw::connect(ops_port);
    ops.send(b"GET /metrics HTTP/1.1\r\nHost: ops\r\n\r\n")
        .unwrap();
    let text = String::from_utf8(ops.answer().unwrap().body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("pkb_edge_downstream_connections "))
        .unwrap_or_else(|| panic!("no gauge in\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn an_idle_flood_at_the_descriptor_limit_sheds_the_oldest_and_serves_new_clients() {
    let ops_port = free_port();
    // 256 descriptors: the limit derived from it is (256 - 128) / 2 = 64 connections.
    let w = World::start_with(|c| {
        c.descriptor_limit = Some(256);
        c.ops_port = Some(ops_port);
    });
    let port = w.config().port;
    let mut flood: Vec<Raw> = Vec::new();
    for i in 0..300 {
        let mut client = Raw::connect(port);
        client.send(GET_PAGE).unwrap();
        let answer = client.answer();
        assert_eq!(answer.map(|a| a.status), Some(200), "flood client {i}");
        flood.push(client);
    }
    // More idle connections than descriptors, and a new client is still served at once.
    assert!(served(port));
    // Shed connections leave the count as their readers close them: at most the limit soon.
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_connections(ops_port) > 64 {
        assert!(
            Instant::now() < deadline,
            "{} open",
            open_connections(ops_port)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The oldest were shed; the newest is still open and still served.
    assert!(flood[0].closed_within(Duration::from_secs(5)));
    let newest = flood.last_mut().unwrap();
    newest.send(GET_PAGE).unwrap();
    assert_eq!(newest.answer().map(|a| a.status), Some(200));
    let log = w.proxy.log();
    assert!(log.contains("max_connections=64"), "{log}");
}

/// Waits until the echo upstream has seen a request for `target` (it records the target before
/// it reads the body).
fn until_upstream_saw(w: &World, target: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !w.upstream.seen().iter().any(|t| t == target) {
        assert!(Instant::now() < deadline, "the upstream never saw {target}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A POST whose body has not been sent yet: the request is in flight until it is.
fn post_without_body(port: u16, target: &str) -> Raw {
    let mut client = Raw::connect(port);
    let head = format!("POST {target} HTTP/1.1\r\nHost: ehr.test\r\nContent-Length: 5\r\n\r\n");
    client.send(head.as_bytes()).unwrap();
    client
}

#[test]
fn at_the_limit_with_nothing_idle_a_new_client_gets_503() {
    let w = World::start_with(|c| {
        c.server_extra = "max_connections = 2".into();
    });
    let port = w.config().port;
    // Two requests in flight (their bodies still to come): neither connection may be shed.
    let mut busy: Vec<Raw> = ["/busy0", "/busy1"]
        .iter()
        .map(|t| post_without_body(port, t))
        .collect();
    until_upstream_saw(&w, "/busy0");
    until_upstream_saw(&w, "/busy1");
    let mut refused = Raw::connect(port);
    let _ = refused.send(GET_PAGE);
    let answer = refused.answer().expect("an answer before the close");
    assert_eq!(answer.status, 503);
    assert!(answer.head.contains("Retry-After: 1"), "{}", answer.head);
    // Once a request is answered, its connection is idle and can make room.
    busy[0].send(b"hello").unwrap();
    assert_eq!(busy[0].answer().unwrap().status, 200);
    assert!(served(port));
}

#[test]
fn sigterm_with_nothing_in_flight_exits_at_once() {
    // The default 30 s grace period: with nothing in flight there is nothing to wait for.
    let mut w = World::start_with(|c| c.grace_period_seconds = 30);
    let mut idle = Raw::connect(w.config().port);
    idle.send(GET_PAGE).unwrap();
    assert_eq!(idle.answer().unwrap().status, 200);
    w.proxy.signal("TERM");
    let status = w.proxy.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}

#[test]
fn sigterm_waits_for_the_request_in_flight_then_exits() {
    let mut w = World::start_with(|c| c.grace_period_seconds = 30);
    let mut in_flight = post_without_body(w.config().port, "/in-flight");
    until_upstream_saw(&w, "/in-flight");
    w.proxy.signal("TERM");
    std::thread::sleep(Duration::from_millis(500));
    in_flight.send(b"hello").unwrap();
    let answer = in_flight
        .answer()
        .expect("the request in flight is answered");
    assert_eq!(answer.status, 200);
    let echo: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(echo["body_len"], 5);
    let status = w.proxy.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}

/// Sends `bytes` on a new connection and reads every answer until the server closes it.
fn exchange(port: u16, bytes: &[u8]) -> Vec<Answer> {
    let mut client = Raw::connect(port);
    let _ = client.send(bytes);
    std::iter::from_fn(|| client.answer()).collect()
}

/// Framing a lenient next hop could read differently never smuggles a second request. With
/// both `Transfer-Encoding` and `Content-Length`, the request is read by its transfer coding
/// alone, goes upstream without the length, and its connection is closed after the answer
/// (RFC 9112 §6.1); the rest are refused with 400 before anything reaches the upstream, except a
/// chunked body that turns out malformed part-way, which is cut off there.
#[test]
fn ambiguous_framing_is_refused_and_never_smuggles_a_request() {
    let w = World::start();
    let port = w.config().port;
    let smuggled: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: ehr.test\r\n\r\n";
    let post = |headers: &str, body: &[u8]| {
        [
            format!("POST /a HTTP/1.1\r\nHost: ehr.test\r\n{headers}\r\n").as_bytes(),
            body,
            smuggled,
        ]
        .concat()
    };
    for (name, headers) in [
        (
            "CL+TE",
            "Content-Length: 47\r\nTransfer-Encoding: chunked\r\n",
        ),
        (
            "TE+CL",
            "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
        ),
    ] {
        let answers = exchange(port, &post(headers, b"0\r\n\r\n"));
        assert_eq!(
            answers.len(),
            1,
            "{name}: one answer, then the connection closes"
        );
        assert_eq!(answers[0].status, 200, "{name}");
        let echo: serde_json::Value = serde_json::from_slice(&answers[0].body).unwrap();
        assert_eq!(echo["body_len"], 0, "{name}");
        let headers = echo["headers"].to_string().to_ascii_lowercase();
        assert!(!headers.contains("content-length"), "{name}: {headers}");
    }
    let cases = [
        (
            "two lengths",
            post("Content-Length: 0\r\nContent-Length: 42\r\n", b""),
            false,
        ),
        (
            "a signed length",
            post("Content-Length: +42\r\n", b""),
            false,
        ),
        (
            "an unknown coding",
            post("Content-Length: 42\r\nTransfer-Encoding: xchunked\r\n", b""),
            false,
        ),
        (
            "a bad chunk size",
            post("Transfer-Encoding: chunked\r\n", b"zz\r\n"),
            true,
        ),
    ];
    for (name, bytes, head_may_pass) in cases {
        let before = w.upstream.seen().len();
        let answers = exchange(port, &bytes);
        let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
        assert_eq!(statuses, vec![400], "{name}");
        let seen = w.upstream.seen();
        assert!(
            !seen.iter().any(|t| t.contains("smuggled")),
            "{name}: {seen:?}"
        );
        let passed = seen.len() - before;
        assert!(
            passed == 0 || (head_may_pass && passed == 1),
            "{name}: {seen:?}"
        );
    }
    assert!(served(port));
}

#[test]
fn folded_underscored_and_repeated_identity_headers_never_reach_the_upstream() {
    // 127.0.0.1 (this test's raw sockets) is not trusted.
    let w = World::start_with(|c| c.trusted_peers = vec!["127.0.0.2/32".into()]);
    let port = w.config().port;
    let heads: [&[u8]; 4] = [
        b"GET /h1 HTTP/1.1\r\nHost: ehr.test\r\nX-Authenticated-User: admin\r\n\r\n",
        b"GET /h2 HTTP/1.1\r\nHost: ehr.test\r\nX_Authenticated_User: admin\r\nx-authenticated_user: admin\r\n\r\n",
        b"GET /h3 HTTP/1.1\r\nHost: ehr.test\r\nX-Other: a\r\n X-Authenticated-User: admin\r\n\r\n",
        b"GET /h4 HTTP/1.1\r\nHost: ehr.test\r\nX-Authenticated-User : admin\r\n\r\n",
    ];
    for head in heads {
        {
            let answer = exchange_one(port, head).expect("an answer");
            let text = String::from_utf8_lossy(&answer.body).to_ascii_lowercase();
            assert!(
                answer.status == 400 || !text.replace('_', "-").contains("x-authenticated-user"),
                "{}: {text}",
                String::from_utf8_lossy(head)
            );
        }
    }
    assert!(served(port));
}

/// One request on a new connection, and its answer (none if the server just closed).
fn exchange_one(port: u16, head: &[u8]) -> Option<Answer> {
    let mut client = Raw::connect(port);
    client.send(head).ok()?;
    client.answer()
}

#[test]
fn absolute_form_targets_and_oversized_heads_go_nowhere_else() {
    let w = World::start();
    let port = w.config().port;
    // An absolute-form target naming another host than Host is ambiguous: refused by Pingora.
    let answer = exchange_one(
        port,
        b"GET http://evil.test/abs?x=1 HTTP/1.1\r\nHost: ehr.test\r\n\r\n",
    );
    assert_eq!(answer.map(|a| a.status), Some(400));
    assert_eq!(w.upstream.seen(), Vec::<String>::new());
    // Naming the same host, it goes to the configured upstream (there is no other), in origin
    // form as an origin server expects it.
    let answer = exchange_one(
        port,
        b"GET http://ehr.test/abs?x=1 HTTP/1.1\r\nHost: ehr.test\r\n\r\n",
    );
    assert_eq!(answer.map(|a| a.status), Some(200));
    assert_eq!(w.upstream.seen(), vec!["/abs?x=1"]);
    // A target that is only a query is read as one on the root, or refused: never a 500.
    let answer = exchange_one(port, b"GET ?q=1 HTTP/1.1\r\nHost: ehr.test\r\n\r\n");
    let status = answer.map(|a| a.status);
    assert!(matches!(status, Some(200 | 400)), "{status:?}");
    // A head of 200 KB is refused before anything reaches the upstream.
    let mut huge = b"GET /huge HTTP/1.1\r\nHost: ehr.test\r\n".to_vec();
    for i in 0..2000 {
        huge.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "a".repeat(90)).as_bytes());
    }
    huge.extend_from_slice(b"\r\n");
    let answer = exchange_one(port, &huge);
    let status = answer.map(|a| a.status);
    assert!(matches!(status, None | Some(400 | 413 | 431)), "{status:?}");
    assert!(!w.upstream.seen().iter().any(|t| t.contains("huge")));
    assert!(served(port));
}
