//! Acceptance: the agent daemon against a fake scheduler (AgentLink over gRPC and the blob
//! store over HTTP on one port, as the real scheduler serves them). It runs dynos from
//! assignments, survives its own SIGKILL without restarting them, relays an attached one-off's
//! frames (again after such a restart), and stops what is no longer assigned, leaving
//! nothing behind.

#![allow(clippy::unwrap_used)]

mod common;
mod fake_scheduler;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use fake_scheduler::*;
use manifold_proto::{
    agent_message, build_event, scheduler_message, Assignment, Assignments, AttachPacket,
    AttachSpec, BuildEvent, BuildRequest, DynoState, DynoStatus, SchedulerMessage, Slug,
};
use tokio::sync::mpsc;

const DYNOS: Isolation = Isolation {
    cgroup_parent: "manifold-test-daemon",
    bridge: "mftestd0",
    subnet: "10.231.0.0/24",
    table: "mftestd0",
    ports: "39170-39179",
};

const BUILDS: Isolation = Isolation {
    cgroup_parent: "manifold-test-daemon-build",
    bridge: "mftestd1",
    subnet: "10.231.1.0/24",
    table: "mftestd1",
    ports: "39180-39189",
};

const POLICIES: Isolation = Isolation {
    cgroup_parent: "manifold-test-daemon-policy",
    bridge: "mftestd2",
    subnet: "10.231.2.0/24",
    table: "mftestd2",
    ports: "39190-39199",
};

const ATTACH: Isolation = Isolation {
    cgroup_parent: "manifold-test-daemon-attach",
    bridge: "mftestd3",
    subnet: "10.231.3.0/24",
    table: "mftestd3",
    ports: "39200-39209",
};

/// The host uids of a dyno's processes, its shim aside, read from its cgroups.
fn dyno_host_uids(id: &str, shim: i32) -> BTreeSet<u32> {
    cgroup_parents(DYNOS.cgroup_parent)
        .iter()
        .filter_map(|parent| std::fs::read_to_string(parent.join(id).join("cgroup.procs")).ok())
        .flat_map(|procs| {
            procs
                .lines()
                .filter_map(|l| l.trim().parse::<i32>().ok())
                .collect::<Vec<_>>()
        })
        .filter(|pid| *pid != shim)
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let uid = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
            uid.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// The status of dyno `id` in `state`, as a report or in a `Hello`: a dyno that changes state
/// while a restarted agent is still linking is reported in its `Hello`'s list.
fn dyno_status(kind: &agent_message::Kind, id: &str, state: DynoState) -> Option<DynoStatus> {
    let wanted = |s: &&DynoStatus| s.id == id && s.state() == state;
    match kind {
        agent_message::Kind::Dyno(s) => Some(s).filter(wanted).cloned(),
        agent_message::Kind::Hello(h) => h.dynos.iter().find(wanted).cloned(),
        _ => None,
    }
}

fn assignment(id: &str, name: &str, command: &str, sha: &str, size: u64) -> Assignment {
    Assignment {
        id: id.into(),
        app: "demo".into(),
        name: name.into(),
        command: command.into(),
        size: "standard-1x".into(),
        stack: "testing".into(),
        slug: Some(Slug {
            sha256: sha.into(),
            size,
        }),
        env: [("GREETING".to_string(), "hi".to_string())].into(),
        release_version: 1,
        ..Assignment::default()
    }
}

async fn assign(fake: &Fake, generation: u64, dynos: Vec<Assignment>) {
    let tx = fake
        .agent
        .lock()
        .unwrap()
        .clone()
        .expect("an agent is linked");
    tx.send(Ok(SchedulerMessage {
        kind: Some(scheduler_message::Kind::Assignments(Assignments {
            generation,
            dynos,
            // One leader for the whole test.
            term: 1,
            ..Default::default()
        })),
    }))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_runs_readopts_and_stops_assigned_dynos() {
    if !ready() {
        return;
    }
    let (tmp, state, log) = agent_dirs();

    let slug = slug(
        tmp.path(),
        "app.tgz",
        &[("public/index.html", "hello from the daemon\n", 0o644)],
    );
    let bytes = std::fs::read(&slug).unwrap();
    let sha = sha256_hex(&bytes);
    let size = bytes.len() as u64;
    let blobs: Blobs = Arc::new(Mutex::new([(sha.clone(), bytes)].into()));
    let (fake, mut rx, _) = fake();
    let url = serve(fake.clone(), blobs).await;

    let mut agent = Agent::spawn(&state, &url, &DYNOS, &[]);
    let hello = wait_for(
        &mut rx,
        Duration::from_secs(20),
        "hello",
        &log,
        |k| match k {
            agent_message::Kind::Hello(h) => Some(h.clone()),
            _ => None,
        },
    )
    .await;
    assert_eq!(hello.host_id, "test-host");
    assert_eq!(hello.address, "127.0.0.1");
    assert!(hello.stacks.contains(&"testing".to_string()), "{hello:?}");
    assert_eq!(hello.capacity.unwrap().memory_bytes, 2 << 30);
    assert!(hello.dynos.is_empty());
    assert_eq!(hello.generation, 0);

    // Of another app than the web dyno: each app has its own id range on the host.
    let worker = Assignment {
        app: "other".into(),
        ..assignment(
            "d-worker-1",
            "worker.1",
            "trap 'exit 0' TERM; while true; do sleep 0.2; done",
            &sha,
            size,
        )
    };
    let web = assignment(
        "d-web-1",
        "web.1",
        "trap 'exit 0' TERM; busybox httpd -f -p $PORT -h /app/public & wait",
        &sha,
        size,
    );
    assign(&fake, 1, vec![worker.clone(), web.clone()]).await;
    let mut up = HashMap::new();
    let web_port = wait_for(&mut rx, Duration::from_secs(60), "both up", &log, |k| {
        for id in ["d-worker-1", "d-web-1"] {
            if let Some(status) = dyno_status(k, id, DynoState::Up) {
                up.insert(id, status.port);
            }
        }
        (up.len() == 2).then(|| up["d-web-1"])
    })
    .await;
    assert!((39170..=39179).contains(&web_port), "port {web_port}");
    let page =
        tokio::task::block_in_place(|| http_get_ok(web_port as u16, "/", Duration::from_secs(20)));
    assert!(page.contains("hello from the daemon"), "{page}");
    let saved = std::fs::read_to_string(state.join("agent.json")).unwrap();
    assert!(saved.contains("d-web-1") && saved.contains("\"generation\": 1"));
    let before = shim_pids(&state);
    assert_eq!(before.len(), 2, "{before:?}");
    // Each app's processes are host uids of its own range (range 0, at 100000, is for
    // dynos of no app); its slug layer is unpacked for that owner.
    let mut uids: Vec<BTreeSet<u32>> = before
        .iter()
        .map(|(id, shim)| dyno_host_uids(id, *shim))
        .collect();
    uids.sort();
    let ranges: Vec<u32> = [1, 2].map(|n| 100_000 + n * 65_536 + 1000).into();
    assert_eq!(
        uids,
        ranges
            .iter()
            .map(|u| BTreeSet::from([*u]))
            .collect::<Vec<_>>(),
        "host uids of the two apps' dynos"
    );
    let mut owners: Vec<String> = std::fs::read_dir(state.join("slugs"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    owners.sort();
    assert_eq!(
        owners,
        ranges
            .iter()
            .map(|u| format!("{u}-{u}"))
            .collect::<Vec<_>>()
    );

    // SIGKILL the agent: the dynos keep running and the next agent re-adopts them.
    agent.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for pid in before.values() {
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "shim {pid} died with the agent"
        );
    }
    let mut agent = Agent::spawn(&state, &url, &DYNOS, &[]);
    let hello = wait_for(
        &mut rx,
        Duration::from_secs(20),
        "second hello",
        &log,
        |k| match k {
            agent_message::Kind::Hello(h) => Some(h.clone()),
            _ => None,
        },
    )
    .await;
    assert_eq!(hello.generation, 1);
    let mut states: Vec<_> = hello
        .dynos
        .iter()
        .map(|d| (d.id.clone(), d.state(), d.port))
        .collect();
    states.sort();
    assert_eq!(
        states,
        vec![
            ("d-web-1".to_string(), DynoState::Up, web_port),
            ("d-worker-1".to_string(), DynoState::Up, 0),
        ],
        "{hello:?}"
    );
    assert_eq!(shim_pids(&state), before, "dynos were restarted");
    tokio::task::block_in_place(|| http_get_ok(web_port as u16, "/", Duration::from_secs(5)));

    // The scheduler drops the stream: the agent redials and says hello again, dynos untouched.
    let tx = fake.agent.lock().unwrap().take().unwrap();
    tx.send(Err(tonic::Status::unavailable("going away")))
        .await
        .unwrap();
    drop(tx);
    let hello = wait_for(
        &mut rx,
        Duration::from_secs(20),
        "hello after a drop",
        &log,
        |k| match k {
            agent_message::Kind::Hello(h) => Some(h.clone()),
            _ => None,
        },
    )
    .await;
    assert_eq!(hello.dynos.len(), 2, "{hello:?}");
    assert!(
        hello.dynos.iter().all(|d| d.state() == DynoState::Up),
        "{hello:?}"
    );
    assert_eq!(shim_pids(&state), before, "dynos were restarted");

    // The worker is no longer assigned: stopped and reported down; the web dyno stays.
    assign(&fake, 2, vec![web.clone()]).await;
    wait_for(&mut rx, Duration::from_secs(40), "worker down", &log, |k| {
        dyno_status(k, "d-worker-1", DynoState::Down)
    })
    .await;
    tokio::task::block_in_place(|| http_get_ok(web_port as u16, "/", Duration::from_secs(5)));

    // Nothing assigned: everything stops and nothing is left.
    assign(&fake, 3, vec![]).await;
    wait_for(&mut rx, Duration::from_secs(40), "web down", &log, |k| {
        dyno_status(k, "d-web-1", DynoState::Down)
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let dirs: Vec<_> = std::fs::read_dir(state.join("dynos"))
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        let shims: Vec<_> = before
            .values()
            .filter(|p| Path::new(&format!("/proc/{p}")).exists())
            .collect();
        let cgroups = cgroup_children(DYNOS.cgroup_parent);
        if dirs.is_empty() && shims.is_empty() && cgroups.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: dirs {dirs:?}, shims {shims:?}, cgroups {cgroups:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Stopped as systemd stops it: the warm shim its starts left waiting goes with it.
    let shims = state.join("shims");
    assert!(
        !warm_shims_in(&shims).is_empty(),
        "the starts left no warm shim"
    );
    tokio::task::block_in_place(|| agent.stop());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !warm_shims_in(&shims).is_empty() {
        assert!(
            Instant::now() < deadline,
            "warm shims outlived the agent: {:?}",
            warm_shims_in(&shims)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if std::env::var_os("SHOW_AGENT_LOG").is_some() {
        eprintln!("{}", std::fs::read_to_string(&log).unwrap());
    }
}

/// The warm shims waiting on a socket in `dir`: their pids.
fn warm_shims_in(dir: &Path) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<i32>().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            let waiting = args.len() >= 4
                && args[1..3] == [b"shim".as_slice(), b"--warm".as_slice()]
                && Path::new(std::str::from_utf8(args[3]).ok()?).starts_with(dir);
            waiting.then_some(pid)
        })
        .collect()
}

/// A flat tar.gz of an app's source, as `manifold deploy` uploads it.
fn source_tarball(files: &[(&str, &str, u32)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, contents, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        h.set_size(contents.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, contents.as_bytes()).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_builds_a_slug_and_restarts_a_crashing_dyno() {
    if !ready() {
        return;
    }
    let slugbuilder = Path::new(BIN).with_file_name("slugbuilder");
    assert!(
        slugbuilder.exists(),
        "build the workspace's binaries first: {} is missing",
        slugbuilder.display()
    );
    let (tmp, state, log) = agent_dirs();
    let source = source_tarball(&[
        ("Procfile", "web: busybox httpd -f -p $PORT\n", 0o644),
        ("index.html", "built by the daemon\n", 0o644),
    ]);
    let source_sha = sha256_hex(&source);
    let finished_source_sha = source_sha.clone();
    let blobs: Blobs = Arc::new(Mutex::new([(source_sha.clone(), source)].into()));
    let (fake, mut rx, _) = fake();
    let url = serve(fake.clone(), blobs.clone()).await;
    // A buildpack on the host, handed over by path.
    let bp = tmp.path().join("bp");
    std::fs::create_dir_all(bp.join("bin")).unwrap();
    for (name, body) in [
        ("detect", "echo Daemon"),
        (
            "compile",
            "echo \"compiling in $1\"; ls \"$1\"; echo done > \"$1/built\"",
        ),
        ("release", "echo '--- {}'"),
    ] {
        use std::os::unix::fs::PermissionsExt;
        let p = bp.join("bin").join(name);
        std::fs::write(&p, format!("#!/bin/bash\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // Short cool-offs, so that three crashes fit in the test's time.
    // Buildpacks named by host path come only from under --buildpack-root.
    let root = tmp.path().to_str().unwrap().to_string();
    let _agent = Agent::spawn(
        &state,
        &url,
        &BUILDS,
        &[
            "--restart-base",
            "1s",
            "--restart-cap",
            "2s",
            "--buildpack-root",
            &root,
        ],
    );
    wait_for(&mut rx, Duration::from_secs(20), "hello", &log, |k| {
        matches!(k, agent_message::Kind::Hello(_)).then_some(())
    })
    .await;
    let tx = fake.agent.lock().unwrap().clone().unwrap();
    tx.send(Ok(SchedulerMessage {
        kind: Some(scheduler_message::Kind::Build(BuildRequest {
            build_id: "b-1".into(),
            app: "demo".into(),
            stack: "testing".into(),
            source_sha256: source_sha,
            env: [("GREETING".to_string(), "hi".to_string())].into(),
            buildpacks: vec![bp.to_str().unwrap().to_string()],
        })),
    }))
    .await
    .unwrap();
    let mut output = Vec::new();
    let finished = wait_for(
        &mut rx,
        Duration::from_secs(120),
        "build",
        &log,
        |k| match k {
            agent_message::Kind::Build(BuildEvent {
                build_id,
                kind: Some(kind),
            }) if build_id == "b-1" => match kind {
                build_event::Kind::Output(line) => {
                    output.push(line.clone());
                    None
                }
                build_event::Kind::Finished(f) => Some(f.clone()),
            },
            _ => None,
        },
    )
    .await;
    assert_eq!(finished.status, 0, "{finished:?}\n{output:#?}");
    assert!(
        output.iter().any(|l| l == "compiling in /app"),
        "{output:#?}"
    );
    assert!(output.iter().any(|l| l == "index.html"), "{output:#?}");
    let slug = blobs
        .lock()
        .unwrap()
        .get(&finished.slug_sha256)
        .cloned()
        .expect("the slug was uploaded");
    assert_eq!(sha256_hex(&slug), finished.slug_sha256);
    let meta: serde_json::Value = serde_json::from_str(&finished.slug_json).unwrap();
    assert!(meta.is_object(), "{meta}");
    // The slug.json relayed is the validated one, for the build's stack.
    assert_eq!(meta["stack"], "testing", "{meta}");
    assert_eq!(meta["sha256"], finished.slug_sha256.as_str(), "{meta}");

    // A host directory outside the buildpack root is refused before any build dyno starts.
    tx.send(Ok(SchedulerMessage {
        kind: Some(scheduler_message::Kind::Build(BuildRequest {
            build_id: "b-2".into(),
            app: "demo".into(),
            stack: "testing".into(),
            source_sha256: finished_source_sha.clone(),
            env: Default::default(),
            buildpacks: vec!["/etc".into()],
        })),
    }))
    .await
    .unwrap();
    let refused = wait_for(
        &mut rx,
        Duration::from_secs(60),
        "build b-2",
        &log,
        |k| match k {
            agent_message::Kind::Build(BuildEvent {
                build_id,
                kind: Some(build_event::Kind::Finished(f)),
            }) if build_id == "b-2" => Some(f.clone()),
            _ => None,
        },
    )
    .await;
    assert_ne!(refused.status, 0, "{refused:?}");
    assert!(
        refused
            .error
            .contains("buildpack directory /etc is not under this host's buildpack root"),
        "{refused:?}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(state.join("builds"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "work dirs left: {leftovers:?}");

    // A formation dyno that crashes is restarted by the agent, with backoff.
    // It runs from the slug just built.
    let crasher = assignment(
        "d-crash-1",
        "worker.1",
        "test -f /app/built && echo boom; exit 3",
        &finished.slug_sha256,
        slug.len() as u64,
    );
    let started = Instant::now();
    assign(&fake, 1, vec![crasher]).await;
    let mut seen = Vec::new();
    wait_for(
        &mut rx,
        Duration::from_secs(20),
        "three crashes",
        &log,
        |k| {
            if let agent_message::Kind::Dyno(s) = k {
                seen.push((s.state(), s.exit_status));
            }
            (seen.iter().filter(|s| s.0 == DynoState::Crashed).count() == 3).then_some(())
        },
    )
    .await;
    // Restarted at once, then after 0.5 s to 1 s (the 2nd crash's cool-off).
    assert!(started.elapsed() >= Duration::from_millis(500), "{seen:?}");
    let states: Vec<_> = seen.iter().map(|s| s.0).collect();
    assert_eq!(
        states.iter().filter(|s| **s == DynoState::Starting).count(),
        3,
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .all(|s| s.0 != DynoState::Crashed || s.1 == Some(3)),
        "{seen:?}"
    );
    assign(&fake, 2, vec![]).await;
    wait_for(
        &mut rx,
        Duration::from_secs(20),
        "crasher down",
        &log,
        |k| dyno_status(k, "d-crash-1", DynoState::Down),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_backs_off_crash_restarts_and_kills_web_dynos_that_never_bind() {
    if !ready() {
        return;
    }
    let (tmp, state, log) = agent_dirs();
    let slug = slug(tmp.path(), "app.tgz", &[("README", "policies\n", 0o644)]);
    let bytes = std::fs::read(&slug).unwrap();
    let sha = sha256_hex(&bytes);
    let size = bytes.len() as u64;
    let blobs: Blobs = Arc::new(Mutex::new([(sha.clone(), bytes)].into()));
    let (fake, mut rx, _) = fake();
    let url = serve(fake.clone(), blobs).await;
    let _agent = Agent::spawn(
        &state,
        &url,
        &POLICIES,
        &[
            "--restart-base",
            "1s",
            "--restart-cap",
            "4s",
            "--boot-timeout",
            "2s",
        ],
    );
    wait_for(&mut rx, Duration::from_secs(20), "hello", &log, |k| {
        matches!(k, agent_message::Kind::Hello(_)).then_some(())
    })
    .await;
    let worker = assignment("d-crashy-1", "worker.1", "sleep 1; exit 3", &sha, size);
    let web = assignment("d-deaf-1", "web.1", "sleep 1000", &sha, size);
    assign(&fake, 1, vec![worker, web]).await;

    // The worker's restart delays, each from a `crashed` report to the next `starting` one;
    // the web dyno's R10 crash and its restart.
    let mut crashed_at: Option<Instant> = None;
    let mut restarts: Vec<Duration> = Vec::new();
    let mut r10: Option<DynoStatus> = None;
    let mut web_restarted = false;
    wait_for(
        &mut rx,
        Duration::from_secs(60),
        "five worker restarts and an R10",
        &log,
        |k| {
            if let agent_message::Kind::Dyno(s) = k {
                match (s.id.as_str(), s.state()) {
                    ("d-crashy-1", DynoState::Crashed) => {
                        assert_eq!(s.exit_status, Some(3), "{s:?}");
                        crashed_at = Some(Instant::now());
                    }
                    ("d-crashy-1", DynoState::Starting) => {
                        if let Some(at) = crashed_at.take() {
                            restarts.push(at.elapsed());
                        }
                    }
                    ("d-deaf-1", DynoState::Crashed) if r10.is_none() => r10 = Some(s.clone()),
                    ("d-deaf-1", DynoState::Starting) if r10.is_some() => web_restarted = true,
                    _ => {}
                }
            }
            (restarts.len() >= 5 && web_restarted).then_some(())
        },
    )
    .await;

    // The table with base 1 s, cap 4 s: at once, [0.5 s, 1 s], [1 s, 2 s], then [2 s, 4 s].
    // A restart must never come early; it may come late by the time the dyno takes to end
    // (its cleanup) and a loaded host's slack.
    eprintln!("restart delays: {restarts:?}");
    let table = [
        (0, 0),
        (500, 1000),
        (1000, 2000),
        (2000, 4000),
        (2000, 4000),
    ];
    for (crash, (delay, (low, high))) in restarts.iter().zip(table).enumerate() {
        let low = Duration::from_millis(low).saturating_sub(Duration::from_millis(100));
        let high = Duration::from_millis(high) + Duration::from_secs(2);
        assert!(
            low <= *delay && *delay <= high,
            "restart after crash {} took {delay:?}, not within {low:?}..={high:?}: {restarts:?}",
            crash + 1
        );
    }

    let r10 = r10.unwrap();
    assert_eq!(r10.exit_status, Some(137), "{r10:?}");
    assert!(r10.reason.contains("R10"), "{r10:?}");
    let agent_log = std::fs::read_to_string(&log).unwrap();
    assert!(
        agent_log.contains("heroku[web.1]: Error R10 (Boot timeout) -> Web process failed to bind to $PORT within 2 seconds of launch"),
        "{agent_log}"
    );
    assert!(
        agent_log.contains("heroku[worker.1]: State changed from crashed to starting"),
        "{agent_log}"
    );

    assign(&fake, 2, vec![]).await;
    let mut down = Vec::new();
    wait_for(&mut rx, Duration::from_secs(40), "both down", &log, |k| {
        for id in ["d-crashy-1", "d-deaf-1"] {
            if dyno_status(k, id, DynoState::Down).is_some() && !down.contains(&id) {
                down.push(id);
            }
        }
        (down.len() == 2).then_some(())
    })
    .await;
}

/// The next attach stream an agent opens, within `within`.
async fn next_attach(attaches: &mut mpsc::UnboundedReceiver<Attached>, log: &Path) -> Attached {
    tokio::time::timeout(Duration::from_secs(60), attaches.recv())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no attach stream; agent log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        })
        .unwrap()
}

async fn send_frames(stream: &Attached, frames: &[manifold_attach::Frame]) {
    let mut bytes = Vec::new();
    for f in frames {
        f.encode_into(&mut bytes);
    }
    stream
        .outbound
        .send(Ok(AttachPacket {
            dyno_id: String::new(),
            frames: bytes,
        }))
        .await
        .unwrap();
}

/// Reads packets (each whole frames) into `frames` until `done` holds for them.
async fn frames_until(
    stream: &mut Attached,
    frames: &mut Vec<manifold_attach::Frame>,
    done: impl Fn(&[manifold_attach::Frame]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done(frames) {
        let Ok(message) = tokio::time::timeout_at(deadline, stream.inbound.message()).await else {
            panic!("timed out with {frames:?}");
        };
        let packet = message
            .unwrap()
            .unwrap_or_else(|| panic!("the stream ended with {frames:?}"));
        frames.extend(manifold_attach::decode_all(&packet.frames).expect("whole frames"));
    }
}

fn stdout_of(frames: &[manifold_attach::Frame]) -> String {
    let bytes: Vec<u8> = frames
        .iter()
        .filter_map(|f| match f {
            manifold_attach::Frame::Stdout(b) => Some(b.as_slice()),
            _ => None,
        })
        .flatten()
        .copied()
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_relays_an_attached_run_and_again_after_its_own_restart() {
    use manifold_attach::Frame;
    if !ready() {
        return;
    }
    let (tmp, state, log) = agent_dirs();
    let slug = slug(tmp.path(), "app.tgz", &[("README", "attach\n", 0o644)]);
    let bytes = std::fs::read(&slug).unwrap();
    let sha = sha256_hex(&bytes);
    let size = bytes.len() as u64;
    let blobs: Blobs = Arc::new(Mutex::new([(sha.clone(), bytes)].into()));
    let (fake, mut rx, mut attaches) = fake();
    let url = serve(fake.clone(), blobs).await;
    let mut agent = Agent::spawn(&state, &url, &ATTACH, &[]);
    wait_for(&mut rx, Duration::from_secs(20), "hello", &log, |k| {
        matches!(k, agent_message::Kind::Hello(_)).then_some(())
    })
    .await;
    let mut run = assignment(
        "d-run-1",
        "run.1",
        "read a; echo \"got $a\"; read b; echo \"then $b\"; exit 4",
        &sha,
        size,
    );
    run.attach = Some(AttachSpec {
        tty: false,
        cols: 0,
        rows: 0,
    });
    assign(&fake, 1, vec![run]).await;
    let mut stream = next_attach(&mut attaches, &log).await;
    assert_eq!(stream.dyno_id, "d-run-1");
    send_frames(&stream, &[Frame::Stdin(b"one\n".to_vec())]).await;
    let mut frames = Vec::new();
    frames_until(&mut stream, &mut frames, |f| {
        stdout_of(f).contains("got one\n")
    })
    .await;

    // The agent dies; the next one re-adopts the dyno and relays it again.
    agent.kill();
    let _agent = Agent::spawn(&state, &url, &ATTACH, &[]);
    let mut stream = next_attach(&mut attaches, &log).await;
    assert_eq!(stream.dyno_id, "d-run-1");
    send_frames(&stream, &[Frame::Stdin(b"two\n".to_vec()), Frame::StdinEof]).await;
    let mut frames = Vec::new();
    frames_until(&mut stream, &mut frames, |f| {
        f.last().is_some_and(Frame::is_last)
    })
    .await;
    assert_eq!(stdout_of(&frames), "then two\n", "{frames:?}");
    assert_eq!(frames.last(), Some(&Frame::Exit(4)));
    let complete = wait_for(&mut rx, Duration::from_secs(30), "complete", &log, |k| {
        dyno_status(k, "d-run-1", DynoState::Complete)
    })
    .await;
    assert_eq!(complete.exit_status, Some(4));
    let agent_log = std::fs::read_to_string(&log).unwrap();
    assert!(
        !agent_log.contains("app[run.1]"),
        "an attached run's output is not logged: {agent_log}"
    );

    assign(&fake, 2, vec![]).await;
    wait_for(&mut rx, Duration::from_secs(30), "down", &log, |k| {
        dyno_status(k, "d-run-1", DynoState::Down)
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let dirs: Vec<_> = std::fs::read_dir(state.join("dynos"))
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        let cgroups = cgroup_children(ATTACH.cgroup_parent);
        if dirs.is_empty() && cgroups.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: dirs {dirs:?}, cgroups {cgroups:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
