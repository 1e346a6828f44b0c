//! The agent daemon: holds the link to the scheduler and reconciles this host's dynos toward
//! the last assignment set it got (level-triggered: it is never told what changed, only what
//! should run).
//!
//! ```text
//!   link::run ──LinkEvent──▶ ┌──────────── Core (one task, owns all state) ────────────┐
//!   dyno tasks ──Message───▶ │ assignments → agent.json → reconcile                    │──▶ AgentMessage
//!   build tasks ──Message──▶ │ per dyno: Entry::on(Input) → [Effect] → carried out     │    (Hello first)
//!                            └─────────────────────────────────────────────────────────┘
//!                                 │ Launch                      │ slugs
//!                                 ▼                             ▼
//!                          DynoDriver (ShimDriver)        BlobStore (Blobs)
//! ```
//!
//! One dyno entry, per assignment id, is an explicit machine (`entry.rs`, with its diagram):
//!
//! ```text
//! New ──▶ Launching ──launched──▶ Running ──unassigned──▶ Stopping ──ended──▶ (removed, `down`)
//!             │ failed                │ ended (still assigned)
//!             ▼                       ▼
//!          Backoff ◀──────────────────┘──timer──▶ Launching     one-off that ended ──▶ Done
//! ```
//!
//! Add-on services (`Assignments.services`: managed PostgreSQL and Redis with a volume) are
//! entries of the same machine, keyed `service/ID` (`services.rs`).
//!
//! The dynos run behind a driver (`driver.rs`): really a shim per dyno, so the daemon holds
//! nothing a dyno needs: killed and restarted, it re-adopts the running dynos from their
//! directories ([`Dyno::adopt`]). In unit tests, a fake driver scripts the dynos' lives.

pub mod link;
pub mod logship;
pub mod metrics;
pub mod outbox;
pub mod relay;
pub mod restart;
pub mod tls;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use manifold_proto as proto;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::build_dyno;
use crate::daemon::restart::{RestartPolicy, RestartSchedule};
use crate::dyno::{
    write_atomic, AttachSpec, DynoConfig, DynoDir, HostConfig, SlugSource, DYNO_GID, DYNO_UID,
};
use crate::host::ids::IdRanges;
use crate::logs::timestamp;
use crate::logs::LogRate;
use crate::runner::{self, Dyno, Event, LogLine, Source, State};
use crate::size::DynoSize;
use link::{Blobs, LinkEvent, Scheduler};
use logship::LogShipper;
use metrics::AgentMetrics;
use outbox::Outbox;

mod actor;
mod assignments;
mod builds;
mod config;
mod driver;
mod entry;
mod error;
#[cfg(test)]
mod fake;
mod launch;
mod ports;
mod services;

use crate::error::chain;
use actor::{app_host, collect_slugs, Core, Message};
use assignments::{parse_since, since_text, ASSIGNMENT_FILE, SINCE_FILE};
pub use assignments::{plan, AgentState, AssignmentRecord, Plan};
use builds::run_build;
pub use config::{default_memory, host_id, parse_memory, DaemonConfig, PortRange};
use driver::{BlobStore, DriverDyno, DynoDriver, Found, ShimDriver};
use entry::{proto_state, Effect, Entry, Input};
pub use error::DaemonError;
use launch::{container_id, follow, launch, start_and_follow, Launcher};
pub use ports::{PortAllocator, PortsExhausted};
pub use services::ServiceRecord;

/// How long a stopped dyno may take: the shim's own grace period plus its cleanup.
const GRACE: Duration = Duration::from_secs(30);

/// How long an attached dyno's relay may go on after the dyno ended, to deliver its last frames.
const RELAY_GRACE: Duration = Duration::from_secs(10);

/// How long start-up waits for re-adopted dynos to replay their streams before linking.
const ADOPT_SETTLE: Duration = Duration::from_secs(5);

/// How often waiting log lines go to the scheduler (sooner when a batch is full): `logs
/// --tail` shows a line well within a second of the dyno writing it.
const LOG_FLUSH: Duration = Duration::from_millis(100);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Runs the daemon until SIGTERM or Ctrl-C. Dynos keep running when it returns: the next
/// daemon re-adopts them.
pub async fn run(config: DaemonConfig) -> Result<(), DaemonError> {
    let state_dir = config.host.state_dir.clone();
    let state_err = |source| DaemonError::State {
        path: state_dir.clone(),
        source,
    };
    std::fs::create_dir_all(config.host.dynos_dir()).map_err(state_err)?;
    for dir in [config.host.dynos_dir(), state_dir.join("builds")] {
        match crate::host::quota::check(&dir) {
            crate::host::quota::Made::Limited => {
                tracing::info!("disk quotas on in {}", dir.display())
            }
            crate::host::quota::Made::Unlimited(why) => tracing::warn!(
                "dynos and builds in {} have no disk quota: {why} (README, \"Disk quotas\")",
                dir.display()
            ),
        }
    }
    let state = AgentState::load(&AgentState::path(&state_dir)).map_err(state_err)?;
    let (inputs_tx, mut inputs) = mpsc::unbounded_channel();
    let config = Arc::new(config);
    let mut core = Core {
        blobs: Arc::new(Blobs::new(config.scheduler.clone()).for_host(&config.host_id)),
        driver: Arc::new(ShimDriver {
            shim_binary: config.shim_binary.clone(),
        }),
        ports: PortAllocator::new(config.ports),
        config: config.clone(),
        state,
        dynos: BTreeMap::new(),
        link: None,
        inputs: inputs_tx,
        logs: LogShipper::new(config.log_rate, logship::QUEUE_LINES),
        outbox: Outbox::default(),
        metrics: Arc::new(AgentMetrics::default()),
        destroyed_reported: BTreeSet::new(),
    };
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| DaemonError::Metrics { addr, source })?;
        tokio::spawn(metrics::serve(listener, core.metrics.clone()));
    }
    core.adopt_all().await;
    core.reserve_volume_ports();
    // `Hello` must carry the adopted dynos' real states: let their replays run first.
    core.settle(&mut inputs, ADOPT_SETTLE).await;
    core.reconcile();
    core.destroy_services();

    let (link_tx, mut link_rx) = mpsc::unbounded_channel();
    tokio::spawn(link::run(config.scheduler.clone(), link_tx));
    tokio::spawn(collect_slugs(
        config.host.clone(),
        config.slug_retention,
        config.ids.clone(),
    ));
    let mut heartbeat = tokio::time::interval(config.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ship = tokio::time::interval(LOG_FLUSH);
    ship.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(state_err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(state_err)?;
    // systemd's `Type=notify`: ready once the dynos a previous daemon left are adopted and
    // the link is dialling (the scheduler being away is no reason not to be ready).
    notify(sd_notify::NotifyState::Ready);
    loop {
        tokio::select! {
            Some(event) = link_rx.recv() => core.link_event(event),
            Some(input) = inputs.recv() => {
                core.input(input);
                if core.logs.batch_ready() {
                    core.ship_logs();
                }
            }
            _ = ship.tick() => core.ship_logs(),
            _ = heartbeat.tick() => {
                let generation = core.state.generation;
                core.send(proto::agent_message::Kind::Heartbeat(proto::Heartbeat { generation }));
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    notify(sd_notify::NotifyState::Stopping);
    crate::runner::retire_warm_shims(&config.host);
    tracing::info!("exiting; dynos keep running and will be re-adopted");
    Ok(())
}

/// Tells the service manager, if one started us with a notify socket, what state we are in.
fn notify(state: sd_notify::NotifyState) {
    if let Err(err) = sd_notify::notify(false, &[state]) {
        tracing::warn!("cannot notify the service manager: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_allocated_from_the_range_reused_and_exhausted() {
        let range: PortRange = "31000-31002".parse().expect("range");
        let mut ports = PortAllocator::new(range);
        ports.claim(31001);
        assert_eq!(ports.allocate(), Ok(31000));
        assert_eq!(ports.allocate(), Ok(31002));
        assert_eq!(ports.allocate(), Err(PortsExhausted { range }));
        ports.release(31001);
        assert_eq!(ports.allocate(), Ok(31001));
    }

    #[test]
    fn the_state_since_file_round_trips() {
        let text = since_text(proto::DynoState::Up, 1_732_345_678_901);
        assert_eq!(text, "UP 1732345678901\n");
        assert_eq!(
            parse_since(&text),
            Some((proto::DynoState::Up, 1_732_345_678_901))
        );
        assert_eq!(parse_since(""), None);
        assert_eq!(parse_since("UP"), None);
        assert_eq!(parse_since("SIDEWAYS 12"), None);
        assert_eq!(parse_since("UP soon"), None);
    }

    #[test]
    fn plan_starts_the_missing_and_stops_the_unassigned() {
        let p = plan(["a", "b", "c"], ["b", "d"]);
        assert_eq!(p.start, vec!["a", "c"]);
        assert_eq!(p.stop, vec!["d"]);
        assert_eq!(plan(["a"], ["a"]), Plan::default());
        assert_eq!(plan([], ["x"]).stop, vec!["x"]);
    }

    #[test]
    fn agent_state_round_trips_and_starts_empty() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = AgentState::path(tmp.path());
        assert_eq!(
            AgentState::load(&path).expect("load"),
            AgentState::default()
        );
        let state = AgentState {
            generation: 7,
            term: 2,
            cluster: "c1".into(),
            assignments: vec![AssignmentRecord::from(proto::Assignment {
                id: "d1".into(),
                app: "app".into(),
                name: "web.1".into(),
                command: "serve".into(),
                size: "standard-1x".into(),
                stack: "testing".into(),
                slug: Some(proto::Slug {
                    sha256: "ab".into(),
                    size: 3,
                }),
                env: [("K".to_string(), "v".to_string())].into(),
                release_version: 2,
                boot_timeout_secs: 90,
                stop_timeout_secs: 0,
                attach: Some(proto::AttachSpec {
                    tty: true,
                    cols: 80,
                    rows: 100_000,
                }),
                egress: vec!["10.0.0.5:40001".into()],
            })],
            services: Vec::new(),
            destroyed_services: vec!["gone".into()],
        };
        assert_eq!(
            state.assignments[0].attach,
            Some(AttachSpec {
                tty: true,
                cols: 80,
                rows: u16::MAX
            }),
            "a window size past u16 is clamped"
        );
        state.save(&path).expect("save");
        assert_eq!(AgentState::load(&path).expect("load"), state);
        assert!(!path.with_extension("tmp").exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o077, 0, "config vars are for root only");
    }

    #[test]
    fn ports_and_memory_flags_parse() {
        assert_eq!(
            "30000-30999".parse::<PortRange>(),
            Ok(PortRange {
                start: 30000,
                end: 30999
            })
        );
        for bad in ["30000", "2-1", "0-5", "a-b", "1-70000"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
        assert_eq!(parse_memory("8G"), Ok(8 << 30));
        assert_eq!(parse_memory("512m"), Ok(512 << 20));
        assert_eq!(parse_memory("1000"), Ok(1000));
        assert!(parse_memory("8X").is_err());
        assert!(parse_memory("G").is_err());
        assert_eq!(
            default_memory("MemTotal:        2048000 kB\nMemFree: 1 kB\n"),
            Some(2_048_000 * 1024 - (512 << 20))
        );
    }

    #[test]
    fn one_offs_are_recognised_by_name() {
        assert!(entry::one_off("run.12"));
        assert!(entry::one_off("release.3"));
        assert!(entry::one_off("build.1"));
        assert!(!entry::one_off("worker.1"));
    }
}
