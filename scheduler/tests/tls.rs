//! End-to-end: mutual TLS between agents and the scheduler (issue 8). Real processes: the
//! `certs` commands make a cluster CA and host certificates; a scheduler serves the API and
//! AgentLink over TLS and checks agents' certificates against the CA; an agent with a good
//! certificate joins and runs a deployed app, while agents with no certificate, one from
//! another CA, one for another host, or plain HTTP are refused and never become hosts. The
//! CLI talks https with MANIFOLD_CA, and the router and log plex processes follow the
//! scheduler over https. As root, with the `testing` stack.

#![allow(clippy::unwrap_used)]

mod harness;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use harness::{bins, deploy_tiny, wait_for, AgentOptions, Cluster, AGENT_TOKEN, UP};

/// Kills a child process when dropped, so a failing test leaves no follower behind.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn certs(args: &[&str]) -> Output {
    Command::new(bins().join("manifold-scheduler"))
        .arg("certs")
        .args(args)
        .output()
        .unwrap()
}

fn certs_ok(args: &[&str]) -> String {
    let out = certs(args);
    assert!(
        out.status.success(),
        "certs {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn certs_err(args: &[&str]) -> String {
    let out = certs(args);
    assert!(!out.status.success(), "certs {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits until `path` (a log) contains `text`.
fn wait_log(path: &Path, text: &str) {
    wait_for(
        &format!("{} to say {text:?}", path.display()),
        Duration::from_secs(60),
        || log(path).contains(text).then_some(()),
    );
}

/// The scheduler will serve TLS with the certificate `certs issue scheduler` made in `pki`
/// and check agents against its CA; the cluster's CLI and curl trust that CA.
fn serve_tls(c: &mut Cluster, pki: &Path) {
    let ca = pki.join("ca.pem");
    c.flags.extend(
        [
            "--tls-cert",
            s(&pki.join("scheduler.pem")),
            "--tls-key",
            s(&pki.join("scheduler-key.pem")),
            "--cluster-ca",
            s(&ca),
        ]
        .map(String::from),
    );
    c.ca = Some(ca);
}

/// Starts `manifold-scheduler KIND` following the cluster's https:// scheduler with the
/// cluster CA, listening on a free port; returns it (killed when dropped) and the port.
fn follower(c: &Cluster, ca: &Path, kind: &str, listen_flag: &str) -> (Reap, u16) {
    let port = harness::free_port();
    let log = std::fs::File::create(c.dir.path().join(format!("{kind}.log"))).unwrap();
    let child = Command::new(bins().join("manifold-scheduler"))
        .args([kind, "--scheduler", &c.api(), "--cluster-ca", s(ca)])
        .args([listen_flag, &format!("127.0.0.1:{port}")])
        .env("MANIFOLD_API_TOKEN", harness::API_TOKEN)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    (Reap(child), port)
}

fn tls_agent(ca: &Path, cert: Option<(&Path, &Path)>) -> AgentOptions {
    let mut args = vec!["--cluster-ca".to_string(), s(ca).to_string()];
    if let Some((cert, key)) = cert {
        args.extend([
            "--tls-cert".to_string(),
            s(cert).to_string(),
            "--tls-key".to_string(),
            s(key).to_string(),
        ]);
    }
    AgentOptions {
        scheduler: None,
        args,
    }
}

fn host_ids(c: &Cluster) -> Vec<String> {
    let hosts = c.json(&["hosts"]);
    let mut ids: Vec<String> = hosts
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// The whole story on one scheduler: certificates, a host that joins and runs an app over
/// TLS, four hosts that are refused (and say why, on both ends), the blob store's checks,
/// and the CLI with and without the CA.
#[test]
fn agents_need_a_certificate_for_their_host_id() {
    if !harness::ready() {
        return;
    }
    let mut c = Cluster::prepare(Duration::from_secs(10), &[]);
    let pki = c.dir.path().join("pki");
    let other = c.dir.path().join("other-pki");

    // The certs commands.
    let out = certs_ok(&["ca", "--dir", s(&pki)]);
    assert!(out.contains("ca.pem"), "{out}");
    let ca = pki.join("ca.pem");
    assert!(ca.is_file());
    assert_eq!(mode(&pki.join("ca-key.pem")), 0o600);
    let err = certs_err(&["ca", "--dir", s(&pki)]);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    let before = std::fs::read(&ca).unwrap();
    let err = certs_err(&["issue", "tls-x", "--dir", s(&other)]);
    assert!(err.contains("no cluster CA in"), "{err}");
    let err = certs_err(&["issue", "../escape", "--dir", s(&pki)]);
    assert!(err.contains("invalid name"), "{err}");
    let err = certs_err(&["issue", "ca", "--dir", s(&pki)]);
    assert!(err.contains("invalid name"), "{err}");
    assert_eq!(std::fs::read(&ca).unwrap(), before, "the CA is untouched");
    let out = certs_ok(&[
        "issue",
        "scheduler",
        "--dir",
        s(&pki),
        "--ip",
        "127.0.0.1",
        "--dns",
        "localhost",
    ]);
    assert!(out.contains("scheduler, localhost, 127.0.0.1"), "{out}");
    certs_ok(&["issue", "tls-good", "--dir", s(&pki)]);
    assert!(pki.join("tls-good.pem").is_file());
    assert_eq!(mode(&pki.join("tls-good-key.pem")), 0o600);
    certs_ok(&["ca", "--dir", s(&other)]);
    certs_ok(&["issue", "tls-foreign", "--dir", s(&other)]);

    // --cluster-ca alone is refused.
    let out = Command::new(bins().join("manifold-scheduler"))
        .args(["--cluster-ca", s(&ca), "--listen", "127.0.0.1:0"])
        .arg("--state-dir")
        .arg(c.dir.path().join("nope"))
        .args(["--router-listen", "none"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--cluster-ca"), "{err}");
    assert!(err.contains("--tls-cert"), "{err}");

    // The scheduler, over TLS, checking agents.
    serve_tls(&mut c, &pki);
    c.start_scheduler();
    let scheduler_log = c.dir.path().join("scheduler.log");
    wait_log(
        &scheduler_log,
        "agents with a certificate from the cluster CA",
    );

    // A host with its own certificate joins; the CLI sees it over https.
    let good = c.add_agent_with(
        "tls-good",
        20,
        tls_agent(
            &ca,
            Some((&pki.join("tls-good.pem"), &pki.join("tls-good-key.pem"))),
        ),
    );
    c.wait_hosts(1);
    assert_eq!(host_ids(&c), vec!["tls-good"]);

    // Refused: no certificate, another CA's, another host's, plain HTTP.
    let none = c.add_agent_with("tls-none", 20, tls_agent(&ca, None));
    let foreign = c.add_agent_with(
        "tls-foreign",
        20,
        tls_agent(
            &ca,
            Some((
                &other.join("tls-foreign.pem"),
                &other.join("tls-foreign-key.pem"),
            )),
        ),
    );
    let impostor = c.add_agent_with(
        "tls-impostor",
        20,
        tls_agent(
            &ca,
            Some((&pki.join("tls-good.pem"), &pki.join("tls-good-key.pem"))),
        ),
    );
    let plain = c.add_agent_with(
        "tls-plain",
        20,
        AgentOptions {
            scheduler: Some(format!("http://127.0.0.1:{}", c.port)),
            args: Vec::new(),
        },
    );
    let agent_log = |i: usize| c.agents[i].state_dir.join("agent.log");
    let refusals = [
        (
            none,
            "agent certificate for host tls-none required: the agent presented none",
        ),
        (
            foreign,
            "agent certificate for host tls-foreign required: the one presented is not valid for the cluster CA (invalid peer certificate: UnknownIssuer)",
        ),
        (
            impostor,
            "agent certificate for host tls-impostor required: the one presented is for tls-good",
        ),
    ];
    for (i, message) in refusals {
        // The agent is told why, and the scheduler logs it.
        wait_log(&agent_log(i), message);
        wait_log(&scheduler_log, message);
    }
    let log_text = log(&agent_log(impostor));
    assert!(log_text.contains("PermissionDenied"), "{log_text}");
    let log_text = log(&agent_log(none));
    assert!(log_text.contains("Unauthenticated"), "{log_text}");
    wait_log(
        &agent_log(plain),
        "the scheduler serves TLS on this port: use an https:// scheduler URL",
    );
    wait_log(&scheduler_log, "refused a plain-HTTP connection");

    // A real deploy: the good host fetches the source and the slug over TLS with its
    // certificate, builds, and runs the web dyno; the refused ones never appear.
    let out = deploy_tiny(&c, "tlsapp");
    assert!(out.contains("Released v1"), "{out}");
    let dynos = c.wait_dynos("tlsapp", &["web.1"], "up", UP);
    assert_eq!(dynos[0]["host"]["id"], "tls-good");
    let port = dynos[0]["port"].as_u64().unwrap();
    let body = Cluster::http(port, "/").expect("the web dyno answers");
    assert!(!body.is_empty());
    // `manifold run`: the attach upgrade over https, the agent's Attach stream over mTLS.
    let out = c.cli_with_input(
        &[
            "run",
            "-a",
            "tlsapp",
            "--",
            "read x; echo \"got $x on $DYNO\"",
        ],
        "tls\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("got tls on run."),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A router process follows the https:// scheduler, trusting the cluster CA.
    let (_router, router_port) = follower(&c, &ca, "router", "--router-listen");
    wait_for("the router process to route over https", UP, || {
        let out = Command::new("curl")
            .args(["-fsS", "--max-time", "5", "-H", "Host: tlsapp.localhost"])
            .arg(format!("http://127.0.0.1:{router_port}/cgi-bin/greeting"))
            .output()
            .unwrap();
        (String::from_utf8_lossy(&out.stdout) == "hello from web.1\n").then_some(())
    });
    // A log plex process too: `manifold logs` against it has the router process's lines,
    // which reached it through the scheduler's firehose over https.
    let (_plex, plex_port) = follower(&c, &ca, "logplex", "--logplex-listen");
    wait_for("the log plex process to follow over https", UP, || {
        Command::new("curl")
            .args(["-fsS", "-o", "/dev/null", "-H", "Host: tlsapp.localhost"])
            .arg(format!(
                "http://127.0.0.1:{router_port}/cgi-bin/greeting?plexed"
            ))
            .status()
            .unwrap();
        let out = Command::new(bins().join("manifold"))
            .args(["logs", "-a", "tlsapp", "--ps", "router"])
            .env("MANIFOLD_API", format!("http://127.0.0.1:{plex_port}"))
            .env("MANIFOLD_API_TOKEN", harness::API_TOKEN)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .contains("path=\"/cgi-bin/greeting?plexed\"")
            .then_some(())
    });

    assert_eq!(host_ids(&c), vec!["tls-good"]);
    for (i, _) in refusals {
        assert!(
            c.agents[i].shims().is_empty(),
            "{} runs nothing",
            c.agents[i].id
        );
    }

    // The blob store checks certificates too (the agent token alone is not enough).
    let url = format!("{}/agent/v1/blobs/{}", c.api(), "0".repeat(64));
    let blob = |extra: &[&str]| -> (u16, String) {
        let out = c
            .curl()
            .args(["-sS", "-o", "-", "-w", "\n%{http_code}"])
            .args(["-H", &format!("Authorization: Bearer {AGENT_TOKEN}")])
            .args(extra)
            .arg(&url)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.trim().parse().unwrap(), body.to_string())
    };
    let (code, body) = blob(&[]);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("names no host"), "{body}");
    let (code, body) = blob(&["-H", "Manifold-Host: tls-good"]);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("presented none"), "{body}");
    let good_cert: PathBuf = pki.join("tls-good.pem");
    let good_key: PathBuf = pki.join("tls-good-key.pem");
    let with_cert = ["--cert", s(&good_cert), "--key", s(&good_key)];
    let (code, body) = blob(&[&with_cert[..], &["-H", "Manifold-Host: tls-other"]].concat());
    assert_eq!(code, 403, "{body}");
    let (code, body) = blob(&[&with_cert[..], &["-H", "Manifold-Host: tls-good"]].concat());
    assert_eq!(code, 404, "past the checks, no such blob: {body}");

    // The CLI: without the CA it says what to do; plain HTTP on the TLS port is told too.
    let cli = |api: &str| {
        Command::new(bins().join("manifold"))
            .arg("hosts")
            .env("MANIFOLD_API", api)
            .env("MANIFOLD_API_TOKEN", harness::API_TOKEN)
            .env_remove("MANIFOLD_CA")
            .output()
            .unwrap()
    };
    let out = cli(&c.api());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("presented a certificate this machine does not trust")
            && err.contains("MANIFOLD_CA"),
        "{err}"
    );
    let out = cli(&format!("http://127.0.0.1:{}", c.port));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("serves HTTPS"), "{err}");
    // --ca works as MANIFOLD_CA does.
    let out = Command::new(bins().join("manifold"))
        .args(["hosts", "--ca", s(&ca)])
        .env("MANIFOLD_API", c.api())
        .env("MANIFOLD_API_TOKEN", harness::API_TOKEN)
        .env_remove("MANIFOLD_CA")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("tls-good"));

    c.ok(&["apps:destroy", "tlsapp", "--confirm", "tlsapp"]);
    harness::assert_clean(&c, good);
}

/// The all-in-one node (`--with-agent`) over TLS: its own agent trusts the cluster CA,
/// presents its host certificate (`--agent-arg`), joins and runs a deployed app; SIGTERM to
/// the scheduler stops the agent too.
#[test]
fn an_all_in_one_node_over_tls_runs_its_own_agent() {
    if !harness::ready() {
        return;
    }
    let mut c = Cluster::prepare(Duration::from_secs(10), &[]);
    let pki = c.dir.path().join("pki");
    certs_ok(&["ca", "--dir", s(&pki)]);
    certs_ok(&["issue", "scheduler", "--dir", s(&pki), "--ip", "127.0.0.1"]);
    certs_ok(&["issue", "tls-aio", "--dir", s(&pki)]);
    serve_tls(&mut c, &pki);
    let cert = [
        "--tls-cert".to_string(),
        s(&pki.join("tls-aio.pem")).to_string(),
        "--tls-key".to_string(),
        s(&pki.join("tls-aio-key.pem")).to_string(),
    ];
    let aio = c.add_all_in_one_agent(
        "tls-aio",
        20,
        AgentOptions {
            scheduler: None,
            args: cert.to_vec(),
        },
    );
    c.start_scheduler();
    c.wait_hosts(1);
    assert_eq!(host_ids(&c), vec!["tls-aio"]);

    let out = deploy_tiny(&c, "aioapp");
    assert!(out.contains("Released v1"), "{out}");
    let dynos = c.wait_dynos("aioapp", &["web.1"], "up", UP);
    assert_eq!(dynos[0]["host"]["id"], "tls-aio");
    wait_for("the app to answer through the router", UP, || {
        let (code, body) = c.route("aioapp", "/cgi-bin/greeting", &[]);
        (code == 200 && body == "hello from web.1\n").then_some(())
    });

    // SIGTERM to the scheduler: it stops its agent and waits for it.
    let scheduler = c.scheduler.take().unwrap();
    let agent_running = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let text = String::from_utf8_lossy(&cmdline);
            text.starts_with(s(&bins().join("manifold-agent")))
                && text.contains(s(&c.agents[aio].state_dir))
                && !text.contains("\0shim\0")
        })
    };
    assert!(agent_running());
    let mut scheduler = Reap(scheduler);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(scheduler.0.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = scheduler.0.wait().unwrap();
    assert!(status.success(), "the scheduler exits cleanly: {status}");
    assert!(!agent_running(), "the all-in-one agent stopped with it");
}
