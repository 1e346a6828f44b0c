//! End-to-end: the router and the log plex inside the real scheduler, in front of real
//! dynos on real agents; requests and log readers over real sockets. As root, with the
//! `testing` stack.

#![allow(clippy::unwrap_used)]

mod harness;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::{assert_clean, deploy_tiny, wait_for, Cluster, API_TOKEN, UP};
use serde_json::Value;

/// One request through the router on a fresh connection: the status, 0 if none came.
fn get(router_port: u16, app: &str, path: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", router_port)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {app}.localhost\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn up_web(dynos: &[Value]) -> usize {
    dynos
        .iter()
        .filter(|d| d["type"] == "web" && d["state"] == "up")
        .count()
}

/// Requests spread over web=3 by the router, with its headers; every kind of line lands in
/// the app's log, `logs` filters it, `logs --tail` follows it.
#[test]
fn router_spreads_requests_adds_headers_and_the_log_has_every_line() {
    if !harness::ready() {
        return;
    }
    let mut c = Cluster::start(Duration::from_secs(10));
    c.add_agent("route", 20);
    c.wait_hosts(1);
    deploy_tiny(&c, "routed");
    c.ok(&["ps:scale", "web=3", "worker=1", "-a", "routed"]);
    c.wait_dynos("routed", &["web.1", "web.2", "web.3", "worker.1"], "up", UP);

    let mut seen = BTreeSet::new();
    for _ in 0..60 {
        let (code, body) = c.route("routed", "/cgi-bin/greeting", &[]);
        assert_eq!(code, 200, "{body}");
        seen.insert(body);
    }
    let want: BTreeSet<String> = (1..=3).map(|i| format!("hello from web.{i}\n")).collect();
    assert_eq!(seen, want, "two random choices reach every web dyno");

    let (code, body) = c.route(
        "routed",
        "/cgi-bin/headers",
        &[
            "-H",
            "X-Request-Id: keep-me-0123456789abcdef",
            "-H",
            "X-Forwarded-For: 10.9.8.7",
        ],
    );
    assert_eq!(code, 200);
    for header in [
        "HTTP_X_REQUEST_ID=keep-me-0123456789abcdef".to_string(),
        "HTTP_X_FORWARDED_FOR=10.9.8.7, 127.0.0.1".to_string(),
        "HTTP_X_FORWARDED_PROTO=http".to_string(),
        format!("HTTP_X_FORWARDED_PORT={}", c.router_port),
        "HTTP_X_REQUEST_START=".to_string(),
        "HTTP_VIA=".to_string(),
    ] {
        assert!(body.contains(&header), "{header} missing in:\n{body}");
    }
    let (code, body) = c.route(
        "routed",
        "/cgi-bin/headers",
        &["-H", "X-Request-Id: bad id!"],
    );
    assert_eq!(code, 200);
    assert!(
        !body.contains("bad id!"),
        "an invalid request id is replaced: {body}"
    );
    assert!(body.contains("HTTP_X_REQUEST_ID="), "{body}");

    let (code, body) = c.route("nosuchapp", "/", &[]);
    assert_eq!(code, 404);
    assert!(body.contains("nosuchapp"), "{body}");

    // A live reader sees a request's router line.
    let mut tail = Command::new(harness::bins().join("manifold"))
        .args([
            "logs", "--tail", "-a", "routed", "-n", "0", "--ps", "router",
        ])
        .env("MANIFOLD_API", c.api())
        .env("MANIFOLD_API_TOKEN", API_TOKEN)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = tail.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let mut tailed = None;
    for i in 0..20 {
        let path = format!("/cgi-bin/greeting?mark{i}");
        assert_eq!(c.route("routed", &path, &[]).0, 200);
        if let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) {
            tailed = Some(line);
            break;
        }
    }
    let _ = tail.kill();
    let _ = tail.wait();
    let tailed = tailed.expect("logs --tail shows the router's lines");
    assert!(
        tailed.contains(" heroku[router]: at=info method=GET path=\"/cgi-bin/greeting?mark"),
        "{tailed}"
    );

    let log = c.logs("routed", &[]);
    for want in [
        "app[api]: Deploy ",
        "app[api]: Release v1 created by e2e",
        "app[api]: Scaled to web@3:Standard-1X worker@1:Standard-1X by e2e",
        "heroku[web.2]: Starting process with command `",
        "heroku[web.2]: State changed from starting to up",
        "app[worker.1]: tick",
        "heroku[router]: at=info method=GET path=\"/cgi-bin/greeting\" host=routed.localhost request_id=",
        " status=200 ",
    ] {
        assert!(log.contains(want), "{want:?} missing in the log:\n{log}");
    }
    // RFC 3339 timestamps in UTC.
    let first = log.lines().next().unwrap();
    assert!(first.get(26..32) == Some("+00:00"), "{first}");

    let routed = c.logs("routed", &["--ps", "router"]);
    assert!(!routed.is_empty());
    assert!(
        routed.lines().all(|l| l.contains(" heroku[router]: ")),
        "{routed}"
    );
    let apps = c.logs("routed", &["--source", "app"]);
    assert!(apps.lines().all(|l| l.contains(" app[")), "{apps}");
    assert!(apps.contains("app[worker.1]: tick"));
    let web2 = c.logs("routed", &["--ps", "web.2"]);
    assert!(web2.lines().all(|l| l.contains("[web.2]: ")), "{web2}");
    let three = c.ok(&["logs", "-a", "routed", "-n", "3"]);
    assert_eq!(three.lines().count(), 3, "{three}");
    let out = c.cli(&["logs", "-a", "routed", "-n", "5000"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most 1500"));

    let (status, metrics) = c.raw("GET", "/metrics", Some(API_TOKEN), None);
    assert_eq!(status, 200);
    for want in [
        "manifold_router_requests_total{",
        "manifold_router_request_duration_seconds_bucket{",
        "manifold_dynos{state=\"up\"} 4",
        "manifold_hosts{liveness=\"connected\"} 1",
        "manifold_placements_total ",
        "manifold_logplex_lines_total ",
    ] {
        assert!(
            metrics.contains(want),
            "{want} missing in /metrics:\n{metrics}"
        );
    }

    let agent = Cluster::http(u64::from(c.agents[0].metrics_port), "/metrics").unwrap();
    for want in [
        "manifold_agent_dynos{state=\"up\"} 4",
        "manifold_agent_connected 1",
        "manifold_agent_log_lines_total ",
    ] {
        assert!(
            agent.contains(want),
            "{want} missing in the agent's /metrics:\n{agent}"
        );
    }

    c.ok(&["apps:destroy", "routed", "--confirm", "routed"]);
    let (code, _) = c.route("routed", "/", &[]);
    assert_eq!(code, 404, "a destroyed app is not routed");
    assert_clean(&c, 0);
}

/// Heroku's router errors, each a 503 with its log line: H12 past the request timeout,
/// H14 with no web dynos, H10 when every web dyno crashed.
#[test]
fn router_errors_carry_heroku_codes() {
    if !harness::ready() {
        return;
    }
    let mut c = Cluster::start_with(
        Duration::from_secs(10),
        &["--router-timeout", "2s", "--router-boot-hold", "3s"],
    );
    c.add_agent("errors", 20);
    c.wait_hosts(1);
    deploy_tiny(&c, "faulty");
    c.wait_dynos("faulty", &["web.1"], "up", UP);

    let (code, _) = c.route("faulty", "/cgi-bin/slow?5", &[]);
    assert_eq!(code, 503);
    let log = c.logs("faulty", &["--ps", "router"]);
    assert!(
        log.contains(
            "at=error code=H12 desc=\"Request timeout\" method=GET path=\"/cgi-bin/slow?5\""
        ),
        "{log}"
    );

    c.ok(&["ps:scale", "web=0", "-a", "faulty"]);
    wait_for("web.1 to stop", UP, || {
        c.dynos("faulty").is_empty().then_some(())
    });
    let (code, _) = c.route("faulty", "/", &[]);
    assert_eq!(code, 503);
    let log = c.logs("faulty", &["--ps", "router"]);
    assert!(
        log.contains("code=H14 desc=\"No web dynos running\""),
        "{log}"
    );

    c.ok(&["config:set", "CRASH=1", "-a", "faulty"]);
    c.ok(&["ps:scale", "web=1", "-a", "faulty"]);
    // Between the restarts of a crashing dyno (the first is at once, the next after a
    // cool-off) every web dyno is crashed: H10. A request that lands while it boots again
    // is held and gets H20 after the (shortened) boot hold.
    let h10 = wait_for("an H10", UP, || {
        let crashed = c.dynos("faulty").iter().any(|d| d["state"] == "crashed");
        if crashed {
            let (code, _) = c.route("faulty", "/", &[]);
            assert_eq!(code, 503);
        }
        let log = c.logs("faulty", &["--ps", "router"]);
        log.contains("code=H10 desc=\"App crashed\"").then_some(log)
    });
    assert!(h10.contains("status=503"), "{h10}");
    let log = c.logs("faulty", &[]);
    assert!(log.contains("app[web.1]: crashing as asked"), "{log}");
    assert!(
        log.contains("heroku[web.1]: Process exited with status 3"),
        "{log}"
    );

    c.ok(&["apps:destroy", "faulty", "--confirm", "faulty"]);
    assert_clean(&c, 0);
}

/// A syslog drain gets the app's lines as RFC 5424 messages framed by octet counting.
#[test]
fn a_syslog_drain_gets_octet_counted_rfc5424_frames() {
    if !harness::ready() {
        return;
    }
    // The drain listens on loopback, which drains may reach only when the operator says so.
    let mut c = Cluster::start_with(Duration::from_secs(10), &["--drain-allow", "127.0.0.1/32"]);
    c.add_agent("drain", 20);
    c.wait_hosts(1);
    deploy_tiny(&c, "drained");
    c.wait_dynos("drained", &["web.1"], "up", UP);

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let sink = sink.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    let url = format!("syslog://127.0.0.1:{port}");
    let out = c.ok(&["drains:add", &url, "-a", "drained"]);
    assert!(out.contains("Successfully added drain"), "{out}");
    let drains = c.json(&["drains", "-a", "drained"]);
    let token = drains[0]["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("d."), "{drains}");

    let frames = wait_for("the drain to get a router line", UP, || {
        assert_eq!(c.route("drained", "/cgi-bin/greeting?drained", &[]).0, 200);
        std::thread::sleep(Duration::from_millis(300));
        let bytes = received.lock().unwrap().clone();
        let frames = parse_frames(&bytes);
        frames
            .iter()
            .any(|f| f.contains("path=\"/cgi-bin/greeting?drained\""))
            .then_some(frames)
    });
    for f in &frames {
        assert!(f.starts_with("<190>1 "), "{f}");
        let fields: Vec<&str> = f.splitn(8, ' ').collect();
        assert_eq!(fields.len(), 8, "{f}");
        assert!(
            fields[1].ends_with("+00:00") || fields[1].ends_with('Z'),
            "{f}"
        );
        assert_eq!(fields[2], token, "HOSTNAME is the drain token: {f}");
        assert!(["app", "heroku"].contains(&fields[3]), "{f}");
        assert_eq!(fields[5], "-", "{f}");
    }
    assert!(
        frames.iter().any(|f| f.contains(" heroku router - ")),
        "{frames:?}"
    );

    let out = c.cli(&["drains:add", "ftp://example", "-a", "drained"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("syslog://"), "{err}");
    let out = c.cli(&["drains:add", &url, "-a", "drained"]);
    assert!(!out.status.success(), "the same drain twice is refused");

    c.ok(&["drains:remove", &url, "-a", "drained"]);
    assert_eq!(c.json(&["drains", "-a", "drained"]), serde_json::json!([]));
    c.ok(&["apps:destroy", "drained", "--confirm", "drained"]);
    assert_clean(&c, 0);
}

/// Splits octet-counted frames (`LEN SP MSG`), checking every length.
fn parse_frames(mut bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(sp) = bytes.iter().position(|&b| b == b' ') {
        let len: usize = std::str::from_utf8(&bytes[..sp])
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("bad frame length in {:?}", String::from_utf8_lossy(bytes)));
        if bytes.len() < sp + 1 + len {
            break;
        }
        out.push(String::from_utf8_lossy(&bytes[sp + 1..sp + 1 + len]).into_owned());
        bytes = &bytes[sp + 1 + len..];
    }
    out
}

/// With preboot, a restart and a release under steady load fail no request, and a request
/// in flight on a dyno that stops completes.
#[test]
fn restarts_and_releases_under_load_with_preboot_fail_no_request() {
    if !harness::ready() {
        return;
    }
    let mut c = Cluster::start(Duration::from_secs(10));
    c.add_agent("load", 20);
    c.wait_hosts(1);
    deploy_tiny(&c, "steady");
    c.ok(&["features:enable", "preboot", "-a", "steady"]);
    c.ok(&["ps:scale", "web=2", "-a", "steady"]);
    c.wait_dynos("steady", &["web.1", "web.2"], "up", UP);

    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, total, failed) = (stop.clone(), total.clone(), failed.clone());
        let port = c.router_port;
        load.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let code = get(port, "steady", "/cgi-bin/greeting");
                total.fetch_add(1, Ordering::Relaxed);
                if code != 200 {
                    failed.lock().unwrap().push(code);
                }
            }
        }));
    }
    let port = c.router_port;
    let slow = std::thread::spawn(move || get(port, "steady", "/cgi-bin/slow?3"));
    std::thread::sleep(Duration::from_millis(500));

    let before: BTreeSet<String> = c
        .dynos("steady")
        .iter()
        .map(|d| d["id"].to_string())
        .collect();
    c.ok(&["ps:restart", "-a", "steady"]);
    wait_for("both web dynos replaced and up", UP, || {
        let d = c.dynos("steady");
        let fresh = d.iter().all(|d| !before.contains(&d["id"].to_string()));
        (fresh && d.len() == 2 && up_web(&d) == 2).then_some(())
    });
    assert_eq!(
        slow.join().unwrap(),
        200,
        "a request in flight on a stopping dyno completes"
    );

    c.ok(&["config:set", "GREETING=again", "-a", "steady"]);
    wait_for("v2 serving on two dynos", UP, || {
        let d = c.dynos("steady");
        (d.len() == 2 && up_web(&d) == 2 && d.iter().all(|d| d["release"]["version"] == 2))
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    let total = total.load(Ordering::Relaxed);
    let failed = failed.lock().unwrap().clone();
    eprintln!("{total} requests, {} failed", failed.len());
    assert!(total > 50, "the load generator ran ({total} requests)");
    assert!(
        failed.is_empty(),
        "failed requests under preboot: {failed:?}"
    );
    // (The load's router lines filled the ring: restart once more to read the line.)
    c.ok(&["ps:restart", "web.1", "-a", "steady"]);
    wait_for("the Restarting line", UP, || {
        let log = c.logs("steady", &["--ps", "web.1"]);
        log.contains("heroku[web.1]: Restarting").then_some(())
    });

    // Without preboot a release stops the old web dynos first: requests are held while the
    // new ones boot, and the gap is logged.
    c.ok(&["features:disable", "preboot", "-a", "steady"]);
    c.ok(&["config:set", "GREETING=gap", "-a", "steady"]);
    let gap = wait_for("the gap's lines", UP, || {
        assert_eq!(get(c.router_port, "steady", "/cgi-bin/greeting"), 200);
        let log = c.logs("steady", &["--ps", "router"]);
        (log.contains("No web dyno up while new ones boot: holding requests")
            && log.contains("held requests go through\" gap="))
        .then_some(log)
    });
    assert!(gap.contains("status=200"), "{gap}");

    c.ok(&["apps:destroy", "steady", "--confirm", "steady"]);
    assert_clean(&c, 0);
}

/// An eco app without traffic sleeps (`idle` in ps); the next request wakes it, is held
/// until a web dyno is up, and is served; the log says how long the wake took.
#[test]
fn an_idle_eco_app_sleeps_and_a_request_wakes_it() {
    if !harness::ready() {
        return;
    }
    let mut c = Cluster::start_with(Duration::from_secs(10), &["--sleep-after", "3s"]);
    c.add_agent("sleepy", 20);
    c.wait_hosts(1);
    deploy_tiny(&c, "napper");
    c.ok(&["ps:scale", "web=1:eco", "-a", "napper"]);
    let idle = c.wait_dynos("napper", &["web.1"], "idle", UP);
    assert_eq!(idle[0]["size"], "eco");
    let ps = c.ok(&["ps", "-a", "napper"]);
    assert!(ps.contains("web.1: idle"), "{ps}");

    let (code, body) = c.route("napper", "/cgi-bin/greeting", &[]);
    assert_eq!(code, 200, "the waking request is held, then served: {body}");
    assert_eq!(body, "hello from web.1\n");
    c.wait_dynos("napper", &["web.1"], "up", UP);
    let log = c.logs("napper", &[]);
    for want in [
        "heroku[web.1]: Idling",
        "heroku[web.1]: Unidling",
        "Unidled in ",
    ] {
        assert!(log.contains(want), "{want:?} missing in:\n{log}");
    }
    c.ok(&["apps:destroy", "napper", "--confirm", "napper"]);
    assert_clean(&c, 0);
}

/// A dyno that floods its output is rate-limited by its agent, which logs Heroku's L10
/// line; lines written while the scheduler is away reach the log once it is back.
#[test]
fn floods_are_limited_and_lines_wait_for_the_scheduler() {
    if !harness::ready() {
        return;
    }
    let mut c = Cluster::start(Duration::from_secs(10));
    c.add_agent("flood", 20);
    c.wait_hosts(1);
    deploy_tiny(&c, "noisy");
    c.ok(&["ps:scale", "flood=1", "worker=1", "-a", "noisy"]);
    let l10 = wait_for("an L10 line", UP, || {
        let log = c.logs("noisy", &["--ps", "flood.1", "--source", "heroku"]);
        log.lines()
            .find(|l| l.contains("Error L10 (output buffer overflow): "))
            .map(str::to_string)
    });
    assert!(l10.contains(" heroku[flood.1]: "), "{l10}");
    assert!(l10.contains(" messages dropped since "), "{l10}");
    c.ok(&["ps:scale", "flood=0", "-a", "noisy"]);
    wait_for("flood.1 to stop", UP, || {
        (!c.dynos("noisy").iter().any(|d| d["type"] == "flood")).then_some(())
    });

    c.kill_scheduler();
    let gone = time::OffsetDateTime::now_utc();
    std::thread::sleep(Duration::from_secs(3));
    let back = time::OffsetDateTime::now_utc();
    c.start_scheduler();
    let during = wait_for(
        "the worker's lines from while the scheduler was away",
        UP,
        || {
            let log = c.logs("noisy", &["--ps", "worker.1"]);
            let n = log
                .lines()
                .filter(|l| {
                    let Some(ts) = l.split(' ').next() else {
                        return false;
                    };
                    let Ok(t) = time::OffsetDateTime::parse(
                        ts,
                        &time::format_description::well_known::Rfc3339,
                    ) else {
                        return false;
                    };
                    l.contains("app[worker.1]: tick") && t > gone && t < back
                })
                .count();
            (n >= 2).then_some(n)
        },
    );
    assert!(during >= 2);
    c.ok(&["apps:destroy", "noisy", "--confirm", "noisy"]);
    assert_clean(&c, 0);
}

/// A cluster of one host running the tiny app with web.1 up.
fn tiny_web_up(host: &str, app: &str) -> Cluster {
    let mut c = Cluster::start(Duration::from_secs(10));
    c.add_agent(host, 20);
    c.wait_hosts(1);
    deploy_tiny(&c, app);
    c.wait_dynos(app, &["web.1"], "up", UP);
    c
}

/// Starts `manifold-scheduler KIND --scheduler API LISTEN_FLAG 127.0.0.1:PORT` following
/// the cluster's scheduler; returns it (killed when dropped) and its port.
fn follower(c: &Cluster, kind: &str, listen_flag: &str) -> (Reap, u16) {
    let port = harness::free_port();
    let log = std::fs::File::create(c.dir.path().join(format!("{kind}.log"))).unwrap();
    let child = Command::new(harness::bins().join("manifold-scheduler"))
        .args([kind, "--scheduler", &c.api()])
        .args([listen_flag, &format!("127.0.0.1:{port}")])
        .args(["--router-tls-listen", "none"])
        .env("MANIFOLD_API_TOKEN", API_TOKEN)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    (Reap(child), port)
}

/// Kills a child process when dropped, so a failing test leaves no router behind.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `manifold-scheduler router`: a router in its own process follows the scheduler's routes
/// (a new dyno is routed to as soon as it is up) and sends its log lines back.
#[test]
fn a_router_process_follows_the_scheduler() {
    if !harness::ready() {
        return;
    }
    let c = tiny_web_up("follow", "followed");
    let (_router, port) = follower(&c, "router", "--router-listen");
    wait_for("the router process to route", UP, || {
        (get(port, "followed", "/cgi-bin/greeting?external") == 200).then_some(())
    });
    assert_eq!(get(port, "nosuchapp", "/"), 404);

    c.ok(&["ps:scale", "web=2", "-a", "followed"]);
    c.wait_dynos("followed", &["web.1", "web.2"], "up", UP);
    let served = wait_for("web.2 behind the router process", UP, || {
        let out = Command::new("curl")
            .args(["-fsS", "-H", "Host: followed.localhost"])
            .arg(format!("http://127.0.0.1:{port}/cgi-bin/greeting"))
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        (body == "hello from web.2\n").then_some(body)
    });
    assert_eq!(served, "hello from web.2\n");
    wait_for("its router lines in the app's log", UP, || {
        let log = c.logs("followed", &["--ps", "router"]);
        log.contains("path=\"/cgi-bin/greeting?external\"")
            .then_some(())
    });
    c.ok(&["apps:destroy", "followed", "--confirm", "followed"]);
    wait_for("the destroyed app to be unknown", UP, || {
        (get(port, "followed", "/") == 404).then_some(())
    });
    assert_clean(&c, 0);
}

/// `manifold-scheduler logplex`: a log reader in its own process follows every line of the
/// scheduler and serves `manifold logs` (same API, same token).
#[test]
fn a_log_plex_process_follows_the_scheduler() {
    if !harness::ready() {
        return;
    }
    let c = tiny_web_up("logs", "watched");
    let (_plex, port) = follower(&c, "logplex", "--logplex-listen");
    let follower = format!("http://127.0.0.1:{port}");
    let logs = |args: &[&str]| {
        Command::new(harness::bins().join("manifold"))
            .args(args)
            .env("MANIFOLD_API", &follower)
            .env("MANIFOLD_API_TOKEN", API_TOKEN)
            .output()
            .unwrap()
    };
    let seen = wait_for("a router line in the follower's log", UP, || {
        assert_eq!(c.route("watched", "/cgi-bin/greeting?followed", &[]).0, 200);
        let out = logs(&["logs", "-a", "watched", "--ps", "router"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("path=\"/cgi-bin/greeting?followed\"")
            .then_some(text)
    });
    assert!(
        seen.lines().all(|l| l.contains(" heroku[router]: ")),
        "{seen}"
    );
    let out = logs(&["logs", "-a", "nosuch"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let out = Command::new(harness::bins().join("manifold"))
        .args(["logs", "-a", "watched"])
        .env("MANIFOLD_API", &follower)
        .env("MANIFOLD_API_TOKEN", "wrong")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the follower checks the token");
    c.ok(&["apps:destroy", "watched", "--confirm", "watched"]);
    assert_clean(&c, 0);
}
