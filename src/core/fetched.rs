//! A document pkb-edge fetches from someone else (NHS login's discovery and keys, the JWT
//! identity provider's keys) and keeps: used while fresh, fetched again when stale or when it
//! lacks what a caller needs (a new `kid`, at most every `min_interval`), and served stale while
//! its source is down, with a short back-off so callers do not each wait out a timeout.
//!
//! Not for: how a document is fetched or parsed. The caller passes the fetch; this module only
//! decides whether to run it and what to hand out when it fails.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// When a cached document is fetched again.
#[derive(Debug, Clone, Copy)]
pub struct RefetchPolicy {
    /// How long a copy is used before it is fetched again.
    pub ttl: Duration,
    /// The least time between two fetches prompted by a copy that lacks what a caller needs.
    pub min_interval: Duration,
    /// After a failed fetch, how long nobody waits on another one.
    pub backoff: Duration,
}

/// Why there is no document to hand out.
#[derive(Debug, PartialEq, Eq)]
pub enum FetchFailed<E> {
    /// This caller's fetch failed and nothing was cached.
    Failed(E),
    /// A fetch failed moments ago, nothing is cached, and the back-off has not run out.
    BackingOff,
}

struct Copy<T> {
    value: Arc<T>,
    fetched: Instant,
}

struct Slot<T> {
    cached: Option<Copy<T>>,
    failed_at: Option<Instant>,
}

/// One cached document: one fetch at a time, the last good copy kept.
pub struct Fetched<T> {
    slot: tokio::sync::Mutex<Slot<T>>,
    policy: RefetchPolicy,
    loaded: AtomicBool,
}

impl<T> Fetched<T> {
    pub fn new(policy: RefetchPolicy) -> Self {
        Fetched {
            slot: tokio::sync::Mutex::new(Slot {
                cached: None,
                failed_at: None,
            }),
            policy,
            loaded: AtomicBool::new(false),
        }
    }

    /// Whether a copy has ever been fetched (for readiness).
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Relaxed)
    }

    /// The document, as fresh as the policy asks and holding what `usable` looks for if it can:
    /// the cached copy while it is fresh and usable; otherwise `fetch` runs (unless a fetch failed
    /// within the back-off, or a fresh copy was fetched less than `min_interval` ago), and when
    /// that fails the cached copy is handed out anyway. The caller checks `usable` again on what
    /// it gets: a stale or unusable copy is better than none while the source is down.
    pub async fn get<E, Fut>(
        &self,
        usable: impl Fn(&T) -> bool,
        fetch: impl FnOnce() -> Fut,
    ) -> Result<Arc<T>, FetchFailed<E>>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let mut slot = self.slot.lock().await;
        let fresh = |c: &Copy<T>| c.fetched.elapsed() < self.policy.ttl;
        if let Some(c) = slot
            .cached
            .as_ref()
            .filter(|c| fresh(c) && usable(&c.value))
        {
            return Ok(c.value.clone());
        }
        let backing_off = slot
            .failed_at
            .is_some_and(|t| t.elapsed() < self.policy.backoff);
        let may_fetch = !backing_off
            && slot
                .cached
                .as_ref()
                .is_none_or(|c| !fresh(c) || c.fetched.elapsed() >= self.policy.min_interval);
        if may_fetch {
            match fetch().await {
                Ok(value) => {
                    let value = Arc::new(value);
                    slot.cached = Some(Copy {
                        value: value.clone(),
                        fetched: Instant::now(),
                    });
                    slot.failed_at = None;
                    self.loaded.store(true, Ordering::Relaxed);
                    return Ok(value);
                }
                Err(e) => {
                    slot.failed_at = Some(Instant::now());
                    if slot.cached.is_none() {
                        return Err(FetchFailed::Failed(e));
                    }
                }
            }
        }
        slot.cached
            .as_ref()
            .map(|c| c.value.clone())
            .ok_or(FetchFailed::BackingOff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn policy(ttl_ms: u64, min_ms: u64, backoff_ms: u64) -> RefetchPolicy {
        RefetchPolicy {
            ttl: Duration::from_millis(ttl_ms),
            min_interval: Duration::from_millis(min_ms),
            backoff: Duration::from_millis(backoff_ms),
        }
    }

    #[tokio::test]
    async fn fresh_copies_are_reused_and_unusable_ones_refetched_at_most_every_interval() {
        let doc = Fetched::<u32>::new(policy(60_000, 50, 10));
        let calls = AtomicUsize::new(0);
        let fetch = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<u32, ()>(7)
        };
        assert!(!doc.loaded());
        assert_eq!(*doc.get(|_| true, fetch).await.unwrap(), 7);
        assert!(doc.loaded());
        assert_eq!(*doc.get(|_| true, fetch).await.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "fresh copy reused");
        // Lacking what the caller needs: not refetched within min_interval...
        assert_eq!(*doc.get(|v| *v == 8, fetch).await.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // ...and refetched after it.
        tokio::time::sleep(Duration::from_millis(60)).await;
        doc.get(|v| *v == 8, fetch).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_source_down_serves_the_stale_copy_and_backs_off() {
        let doc = Fetched::<u32>::new(policy(0, 0, 60_000));
        let calls = AtomicUsize::new(0);
        assert_eq!(
            doc.get(|_| true, || async { Err::<u32, &str>("down") })
                .await
                .unwrap_err(),
            FetchFailed::Failed("down")
        );
        let counted = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<u32, &str>(1)
        };
        assert_eq!(
            doc.get(|_| true, counted).await.unwrap_err(),
            FetchFailed::BackingOff
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "no fetch within the back-off"
        );

        let doc = Fetched::<u32>::new(policy(0, 0, 60_000));
        doc.get(|_| true, || async { Ok::<u32, &str>(3) })
            .await
            .unwrap();
        let stale = doc
            .get(|_| true, || async { Err::<u32, &str>("down") })
            .await;
        assert_eq!(*stale.unwrap(), 3, "stale copy while the source is down");
        assert_eq!(*doc.get(|_| true, counted).await.unwrap(), 3);
        assert_eq!(calls.load(Ordering::SeqCst), 0, "backing off, stale copy");
    }
}
