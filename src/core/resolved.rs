//! An address kept fresh by resolving a host name again and again: a resolution that still
//! holds the address in use keeps it (no flapping between the addresses of one name), one that
//! does not moves to its first address, and a failed one keeps the last good address.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;

pub struct ResolvedAddr {
    current: RwLock<SocketAddr>,
    /// The last resolution failed (so a streak of failures is reported once).
    failing: AtomicBool,
}

/// What a resolution changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolution {
    Unchanged,
    Changed {
        from: SocketAddr,
        to: SocketAddr,
    },
    /// The last good address stays; `first` for the first failure of a streak.
    Failed {
        first: bool,
        error: String,
    },
    /// It works again after failures, with this address.
    Recovered(SocketAddr),
}

impl ResolvedAddr {
    pub fn new(addr: SocketAddr) -> ResolvedAddr {
        ResolvedAddr {
            current: RwLock::new(addr),
            failing: AtomicBool::new(false),
        }
    }

    /// The address to connect to now.
    pub fn get(&self) -> SocketAddr {
        *self.current.read()
    }

    /// Takes a resolution's result.
    pub fn update(&self, result: std::io::Result<Vec<SocketAddr>>) -> Resolution {
        let addrs = match result {
            Ok(addrs) if !addrs.is_empty() => addrs,
            Ok(_) => return self.failed("no addresses".into()),
            Err(e) => return self.failed(e.to_string()),
        };
        let recovered = self.failing.swap(false, Ordering::Relaxed);
        let from = self.get();
        if addrs.contains(&from) {
            return if recovered {
                Resolution::Recovered(from)
            } else {
                Resolution::Unchanged
            };
        }
        let to = addrs[0];
        *self.current.write() = to;
        Resolution::Changed { from, to }
    }

    fn failed(&self, error: String) -> Resolution {
        let first = !self.failing.swap(true, Ordering::Relaxed);
        Resolution::Failed { first, error }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_change_is_taken_and_a_failure_keeps_the_last_good_address() {
        let r = ResolvedAddr::new(a("10.0.0.1:443"));
        assert_eq!(r.update(Ok(vec![a("10.0.0.1:443")])), Resolution::Unchanged);
        // Round-robin DNS: the address in use is among the answers; no move.
        let both = vec![a("10.0.0.2:443"), a("10.0.0.1:443")];
        assert_eq!(r.update(Ok(both)), Resolution::Unchanged);
        assert_eq!(r.get(), a("10.0.0.1:443"));
        assert_eq!(
            r.update(Ok(vec![a("10.0.0.9:443"), a("10.0.0.8:443")])),
            Resolution::Changed {
                from: a("10.0.0.1:443"),
                to: a("10.0.0.9:443")
            }
        );
        assert_eq!(r.get(), a("10.0.0.9:443"));
        let gone = || Err(std::io::Error::other("no such host"));
        assert_eq!(
            r.update(gone()),
            Resolution::Failed {
                first: true,
                error: "no such host".into()
            }
        );
        assert!(matches!(
            r.update(gone()),
            Resolution::Failed { first: false, .. }
        ));
        assert!(matches!(
            r.update(Ok(vec![])),
            Resolution::Failed { first: false, .. }
        ));
        assert_eq!(r.get(), a("10.0.0.9:443"), "the last good address stays");
        assert_eq!(
            r.update(Ok(vec![a("10.0.0.9:443")])),
            Resolution::Recovered(a("10.0.0.9:443"))
        );
        assert!(matches!(
            r.update(gone()),
            Resolution::Failed { first: true, .. }
        ));
    }
}
