//! The results: a markdown table (what BENCHMARKS.md shows) and the same figures as JSON.
//! A scenario that did not settle says how far it got; no figure is made up.

use serde::Serialize;

use crate::config::Scenario;

/// How the run was set up, and what that took.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    pub hosts: usize,
    pub apps: usize,
    pub slots: u32,
    /// Signing every host's certificate with the cluster CA.
    pub certs_secs: f64,
    /// From the first dial until every host's stream was open.
    pub link_secs: f64,
    /// Creating the apps, the seed build, the pipeline and the promotions.
    pub apps_secs: f64,
}

/// One scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub scenario: Scenario,
    /// Running hosts at the end.
    pub hosts: usize,
    /// Dynos wanted.
    pub dynos: u64,
    /// Wanted dynos the hosts reported up at the end.
    pub reached: u64,
    /// Everything up before the deadline.
    pub settled: bool,
    /// Until settled, or until the deadline.
    pub seconds: f64,
    /// Dynos started (or moved, or kept) per second, end to end; only when settled.
    pub dynos_per_s: Option<f64>,
    pub reconcile_passes: u64,
    pub reconcile_p50_ms: Option<f64>,
    pub reconcile_p99_ms: Option<f64>,
    pub ps_p99_ms: Option<f64>,
    pub ps_requests: usize,
    pub scale_p99_ms: Option<f64>,
    pub scale_requests: usize,
    /// `ps`/`ps:scale` requests that failed (e.g. during a scheduler restart).
    pub api_errors: u64,
    pub rss_peak_mib: f64,
    pub cpu_secs: f64,
    /// AgentLink bytes, agents → scheduler and back, TLS included.
    pub sent_mib: f64,
    pub received_mib: f64,
    /// `lose`: dynos that were on the lost hosts.
    pub moved: Option<u64>,
    /// `restart`: dynos running before that were stopped after (should be 0).
    pub restarted: Option<u64>,
}

fn ms(v: Option<f64>) -> String {
    v.map_or("–".to_string(), |v| format!("{v:.1}"))
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Outcome {
    fn name(&self) -> &'static str {
        match self.scenario {
            Scenario::Scale => "scale 0 → N",
            Scenario::Lose => "lose hosts",
            Scenario::Restart => "scheduler restart",
            Scenario::Deploy => "deploy every app",
        }
    }

    /// "all up" or how far it got.
    fn up(&self) -> String {
        if self.settled {
            format!("{:.1} s", self.seconds)
        } else {
            format!(
                "**{} of {} up after {:.0} s**",
                thousands(self.reached),
                thousands(self.dynos),
                self.seconds
            )
        }
    }

    fn note(&self) -> String {
        let mut notes = Vec::new();
        if let Some(m) = self.moved {
            notes.push(format!("{} dynos moved", thousands(m)));
        }
        if let Some(r) = self.restarted {
            notes.push(format!("{r} dynos restarted"));
        }
        if self.api_errors > 0 {
            notes.push(format!("{} API errors", self.api_errors));
        }
        notes.join(", ")
    }
}

/// The markdown table.
pub fn table(setup: &Setup, outcomes: &[Outcome]) -> String {
    let mut out = format!(
        "{} hosts ({} slots each), {} apps; setup: certificates {:.1} s, all hosts linked {:.1} s, apps + releases {:.1} s\n\n",
        thousands(setup.hosts as u64),
        setup.slots,
        thousands(setup.apps as u64),
        setup.certs_secs,
        setup.link_secs,
        setup.apps_secs
    );
    out.push_str(HEADER);
    for o in outcomes {
        out.push_str(&row(o));
    }
    out
}

const HEADER: &str = "| scenario | hosts | dynos | all up | dynos/s | reconcile p50 / p99 (passes) | `ps` p99 | `ps:scale` p99 | scheduler RSS peak | scheduler CPU | AgentLink sent / received | notes |\n\
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n";

/// One scenario's line of the table.
pub fn row(o: &Outcome) -> String {
    format!(
            "| {} | {} | {} | {} | {} | {} / {} ms ({}) | {} ms | {} ms | {:.0} MiB | {:.1} s ({:.2} cores) | {:.1} / {:.1} MiB | {} |\n",
            o.name(),
            thousands(o.hosts as u64),
            thousands(o.dynos),
            o.up(),
            o.dynos_per_s.map_or("–".to_string(), |r| format!("{r:.0}")),
            ms(o.reconcile_p50_ms),
            ms(o.reconcile_p99_ms),
            o.reconcile_passes,
            ms(o.ps_p99_ms),
            ms(o.scale_p99_ms),
            o.rss_peak_mib,
            o.cpu_secs,
            o.cpu_secs / o.seconds.max(1e-9),
            o.sent_mib,
            o.received_mib,
            o.note()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separates_thousands() {
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(thousands(412), "412");
        assert_eq!(thousands(12_345), "12,345");
    }
}
