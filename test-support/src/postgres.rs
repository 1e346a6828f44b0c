//! A throwaway PostgreSQL server for one test: Debian's server binaries run as the
//! `postgres` user on a fresh data directory and a free port, removed when the test ends.
//!
//! Nothing is assumed running: the stores, the blob store and the failover suite each start
//! their own, so a test never sees another's rows and a killed or restarted server (the
//! failover suite does both) harms no other test.

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, User};

use crate::{free_port, require};

/// How long a starting server may take to accept connections.
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// A running PostgreSQL server with one database, `manifold`, owned by the superuser
/// `manifold` (trust authentication on 127.0.0.1 only).
pub struct Postgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    user: User,
    server: Option<Child>,
}

/// The newest installed server's binaries (`/usr/lib/postgresql/N/bin`).
fn server_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

impl Postgres {
    /// Starts a server for `test`, or `None` when this machine cannot (not root, or no
    /// PostgreSQL installed: `scripts/setup` installs it); CI must be able to.
    pub fn start(test: &str) -> Option<Postgres> {
        let bin = server_bin();
        let user = User::from_name("postgres").ok().flatten();
        if !require(
            test,
            &[
                (
                    crate::is_root(),
                    "it needs root (to run PostgreSQL as its own user)",
                ),
                (
                    bin.is_some() && user.is_some(),
                    "PostgreSQL is not installed (scripts/setup installs it)",
                ),
            ],
        ) {
            return None;
        }
        let (bin, user) = (bin?, user?);
        let dir = std::env::temp_dir().join(format!("manifold-pg-{:016x}", rand::random::<u64>()));
        std::fs::create_dir(&dir).expect("create the PostgreSQL directory");
        nix::unistd::chown(&dir, Some(user.uid), Some(user.gid)).expect("chown");
        let mut postgres = Postgres {
            bin,
            dir,
            port: free_port(),
            user,
            server: None,
        };
        let data = postgres.data();
        postgres.run(
            "initdb",
            &[
                "--auth=trust".as_ref(),
                "--username=manifold".as_ref(),
                "--no-sync".as_ref(),
                "--encoding=UTF8".as_ref(),
                "--locale=C".as_ref(),
                "-D".as_ref(),
                data.as_os_str(),
            ],
        );
        postgres.resume();
        postgres.run(
            "createdb",
            &[
                "--host=127.0.0.1".as_ref(),
                "--username=manifold".as_ref(),
                "manifold".as_ref(),
            ],
        );
        Some(postgres)
    }

    /// The data directory (initdb creates it; its parent is ours to remove).
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Runs one of the server's tools as `postgres`, to completion.
    fn run(&self, tool: &str, args: &[&OsStr]) {
        let status = Command::new(self.bin.join(tool))
            .args(args)
            .env("PGPORT", self.port.to_string())
            .current_dir(&self.dir)
            .uid(self.user.uid.as_raw())
            .gid(self.user.gid.as_raw())
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("run {tool}: {e}"));
        assert!(status.success(), "{tool} failed: {status}");
    }

    /// The URL the store and the blob store take (`--database`).
    pub fn url(&self) -> String {
        format!("postgres://manifold@127.0.0.1:{}/manifold", self.port)
    }

    /// Starts the server on the same directory and port (after [`Postgres::stop`]) and
    /// waits until it accepts connections.
    pub fn resume(&mut self) {
        assert!(self.server.is_none(), "the server is running");
        let server = Command::new(self.bin.join("postgres"))
            .arg("-D")
            .arg(self.data())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", &format!("port={}", self.port)])
            .args([
                "-c",
                &format!("unix_socket_directories={}", self.dir.display()),
            ])
            .args(["-c", "max_connections=200"])
            .current_dir(&self.dir)
            .uid(self.user.uid.as_raw())
            .gid(self.user.gid.as_raw())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.dir.join("server.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .expect("start postgres");
        self.server = Some(server);
        let started = Instant::now();
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["--host=127.0.0.1", "--quiet"])
                .arg(format!("--port={}", self.port))
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return;
            }
            assert!(
                started.elapsed() < READY_DEADLINE,
                "PostgreSQL did not start within {READY_DEADLINE:?}: see {}",
                self.dir.join("server.log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server the fast way (SIGINT: open sessions are ended, committed data
    /// kept), as an operator's restart does; [`Postgres::resume`] starts it again.
    pub fn stop(&mut self) {
        self.signal_and_wait(Signal::SIGINT);
    }

    fn signal_and_wait(&mut self, signal: Signal) {
        if let Some(mut server) = self.server.take() {
            let pid = Pid::from_raw(i32::try_from(server.id()).expect("pid"));
            let _ = kill(pid, signal);
            let _ = server.wait();
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGQUIT: immediate shutdown, children included; nothing here is worth keeping.
        self.signal_and_wait(Signal::SIGQUIT);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_starts_stops_resumes_and_leaves_nothing() {
        let Some(mut postgres) =
            Postgres::start("a_server_starts_stops_resumes_and_leaves_nothing")
        else {
            return;
        };
        let dir = postgres.dir.clone();
        let port = postgres.port;
        let connects = || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        assert!(connects());
        assert!(postgres.url().ends_with(&format!(":{port}/manifold")));
        postgres.stop();
        assert!(!connects());
        postgres.resume();
        assert!(connects());
        drop(postgres);
        assert!(!connects());
        assert!(!dir.exists());
    }
}
