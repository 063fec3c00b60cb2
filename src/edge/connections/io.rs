//! A downstream stream that gives each request head a total deadline. Pingora times each read of
//! a head on its own, so a head trickled a byte at a time never times out; this wrapper starts a
//! clock at a head's first byte and ends the stream with an error if the blank line that ends
//! the head has not arrived when it runs out.

use std::fmt;
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef, ALPN};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::table::{Conn, Phase, Table};

pub(super) struct GuardedIo {
    inner: Stream,
    conn: Arc<Conn>,
    table: Arc<Table>,
    header_timeout: Duration,
    /// Armed at a head's first byte.
    deadline: Option<Pin<Box<Sleep>>>,
    end: HeadEnd,
    /// Bytes read while waiting for a request (`try_peek`), given out first by the next reads;
    /// allocated only while it holds some.
    stash: Option<Stash>,
}

/// Enough for most request heads, so waiting costs no extra read.
const STASH: usize = 4096;

struct Stash {
    bytes: Box<[u8]>,
    start: usize,
}

impl GuardedIo {
    pub(super) fn new(
        inner: Stream,
        conn: Arc<Conn>,
        table: Arc<Table>,
        header_timeout: Duration,
    ) -> GuardedIo {
        GuardedIo {
            inner,
            conn,
            table,
            header_timeout,
            deadline: None,
            end: HeadEnd::default(),
            stash: None,
        }
    }

    /// Reads what the client has sent into the stash, once something has arrived: Ok(false) if
    /// the connection closed instead. Reads into the stack, so a wait that finds nothing yet
    /// allocates nothing; the stash is as long as what arrived.
    fn poll_stash(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if self.stash.is_some() {
            return Poll::Ready(Ok(true));
        }
        let mut space = [std::mem::MaybeUninit::<u8>::uninit(); STASH];
        let mut buf = ReadBuf::uninit(&mut space);
        match Pin::new(&mut *self).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(Ok(false)),
            Poll::Ready(Ok(())) => {
                self.stash = Some(Stash {
                    bytes: buf.filled().into(),
                    start: 0,
                });
                Poll::Ready(Ok(true))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Gives out stashed bytes into `buf`; false if there were none.
    fn unstash(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let Some(stash) = &mut self.stash else {
            return false;
        };
        let n = (stash.bytes.len() - stash.start).min(buf.remaining());
        buf.put_slice(&stash.bytes[stash.start..stash.start + n]);
        stash.start += n;
        if stash.start == stash.bytes.len() {
            self.stash = None;
        }
        true
    }

    /// Watches the bytes just read: the start of a head arms the deadline, its end disarms it.
    /// False if the connection was shed before its next request began: the bytes go nowhere.
    fn saw(&mut self, bytes: &[u8]) -> bool {
        if self.conn.phase() == Phase::Waiting {
            if !self.conn.head_started() {
                return false;
            }
            self.end = HeadEnd::default();
            let deadline = Instant::now() + self.header_timeout;
            match &mut self.deadline {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.deadline = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        } else if self.conn.phase() == Phase::Request {
            return true;
        }
        if self.end.find(bytes).is_some() {
            self.conn.head_complete();
        }
        true
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.conn.phase() == Phase::Head
            && self
                .deadline
                .as_mut()
                .is_some_and(|d| d.as_mut().poll(cx).is_ready())
    }
}

/// Finds the blank line that ends a head, across reads: a line feed after a line that was empty
/// or a lone carriage return, once a non-empty line (the request line) has been seen. Leading
/// blank lines, which RFC 9112 §2.2 lets a server ignore, do not end a head.
#[derive(Default)]
struct HeadEnd {
    seen_line: bool,
    /// Bytes on the current line other than a carriage return.
    line_len: usize,
}

impl HeadEnd {
    /// The offset just past the head's end in `bytes`, if it ends there.
    fn find(&mut self, bytes: &[u8]) -> Option<usize> {
        for (i, &b) in bytes.iter().enumerate() {
            match b {
                b'\n' if self.line_len == 0 && self.seen_line => return Some(i + 1),
                b'\n' => {
                    self.seen_line |= self.line_len > 0;
                    self.line_len = 0;
                }
                b'\r' => {}
                _ => self.line_len += 1,
            }
        }
        None
    }
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.unstash(buf) {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let (start, end) = (before, buf.filled().len());
                    if !this.saw(&buf.filled()[start..end]) {
                        // Shed: as if the client had closed first.
                        buf.set_filled(before);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.expired(cx) => {
                crate::observe::metrics::metrics()
                    .downstream_connections_closed_total
                    .with_label_values(&["header_timeout"])
                    .inc();
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "request head not complete within server.header_timeout_secs ({}s)",
                        this.header_timeout.as_secs()
                    ),
                )))
            }
            other => other,
        }
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Drop for GuardedIo {
    fn drop(&mut self) {
        // Before `inner` (the socket) is closed: a descriptor in the table is always open.
        self.table.release(&self.conn);
    }
}

impl fmt::Debug for GuardedIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedIo")
            .field("inner", &self.inner)
            .finish()
    }
}

#[async_trait]
impl Shutdown for GuardedIo {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for GuardedIo {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedIo {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedIo {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedIo {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for GuardedIo {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

/// Waits for the client's next bytes and keeps them for the next reads: true once some have
/// arrived (the first of them copied into `buf`), false if the connection closed instead.
#[async_trait]
impl Peek for GuardedIo {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if !std::future::poll_fn(|cx| self.poll_stash(cx)).await? {
            return Ok(false);
        }
        if let Some(stash) = &self.stash {
            let n = buf.len().min(stash.bytes.len() - stash.start);
            buf[..n].copy_from_slice(&stash.bytes[stash.start..stash.start + n]);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::HeadEnd;

    fn ends(chunks: &[&[u8]]) -> Option<(usize, usize)> {
        let mut end = HeadEnd::default();
        chunks
            .iter()
            .enumerate()
            .find_map(|(i, c)| end.find(c).map(|at| (i, at)))
    }

    #[test]
    fn a_head_ends_at_its_blank_line_however_it_is_split() {
        assert_eq!(
            ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"]),
            Some((0, 27))
        );
        assert_eq!(
            ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r", b"\n"]),
            Some((1, 1))
        );
        assert_eq!(ends(&[b"GET / HTTP/1.1\nHost: a\n\n"]), Some((0, 24)));
        let bytes = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(ends(&one_by_one), Some((bytes.len() - 1, 1)));
    }

    #[test]
    fn leading_blank_lines_and_unfinished_heads_do_not_end_it() {
        assert_eq!(ends(&[b"\r\n\r\n", b"GET / HTTP/1.1\r\n"]), None);
        assert_eq!(ends(&[b"GET / HTTP/1.1\r\nX: \r", b"\r\n"]), None);
    }
}
