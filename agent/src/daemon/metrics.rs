//! `GET /metrics` on the agent (`--metrics-listen`): the host's dynos by state, crash
//! restarts, log lines shipped and dropped, and whether the scheduler link is up, in
//! Prometheus' text format.
//!
//! The daemon's core owns the real state and is single-task; it writes these figures as
//! they change, and the HTTP handler only reads them.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Figures the daemon keeps up to date.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    /// Crashed formation dynos started again.
    pub restarts: AtomicU64,
    /// Log lines sent to the scheduler.
    pub lines_shipped: AtomicU64,
    /// Log lines dropped by a dyno's rate limit.
    pub dropped_rate: AtomicU64,
    /// Log lines dropped because the queue for the scheduler was full.
    pub dropped_queue: AtomicU64,
    /// Build output lines dropped because the link to the scheduler was congested.
    pub dropped_build_output: AtomicU64,
    pub connected: AtomicBool,
    /// Dynos by state (`up`, `crashed`, ...).
    pub dynos: Mutex<BTreeMap<String, u64>>,
}

impl AgentMetrics {
    /// The text a scrape gets.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let dynos = self.dynos.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let _ = writeln!(
            out,
            "# HELP manifold_agent_dynos Dynos on this host by state.\n# TYPE manifold_agent_dynos gauge"
        );
        for (state, n) in dynos {
            let _ = writeln!(out, "manifold_agent_dynos{{state=\"{state}\"}} {n}");
        }
        for (name, help, value) in [
            (
                "manifold_agent_restarts_total",
                "Crashed dynos restarted.",
                &self.restarts,
            ),
            (
                "manifold_agent_log_lines_total",
                "Log lines sent to the scheduler.",
                &self.lines_shipped,
            ),
            (
                "manifold_agent_build_output_dropped_total",
                "Build output lines dropped while the link to the scheduler was congested.",
                &self.dropped_build_output,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP manifold_agent_log_dropped_total Log lines dropped (L10).\n# TYPE manifold_agent_log_dropped_total counter"
        );
        let _ = writeln!(
            out,
            "manifold_agent_log_dropped_total{{reason=\"rate\"}} {}",
            self.dropped_rate.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "manifold_agent_log_dropped_total{{reason=\"queue\"}} {}",
            self.dropped_queue.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP manifold_agent_connected Whether the link to the scheduler is up.\n# TYPE manifold_agent_connected gauge"
        );
        let _ = writeln!(
            out,
            "manifold_agent_connected {}",
            u8::from(self.connected.load(Ordering::Relaxed))
        );
        out
    }
}

/// Serves `/metrics` on `listener` for as long as the agent runs.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<AgentMetrics>) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    );
    if let Err(err) = axum::serve(listener, app).await {
        tracing::warn!("metrics server ended: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_figure() {
        let m = AgentMetrics::default();
        m.restarts.store(2, Ordering::Relaxed);
        m.dynos.lock().expect("lock").insert("up".into(), 3);
        let text = m.render();
        assert!(
            text.contains("manifold_agent_dynos{state=\"up\"} 3"),
            "{text}"
        );
        assert!(text.contains("manifold_agent_restarts_total 2"), "{text}");
        assert!(text.contains("manifold_agent_log_dropped_total{reason=\"rate\"} 0"));
        assert!(text.contains("manifold_agent_connected 0"));
    }
}
