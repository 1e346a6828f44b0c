//! The real `manifold-scheduler` under test: a release binary in a temporary state directory
//! (embedded SQLite), serving the API and AgentLink over TLS with a certificate from a
//! cluster CA made for the run, checking agents' certificates (`--cluster-ca`) and tokens.
//! Killed and its directory removed when dropped (so on errors, panics and Ctrl-C too); it
//! also dies with the simulator (`PR_SET_PDEATHSIG`).

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use manifold_scheduler::certs::{self, ClusterCa, Names};

/// The scheduler process and its files.
#[derive(Debug)]
pub struct Scheduler {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
    router_port: u16,
    pub api_token: String,
    pub agent_token: String,
    heartbeat_deadline: Duration,
    max_connections: usize,
    child: Option<Child>,
}

fn token() -> String {
    (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Scheduler {
    /// A state directory with the cluster CA and the scheduler's certificate; not started.
    pub fn prepare(
        bin: &Path,
        heartbeat_deadline: Duration,
        hosts: usize,
    ) -> anyhow::Result<Scheduler> {
        let dir = tempfile::Builder::new()
            .prefix("manifold-cluster-sim-")
            .tempdir()
            .context("making the scheduler's temporary directory")?;
        let tls = dir.path().join("tls");
        certs::create_ca(&tls, false, certs::CA_DAYS)?;
        let names = Names {
            dns: Vec::new(),
            ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        };
        certs::issue(&tls, "scheduler", &names, certs::HOST_DAYS)?;
        Ok(Scheduler {
            bin: bin.to_path_buf(),
            dir,
            port: free_port()?,
            router_port: free_port()?,
            api_token: token(),
            agent_token: token(),
            heartbeat_deadline,
            // Every host holds a connection, and the users' clients some more.
            max_connections: hosts + 1000,
            child: None,
        })
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn ca_pem(&self) -> anyhow::Result<String> {
        let path = self.dir.path().join("tls/ca.pem");
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// The cluster CA, to sign each simulated host's certificate as `certs issue` does.
    pub fn ca(&self) -> anyhow::Result<ClusterCa> {
        Ok(ClusterCa::load(&self.dir.path().join("tls"))?)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("scheduler.log")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the process (on the state left by a previous one, if any) and waits until it
    /// answers `/health`.
    pub async fn start(&mut self, client: &reqwest::Client) -> anyhow::Result<()> {
        let tls = self.dir.path().join("tls");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut command = Command::new(&self.bin);
        command
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .arg("--router-listen")
            .arg(format!("127.0.0.1:{}", self.router_port))
            .args(["--router-tls-listen", "none"])
            .arg("--heartbeat-deadline")
            .arg(humantime::format_duration(self.heartbeat_deadline).to_string())
            .arg("--api-max-connections")
            .arg(self.max_connections.to_string())
            .arg("--tls-cert")
            .arg(tls.join("scheduler.pem"))
            .arg("--tls-key")
            .arg(tls.join("scheduler-key.pem"))
            .arg("--cluster-ca")
            .arg(tls.join("ca.pem"))
            .env("MANIFOLD_API_TOKEN", &self.api_token)
            .env("MANIFOLD_AGENT_TOKEN", &self.agent_token)
            .env("MANIFOLD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        let started = Instant::now();
        let health = format!("{}/health", self.url());
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                anyhow::bail!(
                    "the scheduler exited ({status}) while starting; its log:\n{}",
                    self.log_tail()
                );
            }
            if let Ok(r) = client.get(&health).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if started.elapsed() > Duration::from_secs(60) {
                anyhow::bail!(
                    "the scheduler did not answer {health} within 60 s; its log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL, as a crash or an OOM kill would end it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last lines of the scheduler's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The scheduler's resident memory and CPU time, from `/proc/PID`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub rss_bytes: u64,
    pub cpu_secs: f64,
}

impl Usage {
    pub fn of(pid: u32) -> Option<Usage> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command's closing parenthesis; utime and stime are 14th and 15th.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(Usage {
            rss_bytes: rss_kib * 1024,
            // /proc counts in USER_HZ, 100 on every Linux architecture.
            cpu_secs: ticks as f64 / 100.0,
        })
    }
}
