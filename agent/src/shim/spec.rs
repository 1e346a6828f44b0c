//! The OCI runtime spec of a dyno: what libcontainer is asked to build.
//!
//! The spec is written as JSON and then parsed into `oci_spec`'s typed [`Spec`], so a typo in
//! a field name is a test failure, not a silently ignored setting. Everything a dyno is
//! allowed to do is decided here: namespaces, the unprivileged user, no capabilities,
//! `no_new_privileges`, the seccomp allow-list ([`crate::host::seccomp`]), masked kernel paths and the size's limits.

use std::path::Path;

use libcontainer::oci_spec::runtime::{get_default_maskedpaths, get_default_readonly_paths, Spec};
use serde_json::{json, Value};

use crate::dyno::{DynoConfig, DynoDir};
use crate::host::netpolicy;
use crate::host::seccomp;

/// Errors building a spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("dyno spec is not a valid OCI runtime spec")]
    Invalid(#[source] serde_json::Error),
    #[error("cannot write the dyno's OCI bundle at {path}")]
    Write {
        path: String,
        #[source]
        source: libcontainer::oci_spec::OciSpecError,
    },
}

/// RLIMIT_NOFILE inside a dyno, as on Heroku (`ulimit -n` is 10000).
const NOFILE: u64 = 10_000;

/// The script a dyno's shell runs: Heroku's start-up order (config vars are already in the
/// environment; `.profile.d/*.sh` then `.profile` are sourced; then the command).
///
/// The shell stays PID 1 of the dyno and runs the command in a foreground subshell. The kernel
/// drops default-action signals sent to a namespace's init, so an app that were PID 1 (as a
/// Procfile's `exec server` would make it) could never be stopped by SIGTERM, only killed
/// after the grace period. In the subshell an `exec` replaces the subshell, not PID 1, and the
/// app dies of SIGTERM like any process. `trap : TERM` lets the shell itself wait for its
/// child (which got the same SIGTERM: a stop signals every process in the dyno) and exit with
/// its status; the subshell resets the trap to the default, as POSIX shells do.
pub fn start_script(command: &str) -> String {
    format!(
        "trap : TERM\n\
         cd /app || exit 1\n\
         for f in /app/.profile.d/*.sh; do [ -r \"$f\" ] && . \"$f\"; done\n\
         [ -r /app/.profile ] && . /app/.profile\n\
         (\n{command}\n)"
    )
}

/// The shell a stack offers: bash where it exists, else POSIX sh.
pub fn shell_for(stack_dir: &Path) -> &'static str {
    let has_bash = ["bin/bash", "usr/bin/bash"]
        .iter()
        .any(|p| stack_dir.join(p).symlink_metadata().is_ok());
    if has_bash {
        "/bin/bash"
    } else {
        "/bin/sh"
    }
}

/// Builds the dyno's runtime spec.
pub fn build(config: &DynoConfig, dir: &DynoDir, shell: &str) -> Result<Spec, SpecError> {
    let limits = config.size.limits();
    let env: Vec<String> = config
        .environment()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let cgroups_path = config
        .host
        .cgroup_driver
        .spec_path(&config.host.cgroup_parent, &config.id);

    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
        mount(
            "/tmp",
            "tmpfs",
            "tmpfs",
            &["nosuid", "nodev", "mode=1777", "size=262144k"],
        ),
    ];
    if let Some(resolv_conf) = netpolicy::dyno_resolv_conf(
        Path::new(netpolicy::HOST_RESOLV_CONF),
        Path::new(netpolicy::RESOLVED_UPSTREAM_CONF),
    ) {
        mounts.push(json!({
            "destination": "/etc/resolv.conf",
            "type": "bind",
            "source": resolv_conf,
            "options": ["rbind", "ro", "nosuid", "nodev", "noexec"],
        }));
    }

    for m in &config.mounts {
        // `rbind` brings the source's submounts along, and a plain `ro` makes only the top
        // mount read-only: `rro` (mount_setattr with AT_RECURSIVE) makes every one of them
        // read-only too, so a submount on the host cannot become a writable hole.
        let options: &[&str] = if m.readonly {
            &["rbind", "ro", "rro", "nosuid", "nodev"]
        } else {
            &["rbind", "rw", "nosuid", "nodev"]
        };
        mounts.push(json!({
            "destination": m.destination,
            "type": "bind",
            "source": m.source,
            "options": options,
        }));
    }

    let no_caps: Vec<String> = Vec::new();
    let spec = json!({
        "ociVersion": "1.0.2",
        "root": { "path": dir.rootfs(), "readonly": false },
        "hostname": config.id,
        "process": {
            "terminal": config.attach.is_some_and(|a| a.tty),
            "user": { "uid": config.uid, "gid": config.gid, "additionalGids": [config.gid] },
            "args": [shell, "-c", start_script(&config.command)],
            "env": env,
            "cwd": "/app",
            "capabilities": {
                "bounding": no_caps, "effective": no_caps, "inheritable": no_caps,
                "permitted": no_caps, "ambient": no_caps,
            },
            "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": NOFILE, "soft": NOFILE }],
            "noNewPrivileges": true,
            // The agent runs shielded from the OOM killer (its unit sets -900) and its
            // children inherit that: without this a dyno would be the last thing the host's
            // OOM killer picks, and a dyno's memory is what it should pick first.
            "oomScoreAdj": 0,
        },
        "mounts": mounts,
        "linux": {
            "namespaces": [
                { "type": "pid" }, { "type": "mount" }, { "type": "uts" },
                { "type": "ipc" }, { "type": "network" }, { "type": "cgroup" },
            ],
            "cgroupsPath": cgroups_path,
            "resources": {
                "devices": [{ "allow": false, "access": "rwm" }],
                "memory": {
                    "limit": limits.memory_limit,
                    "reservation": limits.memory_quota,
                    "swap": limits.memory_limit,
                },
                "cpu": { "shares": limits.cpu_shares },
                "pids": { "limit": limits.pids },
            },
            "maskedPaths": get_default_maskedpaths(),
            "readonlyPaths": get_default_readonly_paths(),
            "seccomp": seccomp::profile(),
        },
    });
    let mut spec = spec;
    if let Some(ns) = config.host.userns {
        let map = json!([{ "containerID": 0, "hostID": ns.host_base, "size": ns.size }]);
        spec["linux"]["namespaces"]
            .as_array_mut()
            .into_iter()
            .for_each(|a| a.push(json!({ "type": "user" })));
        spec["linux"]["uidMappings"] = map.clone();
        spec["linux"]["gidMappings"] = map;
    }
    serde_json::from_value(spec).map_err(SpecError::Invalid)
}

/// Writes `config.json` into the dyno's bundle directory, readable by root only: it holds
/// the dyno's environment, config vars included.
pub fn write(spec: &Spec, dir: &DynoDir) -> Result<(), SpecError> {
    let path = dir.bundle().join("config.json");
    let json = serde_json::to_vec(spec).map_err(|e| SpecError::Write {
        path: path.display().to_string(),
        source: libcontainer::oci_spec::OciSpecError::Other(e.to_string()),
    })?;
    crate::dyno::write_private(&path, &json).map_err(|source| SpecError::Write {
        path: path.display().to_string(),
        source: libcontainer::oci_spec::OciSpecError::Io(source),
    })
}

fn mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> Value {
    json!({ "destination": destination, "type": typ, "source": source, "options": options })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::dyno::{HostConfig, DYNO_GID, DYNO_UID};
    use crate::size::DynoSize;

    fn config() -> DynoConfig {
        DynoConfig {
            id: "web-1-abc".into(),
            name: "web.1".into(),
            stack: "testing".into(),
            slug: None,
            size: DynoSize::Standard2X,
            env: BTreeMap::from([("GREETING".to_string(), "hi".to_string())]),
            command: "echo $GREETING".into(),
            port: Some(5000),
            publish: None,
            grace: Duration::from_secs(30),
            boot_timeout: crate::dyno::DEFAULT_BOOT_TIMEOUT,
            mounts: vec!["/srv/sb:/.manifold/bin:ro".parse().expect("mount")],
            uid: DYNO_UID,
            gid: DYNO_GID,
            host: HostConfig::default(),
            attach: None,
            log_rate: None,
            access: Default::default(),
        }
    }

    #[test]
    fn spec_is_locked_down_and_limited() {
        let c = config();
        let dir = DynoDir::new(&c.host, &c.id);
        let spec = build(&c, &dir, "/bin/bash").expect("valid spec");
        let process = spec.process().as_ref().expect("process");
        assert_eq!(process.user().uid(), DYNO_UID);
        assert_eq!(process.no_new_privileges(), Some(true));
        let caps = process.capabilities().as_ref().expect("caps");
        assert!(caps.effective().as_ref().is_some_and(|c| c.is_empty()));
        assert!(caps.bounding().as_ref().is_some_and(|c| c.is_empty()));
        assert!(process
            .env()
            .as_ref()
            .expect("env")
            .contains(&"PORT=5000".to_string()));
        assert_eq!(process.cwd(), Path::new("/app"));

        let linux = spec.linux().as_ref().expect("linux");
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/manifold/web-1-abc"))
        );
        let ns: Vec<String> = linux
            .namespaces()
            .as_ref()
            .expect("namespaces")
            .iter()
            .map(|n| n.typ().to_string())
            .collect();
        for want in ["pid", "mnt", "uts", "ipc", "net", "cgroup"] {
            assert!(ns.iter().any(|n| n == want), "{want} missing from {ns:?}");
        }
        assert_eq!(ns.iter().any(|n| n == "user"), c.host.userns.is_some());
        let res = linux.resources().as_ref().expect("resources");
        let mem = res.memory().as_ref().expect("memory");
        assert_eq!(mem.limit(), Some(2048 * 1024 * 1024));
        assert_eq!(mem.reservation(), Some(1024 * 1024 * 1024));
        assert_eq!(res.pids().as_ref().map(|p| p.limit()), Some(512));
        let seccomp = linux.seccomp().as_ref().expect("seccomp");
        assert_eq!(
            seccomp.default_action(),
            libcontainer::oci_spec::runtime::LinuxSeccompAction::ScmpActErrno
        );
        assert_eq!(process.oom_score_adj(), Some(0));
        assert!(linux
            .masked_paths()
            .as_ref()
            .is_some_and(|m| m.iter().any(|p| p == "/proc/kcore")));
        let bind = spec
            .mounts()
            .as_ref()
            .and_then(|m| {
                m.iter()
                    .find(|m| m.destination() == Path::new("/.manifold/bin"))
            })
            .expect("bind mount in spec");
        assert!(bind
            .options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o == "ro")));
    }

    #[test]
    fn user_namespace_maps_the_host_range() {
        let mut c = config();
        c.host.userns = Some(crate::dyno::UserNamespace {
            host_base: 200_000,
            size: 65_536,
        });
        assert_eq!(c.host_ids(), (201_000, 201_000));
        let dir = DynoDir::new(&c.host, &c.id);
        let spec = build(&c, &dir, "/bin/bash").expect("valid spec");
        let linux = spec.linux().as_ref().expect("linux");
        let uid = &linux.uid_mappings().as_ref().expect("uid map")[0];
        assert_eq!(
            (uid.container_id(), uid.host_id(), uid.size()),
            (0, 200_000, 65_536)
        );
        assert!(linux.gid_mappings().is_some());

        c.host.userns = None;
        assert_eq!(c.host_ids(), (DYNO_UID, DYNO_GID));
    }

    #[test]
    fn a_terminal_is_asked_for_only_by_an_attached_client_with_one() {
        let mut c = config();
        let dir = DynoDir::new(&c.host, &c.id);
        let terminal = |c: &DynoConfig| {
            let spec = build(c, &dir, "/bin/sh").expect("valid spec");
            spec.process().as_ref().and_then(|p| p.terminal())
        };
        assert_eq!(terminal(&c), Some(false));
        let pipes = crate::dyno::AttachSpec {
            tty: false,
            cols: 80,
            rows: 24,
        };
        c.attach = Some(pipes);
        assert_eq!(terminal(&c), Some(false));
        c.attach = Some(crate::dyno::AttachSpec { tty: true, ..pipes });
        assert_eq!(terminal(&c), Some(true));
    }

    #[test]
    fn start_script_sources_profile_then_runs_command() {
        let s = start_script("python3 app.py");
        let profile_d = s.find(".profile.d").expect("profile.d");
        let profile = s.find("/app/.profile ]").expect("profile");
        let cmd = s.find("python3 app.py").expect("command");
        assert!(s.starts_with("trap : TERM"));
        assert!(profile_d < profile && profile < cmd);
        assert!(
            s.ends_with("(\npython3 app.py\n)"),
            "the command runs in a subshell: {s}"
        );
    }
}
