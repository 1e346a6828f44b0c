//! What the scheduler trusts, tried as an attacker would: a compromised agent (a
//! hand-written AgentLink client with a valid agent token) speaking for dynos, builds and
//! release phases of another host; clients that hold API connections open; and the
//! follower token used where only the API token may go. As root, with the `testing` stack.

#![allow(clippy::unwrap_used)]

mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{wait_for, Cluster, AGENT_TOKEN, API_TOKEN, TINY, UP};
use manifold_proto::agent_link_client::AgentLinkClient;
use manifold_proto::{
    agent_message, build_event, AgentMessage, BuildEvent, BuildFinished, DynoState, DynoStatus,
    Hello, LogBatch, LogEntry,
};
use serde_json::Value;

/// Speaks on the AgentLink as host `host`: `Hello` (claiming `dynos`), then `messages`, then
/// ends its side and reads the scheduler's until the scheduler ends it too, which it does
/// only once it handled every message (one task per link, in order).
fn hostile_agent(c: &Cluster, host: &str, dynos: Vec<DynoStatus>, messages: Vec<AgentMessage>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = AgentLinkClient::connect(c.api()).await.unwrap();
        let hello = AgentMessage {
            kind: Some(agent_message::Kind::Hello(Hello {
                host_id: host.to_string(),
                address: "127.0.0.1".to_string(),
                // No room and no stacks: nothing is ever placed or built there.
                capacity: Some(manifold_proto::Capacity {
                    memory_bytes: 0,
                    dyno_slots: 0,
                }),
                stacks: Vec::new(),
                dynos,
                generation: 0,
                services: Vec::new(),
            })),
        };
        let outbound = futures::stream::iter(std::iter::once(hello).chain(messages));
        let mut request = tonic::Request::new(outbound);
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {AGENT_TOKEN}").parse().unwrap(),
        );
        let mut inbound = client.link(request).await.unwrap().into_inner();
        let drained = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(_)) = inbound.message().await {}
        })
        .await;
        assert!(drained.is_ok(), "the scheduler kept {host}'s link open");
    });
}

fn status(id: &str, state: DynoState, exit: Option<i32>, port: u32) -> DynoStatus {
    DynoStatus {
        id: id.to_string(),
        state: state.into(),
        changed_at_ms: 1,
        exit_status: exit,
        reason: "said the hostile agent".to_string(),
        port,
    }
}

fn dyno_message(s: DynoStatus) -> AgentMessage {
    AgentMessage {
        kind: Some(agent_message::Kind::Dyno(s)),
    }
}

fn log_line(app: &str, dyno_id: &str, message: &str, platform: bool) -> LogEntry {
    LogEntry {
        app: app.to_string(),
        dyno_id: dyno_id.to_string(),
        process: "web.1".to_string(),
        platform,
        time_us: 1,
        message: message.to_string(),
    }
}

fn build_message(id: &str, kind: build_event::Kind) -> AgentMessage {
    AgentMessage {
        kind: Some(agent_message::Kind::Build(BuildEvent {
            build_id: id.to_string(),
            kind: Some(kind),
        })),
    }
}

fn dyno(c: &Cluster, app: &str, name: &str) -> Value {
    c.dynos(app)
        .into_iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {app}"))
}

fn scheduler_log(c: &Cluster) -> String {
    std::fs::read_to_string(c.dir.path().join("scheduler.log")).unwrap()
}

fn api_json(c: &Cluster, path: &str) -> Value {
    let (code, body) = c.raw("GET", path, Some(API_TOKEN), None);
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// A compromised agent, with a valid agent token, as host `evil-*` (which runs nothing):
/// every report it makes about another host's dyno, build or release phase, and every log
/// line it sends for another app, is refused and logged, and changes nothing.
#[test]
fn a_compromised_agent_speaks_for_its_own_host_only() {
    if !harness::ready() {
        return;
    }
    // A long deadline: h1's agent is stopped for a while below, and must stay connected.
    let mut c = Cluster::start(Duration::from_secs(60));
    c.add_agent("h1", 4);
    c.wait_hosts(1);
    harness::deploy_tiny(&c, "victim");
    c.wait_dynos("victim", &["web.1"], "up", UP);
    let before = dyno(&c, "victim", "web.1");
    let web = before["id"].as_str().unwrap().to_string();

    // Dyno reports (in Hello's re-adoption list and after it) and log lines.
    hostile_agent(
        &c,
        "evil-1",
        vec![status(&web, DynoState::Down, Some(0), 0)],
        vec![
            dyno_message(status(&web, DynoState::Crashed, Some(137), 0)),
            dyno_message(status(&web, DynoState::Up, None, 1)),
            AgentMessage {
                kind: Some(agent_message::Kind::Logs(LogBatch {
                    lines: vec![
                        log_line("victim", &web, "HOSTILE line with the victim's dyno", false),
                        log_line("victim", "", "HOSTILE line about no dyno", true),
                        log_line("victim", "made-up-dyno", "HOSTILE line of no dyno", false),
                    ],
                })),
            },
        ],
    );
    assert_eq!(
        dyno(&c, "victim", "web.1"),
        before,
        "the victim's dyno changed"
    );
    let log = c.logs("victim", &[]);
    assert!(
        !log.contains("HOSTILE"),
        "hostile lines in the app's log:\n{log}"
    );
    assert!(
        log.contains("heroku[web.1]: State changed from starting to up"),
        "h1's own lines still reach the log:\n{log}"
    );
    let said = scheduler_log(&c);
    for state in ["down", "crashed", "up"] {
        let refusal = format!(
            "host evil-1: refused its report that dyno {web} is {state}: that dyno is on host h1"
        );
        assert!(said.contains(&refusal), "not logged: {refusal}\n{said}");
    }
    assert!(
        said.contains("host evil-1: refused log lines of dynos not placed on it"),
        "{said}"
    );

    // A build sent to h1, finished by evil-2 with the victim's own slug (it would make a
    // release of whatever slug the attacker names): h1's agent is stopped meanwhile, so
    // the build is certainly still running.
    let releases = api_json(&c, "/apps/victim/releases");
    let slug = releases[0]["slug"]["checksum"]
        .as_str()
        .unwrap()
        .trim_start_matches("SHA256:")
        .to_string();
    let source = c.dir.path().join("with-release-phase");
    assert!(Command::new("cp")
        .args(["-r", TINY])
        .arg(&source)
        .status()
        .unwrap()
        .success());
    let mut procfile = std::fs::OpenOptions::new()
        .append(true)
        .open(source.join("Procfile"))
        .unwrap();
    writeln!(procfile, "release: exec sleep 600").unwrap();
    let agent = nix::unistd::Pid::from_raw(c.agents[0].pid().unwrap() as i32);
    nix::sys::signal::kill(agent, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let deploy = c.spawn_cli(&["deploy", source.to_str().unwrap(), "-a", "victim"]);
    let build = wait_for("the second build to run on h1", UP, || {
        let builds = api_json(&c, "/apps/victim/builds");
        builds.as_array().unwrap().iter().find_map(|b| {
            (b["status"] == "pending" && b["host"]["id"] == "h1")
                .then(|| b["id"].as_str().unwrap().to_string())
        })
    });
    hostile_agent(
        &c,
        "evil-2",
        Vec::new(),
        vec![
            build_message(
                &build,
                build_event::Kind::Output("HOSTILE build line".into()),
            ),
            build_message(
                &build,
                build_event::Kind::Finished(BuildFinished {
                    status: 0,
                    slug_sha256: slug,
                    slug_json: r#"{"process_types":{"web":"exec sleep 1000"},"stack":"testing"}"#
                        .to_string(),
                    error: String::new(),
                }),
            ),
        ],
    );
    let now = api_json(&c, &format!("/apps/victim/builds/{build}"));
    assert_eq!(now["status"], "pending", "{now}");
    assert_eq!(api_json(&c, "/apps/victim/releases"), releases);
    assert!(scheduler_log(&c).contains(&format!(
        "host evil-2: refused its event for build {build}: that build was sent to host h1"
    )));
    nix::sys::signal::kill(agent, nix::sys::signal::Signal::SIGCONT).unwrap();

    // Its release phase, on h1, settled by evil-3.
    let release = wait_for("the release phase to run", UP, || {
        c.dynos("victim")
            .into_iter()
            .find(|d| d["type"] == "release" && d["state"] == "up")
    });
    let release_id = release["id"].as_str().unwrap().to_string();
    hostile_agent(
        &c,
        "evil-3",
        Vec::new(),
        vec![dyno_message(status(
            &release_id,
            DynoState::Complete,
            Some(0),
            0,
        ))],
    );
    let newest = api_json(&c, "/apps/victim/releases")
        .as_array()
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    assert_eq!(newest["status"], "pending", "{newest}");
    assert_eq!(
        dyno(&c, "victim", release["name"].as_str().unwrap()),
        release
    );
    let mut deploy = deploy;
    let _ = deploy.kill();
    let out = deploy.wait_with_output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("Running release command"), "{shown}");
    assert!(
        !shown.contains("HOSTILE"),
        "hostile build output shown:\n{shown}"
    );
    let metrics = c.raw("GET", "/metrics", Some(API_TOKEN), None).1;
    assert!(
        metrics.contains("manifold_refused_reports_total 9"),
        "3 + 1 reports, 3 lines, 1 + 1 build events:\n{metrics}"
    );
}

/// Reads until the scheduler closes the connection; fails if it is open after `within`.
fn read_to_close(stream: &mut TcpStream, within: Duration) -> String {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            // A signal to the test process (a child's exit) ends a read that has a timeout
            // with EINTR rather than restarting it.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("the scheduler kept the connection open past {within:?}: {e}"),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A client sending half a header, one sending nothing, and an idle keep-alive connection
/// are each cut off after `--api-header-timeout`.
#[test]
fn slow_silent_and_idle_api_connections_are_cut_off() {
    if !harness::ready() {
        return;
    }
    let c = Cluster::start_with(Duration::from_secs(5), &["--api-header-timeout", "1s"]);
    let addr = format!("127.0.0.1:{}", c.port);
    let mut slow = TcpStream::connect(&addr).unwrap();
    let start = Instant::now();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    let got = read_to_close(&mut slow, Duration::from_secs(10));
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "cut too early"
    );
    assert!(!got.contains("200 OK"), "{got:?}");

    let mut silent = TcpStream::connect(&addr).unwrap();
    let start = Instant::now();
    assert_eq!(read_to_close(&mut silent, Duration::from_secs(10)), "");
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "cut too early"
    );

    let mut idle = TcpStream::connect(&addr).unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let got = read_to_close(&mut idle, Duration::from_secs(10));
    assert!(
        got.starts_with("HTTP/1.1 200 OK"),
        "served, then closed: {got:?}"
    );
}

/// Past `--api-max-connections`, a new connection waits until one closes.
#[test]
fn api_connections_past_the_cap_wait() {
    if !harness::ready() {
        return;
    }
    let c = Cluster::start_with(Duration::from_secs(5), &["--api-max-connections", "2"]);
    let addr = format!("127.0.0.1:{}", c.port);
    let holders: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    let mut waiting = TcpStream::connect(&addr).unwrap();
    waiting
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    let early = waiting.read(&mut buf);
    assert!(early.is_err(), "served past the cap: {early:?}");
    drop(holders);
    let got = read_to_close(&mut waiting, Duration::from_secs(10));
    assert!(got.starts_with("HTTP/1.1 200 OK"), "{got:?}");
}

/// The follower token (STATE_DIR/follower-token) opens the routes routers and log plex
/// processes follow, and no other.
#[test]
fn the_follower_token_opens_the_follower_routes_only() {
    if !harness::ready() {
        return;
    }
    let c = Cluster::start(Duration::from_secs(5));
    let token = std::fs::read_to_string(c.dir.path().join("scheduler/follower-token"))
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(token, API_TOKEN);
    let (code, body) = c.raw("GET", "/router/v1/routes", Some(&token), None);
    assert_eq!(code, 200, "{body}");
    let (code, body) = c.raw("POST", "/router/v1/events", Some(&token), Some("{}"));
    assert!((200..300).contains(&code), "{code} {body}");
    let firehose = c
        .curl()
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-m", "2"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("{}/logplex/v1/firehose", c.api()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&firehose.stdout), "200");
    for (method, path, body) in [
        ("GET", "/apps", None),
        ("POST", "/apps", Some(r#"{"name":"stolen"}"#)),
        ("GET", "/hosts", None),
        ("GET", "/metrics", None),
    ] {
        let (code, answer) = c.raw(method, path, Some(&token), body);
        assert_eq!(code, 403, "{method} {path}: {answer}");
        assert!(answer.contains("follower token"), "{answer}");
    }
    let (code, _) = c.raw("GET", "/agent/v1/blobs/00", Some(&token), None);
    assert_eq!(code, 401, "not an agent's token either");
    assert_eq!(c.raw("GET", "/apps", Some(API_TOKEN), None).0, 200);
}
