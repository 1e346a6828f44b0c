//! A cluster on this machine for the end-to-end tests: the real `manifold-scheduler`, real
//! `manifold-agent`s (each with its own state dir, cgroup parent, bridge, nft table and port
//! range, as separate hosts would have), and the real `manifold` CLI, all talking over
//! sockets. Dropping the cluster kills everything it started and removes what its dynos
//! left, so a failing test leaves nothing behind.

#![allow(dead_code, unused_imports, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The tiny app: busybox httpd (with CGI scripts) for `web`, a shell loop for `worker`.
pub const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-web");
/// How long a dyno may take to come up in a test.
pub const UP: Duration = Duration::from_secs(60);

/// Deploys the tiny app on the testing stack and returns the deploy's output.
pub fn deploy_tiny(c: &Cluster, app: &str) -> String {
    c.ok(&["apps:create", app, "--stack", "testing"]);
    c.ok(&["deploy", TINY, "-a", app])
}

/// Nothing of the agent's dynos is left: no dyno directories, no cgroups.
pub fn assert_clean(c: &Cluster, i: usize) {
    let a = &c.agents[i];
    wait_for(
        &format!("agent {} to have no dynos", a.id),
        Duration::from_secs(60),
        || {
            let dirs = std::fs::read_dir(a.state_dir.join("dynos"))
                .map(|d| d.count())
                .unwrap_or(0);
            (dirs == 0 && cgroup_children(&a.cgroup_parent()).is_empty()).then_some(())
        },
    );
}

pub const API_TOKEN: &str = "e2e-api-token";
pub const AGENT_TOKEN: &str = "e2e-agent-token";

/// Where cargo put the workspace's binaries (beside this test's `deps/`).
pub fn bins() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// Whether the end-to-end tests can run here: root and the `testing` stack. In CI they must.
pub fn ready() -> bool {
    manifold_test_support::require(
        "end-to-end test",
        &[
            (manifold_test_support::is_root(), "it needs root"),
            (
                Path::new("/var/lib/manifold/stacks/testing/.manifold-stack").exists(),
                "the testing stack is missing: run `scripts/setup testing`",
            ),
            (
                bins().join("manifold-agent").exists() && bins().join("manifold").exists(),
                "the binaries are not built: run `cargo build --release --workspace --bins`",
            ),
        ],
    )
}

pub use manifold_test_support::free_port;

/// Polls `f` until it returns Some, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One agent: a host of the cluster.
pub struct Agent {
    pub id: String,
    pub state_dir: PathBuf,
    pub index: u8,
    pub ports: (u16, u16),
    /// Where the agent serves `/metrics`.
    pub metrics_port: u16,
    pub options: AgentOptions,
    child: Option<Child>,
}

/// How an agent differs from the default one.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// The scheduler URL it dials (default: the cluster's API URL).
    pub scheduler: Option<String>,
    /// More flags (e.g. `--tls-cert …`).
    pub args: Vec<String>,
}

impl Agent {
    pub fn cgroup_parent(&self) -> String {
        format!("manifold-e2e-{}", self.id)
    }
    pub fn bridge(&self) -> String {
        format!("mfe2e{}", self.index)
    }
    pub fn subnet(&self) -> String {
        format!("10.{}.0.0/16", 230 + self.index)
    }
    /// Its flags but `--scheduler`.
    fn args(&self, slots: u32) -> Vec<String> {
        let mut args: Vec<String> = [
            "--state-dir",
            self.state_dir.to_str().unwrap(),
            "--host-id",
            &self.id,
            "--slots",
            &slots.to_string(),
            "--memory",
            "16G",
            "--ports",
            &format!("{}-{}", self.ports.0, self.ports.1),
            "--cgroup-parent",
            &self.cgroup_parent(),
            "--bridge",
            &self.bridge(),
            "--subnet",
            &self.subnet(),
            "--nft-table",
            &self.bridge(),
            "--heartbeat",
            "500ms",
            "--metrics-listen",
            &format!("127.0.0.1:{}", self.metrics_port),
            "--buildpacks-dir",
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../buildpacks")
                .to_str()
                .unwrap(),
        ]
        .map(String::from)
        .to_vec();
        args.extend(self.options.args.iter().cloned());
        args
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
    /// The shim pid of each dyno this agent runs, by dyno directory name.
    pub fn shims(&self) -> Vec<(String, i32)> {
        let mut out = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.state_dir.join("dynos")) {
            for e in entries.flatten() {
                if let Ok(pid) = std::fs::read_to_string(e.path().join("shim.pid")) {
                    if let Ok(pid) = pid.trim().parse() {
                        out.push((e.file_name().to_string_lossy().into_owned(), pid));
                    }
                }
            }
        }
        out.sort();
        out
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// Where the scheduler's router serves apps.
    pub router_port: u16,
    pub scheduler: Option<Child>,
    pub agents: Vec<Agent>,
    pub deadline: Duration,
    pub flags: Vec<String>,
    /// The scheduler serves TLS with a certificate from this CA: the API is https://, the
    /// CLI gets it as MANIFOLD_CA, curl as --cacert.
    pub ca: Option<PathBuf>,
}

impl Cluster {
    /// A scheduler with a short heartbeat deadline, and no agents yet.
    pub fn start(deadline: Duration) -> Cluster {
        Cluster::start_with(deadline, &[])
    }

    /// A scheduler with extra flags.
    pub fn start_with(deadline: Duration, flags: &[&str]) -> Cluster {
        let mut c = Cluster::prepare(deadline, flags);
        c.start_scheduler();
        c
    }

    /// The cluster's directory, ports and flags, with the scheduler not started yet (for
    /// tests that make files first, such as certificates): see `start_scheduler`.
    pub fn prepare(deadline: Duration, flags: &[&str]) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("manifold-e2e-")
            .tempdir()
            .unwrap();
        Cluster {
            port: free_port(),
            router_port: free_port(),
            dir,
            scheduler: None,
            agents: Vec::new(),
            deadline,
            flags: flags.iter().map(|f| f.to_string()).collect(),
            ca: None,
        }
    }

    pub fn api(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// curl, trusting the cluster's CA if it has one.
    pub fn curl(&self) -> Command {
        let mut cmd = Command::new("curl");
        if let Some(ca) = &self.ca {
            cmd.arg("--cacert").arg(ca);
        }
        cmd
    }

    pub fn start_scheduler(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("scheduler.log"))
            .unwrap();
        let child = Command::new(bins().join("manifold-scheduler"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--state-dir")
            .arg(self.dir.path().join("scheduler"))
            .arg("--heartbeat-deadline")
            .arg(format!("{}ms", self.deadline.as_millis()))
            .arg("--router-listen")
            .arg(format!("127.0.0.1:{}", self.router_port))
            // Clusters run side by side: no fixed HTTPS port (tests that need it pass one).
            .args(["--router-tls-listen", "none"])
            .args(&self.flags)
            .env("MANIFOLD_API_TOKEN", API_TOKEN)
            .env("MANIFOLD_AGENT_TOKEN", AGENT_TOKEN)
            .env("MANIFOLD_LOG", "info,manifold_scheduler=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.scheduler = Some(child);
        let url = format!("{}/health", self.api());
        wait_for("the scheduler to serve", Duration::from_secs(20), || {
            self.curl()
                .args(["-fsS", "-o", "/dev/null", &url])
                .status()
                .ok()
                .filter(|s| s.success())
        });
    }

    pub fn kill_scheduler(&mut self) {
        if let Some(mut c) = self.scheduler.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Adds a host `id` with `slots` dyno slots, started at once.
    pub fn add_agent(&mut self, id: &str, slots: u32) -> usize {
        self.add_agent_with(id, slots, AgentOptions::default())
    }

    /// Adds a host `id` with `slots` dyno slots and `options`, started at once.
    pub fn add_agent_with(&mut self, id: &str, slots: u32, options: AgentOptions) -> usize {
        let i = self.new_agent(id, options);
        self.start_agent(i, slots);
        i
    }

    /// An agent the scheduler starts itself (`--with-agent`), with the same isolation as
    /// the others: its flags go to the scheduler as `--agent-arg`s, so this comes before
    /// `start_scheduler`. Its process is the scheduler's child; `sweep` finds it by its
    /// state directory.
    pub fn add_all_in_one_agent(&mut self, id: &str, slots: u32, options: AgentOptions) -> usize {
        let i = self.new_agent(id, options);
        let args = self.agents[i].args(slots);
        self.flags.push("--with-agent".to_string());
        self.flags
            .extend(args.into_iter().map(|a| format!("--agent-arg={a}")));
        i
    }

    fn new_agent(&mut self, id: &str, options: AgentOptions) -> usize {
        // Unique across the clusters of this test binary, which run in parallel.
        static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);
        let index = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let state_dir = self.dir.path().join(format!("agent-{id}"));
        std::fs::create_dir_all(&state_dir).unwrap();
        std::os::unix::fs::symlink("/var/lib/manifold/stacks", state_dir.join("stacks")).unwrap();
        let base = 20000 + u16::from(index) * 400 + (std::process::id() % 300) as u16;
        self.agents.push(Agent {
            id: id.to_string(),
            state_dir,
            index,
            ports: (base, base + 99),
            metrics_port: free_port(),
            options,
            child: None,
        });
        self.agents.len() - 1
    }

    pub fn start_agent(&mut self, i: usize, slots: u32) {
        let api = self.api();
        let a = &mut self.agents[i];
        let api = a.options.scheduler.clone().unwrap_or(api);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(a.state_dir.join("agent.log"))
            .unwrap();
        let child = Command::new(bins().join("manifold-agent"))
            .arg("--scheduler")
            .arg(&api)
            .args(a.args(slots))
            .env("MANIFOLD_AGENT_TOKEN", AGENT_TOKEN)
            .env("MANIFOLD_LOG", "info,manifold_agent=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        a.child = Some(child);
    }

    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut c) = self.agents[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs the `manifold` CLI against this cluster.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bins().join("manifold"))
            .envs(self.ca.as_ref().map(|ca| ("MANIFOLD_CA", ca)))
            .args(args)
            .env("MANIFOLD_API", self.api())
            .env("MANIFOLD_API_TOKEN", API_TOKEN)
            .env("USER", "e2e")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Starts the CLI with piped stdio, not waited for.
    pub fn spawn_cli(&self, args: &[&str]) -> Child {
        Command::new(bins().join("manifold"))
            .envs(self.ca.as_ref().map(|ca| ("MANIFOLD_CA", ca)))
            .args(args)
            .env("MANIFOLD_API", self.api())
            .env("MANIFOLD_API_TOKEN", API_TOKEN)
            .env("USER", "e2e")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Runs the CLI with `input` on its stdin (a pipe).
    pub fn cli_with_input(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = self.spawn_cli(args);
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs the CLI and returns stdout, failing the test with its stderr if it failed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "manifold {} failed: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `manifold … --json`, parsed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// Waits until `n` hosts have registered and are ready.
    pub fn wait_hosts(&self, n: usize) {
        wait_for(
            &format!("{n} hosts to be ready"),
            Duration::from_secs(60),
            || {
                let hosts = self.json(&["hosts"]);
                let hosts = hosts.as_array().unwrap();
                (hosts.len() == n && hosts.iter().all(|h| h["state"] == "ready")).then_some(())
            },
        );
    }

    pub fn dynos(&self, app: &str) -> Vec<Value> {
        self.json(&["ps", "-a", app]).as_array().unwrap().clone()
    }

    /// Waits until the app's dynos are exactly `names`, all in `state`; returns them.
    pub fn wait_dynos(
        &self,
        app: &str,
        names: &[&str],
        state: &str,
        timeout: Duration,
    ) -> Vec<Value> {
        let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        want.sort();
        wait_for(&format!("{app} dynos {want:?} {state}"), timeout, || {
            let dynos = self.dynos(app);
            let mut got: Vec<String> = dynos
                .iter()
                .map(|d| d["name"].as_str().unwrap().to_string())
                .collect();
            got.sort();
            let all = dynos.iter().all(|d| d["state"] == state);
            (got == want && all).then_some(dynos)
        })
    }

    /// `curl` a path on a published port of this machine.
    pub fn http(port: u64, path: &str) -> Option<String> {
        let out = Command::new("curl")
            .args(["-fsS", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A request through the router to `app` (Host `APP.localhost`): (status, body).
    pub fn route(&self, app: &str, path: &str, extra: &[&str]) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "60", "-o", "-", "-w", "\n%{http_code}"])
            .args(["-H", &format!("Host: {app}.localhost")])
            .args(extra)
            .arg(format!("http://127.0.0.1:{}{path}", self.router_port))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// The app's log (`manifold logs -n 1500` plus `extra` flags).
    pub fn logs(&self, app: &str, extra: &[&str]) -> String {
        let mut args = vec!["logs", "-a", app, "-n", "1500"];
        args.extend_from_slice(extra);
        self.ok(&args)
    }

    /// A raw API call with curl: (status, body).
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String) {
        let mut cmd = self.curl();
        cmd.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method]);
        if let Some(t) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        let out = cmd.arg(format!("{}{path}", self.api())).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.trim().parse().unwrap(), body.to_string())
    }

    /// Removes whatever the agents' dynos left: processes in their cgroups, shims, dyno
    /// files, bridges and nft tables.
    fn sweep(&mut self) {
        for i in 0..self.agents.len() {
            self.kill_agent(i);
        }
        self.kill_scheduler();
        for a in &self.agents {
            // An all-in-one agent outlives its SIGKILLed scheduler.
            kill_agents_of(&a.state_dir);
            for (_, pid) in a.shims() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            kill_cgroup(&a.cgroup_parent());
            let _ = Command::new(bins().join("manifold-agent"))
                .arg("--state-dir")
                .arg(&a.state_dir)
                .args(["--cgroup-parent", &a.cgroup_parent()])
                .args(["--bridge", &a.bridge()])
                .args(["--subnet", &a.subnet()])
                .args(["--nft-table", &a.bridge()])
                .arg("gc")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = Command::new("ip")
                .args(["link", "del", &a.bridge()])
                .status();
            let _ = Command::new("nft")
                .args(["delete", "table", "ip", &a.bridge()])
                .stderr(Stdio::null())
                .status();
            remove_cgroup(&a.cgroup_parent());
        }
    }
}

/// SIGKILLs every `manifold-agent` daemon whose state directory is `state_dir`.
fn kill_agents_of(state_dir: &Path) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let agent = argv.first().is_some_and(|a| a.ends_with(b"manifold-agent"));
        let ours = argv.iter().any(|a| {
            a.strip_prefix(b"--state-dir=".as_slice()).unwrap_or(a)
                == state_dir.as_os_str().as_encoded_bytes()
        });
        if agent && ours {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// SIGKILLs every process under a cgroup parent, in every hierarchy.
fn kill_cgroup(parent: &str) {
    for root in cgroup_roots() {
        let dir = root.join(parent);
        if !dir.exists() {
            continue;
        }
        let out = Command::new("find")
            .arg(&dir)
            .args(["-name", "cgroup.procs"])
            .output()
            .unwrap();
        for procs in String::from_utf8_lossy(&out.stdout).lines() {
            if let Ok(pids) = std::fs::read_to_string(procs) {
                for pid in pids.lines().filter_map(|p| p.parse().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}

fn cgroup_roots() -> Vec<PathBuf> {
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        roots.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    roots
}

/// Removes the cgroup parent's directories, deepest first.
fn remove_cgroup(parent: &str) {
    for root in cgroup_roots() {
        let dir = root.join(parent);
        if dir.exists() {
            let _ = Command::new("find")
                .arg(&dir)
                .args(["-depth", "-type", "d", "-exec", "rmdir", "{}", ";"])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Child cgroups left under a cgroup parent, in any hierarchy.
pub fn cgroup_children(parent: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for root in cgroup_roots() {
        if let Ok(entries) = std::fs::read_dir(root.join(parent)) {
            out.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
    }
    out
}

fn tail(path: &Path, title: &str) {
    if let Ok(text) = std::fs::read_to_string(path) {
        eprintln!("---- {title} (last 80 lines)");
        let lines: Vec<&str> = text.lines().collect();
        for l in &lines[lines.len().saturating_sub(80)..] {
            eprintln!("{l}");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tail(&self.dir.path().join("scheduler.log"), "scheduler log");
            for a in &self.agents {
                tail(
                    &a.state_dir.join("agent.log"),
                    &format!("agent {} log", a.id),
                );
            }
        }
        self.sweep();
    }
}
