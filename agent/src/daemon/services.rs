//! Add-on services: managed PostgreSQL and Redis the scheduler places on this host
//! (`Assignments.services`), each a long-lived unit with a persistent volume.
//!
//! A service runs as a dyno of the `services` stack through the same shim, runner and
//! [`Entry`] machine as any formation dyno (restarted with the crash backoff, its lines
//! shipped, re-adopted after a daemon restart), keyed in the daemon's entries as
//! `service/ID` ([`key`]) so that it never meets an assignment's id. What differs:
//!
//! - no slug: the stack's entrypoint (`/usr/local/lib/manifold/service-KIND`) is the command,
//!   the volume `STATE/volumes/ID/data` is bind-mounted read-write at `/data`;
//! - its own user-namespace id range (`ids`, named `service-ID`), so the volume's files are
//!   owned inside that range and no app's dyno user owns them;
//! - the host port: the one the scheduler names, else the one kept in
//!   `STATE/volumes/ID/service.json`, else a new one from the agent's range; kept reserved
//!   while the volume exists (a stopped service gets it back), reported in every status;
//! - up when its inner port (5432, 6379) accepts, as a web dyno's `$PORT`;
//! - absent from a set: stopped, volume kept (`STOPPED`); in `destroyed_services`: stopped,
//!   volume deleted, `DESTROYED` reported;
//! - its published port accepts, besides this host, its peers and the scheduler's addresses
//!   (`netpolicy::Access::reach`).

use std::net::Ipv4Addr;

use super::*;
use crate::dyno::BindMount;
use crate::host::netpolicy::Access;

/// The prefix of a service's key among the daemon's entries (and in its dyno directory's
/// `assignment` file). `/` is in no valid service id.
const KEY_PREFIX: &str = "service/";

/// Where a service's volume is mounted inside it.
const DATA_DIR: &str = "/data";

/// A service's first boot (initdb) may take a while on a slow disk; past this it is
/// killed and restarted like a web dyno past its boot timeout.
const SERVICE_BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// The entry key of service `id`.
pub(super) fn key(id: &str) -> String {
    format!("{KEY_PREFIX}{id}")
}

/// The service id of an entry key, if it is a service's.
pub(super) fn service_id(key: &str) -> Option<&str> {
    key.strip_prefix(KEY_PREFIX)
}

/// What a service runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ServiceKind {
    Postgresql,
    Redis,
}

impl FromStr for ServiceKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "postgresql" => Ok(ServiceKind::Postgresql),
            "redis" => Ok(ServiceKind::Redis),
            other => Err(format!(
                "unknown add-on kind {other:?}: expected postgresql or redis"
            )),
        }
    }
}

impl ServiceKind {
    /// The port the server listens on inside its network namespace.
    pub(super) fn inner_port(self) -> u16 {
        match self {
            ServiceKind::Postgresql => 5432,
            ServiceKind::Redis => 6379,
        }
    }

    /// The stack's entrypoint for this kind (`rootfs/stacks/services.sh`).
    fn entrypoint(self) -> &'static str {
        match self {
            ServiceKind::Postgresql => "/usr/local/lib/manifold/service-postgresql",
            ServiceKind::Redis => "/usr/local/lib/manifold/service-redis",
        }
    }

    /// The environment the entrypoint needs.
    fn required_env(self) -> &'static [&'static str] {
        match self {
            ServiceKind::Postgresql => &["ADDON_USER", "ADDON_PASSWORD", "ADDON_DATABASE"],
            ServiceKind::Redis => &["ADDON_PASSWORD"],
        }
    }
}

/// One service of the assignment set, as kept in `agent.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub stack: String,
    pub size: String,
    /// The port the scheduler names; 0: the agent's choice.
    pub port: u16,
    pub env: BTreeMap<String, String>,
    pub peers: Vec<String>,
}

impl From<proto::Service> for ServiceRecord {
    fn from(s: proto::Service) -> Self {
        ServiceRecord {
            id: s.id,
            name: s.name,
            kind: s.kind,
            stack: s.stack,
            size: s.size,
            // Out of range is as bad as taken: `check` refuses 0 only when it was asked for.
            port: u16::try_from(s.port).unwrap_or(0),
            env: s.env.into_iter().collect(),
            peers: s.peers,
        }
    }
}

/// A service id names a directory and an id range: letters, digits and `-`, at most 64, so
/// that it can never be a path outside `volumes/` (no `/`, no `..`, no `.`).
pub(super) fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid service id {id:?}: expected 1 to 64 letters, digits or '-'"
        ))
    }
}

/// What a service needs before it may start; a refusal is its `CRASHED` reason.
pub(super) fn check(record: &ServiceRecord) -> Result<(ServiceKind, DynoSize), String> {
    check_id(&record.id)?;
    let kind = ServiceKind::from_str(&record.kind)?;
    let size = DynoSize::from_str(&record.size).map_err(|e| e.to_string())?;
    for name in kind.required_env() {
        let value = record.env.get(*name).map(String::as_str).unwrap_or("");
        if value.is_empty() {
            return Err(format!("{name} is missing from the service's env"));
        }
        // The entrypoints pass them to psql and redis.conf unquoted: no blanks, quotes or
        // backslashes.
        if value.len() > 128
            || !value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.+/=~".contains(&b))
        {
            return Err(format!(
                "{name} must be 1 to 128 letters, digits or any of -_.+/=~"
            ));
        }
    }
    for peer in &record.peers {
        peer.parse::<Ipv4Addr>()
            .map_err(|_| format!("invalid peer {peer:?}: expected an IPv4 address"))?;
    }
    Ok((kind, size))
}

/// What is kept beside a service's data: its kind and port, for a restarted agent and a
/// service that comes back after being stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct VolumeRecord {
    pub(super) kind: String,
    pub(super) port: u16,
}

/// A service's volume on the host.
pub(super) struct Volume {
    pub(super) root: PathBuf,
}

impl Volume {
    /// `STATE/volumes/ID`, for an id that passes [`check_id`] only: no id names a path
    /// outside `volumes/`.
    pub(super) fn new(host: &HostConfig, id: &str) -> Result<Self, String> {
        check_id(id)?;
        Ok(Volume {
            root: host.volumes_dir().join(id),
        })
    }

    pub(super) fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    fn record_path(&self) -> PathBuf {
        self.root.join("service.json")
    }

    pub(super) fn record(&self) -> Option<VolumeRecord> {
        let bytes = std::fs::read(self.record_path()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Makes the volume (its data directory under the size's disk quota where the host
    /// allows it, owned by the service's user) and records the port.
    fn prepare(&self, record: &VolumeRecord, owner: (u32, u32), disk: u64) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let volumes = self.root.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(volumes)?;
        // Traversable, not listable: the service's root (a host uid) must reach `data`.
        std::fs::set_permissions(volumes, std::fs::Permissions::from_mode(0o711))?;
        std::fs::create_dir_all(&self.root)?;
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o711))?;
        let data = self.data();
        if let crate::host::quota::Made::Unlimited(why) =
            crate::host::quota::limited_dir(&data, disk)?
        {
            tracing::debug!("volume {} has no disk quota: {why}", data.display());
        }
        std::os::unix::fs::chown(&data, Some(owner.0), Some(owner.1))?;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
        let json = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        crate::dyno::write_durable(&self.record_path(), &json)
    }

    /// Deletes the volume; one already gone is fine.
    pub(super) fn delete(&self) -> std::io::Result<()> {
        match std::fs::remove_dir_all(&self.root) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Every volume on the host: (service id, its record).
pub(super) fn volumes(host: &HostConfig) -> Vec<(String, Option<VolumeRecord>)> {
    let Ok(entries) = std::fs::read_dir(host.volumes_dir()) else {
        return Vec::new();
    };
    let mut found: Vec<(String, Option<VolumeRecord>)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|id| check_id(id).is_ok())
        .map(|id| {
            let record = Volume::new(host, &id).ok().and_then(|v| v.record());
            (id, record)
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// The addresses the scheduler's URLs resolve to (IPv4): they may reach a service's port,
/// for backups (`pg_dump`).
async fn scheduler_addresses(scheduler: &Scheduler) -> Vec<Ipv4Addr> {
    let mut addresses = Vec::new();
    for url in scheduler.endpoints.urls() {
        let Ok(url) = reqwest::Url::parse(url) else {
            continue;
        };
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            continue;
        };
        let target = format!(
            "{}:{port}",
            host.trim_start_matches('[').trim_end_matches(']')
        );
        if let Ok(found) = tokio::net::lookup_host(target).await {
            for address in found {
                if let std::net::IpAddr::V4(v4) = address.ip() {
                    if !v4.is_loopback() && !addresses.contains(&v4) {
                        addresses.push(v4);
                    }
                }
            }
        }
    }
    addresses
}

/// Prepares the volume and starts the service's dyno, then follows it (reported as
/// messages like a dyno's).
pub(super) async fn launch_service(
    launcher: Launcher,
    record: ServiceRecord,
    run: String,
    port: u16,
) {
    let config = launcher.config.clone();
    let entry_key = key(&record.id);
    let failed = |reason: String| Message::LaunchFailed {
        id: entry_key.clone(),
        run: run.clone(),
        reason,
    };
    let (kind, size) = match check(&record) {
        Ok(checked) => checked,
        Err(reason) => {
            let _ = launcher.messages.send(failed(reason));
            return;
        }
    };
    let range = format!("{}{}", crate::host::ids::SERVICE_PREFIX, record.id);
    let host = match app_host(&config, &range).await {
        Ok(host) => host,
        Err(err) => {
            let _ = launcher.messages.send(failed(err));
            return;
        }
    };
    // `check` passed: the id is a valid one.
    let Ok(volume) = Volume::new(&config.host, &record.id) else {
        return;
    };
    let owner = host.host_ids(DYNO_UID, DYNO_GID);
    let kept = VolumeRecord {
        kind: record.kind.clone(),
        port,
    };
    let disk = size.limits().disk;
    let prepared = {
        let volume = Volume {
            root: volume.root.clone(),
        };
        tokio::task::spawn_blocking(move || volume.prepare(&kept, owner, disk)).await
    };
    match prepared {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            let why = format!("cannot prepare volume {}: {err}", volume.root.display());
            let _ = launcher.messages.send(failed(why));
            return;
        }
        Err(err) => {
            let _ = launcher.messages.send(failed(err.to_string()));
            return;
        }
    }
    let access = service_access(&record, &config.scheduler).await;
    let dyno = DynoConfig {
        id: run.clone(),
        name: record.name.clone(),
        stack: record.stack.clone(),
        slug: None,
        size,
        env: record.env.clone(),
        command: format!("exec {}", kind.entrypoint()),
        port: Some(kind.inner_port()),
        publish: Some(port),
        grace: GRACE,
        boot_timeout: SERVICE_BOOT_TIMEOUT,
        mounts: vec![BindMount {
            source: volume.data(),
            destination: PathBuf::from(DATA_DIR),
            readonly: false,
        }],
        uid: DYNO_UID,
        gid: DYNO_GID,
        host,
        attach: None,
        log_rate: Some(config.log_rate),
        access,
    };
    start_and_follow(launcher, entry_key, run, dyno).await;
}

/// Who may reach a service's port besides this host: its peers and the scheduler.
async fn service_access(record: &ServiceRecord, scheduler: &Scheduler) -> Access {
    let mut reach: Vec<Ipv4Addr> = record.peers.iter().filter_map(|p| p.parse().ok()).collect();
    for address in scheduler_addresses(scheduler).await {
        if !reach.contains(&address) {
            reach.push(address);
        }
    }
    Access {
        egress: Vec::new(),
        reach,
        shared: true,
    }
}

impl Core {
    /// The service record of entry key `key`, if it is an assigned service's. One that is
    /// also destroyed is not: deleting its data wins.
    pub(super) fn service(&self, key: &str) -> Option<&ServiceRecord> {
        let id = service_id(key)?;
        if self.state.destroyed_services.iter().any(|d| d == id) {
            return None;
        }
        self.state.services.iter().find(|s| s.id == id)
    }

    /// Reserves the ports of the volumes on the host at start-up: a stopped service gets
    /// its port back, never a dyno.
    pub(super) fn reserve_volume_ports(&mut self) {
        for (_, record) in volumes(&self.config.host) {
            if let Some(record) = record.filter(|r| r.port != 0) {
                self.ports.claim(record.port);
            }
        }
    }

    /// The host port service `key` starts with: the one it has, the scheduler's, the one
    /// kept with its volume, else a new one. A port another unit holds is refused.
    pub(super) fn service_port(&mut self, key: &str) -> Result<u16, String> {
        let Some(record) = self.service(key).cloned() else {
            return Err("not assigned".to_string());
        };
        check(&record)?;
        if let Some(port) = self.dynos.get(key).and_then(|e| e.port) {
            if record.port == 0 || record.port == port {
                return Ok(port);
            }
        }
        let kept = Volume::new(&self.config.host, &record.id)?
            .record()
            .map(|r| r.port)
            .filter(|p| *p != 0);
        let port = match (record.port, kept) {
            (0, None) => return self.ports.allocate().map_err(|e| e.to_string()),
            (0, Some(kept)) => kept,
            (asked, _) => asked,
        };
        // A port a volume reserved is this service's own (or another stopped service's:
        // then the scheduler named a port it does not have).
        let ours = kept == Some(port);
        let holder = self
            .dynos
            .iter()
            .find(|(other, e)| other.as_str() != key && e.port == Some(port))
            .map(|(other, _)| other.clone());
        let reserved_by_volume = volumes(&self.config.host)
            .into_iter()
            .any(|(id, r)| id != record.id && r.is_some_and(|r| r.port == port));
        if let Some(holder) = holder {
            return Err(format!("port {port} is taken on this host (by {holder})"));
        }
        if reserved_by_volume || (!ours && self.ports.is_used(port)) {
            return Err(format!("port {port} is taken on this host"));
        }
        self.ports.claim(port);
        Ok(port)
    }

    /// Gives the running services whose peers changed in the new set (`old` is the previous
    /// one) their new policy elements, without restarting them: a database is not bounced
    /// because an attached app's dynos came to another host.
    pub(super) fn refresh_access(&self, old: &[ServiceRecord]) {
        for record in &self.state.services {
            let before = old.iter().find(|o| o.id == record.id);
            if before.is_none_or(|o| o.peers == record.peers) {
                continue;
            }
            let Some(entry) = self
                .dynos
                .get(&key(&record.id))
                .filter(|e| e.stop.is_some())
            else {
                continue;
            };
            let (record, run) = (record.clone(), entry.run.clone());
            let (scheduler, network) = (
                self.config.scheduler.clone(),
                self.config.host.network.clone(),
            );
            tokio::spawn(async move {
                let access = service_access(&record, &scheduler).await;
                let update = move || crate::host::network::update_access(&network, &run, &access);
                match tokio::task::spawn_blocking(update).await {
                    Ok(Ok(())) => {
                        tracing::info!("service {}: peers now {:?}", record.id, record.peers)
                    }
                    Ok(Err(err)) => tracing::warn!("service {}: {}", record.id, chain(&err)),
                    Err(err) => tracing::warn!("service {}: {err}", record.id),
                }
            });
        }
    }

    /// Reports a service entry's state as a `ServiceStatus` (a dyno's `stopping` is not a
    /// service state: it says nothing until stopped).
    pub(super) fn report_service(&mut self, key: &str, status: &proto::DynoStatus) {
        let Some(id) = service_id(key) else {
            return;
        };
        let state = match status.state() {
            proto::DynoState::Starting => proto::ServiceState::ServiceStarting,
            proto::DynoState::Up => proto::ServiceState::ServiceUp,
            proto::DynoState::Crashed => proto::ServiceState::ServiceCrashed,
            proto::DynoState::Down => proto::ServiceState::ServiceStopped,
            _ => return,
        };
        let status = proto::ServiceStatus {
            id: id.to_string(),
            state: state.into(),
            changed_at_ms: status.changed_at_ms,
            reason: status.reason.clone(),
            port: status.port,
        };
        self.send(proto::agent_message::Kind::Service(status));
    }

    /// A service entry is gone (stopped): its port stays reserved while its volume is kept;
    /// a destroyed one's volume is deleted now.
    pub(super) fn service_removed(&mut self, key: &str, port: Option<u16>) {
        let Some(id) = service_id(key).map(str::to_string) else {
            return;
        };
        if self.state.destroyed_services.contains(&id) {
            self.destroy_volume(&id);
        } else if let Some(port) = port {
            // Kept for it unless the volume never came to be (a service that never started).
            let volume = Volume::new(&self.config.host, &id).ok();
            if volume.and_then(|v| v.record()).is_none() {
                self.ports.release(port);
            }
        }
    }

    /// Carries out `destroyed_services` for services with no entry (stopped before, or never
    /// run here); those with one are deleted once their dyno ends ([`Core::service_removed`]).
    pub(super) fn destroy_services(&mut self) {
        for id in self.state.destroyed_services.clone() {
            if !self.dynos.contains_key(&key(&id)) {
                self.destroy_volume(&id);
            }
        }
    }

    /// Deletes service `id`'s volume and reports it `DESTROYED` (once per daemon unless a
    /// volume was there). An invalid id never had a volume: nothing on disk is touched.
    fn destroy_volume(&mut self, id: &str) {
        let volume = Volume::new(&self.config.host, id);
        let kept = volume.as_ref().ok().and_then(Volume::record);
        let existed = volume.as_ref().is_ok_and(|v| v.root.exists());
        match volume.map(|v| (v.delete(), v.root)) {
            Err(why) => {
                tracing::warn!("destroyed service {id:?} has no volume: {why}");
                self.destroyed(id, false);
            }
            Ok((Ok(()), _)) => {
                if let Some(port) = kept.map(|r| r.port).filter(|p| *p != 0) {
                    self.ports.release(port);
                }
                self.destroyed(id, existed);
            }
            Ok((Err(err), root)) => {
                let status = proto::ServiceStatus {
                    id: id.to_string(),
                    state: proto::ServiceState::ServiceCrashed.into(),
                    changed_at_ms: now_ms(),
                    reason: format!("cannot delete volume {}: {err}", root.display()),
                    port: kept.map(|r| u32::from(r.port)).unwrap_or(0),
                };
                tracing::error!("{}", status.reason);
                self.send(proto::agent_message::Kind::Service(status));
            }
        }
    }

    /// Reports `DESTROYED`: whenever a volume went, else once per daemon.
    fn destroyed(&mut self, id: &str, deleted: bool) {
        if !deleted && self.destroyed_reported.contains(id) {
            return;
        }
        if deleted {
            tracing::info!("service {id}: volume deleted");
        }
        self.destroyed_reported.insert(id.to_string());
        let status = proto::ServiceStatus {
            id: id.to_string(),
            state: proto::ServiceState::ServiceDestroyed.into(),
            changed_at_ms: now_ms(),
            reason: String::new(),
            port: 0,
        };
        self.send(proto::agent_message::Kind::Service(status));
    }

    /// `Hello.services`: every service entry's last state, and every other volume as
    /// `STOPPED` with its port.
    pub(super) fn service_statuses(&self) -> Vec<proto::ServiceStatus> {
        let mut statuses = Vec::new();
        for (key, entry) in &self.dynos {
            let Some(id) = service_id(key) else {
                continue;
            };
            let state = match entry.status.state() {
                proto::DynoState::Up => proto::ServiceState::ServiceUp,
                proto::DynoState::Crashed => proto::ServiceState::ServiceCrashed,
                proto::DynoState::Down => proto::ServiceState::ServiceStopped,
                _ => proto::ServiceState::ServiceStarting,
            };
            statuses.push(proto::ServiceStatus {
                id: id.to_string(),
                state: state.into(),
                changed_at_ms: entry.status.changed_at_ms,
                reason: entry.status.reason.clone(),
                port: entry.status.port,
            });
        }
        for (id, record) in volumes(&self.config.host) {
            if self.dynos.contains_key(&key(&id)) {
                continue;
            }
            statuses.push(proto::ServiceStatus {
                id,
                state: proto::ServiceState::ServiceStopped.into(),
                changed_at_ms: 0,
                reason: String::new(),
                port: record.map(|r| u32::from(r.port)).unwrap_or(0),
            });
        }
        statuses
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn record(kind: &str) -> ServiceRecord {
        ServiceRecord {
            id: "a1b2".into(),
            name: "postgresql-curved-12345".into(),
            kind: kind.into(),
            stack: "services".into(),
            size: "basic".into(),
            port: 0,
            env: [
                ("ADDON_USER", "u_a1b2"),
                ("ADDON_PASSWORD", "pw-0123456789"),
                ("ADDON_DATABASE", "d_a1b2"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            peers: vec!["10.0.0.7".into()],
        }
    }

    #[test]
    fn ids_that_could_be_paths_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "../etc",
            "a/b",
            "a.b",
            "a_b",
            "x y",
            &"a".repeat(65),
        ] {
            let err = check_id(bad).unwrap_err();
            assert!(err.contains("invalid service id"), "{bad}: {err}");
        }
        check_id("0f3c-9aB").unwrap();
        assert_eq!(service_id(&key("abc")), Some("abc"));
        assert_eq!(service_id("abc"), None);
    }

    #[test]
    fn a_service_is_checked_before_it_starts() {
        assert_eq!(
            check(&record("postgresql")).unwrap().0,
            ServiceKind::Postgresql
        );
        assert_eq!(check(&record("redis")).unwrap().0.inner_port(), 6379);
        let err = check(&record("mysql")).unwrap_err();
        assert_eq!(
            err,
            "unknown add-on kind \"mysql\": expected postgresql or redis"
        );
        let mut bad = record("postgresql");
        bad.env.insert("ADDON_PASSWORD".into(), "a' OR 1".into());
        assert!(check(&bad)
            .unwrap_err()
            .starts_with("ADDON_PASSWORD must be"));
        bad.env.remove("ADDON_PASSWORD");
        assert_eq!(
            check(&bad).unwrap_err(),
            "ADDON_PASSWORD is missing from the service's env"
        );
        let mut bad = record("redis");
        bad.peers = vec!["host.example".into()];
        assert!(check(&bad).unwrap_err().contains("invalid peer"));
        let mut bad = record("redis");
        bad.size = "huge".into();
        assert!(check(&bad).is_err());
    }
}
