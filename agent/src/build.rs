//! Builds in a dyno: the slugbuilder run in isolation, like any other dyno.
//!
//! The app's source becomes the dyno's `/app` (packed as a slug layer, so the overlay gives
//! the build a private writable copy); the slugbuilder binary and the buildpacks are mounted
//! read-only; the output and cache directories are the only host paths the build can write.
//! It runs on the app's stack, as the dyno user, with the size's limits, so that what the
//! buildpacks produce (a Python venv, `node_modules`) fits the stack it will run on.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::dyno::{
    BindMount, DynoConfig, HostConfig, SlugSource, DEFAULT_BOOT_TIMEOUT, DYNO_GID, DYNO_UID,
};
use crate::size::DynoSize;

/// Where the build dyno sees what the host lends it.
const BIN: &str = "/.manifold/bin/slugbuilder";
const BUILDPACKS: &str = "/.manifold/buildpacks";
const CUSTOM: &str = "/.manifold/custom-buildpacks";
const OUT: &str = "/.manifold/out";
const CACHE: &str = "/.manifold/cache";
const ENV: &str = "/.manifold/env";

/// What to build and how.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub source: PathBuf,
    pub stack: String,
    pub size: DynoSize,
    /// Config vars, handed to `bin/compile` through `ENV_DIR`.
    pub env: BTreeMap<String, String>,
    /// Buildpacks in order: built-in names, git URLs, or host directories (mounted read-only).
    pub buildpacks: Vec<String>,
    /// Kept between builds of one app (CACHE_DIR).
    pub cache_dir: PathBuf,
    /// The slugbuilder binary on the host.
    pub slugbuilder: PathBuf,
    /// The built-in buildpacks' directory on the host.
    pub buildpacks_dir: PathBuf,
    pub timeout: Duration,
}

/// Errors preparing a build dyno.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("source {path} is not a directory")]
    NoSource { path: PathBuf },
    #[error("{what} {path} not found")]
    Missing { what: &'static str, path: PathBuf },
    #[error("cannot prepare {path}")]
    Prepare {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("source archive {path} is not a valid tar.gz")]
    SourceArchive {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("source archive entry {entry:?} is refused: {reason}")]
    SourceEntry { entry: String, reason: &'static str },
    #[error("source archive unpacks to more than {limit} bytes")]
    SourceTooLarge { limit: u64 },
    #[error("cannot unpack the source")]
    Unpack {
        #[source]
        source: crate::slug::SlugError,
    },
}

/// A prepared build: the dyno to run and where its slug will appear.
#[derive(Debug)]
pub struct PreparedBuild {
    pub dyno: DynoConfig,
    /// Host directory holding the source tarball, env dir and output; remove it when done.
    pub work: PathBuf,
    /// `slug.tgz` and `slug.json` appear here when the build succeeds.
    pub out: PathBuf,
}

/// Writes the source tarball, env dir and output dir, and describes the build dyno.
pub fn prepare(
    host: &HostConfig,
    id: &str,
    req: &BuildRequest,
) -> Result<PreparedBuild, BuildError> {
    if !req.source.is_dir() {
        return Err(BuildError::NoSource {
            path: req.source.clone(),
        });
    }
    for (what, path) in [
        ("slugbuilder binary", &req.slugbuilder),
        ("buildpacks directory", &req.buildpacks_dir),
    ] {
        if !path.exists() {
            return Err(BuildError::Missing {
                what,
                path: path.clone(),
            });
        }
    }
    let work = host.state_dir.join("builds").join(id);
    let prep = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Prepare { path, source }
    };
    let out = work.join("out");
    let env_dir = work.join("env");
    for dir in [&out, &env_dir, &req.cache_dir] {
        fs::create_dir_all(dir).map_err(prep(dir))?;
    }
    // What the build writes (setuid files included) is out of other host users' reach.
    let root_gid = host.host_ids(0, 0).1;
    crate::rootfs::close_to_host_users(&work, root_gid).map_err(|e| BuildError::Prepare {
        path: work.clone(),
        source: io::Error::other(e),
    })?;
    // The build runs as the dyno user: it must own what it writes.
    let (uid, gid) = host.host_ids(DYNO_UID, DYNO_GID);
    for dir in [&out, &req.cache_dir] {
        chown(dir, Some(uid), Some(gid)).map_err(prep(dir))?;
    }
    for (key, value) in &req.env {
        let file = env_dir.join(key);
        fs::write(&file, value).map_err(prep(&file))?;
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).map_err(prep(&file))?;
    }
    let tarball = work.join("source.tgz");
    pack_source(&req.source, &tarball).map_err(prep(&tarball))?;

    let mut mounts = vec![
        bind(&req.slugbuilder, BIN, true),
        bind(&req.buildpacks_dir, BUILDPACKS, true),
        bind(&out, OUT, false),
        bind(&req.cache_dir, CACHE, false),
        bind(&env_dir, ENV, true),
    ];
    let mut args = vec![
        "build".to_string(),
        "/app".into(),
        "--in-place".into(),
        "--out".into(),
        format!("{OUT}/slug.tgz"),
        "--cache-dir".into(),
        CACHE.into(),
        "--env-dir".into(),
        ENV.into(),
        "--buildpacks-dir".into(),
        BUILDPACKS.into(),
        "--buildpack-cache".into(),
        format!("{CACHE}/.buildpacks"),
        "--stack".into(),
        req.stack.clone(),
        "--timeout".into(),
        format!("{}s", req.timeout.as_secs()),
    ];
    for (i, bp) in req.buildpacks.iter().enumerate() {
        let path = Path::new(bp);
        let arg = if path.is_dir() {
            let inside = format!("{CUSTOM}/{i}");
            mounts.push(bind(path, &inside, true));
            inside
        } else {
            bp.clone()
        };
        args.push("--buildpack".into());
        args.push(arg);
    }
    let command = std::iter::once(BIN.to_string())
        .chain(args.iter().map(|a| shell_quote(a)))
        .collect::<Vec<_>>()
        .join(" ");
    let dyno = DynoConfig {
        id: id.to_string(),
        name: "build.1".into(),
        stack: req.stack.clone(),
        slug: Some(SlugSource {
            path: tarball,
            sha256: None,
        }),
        size: req.size,
        env: BTreeMap::new(),
        command,
        port: None,
        publish: None,
        grace: Duration::from_secs(10),
        // A build has no `$PORT`: no boot timeout applies.
        boot_timeout: DEFAULT_BOOT_TIMEOUT,
        mounts,
        uid: DYNO_UID,
        gid: DYNO_GID,
        host: host.clone(),
        attach: None,
    };
    Ok(PreparedBuild { dyno, work, out })
}

/// Unpacks an uploaded source archive (`tar.gz` with the app's files at its root, as
/// `manifold deploy` packs them) into `WORK/layer/.../app` and returns that directory.
///
/// The archive is hostile input. Rather than a second unpacker, its entries are re-packed
/// under `app/` (never touching the filesystem, refusing absolute and `..` paths, bounded
/// in size) and the result goes through [`crate::slug::SlugCache`], which refuses every
/// hostile entry a slug may not have (escaping links, devices, duplicates, ...).
pub fn unpack_source(archive: &Path, work: &Path) -> Result<PathBuf, BuildError> {
    let limits = crate::slug::UnpackLimits::default();
    let wrapped = work.join("source-app.tgz");
    let prep = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Prepare { path, source }
    };
    fs::create_dir_all(work).map_err(prep(work))?;
    let bad = |source| BuildError::SourceArchive {
        path: archive.to_path_buf(),
        source,
    };
    let file = fs::File::open(archive).map_err(bad)?;
    let mut input = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let out = fs::File::create(&wrapped).map_err(prep(&wrapped))?;
    let mut output = tar::Builder::new(flate2::write::GzEncoder::new(
        out,
        flate2::Compression::fast(),
    ));
    let mut total = 0u64;
    for entry in input.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        let name = path.display().to_string();
        let refuse = |reason| BuildError::SourceEntry {
            entry: name.clone(),
            reason,
        };
        use std::path::Component;
        if path
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(refuse("absolute path or `..`"));
        }
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            continue;
        }
        if kind == tar::EntryType::GNUSparse {
            return Err(refuse("sparse file"));
        }
        total = total.saturating_add(entry.size());
        if total > limits.max_unpacked_bytes {
            return Err(BuildError::SourceTooLarge {
                limit: limits.max_unpacked_bytes,
            });
        }
        let inside = Path::new("app").join(&path);
        let mut header = entry.header().clone();
        let link = entry.link_name().map_err(bad)?.map(|l| l.into_owned());
        let written = match (kind, link) {
            // A hard link names another entry of the archive, which moved under app/ too.
            (tar::EntryType::Link, Some(target)) => {
                output.append_link(&mut header, &inside, Path::new("app").join(target))
            }
            (tar::EntryType::Symlink, Some(target)) => {
                output.append_link(&mut header, &inside, target)
            }
            _ => output.append_data(&mut header, &inside, &mut entry),
        };
        written.map_err(bad)?;
    }
    output
        .into_inner()
        .and_then(|gz| gz.finish())
        .map_err(prep(&wrapped))?;
    let cache = crate::slug::SlugCache::new(work.join("layer"), limits, None);
    let layer = cache
        .layer(&wrapped, None)
        .map_err(|source| BuildError::Unpack { source })?;
    let _ = fs::remove_file(&wrapped);
    Ok(layer.dir.join("app"))
}

fn bind(source: &Path, destination: &str, readonly: bool) -> BindMount {
    BindMount {
        source: source.to_path_buf(),
        destination: PathBuf::from(destination),
        readonly,
    }
}

/// Quotes for `bash -c` so that buildpack URLs and paths pass through unchanged.
fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-=:".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Packs the source as `./app/...`, keeping modes and symlinks (never following them, so a
/// link in the source cannot pull host files into the build).
fn pack_source(source: &Path, tarball: &Path) -> io::Result<()> {
    let file = fs::File::create(tarball)?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Complete);
    tar.append_dir_all("./app", source)?;
    tar.into_inner()?.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_plain_words_and_quotes_the_rest() {
        assert_eq!(shell_quote("/app"), "/app");
        assert_eq!(shell_quote("https://x/y.git#v1"), "'https://x/y.git#v1'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    /// A tar.gz of `(path, contents)` regular files, written with raw header names so that
    /// hostile paths can be made.
    fn source_archive(path: &Path, files: &[(&str, &str)]) {
        let gz = flate2::write::GzEncoder::new(
            fs::File::create(path).expect("create"),
            flate2::Compression::fast(),
        );
        let mut tar = tar::Builder::new(gz);
        for (name, contents) in files {
            let mut h = tar::Header::new_gnu();
            h.as_gnu_mut().expect("gnu").name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_mode(0o644);
            h.set_size(contents.len() as u64);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            tar.append(&h, contents.as_bytes()).expect("append");
        }
        tar.into_inner().expect("tar").finish().expect("gz");
    }

    #[test]
    fn uploaded_source_is_unpacked_under_app_and_hostile_paths_are_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let good = tmp.path().join("good.tgz");
        source_archive(&good, &[("Procfile", "web: x\n"), ("./lib/a.rb", "1")]);
        let app = unpack_source(&good, &tmp.path().join("w1")).expect("unpack");
        assert!(app.ends_with("app"));
        assert_eq!(
            fs::read_to_string(app.join("Procfile")).expect("read"),
            "web: x\n"
        );
        assert_eq!(fs::read_to_string(app.join("lib/a.rb")).expect("read"), "1");
        for bad in ["../evil", "/etc/evil", "a/../../evil"] {
            let archive = tmp.path().join("bad.tgz");
            source_archive(&archive, &[("ok", "1"), (bad, "x")]);
            let err = unpack_source(&archive, &tmp.path().join("w2")).expect_err(bad);
            assert!(
                matches!(err, BuildError::SourceEntry { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn build_dyno_mounts_only_out_and_cache_writable() {
        let state = tempfile::tempdir().expect("tempdir");
        let src = tempfile::tempdir().expect("tempdir");
        fs::write(src.path().join("Procfile"), "web: true\n").expect("write");
        let host = HostConfig::with_state_dir(state.path());
        let req = BuildRequest {
            source: src.path().to_path_buf(),
            stack: "testing".into(),
            size: DynoSize::Standard2X,
            env: BTreeMap::from([("SECRET".to_string(), "s3".to_string())]),
            buildpacks: vec![],
            cache_dir: state.path().join("cache"),
            slugbuilder: PathBuf::from("/bin/true"),
            buildpacks_dir: src.path().to_path_buf(),
            timeout: Duration::from_secs(60),
        };
        let b = prepare(&host, "build-x", &req).expect("prepare");
        let writable: Vec<_> = b
            .dyno
            .mounts
            .iter()
            .filter(|m| !m.readonly)
            .map(|m| m.destination.clone())
            .collect();
        assert_eq!(writable, vec![PathBuf::from(OUT), PathBuf::from(CACHE)]);
        assert_eq!(
            fs::read_to_string(b.work.join("env/SECRET")).expect("env"),
            "s3"
        );
        assert!(b.dyno.command.starts_with(BIN) && b.dyno.command.contains("--in-place"));
        assert!(b.dyno.slug.as_ref().is_some_and(|s| s.path.exists()));
    }
}
