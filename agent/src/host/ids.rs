//! Each app's own user-namespace id range on a host.
//!
//! A dyno's ids 0..65536 are a range of host ids ([`UserNamespace`]). Were that one range for
//! every dyno of a host, the dyno user of every app would be the same host uid: the kernel's
//! per-user counts (processes under `RLIMIT_NPROC`, user namespaces, keys) would be shared
//! between apps, and a process of one app that got out of its mount namespace would own
//! every other app's files. So each app gets a range of its own the first time one of its
//! dynos or builds comes to the host, kept for it in `STATE/ids/<app>` (the range's number,
//! flushed to disk: its slug layers and build cache are owned by the range across reboots).
//!
//! Range `n` is `base + n × 65536` for `n` in `0..count`, where `base` is the host's
//! [`HostConfig::userns`]. Range 0 is shared by dynos of no app: `manifold-agent run` and
//! `build` from the command line. The ranges lie past the ones `/etc/subuid` hands to the
//! host's first user; an operator whose `/etc/subuid` gives out more picks a base past them.
//!
//! A range is given back ([`IdRanges::release_unused`], run by the daemon's hourly collection
//! and by `manifold-agent gc`) once nothing on the host is owned by it (no dyno directory, no
//! slug layer, no build cache of the app) and its app has not asked for it for an hour
//! ([`RELEASE_AFTER`]: a dyno being started has its range before its directory and layer
//! exist). A later app that gets the number then finds none of the former owner's files.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::fcntl::{Flock, FlockArg};

use crate::dyno::{write_durable, DynoDir, HostConfig, UserNamespace, DYNO_GID, DYNO_UID};

/// The range of add-on service `ID` is named `Service-ID`: app names start with a lower-case
/// letter, so no app's range is a service's. It is kept while the service's volume exists.
pub const SERVICE_PREFIX: &str = "Service-";

/// How many ranges a host hands out by default: 4096 apps, host ids up to about 268 million.
pub const DEFAULT_RANGES: u32 = 4096;

/// How long after its app last asked for it a range may be given back.
pub const RELEASE_AFTER: Duration = Duration::from_secs(3600);

/// Errors giving an app its range.
#[derive(Debug, thiserror::Error)]
pub enum IdError {
    #[error("invalid app name {0:?}: expected letters, digits and dashes")]
    AppName(String),
    #[error(
        "no free user-namespace id range for app {app}: all {count} ranges of this host are \
         taken (`manifold-agent gc` gives back the ranges of apps gone from the host; \
         --id-ranges allows more)"
    )]
    Exhausted { app: String, count: u32 },
    #[error("{count} id ranges of {size} from host id {base} go past the largest host id")]
    TooMany { base: u32, size: u32, count: u32 },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// The ranges of one host, numbered under `STATE/ids`.
#[derive(Debug, Clone)]
pub struct IdRanges {
    dir: PathBuf,
    first: UserNamespace,
    count: u32,
}

impl IdRanges {
    /// The host's ranges, or None where dynos get no user namespace (all run as host ids).
    pub fn new(host: &HostConfig) -> Result<Option<IdRanges>, IdError> {
        let Some(first) = host.userns else {
            return Ok(None);
        };
        let count = host.id_ranges.max(1);
        let last = u64::from(first.host_base) + u64::from(count) * u64::from(first.size);
        // The kernel's largest id is 2^32 - 2 (-1 means "none").
        if last > u64::from(u32::MAX) {
            return Err(IdError::TooMany {
                base: first.host_base,
                size: first.size,
                count,
            });
        }
        Ok(Some(IdRanges {
            dir: host.ids_dir(),
            first,
            count,
        }))
    }

    /// The entries of an `/etc/subuid`-style file (`user:start:count` lines) whose ids
    /// overlap this host's ranges: those users' containers would share ids with dynos.
    pub fn overlaps(&self, subids: &str) -> Vec<String> {
        let ours = u64::from(self.first.host_base)
            ..u64::from(self.first.host_base) + u64::from(self.count) * u64::from(self.first.size);
        subids
            .lines()
            .filter(|line| {
                let mut fields = line.trim().split(':').skip(1).map(|f| f.parse::<u64>());
                match (fields.next(), fields.next()) {
                    (Some(Ok(start)), Some(Ok(count))) => {
                        start < ours.end && ours.start < start + count
                    }
                    _ => false,
                }
            })
            .map(|line| line.trim().to_string())
            .collect()
    }

    /// Range `n`.
    fn range(&self, n: u32) -> UserNamespace {
        UserNamespace {
            host_base: self.first.host_base + n * self.first.size,
            size: self.first.size,
        }
    }

    /// `app`'s range: the one it has on this host, else the lowest free one (never 0),
    /// recorded before it is returned.
    pub fn for_app(&self, app: &str) -> Result<UserNamespace, IdError> {
        check_name(app)?;
        let _lock = self.lock()?;
        let taken = self.taken()?;
        let path = self.dir.join(app);
        if let Some(&(n, _)) = taken.iter().find(|(_, a)| a == app) {
            // Its last use, which keeps it from being given back meanwhile.
            File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(SystemTime::now()))
                .map_err(io_error(&path))?;
            return Ok(self.range(n));
        }
        let used: BTreeSet<u32> = taken.iter().map(|(n, _)| *n).collect();
        let n = (1..self.count)
            .find(|n| !used.contains(n))
            .ok_or_else(|| IdError::Exhausted {
                app: app.to_string(),
                count: self.count,
            })?;
        write_durable(&path, format!("{n}\n").as_bytes()).map_err(io_error(&path))?;
        tracing::info!(app, range = n, "gave the app its own id range");
        Ok(self.range(n))
    }

    /// Gives back the ranges whose app has nothing left on the host (no dyno directory in
    /// the range, no slug layer owned by it, no build cache) and has not asked for its range
    /// for `after`. Returns the apps.
    pub fn release_unused(
        &self,
        host: &HostConfig,
        after: Duration,
    ) -> Result<Vec<String>, IdError> {
        let _lock = self.lock()?;
        let dynos: BTreeSet<u32> = fs::read_dir(host.dynos_dir())
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| DynoDir { root: e.path() }.read_config().ok())
            .filter_map(|c| c.host.userns.map(|ns| ns.host_base))
            .collect();
        let mut released = Vec::new();
        for (n, app) in self.taken()? {
            let range = self.range(n);
            let layers =
                host.slug_layers_dir((range.host_base + DYNO_UID, range.host_base + DYNO_GID));
            let owns_layers = fs::read_dir(&layers).is_ok_and(|mut d| d.next().is_some());
            let path = self.dir.join(&app);
            let recent = fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age < after);
            // A service keeps its range while its volume (owned by it) exists.
            let volume = app
                .strip_prefix(SERVICE_PREFIX)
                .is_some_and(|id| host.volumes_dir().join(id).exists());
            if recent
                || volume
                || dynos.contains(&range.host_base)
                || owns_layers
                || host.build_cache_dir(&app).exists()
            {
                continue;
            }
            // An empty layer directory goes with the range: the next owner makes its own.
            let _ = fs::remove_dir(&layers);
            fs::remove_file(&path).map_err(io_error(&path))?;
            tracing::info!(
                app,
                range = n,
                "gave back the id range of an app gone from the host"
            );
            released.push(app);
        }
        Ok(released)
    }

    /// Every recorded (range, app). A file that does not hold a range number is an error:
    /// handing its range to another app could give that app someone else's files.
    fn taken(&self) -> Result<Vec<(u32, String)>, IdError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(&self.dir)(e)),
        };
        let mut taken = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error(&self.dir))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if check_name(&name).is_err() {
                continue; // the lock, temporary files
            }
            let path = entry.path();
            let text = fs::read_to_string(&path).map_err(io_error(&path))?;
            let n = text
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..self.count).contains(n))
                .ok_or_else(|| {
                    io_error(&path)(io::Error::other(format!(
                        "not a range number of this host (1..{}): {:?}",
                        self.count,
                        text.trim()
                    )))
                })?;
            taken.push((n, name));
        }
        Ok(taken)
    }

    /// Serialises allocations across the daemon's tasks and other agent processes.
    fn lock(&self) -> Result<Flock<File>, IdError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io_error(&self.dir))?;
        let path = self.dir.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_error(&path))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| io_error(&path)(errno.into()))
    }
}

/// App names as the scheduler makes them; anything else is refused rather than made into a
/// file name.
fn check_name(app: &str) -> Result<(), IdError> {
    let ok = !app.is_empty()
        && app.len() <= 100
        && app.starts_with(|c: char| c.is_ascii_alphanumeric())
        && app.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(IdError::AppName(app.to_string()))
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> IdError {
    let path = path.to_path_buf();
    move |source| IdError::Io { path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(dir: &Path, count: u32) -> HostConfig {
        let mut host = HostConfig::with_state_dir(dir);
        host.userns = Some(UserNamespace {
            host_base: 100_000,
            size: 65_536,
        });
        host.id_ranges = count;
        host
    }

    #[test]
    fn each_app_keeps_a_range_of_its_own() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ranges = IdRanges::new(&host(tmp.path(), 8))
            .expect("ranges")
            .expect("a user namespace");
        let a = ranges.for_app("alpha").expect("ok");
        let b = ranges.for_app("beta").expect("ok");
        assert_eq!(a.host_base, 100_000 + 65_536, "range 0 is the shared one");
        assert_eq!(b.host_base, 100_000 + 2 * 65_536);
        assert_eq!(ranges.for_app("alpha").expect("ok"), a, "kept");
        // Another process (a restarted agent) reads the same.
        let again = IdRanges::new(&host(tmp.path(), 8))
            .expect("ranges")
            .expect("a user namespace");
        assert_eq!(again.for_app("beta").expect("ok"), b);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(tmp.path().join("ids"))
            .expect("ok")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_full_host_says_so_and_bad_names_and_records_are_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ranges = IdRanges::new(&host(tmp.path(), 3))
            .expect("ranges")
            .expect("a user namespace");
        ranges.for_app("a").expect("ok");
        ranges.for_app("b").expect("ok");
        let err = ranges.for_app("c").expect_err("refused").to_string();
        assert!(err.contains("all 3 ranges"), "{err}");
        for bad in ["", "../etc", "a/b", ".lock", "-x"] {
            assert!(
                matches!(ranges.for_app(bad), Err(IdError::AppName(_))),
                "{bad}"
            );
        }
        fs::write(tmp.path().join("ids/b"), "0\n").expect("ok");
        let err = ranges.for_app("a").expect_err("refused").to_string();
        assert!(err.contains("not a range number"), "{err}");
        let too_many = IdRanges::new(&host(tmp.path(), 70_000)).expect_err("refused");
        assert!(matches!(too_many, IdError::TooMany { .. }), "{too_many}");
    }

    #[test]
    fn subordinate_ids_of_host_users_inside_the_ranges_are_found() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ranges = IdRanges::new(&host(tmp.path(), 2))
            .expect("ranges")
            .expect("a user namespace");
        let subuid = "alice:100000:65536\nbob:231072:65536\n# comment\ncarol:1:99999\n";
        assert_eq!(
            ranges.overlaps(subuid),
            vec!["alice:100000:65536".to_string()]
        );
    }

    #[test]
    fn a_range_is_given_back_only_when_nothing_of_its_app_is_left() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let host = host(tmp.path(), 8);
        let ranges = IdRanges::new(&host)
            .expect("ranges")
            .expect("a user namespace");
        let with_layer = ranges.for_app("layered").expect("ok");
        ranges.for_app("cached").expect("ok");
        let gone = ranges.for_app("gone").expect("ok");
        let layers = host.slug_layers_dir((
            with_layer.host_base + DYNO_UID,
            with_layer.host_base + DYNO_GID,
        ));
        fs::create_dir_all(layers.join("abc")).expect("ok");
        fs::create_dir_all(host.build_cache_dir("cached")).expect("ok");
        assert!(
            ranges
                .release_unused(&host, RELEASE_AFTER)
                .expect("ok")
                .is_empty(),
            "all asked for just now"
        );
        assert_eq!(
            ranges.release_unused(&host, Duration::ZERO).expect("ok"),
            vec!["gone".to_string()]
        );
        // The next app gets the number back; the others keep theirs.
        assert_eq!(ranges.for_app("newcomer").expect("ok"), gone);
        assert_eq!(ranges.for_app("layered").expect("ok"), with_layer);
    }
}
