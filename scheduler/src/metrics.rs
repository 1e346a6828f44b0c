//! `GET /metrics`: the scheduler's state in Prometheus' text format — dynos by state, hosts
//! by liveness, what the reconciler did, and the router's and log plex's own figures.
//!
//! Counters are plain atomics bumped where things happen; gauges are read from the store
//! at scrape time, so a scrape always shows the state as stored.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::core::Core;
use crate::http::ApiError;
use crate::reconciler::Liveness;

/// What the scheduler counts.
#[derive(Debug, Default)]
pub struct Counters {
    /// Dynos placed on a host.
    pub placements: AtomicU64,
    /// Dynos told to stop (scale down, restart, release, cycling, drain, sleep).
    pub stops: AtomicU64,
    /// Dynos begun a daily cycle.
    pub cycles: AtomicU64,
    /// Agents' reports of a dyno that crashed (each is restarted by its agent).
    pub crashes: AtomicU64,
    /// Apps put to sleep, and woken.
    pub sleeps: AtomicU64,
    pub wakes: AtomicU64,
    /// Agents' reports and log lines about dynos not placed on their host, refused.
    pub refused_reports: AtomicU64,
    /// How long each reconcile pass took (`Core::reconcile_loop`): the figure the control
    /// plane's cost at cluster scale shows in (issue 22, `bench/cluster-sim`).
    pub reconcile_seconds: Histogram,
}

/// Upper bounds (seconds) of [`Histogram`]'s buckets: from a pass over a handful of dynos to
/// one over a million.
pub const HISTOGRAM_BOUNDS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A Prometheus histogram of durations with the fixed [`HISTOGRAM_BOUNDS`].
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations at or below each bound (not cumulative; summed when written).
    buckets: [AtomicU64; HISTOGRAM_BOUNDS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, took: std::time::Duration) {
        let secs = took.as_secs_f64();
        if let Some(i) = HISTOGRAM_BOUNDS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Writes the histogram `name` in Prometheus' text format.
    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in HISTOGRAM_BOUNDS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

pub async fn metrics(State(core): State<Arc<Core>>) -> Result<impl IntoResponse, ApiError> {
    let mut out = String::new();
    let c = &core.counters;
    for (name, help, counter) in [
        (
            "manifold_placements_total",
            "Dynos placed on a host.",
            &c.placements,
        ),
        ("manifold_stops_total", "Dynos told to stop.", &c.stops),
        (
            "manifold_cycles_total",
            "Daily dyno cycles begun.",
            &c.cycles,
        ),
        (
            "manifold_crashes_total",
            "Dyno crashes reported by agents.",
            &c.crashes,
        ),
        ("manifold_sleeps_total", "Apps put to sleep.", &c.sleeps),
        (
            "manifold_wakes_total",
            "Sleeping apps woken by a request.",
            &c.wakes,
        ),
        (
            "manifold_refused_reports_total",
            "Agents' reports and log lines about other hosts' dynos, refused.",
            &c.refused_reports,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        let _ = writeln!(out, "{name} {}", counter.load(Ordering::Relaxed));
    }
    c.reconcile_seconds.write(
        &mut out,
        "manifold_reconcile_seconds",
        "How long reconcile passes took.",
    );
    let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
    for (state, n) in core.store.dyno_counts().await? {
        *by_state.entry(state.as_str()).or_default() += n;
    }
    let _ = writeln!(
        out,
        "# HELP manifold_dynos Dynos by observed state.\n# TYPE manifold_dynos gauge"
    );
    for (state, n) in by_state {
        let _ = writeln!(out, "manifold_dynos{{state=\"{state}\"}} {n}");
    }
    let mut by_liveness: BTreeMap<&str, u64> = BTreeMap::new();
    for h in core.store.hosts().await? {
        let l = match core.cluster.liveness(&h.id) {
            Liveness::Connected => "connected",
            Liveness::Missing => "missing",
            Liveness::Lost => "lost",
        };
        *by_liveness.entry(l).or_default() += 1;
    }
    let _ = writeln!(
        out,
        "# HELP manifold_hosts Hosts by liveness.\n# TYPE manifold_hosts gauge"
    );
    for (l, n) in by_liveness {
        let _ = writeln!(out, "manifold_hosts{{liveness=\"{l}\"}} {n}");
    }
    if let Some(router) = core.routing.router() {
        out.push_str(&router.metrics());
    }
    out.push_str(&core.logs.plex().metrics());
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    ))
}
