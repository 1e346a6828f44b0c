//! The actor's decisions, run against the fake driver in virtual time: what it reports to
//! the scheduler, what it asks of the driver, and when.

use super::*;
use crate::daemon::fake::{Call, FakeBlobs, FakeDriver, Script};
use proto::DynoState as S;

const POLICY: RestartPolicy = RestartPolicy {
    base: Duration::from_secs(10),
    cap: Duration::from_secs(40),
    reset: Duration::from_secs(60),
};
const BOOT_TIMEOUT: Duration = Duration::from_secs(5);
const SECOND: Duration = Duration::from_secs(1);

/// A core with a fake driver and blob store, linked to a scheduler that is this test.
struct Harness {
    core: Core,
    messages: mpsc::UnboundedReceiver<Message>,
    link: mpsc::Receiver<proto::AgentMessage>,
    driver: Arc<FakeDriver>,
    /// Every dyno report sent so far.
    reports: Vec<proto::DynoStatus>,
    hellos: Vec<proto::Hello>,
    generation: u64,
    /// The scheduler leader's term the next assignments carry.
    term: u64,
    /// The cluster the assignments say they come from.
    cluster: String,
    state: tempfile::TempDir,
}

fn config(state_dir: &Path) -> DaemonConfig {
    DaemonConfig {
        scheduler: Scheduler::new(
            manifold_endpoints::Endpoints::parse("http://127.0.0.1:9").expect("url"),
            None,
        ),
        host_id: "test-host".into(),
        address: "127.0.0.1".into(),
        memory_bytes: 1 << 30,
        slots: 10,
        ports: PortRange {
            start: 31000,
            end: 31009,
        },
        heartbeat: Duration::from_secs(5),
        host: HostConfig::with_state_dir(state_dir),
        shim_binary: PathBuf::from("/nonexistent/manifold-agent"),
        slugbuilder: PathBuf::from("/nonexistent/slugbuilder"),
        buildpacks_dir: None,
        buildpack_root: None,
        max_slug_bytes: 1 << 30,
        restart: POLICY,
        boot_timeout: BOOT_TIMEOUT,
        log_rate: LogRate::default(),
        metrics_listen: None,
        slug_retention: Duration::from_secs(3600),
        ids: None,
    }
}

impl Harness {
    /// A core as `run` makes it (not yet linked, nothing adopted), with `state` as what a
    /// previous daemon saved.
    fn new(state: AgentState, dir: tempfile::TempDir) -> Self {
        let config = Arc::new(config(dir.path()));
        std::fs::create_dir_all(config.host.dynos_dir()).expect("dynos dir");
        let (inputs, messages) = mpsc::unbounded_channel();
        let driver = Arc::new(FakeDriver::default());
        let core = Core {
            blobs: Arc::new(FakeBlobs),
            driver: driver.clone(),
            ports: PortAllocator::new(config.ports),
            config: config.clone(),
            state,
            dynos: BTreeMap::new(),
            link: None,
            inputs,
            logs: LogShipper::new(config.log_rate, logship::QUEUE_LINES),
            outbox: Outbox::default(),
            metrics: Arc::new(AgentMetrics::default()),
            destroyed_reported: BTreeSet::new(),
        };
        let (_, link) = mpsc::channel(1);
        Harness {
            core,
            messages,
            link,
            driver,
            reports: Vec::new(),
            hellos: Vec::new(),
            generation: 0,
            term: 1,
            cluster: String::new(),
            state: dir,
        }
    }

    fn linked() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut h = Harness::new(AgentState::default(), dir);
        h.connect();
        h
    }

    fn connect(&mut self) {
        let (tx, rx) = mpsc::channel(10_000);
        self.link = rx;
        self.core.link_event(LinkEvent::Connected(tx));
        self.collect();
    }

    /// The scheduler's new assignment set for this host: `(id, name)`.
    fn assign(&mut self, dynos: &[(&str, &str)]) {
        self.generation += 1;
        let dynos = dynos
            .iter()
            .map(|(id, name)| assignment(id, name))
            .collect();
        self.core
            .link_event(LinkEvent::Message(proto::SchedulerMessage {
                kind: Some(proto::scheduler_message::Kind::Assignments(
                    proto::Assignments {
                        generation: self.generation,
                        dynos,
                        term: self.term,
                        cluster: self.cluster.clone(),
                        ..Default::default()
                    },
                )),
            }));
        self.collect();
    }

    fn collect(&mut self) {
        while let Ok(message) = self.link.try_recv() {
            match message.kind {
                Some(proto::agent_message::Kind::Dyno(status)) => self.reports.push(status),
                Some(proto::agent_message::Kind::Hello(hello)) => self.hellos.push(hello),
                _ => {}
            }
        }
    }

    /// Runs the core on what its tasks tell it until `done` holds; time passes only as
    /// timers make it (it is paused), so an hour without it is a hang.
    async fn until(&mut self, what: &str, done: impl Fn(&Harness) -> bool) {
        loop {
            self.collect();
            if done(self) {
                return;
            }
            let message = tokio::time::timeout(Duration::from_secs(3600), self.messages.recv())
                .await
                .unwrap_or_else(|_| panic!("no {what} within an hour: {:?}", self.states("d1")))
                .expect("the core holds a sender");
            self.core.input(message);
        }
    }

    /// Runs the core for `span` of (virtual) time.
    async fn run_for(&mut self, span: Duration) {
        let deadline = tokio::time::Instant::now() + span;
        loop {
            tokio::select! {
                Some(message) = self.messages.recv() => self.core.input(message),
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        self.collect();
    }

    /// The states reported for `id`, with their exit statuses.
    fn states(&self, id: &str) -> Vec<(S, Option<i32>)> {
        self.reports
            .iter()
            .filter(|s| s.id == id)
            .map(|s| (s.state(), s.exit_status))
            .collect()
    }

    fn last(&self, id: &str) -> Option<&proto::DynoStatus> {
        self.reports.iter().rev().find(|s| s.id == id)
    }

    fn calls(&self) -> Vec<Call> {
        self.driver.calls().into_iter().map(|(_, c)| c).collect()
    }
}

fn assignment(id: &str, name: &str) -> proto::Assignment {
    proto::Assignment {
        id: id.into(),
        app: "app".into(),
        name: name.into(),
        command: "serve".into(),
        size: "standard-1x".into(),
        stack: "testing".into(),
        slug: Some(proto::Slug {
            sha256: "ab".repeat(32),
            size: 1,
        }),
        release_version: 1,
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_crashing_dyno_is_restarted_at_once_then_with_growing_backoff() {
    let mut h = Harness::linked();
    let crash = Script::CrashesAfter(SECOND);
    h.driver.script([crash, crash, crash]);
    h.assign(&[("d1", "worker.1")]);
    h.until("4th run up", |h| {
        h.driver.starts().len() == 4 && h.states("d1").len() == 11
    })
    .await;

    let run = [(S::Starting, None), (S::Up, None), (S::Crashed, Some(1))];
    let mut expected: Vec<_> = run.iter().cycle().take(9).copied().collect();
    expected.extend([(S::Starting, None), (S::Up, None)]);
    assert_eq!(h.states("d1"), expected);

    // Each run crashes 1 s after its start; the gap after it is the restart's delay.
    let starts = h.driver.starts();
    let delays: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0] - SECOND).collect();
    assert_eq!(delays[0], Duration::ZERO, "the 1st crash restarts at once");
    assert!(
        (POLICY.base / 2..=POLICY.base).contains(&delays[1]),
        "the 2nd waits base with jitter: {delays:?}"
    );
    assert!(
        (POLICY.base..=POLICY.base * 2).contains(&delays[2]),
        "the 3rd waits twice as long: {delays:?}"
    );
    assert_eq!(h.core.metrics.restarts.load(Ordering::Relaxed), 3);
    assert!(h.calls().iter().all(|c| matches!(c, Call::Start { .. })));
}

#[tokio::test(start_paused = true)]
async fn a_dyno_whose_start_fails_is_reported_crashed_with_why_and_restarted() {
    let mut h = Harness::linked();
    h.driver.script([Script::StartFails]);
    h.assign(&[("d1", "worker.1")]);
    h.until("the restart up", |h| h.states("d1").len() == 4)
        .await;
    assert_eq!(
        h.states("d1"),
        [
            (S::Starting, None),
            (S::Crashed, None),
            (S::Starting, None),
            (S::Up, None)
        ]
    );
    let crashed = &h.reports[1];
    assert!(
        crashed.reason.contains("start failed") && crashed.reason.contains("scripted"),
        "{}",
        crashed.reason
    );
}

#[tokio::test(start_paused = true)]
async fn a_dyno_unassigned_while_launching_is_stopped_once_launched() {
    let mut h = Harness::linked();
    h.assign(&[("d1", "worker.1")]);
    // Before the launch task has even run.
    h.assign(&[]);
    assert!(h.core.dynos.contains_key("d1"), "kept until its run ends");
    h.until("its removal", |h| !h.core.dynos.contains_key("d1"))
        .await;
    let calls = h.calls();
    assert!(
        matches!(&calls[..], [Call::Start { .. }, Call::Stop { .. }]),
        "{calls:?}"
    );
    assert_eq!(
        h.states("d1"),
        [
            (S::Starting, None),
            (S::Up, None),
            (S::Stopping, None),
            (S::Down, Some(143))
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_one_off_ends_complete_and_is_not_started_again_until_unassigned() {
    let mut h = Harness::linked();
    h.driver.script([Script::Exits {
        after: SECOND,
        status: 0,
    }]);
    h.assign(&[("d1", "run.1")]);
    h.until("complete", |h| {
        h.last("d1").is_some_and(|s| s.state() == S::Complete)
    })
    .await;
    // Time passes, the same set comes again: still done, never restarted.
    h.run_for(Duration::from_secs(3600)).await;
    h.assign(&[("d1", "run.1")]);
    h.run_for(Duration::from_secs(60)).await;
    assert_eq!(h.driver.starts().len(), 1);
    assert_eq!(
        h.states("d1"),
        [(S::Starting, None), (S::Up, None), (S::Complete, Some(0))]
    );
    // Unassigned, it goes: reported down with its exit status, once.
    h.assign(&[]);
    assert!(!h.core.dynos.contains_key("d1"));
    assert_eq!(h.states("d1").last(), Some(&(S::Down, Some(0))));
    assert_eq!(h.states("d1").len(), 4);
    assert_eq!(h.driver.starts().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_web_dyno_that_never_binds_is_killed_reported_crashed_and_restarted_with_backoff() {
    let mut h = Harness::linked();
    h.driver.script([Script::NeverBinds, Script::NeverBinds]);
    h.assign(&[("d1", "web.1")]);
    h.until("the 3rd run up", |h| h.states("d1").len() == 6)
        .await;
    let r10 = (S::Crashed, Some(137));
    assert_eq!(
        h.states("d1"),
        [
            (S::Starting, None),
            r10,
            (S::Starting, None),
            r10,
            (S::Starting, None),
            (S::Up, None)
        ]
    );
    assert!(h.reports[1].reason.contains("R10"), "{:?}", h.reports[1]);
    // Its host port is its own and kept across restarts.
    assert!(h.reports.iter().all(|s| s.port == 31000), "{:?}", h.reports);

    let calls = h.driver.calls();
    let (t0, _) = calls[0];
    let at: Vec<(Duration, &str)> = calls
        .iter()
        .map(|(t, c)| {
            let what = match c {
                Call::Start { .. } => "start",
                Call::Kill { .. } => "kill",
                Call::Stop { .. } => "stop",
            };
            (*t - t0, what)
        })
        .collect();
    // Killed at the boot timeout; restarted at once, then after base with jitter.
    assert_eq!(
        at[..4],
        [
            (Duration::ZERO, "start"),
            (BOOT_TIMEOUT, "kill"),
            (BOOT_TIMEOUT, "start"),
            (BOOT_TIMEOUT * 2, "kill")
        ]
    );
    assert_eq!(at[4].1, "start");
    let delay = at[4].0 - BOOT_TIMEOUT * 2;
    assert!(
        (POLICY.base / 2..=POLICY.base).contains(&delay),
        "{delay:?}"
    );
    assert_eq!(at.len(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_readopted_running_dyno_reports_its_state_without_relaunching() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let record = AssignmentRecord::from(assignment("d1", "worker.1"));
    let state = AgentState {
        generation: 3,
        term: 1,
        cluster: String::new(),
        assignments: vec![record.clone()],
        services: Vec::new(),
        destroyed_services: Vec::new(),
    };
    // The dyno a previous daemon started, and a dead one it left.
    let run = "d1-0000abcd";
    let running = DynoDir::new(&config.host, run);
    std::fs::create_dir_all(&running.root).expect("mkdir");
    std::fs::write(running.root.join(ASSIGNMENT_FILE), "d1").expect("write");
    let up_since = 1_700_000_000_000;
    std::fs::write(running.root.join(SINCE_FILE), since_text(S::Up, up_since)).expect("write");
    let dead = DynoDir::new(&config.host, "d0-00001234");
    std::fs::create_dir_all(&dead.root).expect("mkdir");
    std::fs::write(dead.root.join(ASSIGNMENT_FILE), "d0").expect("write");

    let mut h = Harness::new(state, dir);
    let dyno = DynoConfig {
        id: run.into(),
        name: record.name.clone(),
        stack: record.stack.clone(),
        slug: None,
        size: DynoSize::Standard1X,
        env: BTreeMap::new(),
        command: record.command.clone(),
        port: None,
        publish: None,
        grace: GRACE,
        boot_timeout: BOOT_TIMEOUT,
        mounts: Vec::new(),
        uid: DYNO_UID,
        gid: DYNO_GID,
        host: config.host.clone(),
        attach: None,
        log_rate: None,
        access: Default::default(),
    };
    h.driver
        .leave_running(&running, dyno, Script::RunsUntilStopped);

    // As `run` starts: adopt, let the replays settle, reconcile, then link.
    h.core.adopt_all().await;
    h.core.settle(&mut h.messages, ADOPT_SETTLE).await;
    h.core.reconcile();
    h.connect();

    assert!(h.driver.starts().is_empty(), "not launched again");
    assert!(
        !dead.root.exists(),
        "the dead dyno's directory is cleaned up"
    );
    let hello = h.hellos.last().expect("hello");
    assert_eq!(hello.generation, 3);
    let [status] = &hello.dynos[..] else {
        panic!("{:?}", hello.dynos);
    };
    assert_eq!(status.id, "d1");
    assert_eq!(status.state(), S::Up);
    assert_eq!(
        status.changed_at_ms, up_since,
        "up since before the restart"
    );
    assert!(h.core.dynos.contains_key("d1") && !h.core.dynos.contains_key("d0"));
    assert!(h.state.path().exists());
}

#[tokio::test(start_paused = true)]
async fn unassigning_a_running_dyno_stops_it_and_removes_the_entry_after_it_ends() {
    let mut h = Harness::linked();
    h.assign(&[("d1", "web.1")]);
    h.until("up", |h| h.last("d1").is_some_and(|s| s.state() == S::Up))
        .await;
    h.assign(&[]);
    assert!(
        h.core.dynos.contains_key("d1"),
        "kept while it stops (its last lines still come)"
    );
    h.until("its removal", |h| !h.core.dynos.contains_key("d1"))
        .await;
    let calls = h.calls();
    assert!(
        matches!(&calls[..], [Call::Start { .. }, Call::Stop { .. }]),
        "{calls:?}"
    );
    assert_eq!(
        h.states("d1"),
        [
            (S::Starting, None),
            (S::Up, None),
            (S::Stopping, None),
            (S::Down, Some(143))
        ],
        "down once"
    );
    // Its port is free again, and nothing of it is left in the dynos' directory.
    assert_eq!(h.core.ports.allocate(), Ok(31000));
    let left: Vec<_> = std::fs::read_dir(h.core.config.host.dynos_dir())
        .expect("dynos dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // Nothing starts it again.
    h.run_for(Duration::from_secs(3600)).await;
    assert_eq!(h.driver.starts().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn assignments_of_a_deposed_leaders_term_are_refused() {
    let mut h = Harness::linked();
    h.term = 2;
    h.assign(&[("d1", "web.1")]);
    h.until("up", |h| h.last("d1").is_some_and(|s| s.state() == S::Up))
        .await;
    // The leader of term 1, deposed but not yet aware of it, sends an empty set.
    h.term = 1;
    h.assign(&[]);
    h.run_for(Duration::from_secs(60)).await;
    assert_eq!(h.last("d1").map(|s| s.state()), Some(S::Up), "still up");
    assert!(h.calls().iter().all(|c| !matches!(c, Call::Stop { .. })));
    assert_eq!(h.core.state.term, 2);
    // The leader of term 3 is obeyed.
    h.term = 3;
    h.assign(&[]);
    h.until("its removal", |h| !h.core.dynos.contains_key("d1"))
        .await;
    assert_eq!(h.core.state.term, 3);
}

#[tokio::test(start_paused = true)]
async fn another_cluster_counts_its_terms_afresh() {
    let mut h = Harness::linked();
    h.cluster = "old".into();
    h.term = 5;
    h.assign(&[("d1", "web.1")]);
    h.until("up", |h| h.last("d1").is_some_and(|s| s.state() == S::Up))
        .await;
    // A scheduler on a new database (a fresh node) starts at term 1: obeyed, not taken
    // for a deposed leader of the old cluster.
    h.cluster = "new".into();
    h.term = 1;
    h.assign(&[]);
    h.until("its removal", |h| !h.core.dynos.contains_key("d1"))
        .await;
    assert_eq!(
        (h.core.state.cluster.as_str(), h.core.state.term),
        ("new", 1)
    );
    // Within the new cluster, the term rule holds again.
    h.term = 0;
    h.assign(&[("d2", "web.1")]);
    h.run_for(Duration::from_secs(60)).await;
    assert!(
        !h.core.dynos.contains_key("d2"),
        "an older term of the same cluster"
    );
}

mod failover;
mod services;
