//! Address leases: one file per address under `leases/`, claimed atomically.

use super::*;

/// Addresses to try, in order: every dyno address once, from `start` and wrapping around.
/// A random start spreads concurrent allocators apart and makes quick reuse of a just-freed
/// address (and of whatever conntrack still remembers about it) unlikely.
pub(super) fn candidates(subnet: Ipv4Subnet, start: u32) -> impl Iterator<Item = Ipv4Addr> {
    let capacity = subnet.dyno_capacity();
    let start = start % capacity;
    (0..capacity).map(move |i| subnet.host(2 + (start + i) % capacity))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Lease {
    pub(super) dyno: String,
    /// `(host_port, dyno_port)`; tells unplug whether nft needs looking at.
    pub(super) publish: Option<(u16, u16)>,
    /// The dyno's own policy elements (`netpolicy::Access`), removed with the lease.
    #[serde(default, skip_serializing_if = "Access::is_empty")]
    pub(super) access: Access,
}

/// Claims the first free candidate address. The lease is written into an unnamed
/// (`O_TMPFILE`) file first, then linked under each candidate's name until one link does not
/// already exist: the link is the atomic claim, and the file is complete from the moment
/// it has a name.
pub(super) fn allocate_lease(
    dir: &Path,
    subnet: Ipv4Subnet,
    lease: &Lease,
    start: u32,
) -> Result<Ipv4Addr, NetworkError> {
    fs::create_dir_all(dir).map_err(io_error("create", dir))?;
    let mut file = OpenOptions::new()
        .write(true)
        .mode(0o644)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
        .map_err(io_error("create an unnamed lease in", dir))?;
    let json = serde_json::to_vec(lease).map_err(|source| NetworkError::Io {
        step: "serialise a lease for",
        path: dir.to_path_buf(),
        source: source.into(),
    })?;
    file.write_all(&json)
        .map_err(io_error("write a lease in", dir))?;
    let unnamed = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    for address in candidates(subnet, start) {
        let path = dir.join(address.to_string());
        match nix::unistd::linkat(None, &unnamed, None, &path, AtFlags::AT_SYMLINK_FOLLOW) {
            Ok(()) => return Ok(address),
            Err(Errno::EEXIST) => continue,
            Err(errno) => return Err(io_error("link lease", &path)(errno.into())),
        }
    }
    Err(NetworkError::SubnetExhausted { subnet })
}

/// Every readable lease. A lease that vanishes while being read was just released, and one
/// that does not parse was not written by us: both are skipped, not fatal, so one bad file
/// cannot block every unplug.
pub(super) fn read_leases(dir: &Path) -> Result<Vec<(Ipv4Addr, Lease)>, NetworkError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("read", dir)(e)),
    };
    let mut leases = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error("read", dir))?;
        let Some(address) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let path = entry.path();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error("read", &path)(e)),
        };
        match serde_json::from_str(&text) {
            Ok(lease) => leases.push((address, lease)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "skipping malformed lease")
            }
        }
    }
    Ok(leases)
}

pub(super) fn remove_lease(dir: &Path, address: Ipv4Addr) -> Result<(), NetworkError> {
    let path = dir.join(address.to_string());
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error("remove", &path)(e)),
        _ => Ok(()),
    }
}

/// Replaces the lease of `address` (which the caller holds, under the host lock): written
/// beside it, then renamed over it, so a reader sees the old lease or the new one.
pub(super) fn replace_lease(
    dir: &Path,
    address: Ipv4Addr,
    lease: &Lease,
) -> Result<(), NetworkError> {
    let path = dir.join(address.to_string());
    let tmp = dir.join(format!(".{address}.new"));
    let json = serde_json::to_vec(lease).map_err(|source| NetworkError::Io {
        step: "serialise a lease for",
        path: path.clone(),
        source: source.into(),
    })?;
    fs::write(&tmp, json).map_err(io_error("write", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_error("replace", &path))
}
