//! A whole build, in Heroku's slug compiler's order:
//!
//! ```text
//! source ──copy──▶ build dir ──.slugignore──▶ detect ──▶ compile (each buildpack, sourcing the
//! previous ones' `export`) ──▶ release (YAML) ──▶ Procfile over default_process_types
//! ──▶ pack ./app into a temp file ──▶ rename to --out, metadata JSON beside it
//! ```
//!
//! Nothing is written at `--out` unless every step succeeded, so a failed build never leaves
//! a slug that looks good. One deadline covers every step; each script is killed with its
//! whole process group when it passes.
//!
//! Paths are all arguments (build, cache, env, output, buildpacks) so the same code runs on a
//! host or inside a build dyno with the source at `/app` ([`BuildDir::InPlace`]).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::buildpack::{self, Buildpack, BuildpackError, BuildpackSource, Release, BUILTIN_ORDER};
use crate::fsutil;
use crate::pack::{self, PackError, PackOptions};
use crate::process::RunError;
use crate::procfile::{self, Procfile, ProcfileError};
use crate::slugignore::{self, SlugignoreError};

/// Heroku's compressed slug size limit.
pub const DEFAULT_MAX_SLUG_SIZE: u64 = 500 * 1024 * 1024;

/// Heroku's build time limit.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Where the buildpacks compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildDir {
    /// A copy of the source in a temporary directory, removed after the build (the default
    /// on a host: the source is left untouched).
    Temp,
    /// A copy of the source at this path, which must be absent or empty (e.g. `/app` when
    /// the source was unpacked elsewhere), left in place after the build.
    At(PathBuf),
    /// The source directory itself (inside a build dyno whose source is already at `/app`).
    InPlace,
}

/// Everything a build needs.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The app's source.
    pub src_dir: PathBuf,
    /// Where the slug goes; the metadata goes beside it ([`metadata_path`]).
    pub out: PathBuf,
    /// Buildpacks to run in order (see [`BuildpackSource::parse`]); empty means detect one of
    /// the built-ins.
    pub buildpacks: Vec<String>,
    /// The built-in buildpacks' directory, or `None` to look in the usual places
    /// ([`buildpack::find_builtins_dir`]).
    pub builtins_dir: Option<PathBuf>,
    /// `CACHE_DIR` for `bin/compile`, kept between builds of one app; `None` gives an empty
    /// one that is thrown away.
    pub cache_dir: Option<PathBuf>,
    /// `ENV_DIR`: one file per config var; `None` gives an empty one.
    pub env_dir: Option<PathBuf>,
    /// Where git buildpacks are cloned and kept; `None` clones them afresh for this build.
    pub git_cache: Option<PathBuf>,
    pub build_dir: BuildDir,
    /// `STACK` for the buildpacks and the slug's metadata.
    pub stack: String,
    /// `SOURCE_VERSION`; `None` uses the source's git `HEAD` if it is a git work tree.
    pub source_version: Option<String>,
    pub timeout: Duration,
    pub max_slug_size: u64,
}

impl BuildOptions {
    /// Options with Heroku's defaults for building `src_dir` into `out`.
    pub fn new(src_dir: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            src_dir: src_dir.into(),
            out: out.into(),
            buildpacks: Vec::new(),
            builtins_dir: None,
            cache_dir: None,
            env_dir: None,
            git_cache: None,
            build_dir: BuildDir::Temp,
            stack: "bookworm".to_owned(),
            source_version: None,
            timeout: DEFAULT_TIMEOUT,
            max_slug_size: DEFAULT_MAX_SLUG_SIZE,
        }
    }
}

/// `slug.json`: defined with the dyno vocabulary, which the agent and the scheduler read it
/// with (read back through [`crate::metadata::parse`]).
pub use manifold_dyno::slug::{BuildpackInfo, SlugMetadata};

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot prepare {what} at {}", path.display())]
    Prepare {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("build directory {} is not empty", path.display())]
    BuildDirNotEmpty { path: PathBuf },
    #[error(
        "no buildpack detected this app (tried {}): add a Procfile or choose a buildpack with --buildpack",
        tried.join(", ")
    )]
    NoBuildpackDetected { tried: Vec<String> },
    #[error("buildpack {buildpack} does not detect this app (its bin/detect said no)")]
    NotDetected { buildpack: String },
    #[error(
        "failed to compile {name} app: buildpack {buildpack} bin/compile exited with {status}"
    )]
    CompileFailed {
        name: String,
        buildpack: String,
        status: ExitStatus,
    },
    #[error("build exceeded the time limit of {}", humantime::format_duration(*limit))]
    TimedOut { limit: Duration },
    #[error(transparent)]
    Slugignore(#[from] SlugignoreError),
    #[error(transparent)]
    Buildpack(BuildpackError),
    #[error(transparent)]
    Procfile(#[from] ProcfileError),
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error("cannot write {}", path.display())]
    Output { path: PathBuf, source: io::Error },
    #[error("cannot write the build log")]
    Log { source: io::Error },
}

/// The metadata file for slug `out`: `slug.tgz` and `slug.tar.gz` → `slug.json`.
pub fn metadata_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name
        .strip_suffix(".tar.gz")
        .or_else(|| name.strip_suffix(".tgz"))
        .map(str::to_owned);
    match stem {
        Some(stem) => out.with_file_name(format!("{stem}.json")),
        None => out.with_extension("json"),
    }
}

/// Heroku's build log style: a step.
fn step(log: &mut dyn Write, text: impl std::fmt::Display) -> Result<(), BuildError> {
    writeln!(log, "-----> {text}")
        .and_then(|()| log.flush())
        .map_err(|source| BuildError::Log { source })
}

/// Heroku's build log style: a detail under a step, indented 7 spaces.
fn detail(log: &mut dyn Write, text: impl std::fmt::Display) -> Result<(), BuildError> {
    writeln!(log, "       {text}")
        .and_then(|()| log.flush())
        .map_err(|source| BuildError::Log { source })
}

/// Sizes the way Heroku prints them (`Done: 12.3M`).
fn human_size(bytes: u64) -> String {
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut size = bytes as f64 / 1024.0;
    for unit in ["K", "M"] {
        if size < 1024.0 {
            return format!("{size:.1}{unit}");
        }
        size /= 1024.0;
    }
    format!("{size:.1}G")
}

/// Creates `path` if needed and returns it absolute, since scripts may change directory.
fn prepare_dir(what: &'static str, path: &Path) -> Result<PathBuf, BuildError> {
    let error = |source| BuildError::Prepare {
        what,
        path: path.to_owned(),
        source,
    };
    fs::create_dir_all(path).map_err(error)?;
    path.canonicalize().map_err(error)
}

/// The source's git commit, if the source is the top of a git work tree (a subdirectory of
/// some repository, like `examples/` here, has no version of its own).
fn git_head(src: &Path) -> Option<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(src)
        .args([
            "rev-parse",
            "--show-toplevel",
            "--verify",
            "--quiet",
            "HEAD",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let mut lines = text.lines();
    let top = Path::new(lines.next()?).canonicalize().ok()?;
    let head = lines.next()?.trim();
    (top == src && !head.is_empty()).then(|| head.to_owned())
}

/// What every step of one build shares.
struct Build<'a> {
    options: &'a BuildOptions,
    deadline: Instant,
    /// The work directory: buildpack copies, and the defaults for the other directories.
    work: &'a Path,
    build_dir: PathBuf,
    cache_dir: PathBuf,
    env_dir: PathBuf,
    git_cache: PathBuf,
    /// `STACK` and `SOURCE_VERSION`.
    env: Vec<(String, String)>,
}

/// Builds a slug; see the module documentation for the steps. The build log (buildpack
/// output included) goes to `log` as it happens.
pub fn build(options: &BuildOptions, log: &mut dyn Write) -> Result<SlugMetadata, BuildError> {
    let started = Instant::now();
    let work = tempfile::Builder::new()
        .prefix("slugbuilder-")
        .tempdir()
        .map_err(|source| BuildError::Prepare {
            what: "a work directory",
            path: std::env::temp_dir(),
            source,
        })?;
    let src = options
        .src_dir
        .canonicalize()
        .map_err(|source| BuildError::Prepare {
            what: "the source",
            path: options.src_dir.clone(),
            source,
        })?;
    let build_dir = match &options.build_dir {
        BuildDir::InPlace => src.clone(),
        BuildDir::Temp => copy_source(&src, &work.path().join("build"))?,
        BuildDir::At(dir) => {
            let empty = fs::read_dir(dir).map_or(true, |mut entries| entries.next().is_none());
            if !empty {
                return Err(BuildError::BuildDirNotEmpty { path: dir.clone() });
            }
            copy_source(&src, dir)?
        }
    };
    let or_work =
        |dir: &Option<PathBuf>, name: &str| dir.clone().unwrap_or_else(|| work.path().join(name));
    let env_dir = match &options.env_dir {
        // A missing env dir is a mistake in the caller, not something to create.
        Some(dir) => dir.canonicalize().map_err(|source| BuildError::Prepare {
            what: "the env directory",
            path: dir.clone(),
            source,
        })?,
        None => prepare_dir("the env directory", &work.path().join("env"))?,
    };
    let commit = options.source_version.clone().or_else(|| git_head(&src));
    let mut env = vec![("STACK".to_owned(), options.stack.clone())];
    env.extend(
        commit
            .iter()
            .map(|c| ("SOURCE_VERSION".to_owned(), c.clone())),
    );
    let b = Build {
        options,
        deadline: started + options.timeout,
        work: work.path(),
        build_dir,
        cache_dir: prepare_dir("the cache directory", &or_work(&options.cache_dir, "cache"))?,
        env_dir,
        git_cache: prepare_dir("the buildpack cache", &or_work(&options.git_cache, "git"))?,
        env,
    };

    step(log, format_args!("Building on the {} stack", options.stack))?;
    b.apply_slugignore(log)?;
    // A broken Procfile fails now rather than after a long compile. It is read again after
    // compile, since a buildpack may write or change it.
    b.read_procfile()?;
    let chosen = b.choose_buildpacks(log)?;
    let (release, buildpacks) = b.compile(&chosen, log)?;
    let process_types = b.process_types(release.default_process_types, log)?;

    step(log, "Compressing...")?;
    let out = &options.out;
    let out_dir = match out.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&out_dir).map_err(output_error(&out_dir))?;
    let slug_tmp = temp_beside(&out_dir, ".tgz")?;
    let packed = pack::pack(
        &b.build_dir,
        slug_tmp.path(),
        &PackOptions {
            max_size: Some(options.max_slug_size),
            ..PackOptions::default()
        },
    )?;
    if Instant::now() > b.deadline {
        return Err(BuildError::TimedOut {
            limit: options.timeout,
        });
    }
    detail(log, format_args!("Done: {}", human_size(packed.size)))?;

    let metadata = SlugMetadata {
        process_types,
        buildpacks,
        stack: options.stack.clone(),
        commit,
        sha256: packed.sha256,
        size: packed.size,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        config_vars: release.config_vars,
        addons: release.addons,
    };
    let json_path = metadata_path(out);
    let mut json_tmp = temp_beside(&out_dir, ".json")?;
    serde_json::to_writer_pretty(&mut json_tmp, &metadata)
        .map_err(io::Error::from)
        .and_then(|()| json_tmp.write_all(b"\n"))
        .map_err(output_error(&json_path))?;
    slug_tmp
        .persist(out)
        .map_err(|e| e.error)
        .map_err(output_error(out))?;
    json_tmp
        .persist(&json_path)
        .map_err(|e| e.error)
        .map_err(output_error(&json_path))?;
    step(
        log,
        format_args!(
            "Slug {} ({}, sha256 {}) built in {:.1}s",
            out.display(),
            human_size(metadata.size),
            &metadata.sha256[..12],
            started.elapsed().as_secs_f64()
        ),
    )?;
    Ok(metadata)
}

impl Build<'_> {
    /// Lifts a buildpack error, turning a script killed at the deadline into the build's own
    /// time-limit error.
    fn bp_error(&self, error: BuildpackError) -> BuildError {
        match error {
            BuildpackError::Run(RunError::TimedOut { .. }) => BuildError::TimedOut {
                limit: self.options.timeout,
            },
            BuildpackError::Run(RunError::Log { source }) => BuildError::Log { source },
            e => BuildError::Buildpack(e),
        }
    }

    fn apply_slugignore(&self, log: &mut dyn Write) -> Result<(), BuildError> {
        let ignored = slugignore::apply(&self.build_dir)?;
        if ignored.removed.is_empty() && ignored.skipped_negations.is_empty() {
            return Ok(());
        }
        step(log, "Applying .slugignore")?;
        let count = ignored.removed.len();
        let plural = if count == 1 { "" } else { "s" };
        detail(log, format_args!("Removed {count} path{plural}"))?;
        for line in &ignored.skipped_negations {
            detail(
                log,
                format_args!("Warning: line {line}: `!` patterns are not supported; skipped"),
            )?;
        }
        Ok(())
    }

    fn read_procfile(&self) -> Result<Procfile, BuildError> {
        let path = self.build_dir.join("Procfile");
        if path.exists() {
            Ok(procfile::read(&path)?)
        } else {
            Ok(Procfile::default())
        }
    }

    /// Each named buildpack, which must accept the app; or else the first built-in that does.
    /// Returns them with the names their `bin/detect` printed.
    fn choose_buildpacks(
        &self,
        log: &mut dyn Write,
    ) -> Result<Vec<(Buildpack, String)>, BuildError> {
        let builtins_dir = self.options.builtins_dir.as_deref();
        let mut chosen = Vec::new();
        if self.options.buildpacks.is_empty() {
            step(log, "Determining which buildpack to use for this app")?;
            let builtins =
                buildpack::find_builtins_dir(builtins_dir).map_err(|e| self.bp_error(e))?;
            for name in BUILTIN_ORDER {
                let pack =
                    buildpack::builtin(&builtins, name, name).map_err(|e| self.bp_error(e))?;
                if let Some(detected) = self.detect(&pack, log)? {
                    chosen.push((pack, detected));
                    return Ok(chosen);
                }
            }
            return Err(BuildError::NoBuildpackDetected {
                tried: BUILTIN_ORDER.iter().map(|s| (*s).to_owned()).collect(),
            });
        }
        step(log, "Using buildpacks:")?;
        for (i, spec) in self.options.buildpacks.iter().enumerate() {
            detail(log, format_args!("{}. {spec}", i + 1))?;
        }
        for spec in &self.options.buildpacks {
            let source = BuildpackSource::parse(spec).map_err(|e| self.bp_error(e))?;
            if let BuildpackSource::Git { url, .. } = &source {
                step(log, format_args!("Fetching buildpack {url}"))?;
            }
            let pack = buildpack::resolve(
                &source,
                spec,
                builtins_dir,
                &self.git_cache,
                self.deadline,
                log,
            )
            .map_err(|e| self.bp_error(e))?;
            let detected = self
                .detect(&pack, log)?
                .ok_or_else(|| BuildError::NotDetected {
                    buildpack: spec.clone(),
                })?;
            chosen.push((pack, detected));
        }
        Ok(chosen)
    }

    fn detect(&self, pack: &Buildpack, log: &mut dyn Write) -> Result<Option<String>, BuildError> {
        pack.detect(&self.build_dir, &self.env, self.deadline, log)
            .map_err(|e| self.bp_error(e))
    }

    /// Compiles with each buildpack in turn, from a private copy (see `Buildpack::copy_to`),
    /// sourcing the exports of the ones before it, then gathers their releases: later
    /// buildpacks' process types and config vars over earlier ones', add-ons in order.
    fn compile(
        &self,
        chosen: &[(Buildpack, String)],
        log: &mut dyn Write,
    ) -> Result<(Release, Vec<BuildpackInfo>), BuildError> {
        let mut exports = Vec::new();
        let mut release = Release::default();
        let mut infos = Vec::new();
        for (index, (pack, name)) in chosen.iter().enumerate() {
            let pack = pack
                .copy_to(&self.work.join(format!("buildpack-{index}")))
                .map_err(|e| self.bp_error(e))?;
            step(log, format_args!("{name} app detected"))?;
            let dirs = [&*self.build_dir, &self.cache_dir, &self.env_dir];
            let status = pack
                .compile(dirs, &exports, &self.env, self.deadline, log)
                .map_err(|e| self.bp_error(e))?;
            if !status.success() {
                writeln!(log, " !     Push rejected, failed to compile {name} app.")
                    .map_err(|source| BuildError::Log { source })?;
                return Err(BuildError::CompileFailed {
                    name: name.clone(),
                    buildpack: pack.source.clone(),
                    status,
                });
            }
            exports.extend(pack.export_file());
            let declared = pack
                .release(&self.build_dir, &self.env, self.deadline, log)
                .map_err(|e| self.bp_error(e))?;
            release
                .default_process_types
                .extend(declared.default_process_types);
            release.config_vars.extend(declared.config_vars);
            for addon in declared.addons {
                if !release.addons.contains(&addon) {
                    release.addons.push(addon);
                }
            }
            infos.push(BuildpackInfo {
                name: name.clone(),
                url: pack.source.clone(),
            });
        }
        Ok((release, infos))
    }

    /// The Procfile's process types over the buildpacks' defaults, logged as Heroku does.
    fn process_types(
        &self,
        defaults: BTreeMap<String, String>,
        log: &mut dyn Write,
    ) -> Result<BTreeMap<String, String>, BuildError> {
        step(log, "Discovering process types")?;
        let procfile = self.read_procfile()?;
        let list = |names: Vec<&str>| {
            if names.is_empty() {
                "(none)".to_owned()
            } else {
                names.join(", ")
            }
        };
        detail(
            log,
            format_args!(
                "Procfile declares types     -> {}",
                list(procfile.names().collect())
            ),
        )?;
        detail(
            log,
            format_args!(
                "Default types for buildpack -> {}",
                list(defaults.keys().map(String::as_str).collect())
            ),
        )?;
        let mut types = defaults;
        types.extend(procfile.iter().map(|(n, c)| (n.to_owned(), c.to_owned())));
        Ok(types)
    }
}

/// A temporary file beside the output, renamed over it once complete.
fn temp_beside(dir: &Path, suffix: &str) -> Result<tempfile::NamedTempFile, BuildError> {
    tempfile::Builder::new()
        .prefix(".slugbuilder-")
        .suffix(suffix)
        .tempfile_in(dir)
        .map_err(output_error(dir))
}

fn output_error(path: &Path) -> impl FnOnce(io::Error) -> BuildError {
    let path = path.to_owned();
    move |source| BuildError::Output { path, source }
}

/// Copies the source to `dest` and returns `dest` absolute.
fn copy_source(src: &Path, dest: &Path) -> Result<PathBuf, BuildError> {
    let error = |source| BuildError::Prepare {
        what: "the build directory",
        path: dest.to_owned(),
        source,
    };
    fsutil::copy_tree(src, dest, &[]).map_err(error)?;
    dest.canonicalize().map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_sits_beside_the_slug() {
        assert_eq!(
            metadata_path(Path::new("out/slug.tgz")),
            Path::new("out/slug.json")
        );
        assert_eq!(metadata_path(Path::new("a.tar.gz")), Path::new("a.json"));
        assert_eq!(metadata_path(Path::new("slug")), Path::new("slug.json"));
        assert_eq!(metadata_path(Path::new("x.bin")), Path::new("x.json"));
    }

    #[test]
    fn sizes_print_like_heroku() {
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(2048), "2.0K");
        assert_eq!(human_size(12_900_000), "12.3M");
        assert_eq!(human_size(3 << 30), "3.0G");
    }
}
