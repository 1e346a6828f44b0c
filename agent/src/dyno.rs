//! A dyno as the runtime sees it: what to run ([`DynoConfig`]), where its files live
//! ([`DynoDir`]), and what its shim reports ([`Record`]).
//!
//! The shim and whoever supervises it (the `run` command now, the agent daemon later) talk
//! only through the dyno directory: the runner writes `dyno.json` and starts the shim; the
//! shim appends [`Record`]s to `stream.jsonl`. Because both sides are files, a runner that
//! restarts can pick up a running dyno where it left off: nothing lives only in its memory.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::host::netpolicy::Access;
use crate::host::network::NetworkConfig;
use crate::logs::LogRate;
use crate::size::DynoSize;

/// Host-wide locations and settings every dyno on this host shares.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostConfig {
    /// Persistent state: `stacks/`, `slugs/`, `dynos/`, `net/`.
    pub state_dir: PathBuf,
    /// Volatile state (tmpfs): libcontainer's container state.
    pub run_dir: PathBuf,
    /// Parent cgroup under which every dyno gets `<cgroup_parent>/<dyno id>` (cgroupfs), or
    /// the slice `<cgroup_parent>.slice` its scope is in (systemd).
    pub cgroup_parent: String,
    /// Who makes dynos' cgroups (`cgroup::Driver`).
    #[serde(default)]
    pub cgroup_driver: crate::host::cgroup::Driver,
    pub network: NetworkConfig,
    /// The user namespace a dyno runs in, where the host allows one. In the host's own
    /// settings, the first of its id ranges (shared by dynos of no app); in a dyno's
    /// `dyno.json`, its app's range (`ids`).
    #[serde(default)]
    pub userns: Option<UserNamespace>,
    /// How many id ranges, from `userns` on, the host gives its apps (`ids`).
    #[serde(default = "default_id_ranges")]
    pub id_ranges: u32,
}

fn default_id_ranges() -> u32 {
    crate::host::ids::DEFAULT_RANGES
}

/// A dyno's user namespace: uids and gids `0..size` inside are `host_base..host_base+size`
/// outside. Root in a dyno is then nobody on the host, and the dyno user (uid 1000) is host
/// uid `host_base + 1000`, which owns the dyno's `/app`. Each app has a range of its own on a
/// host (`ids`); the dynos of one app share it, as they share the app's slug layer (a range
/// per dyno would need a layer per dyno, or idmapped mounts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNamespace {
    pub host_base: u32,
    pub size: u32,
}

impl UserNamespace {
    /// Manifold's default range: 100000..165536, the first range `useradd` hands out on
    /// Debian's `/etc/subuid`, used when the kernel allows user namespaces.
    pub fn host_default() -> Option<UserNamespace> {
        let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces").ok()?;
        (max.trim().parse::<u64>().ok()? > 0).then_some(UserNamespace {
            host_base: 100_000,
            size: 65_536,
        })
    }
}

impl HostConfig {
    /// The layout under one state directory (tests use a temporary one).
    pub fn with_state_dir(state_dir: impl Into<PathBuf>) -> Self {
        let state_dir = state_dir.into();
        HostConfig {
            network: NetworkConfig {
                state_dir: state_dir.join("net"),
                ..NetworkConfig::default()
            },
            state_dir,
            run_dir: PathBuf::from("/run/manifold"),
            cgroup_parent: "manifold".to_string(),
            cgroup_driver: crate::host::cgroup::Driver::detect(
                Path::new(crate::host::cgroup::ROOT),
                Path::new("/run/systemd"),
            ),
            userns: UserNamespace::host_default(),
            id_ranges: default_id_ranges(),
        }
    }

    /// The host ids that a dyno's `uid` and `gid` are, through the host's user namespace.
    pub fn host_ids(&self, uid: u32, gid: u32) -> (u32, u32) {
        match self.userns {
            Some(ns) => (ns.host_base + uid, ns.host_base + gid),
            None => (uid, gid),
        }
    }

    /// Refuses a state directory the dynos' user namespace cannot reach: its root is an
    /// unprivileged host uid, which must be able to traverse every directory above the
    /// dyno's files (a `mktemp -d` directory, mode 0700, is the usual culprit).
    pub fn check_state_dir(&self) -> Result<(), String> {
        if self.userns.is_none() {
            return Ok(());
        }
        let mut dir = Some(self.state_dir.as_path());
        while let Some(d) = dir {
            if let Ok(meta) = fs::metadata(d) {
                if meta.permissions().mode() & 0o001 == 0 {
                    return Err(format!(
                        "the state directory {} is not reachable by dynos: {} (mode {:o}) is not searchable by other users, and dynos run in a user namespace; run `chmod o+x {}` or choose another --state-dir",
                        self.state_dir.display(),
                        d.display(),
                        meta.permissions().mode() & 0o7777,
                        d.display()
                    ));
                }
            }
            dir = d.parent();
        }
        Ok(())
    }

    pub fn stacks_dir(&self) -> PathBuf {
        self.state_dir.join("stacks")
    }

    pub fn slugs_dir(&self) -> PathBuf {
        self.state_dir.join("slugs")
    }

    /// Slug layers unpacked for one owner: layers are chowned to the dyno user's host ids,
    /// so a host whose user namespace setting changes must not reuse the other owner's.
    pub fn slug_layers_dir(&self, (uid, gid): (u32, u32)) -> PathBuf {
        self.slugs_dir().join(format!("{uid}-{gid}"))
    }

    /// Slug archives fetched from the scheduler (`<sha256>.tgz`).
    pub fn slug_archives_dir(&self) -> PathBuf {
        self.state_dir.join("blobs")
    }

    pub fn dynos_dir(&self) -> PathBuf {
        self.state_dir.join("dynos")
    }

    /// Compiled seccomp filters, one per profile (`seccomp::Filter::cached`).
    pub fn seccomp_dir(&self) -> PathBuf {
        self.state_dir.join("seccomp")
    }

    /// The dyno's cgroup below a hierarchy's root (`cgroup::Driver::cgroup_path`).
    pub fn dyno_cgroup(&self, id: &str) -> String {
        self.cgroup_driver.cgroup_path(&self.cgroup_parent, id)
    }

    /// Add-on services' persistent volumes, one directory per service id.
    pub fn volumes_dir(&self) -> PathBuf {
        self.state_dir.join("volumes")
    }

    /// Which app has which id range (`ids`).
    pub fn ids_dir(&self) -> PathBuf {
        self.state_dir.join("ids")
    }

    /// An app's build cache (`CACHE_DIR`), kept between its builds. The name is the app's,
    /// with anything but letters, digits and dashes made `_`.
    pub fn build_cache_dir(&self, app: &str) -> PathBuf {
        let name: String = app
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.state_dir.join("cache").join(name)
    }

    /// Warm shims' sockets (`runner::warm`): a shim exec'd ahead, waiting for its next dyno.
    pub fn warm_shims_dir(&self) -> PathBuf {
        self.state_dir.join("shims")
    }

    /// libcontainer's state root.
    pub fn containers_dir(&self) -> PathBuf {
        self.run_dir.join("containers")
    }
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig::with_state_dir("/var/lib/manifold")
    }
}

/// A slug to run: the archive and, when known, its checksum.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlugSource {
    pub path: PathBuf,
    pub sha256: Option<String>,
}

/// Everything the shim needs to run one dyno.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DynoConfig {
    /// Unique on the host: container id, hostname, directory name.
    pub id: String,
    /// The dyno's name as users see it: `web.1`, `run.4821`.
    pub name: String,
    /// Stack name, looked up under the host's stacks directory.
    pub stack: String,
    /// None runs the bare stack (an empty `/app`).
    pub slug: Option<SlugSource>,
    pub size: DynoSize,
    /// Config vars. `PORT`, `DYNO`, `HOME` and `PS1` are added by [`DynoConfig::environment`].
    pub env: BTreeMap<String, String>,
    /// The process type's command, run by `bash -c` after `.profile.d`.
    pub command: String,
    /// `$PORT` for web dynos.
    pub port: Option<u16>,
    /// Host port forwarded to `$PORT`.
    pub publish: Option<u16>,
    /// Time between SIGTERM and SIGKILL on stop.
    #[serde(with = "duration_ms")]
    pub grace: Duration,
    /// How long a web dyno has from launch to accept a connection on `$PORT` before it is
    /// killed and counted as crashed (Heroku's R10). Defaulted so that the `dyno.json` of a
    /// dyno started by an older agent still parses.
    #[serde(with = "duration_ms", default = "default_boot_timeout")]
    pub boot_timeout: Duration,
    /// Host directories bind-mounted into the dyno (a build dyno's slugbuilder and output).
    #[serde(default)]
    pub mounts: Vec<BindMount>,
    /// Unprivileged user and group the command runs as inside the dyno.
    pub uid: u32,
    pub gid: u32,
    pub host: HostConfig,
    /// Set for a one-off a client is attached to (`manifold run`): its input and output go
    /// through the shim's `attach.sock` instead of the log.
    #[serde(default)]
    pub attach: Option<AttachSpec>,
    /// How fast the dyno may log: its shim drops the lines beyond it where they arrive, and
    /// says how many (Heroku's L10). None logs every line (builds, whose output is their
    /// user's; a foreground `run` by default).
    #[serde(default)]
    pub log_rate: Option<LogRate>,
    /// The dyno's own network policy: the add-on endpoints it may reach, and who besides
    /// this host may reach its published port (an add-on service's peers).
    #[serde(default, skip_serializing_if = "Access::is_empty")]
    pub access: Access,
}

/// How a client is attached to a dyno: a terminal of this size, or pipes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachSpec {
    /// A pseudo-terminal (the client's stdin is a terminal) rather than pipes.
    pub tty: bool,
    /// The client's window size, set on the terminal before the command starts.
    pub cols: u16,
    pub rows: u16,
}

/// A host path made visible inside a dyno.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    pub source: PathBuf,
    /// Absolute path inside the dyno.
    pub destination: PathBuf,
    pub readonly: bool,
}

impl std::str::FromStr for BindMount {
    type Err = String;

    /// `SOURCE:DESTINATION[:ro|:rw]`, as `docker run -v` spells it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        let (source, destination, mode) = match parts.as_slice() {
            [src, dst] => (*src, *dst, "rw"),
            [src, dst, mode] => (*src, *dst, *mode),
            _ => {
                return Err(format!(
                    "invalid mount {s:?}: expected SOURCE:DESTINATION[:ro|:rw]"
                ))
            }
        };
        let readonly = match mode {
            "ro" => true,
            "rw" => false,
            other => {
                return Err(format!(
                    "invalid mount mode {other:?} in {s:?}: expected ro or rw"
                ))
            }
        };
        if !destination.starts_with('/') || destination.split('/').any(|c| c == "..") {
            return Err(format!(
                "invalid mount destination {destination:?}: must be absolute, without `..`"
            ));
        }
        if source.is_empty() {
            return Err(format!("invalid mount {s:?}: empty source"));
        }
        Ok(BindMount {
            source: PathBuf::from(source),
            destination: PathBuf::from(destination),
            readonly,
        })
    }
}

/// Heroku's boot timeout for web dynos (R10).
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(60);

fn default_boot_timeout() -> Duration {
    DEFAULT_BOOT_TIMEOUT
}

/// The user every stack defines for dynos (`dyno`, uid and gid 1000).
pub const DYNO_UID: u32 = 1000;
pub const DYNO_GID: u32 = 1000;

impl DynoConfig {
    /// The host uid and gid of the dyno's user: what owns its `/app` on the host.
    pub fn host_ids(&self) -> (u32, u32) {
        self.host.host_ids(self.uid, self.gid)
    }

    /// The environment the dyno's process sees, in a stable order.
    pub fn environment(&self) -> BTreeMap<String, String> {
        let mut env = self.env.clone();
        env.insert("DYNO".into(), self.name.clone());
        env.insert("HOME".into(), "/app".into());
        env.insert(
            "PS1".into(),
            r"\[\033[01;34m\]\w\[\033[00m\] \[\033[01;32m\]$ \[\033[00m\]".into(),
        );
        env.entry("PATH".into()).or_insert_with(|| {
            "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin".into()
        });
        match self.port {
            Some(port) => env.insert("PORT".into(), port.to_string()),
            None => env.remove("PORT"),
        };
        env
    }
}

/// `grace` and `boot_timeout` are stored in milliseconds so that `dyno.json` stays readable.
mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// One dyno's directory and the files in it.
#[derive(Debug, Clone)]
pub struct DynoDir {
    pub root: PathBuf,
}

impl DynoDir {
    pub fn new(host: &HostConfig, id: &str) -> Self {
        DynoDir {
            root: host.dynos_dir().join(id),
        }
    }

    pub fn config(&self) -> PathBuf {
        self.root.join("dyno.json")
    }

    pub fn stream(&self) -> PathBuf {
        self.root.join("stream.jsonl")
    }

    /// The previous stream segment, kept until the next rotation.
    pub fn stream_previous(&self) -> PathBuf {
        self.root.join("stream.jsonl.1")
    }

    pub fn shim_pid(&self) -> PathBuf {
        self.root.join("shim.pid")
    }

    /// The shim's start time and boot id, which tell its pid from a later process's.
    pub fn shim_start(&self) -> PathBuf {
        self.root.join("shim.start")
    }

    pub fn shim_log(&self) -> PathBuf {
        self.root.join("shim.log")
    }

    pub fn bundle(&self) -> PathBuf {
        self.root.join("bundle")
    }

    /// The overlay's merged directory, which is the container's root.
    pub fn rootfs(&self) -> PathBuf {
        self.bundle().join("rootfs")
    }

    /// Where the shim listens for the attached client (the agent's relay) of an attached dyno.
    pub fn attach_socket(&self) -> PathBuf {
        self.root.join("attach.sock")
    }

    /// Where the shim listens, while it builds the container, for the terminal the container's
    /// init creates (libcontainer's console socket).
    pub fn console_socket(&self) -> PathBuf {
        self.root.join("console.sock")
    }

    /// What the dyno writes: its overlay's upper and work directories, under the size's disk
    /// quota where the host allows it ([`crate::host::quota`]). Apart from the rest of the dyno's
    /// directory, so that a dyno that filled its quota still has its log and its exit
    /// recorded.
    pub fn disk(&self) -> PathBuf {
        self.root.join("disk")
    }

    pub fn upper(&self) -> PathBuf {
        self.disk().join("upper")
    }

    pub fn work(&self) -> PathBuf {
        self.disk().join("work")
    }

    pub fn write_config(&self, config: &DynoConfig) -> io::Result<()> {
        fs::create_dir_all(&self.root)?;
        // Searchable by others (a dyno's user namespace root, an unprivileged host uid,
        // must reach `bundle/rootfs`), but not listable; `dyno.json` itself, holding the
        // config vars, is the owner's alone (see `write_atomic`).
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o711))?;
        let json = serde_json::to_vec_pretty(config).map_err(io::Error::other)?;
        write_atomic(&self.config(), &json)
    }

    pub fn read_config(&self) -> io::Result<DynoConfig> {
        let bytes = fs::read(self.config())?;
        serde_json::from_slice(&bytes).map_err(io::Error::other)
    }
}

/// Writes via a temporary file and a rename so that a reader never sees half a file.
///
/// Not flushed to disk (no fsync): what is written with it (a dyno's `dyno.json`, its shim's
/// pid, its state) describes processes of this boot only, which a power loss ends too; after
/// a reboot the agent removes every dyno directory. Readable by its owner (root) only:
/// `dyno.json` holds config vars that other host users must not read. Files that must outlive a reboot (the
/// agent's state, blobs, slug layers, certificates) are flushed, and so is their directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    write_private(&tmp, bytes)?;
    fs::rename(tmp, path)
}

/// Like [`write_atomic`], for files that must outlive a reboot: the file and then its
/// directory are flushed, so that after a power loss it is there whole or not at all.
pub fn write_durable(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    write_private(&tmp, bytes)?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, path)?;
    match path.parent() {
        Some(dir) => fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Writes a file with mode 0600 from its creation (never world-readable, even for an
/// instant); an existing file is truncated and its mode set to 0600 too.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)
}

/// Which of the dyno's output streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Out,
    Err,
}

/// What the shim reports, one JSON object per line of `stream.jsonl`, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// A line the dyno printed.
    Line {
        ts: String,
        stream: Stream,
        text: String,
    },
    /// A step of the dyno's life, for the runner to turn into state and platform lines.
    Event { ts: String, event: ShimEvent },
}

/// The shim's view of the dyno's life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ShimEvent {
    /// The process is running (exec'd); `address` is the dyno's IP on the host bridge.
    Started { pid: i32, address: Ipv4Addr },
    /// A step before the process ran failed; nothing ran.
    Failed { step: String, error: String },
    /// A stop was asked for: SIGTERM sent to every process in the dyno.
    Stopping,
    /// The grace period ran out: SIGKILL sent to every process still there.
    Killing,
    /// A kill at once was asked for (SIGUSR1: the runner's boot timeout, R10): SIGKILL
    /// sent to every process in the dyno, with no SIGTERM and no grace period.
    Kill,
    /// The dyno's process ended.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
        /// The kernel's OOM killer acted in the dyno's cgroup.
        oom: bool,
    },
    /// Every resource of the dyno is gone; `errors` lists what could not be removed.
    Cleaned { errors: Vec<String> },
    /// The dyno uses more memory than its size's quota (but less than the limit where the
    /// kernel kills it): Heroku's R14. Repeated at most every 20 seconds while it lasts.
    MemoryQuotaExceeded { usage: u64, quota: u64 },
    /// The last record of a stream segment: the stream goes on in a new `stream.jsonl`,
    /// which exists by the time this record is written (so a reader can open it at once).
    Continued,
    /// The first record of a new stream segment: the shim rotated `stream.jsonl` to
    /// `stream.jsonl.1` after writing `records_before` records in all, so that a dyno that
    /// floods output uses bounded disk. A reader that has read fewer records lost the rest.
    Rotated { records_before: u64 },
    /// The dyno wrote faster than its log rate: the shim dropped `dropped` lines, the first
    /// of them at `since` (Heroku's L10). Written at most once a second while it lasts, and
    /// before `exited` for what was dropped last.
    LinesDropped { dropped: u64, since: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_as_one_json_line() {
        let r = Record::Event {
            ts: "t".into(),
            event: ShimEvent::Exited {
                code: None,
                signal: Some(9),
                oom: true,
            },
        };
        let s = serde_json::to_string(&r).expect("serialise");
        assert!(!s.contains('\n'));
        assert_eq!(serde_json::from_str::<Record>(&s).expect("parse"), r);
    }

    #[test]
    fn a_dyno_json_without_a_boot_timeout_gets_herokus() {
        let c = DynoConfig {
            id: "x".into(),
            name: "web.1".into(),
            stack: "testing".into(),
            slug: None,
            size: DynoSize::Standard1X,
            env: BTreeMap::new(),
            command: "true".into(),
            port: Some(5000),
            publish: None,
            grace: Duration::from_secs(30),
            boot_timeout: Duration::from_secs(2),
            mounts: vec![],
            uid: DYNO_UID,
            gid: DYNO_GID,
            host: HostConfig::default(),
            attach: None,
            log_rate: None,
            access: Default::default(),
        };
        let mut json = serde_json::to_value(&c).expect("serialise");
        assert_eq!(json["boot_timeout"], 2000);
        json.as_object_mut().expect("object").remove("boot_timeout");
        json.as_object_mut().expect("object").remove("attach");
        let old: DynoConfig = serde_json::from_value(json).expect("an old dyno.json parses");
        assert_eq!(old.boot_timeout, DEFAULT_BOOT_TIMEOUT);
        assert_eq!(old.attach, None);
    }

    #[test]
    fn a_state_dir_dynos_cannot_traverse_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let state = tmp.path().join("state");
        fs::create_dir_all(&state).expect("mkdir");
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o700)).expect("chmod");
        let mut host = HostConfig::with_state_dir(&state);
        host.userns = Some(UserNamespace {
            host_base: 100_000,
            size: 65_536,
        });
        let err = host
            .check_state_dir()
            .expect_err("0700 above the state dir");
        assert!(err.contains("chmod o+x"), "{err}");
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        host.check_state_dir().expect("traversable");
        host.userns = None;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o700)).expect("chmod");
        host.check_state_dir()
            .expect("no user namespace, no constraint");
    }

    #[test]
    fn bind_mounts_parse_like_docker_volumes() {
        let m: BindMount = "/srv/out:/out".parse().expect("parse");
        assert_eq!(m.destination, PathBuf::from("/out"));
        assert!(!m.readonly);
        assert!("/a:/b:ro".parse::<BindMount>().expect("parse").readonly);
        for bad in ["/a", "/a:b", "/a:/b:rx", ":/b", "/a:/../etc", "/a:/b:ro:x"] {
            assert!(bad.parse::<BindMount>().is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn environment_adds_platform_vars() {
        let mut env = BTreeMap::new();
        env.insert("GREETING".to_string(), "hi".to_string());
        env.insert("PORT".to_string(), "1".to_string());
        let c = DynoConfig {
            id: "x".into(),
            name: "worker.1".into(),
            stack: "testing".into(),
            slug: None,
            size: DynoSize::Standard1X,
            env,
            command: "true".into(),
            port: None,
            publish: None,
            grace: Duration::from_secs(30),
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
            mounts: vec![],
            uid: DYNO_UID,
            gid: DYNO_GID,
            host: HostConfig::default(),
            attach: None,
            log_rate: None,
            access: Default::default(),
        };
        let e = c.environment();
        assert_eq!(e["DYNO"], "worker.1");
        assert_eq!(e["HOME"], "/app");
        assert_eq!(e["GREETING"], "hi");
        assert!(!e.contains_key("PORT"), "PORT is for web dynos only");
        let web = DynoConfig {
            port: Some(5000),
            ..c
        };
        assert_eq!(web.environment()["PORT"], "5000");
    }
}
