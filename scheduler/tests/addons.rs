//! End-to-end: a PostgreSQL add-on on a real scheduler and agent (the `services` stack), an
//! app on `bookworm` whose release phase migrates it with `psql` and whose web dyno serves
//! its rows; the rows survive a crash of the add-on's server and a restart of the dynos; a
//! backup restores rows deleted from a one-off dyno; destroying the add-on deletes it. The
//! agent's address is the default `127.0.0.1`, as on an all-in-one node. As root, with the
//! `testing`, `bookworm` (with psql) and `services` stacks.

#![allow(clippy::unwrap_used)]

mod harness;

use std::path::Path;
use std::time::Duration;

use harness::{wait_for, Cluster, UP};

const APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/addon-web");

/// The add-on's postmaster: the `postgres` process in the agent's cgroups whose parent is
/// not one.
fn postmaster(c: &Cluster) -> Option<i32> {
    let parent = c.agents[0].cgroup_parent();
    let read = |pid: i32, what: &str| std::fs::read_to_string(format!("/proc/{pid}/{what}"));
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|&pid| {
            let ours = read(pid, "cgroup").is_ok_and(|cg| cg.contains(&format!("/{parent}/")));
            let postgres = read(pid, "comm").is_ok_and(|c| c.trim() == "postgres");
            let ppid: i32 = read(pid, "stat")
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse().ok()
                })
                .unwrap_or(0);
            let child = read(ppid, "comm").is_ok_and(|c| c.trim() == "postgres");
            ours && postgres && !child
        })
}

fn wait_available(c: &Cluster, app: &str) {
    wait_for(
        &format!("{app}'s add-on to be available"),
        Duration::from_secs(180),
        || {
            let addons = c.json(&["addons", "-a", app]);
            let addons = addons.as_array().unwrap().clone();
            (!addons.is_empty() && addons.iter().all(|a| a["state"] == "available")).then_some(())
        },
    );
}

#[test]
fn an_app_on_a_postgresql_addon_keeps_its_rows_across_restarts() {
    if !harness::ready()
        || !manifold_test_support::require(
            "the add-on end-to-end test",
            &[
                (
                    Path::new("/var/lib/manifold/stacks/services/.manifold-stack").exists(),
                    "the services stack is missing: run `scripts/setup services`",
                ),
                (
                    Path::new("/var/lib/manifold/stacks/bookworm/usr/bin/psql").exists(),
                    "the bookworm stack is missing or has no psql: run `scripts/setup bookworm`",
                ),
            ],
        )
    {
        return;
    }
    let mut c = Cluster::start(Duration::from_secs(10));
    c.add_agent("db", 20);
    c.wait_hosts(1);
    c.ok(&["apps:create", "notes", "--stack", "bookworm"]);
    let created = c.ok(&["addons:create", "postgresql", "-a", "notes"]);
    assert!(
        created.contains("Creating postgresql on notes... done"),
        "{created}"
    );
    wait_available(&c, "notes");
    let config = c.ok(&["config", "-a", "notes"]);
    assert!(config.contains("DATABASE_URL"), "{config}");

    let deploy = c.ok(&["deploy", APP, "-a", "notes"]);
    assert!(
        deploy.contains("migrated"),
        "the release phase ran: {deploy}"
    );
    c.wait_dynos("notes", &["web.1"], "up", UP);
    let (status, page) = c.route("notes", "/", &[]);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("migrated by release"), "{page}");
    let (status, noted) = c.route("notes", "/notes?body=kept-across-restarts", &["-X", "POST"]);
    assert_eq!(status, 201, "{noted}");

    // The add-on's server crashes: its agent starts it again on the same volume.
    let pid = wait_for("the add-on's postgres", Duration::from_secs(30), || {
        postmaster(&c)
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for("a new postgres", Duration::from_secs(120), || {
        postmaster(&c).filter(|p| *p != pid)
    });
    wait_available(&c, "notes");
    let before = c.dynos("notes")[0]["id"].clone();
    c.ok(&["ps:restart", "-a", "notes"]);
    wait_for("a new web.1 up", UP, || {
        let dynos = c.dynos("notes");
        dynos
            .iter()
            .any(|d| d["name"] == "web.1" && d["state"] == "up" && d["id"] != before)
            .then_some(())
    });
    wait_for("the rows served again", UP, || {
        let (status, page) = c.route("notes", "/", &[]);
        (status == 200 && page.contains("kept-across-restarts")).then_some(())
    });

    // A backup (pg_dump on the scheduler, over the host's network policy), the rows
    // deleted from a one-off dyno, the backup restored: the rows are back.
    let captured = c.ok(&["pg:backups:capture", "-a", "notes"]);
    assert!(captured.contains("to b001... done"), "{captured}");
    let deleted = c.cli_with_input(
        &[
            "run",
            "-a",
            "notes",
            "--",
            "psql \"$DATABASE_URL\" -c 'DELETE FROM notes'",
        ],
        "",
    );
    assert!(
        deleted.status.success(),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    let (_, page) = c.route("notes", "/", &[]);
    assert!(!page.contains("kept-across-restarts"), "deleted: {page}");
    c.ok(&[
        "pg:backups:restore",
        "b001",
        "-a",
        "notes",
        "--confirm",
        "notes",
    ]);
    let (_, page) = c.route("notes", "/", &[]);
    assert!(page.contains("kept-across-restarts"), "restored: {page}");

    // Destroyed: gone from the app and from its host.
    let name = c.json(&["addons", "-a", "notes"])[0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    c.ok(&["addons:destroy", &name, "-a", "notes", "--confirm", "notes"]);
    wait_for("the add-on to be gone", Duration::from_secs(60), || {
        c.json(&["addons"])
            .as_array()
            .unwrap()
            .is_empty()
            .then_some(())
    });
    assert!(postmaster(&c).is_none(), "its server is stopped");
    c.ok(&["apps:destroy", "notes", "--confirm", "notes"]);
}
