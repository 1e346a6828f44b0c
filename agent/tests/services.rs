//! Acceptance: add-on services (managed PostgreSQL and Redis from the `services` stack) run
//! by the agent daemon against a fake scheduler. They come up on a host port the agent picks,
//! keep their data across a crash, an agent restart and a stop, give it up only when
//! destroyed, refuse bad input with a reason, and only dynos whose egress names them reach
//! them; nothing is left behind.

#![allow(clippy::unwrap_used)]

mod common;
mod fake_scheduler;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use fake_scheduler::*;
use manifold_proto::{
    agent_message, scheduler_message, AgentMessage, Assignment, Assignments, Hello, LogEntry,
    SchedulerMessage, Service, ServiceState, ServiceStatus, Slug,
};
use tokio::sync::mpsc;

const SERVICES: Isolation = Isolation {
    cgroup_parent: "manifold-test-services",
    bridge: "mftests0",
    subnet: "10.231.8.0/24",
    table: "mftests0",
    ports: "39240-39249",
};

const POLICY: Isolation = Isolation {
    cgroup_parent: "manifold-test-services-policy",
    bridge: "mftests1",
    subnet: "10.231.9.0/24",
    table: "mftests1",
    ports: "39250-39259",
};

/// Long enough for a first `initdb` on a slow disk.
const BOOT: Duration = Duration::from_secs(120);

fn services_stack_ready() -> bool {
    ready()
        && manifold_test_support::require(
            "add-on services test",
            &[(
                Path::new("/var/lib/manifold/stacks/services/.manifold-stack").exists(),
                "the services stack is missing: run `rootfs/build-stack services`",
            )],
        )
}

fn service(id: &str, kind: &str, port: u32) -> Service {
    let env: HashMap<String, String> = [
        ("ADDON_USER", format!("u_{id}")),
        ("ADDON_PASSWORD", format!("pw-{id}-0123456789")),
        ("ADDON_DATABASE", format!("d_{id}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Service {
        id: id.into(),
        name: format!("{kind}-{id}"),
        kind: kind.into(),
        stack: "services".into(),
        size: "standard-1x".into(),
        port,
        env,
        peers: vec!["192.0.2.77".into()],
    }
}

async fn send_set(
    fake: &Fake,
    generation: u64,
    dynos: Vec<Assignment>,
    services: Vec<Service>,
    destroyed: &[&str],
) {
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
            term: 1,
            services,
            destroyed_services: destroyed.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })),
    }))
    .await
    .unwrap();
}

/// Everything the agent reported, kept: reports arrive in any order between services, and a
/// test asks for them one at a time.
struct Reports {
    rx: mpsc::UnboundedReceiver<AgentMessage>,
    log: PathBuf,
    statuses: Vec<ServiceStatus>,
    hellos: Vec<Hello>,
    lines: Vec<LogEntry>,
}

impl Reports {
    fn new(rx: mpsc::UnboundedReceiver<AgentMessage>, log: &Path) -> Self {
        Reports {
            rx,
            log: log.to_path_buf(),
            statuses: Vec::new(),
            hellos: Vec::new(),
            lines: Vec::new(),
        }
    }

    /// Where the reports so far end: [`Reports::service`] from here sees only later ones.
    fn mark(&self) -> (usize, usize) {
        (self.statuses.len(), self.hellos.len())
    }

    /// Waits until `found` picks something from what has been received.
    async fn until<T>(
        &mut self,
        what: &str,
        within: Duration,
        mut found: impl FnMut(&Self) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(t) = found(self) {
                return t;
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(AgentMessage { kind: Some(kind) })) => match kind {
                    agent_message::Kind::Service(s) => self.statuses.push(s),
                    agent_message::Kind::Hello(h) => {
                        self.statuses.extend(h.services.iter().cloned());
                        self.hellos.push(h);
                    }
                    agent_message::Kind::Logs(batch) => self.lines.extend(batch.lines),
                    _ => {}
                },
                Ok(_) => {}
                Err(_) => panic!(
                    "timed out waiting for {what}; statuses {:#?}; agent log:\n{}",
                    self.statuses,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ),
            }
        }
    }

    /// Service `id`'s first report in `state` after `from` (a [`Reports::mark`]).
    async fn service(
        &mut self,
        from: (usize, usize),
        id: &str,
        state: ServiceState,
    ) -> ServiceStatus {
        let what = format!("service {id} {}", state.as_str_name());
        self.until(&what, BOOT, |r| {
            r.statuses[from.0..]
                .iter()
                .find(|s| s.id == id && s.state() == state)
                .cloned()
        })
        .await
    }

    async fn hello(&mut self, from: (usize, usize)) -> Hello {
        self.until("hello", Duration::from_secs(60), |r| {
            r.hellos.get(from.1).cloned()
        })
        .await
    }
}

fn psql(port: u32, id: &str, sql: &str) -> std::process::Output {
    Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", &format!("u_{id}"), "-d", &format!("d_{id}")])
        .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
        .env("PGPASSWORD", format!("pw-{id}-0123456789"))
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap()
}

/// Runs `sql`, waiting while the server says it is still starting: a service is up once it
/// accepts connections, and PostgreSQL accepts them during its crash recovery.
fn psql_ok(port: u32, id: &str, sql: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut out = psql(port, id, sql);
    while String::from_utf8_lossy(&out.stderr).contains("the database system is starting up")
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
        out = psql(port, id, sql);
    }
    assert!(
        out.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn redis(port: u32, password: &str, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--no-auth-warning",
        ])
        .args(["-a", password])
        .args(args)
        .output()
        .unwrap();
    // A refused password is said on stderr (`AUTH failed`), the command's refusal on stdout.
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// SIGKILLs every process of the dyno directories' containers running `name`'s service, the
/// shims aside: the service crashes.
fn kill_service(state: &Path, isolation: &Isolation, run_prefix: &str) {
    let shims = shim_pids(state);
    let mut killed = 0;
    for (run, shim) in shims.iter().filter(|(run, _)| run.starts_with(run_prefix)) {
        for parent in cgroup_parents(isolation.cgroup_parent) {
            let Ok(procs) = std::fs::read_to_string(parent.join(run).join("cgroup.procs")) else {
                continue;
            };
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                if pid != *shim {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    killed += 1;
                }
            }
        }
    }
    assert!(killed > 0, "no process of {run_prefix} found");
}

/// The elements of one of the table's sets (`egress`, `reach`), one per line.
fn set_elements(table: &str, set: &str) -> Vec<String> {
    let out = Command::new("nft")
        .args(["list", "set", "ip", table, set])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(start) = text.find("elements = {") else {
        return Vec::new();
    };
    let body = &text[start + "elements = {".len()..];
    let body = &body[..body.find('}').unwrap_or(body.len())];
    body.split(',')
        .map(|e| e.split(" comment ").next().unwrap_or("").trim().to_string())
        .filter(|e| !e.is_empty())
        .collect()
}

/// Mounts under `dir` in this mount namespace.
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.canonicalize().unwrap_or(dir.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(&dir))
        .map(str::to_string)
        .collect()
}

/// The agent has stopped everything: no dyno directory, cgroup, mount or policy element.
async fn assert_clean(state: &Path, isolation: &Isolation) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let dirs: Vec<_> = std::fs::read_dir(state.join("dynos"))
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        let cgroups = cgroup_children(isolation.cgroup_parent);
        if dirs.is_empty() && cgroups.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "left behind: {dirs:?} {cgroups:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(mounts_under(state), Vec::<String>::new());
    assert_eq!(
        set_elements(isolation.table, "egress"),
        Vec::<String>::new()
    );
    assert_eq!(set_elements(isolation.table, "reach"), Vec::<String>::new());
    assert_eq!(
        set_elements(isolation.table, "services"),
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_keep_their_data_and_port_until_destroyed() {
    if !services_stack_ready() {
        return;
    }
    let (_tmp, state, log) = agent_dirs();
    let (fake, rx, _attaches) = fake();
    let mut reports = Reports::new(rx, &log);
    let url = serve(fake.clone(), Arc::new(Mutex::new(HashMap::new()))).await;
    let mut agent = Agent::spawn(&state, &url, &SERVICES, &["--restart-base", "1s"]);
    reports.hello((0, 0)).await;

    // Two good services, and bad ones beside them: an unknown kind, an id that is a path,
    // and two services asking for the same port.
    let hostile = |id: &str, kind: &str, port: u32| {
        let mut s = service(id, kind, port);
        s.name = format!("bad-{}", s.name.len());
        s
    };
    let all = vec![
        service("pg1", "postgresql", 0),
        service("rd1", "redis", 0),
        hostile("my1", "mysql", 0),
        hostile("../../evil", "redis", 0),
        service("rdx", "redis", 39249),
        service("rdy", "redis", 39249),
    ];
    let start = reports.mark();
    send_set(&fake, 1, Vec::new(), all.clone(), &[]).await;
    let pg = reports.service(start, "pg1", ServiceState::ServiceUp).await;
    assert!((39240..=39249).contains(&pg.port), "{pg:?}");
    let rd = reports.service(start, "rd1", ServiceState::ServiceUp).await;
    assert_ne!(rd.port, pg.port);
    let bad_kind = reports
        .service(start, "my1", ServiceState::ServiceCrashed)
        .await;
    assert!(
        bad_kind.reason.contains("unknown add-on kind \"mysql\""),
        "{bad_kind:?}"
    );
    let bad_id = reports
        .service(start, "../../evil", ServiceState::ServiceCrashed)
        .await;
    assert!(bad_id.reason.contains("invalid service id"), "{bad_id:?}");
    assert!(!state.join("evil").exists() && !state.parent().unwrap().join("evil").exists());
    // One of the two gets the port, the other is refused with the reason.
    let conflict = reports
        .until("a port conflict", BOOT, |r| {
            r.statuses
                .iter()
                .find(|s| {
                    (s.id == "rdx" || s.id == "rdy") && s.state() == ServiceState::ServiceCrashed
                })
                .cloned()
        })
        .await;
    assert!(
        conflict.reason.contains("port 39249 is taken"),
        "{conflict:?}"
    );

    // PostgreSQL from the host, with the add-on's user: a table and rows.
    psql_ok(
        pg.port,
        "pg1",
        "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2), (3)",
    );
    assert_eq!(psql_ok(pg.port, "pg1", "SELECT sum(x) FROM t"), "6");
    // The superuser is not reachable from outside, whatever its password.
    let su = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
            "-c",
            "select 1",
        ])
        .env("PGPASSWORD", "guess")
        .output()
        .unwrap();
    assert!(!su.status.success());
    // Redis with its password, and refused without it.
    assert_eq!(
        redis(rd.port, "pw-rd1-0123456789", &["SET", "k", "v"]),
        "OK"
    );
    assert_eq!(redis(rd.port, "pw-rd1-0123456789", &["GET", "k"]), "v");
    let refused = redis(rd.port, "wrong", &["GET", "k"]);
    assert!(
        refused.contains("WRONGPASS") && refused.contains("NOAUTH"),
        "{refused}"
    );
    // The volume's files belong to the service's own id range, not to root or an app.
    let data = state.join("volumes/pg1/data");
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(data.join("pg")).unwrap());
    assert!(owner > 100_000 + 65_536, "owned by {owner}");

    // A crash: restarted, same port, rows kept.
    let before = reports.mark();
    kill_service(&state, &SERVICES, "service-pg1-");
    let crashed = reports
        .service(before, "pg1", ServiceState::ServiceCrashed)
        .await;
    let again = reports
        .service(before, "pg1", ServiceState::ServiceUp)
        .await;
    assert!(again.changed_at_ms >= crashed.changed_at_ms);
    assert_eq!(again.port, pg.port);
    assert_eq!(psql_ok(pg.port, "pg1", "SELECT sum(x) FROM t"), "6");

    // The agent restarted: the services are re-adopted on their ports.
    agent.kill();
    let before = reports.mark();
    let agent = Agent::spawn(&state, &url, &SERVICES, &["--restart-base", "1s"]);
    let hello = reports.hello(before).await;
    let listed = |id: &str| hello.services.iter().find(|s| s.id == id).cloned().unwrap();
    assert_eq!(listed("pg1").port, pg.port);
    assert_eq!(listed("pg1").state(), ServiceState::ServiceUp);
    assert_eq!(psql_ok(pg.port, "pg1", "SELECT sum(x) FROM t"), "6");
    assert_eq!(redis(rd.port, "pw-rd1-0123456789", &["GET", "k"]), "v");

    // Absent from the set: stopped, volume kept; back (port 0 again): same port, same rows.
    let without_pg: Vec<Service> = all.iter().filter(|s| s.id != "pg1").cloned().collect();
    let before = reports.mark();
    send_set(&fake, 2, Vec::new(), without_pg, &[]).await;
    let stopped = reports
        .service(before, "pg1", ServiceState::ServiceStopped)
        .await;
    assert_eq!(stopped.port, pg.port);
    assert!(data.join("pg/PG_VERSION").exists());
    let before = reports.mark();
    send_set(&fake, 3, Vec::new(), all.clone(), &[]).await;
    let back = reports
        .service(before, "pg1", ServiceState::ServiceUp)
        .await;
    assert_eq!(back.port, pg.port);
    assert_eq!(psql_ok(pg.port, "pg1", "SELECT sum(x) FROM t"), "6");

    // Destroyed: stopped, volume gone, DESTROYED reported; nothing left.
    let ids = ["pg1", "rd1", "my1", "../../evil", "rdx", "rdy"];
    let before = reports.mark();
    send_set(&fake, 4, Vec::new(), Vec::new(), &ids).await;
    for id in ids {
        reports
            .service(before, id, ServiceState::ServiceDestroyed)
            .await;
        assert!(!state.join("volumes").join(id).exists());
    }
    assert_clean(&state, &SERVICES).await;
    assert!(state.join("volumes").read_dir().unwrap().next().is_none());
    drop(agent);
}

/// A dyno of the testing stack that tries the endpoint and says what happened.
fn prober(
    id: &str,
    name: &str,
    sha: &str,
    size: u64,
    target: &str,
    egress: &[String],
) -> Assignment {
    let (address, port) = target.split_once(':').unwrap();
    // A subshell per try: a failed `exec` redirection ends a non-interactive shell.
    let command = format!(
        "for i in 1 2 3 4 5; do \
           ( exec 3<>/dev/tcp/{address}/{port} || exit 1; \
             printf 'AUTH pw-rdp-0123456789\\r\\nPING\\r\\n' >&3; \
             read -t 5 a <&3; read -t 5 b <&3; echo \"probe $a $b\" ) 2>/dev/null \
           || echo 'probe refused'; sleep 1; \
         done; exec sleep 600"
    );
    Assignment {
        id: id.into(),
        app: "demo".into(),
        name: name.into(),
        command,
        size: "standard-1x".into(),
        stack: "testing".into(),
        slug: Some(Slug {
            sha256: sha.into(),
            size,
        }),
        release_version: 1,
        egress: egress.to_vec(),
        ..Assignment::default()
    }
}

/// This host's first global IPv4 address that is not a bridge of the agent's.
fn host_address() -> String {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.split_whitespace().nth(1).unwrap_or("").starts_with("m"))
        .find_map(|l| {
            l.split_whitespace()
                .nth(3)?
                .split('/')
                .next()
                .map(str::to_string)
        })
        .expect("a global IPv4 address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_dynos_with_the_endpoint_in_their_egress_reach_a_service() {
    if !services_stack_ready() {
        return;
    }
    let (tmp, state, log) = agent_dirs();
    let slug_path = slug(tmp.path(), "probe.tgz", &[("README", "probe\n", 0o644)]);
    let bytes = std::fs::read(&slug_path).unwrap();
    let size = bytes.len() as u64;
    let sha = {
        use sha2::Digest;
        sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let (fake, rx, _attaches) = fake();
    let mut reports = Reports::new(rx, &log);
    let url = serve(
        fake.clone(),
        Arc::new(Mutex::new([(sha.clone(), bytes)].into())),
    )
    .await;
    let address = host_address();
    let agent = Agent::spawn(&state, &url, &POLICY, &["--address", &address]);
    reports.hello((0, 0)).await;

    let redis_service = service("rdp", "redis", 0);
    let start = reports.mark();
    send_set(&fake, 1, Vec::new(), vec![redis_service.clone()], &[]).await;
    let up = reports.service(start, "rdp", ServiceState::ServiceUp).await;
    let endpoint = format!("{address}:{}", up.port);
    // The service's peers may reach its port; the set says so while it runs. (The host
    // itself reaches it: the other test's psql and redis-cli.)
    assert!(
        set_elements(POLICY.table, "reach")
            .iter()
            .any(|e| e.ends_with(". 192.0.2.77")),
        "{:?}",
        set_elements(POLICY.table, "reach")
    );

    // The service's peers change (an attached app's dynos came to another host): its
    // elements follow, and it is not restarted.
    let mut moved = redis_service.clone();
    moved.peers = vec!["192.0.2.88".into()];
    let before = reports.mark();
    send_set(&fake, 2, Vec::new(), vec![moved.clone()], &[]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let elements = set_elements(POLICY.table, "reach");
        if elements.iter().any(|e| e.ends_with(". 192.0.2.88"))
            && !elements.iter().any(|e| e.ends_with(". 192.0.2.77"))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{elements:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let redis_service = moved;
    let peers_changed = before;
    // The routers (which route to apps' dynos) never reach it: its address is in `services`.
    assert_eq!(set_elements(POLICY.table, "services").len(), 1);

    let allowed = prober(
        "d-in",
        "worker.1",
        &sha,
        size,
        &endpoint,
        std::slice::from_ref(&endpoint),
    );
    let denied = prober("d-out", "worker.2", &sha, size, &endpoint, &[]);
    // An agent whose address is 127.0.0.1 (an all-in-one node) gives its dynos endpoints on
    // the loopback: the dyno's own loopback is not the host's, yet it reaches the service.
    let local = format!("127.0.0.1:{}", up.port);
    let on_loopback = prober(
        "d-lo",
        "worker.3",
        &sha,
        size,
        &local,
        std::slice::from_ref(&local),
    );
    send_set(
        &fake,
        3,
        vec![allowed, denied, on_loopback],
        vec![redis_service.clone()],
        &[],
    )
    .await;
    let seen = reports
        .until("the probes", Duration::from_secs(60), |r| {
            let mut seen: HashMap<String, String> = HashMap::new();
            for line in r.lines.iter().filter(|l| l.message.starts_with("probe")) {
                seen.entry(line.process.clone())
                    .or_insert(line.message.clone());
            }
            (seen.len() == 3).then_some(seen)
        })
        .await;
    assert!(seen["worker.1"].starts_with("probe +OK"), "{seen:?}");
    assert!(seen["worker.1"].contains("+PONG"), "{seen:?}");
    assert_eq!(seen["worker.2"], "probe refused", "{seen:?}");
    assert!(seen["worker.3"].contains("+PONG"), "{seen:?}");
    // Nothing happened to the service meanwhile (no restart for its new peers).
    let since: Vec<_> = reports.statuses[peers_changed.0..].to_vec();
    assert!(since.iter().all(|s| s.id != "rdp"), "{since:?}");
    assert_eq!(set_elements(POLICY.table, "egress").len(), 2);

    // The dynos end: their elements go with them; the service's go when it is destroyed.
    let before = reports.mark();
    send_set(&fake, 4, Vec::new(), Vec::new(), &["rdp"]).await;
    reports
        .service(before, "rdp", ServiceState::ServiceDestroyed)
        .await;
    assert_clean(&state, &POLICY).await;
    drop(agent);
}
