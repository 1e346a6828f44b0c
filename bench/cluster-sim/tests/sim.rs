//! The simulator against the real scheduler, small: 20 hosts, 400 dynos in 20 apps, every
//! scenario. Each must settle with every dyno up, the scheduler's API must list exactly the
//! dynos the hosts run (`--verify`), and a restart must restart nothing.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

use clap::Parser;
use manifold_cluster_sim::config::{Flags, Scenario};

/// The release scheduler beside this test's directory (`target/release/`).
fn scheduler_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("manifold-scheduler")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_cluster_settles_in_every_scenario() {
    let bin = scheduler_bin();
    if !manifold_test_support::require(
        "cluster-sim",
        &[(
            bin.is_file(),
            "no manifold-scheduler beside the test: cargo build --release -p manifold-scheduler, then run with --release",
        )],
    ) {
        return;
    }
    let flags = Flags::try_parse_from([
        "manifold-cluster-sim",
        "--hosts",
        "20",
        "--dynos",
        "400",
        "--apps",
        "20",
        "--deadline",
        "180s",
        "--log-rate",
        "5",
        "--verify",
        "--scheduler-bin",
        bin.to_str().unwrap(),
    ])
    .unwrap();
    let (setup, outcomes) = manifold_cluster_sim::simulate(flags.check().unwrap())
        .await
        .unwrap();
    println!("{}", manifold_cluster_sim::report::table(&setup, &outcomes));
    let ran: Vec<Scenario> = outcomes.iter().map(|o| o.scenario).collect();
    assert_eq!(
        ran,
        [
            Scenario::Scale,
            Scenario::Lose,
            Scenario::Restart,
            Scenario::Deploy
        ]
    );
    for o in &outcomes {
        assert!(o.settled, "{:?} did not settle: {o:?}", o.scenario);
        assert_eq!((o.dynos, o.reached), (400, 400), "{o:?}");
        assert!(o.sent_mib > 0.0 && o.received_mib > 0.0, "{o:?}");
    }
    // Two of the 20 hosts went, with their dynos.
    assert_eq!(outcomes[1].hosts, 18);
    assert!(outcomes[1].moved.unwrap() > 0);
    assert_eq!(outcomes[2].restarted, Some(0), "{:?}", outcomes[2]);
}

#[test]
fn bad_flags_are_refused_with_what_is_wrong() {
    let sim = env!("CARGO_BIN_EXE_manifold-cluster-sim");
    for (args, says) in [
        (&["--hosts", "0"][..], "--hosts 0: give 1 to"),
        (
            &["--dynos", "3", "--apps", "5"][..],
            "--dynos 3 is fewer than --apps 5",
        ),
        (&["--scenarios", "restart"][..], "start with `scale`"),
        (
            &["--scheduler-bin", "/nonexistent"][..],
            "/nonexistent: no such file",
        ),
        (&["--deadline", "soon"][..], "--deadline"),
    ] {
        let out = Command::new(sim).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
