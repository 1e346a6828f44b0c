//! The host's side, set up once: the host lock, sysctls, IPv6 off on the bridge.

use super::*;

/// Serialises host set-up and unplugs across processes; released when dropped.
pub(super) fn lock_host(state_dir: &Path) -> Result<Flock<File>, NetworkError> {
    fs::create_dir_all(state_dir).map_err(io_error("create", state_dir))?;
    let path = state_dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error("open", &path))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| io_error("lock", &path)(errno.into()))
}

/// `route_localnet` on the bridge lets a connection the host makes to 127.0.0.1, once DNATed
/// to a dyno, leave through the bridge (and its replies come back) instead of being dropped
/// as martian. `lo` does not need it. IPv6 off on the bridge takes its link-local address
/// away and makes the host ignore any IPv6 a dyno sends (dynos have none; the nft table is
/// IPv4 only). A kernel without IPv6 has no such file, which is as good. `proc_sys` is a
/// parameter so tests can use a fixture.
pub(super) fn write_sysctls(proc_sys: &Path, bridge: &str) -> Result<(), NetworkError> {
    for (key, value) in [
        (PathBuf::from("net/ipv4/ip_forward"), "1"),
        (
            PathBuf::from(format!("net/ipv4/conf/{bridge}/route_localnet")),
            "1",
        ),
    ] {
        let path = proc_sys.join(key);
        fs::write(&path, value).map_err(io_error("write", &path))?;
    }
    disable_ipv6(&proc_sys.join(format!("net/ipv6/conf/{bridge}/disable_ipv6")))
}

/// Writes 1 to a `disable_ipv6` file; a missing one (a kernel without IPv6) is success.
pub(super) fn disable_ipv6(path: &Path) -> Result<(), NetworkError> {
    match fs::write(path, "1") {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error("write", path)(e)),
        _ => Ok(()),
    }
}
