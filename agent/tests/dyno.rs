//! Acceptance: one dyno, run for real with `manifold-agent run`.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn output_exit_status_and_environment() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let slug = slug(
        tmp.path(),
        "app.tgz",
        &[
            (".profile.d/greet.sh", "export FROM_PROFILE_D=yes\n", 0o644),
            (".profile", "export FROM_PROFILE=also\n", 0o644),
        ],
    );
    let out = run(
        &["--slug", slug.to_str().unwrap(), "--name", "web.3", "--port", "6000", "-e", "GREETING=hi there"],
        "echo \"$GREETING|$DYNO|$PORT|$HOME|$(pwd)|$FROM_PROFILE_D|$FROM_PROFILE\"; echo to-stderr >&2; printf 'no newline'; exit 7",
    );
    assert_eq!(out.status.code(), Some(7), "{}", stdout(&out));
    assert_eq!(
        app_lines(&out),
        vec![
            "hi there|web.3|6000|/app|/app|yes|also",
            "to-stderr",
            "no newline"
        ]
    );
    let platform = platform_lines(&out);
    assert!(
        platform[0].starts_with("Starting process with command `echo"),
        "{platform:?}"
    );
    assert_has(&platform, "Process exited with status 7");
    // It never bound $PORT, so it never was up (Heroku: "starting to crashed").
    assert_has(&platform, "State changed from starting to crashed");
    // Logplex's line shape: `<rfc3339 with µs> app[web.3]: ...`
    let first_app = stdout(&out)
        .lines()
        .find(|l| l.contains(" app[web.3]: "))
        .unwrap()
        .to_string();
    let ts = first_app.split(' ').next().unwrap();
    assert_eq!(
        ts.len(),
        "2024-01-01T12:00:00.123456+00:00".len(),
        "{first_app}"
    );
    assert!(ts.ends_with("+00:00"));
}

#[test]
fn worker_has_no_port_and_one_off_completes() {
    if !ready() {
        return;
    }
    let out = run(&["--name", "run.77"], "echo \"port=[${PORT-unset}]\"");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(app_lines(&out), vec!["port=[unset]"]);
    assert_has(&platform_lines(&out), "State changed from up to complete");
}

#[test]
fn web_that_never_binds_its_port_is_killed_by_the_boot_timeout() {
    if !ready() {
        return;
    }
    let started = Instant::now();
    let out = run(&["--boot-timeout", "2s", "--name", "web.1"], "sleep 100");
    assert_eq!(out.status.code(), Some(137), "{}", stdout(&out));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{}",
        stdout(&out)
    );
    let platform = platform_lines(&out);
    let r10 = "Error R10 (Boot timeout) -> Web process failed to bind to $PORT within 2 seconds of launch";
    let tail: Vec<&str> = platform
        .iter()
        .map(String::as_str)
        .skip_while(|l| *l != r10)
        .collect();
    assert_eq!(
        tail,
        vec![
            r10,
            "Stopping process with SIGKILL",
            "Process exited with status 137",
            "State changed from starting to crashed",
        ],
        "{platform:?}"
    );
}

#[test]
fn dyno_is_isolated() {
    if !ready() {
        return;
    }
    let out = run(
        &["--name", "worker.1"],
        "echo procs=$(ls -d /proc/[0-9]* | wc -l); echo uid=$(id -u); grep CapEff /proc/self/status; \
         echo host=$(hostname); mount -t tmpfs none /mnt 2>/dev/null && echo mount=yes || echo mount=no; \
         echo ifaces=$(ls /sys/class/net | sort | tr '\\n' ,); \
         unshare -U true 2>/dev/null && echo unshare=yes || echo unshare=no; \
         cat /proc/kcore >/dev/null 2>&1 && echo kcore=yes || echo kcore=no; \
         echo uidmap=$(cat /proc/self/uid_map)",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let lines = app_lines(&out);
    let procs: usize = lines[0].trim_start_matches("procs=").parse().unwrap();
    // Its shell (PID 1), the command's subshell, and the pipeline counting: not the host's.
    assert!(
        procs <= 6,
        "the dyno sees only its own processes: {lines:?}"
    );
    assert_eq!(lines[1], "uid=1000");
    assert_eq!(lines[2], "CapEff:\t0000000000000000");
    let host = lines[3].trim_start_matches("host=");
    assert!(host.starts_with("worker-1-"), "own hostname: {host}");
    let host_name = nix::unistd::gethostname().unwrap();
    assert_ne!(host, host_name.to_string_lossy());
    assert_eq!(lines[4], "mount=no");
    assert_eq!(lines[5], "ifaces=eth0,lo,", "only its own interfaces");
    assert_eq!(lines[6], "unshare=no");
    assert_eq!(lines[7], "kcore=no");
    // Where the kernel allows user namespaces, root in the dyno is nobody on the host.
    let userns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .map(|m| m.trim() != "0")
        .unwrap_or(false);
    let map: Vec<&str> = lines[8]
        .trim_start_matches("uidmap=")
        .split_whitespace()
        .collect();
    if userns {
        assert_eq!(map, vec!["0", "100000", "65536"], "{lines:?}");
    } else {
        assert_eq!(map, vec!["0", "0", "4294967295"], "{lines:?}");
    }
}

#[test]
fn app_writes_vanish_with_the_dyno() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let slug = slug(tmp.path(), "app.tgz", &[("Procfile", "web: true\n", 0o644)]);
    let args = ["--slug", slug.to_str().unwrap(), "--name", "worker.1"];
    let first = run(&args, "ls /app/marker 2>/dev/null || echo absent; echo hi > /app/marker && cat /app/marker; touch /tmp/t && echo tmp-ok");
    assert_eq!(
        app_lines(&first),
        vec!["absent", "hi", "tmp-ok"],
        "{}",
        stdout(&first)
    );
    let second = run(&args, "ls /app/marker 2>/dev/null || echo absent");
    assert_eq!(app_lines(&second), vec!["absent"]);
}

#[test]
fn memory_past_the_limit_is_an_oom_kill() {
    if !ready() {
        return;
    }
    // eco: 512 MB quota, killed at twice that (Heroku's R15 point).
    let out = run(
        &["--name", "worker.1", "--size", "eco"],
        "x=$(head -c 1500000000 /dev/zero | tr '\\0' a); echo survived ${#x}",
    );
    assert_eq!(out.status.code(), Some(137), "{}", stdout(&out));
    let platform = platform_lines(&out);
    assert_has(&platform, "Error R15 (Memory quota vastly exceeded)");
    assert!(!app_lines(&out).iter().any(|l| l.starts_with("survived")));
}

#[test]
fn fork_bomb_stops_at_the_pids_limit() {
    if !ready() {
        return;
    }
    let start = Instant::now();
    let out = run(
        &["--name", "worker.1", "--grace", "1s"],
        "bomb() { bomb | bomb & }; bomb 2>/dev/null; sleep 2; echo pids=$(cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max)",
    );
    // The host stayed responsive: this process could still fork and the dyno ended by itself.
    let echo = Command::new("true").status().unwrap();
    assert!(echo.success());
    assert!(start.elapsed() < Duration::from_secs(120));
    let text = stdout(&out);
    assert!(
        text.contains("Process exited with status"),
        "{}",
        &text[text.len().saturating_sub(2000)..]
    );
}

#[test]
fn sigterm_trapped_exits_cleanly_and_ignored_is_killed_after_grace() {
    if !ready() {
        return;
    }
    let stop = |command: &str| {
        let dyno = Background::spawn(
            Command::new(BIN).args(["run", "--name", "worker.1", "--grace", "2s", "--", command]),
        );
        std::thread::sleep(Duration::from_millis(1500));
        dyno.stop()
    };
    let trapped = stop("trap 'echo bye; exit 0' TERM; echo ready; while true; do sleep 0.2; done");
    assert_eq!(trapped.status.code(), Some(0), "{}", stdout(&trapped));
    assert_has(&app_lines(&trapped), "bye");
    let p = platform_lines(&trapped);
    assert_has(&p, "Stopping all processes with SIGTERM");
    assert_has(&p, "State changed from up to down");

    // An app that `exec`s (as Procfiles often do) is not PID 1, so SIGTERM reaches it.
    let started = Instant::now();
    let execd = stop("exec sleep 100");
    assert_eq!(execd.status.code(), Some(143), "{}", stdout(&execd));
    let p = platform_lines(&execd);
    assert!(
        !p.iter().any(|l| l.starts_with("Error R12")),
        "stopped by SIGTERM, not after the grace: {p:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500 + 1900),
        "no grace period was waited"
    );

    let started = Instant::now();
    let ignored = stop("trap '' TERM; echo ready; while true; do sleep 0.2; done");
    assert_eq!(ignored.status.code(), Some(137), "{}", stdout(&ignored));
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "SIGKILL only after the grace period"
    );
    let p = platform_lines(&ignored);
    assert!(
        p.iter().any(|l| l.starts_with("Error R12 (Exit timeout)")),
        "{p:?}"
    );
    assert_has(&p, "Stopping remaining processes with SIGKILL");
    assert_has(&p, "Process exited with status 137");
}

/// A stop that arrives as the dyno starts reaches only its init (PID 1 ignores it); the app
/// born next still gets SIGTERM, so the dyno stops gracefully instead of at the SIGKILL.
#[test]
fn a_stop_as_the_dyno_starts_reaches_the_app() {
    if !ready() {
        return;
    }
    let marker = format!("{:016x}", rand::random::<u64>());
    let command = format!("sleep 100 # {marker}");
    for _ in 0..3 {
        let dyno = Background::spawn(Command::new(BIN).args([
            "run", "--name", "worker.1", "--grace", "60s", "--", &command,
        ]));
        let out = dyno.stop();
        let p = platform_lines(&out);
        assert!(
            !p.iter().any(|l| l.starts_with("Error R12")),
            "stopped by SIGTERM, not at the SIGKILL: {p:?}"
        );
        assert_ne!(out.status.code(), Some(137), "{}", stdout(&out));
    }
    // However early the stop came, no dyno was left running without its `run`: either
    // `run` had not started one yet, or it stopped it and removed its directory.
    let left: Vec<_> = std::fs::read_dir("/var/lib/manifold/dynos")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|d| {
            std::fs::read_to_string(d.path().join("dyno.json")).is_ok_and(|j| j.contains(&marker))
        })
        .map(|d| d.path())
        .collect();
    assert!(left.is_empty(), "dynos left running: {left:?}");
}

/// A program a dyno's process execs after the stop was sent gets the stop too: the start
/// script's subshell may take the signal in its inherited trap an instant before it resets
/// the trap and execs the app, which must still hear of the stop. Here the app catches the
/// SIGTERM itself and then execs a program that would run past the grace period.
#[test]
fn a_program_started_by_exec_after_the_stop_gets_it_too() {
    if !ready() {
        return;
    }
    let dyno = Background::spawn(Command::new(BIN).args([
        "run",
        "--name",
        "worker.1",
        "--grace",
        "60s",
        "--",
        "trap 'echo caught' TERM; echo ready; sleep 100 & wait; exec sleep 100",
    ]));
    // The app's own line: the platform's "Starting process with command" line holds the
    // word too, and stopping on it would stop the dyno before the app set its trap.
    let out = dyno.stop_after("app[worker.1]: ready");
    assert_has(&app_lines(&out), "caught");
    let p = platform_lines(&out);
    assert!(
        !p.iter().any(|l| l.starts_with("Error R12")),
        "the exec'd program got SIGTERM, not the SIGKILL: {p:?}"
    );
    assert_has(&p, "Process exited with status 143");
}

#[test]
fn web_dyno_answers_through_the_published_port() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let slug = slug(
        tmp.path(),
        "web.tgz",
        &[("public/index.html", "hello from a dyno\n", 0o644)],
    );
    let port = free_port();
    let dyno = Background::spawn(
        Command::new(BIN)
            .args([
                "run",
                "--slug",
                slug.to_str().unwrap(),
                "--name",
                "web.1",
                "--grace",
                "2s",
            ])
            .args([
                "--publish",
                &port.to_string(),
                "--",
                "exec busybox httpd -f -p $PORT -h /app/public",
            ]),
    );
    let body = http_get_ok(port, "/index.html", Duration::from_secs(30));
    assert!(body.ends_with("hello from a dyno\n"), "{body}");
    let out = dyno.stop_after("State changed from starting to up");
    let p = platform_lines(&out);
    assert_has(&p, "State changed from starting to up");
    assert_has(&p, "State changed from up to down");
}

#[test]
fn long_lines_are_split_and_floods_do_not_stall() {
    if !ready() {
        return;
    }
    let out = run(
        &["--name", "worker.1"],
        "head -c 25000 /dev/zero | tr '\\0' x; echo; seq 1 20000",
    );
    assert_eq!(out.status.code(), Some(0));
    let lines = app_lines(&out);
    assert_eq!(lines[0].len(), 10_000);
    assert_eq!(lines[1].len(), 10_000);
    assert_eq!(lines[2].len(), 5_000);
    assert_eq!(lines.len(), 3 + 20_000);
    assert_eq!(lines.last().map(String::as_str), Some("20000"));
}

#[test]
fn hostile_slugs_are_refused_with_a_clear_error() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("evil.tgz");
    // A symlink out of the layer, then a file written through it.
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&path).unwrap(),
        flate2::Compression::fast(),
    );
    let mut tar = tar::Builder::new(gz);
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    link.set_mode(0o777);
    tar.append_link(&mut link, "./app/escape", "../../../../../../tmp")
        .unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    let out = run(
        &["--slug", path.to_str().unwrap(), "--name", "worker.1"],
        "echo ran",
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(app_lines(&out).is_empty(), "nothing ran");
    let p = platform_lines(&out);
    let err = p
        .iter()
        .find(|l| l.starts_with("Error starting dyno (slug)"))
        .unwrap_or_else(|| panic!("{p:?}"));
    assert!(
        err.contains("app/escape"),
        "the error names the entry: {err}"
    );

    let bad_sum = slug(tmp.path(), "ok.tgz", &[("a", "b", 0o644)]);
    let out = run(
        &[
            "--slug",
            bad_sum.to_str().unwrap(),
            "--sha256",
            &"0".repeat(64),
            "--name",
            "worker.1",
        ],
        "echo ran",
    );
    assert_ne!(out.status.code(), Some(0));
    let p = platform_lines(&out);
    assert!(
        p.iter()
            .any(|l| l.contains("Error starting dyno (slug)") && l.contains("sha256")),
        "{p:?}"
    );
}

#[test]
fn dyno_outlives_the_process_that_started_it() {
    if !ready() {
        return;
    }
    use std::io::BufRead;
    let mut dyno = Background::spawn(
        Command::new(BIN)
            .args(["run", "--name", "worker.1", "--grace", "2s", "--"])
            .arg("echo id=$(hostname); i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done"),
    );
    let mut child = dyno.child.take().unwrap();
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let id = loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "run ended before printing the id"
        );
        if let Some((_, id)) = line.trim_end().split_once("]: id=") {
            break id.to_string();
        }
    };
    // The supervisor dies without any chance to clean up.
    child.kill().unwrap();
    child.wait().unwrap();
    let dir = std::path::Path::new("/var/lib/manifold/dynos").join(&id);
    let stream = dir.join("stream.jsonl");
    let ticks = || {
        std::fs::read_to_string(&stream)
            .unwrap()
            .matches("\"tick ")
            .count()
    };
    let before = ticks();
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        ticks() > before + 3,
        "the dyno kept running and logging without its supervisor"
    );

    // Whoever comes next (the restarted agent) finds the shim and stops the dyno through it.
    let shim: i32 = std::fs::read_to_string(dir.join("shim.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&stream)
        .unwrap()
        .contains("\"type\":\"cleaned\"")
    {
        assert!(
            Instant::now() < deadline,
            "the shim did not finish the stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&stream).unwrap();
    assert!(
        text.contains("\"type\":\"exited\""),
        "the exit status was recorded: {text}"
    );
    // The shim exits just after it records the clean-up; until then it is running and gc
    // rightly keeps its directory.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(format!("/proc/{shim}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .unwrap()
            .1
            .trim_start()
            .starts_with('Z')
    }) {
        assert!(Instant::now() < deadline, "the shim did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let gc = Command::new(BIN).arg("gc").output().unwrap();
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    assert!(!dir.exists(), "gc removed the finished dyno's directory");
}

#[test]
fn a_flooding_dyno_uses_bounded_disk_and_counts_every_line_it_loses() {
    if !ready() {
        return;
    }
    use std::io::BufRead;
    let mut dyno = Background::spawn(
        Command::new(BIN)
            .args(["run", "--name", "worker.1", "--"])
            .arg("echo id=$(hostname); seq 1 600000"),
    );
    let mut child = dyno.child.take().unwrap();
    let reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut dir = None;
    let mut count = 0u64;
    let mut dropped = 0u64;
    let mut last = String::new();
    let mut largest = 0u64;
    for (i, line) in reader.lines().enumerate() {
        let line = line.unwrap();
        if let Some((_, id)) = line.split_once("]: id=") {
            dir = Some(std::path::Path::new("/var/lib/manifold/dynos").join(id));
        }
        if line.contains(" app[worker.1]: ") {
            count += 1;
            last = line.clone();
        }
        // A reader more than a segment behind (a busy machine: the flood is 600,000 lines
        // written as fast as `seq` can) loses the segment it missed, counted in an L10 line.
        if let Some((_, rest)) = line.split_once("Error L10 (output buffer overflow): ") {
            dropped += rest
                .split_once(' ')
                .and_then(|(n, _)| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("an L10 line without a count: {line}"));
        }
        if i % 20_000 == 0 {
            if let Some(d) = &dir {
                let size: u64 = ["stream.jsonl", "stream.jsonl.1"]
                    .iter()
                    .filter_map(|f| std::fs::metadata(d.join(f)).ok())
                    .map(|m| m.len())
                    .sum();
                largest = largest.max(size);
            }
        }
    }
    assert!(child.wait().unwrap().success());
    // Dropped counts records: a missed segment's closing `continued` record is one too.
    assert!(
        (600_001..=600_005).contains(&(count + dropped)),
        "every line arrived or was counted as dropped: {count} + {dropped}"
    );
    assert!(
        last.ends_with(": 600000"),
        "the newest lines are never lost: {last}"
    );
    // 600,000 records are about 48 MB of JSON: without rotation the file would hold them all.
    assert!(largest > 0, "the stream was sampled");
    assert!(
        largest <= 2 * 16 * 1024 * 1024 + 1024 * 1024,
        "disk use stays within two segments: {largest}"
    );
}

#[test]
fn memory_over_the_quota_but_under_the_limit_is_r14_not_a_kill() {
    if !ready() {
        return;
    }
    // eco: R14 above 512 MB, killed only at 1 GB. `tail -c` holds 650 MB while it waits.
    let out = run(
        &["--name", "worker.1", "--size", "eco"],
        "{ head -c 650000000 /dev/zero; sleep 2.5; } | tail -c 650000000 | wc -c",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(app_lines(&out), vec!["650000000"]);
    let p = platform_lines(&out);
    assert_has(&p, "Error R14 (Memory quota exceeded)");
    let mem = p
        .iter()
        .find(|l| l.starts_with("Process running mem="))
        .expect("a mem= line");
    assert!(mem.ends_with("%)") && mem.contains("MB("), "{mem}");
    assert!(!p.iter().any(|l| l.contains("R15")), "{p:?}");
}

#[test]
fn many_dynos_started_at_once_all_run_with_their_own_address_and_port() {
    if !ready() {
        return;
    }
    // A new slug, so that all of them race to unpack it; published ports and leases race too.
    let tmp = tempfile::tempdir().unwrap();
    let slug = slug(
        tmp.path(),
        "app.tgz",
        &[(
            "public/index.html",
            &format!("load {}\n", std::process::id()),
            0o644,
        )],
    );
    let ports = free_ports(12);
    let dynos: Vec<Background> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            Background::spawn(Command::new(BIN).args([
                "run",
                "--slug",
                slug.to_str().unwrap(),
                "--name",
                &format!("web.{}", i + 1),
                "--grace",
                "2s",
                "--publish",
                &port.to_string(),
                "--",
                "echo addr=$(ip -4 -o addr show eth0 | awk '{print $4}'); exec busybox httpd -f -p $PORT -h /app/public",
            ]))
        })
        .collect();
    for port in &ports {
        let body = http_get_ok(*port, "/index.html", Duration::from_secs(60));
        assert!(
            body.ends_with(&format!("load {}\n", std::process::id())),
            "{body}"
        );
    }
    let mut addresses = std::collections::BTreeSet::new();
    for dyno in dynos {
        let out = dyno.stop();
        let addr = app_lines(&out)
            .into_iter()
            .find_map(|l| l.strip_prefix("addr=").map(str::to_string))
            .unwrap_or_else(|| panic!("no address printed: {}", stdout(&out)));
        assert!(addresses.insert(addr.clone()), "address {addr} given twice");
        assert_has(&platform_lines(&out), "State changed from up to down");
    }
    assert_eq!(addresses.len(), 12);
}
