//! The shim's decisions against a fake kernel, without root: the start steps' order, the step
//! a failure is named after, the teardown of what a failed start made, the stop's signals.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::time::Duration;

use manifold_dyno::DynoSize;

use crate::dyno::{DynoConfig, DynoDir, HostConfig, SlugSource, DYNO_GID, DYNO_UID};

use super::kernel::fake::{Fake, Journal};
use super::recorder::Recorder;
use super::stop::StopState;
use super::{cleanup, Shim, SEGMENT_BYTES};

/// A web dyno's shim on a fake kernel whose call `fail` errs, in a temporary state directory
/// holding a finished stack.
fn shim(fail: Option<&'static str>) -> (Shim, Journal, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let host = HostConfig::with_state_dir(tmp.path());
    let stack = host.stacks_dir().join("testing");
    fs::create_dir_all(&stack).expect("stack");
    fs::write(stack.join(".manifold-stack"), "").expect("stack marker");
    let config = DynoConfig {
        id: "d-1".into(),
        name: "web.1".into(),
        stack: "testing".into(),
        slug: Some(SlugSource {
            path: tmp.path().join("slug.tgz"),
            sha256: None,
        }),
        size: DynoSize::Standard1X,
        env: BTreeMap::new(),
        command: "true".into(),
        port: Some(manifold_dyno::WEB_PORT),
        publish: None,
        grace: Duration::from_secs(30),
        boot_timeout: Duration::from_secs(60),
        mounts: vec![],
        uid: DYNO_UID,
        gid: DYNO_GID,
        host: host.clone(),
        attach: None,
        log_rate: None,
        access: Default::default(),
    };
    let dir = DynoDir::new(&host, &config.id);
    dir.write_config(&config).expect("dyno.json");
    let out = Recorder::open(&dir, SEGMENT_BYTES).expect("recorder");
    let (kernel, journal) = Fake::kernel(fail);
    let shim = Shim {
        config,
        dir,
        out,
        kernel,
        container: None,
        session: None,
        termed: HashSet::new(),
        cpu: None,
        sentinel: None,
    };
    (shim, journal, tmp)
}

/// What a start that ran to its end asks of the kernel, in order.
const START: [&str; 11] = [
    "slug_layer",
    "limit_disk",
    "mount",
    "ensure_host",
    "build",
    "forbid_swap",
    "keep_scope",
    "limit_user_namespace",
    "join_cpu",
    "plug",
    "start",
];

#[test]
fn the_steps_run_in_order_and_the_dyno_starts() {
    let (mut shim, journal, _tmp) = shim(None);
    let running = shim.start().map_err(|f| f.message).expect("started");
    assert_eq!(journal.calls(), START);
    assert_eq!(running.pid, nix::unistd::Pid::this());
    assert_eq!(running.logged.len(), 2, "stdout and stderr are logged");
    assert!(shim.dir.bundle().join("config.json").is_file());
    shim.out.flush();
    let stream = fs::read_to_string(shim.dir.stream()).expect("stream");
    assert!(stream.contains("\"started\""), "{stream}");
}

#[test]
fn a_failed_step_is_named_and_what_it_made_is_undone_in_reverse() {
    // (the kernel's call that fails, the step the failure names)
    let cases = [
        ("slug_layer", "slug"),
        ("limit_disk", "disk"),
        ("mount", "rootfs"),
        ("ensure_host", "network"),
        ("build", "container"),
        ("forbid_swap", "cgroup"),
        ("plug", "network"),
        ("start", "start"),
    ];
    for (call, step) in cases {
        let (mut shim, journal, _tmp) = shim(Some(call));
        let failure = match shim.start() {
            Ok(_) => panic!("{call}: the start went on"),
            Err(f) => f,
        };
        assert_eq!(failure.step, step, "{call}");
        assert!(
            failure.message.contains(call),
            "{call}: {}",
            failure.message
        );
        let done = journal.calls();
        let at = START.iter().position(|c| *c == call).expect("a start call");
        assert_eq!(
            done,
            START[..=at],
            "{call}: nothing runs after a failed step"
        );

        journal.clear();
        let built = shim.container.is_some();
        let errors = cleanup(&shim.kernel, &shim.config, &shim.dir, shim.container.take());
        // The fake's undos succeed unless named; the teardown's own order, whatever the
        // start reached (each undo is idempotent, so it runs them all).
        let container = if built { "delete" } else { "load" };
        let undo = [
            "remove_shim_cgroups",
            container,
            "remove_state",
            "remove_dyno_cgroups",
            "release",
            "unmount",
        ];
        assert_eq!(journal.calls(), undo, "{call}");
        let build = START.iter().position(|c| *c == "build").expect("build");
        assert_eq!(
            built,
            at > build,
            "{call}: a built container is kept for its undo"
        );
        assert!(errors.is_empty(), "{call}: {errors:?}");
        assert!(!shim.dir.bundle().exists(), "{call}: the bundle stays");
        assert!(
            !shim.dir.disk().exists(),
            "{call}: the writable layer stays"
        );
    }
}

#[test]
fn an_undo_that_fails_is_reported_and_the_others_still_run() {
    let (mut shim, journal, _tmp) = shim(Some("release"));
    shim.start().map_err(|f| f.message).expect("started");
    journal.clear();
    let errors = cleanup(&shim.kernel, &shim.config, &shim.dir, shim.container.take());
    assert_eq!(errors, ["network: release failed"]);
    let calls = journal.calls();
    assert_eq!(
        calls.last().map(String::as_str),
        Some("unmount"),
        "{calls:?}"
    );
    assert!(!shim.dir.bundle().exists());
}

#[test]
fn a_stop_signals_every_process_and_a_kill_is_sent_once() {
    let (mut shim, journal, _tmp) = shim(None);
    shim.start().map_err(|f| f.message).expect("started");
    journal.clear();
    let stop = shim.begin_stop();
    assert!(matches!(stop, StopState::Terminating { .. }));
    assert_eq!(journal.calls(), ["kill_all SIGTERM"]);
    let killed = shim.kill_now(stop);
    assert_eq!(shim.kill_now(killed), StopState::Killed);
    assert_eq!(journal.calls(), ["kill_all SIGTERM", "kill_all SIGKILL"]);
}

#[test]
fn an_attached_dyno_is_hung_up_on_rather_than_terminated() {
    let (mut shim, journal, _tmp) = shim(None);
    shim.config.attach = Some(crate::dyno::AttachSpec {
        tty: false,
        cols: 80,
        rows: 24,
    });
    shim.start().map_err(|f| f.message).expect("started");
    journal.clear();
    shim.begin_stop();
    assert_eq!(journal.calls(), ["kill_all SIGHUP"]);
}
