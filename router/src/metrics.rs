//! Router metrics in Prometheus' text format: plain atomics bumped once per request and
//! rendered on demand, so the hot path takes no lock and needs no metrics library.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::codes::Code;

/// Upper bounds (seconds) of the request duration histogram: from a pooled 1 ms hit to the
/// 30 s request timeout.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Statuses are 100..=999 (hyper's `StatusCode` range); one counter each.
const STATUSES: usize = 1000;

pub(crate) struct Metrics {
    by_status: Box<[AtomicU64]>,
    by_code: [AtomicU64; Code::ALL.len()],
    /// Per bucket, not cumulative (the last one is `+Inf`); summed when rendered.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    in_flight: AtomicI64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            by_status: (0..STATUSES).map(|_| AtomicU64::new(0)).collect(),
            by_code: Default::default(),
            buckets: Default::default(),
            sum_micros: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
        }
    }
}

impl Metrics {
    pub(crate) fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// One request finished (in flight until now) with `status` after `elapsed`.
    pub(crate) fn finished(&self, status: u16, code: Option<Code>, elapsed: Duration) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.record(status, code, elapsed);
    }

    /// One request answered by the router alone, never counted in flight (unknown host).
    pub(crate) fn record(&self, status: u16, code: Option<Code>, elapsed: Duration) {
        if let Some(c) = self.by_status.get(usize::from(status)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(code) = code {
            self.by_code[code.index()].fetch_add(1, Ordering::Relaxed);
        }
        let secs = elapsed.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        // Writing to a String cannot fail.
        let _ = self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) -> std::fmt::Result {
        out.push_str("# HELP manifold_router_requests_total Requests answered, by status.\n");
        out.push_str("# TYPE manifold_router_requests_total counter\n");
        for (status, count) in self.by_status.iter().enumerate() {
            let count = count.load(Ordering::Relaxed);
            if count > 0 {
                writeln!(
                    out,
                    "manifold_router_requests_total{{status=\"{status}\"}} {count}"
                )?;
            }
        }
        out.push_str("# HELP manifold_router_errors_total Router errors, by Heroku code.\n");
        out.push_str("# TYPE manifold_router_errors_total counter\n");
        for (code, count) in Code::ALL.iter().zip(&self.by_code) {
            writeln!(
                out,
                "manifold_router_errors_total{{code=\"{}\"}} {}",
                code.name(),
                count.load(Ordering::Relaxed)
            )?;
        }
        out.push_str(
            "# HELP manifold_router_request_duration_seconds Time from request to last byte.\n",
        );
        out.push_str("# TYPE manifold_router_request_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (i, count) in self.buckets.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            match BUCKETS.get(i) {
                Some(le) => writeln!(
                    out,
                    "manifold_router_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
                )?,
                None => writeln!(
                    out,
                    "manifold_router_request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
                )?,
            }
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        writeln!(out, "manifold_router_request_duration_seconds_sum {sum}")?;
        writeln!(
            out,
            "manifold_router_request_duration_seconds_count {cumulative}"
        )?;
        out.push_str("# HELP manifold_router_in_flight Requests being handled now.\n");
        out.push_str("# TYPE manifold_router_in_flight gauge\n");
        writeln!(
            out,
            "manifold_router_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histogram_and_gauge() {
        let m = Metrics::default();
        m.started();
        m.started();
        m.finished(200, None, Duration::from_millis(3));
        m.finished(503, Some(Code::H12), Duration::from_secs(31));
        let text = m.render();
        assert!(text.contains("manifold_router_requests_total{status=\"200\"} 1\n"));
        assert!(text.contains("manifold_router_requests_total{status=\"503\"} 1\n"));
        assert!(text.contains("manifold_router_errors_total{code=\"H12\"} 1\n"));
        assert!(text.contains("manifold_router_request_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("manifold_router_request_duration_seconds_bucket{le=\"30\"} 1\n"));
        assert!(text.contains("manifold_router_request_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("manifold_router_request_duration_seconds_count 2\n"));
        assert!(text.contains("manifold_router_in_flight 0\n"));
    }
}
