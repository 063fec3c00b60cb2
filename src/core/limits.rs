//! The per-user launch rate limit (`limits.launch_per_minute`).
//!
//! A generic cell-rate algorithm: each user has a "theoretical arrival time" that each launch
//! pushes on by one emission interval (a minute divided by the limit); a launch is allowed while
//! that time is at most a minute ahead of now. So a user may burst up to the whole minute's
//! allowance at once, and then gets one launch back every interval, with no fixed window edge to
//! double up on. State is one number per recently active user, in shards so that users do not
//! contend on one lock; users whose allowance is back to full are forgotten.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

const SHARDS: usize = 32;
/// A shard is swept of users with a full allowance when it grows past this many entries.
const SWEEP_AT: usize = 1024;
const WINDOW: Duration = Duration::from_secs(60);

pub struct LaunchLimiter {
    /// `None`: unlimited.
    interval: Option<Duration>,
    epoch: Instant,
    hasher: std::collections::hash_map::RandomState,
    /// Per user: the theoretical arrival time, as nanoseconds since `epoch`.
    shards: Vec<Mutex<HashMap<String, u64>>>,
}

impl LaunchLimiter {
    pub fn per_minute(limit: u32) -> Self {
        LaunchLimiter {
            interval: (limit > 0).then(|| WINDOW / limit),
            epoch: Instant::now(),
            hasher: Default::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Counts one launch for `user` now: `Ok` if allowed, `Err(wait)` with how long until the
    /// next one would be.
    pub fn check(&self, user: &str) -> Result<(), Duration> {
        self.check_at(user, Instant::now())
    }

    pub fn check_at(&self, user: &str, now: Instant) -> Result<(), Duration> {
        let Some(interval) = self.interval else {
            return Ok(());
        };
        let now = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let (interval, window) = (interval.as_nanos() as u64, WINDOW.as_nanos() as u64);
        let mut shard = self.shards[self.shard_of(user)].lock();
        let tat = shard.get(user).copied().unwrap_or(now).max(now);
        let next = tat + interval;
        if next - now > window {
            return Err(Duration::from_nanos(next - now - window));
        }
        match shard.get_mut(user) {
            Some(t) => *t = next,
            None => {
                if shard.len() >= SWEEP_AT {
                    shard.retain(|_, t| *t > now);
                }
                shard.insert(user.to_string(), next);
            }
        }
        Ok(())
    }

    fn shard_of(&self, user: &str) -> usize {
        self.hasher.hash_one(user) as usize % SHARDS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_the_limit_then_one_per_interval() {
        let limiter = LaunchLimiter::per_minute(3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check_at("ada", t0), Ok(()));
        }
        let wait = limiter.check_at("ada", t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(20));
        // Other users are unaffected.
        assert_eq!(limiter.check_at("bob", t0), Ok(()));
        // Refused launches do not count: the wait does not grow.
        assert_eq!(limiter.check_at("ada", t0).unwrap_err(), wait);
        assert_eq!(
            limiter.check_at("ada", t0 + Duration::from_secs(19)),
            Err(Duration::from_secs(1))
        );
        assert_eq!(
            limiter.check_at("ada", t0 + Duration::from_secs(20)),
            Ok(())
        );
        assert!(limiter
            .check_at("ada", t0 + Duration::from_secs(20))
            .is_err());
        // A quiet minute gives the whole allowance back.
        let later = t0 + Duration::from_secs(200);
        for _ in 0..3 {
            assert_eq!(limiter.check_at("ada", later), Ok(()));
        }
        assert!(limiter.check_at("ada", later).is_err());
    }

    #[test]
    fn zero_means_unlimited() {
        let limiter = LaunchLimiter::per_minute(0);
        let t0 = Instant::now();
        assert!((0..10_000).all(|_| limiter.check_at("ada", t0).is_ok()));
    }

    #[test]
    fn idle_users_are_forgotten() {
        let limiter = LaunchLimiter::per_minute(60);
        let t0 = Instant::now();
        for n in 0..(SHARDS * SWEEP_AT * 2) {
            limiter.check_at(&format!("user{n}"), t0).unwrap();
        }
        let later = t0 + Duration::from_secs(61);
        for n in 0..(SHARDS * SWEEP_AT * 2) {
            limiter.check_at(&format!("other{n}"), later).unwrap();
        }
        let kept: usize = limiter.shards.iter().map(|s| s.lock().len()).sum();
        assert!(
            kept <= SHARDS * SWEEP_AT * 2 + SHARDS,
            "{kept} entries kept"
        );
    }
}
