//! Collecting what no dyno uses any more: slug layers and fetched slug archives.
//!
//! Every slug a host ever ran stays in its cache otherwise (unpacked under
//! `STATE/slugs/<uid>-<gid>/<sha256>` and fetched as `STATE/blobs/<sha256>.tgz`), so a busy
//! host's disk fills with old releases. A slug is kept while a dyno directory names it in
//! its `dyno.json` and for `unused_for` after its last use (a rollback or a restart of an
//! older release then finds it still there); then it goes. The daemon collects once an
//! hour, `manifold-agent gc` on demand.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::Path;
use std::time::Duration;

use tracing::info;

use crate::dyno::{DynoDir, HostConfig};
use crate::host::slug::{SlugCache, SlugError};

/// How long a slug no dyno uses stays on the host by default.
pub const DEFAULT_SLUG_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// What a collection removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub layers: Vec<String>,
    pub archives: Vec<String>,
}

/// Errors collecting.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Slug(#[from] SlugError),
    #[error("cannot collect {path}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// The slugs (sha256) named by the dyno directories on this host now. Read afresh at each
/// call: a dyno that starts during a collection writes its `dyno.json` before it asks for
/// its layer, and the second look (under the layer's lock) sees it.
pub fn slugs_in_use(host: &HostConfig) -> BTreeSet<String> {
    let Ok(entries) = fs::read_dir(host.dynos_dir()) else {
        return BTreeSet::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| DynoDir { root: e.path() }.read_config().ok())
        .filter_map(|config| config.slug)
        .filter_map(|slug| {
            slug.sha256.or_else(|| {
                let name = slug.path.file_name()?.to_str()?;
                Some(name.strip_suffix(".tgz").unwrap_or(name).to_string())
            })
        })
        .collect()
}

/// Removes the slug layers and archives that no dyno uses and nothing used for
/// `unused_for`. Blocking file work: run it off the async runtime.
pub fn collect_slugs(host: &HostConfig, unused_for: Duration) -> Result<Collected, GcError> {
    let in_use = |sha256: &str| slugs_in_use(host).contains(sha256);
    let mut collected = Collected::default();
    if let Ok(owners) = fs::read_dir(host.slugs_dir()) {
        for owner in owners.filter_map(Result::ok).filter(|e| e.path().is_dir()) {
            collected
                .layers
                .extend(SlugCache::collect(&owner.path(), &in_use, unused_for)?);
        }
    }
    let archives = host.slug_archives_dir();
    let entries = match fs::read_dir(&archives) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(collected),
        Err(source) => return Err(io_error(&archives, source)),
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let Some(sha256) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".tgz"))
            .map(str::to_string)
        else {
            continue;
        };
        if in_use(&sha256) || !idle(&path, unused_for) {
            continue;
        }
        match fs::remove_file(&path) {
            Ok(()) => {
                info!(
                    sha256,
                    "removed a slug archive no dyno used for {unused_for:?}"
                );
                collected.archives.push(sha256);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(io_error(&path, source)),
        }
    }
    Ok(collected)
}

/// Whether `path` was last modified at least `unused_for` ago (fetching an archive that is
/// there already touches it, so its mtime is its last use).
fn idle(path: &Path, unused_for: Duration) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age >= unused_for)
}

fn io_error(path: &Path, source: io::Error) -> GcError {
    GcError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::dyno::{DynoConfig, SlugSource, DYNO_GID, DYNO_UID};
    use crate::size::DynoSize;

    fn set_age(path: &Path, secs: u64) {
        let then = std::time::SystemTime::now() - Duration::from_secs(secs);
        fs::File::options()
            .write(true)
            .open(path)
            .expect("open")
            .set_modified(then)
            .expect("set mtime");
    }

    #[test]
    fn archives_named_by_a_dyno_or_recently_used_are_kept() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let host = HostConfig::with_state_dir(tmp.path());
        let archives = host.slug_archives_dir();
        fs::create_dir_all(&archives).expect("mkdir");
        let (used, idle_one, fresh) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
        for sha in [&used, &idle_one, &fresh] {
            fs::write(archives.join(format!("{sha}.tgz")), b"slug").expect("write");
        }
        set_age(&archives.join(format!("{used}.tgz")), 7200);
        set_age(&archives.join(format!("{idle_one}.tgz")), 7200);
        fs::write(archives.join("stray.tmp"), b"x").expect("write");

        let dir = DynoDir::new(&host, "web-1-abc");
        fs::create_dir_all(&dir.root).expect("mkdir");
        let config = DynoConfig {
            id: "web-1-abc".into(),
            name: "web.1".into(),
            stack: "testing".into(),
            slug: Some(SlugSource {
                path: archives.join(format!("{used}.tgz")),
                sha256: Some(used.clone()),
            }),
            size: DynoSize::Standard1X,
            env: BTreeMap::new(),
            command: "true".into(),
            port: None,
            publish: None,
            grace: Duration::from_secs(30),
            boot_timeout: crate::dyno::DEFAULT_BOOT_TIMEOUT,
            mounts: Vec::new(),
            uid: DYNO_UID,
            gid: DYNO_GID,
            host: host.clone(),
            attach: None,
            log_rate: None,
            access: Default::default(),
        };
        dir.write_config(&config).expect("dyno.json");
        assert_eq!(slugs_in_use(&host), BTreeSet::from([used.clone()]));

        let collected = collect_slugs(&host, Duration::from_secs(3600)).expect("collect");
        assert_eq!(collected.archives, [idle_one.as_str()]);
        assert!(archives.join(format!("{used}.tgz")).exists());
        assert!(archives.join(format!("{fresh}.tgz")).exists());
        assert!(archives.join("stray.tmp").exists());
    }
}
