//! `manifold-cluster-sim`: the control plane at cluster scale, on real wires (issue 22). A real
//! `manifold-scheduler` process, thousands of simulated hosts in this process each speaking
//! AgentLink over its own mTLS connection, and the users' side over the HTTP API. See
//! `main.rs` for the command and BENCHMARKS.md for the figures.

pub mod agent;
pub mod api;
pub mod config;
pub mod fleet;
pub mod measure;
pub mod prom;
pub mod report;
pub mod scenario;
pub mod scheduler;
pub mod slug;
pub mod wire;

use config::Config;
use report::{Outcome, Setup};

/// Runs the configured scenarios in order; one that does not settle ends the run (the next
/// would start from an unknown state), with its partial figures kept.
pub async fn simulate(config: Config) -> anyhow::Result<(Setup, Vec<Outcome>)> {
    let scenarios = config.flags.scenarios.clone();
    let (mut sim, setup) = scenario::Sim::start(config).await?;
    let mut outcomes = Vec::new();
    for s in scenarios {
        let outcome = sim.run(s).await?;
        let settled = outcome.settled;
        eprint!("{}", report::row(&outcome));
        outcomes.push(outcome);
        if !settled {
            eprintln!(
                "{s:?} did not settle within the deadline: the remaining scenarios are skipped"
            );
            break;
        }
    }
    Ok((setup, outcomes))
}
