//! Every open connection on the public listener, so that a new one at the limit can take the
//! place of the oldest idle one, and shutdown can wait for the last one to close.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::observe::metrics::metrics;

/// `Conn::idle_since` while a request is being read or answered.
const BUSY: u64 = u64::MAX;
/// `Conn::idle_since` once chosen to be shed: its reader hands on nothing more.
const SHED: u64 = u64::MAX - 1;

/// Where a connection is between two requests, as its reader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Phase {
    /// Waiting for the first byte of a request head.
    Waiting = 0,
    /// Part of a head has arrived; the rest must come before the head deadline.
    Head = 1,
    /// The head is complete; the request is being answered (its body read, if any).
    Request = 2,
}

/// One open connection.
#[derive(Debug)]
pub(super) struct Conn {
    /// The socket, for shutdown(2) when it is shed. Valid while the connection is in the table:
    /// it leaves the table (under the table's lock) before its socket is closed.
    fd: i32,
    slot: usize,
    phase: AtomicU8,
    /// Milliseconds after the table's epoch since which the connection has been idle, or BUSY.
    idle_since: AtomicU64,
}

impl Conn {
    pub(super) fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Waiting,
            1 => Phase::Head,
            _ => Phase::Request,
        }
    }

    /// The first byte of a head arrived: no longer idle, so never shed. False if the
    /// connection was chosen to be shed first: then nothing of it may go on.
    pub(super) fn head_started(&self) -> bool {
        if self.idle_since.swap(BUSY, Ordering::AcqRel) == SHED {
            self.idle_since.store(SHED, Ordering::Release);
            return false;
        }
        self.phase.store(Phase::Head as u8, Ordering::Relaxed);
        true
    }

    pub(super) fn head_complete(&self) {
        self.phase.store(Phase::Request as u8, Ordering::Relaxed);
    }
}

/// The open connections, and the limit on them.
pub(super) struct Table {
    slots: Mutex<Slots>,
    max: usize,
    epoch: Instant,
    emptied: Notify,
}

#[derive(Default)]
struct Slots {
    conns: Vec<Option<Arc<Conn>>>,
    free: Vec<usize>,
    open: usize,
}

impl Table {
    pub(super) fn new(max: usize) -> Table {
        Table {
            slots: Mutex::new(Slots::default()),
            max,
            epoch: Instant::now(),
            emptied: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Registers a new connection on socket `fd`, idle from now. At the limit, the connection
    /// idle the longest is shut down to make room; with none idle, the new one is refused (None).
    pub(super) fn admit(&self, fd: i32) -> Option<Arc<Conn>> {
        let mut slots = self.slots.lock();
        if slots.open >= self.max {
            if !Self::shed_oldest_idle(&slots) {
                closed("refused");
                return None;
            }
            closed("shed");
        }
        let slot = slots.free.pop().unwrap_or(slots.conns.len());
        let conn = Arc::new(Conn {
            fd,
            slot,
            phase: AtomicU8::new(Phase::Waiting as u8),
            idle_since: AtomicU64::new(self.now()),
        });
        if slot == slots.conns.len() {
            slots.conns.push(Some(conn.clone()));
        } else {
            slots.conns[slot] = Some(conn.clone());
        }
        slots.open += 1;
        metrics().downstream_connections.inc();
        Some(conn)
    }

    /// Claims the connection idle the longest (unless its reader claims it first, by starting
    /// a request) and shuts its socket down; its reader sees the end of the stream and closes
    /// it, which takes it out of the table (so `open` is over the limit only until then).
    fn shed_oldest_idle(slots: &Slots) -> bool {
        for _ in 0..4 {
            let oldest = slots
                .conns
                .iter()
                .flatten()
                .map(|c| (c, c.idle_since.load(Ordering::Acquire)))
                .filter(|(_, since)| *since < SHED)
                .min_by_key(|(_, since)| *since);
            let Some((conn, since)) = oldest else {
                return false;
            };
            let claimed =
                conn.idle_since
                    .compare_exchange(since, SHED, Ordering::AcqRel, Ordering::Acquire);
            if claimed.is_ok() {
                shut_down(conn.fd);
                return true;
            }
        }
        false
    }

    /// A request has been answered and the connection kept: idle again from now.
    pub(super) fn idle(&self, conn: &Conn) {
        conn.phase.store(Phase::Waiting as u8, Ordering::Relaxed);
        conn.idle_since.store(self.now(), Ordering::Relaxed);
    }

    /// Takes `conn` out of the table; call before its socket is closed.
    pub(super) fn release(&self, conn: &Conn) {
        let mut slots = self.slots.lock();
        if slots
            .conns
            .get(conn.slot)
            .and_then(|c| c.as_ref())
            .is_some()
        {
            slots.conns[conn.slot] = None;
            slots.free.push(conn.slot);
            slots.open -= 1;
            metrics().downstream_connections.dec();
            if slots.open == 0 {
                self.emptied.notify_waiters();
            }
        }
    }

    /// Returns once no connection is open.
    pub(super) async fn emptied(&self) {
        loop {
            let notified = self.emptied.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.slots.lock().open == 0 {
                return;
            }
            notified.await;
        }
    }
}

fn closed(reason: &str) {
    metrics()
        .downstream_connections_closed_total
        .with_label_values(&[reason])
        .inc();
}

/// Ends both directions of a socket another task is reading: its pending read returns end of
/// stream, and the task closes the connection as if the client had.
fn shut_down(fd: i32) {
    // SAFETY: shutdown(2) takes a descriptor and changes no memory. `fd` is still open: the
    // connection leaves the table (under the lock held here) before its socket is closed.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// The soft limit on open descriptors, raised first to the hard limit (as nginx's
/// `worker_rlimit_nofile` or Go's runtime do): a proxy holds one or two per connection.
pub fn descriptor_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or write only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// `server.max_connections` when not set: what `descriptors` leaves after a reserve for the
/// listeners, the store, logs and PKB calls, halved because a connection being answered also
/// holds one to the upstream.
pub fn default_max_connections(descriptors: u64) -> usize {
    let usable = descriptors.saturating_sub(128) / 2;
    usize::try_from(usable).unwrap_or(usize::MAX).max(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_limit_the_oldest_idle_connection_is_shed_and_busy_ones_never() {
        // Descriptors that are not sockets: shutdown(2) fails on them harmlessly.
        let table = Table::new(2);
        let first = table.admit(-1).unwrap();
        let second = table.admit(-1).unwrap();
        second.head_started();
        let third = table.admit(-1).expect("the idle first one made room");
        assert_eq!(first.idle_since.load(Ordering::Relaxed), SHED, "first shed");
        assert!(!first.head_started(), "a shed connection hands nothing on");
        table.release(&first);
        third.head_started();
        assert!(table.admit(-1).is_none(), "nothing idle: refused");
        table.idle(&second);
        assert!(
            table.admit(-1).is_some(),
            "second idle again: shed for the new one"
        );
    }

    #[test]
    fn the_default_limit_leaves_a_reserve_and_room_for_upstream_connections() {
        assert_eq!(default_max_connections(1024), 448);
        assert_eq!(default_max_connections(65_536), 32_704);
        assert_eq!(default_max_connections(100), 16);
    }

    #[tokio::test]
    async fn emptied_returns_when_the_last_connection_leaves() {
        let table = Arc::new(Table::new(10));
        let conn = table.admit(-1).unwrap();
        let waiter = tokio::spawn({
            let table = table.clone();
            async move { table.emptied().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        table.release(&conn);
        waiter.await.unwrap();
    }
}
