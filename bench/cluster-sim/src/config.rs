//! The simulator's flags, checked before anything starts: each bad value is refused with
//! what is wrong and what would do.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// The scenarios, in the order they run (each starts from the state the previous left).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Scale every app to its share of --dynos (from zero).
    Scale,
    /// Lose --lose-percent of the hosts at once; their dynos are placed elsewhere.
    Lose,
    /// Kill the scheduler and start it again on the same state: nothing may restart.
    Restart,
    /// `config:set` on every app: a new release each, every dyno replaced.
    Deploy,
}

/// A cluster simulator on real wires: a real `manifold-scheduler`, N simulated hosts speaking
/// AgentLink over mTLS, the users' side over the HTTP API.
#[derive(Debug, Clone, Parser)]
#[command(name = "manifold-cluster-sim")]
pub struct Flags {
    /// Simulated hosts.
    #[arg(long, default_value_t = 1000)]
    pub hosts: usize,
    /// Dynos in all (web dynos, spread evenly over the apps).
    #[arg(long, default_value_t = 100_000)]
    pub dynos: u64,
    /// Apps.
    #[arg(long, default_value_t = 1000)]
    pub apps: usize,
    /// Dyno slots per host (default: room for twice the dynos, so a lost tenth fits).
    #[arg(long)]
    pub slots: Option<u32>,
    /// Scenarios to run, comma-separated, in this order: scale,lose,restart,deploy.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "scale,lose,restart,deploy"
    )]
    pub scenarios: Vec<Scenario>,
    /// Percent of the hosts the `lose` scenario loses.
    #[arg(long, default_value_t = 10)]
    pub lose_percent: u32,
    /// How long each scenario may take before what it reached is reported as it is.
    #[arg(long, default_value = "600s", value_parser = humantime::parse_duration)]
    pub deadline: Duration,
    /// The agents' heartbeat interval (the agent's default).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,
    /// The scheduler's --heartbeat-deadline (its default).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub heartbeat_deadline: Duration,
    /// Log lines each host sends per second.
    #[arg(long, default_value_t = 0)]
    pub log_rate: u32,
    /// The scheduler binary (default: `manifold-scheduler` beside this one).
    #[arg(long)]
    pub scheduler_bin: Option<PathBuf>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// After each scenario, list every app's dynos through the API and check they match the
    /// hosts' (slow at scale: one request per app).
    #[arg(long)]
    pub verify: bool,
}

/// Checked settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub flags: Flags,
    pub slots: u32,
    pub scheduler_bin: PathBuf,
}

/// Most hosts one process holds: each is a connection here and one in the scheduler.
pub const MAX_HOSTS: usize = 50_000;
/// Log lines per host per second past which the figure would be about logs, not placement.
pub const MAX_LOG_RATE: u32 = 10_000;

impl Flags {
    pub fn check(self) -> Result<Config, String> {
        if self.hosts == 0 || self.hosts > MAX_HOSTS {
            return Err(format!("--hosts {}: give 1 to {MAX_HOSTS}", self.hosts));
        }
        if self.apps == 0 {
            return Err("--apps 0: give at least one app".to_string());
        }
        if self.dynos < self.apps as u64 {
            return Err(format!(
                "--dynos {} is fewer than --apps {}: every app gets at least one dyno",
                self.dynos, self.apps
            ));
        }
        if self.scenarios.is_empty() {
            return Err("--scenarios: name at least one of scale,lose,restart,deploy".to_string());
        }
        let mut sorted = self.scenarios.clone();
        sorted.sort();
        sorted.dedup();
        if sorted != self.scenarios {
            return Err(format!(
                "--scenarios {:?}: each at most once, in the order scale,lose,restart,deploy",
                self.scenarios
            ));
        }
        if self.scenarios[0] != Scenario::Scale {
            return Err(
                "--scenarios: start with `scale` (the others need running dynos)".to_string(),
            );
        }
        if !(1..=90).contains(&self.lose_percent) {
            return Err(format!(
                "--lose-percent {}: give 1 to 90",
                self.lose_percent
            ));
        }
        if self.deadline < Duration::from_secs(1) {
            return Err(format!("--deadline {:?}: give at least 1s", self.deadline));
        }
        if self.heartbeat < Duration::from_millis(100) || self.heartbeat >= self.heartbeat_deadline
        {
            return Err(format!(
                "--heartbeat {:?}: give at least 100ms and less than --heartbeat-deadline {:?}",
                self.heartbeat, self.heartbeat_deadline
            ));
        }
        if self.log_rate > MAX_LOG_RATE {
            return Err(format!(
                "--log-rate {}: give at most {MAX_LOG_RATE}",
                self.log_rate
            ));
        }
        // Room for the dynos on the hosts left after losing some, plus the probe app's two.
        let survivors = if self.scenarios.contains(&Scenario::Lose) {
            self.hosts - self.hosts * self.lose_percent as usize / 100
        } else {
            self.hosts
        };
        let needed = self.dynos + 2;
        let slots = match self.slots {
            Some(s) => s,
            None => u32::try_from((needed * 2).div_ceil(self.hosts as u64)).unwrap_or(u32::MAX),
        };
        if slots == 0 || (slots as u64) * (survivors as u64) < needed {
            return Err(format!(
                "--slots {slots}: {survivors} hosts (after losing {}%) hold {} dynos, fewer than the {needed} wanted",
                if self.scenarios.contains(&Scenario::Lose) { self.lose_percent } else { 0 },
                slots as u64 * survivors as u64
            ));
        }
        let scheduler_bin = match &self.scheduler_bin {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(|d| d.join("manifold-scheduler")))
                .ok_or("cannot find this program's directory: give --scheduler-bin")?,
        };
        if !scheduler_bin.is_file() {
            return Err(format!(
                "--scheduler-bin {}: no such file (build it: cargo build --release -p manifold-scheduler)",
                scheduler_bin.display()
            ));
        }
        Ok(Config {
            flags: self,
            slots,
            scheduler_bin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Flags {
        let mut all = vec!["manifold-cluster-sim", "--scheduler-bin", "/bin/sh"];
        all.extend_from_slice(args);
        Flags::try_parse_from(all).expect("parses")
    }

    fn refused(args: &[&str]) -> String {
        flags(args).check().expect_err("refused")
    }

    #[test]
    fn refuses_bad_flags_saying_which() {
        assert!(refused(&["--hosts", "0"]).contains("--hosts 0"));
        assert!(refused(&["--apps", "0"]).contains("--apps 0"));
        assert!(refused(&["--dynos", "5", "--apps", "10"]).contains("fewer than --apps"));
        assert!(refused(&["--scenarios", "lose"]).contains("start with `scale`"));
        assert!(refused(&["--scenarios", "deploy,scale"]).contains("in the order"));
        assert!(refused(&["--lose-percent", "95"]).contains("--lose-percent 95"));
        assert!(refused(&["--heartbeat", "6s"]).contains("--heartbeat"));
        assert!(refused(&["--log-rate", "100000"]).contains("--log-rate"));
        let slots = refused(&[
            "--hosts", "10", "--dynos", "100", "--apps", "10", "--slots", "10",
        ]);
        assert!(
            slots.contains("9 hosts (after losing 10%) hold 90 dynos"),
            "{slots}"
        );
        let bin = Flags::try_parse_from(["sim", "--scheduler-bin", "/nonexistent/sched"])
            .expect("parses")
            .check();
        assert!(bin.expect_err("refused").contains("no such file"));
        assert!(Flags::try_parse_from(["sim", "--scenarios", "explode"]).is_err());
    }

    #[test]
    fn default_slots_hold_twice_the_dynos() {
        let c = flags(&["--hosts", "10", "--dynos", "100", "--apps", "10"])
            .check()
            .expect("ok");
        assert_eq!(c.slots, 21);
    }
}
