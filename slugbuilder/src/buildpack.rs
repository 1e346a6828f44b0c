//! Classic buildpacks: where they come from and how their three scripts are run.
//!
//! A buildpack is a directory with `bin/detect BUILD_DIR`, `bin/compile BUILD_DIR CACHE_DIR
//! ENV_DIR` and optionally `bin/release BUILD_DIR`. It is named on the command line as a
//! directory, a git URL (`https://…/pack.git#v1.2`, `file:///…`), or the name of one of the
//! built-in buildpacks shipped in the repository's `buildpacks/` directory.
//!
//! Every buildpack runs from a private copy made for the build ([`Buildpack::copy_to`]),
//! because `bin/compile` may write into its own directory (the `export` file that the next
//! buildpack sources) and the original may be read-only or shared by concurrent builds.
//! Scripts run with the build directory as their working directory, for the third-party
//! buildpacks that rely on it, and with `STACK` and `SOURCE_VERSION` in their environment.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fsutil;
use crate::process::{self, RunError, Stdout};

/// Built-in buildpacks in detection order: the first whose `bin/detect` says yes builds an
/// app that names no buildpack. The generic one detects any app with a Procfile, so it must
/// come last.
pub const BUILTIN_ORDER: [&str; 3] = ["python", "nodejs", "generic"];

/// Heroku's names for its official buildpacks (as in `heroku buildpacks:set heroku/python`,
/// an app.json, or Heroku's buildpack registry URNs), each with the built-in that does the same
/// job, so an app set up for Heroku names buildpacks that work here.
pub const HEROKU_ALIASES: [(&str, &str); 4] = [
    ("heroku/python", "python"),
    ("heroku/nodejs", "nodejs"),
    ("urn:buildpack:heroku/python", "python"),
    ("urn:buildpack:heroku/nodejs", "nodejs"),
];

/// The built-in a spec names: a built-in's own name or one of [`HEROKU_ALIASES`].
pub fn builtin_name(spec: &str) -> Option<&'static str> {
    BUILTIN_ORDER
        .iter()
        .find(|name| **name == spec)
        .copied()
        .or_else(|| {
            HEROKU_ALIASES
                .iter()
                .find(|(alias, _)| *alias == spec)
                .map(|(_, name)| *name)
        })
}

/// The directory beside the built-ins holding the shell library they share (`lib/stdlib.sh`),
/// which each built-in's `bin/compile` sources as `$BP_DIR/../lib/stdlib.sh`.
pub const SHARED_LIB: &str = "lib";

/// The file a buildpack's `bin/compile` may write to pass environment to later buildpacks.
pub const EXPORT_FILE: &str = "export";

/// How a buildpack was named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildpackSource {
    /// A directory on this machine.
    Dir(PathBuf),
    /// A git repository, at `reference` (a branch, tag or commit) or its default branch.
    Git {
        url: String,
        reference: Option<String>,
    },
    /// One of [`BUILTIN_ORDER`] (also when named by one of [`HEROKU_ALIASES`]).
    Builtin(String),
}

impl BuildpackSource {
    /// Reads a `--buildpack` argument: Heroku's name for a built-in (`heroku/python`, never a
    /// directory of that name) is that built-in, a URL (`scheme://…` or `git@host:…`, with an
    /// optional `#ref`) is git, an existing directory is a directory, and a bare built-in name
    /// is that built-in.
    pub fn parse(spec: &str) -> Result<Self, BuildpackError> {
        if let Some((_, name)) = HEROKU_ALIASES.iter().find(|(alias, _)| *alias == spec) {
            return Ok(Self::Builtin((*name).to_owned()));
        }
        if spec.contains("://") || spec.starts_with("git@") {
            let (url, reference) = match spec.rsplit_once('#') {
                Some((url, reference)) if !reference.is_empty() => {
                    (url.to_owned(), Some(reference.to_owned()))
                }
                Some((url, _)) => (url.to_owned(), None),
                None => (spec.to_owned(), None),
            };
            return Ok(Self::Git { url, reference });
        }
        let path = Path::new(spec);
        if path.is_dir() {
            return Ok(Self::Dir(path.to_owned()));
        }
        if let Some(name) = builtin_name(spec) {
            return Ok(Self::Builtin(name.to_owned()));
        }
        Err(BuildpackError::Unknown {
            spec: spec.to_owned(),
        })
    }

    /// Reads a buildpack named by someone other than the host's operator (an API user):
    /// only a built-in name or a git URL whose scheme is one of [`REMOTE_SCHEMES`] (or
    /// `git@host:path`). Never a directory: the agent would mount a host directory into the
    /// build; never `file://` or an option-like value that `git clone` could misread.
    pub fn parse_remote(spec: &str) -> Result<Self, BuildpackError> {
        let refused = || BuildpackError::NotRemote {
            spec: spec.to_owned(),
        };
        if let Some(name) = builtin_name(spec) {
            return Ok(Self::Builtin(name.to_owned()));
        }
        let well_formed = spec.len() <= MAX_REMOTE_SPEC_BYTES
            && !spec.chars().any(|c| c.is_whitespace() || c.is_control());
        let remote = REMOTE_SCHEMES
            .iter()
            .any(|scheme| spec.strip_prefix(scheme).is_some_and(|rest| rest.len() > 1))
            || spec
                .strip_prefix("git@")
                .is_some_and(|rest| rest.contains(':') && !rest.starts_with(':'));
        if !(well_formed && remote) {
            return Err(refused());
        }
        Self::parse(spec)
    }
}

/// The git URL schemes an API user may name a buildpack with.
pub const REMOTE_SCHEMES: [&str; 4] = ["https://", "http://", "git://", "ssh://"];

/// The longest buildpack URL accepted from an API user.
const MAX_REMOTE_SPEC_BYTES: usize = 2048;

/// A buildpack ready to run: its directory and how it was named.
#[derive(Debug, Clone)]
pub struct Buildpack {
    /// The buildpack's root, holding `bin/`.
    pub dir: PathBuf,
    /// How the user named it (a path, a URL or a built-in name), for the log and metadata.
    pub source: String,
    /// For a built-in: the built-ins' shared shell library ([`SHARED_LIB`]), copied beside
    /// the buildpack's private copy so that `$BP_DIR/../lib` still finds it.
    pub shared_lib: Option<PathBuf>,
}

/// What `bin/release` declares.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// Process types for the app when its Procfile does not name them.
    #[serde(default, deserialize_with = "null_as_default")]
    pub default_process_types: BTreeMap<String, String>,
    /// Config vars to set on the app's first release (legacy on Heroku, kept for old packs).
    #[serde(default, deserialize_with = "null_as_default")]
    pub config_vars: BTreeMap<String, String>,
    /// Add-ons to provision on the app's first deploy.
    #[serde(default, deserialize_with = "null_as_default")]
    pub addons: Vec<String>,
}

/// `key:` with no value is YAML null; treat it as empty rather than reject the release.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Why a buildpack could not be fetched or run.
#[derive(Debug, thiserror::Error)]
pub enum BuildpackError {
    #[error(
        "buildpack {spec:?} is neither a directory, a git URL nor a built-in ({})",
        BUILTIN_ORDER.join(", ")
    )]
    Unknown { spec: String },
    #[error(
        "buildpack {spec:?} is refused: name a built-in ({}, or Heroku's {}) or a git URL (https://, http://, git://, ssh:// or git@host:path)",
        BUILTIN_ORDER.join(", "),
        HEROKU_ALIASES[..2].iter().map(|(alias, _)| *alias).collect::<Vec<_>>().join(", ")
    )]
    NotRemote { spec: String },
    #[error(
        "built-in buildpacks not found (looked in {}); pass --buildpacks-dir or set MANIFOLD_BUILDPACKS",
        searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NoBuiltins { searched: Vec<PathBuf> },
    #[error("built-in buildpack {name:?} not found in {}", dir.display())]
    MissingBuiltin { name: String, dir: PathBuf },
    #[error("buildpack {source_spec} has no executable bin/{script}")]
    MissingScript {
        source_spec: String,
        script: &'static str,
    },
    #[error("cannot fetch buildpack {url}: git {step} failed ({status})")]
    Git {
        url: String,
        step: &'static str,
        status: std::process::ExitStatus,
    },
    #[error("cannot read or copy buildpack {source_spec}")]
    Copy {
        source_spec: String,
        source: io::Error,
    },
    #[error("buildpack {source_spec}: bin/release printed invalid YAML")]
    ReleaseYaml {
        source_spec: String,
        source: serde_norway::Error,
    },
    #[error("buildpack {source_spec}: bin/release failed ({status})")]
    ReleaseFailed {
        source_spec: String,
        status: std::process::ExitStatus,
    },
    #[error(transparent)]
    Run(#[from] RunError),
}

/// Finds the directory of the built-in buildpacks: `explicit` (from `--buildpacks-dir` or
/// `MANIFOLD_BUILDPACKS`) if given; else beside the binary (`buildpacks/`, as in a container
/// image or a release tarball), in `../share/manifold/buildpacks` from the binary (a system
/// install), or the repository's own `buildpacks/` (a `cargo run` from a checkout).
pub fn find_builtins_dir(explicit: Option<&Path>) -> Result<PathBuf, BuildpackError> {
    let mut candidates = Vec::new();
    match explicit {
        Some(dir) => candidates.push(dir.to_owned()),
        None => {
            if let Some(bin) = std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(Path::to_owned))
            {
                candidates.push(bin.join("buildpacks"));
                candidates.push(bin.join("../share/manifold/buildpacks"));
            }
            candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../buildpacks"));
        }
    }
    // Absolute, since scripts run with the build directory as their working directory.
    candidates
        .iter()
        .filter(|dir| {
            BUILTIN_ORDER
                .iter()
                .all(|name| dir.join(name).join("bin").is_dir())
        })
        .find_map(|dir| dir.canonicalize().ok())
        .ok_or(BuildpackError::NoBuiltins {
            searched: candidates,
        })
}

/// Makes a buildpack from its source: directories and built-ins are used where they are (the
/// built-ins found with [`find_builtins_dir`]`(builtins_dir)`), git URLs are fetched into
/// `git_cache` (one clone per URL and ref, updated on each use).
pub fn resolve(
    source: &BuildpackSource,
    spec: &str,
    builtins_dir: Option<&Path>,
    git_cache: &Path,
    deadline: Instant,
    log: &mut dyn Write,
) -> Result<Buildpack, BuildpackError> {
    let dir = match source {
        BuildpackSource::Dir(dir) => dir.canonicalize().map_err(|source| BuildpackError::Copy {
            source_spec: spec.to_owned(),
            source,
        })?,
        BuildpackSource::Builtin(name) => {
            return builtin(&find_builtins_dir(builtins_dir)?, name, spec);
        }
        BuildpackSource::Git { url, reference } => {
            fetch_git(url, reference.as_deref(), git_cache, deadline, log)?
        }
    };
    Ok(Buildpack {
        dir,
        source: spec.to_owned(),
        shared_lib: None,
    })
}

/// Built-in buildpack `name` from `builtins_dir`, named `spec` by the user, with the
/// built-ins' shared library.
pub fn builtin(builtins_dir: &Path, name: &str, spec: &str) -> Result<Buildpack, BuildpackError> {
    let lib = builtins_dir.join(SHARED_LIB);
    Ok(Buildpack {
        dir: builtin_dir(builtins_dir, name)?,
        source: spec.to_owned(),
        shared_lib: lib.is_dir().then_some(lib),
    })
}

/// The directory of built-in buildpack `name`.
pub fn builtin_dir(builtins_dir: &Path, name: &str) -> Result<PathBuf, BuildpackError> {
    let dir = builtins_dir.join(name);
    if dir.join("bin").is_dir() {
        Ok(dir)
    } else {
        Err(BuildpackError::MissingBuiltin {
            name: name.to_owned(),
            dir: builtins_dir.to_owned(),
        })
    }
}

/// Fetches `url` at `reference` (or the remote's HEAD) with a depth-1 fetch into a clone
/// kept under `git_cache`, and checks it out clean.
///
/// `init` + `fetch --depth 1` + `checkout FETCH_HEAD` does what `clone --depth 1 --branch`
/// does, but also accepts a commit id as the ref and updates an existing clone in place.
fn fetch_git(
    url: &str,
    reference: Option<&str>,
    git_cache: &Path,
    deadline: Instant,
    log: &mut dyn Write,
) -> Result<PathBuf, BuildpackError> {
    let key = format!("{url}#{}", reference.unwrap_or(""));
    let digest = Sha256::digest(key.as_bytes());
    let dir = git_cache.join(&crate::pack::hex(&digest)[..16]);
    let copy_error = |source| BuildpackError::Copy {
        source_spec: url.to_owned(),
        source,
    };
    fs::create_dir_all(&dir).map_err(copy_error)?;
    let fresh = !dir.join(".git").exists();
    let mut steps: Vec<(&'static str, Vec<&str>)> = Vec::new();
    if fresh {
        steps.push(("init", vec!["init", "--quiet"]));
        steps.push(("remote", vec!["remote", "add", "origin", url]));
    }
    steps.push((
        "fetch",
        vec![
            "fetch",
            "--quiet",
            "--depth",
            "1",
            "origin",
            reference.unwrap_or("HEAD"),
        ],
    ));
    steps.push((
        "checkout",
        vec!["checkout", "--quiet", "--force", "FETCH_HEAD"],
    ));
    // A previous build's `export` or other leftovers must not leak into this one.
    steps.push(("clean", vec!["clean", "--quiet", "-dfx"]));
    for (step, args) in steps {
        let mut command = Command::new("git");
        command
            .arg("-C")
            .arg(&dir)
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0");
        let finished = process::run(&mut command, Stdout::Log, deadline, log)?;
        if !finished.status.success() {
            if fresh {
                // A half-made clone would be mistaken for a good one next time.
                let _ = fs::remove_dir_all(&dir);
            }
            return Err(BuildpackError::Git {
                url: url.to_owned(),
                step,
                status: finished.status,
            });
        }
    }
    Ok(dir)
}

impl Buildpack {
    /// Copies the buildpack into `dest/pack` (`dest` must not exist), leaving out `.git`; a
    /// built-in's shared library goes to `dest/lib`, where `pack/../lib` finds it.
    pub fn copy_to(&self, dest: &Path) -> Result<Buildpack, BuildpackError> {
        let copy_error = |source| BuildpackError::Copy {
            source_spec: self.source.clone(),
            source,
        };
        fs::create_dir(dest).map_err(copy_error)?;
        let pack = dest.join("pack");
        fsutil::copy_tree(&self.dir, &pack, &[".git"]).map_err(copy_error)?;
        let shared_lib = match &self.shared_lib {
            Some(lib) => {
                let copy = dest.join(SHARED_LIB);
                fsutil::copy_tree(lib, &copy, &[]).map_err(copy_error)?;
                Some(copy)
            }
            None => None,
        };
        Ok(Buildpack {
            dir: pack,
            source: self.source.clone(),
            shared_lib,
        })
    }

    /// The path of `bin/<name>` if it is an executable file.
    fn script(&self, name: &'static str) -> Option<PathBuf> {
        let path = self.dir.join("bin").join(name);
        let meta = fs::metadata(&path).ok()?;
        (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then_some(path)
    }

    fn require(&self, name: &'static str) -> Result<PathBuf, BuildpackError> {
        self.script(name)
            .ok_or_else(|| BuildpackError::MissingScript {
                source_spec: self.source.clone(),
                script: name,
            })
    }

    /// Runs `bin/detect`: `Some(name)` if it accepts the app. The name is the first line
    /// of its output, or the buildpack directory's name if it printed nothing.
    pub fn detect(
        &self,
        build_dir: &Path,
        env: &[(String, String)],
        deadline: Instant,
        log: &mut dyn Write,
    ) -> Result<Option<String>, BuildpackError> {
        let mut command = Command::new(self.require("detect")?);
        command
            .arg(build_dir)
            .current_dir(build_dir)
            .envs(env.iter().map(|(k, v)| (k, v)));
        let finished = process::run(&mut command, Stdout::Capture, deadline, log)?;
        if !finished.status.success() {
            return Ok(None);
        }
        let stdout = String::from_utf8_lossy(&finished.stdout);
        let name = match stdout.lines().map(str::trim).find(|l| !l.is_empty()) {
            Some(name) => name.to_owned(),
            None => self
                .dir
                .file_name()
                .map_or_else(|| self.source.clone(), |n| n.to_string_lossy().into_owned()),
        };
        Ok(Some(name))
    }

    /// Runs `bin/compile` after sourcing the `export` files of the buildpacks before it, with
    /// its standard output and error merged (in order) into `log`. Returns its exit status.
    pub fn compile(
        &self,
        dirs: [&Path; 3],
        exports: &[PathBuf],
        env: &[(String, String)],
        deadline: Instant,
        log: &mut dyn Write,
    ) -> Result<std::process::ExitStatus, BuildpackError> {
        let script = self.require("compile")?;
        // bash is the classic API's shell: `export` files are bash. `exec 2>&1` keeps the
        // interleaving of the two streams exactly as the script wrote them.
        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg(
                r#"exec 2>&1
while [ "$1" != "--" ]; do . "$1" || exit; shift; done
shift
exec "$@""#,
            )
            .arg("bash")
            .args(exports)
            .arg("--")
            .arg(script)
            .args(dirs)
            .current_dir(dirs[0])
            .envs(env.iter().map(|(k, v)| (k, v)));
        Ok(process::run(&mut command, Stdout::Log, deadline, log)?.status)
    }

    /// Runs `bin/release` if the buildpack has one and parses its YAML.
    pub fn release(
        &self,
        build_dir: &Path,
        env: &[(String, String)],
        deadline: Instant,
        log: &mut dyn Write,
    ) -> Result<Release, BuildpackError> {
        let Some(script) = self.script("release") else {
            return Ok(Release::default());
        };
        let mut command = Command::new(script);
        command
            .arg(build_dir)
            .current_dir(build_dir)
            .envs(env.iter().map(|(k, v)| (k, v)));
        let finished = process::run(&mut command, Stdout::Capture, deadline, log)?;
        if !finished.status.success() {
            return Err(BuildpackError::ReleaseFailed {
                source_spec: self.source.clone(),
                status: finished.status,
            });
        }
        parse_release(&finished.stdout).map_err(|source| BuildpackError::ReleaseYaml {
            source_spec: self.source.clone(),
            source,
        })
    }

    /// The `export` file this buildpack's compile left, if any.
    pub fn export_file(&self) -> Option<PathBuf> {
        let path = self.dir.join(EXPORT_FILE);
        path.is_file().then_some(path)
    }
}

/// Parses `bin/release` output; an empty document is an empty release.
pub fn parse_release(yaml: &[u8]) -> Result<Release, serde_norway::Error> {
    Ok(serde_norway::from_slice::<Option<Release>>(yaml)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_yaml_forms() {
        let full = parse_release(
            b"---\naddons:\n  - heroku-postgresql\nconfig_vars:\n  PORT: 5000\n  LANG: en_US.UTF-8\ndefault_process_types:\n  web: gunicorn -b 0.0.0.0:$PORT app:app\n",
        )
        .expect("full");
        assert_eq!(full.addons, vec!["heroku-postgresql"]);
        assert_eq!(full.config_vars["PORT"], "5000");
        assert_eq!(
            full.default_process_types["web"],
            "gunicorn -b 0.0.0.0:$PORT app:app"
        );
        assert_eq!(parse_release(b"").expect("empty"), Release::default());
        assert_eq!(parse_release(b"---\n").expect("bare"), Release::default());
        let nulls = parse_release(b"default_process_types:\naddons: []\n").expect("nulls");
        assert_eq!(nulls, Release::default());
        assert!(parse_release(b"default_process_types: [unclosed\n").is_err());
    }

    #[test]
    fn buildpack_sources() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = dir.path().to_str().expect("utf8 path");
        assert_eq!(
            BuildpackSource::parse(spec).expect("dir"),
            BuildpackSource::Dir(dir.path().to_owned())
        );
        assert_eq!(
            BuildpackSource::parse("https://example.test/pack.git#v2").expect("git"),
            BuildpackSource::Git {
                url: "https://example.test/pack.git".into(),
                reference: Some("v2".into())
            }
        );
        assert_eq!(
            BuildpackSource::parse("file:///srv/pack").expect("file url"),
            BuildpackSource::Git {
                url: "file:///srv/pack".into(),
                reference: None
            }
        );
        assert_eq!(
            BuildpackSource::parse("python").expect("builtin"),
            BuildpackSource::Builtin("python".into())
        );
        for (alias, name) in HEROKU_ALIASES {
            for parsed in [
                BuildpackSource::parse(alias),
                BuildpackSource::parse_remote(alias),
            ] {
                assert_eq!(parsed.expect(alias), BuildpackSource::Builtin(name.into()));
            }
        }
        assert!(matches!(
            BuildpackSource::parse("no/such/pack"),
            Err(BuildpackError::Unknown { .. })
        ));
        assert!(matches!(
            BuildpackSource::parse("heroku/ruby"),
            Err(BuildpackError::Unknown { .. })
        ));
    }

    #[test]
    fn remote_buildpacks_are_built_ins_and_git_urls_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        for ok in [
            "python",
            "https://example.test/pack.git#v2",
            "git://10.0.0.1:9418/bp.git",
            "ssh://git@example.test/bp.git",
            "git@example.test:org/bp.git",
        ] {
            BuildpackSource::parse_remote(ok).expect(ok);
        }
        let dir = dir.path().to_str().expect("utf8 path");
        for bad in [
            dir,
            "/",
            "file:///srv/pack",
            "-u://x",
            "--upload-pack=touch /tmp/x",
            "https://",
            "https://a b",
            "git@:x",
            "ext::sh -c touch% /tmp/pwned",
            "no/such/pack",
            "heroku/ruby",
            "urn:buildpack:heroku/ruby",
        ] {
            let err = BuildpackSource::parse_remote(bad).expect_err(bad);
            assert!(
                matches!(err, BuildpackError::NotRemote { .. }),
                "{bad}: {err}"
            );
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}
