//! When a crashed formation dyno is started again: Heroku's crash restart policy, with
//! configurable bounds.
//!
//! The 1st consecutive crash restarts at once; the n-th (n ≥ 2) waits
//! `min(base × 2^(n-2), cap)` with "equal jitter": a uniformly random delay in `[d/2, d]`, so
//! that the dynos of one app that crash together (a bad release, a lost database) do not
//! restart in lockstep. With the defaults (`--restart-base 20s`, `--restart-cap 20m`,
//! `--restart-reset 10m`):
//!
//! ```text
//! crash #   delay before the restart
//! 1         0 (at once)
//! 2         10 s … 20 s
//! 3         20 s … 40 s
//! 4         40 s … 80 s
//! 5         80 s … 160 s
//! 6         160 s … 320 s
//! 7         320 s … 640 s
//! 8 and on  10 min … 20 min
//! ```
//!
//! The count starts over once the dyno has stayed `up` for `reset` (10 min), and with every
//! new release, `restart` or scale, which reach the agent as new assignment ids (a new
//! schedule).
//!
//! Heroku's documented cool-offs grow to 20 min, then 40, 60, 180 and 320 min (HEROKU-SPEC
//! §2). Manifold deliberately caps them at 20 min: a dyno that crashed for an hour because a
//! dependency was down should not then stay down for hours after the dependency came back.

use std::time::{Duration, Instant};

/// The bounds of the schedule (from the daemon's flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// The cool-off before the 2nd consecutive restart, doubled for each one after.
    pub base: Duration,
    /// The longest cool-off.
    pub cap: Duration,
    /// How long a dyno must stay up for its crash count to start over.
    pub reset: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            base: Duration::from_secs(20),
            cap: Duration::from_secs(20 * 60),
            reset: Duration::from_secs(10 * 60),
        }
    }
}

/// A random source: a uniformly random integer in `0..=n`. Injected so that tests can pin
/// the jitter to either end of its range.
pub type Random = fn(u64) -> u64;

fn thread_random(n: u64) -> u64 {
    use rand::Rng;
    rand::thread_rng().gen_range(0..=n)
}

/// One dyno's consecutive crashes and the delays they earn; pure apart from its random
/// source.
#[derive(Debug, Clone)]
pub struct RestartSchedule {
    policy: RestartPolicy,
    random: Random,
    crashes: u32,
    up_since: Option<Instant>,
}

impl RestartSchedule {
    pub fn new(policy: RestartPolicy) -> Self {
        Self::with_random(policy, thread_random)
    }

    pub fn with_random(policy: RestartPolicy, random: Random) -> Self {
        RestartSchedule {
            policy,
            random,
            crashes: 0,
            up_since: None,
        }
    }

    /// The dyno is up (again).
    pub fn up(&mut self, now: Instant) {
        self.up_since = Some(now);
    }

    /// The dyno crashed (or failed to start): how long to wait before starting it again.
    pub fn crashed(&mut self, now: Instant) -> Duration {
        if self
            .up_since
            .take()
            .is_some_and(|since| now.saturating_duration_since(since) >= self.policy.reset)
        {
            self.crashes = 0;
        }
        self.crashes = self.crashes.saturating_add(1);
        let Some(doublings) = self.crashes.checked_sub(2) else {
            return Duration::ZERO;
        };
        let ceiling = self
            .policy
            .base
            .checked_mul(1u32.checked_shl(doublings).unwrap_or(u32::MAX))
            .unwrap_or(self.policy.cap)
            .min(self.policy.cap);
        let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        let half = ms / 2;
        Duration::from_millis(half + (self.random)(ms - half).min(ms - half))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delays(policy: RestartPolicy, random: Random, n: usize) -> Vec<Duration> {
        let mut s = RestartSchedule::with_random(policy, random);
        let t0 = Instant::now();
        (0..n).map(|_| s.crashed(t0)).collect()
    }

    fn secs(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|s| Duration::from_secs(*s)).collect()
    }

    #[test]
    fn delays_follow_the_documented_table_between_its_bounds() {
        let policy = RestartPolicy::default();
        let low = delays(policy, |_| 0, 10);
        let high = delays(policy, |n| n, 10);
        assert_eq!(
            low,
            secs(&[0, 10, 20, 40, 80, 160, 320, 600, 600, 600]),
            "the lower bounds"
        );
        assert_eq!(
            high,
            secs(&[0, 20, 40, 80, 160, 320, 640, 1200, 1200, 1200]),
            "the upper bounds"
        );
        // The real random source stays within them.
        for _ in 0..20 {
            let real = delays(policy, thread_random, 10);
            for ((d, lo), hi) in real.iter().zip(&low).zip(&high) {
                assert!(lo <= d && d <= hi, "{d:?} outside {lo:?}..={hi:?}");
            }
        }
    }

    #[test]
    fn bounds_are_configurable_and_the_cap_holds_for_ever() {
        let policy = RestartPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(4),
            reset: Duration::from_secs(60),
        };
        let ms =
            |v: &[u64]| -> Vec<Duration> { v.iter().map(|m| Duration::from_millis(*m)).collect() };
        assert_eq!(
            delays(policy, |_| 0, 6),
            ms(&[0, 500, 1000, 2000, 2000, 2000])
        );
        assert_eq!(
            delays(policy, |n| n, 6),
            ms(&[0, 1000, 2000, 4000, 4000, 4000])
        );
        // Far past the point where doubling would overflow.
        let mut s = RestartSchedule::with_random(policy, |n| n);
        let t0 = Instant::now();
        for _ in 0..100 {
            assert!(s.crashed(t0) <= Duration::from_secs(4));
        }
    }

    #[test]
    fn the_count_starts_over_after_staying_up_for_reset() {
        let policy = RestartPolicy::default();
        let t0 = Instant::now();
        let mut s = RestartSchedule::with_random(policy, |n| n);
        assert_eq!(s.crashed(t0), Duration::ZERO);
        assert_eq!(s.crashed(t0), Duration::from_secs(20));
        // Up for less than `reset`: the backoff goes on.
        s.up(t0);
        assert_eq!(
            s.crashed(t0 + Duration::from_secs(599)),
            Duration::from_secs(40)
        );
        // Up for `reset`: at once again, then the 2nd crash's cool-off.
        s.up(t0);
        assert_eq!(s.crashed(t0 + Duration::from_secs(600)), Duration::ZERO);
        assert_eq!(
            s.crashed(t0 + Duration::from_secs(601)),
            Duration::from_secs(20)
        );
    }
}
