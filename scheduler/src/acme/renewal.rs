//! When to order a certificate: a pure function of the time, the certificate a domain has
//! and its failures so far, so that every case is a unit test.
//!
//! Renewal starts when a third of the certificate's lifetime is left, but no earlier than 30
//! days before it expires: 30 days before for Let's Encrypt's 90-day certificates (as
//! certbot and Heroku ACM do), a third of the lifetime for short-lived ones (a 6-day
//! certificate renews with 2 days left), 30 days for a year-long one.
//!
//! Failures back off so a domain whose DNS does not point at the cluster yet does not hammer
//! the ACME server (whose rate limits are per account and domain):
//!
//! ```text
//!          order ok                       order fails
//!   Clear ─────────> Clear      Clear ──────────────> Failing { failures: 1, last }
//!                               Failing { n, last } ─> Failing { n + 1, now }
//!                               Failing { .. } ──ok─> Clear
//! ```
//!
//! and a `Failing` domain is tried again [`retry_delay`] after its last failure (5 minutes,
//! 15 minutes, 1 hour, 4 hours, then every 12 hours), or when it is due anyway, whichever is
//! later.

use std::time::Duration;

use time::OffsetDateTime;

/// The most renewal lead: renewal starts at most this long before expiry.
pub const MAX_LEAD: Duration = Duration::from_secs(30 * 86_400);

/// How long to wait after the n-th failure in a row (the last one repeats).
pub const RETRY_SCHEDULE: [Duration; 5] = [
    Duration::from_secs(5 * 60),
    Duration::from_secs(15 * 60),
    Duration::from_secs(60 * 60),
    Duration::from_secs(4 * 3600),
    Duration::from_secs(12 * 3600),
];

/// A certificate's validity period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// When renewal starts: a third of the lifetime before expiry, at most [`MAX_LEAD`].
    pub fn renew_at(&self) -> OffsetDateTime {
        let lifetime = (self.not_after - self.not_before).max(time::Duration::ZERO);
        let lead = (lifetime / 3_i32).min(time::Duration::seconds(MAX_LEAD.as_secs() as i64));
        self.not_after - lead
    }
}

/// A domain's failures in a row (see the module's diagram).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backoff {
    /// No failure since the last success, or ever.
    #[default]
    Clear,
    /// `failures` orders in a row failed, the last at `last`.
    Failing { failures: u32, last: OffsetDateTime },
}

impl Backoff {
    /// The state after an order failed at `now`.
    pub fn failed(self, now: OffsetDateTime) -> Backoff {
        let failures = match self {
            Backoff::Clear => 1,
            Backoff::Failing { failures, .. } => failures.saturating_add(1),
        };
        Backoff::Failing {
            failures,
            last: now,
        }
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        match *self {
            Backoff::Clear => 0,
            Backoff::Failing { failures, .. } => failures,
        }
    }

    /// The earliest next attempt, if failures hold it back.
    pub fn retry_at(&self) -> Option<OffsetDateTime> {
        match *self {
            Backoff::Clear => None,
            Backoff::Failing { failures, last } => Some(last + retry_delay(failures)),
        }
    }
}

/// The wait after `failures` failures in a row.
pub fn retry_delay(failures: u32) -> Duration {
    let index = (failures.max(1) as usize - 1).min(RETRY_SCHEDULE.len() - 1);
    RETRY_SCHEDULE[index]
}

/// Why a certificate is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The domain has no certificate yet.
    First,
    /// Its certificate is in its renewal window (or expired).
    Renewal,
}

/// What to do for one domain now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Order(Reason),
    /// Nothing until `until`.
    Wait {
        until: OffsetDateTime,
    },
}

/// The decision for a domain whose certificate is `current` (none yet: `None`) and whose
/// failures so far are `backoff`.
pub fn decide(now: OffsetDateTime, current: Option<&Validity>, backoff: &Backoff) -> Decision {
    let (reason, due) = match current {
        None => (Reason::First, now),
        Some(validity) => (Reason::Renewal, validity.renew_at()),
    };
    let due = match backoff.retry_at() {
        Some(retry_at) => due.max(retry_at),
        None => due,
    };
    if now >= due {
        Decision::Order(reason)
    } else {
        Decision::Wait { until: due }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const DAY: time::Duration = time::Duration::DAY;
    const NOW: OffsetDateTime = datetime!(2026-12-07 12:00 UTC);

    fn issued(days_ago: i32, lifetime_days: i32) -> Validity {
        let not_before = NOW - DAY * days_ago;
        Validity {
            not_before,
            not_after: not_before + DAY * lifetime_days,
        }
    }

    #[test]
    fn a_domain_without_a_certificate_orders_one_now() {
        assert_eq!(
            decide(NOW, None, &Backoff::Clear),
            Decision::Order(Reason::First)
        );
    }

    #[test]
    fn a_90_day_certificate_renews_with_30_days_left() {
        let cert = issued(59, 90);
        assert_eq!(
            decide(NOW, Some(&cert), &Backoff::Clear),
            Decision::Wait { until: NOW + DAY }
        );
        let cert = issued(60, 90);
        assert_eq!(
            decide(NOW, Some(&cert), &Backoff::Clear),
            Decision::Order(Reason::Renewal)
        );
    }

    #[test]
    fn a_year_long_certificate_renews_with_30_days_left_not_a_third() {
        let cert = issued(300, 365);
        assert_eq!(cert.renew_at(), cert.not_after - DAY * 30);
        assert!(matches!(
            decide(NOW, Some(&cert), &Backoff::Clear),
            Decision::Wait { .. }
        ));
    }

    #[test]
    fn a_short_lived_certificate_renews_with_a_third_of_its_life_left() {
        let cert = issued(3, 6);
        assert_eq!(cert.renew_at(), cert.not_after - DAY * 2);
        assert_eq!(
            decide(NOW, Some(&cert), &Backoff::Clear),
            Decision::Wait { until: NOW + DAY }
        );
        let expired = issued(10, 6);
        assert_eq!(
            decide(NOW, Some(&expired), &Backoff::Clear),
            Decision::Order(Reason::Renewal)
        );
    }

    #[test]
    fn a_backwards_validity_is_due_at_its_end() {
        let cert = Validity {
            not_before: NOW,
            not_after: NOW - DAY,
        };
        assert_eq!(cert.renew_at(), cert.not_after);
    }

    #[test]
    fn failures_back_off_on_the_schedule_then_every_12_hours() {
        let mut backoff = Backoff::Clear;
        let mut at = NOW;
        let expected = [
            5 * 60,
            15 * 60,
            3600,
            4 * 3600,
            12 * 3600,
            12 * 3600,
            12 * 3600,
        ];
        for (n, secs) in expected.into_iter().enumerate() {
            backoff = backoff.failed(at);
            assert_eq!(
                backoff,
                Backoff::Failing {
                    failures: n as u32 + 1,
                    last: at
                }
            );
            assert_eq!(backoff.failures(), n as u32 + 1);
            let retry = at + time::Duration::seconds(secs);
            assert_eq!(backoff.retry_at(), Some(retry));
            assert_eq!(
                decide(retry - time::Duration::SECOND, None, &backoff),
                Decision::Wait { until: retry }
            );
            assert_eq!(
                decide(retry, None, &backoff),
                Decision::Order(Reason::First)
            );
            at = retry;
        }
    }

    #[test]
    fn a_failing_renewal_waits_for_whichever_is_later() {
        // Not due yet: backoff does not bring the renewal forward.
        let cert = issued(10, 90);
        let backoff = Backoff::Clear.failed(NOW);
        assert_eq!(
            decide(NOW, Some(&cert), &backoff),
            Decision::Wait {
                until: cert.renew_at()
            }
        );
        // Due: the retry delay holds it back.
        let cert = issued(70, 90);
        assert_eq!(
            decide(NOW, Some(&cert), &backoff),
            Decision::Wait {
                until: NOW + time::Duration::minutes(5)
            }
        );
    }
}
