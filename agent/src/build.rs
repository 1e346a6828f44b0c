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

use crate::dyno::{BindMount, DynoConfig, HostConfig, SlugSource, DYNO_GID, DYNO_UID};
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
        mounts,
        uid: DYNO_UID,
        gid: DYNO_GID,
        host: host.clone(),
    };
    Ok(PreparedBuild { dyno, work, out })
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
