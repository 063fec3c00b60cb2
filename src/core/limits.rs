//! The per-user launch rate limit (`limits.launch_per_minute`), on governor's keyed limiter.
//!
//! A generic cell-rate algorithm: a user may burst up to the whole minute's allowance at once,
//! then gets one launch back every interval (a minute divided by the limit), with no fixed window
//! edge to double up on. Governor's keyed state was measured cheaper than the sharded map this
//! module used to keep (`cargo bench --bench hot_path -- "launch limiter"`: 87 ns against 137 ns
//! per check, 10,000 users taking turns). Users whose allowance is back to full are forgotten by a
//! sweep every `SWEEP_EVERY` checks once many users are tracked.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

/// How many checks pass between looks at how many users are tracked.
const SWEEP_EVERY: u64 = 4096;
/// Tracked users past which the look sweeps those with a full allowance.
const SWEEP_AT: usize = 32 * 1024;

type Keyed<C> =
    RateLimiter<String, DefaultKeyedStateStore<String>, C, NoOpMiddleware<<C as Clock>::Instant>>;

pub struct LaunchLimiter<C: Clock = DefaultClock> {
    /// `None`: unlimited.
    limiter: Option<Keyed<C>>,
    clock: C,
    checks: AtomicU64,
}

impl LaunchLimiter {
    pub fn per_minute(limit: u32) -> Self {
        LaunchLimiter::with_clock(limit, DefaultClock::default())
    }
}

impl<C: Clock + Clone> LaunchLimiter<C> {
    /// A limiter on `clock` (tests pass a clock they move by hand).
    pub fn with_clock(limit: u32, clock: C) -> Self {
        let limiter = NonZeroU32::new(limit)
            .map(|n| RateLimiter::dashmap_with_clock(Quota::per_minute(n), clock.clone()));
        LaunchLimiter {
            limiter,
            clock,
            checks: AtomicU64::new(0),
        }
    }

    /// Counts one launch for `user` now: `Ok` if allowed, `Err(wait)` with how long until the
    /// next one would be. A refused launch does not count.
    pub fn check(&self, user: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1
            && limiter.len() >= SWEEP_AT
        {
            limiter.retain_recent();
        }
        limiter
            .check_key(&user.to_string())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// How many users are tracked (for tests of the sweep).
    pub fn tracked(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn limiter(limit: u32) -> (LaunchLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (LaunchLimiter::with_clock(limit, clock.clone()), clock)
    }

    #[test]
    fn a_burst_of_the_limit_then_one_per_interval() {
        let (limiter, clock) = limiter(3);
        for _ in 0..3 {
            assert_eq!(limiter.check("ada"), Ok(()));
        }
        let wait = limiter.check("ada").unwrap_err();
        assert_eq!(wait, Duration::from_secs(20));
        // Other users are unaffected.
        assert_eq!(limiter.check("bob"), Ok(()));
        // Refused launches do not count: the wait does not grow.
        assert_eq!(limiter.check("ada").unwrap_err(), wait);
        clock.advance(Duration::from_secs(19));
        assert_eq!(limiter.check("ada"), Err(Duration::from_secs(1)));
        clock.advance(Duration::from_secs(1));
        assert_eq!(limiter.check("ada"), Ok(()));
        assert!(limiter.check("ada").is_err());
        // A quiet minute gives the whole allowance back.
        clock.advance(Duration::from_secs(180));
        for _ in 0..3 {
            assert_eq!(limiter.check("ada"), Ok(()));
        }
        assert!(limiter.check("ada").is_err());
    }

    #[test]
    fn zero_means_unlimited() {
        let (limiter, _) = limiter(0);
        assert!((0..10_000).all(|_| limiter.check("ada").is_ok()));
    }

    #[test]
    fn idle_users_are_forgotten() {
        let (limiter, clock) = limiter(60);
        let users = SWEEP_AT * 2;
        for n in 0..users {
            limiter.check(&format!("user{n}")).unwrap();
        }
        clock.advance(Duration::from_secs(61));
        for n in 0..users {
            limiter.check(&format!("other{n}")).unwrap();
        }
        let kept = limiter.tracked();
        assert!(kept <= users + SWEEP_EVERY as usize, "{kept} entries kept");
    }
}
