//! Reading the scheduler's `/metrics` (Prometheus text): dynos by state, and the reconcile
//! pass histogram (`manifold_reconcile_seconds`), whose percentiles over a scenario come from
//! the difference of two scrapes.

/// The value of the sample written exactly as `series` (`name{label="v"}`), 0 if absent.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// A histogram's cumulative buckets (upper bound in seconds, count) and its sum and count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    /// The histogram `name` in `text`; `None` when the scheduler has none (an older one).
    pub fn parse(text: &str, name: &str) -> Option<Histogram> {
        let prefix = format!("{name}_bucket{{le=\"");
        let mut buckets = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(&prefix) else {
                continue;
            };
            let (le, value) = rest.split_once("\"} ")?;
            if le == "+Inf" {
                continue;
            }
            buckets.push((le.parse().ok()?, value.trim().parse().ok()?));
        }
        if buckets.is_empty() {
            return None;
        }
        Some(Histogram {
            buckets,
            sum: sample(text, &format!("{name}_sum")),
            count: sample(text, &format!("{name}_count")) as u64,
        })
    }

    /// What was observed between `earlier` and `self`; all of `self` when the counts went
    /// down (the scheduler restarted in between: its counters began again, as Prometheus'
    /// counter resets).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        if self.count < earlier.count {
            return self.clone();
        }
        Histogram {
            buckets: self
                .buckets
                .iter()
                .zip(&earlier.buckets)
                .map(|((b, n), (_, m))| (*b, n.saturating_sub(*m)))
                .collect(),
            sum: self.sum - earlier.sum,
            count: self.count.saturating_sub(earlier.count),
        }
    }

    /// The `q` quantile in seconds, interpolated linearly inside its bucket (as Prometheus'
    /// `histogram_quantile` does); `None` with no observations or past the last bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q * self.count as f64;
        let mut lower = (0.0, 0u64);
        for &(bound, cumulative) in &self.buckets {
            if cumulative as f64 >= rank {
                let in_bucket = (cumulative - lower.1) as f64;
                let into = if in_bucket > 0.0 {
                    (rank - lower.1 as f64) / in_bucket
                } else {
                    1.0
                };
                return Some(lower.0 + (bound - lower.0) * into);
            }
            lower = (bound, cumulative);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE manifold_reconcile_seconds histogram\n\
        manifold_reconcile_seconds_bucket{le=\"0.01\"} 50\n\
        manifold_reconcile_seconds_bucket{le=\"0.1\"} 90\n\
        manifold_reconcile_seconds_bucket{le=\"1\"} 100\n\
        manifold_reconcile_seconds_bucket{le=\"+Inf\"} 100\n\
        manifold_reconcile_seconds_sum 3.5\n\
        manifold_reconcile_seconds_count 100\n\
        manifold_dynos{state=\"up\"} 412\n";

    #[test]
    fn reads_samples_and_quantiles() {
        assert_eq!(sample(TEXT, "manifold_dynos{state=\"up\"}"), 412.0);
        assert_eq!(sample(TEXT, "manifold_dynos{state=\"starting\"}"), 0.0);
        let h = Histogram::parse(TEXT, "manifold_reconcile_seconds").expect("parsed");
        assert_eq!(h.count, 100);
        assert!((h.quantile(0.5).expect("p50") - 0.01).abs() < 1e-9);
        // The 99th of 100 is 9/10 of the way through the (0.1, 1] bucket.
        assert!((h.quantile(0.99).expect("p99") - 0.91).abs() < 1e-9);
        let mut restarted = h.clone();
        restarted.count = 3;
        assert_eq!(restarted.since(&h), restarted);
        let none = h.since(&h);
        assert_eq!(none.count, 0);
        assert_eq!(none.quantile(0.5), None);
        assert!(Histogram::parse(TEXT, "manifold_other").is_none());
    }
}
