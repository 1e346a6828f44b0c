//! Counters of the plex, rendered in the Prometheus text format.
//!
//! Plain atomics rather than a metrics library: a handful of counters updated on the hot
//! path of `push`, read only when the scheduler's `/metrics` is scraped.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Which transport a drain counter belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Syslog,
    Https,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::Syslog => "syslog",
            Transport::Https => "https",
        }
    }

    fn index(self) -> usize {
        match self {
            Transport::Syslog => 0,
            Transport::Https => 1,
        }
    }
}

const TRANSPORTS: [Transport; 2] = [Transport::Syslog, Transport::Https];

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    lines: AtomicU64,
    dropped_tail: AtomicU64,
    dropped_drain: AtomicU64,
    delivered: [AtomicU64; 2],
    failed: [AtomicU64; 2],
}

/// Point-in-time sizes, gathered by the plex when rendering.
#[derive(Debug, Default)]
pub(crate) struct Gauges {
    pub apps: usize,
    pub tails: usize,
    pub drains: usize,
}

impl Metrics {
    pub fn line(&self) {
        self.lines.fetch_add(1, Ordering::Relaxed);
    }

    pub fn tail_dropped(&self) {
        self.dropped_tail.fetch_add(1, Ordering::Relaxed);
    }

    pub fn drain_dropped(&self) {
        self.dropped_drain.fetch_add(1, Ordering::Relaxed);
    }

    pub fn delivered(&self, transport: Transport, lines: usize) {
        self.delivered[transport.index()].fetch_add(lines as u64, Ordering::Relaxed);
    }

    pub fn failed(&self, transport: Transport) {
        self.failed[transport.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; the results are ignored for that reason.
        let _ = self.write(&mut out, gauges);
        out
    }

    fn write(&self, out: &mut String, gauges: &Gauges) -> std::fmt::Result {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        writeln!(
            out,
            "# HELP manifold_logplex_lines_total Lines pushed into the plex."
        )?;
        writeln!(out, "# TYPE manifold_logplex_lines_total counter")?;
        writeln!(out, "manifold_logplex_lines_total {}", get(&self.lines))?;
        writeln!(
            out,
            "# HELP manifold_logplex_dropped_total Lines a reader lost because its buffer was full."
        )?;
        writeln!(out, "# TYPE manifold_logplex_dropped_total counter")?;
        writeln!(
            out,
            "manifold_logplex_dropped_total{{reason=\"tail_overflow\"}} {}",
            get(&self.dropped_tail)
        )?;
        writeln!(
            out,
            "manifold_logplex_dropped_total{{reason=\"drain_overflow\"}} {}",
            get(&self.dropped_drain)
        )?;
        writeln!(
            out,
            "# HELP manifold_logplex_drain_delivered_total Lines handed to drains."
        )?;
        writeln!(out, "# TYPE manifold_logplex_drain_delivered_total counter")?;
        for t in TRANSPORTS {
            writeln!(
                out,
                "manifold_logplex_drain_delivered_total{{transport=\"{}\"}} {}",
                t.label(),
                get(&self.delivered[t.index()])
            )?;
        }
        writeln!(
            out,
            "# HELP manifold_logplex_drain_failed_total Failed drain connects, writes and posts (each is retried)."
        )?;
        writeln!(out, "# TYPE manifold_logplex_drain_failed_total counter")?;
        for t in TRANSPORTS {
            writeln!(
                out,
                "manifold_logplex_drain_failed_total{{transport=\"{}\"}} {}",
                t.label(),
                get(&self.failed[t.index()])
            )?;
        }
        for (name, help, value) in [
            ("apps", "Apps with a log stream.", gauges.apps),
            ("tails", "Open tails.", gauges.tails),
            ("drains", "Running drains.", gauges.drains),
        ] {
            writeln!(out, "# HELP manifold_logplex_{name} {help}")?;
            writeln!(out, "# TYPE manifold_logplex_{name} gauge")?;
            writeln!(out, "manifold_logplex_{name} {value}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels() {
        let m = Metrics::default();
        m.line();
        m.line();
        m.tail_dropped();
        m.delivered(Transport::Https, 5);
        m.failed(Transport::Syslog);
        let text = m.render(&Gauges {
            apps: 1,
            tails: 2,
            drains: 3,
        });
        for want in [
            "manifold_logplex_lines_total 2\n",
            "manifold_logplex_dropped_total{reason=\"tail_overflow\"} 1\n",
            "manifold_logplex_dropped_total{reason=\"drain_overflow\"} 0\n",
            "manifold_logplex_drain_delivered_total{transport=\"https\"} 5\n",
            "manifold_logplex_drain_failed_total{transport=\"syslog\"} 1\n",
            "manifold_logplex_tails 2\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
