//! The public listener's connections: how many may be open, how long one may sit idle, how long
//! a request's head may take, and how shutdown waits for them.
//!
//! Pingora hands every accepted connection to a `ServerApp`. `Guarded` is that app, around
//! Pingora's HTTP proxy: it registers the connection in a [`table::Table`] (shedding the oldest
//! idle one at `server.max_connections`), wraps the stream in [`io::GuardedIo`] (the head
//! deadline), and runs the HTTP/1 requests on it one after another as Pingora's own loop does,
//! marking the connection idle between them and capping its keep-alive at
//! `server.keepalive_idle_secs` whatever the client asked for.

mod io;
mod table;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use tokio::io::AsyncWriteExt;

use super::tls::Handshake;

pub use table::{default_max_connections, descriptor_limit};

/// The limits `Guarded` keeps.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max: usize,
    pub keepalive_idle: Duration,
    pub header_timeout: Duration,
    /// How long shutdown waits for requests in flight before it gives up on them.
    pub grace: Duration,
}

/// Pingora's HTTP app `A`, behind the connection limits.
pub struct Guarded<A> {
    app: Arc<A>,
    table: Arc<table::Table>,
    limits: ConnectionLimits,
    /// The listener's TLS, when it speaks HTTPS: the handshake is made here, inside the limits.
    tls: Option<Arc<Handshake>>,
    /// Called once every connection has closed after shutdown began (the process then has
    /// nothing left to finish and need not sit out the rest of the grace period).
    on_drained: Box<dyn Fn(Duration) + Send + Sync>,
}

impl<A> Guarded<A> {
    pub fn new(
        app: A,
        limits: ConnectionLimits,
        tls: Option<Handshake>,
        on_drained: impl Fn(Duration) + Send + Sync + 'static,
    ) -> Guarded<A> {
        Guarded {
            app: Arc::new(app),
            table: Arc::new(table::Table::new(limits.max)),
            limits,
            tls: tls.map(Arc::new),
            on_drained: Box::new(on_drained),
        }
    }
}

/// How long one write of an answer may wait for the client to read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a client refused at the limit reads before the connection closes.
const REFUSED: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
Content-Length: 55\r\nRetry-After: 1\r\nConnection: close\r\n\r\n\
pkb-edge is at its connection limit; try again shortly.";

#[async_trait]
impl<A> ServerApp for Guarded<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(conn) = self.table.admit(stream.id()) else {
            if self.tls.is_some() {
                // No handshake is spent on a connection that cannot be served: it is closed.
                let mut stream = stream;
                pingora::protocols::Shutdown::shutdown(&mut *stream).await;
            } else {
                refuse(stream).await;
            }
            return None;
        };
        // A verified client certificate's names are known while `_client` is held: for as long
        // as this connection is open.
        // The handshake's future is boxed: this connection's own future (held for as long as
        // it is open, idle or not) then does not grow by the size of a handshake in progress.
        let (stream, _client) = match &self.tls {
            Some(tls) => Box::pin(tls.accept(stream)).await?,
            None => (stream, None),
        };
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let stream: Stream = Box::new(io::GuardedIo::new(
            stream,
            conn.clone(),
            self.table.clone(),
            self.limits.header_timeout,
        ));
        if h2 {
            // HTTP/2 multiplexes its requests; Pingora's own loop serves them, and its idle
            // timeout applies. Never idle here, so never shed.
            let _ = conn.head_started();
            conn.head_complete();
            return self.app.process_new(stream, shutdown).await;
        }
        let idle = self.limits.keepalive_idle;
        let mut stream = stream;
        let mut settings = None;
        loop {
            // Wait for the next request here, holding only the stream: Pingora's request
            // future (about 14 KB) and its buffers exist only while a request is being served.
            if !next_request(&mut stream, idle, shutdown).await {
                return None;
            }
            let mut session = ServerSession::new_http1(stream);
            if let Some(settings) = settings.take() {
                HttpPersistentSettings::apply_to_session(settings, &mut session);
            } else {
                let reuses = self
                    .app
                    .server_options()
                    .and_then(|o| o.keepalive_request_limit);
                session.set_keepalive_reuses_remaining(reuses);
            }
            // Keep-alive for the idle limit (the wait above enforces it), and a client that
            // stops reading its answer is cut off rather than held forever: Pingora sets no
            // write timeout of its own.
            session.set_keepalive(Some(idle.as_secs()));
            session.set_write_timeout(Some(WRITE_TIMEOUT));
            let reused = self.app.process_new_http(session, shutdown).await?;
            self.table.idle(&conn);
            (stream, settings) = reused.consume();
        }
    }

    async fn cleanup(&self) {
        let started = Instant::now();
        // Connections waiting for a request have closed at the shutdown signal (next_request);
        // those being answered close after their answer.
        self.app.http_cleanup().await;
        // Then the work requests left running (a token refresh must store what PKB rotated).
        let drained = async {
            self.table.emptied().await;
            crate::core::detached::finished().await;
        };
        if tokio::time::timeout(self.limits.grace, drained)
            .await
            .is_ok()
        {
            (self.on_drained)(started.elapsed());
        }
    }
}

/// Waits until the client sends the first bytes of a request (true), or closes the connection,
/// or sends nothing for `idle`, or shutdown begins first (false). A request already sent when
/// shutdown begins is still served.
async fn next_request(stream: &mut Stream, idle: Duration, shutdown: &ShutdownWatch) -> bool {
    let mut first = [0; 1];
    let mut shutdown = shutdown.clone();
    // Pingora's own timer (as its keep-alive wait uses): cheaper per request than tokio's.
    tokio::select! {
        biased;
        read = pingora::time::timeout(idle, stream.try_peek(&mut first)) => matches!(read, Ok(Ok(true))),
        _ = shutdown.wait_for(|stopping| *stopping) => false,
    }
}

/// Tells a client refused at the limit why (503), then closes its connection.
async fn refuse(mut stream: Stream) {
    let answer = async {
        stream.write_all(REFUSED).await?;
        stream.flush().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
    pingora::protocols::Shutdown::shutdown(&mut *stream).await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_refusal_states_its_length_truly() {
        let text = std::str::from_utf8(super::REFUSED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }
}
