//! Builds in a dyno: the slugbuilder run in isolation, like any other dyno.
//!
//! The app's source becomes the dyno's `/app` (packed as a slug layer, so the overlay gives
//! the build a private writable copy); the slugbuilder binary and the buildpacks are mounted
//! read-only; the output and cache directories are the only host paths the build can write.
//! It runs on the app's stack, as the dyno user, with the size's limits, so that what the
//! buildpacks produce (a Python venv, `node_modules`) fits the stack it will run on.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{chown, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use manifold_dyno::{DynoName, SlugMetadata, BUILD};
use manifold_slugbuilder::metadata::{MetadataError, MAX_METADATA_BYTES};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use sha2::Digest;

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
    /// Which host directories may be mounted into the build as buildpacks.
    pub directory_buildpacks: DirectoryBuildpacks,
    /// The largest slug the build may produce (compressed), checked by the slugbuilder and
    /// again, as the only check that counts, when the agent reads the slug back.
    pub max_slug_bytes: u64,
}

/// Heroku's limit on a compressed slug: 500 MB (the slugbuilder's default too).
pub const DEFAULT_MAX_SLUG_BYTES: u64 = manifold_slugbuilder::build::DEFAULT_MAX_SLUG_SIZE;

/// Where a buildpack named by a host path may come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryBuildpacks {
    /// Any directory: the operator named it on the command line (`manifold-agent build`).
    Anywhere,
    /// Only directories under this root (resolved, so `..` and symlinks cannot leave it):
    /// builds the scheduler asks for name their buildpacks on behalf of API users.
    Under(PathBuf),
    /// No host directory at all.
    None,
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
    #[error("cannot unpack the source")]
    Unpack {
        #[source]
        source: crate::host::slug::SlugError,
    },
    #[error("buildpack directory {path} is not under this host's buildpack root {root}")]
    BuildpackOutsideRoot { path: PathBuf, root: PathBuf },
    #[error("buildpack directory {path} is refused: this host has no buildpack root")]
    DirectoryBuildpack { path: PathBuf },
    #[error(
        "invalid config var name {name:?}: use letters, digits and _, not starting with a digit"
    )]
    ConfigVarName { name: String },
}

/// A prepared build: the dyno to run and where its slug will appear.
#[derive(Debug)]
pub struct PreparedBuild {
    pub dyno: DynoConfig,
    /// Host directory holding the source tarball, env dir and output; remove it when done.
    pub work: PathBuf,
    /// `slug.tgz` and `slug.json` appear here when the build succeeds.
    pub output: OutputDir,
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
    // Whatever is refused after the work directory exists (a config var name, a buildpack
    // outside the operator's root, ...) must not leave the directory behind.
    let prepared = prepare_in(host, id, &work, req);
    if prepared.is_err() {
        if let Err(err) = fs::remove_dir_all(&work) {
            if err.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %work.display(), "cannot remove a refused build's directory: {err}");
            }
        }
    }
    prepared
}

/// [`prepare`]'s steps once its inputs exist, in the build's work directory `work`.
fn prepare_in(
    host: &HostConfig,
    id: &str,
    work: &Path,
    req: &BuildRequest,
) -> Result<PreparedBuild, BuildError> {
    let work = work.to_path_buf();
    let prep = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Prepare { path, source }
    };
    let out = work.join("out");
    let env_dir = work.join("env");
    // The build's directory (its sources, output and config) and the app's build cache each
    // hold at most the build size's disk quota; the build's writable layer is a dyno's.
    let disk = req.size.limits().disk;
    // The build runs as the dyno user of the app's id range: it must own what it writes.
    let (uid, gid) = host.host_ids(DYNO_UID, DYNO_GID);
    // A cache made under another id range (the app's range is new on this host, or dynos
    // shared one range before) is not the build user's to write. It is only a cache: it
    // starts afresh (removed without following any link in it).
    if fs::symlink_metadata(&req.cache_dir).is_ok_and(|m| m.uid() != uid) {
        tracing::info!(
            path = %req.cache_dir.display(),
            "the build cache belongs to another id range; starting it afresh"
        );
        fs::remove_dir_all(&req.cache_dir).map_err(prep(&req.cache_dir))?;
    }
    for dir in [&work, &req.cache_dir] {
        if let Some(parent) = dir.parent() {
            fs::create_dir_all(parent).map_err(prep(parent))?;
        }
        if let crate::host::quota::Made::Unlimited(why) =
            crate::host::quota::limited_dir(dir, disk).map_err(prep(dir))?
        {
            tracing::debug!(path = %dir.display(), "no disk quota: {why}");
        }
    }
    for dir in [&out, &env_dir] {
        fs::create_dir_all(dir).map_err(prep(dir))?;
    }
    // What the build writes (setuid files included) is out of other host users' reach.
    let root_gid = host.host_ids(0, 0).1;
    crate::host::rootfs::close_to_host_users(&work, root_gid).map_err(|e| BuildError::Prepare {
        path: work.clone(),
        source: io::Error::other(e),
    })?;
    for dir in [&out, &req.cache_dir] {
        chown(dir, Some(uid), Some(gid)).map_err(prep(dir))?;
    }
    // The cache holds what the app's builds fetched (with credentials at times): the build
    // user's alone.
    fs::set_permissions(&req.cache_dir, fs::Permissions::from_mode(0o700))
        .map_err(prep(&req.cache_dir))?;
    // Config vars are secrets: readable by the build's user only (0600 files in a 0700
    // directory it owns), never by the host's other users.
    fs::set_permissions(&env_dir, fs::Permissions::from_mode(0o700)).map_err(prep(&env_dir))?;
    chown(&env_dir, Some(uid), Some(gid)).map_err(prep(&env_dir))?;
    for (key, value) in &req.env {
        // The name becomes a file name on the host: only a shell variable name is one.
        let valid = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(BuildError::ConfigVarName { name: key.clone() });
        }
        let file = env_dir.join(key);
        crate::dyno::write_private(&file, value.as_bytes()).map_err(prep(&file))?;
        chown(&file, Some(uid), Some(gid)).map_err(prep(&file))?;
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
        "--max-slug-size".into(),
        req.max_slug_bytes.to_string(),
    ];
    for (i, bp) in req.buildpacks.iter().enumerate() {
        let path = Path::new(bp);
        let arg = if path.is_dir() {
            let source = buildpack_dir(path, &req.directory_buildpacks)?;
            let inside = format!("{CUSTOM}/{i}");
            mounts.push(bind(&source, &inside, true));
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
        name: DynoName::new(BUILD, 1).to_string(),
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
        log_rate: None,
        access: Default::default(),
    };
    let output = OutputDir {
        path: out,
        owner: uid,
        stack: req.stack.clone(),
        max_slug_bytes: req.max_slug_bytes,
    };
    Ok(PreparedBuild { dyno, work, output })
}

/// Resolves a buildpack directory and checks it is one the build may have.
fn buildpack_dir(path: &Path, allowed: &DirectoryBuildpacks) -> Result<PathBuf, BuildError> {
    let resolve = |p: &Path| {
        fs::canonicalize(p).map_err(|source| BuildError::Prepare {
            path: p.to_path_buf(),
            source,
        })
    };
    let resolved = resolve(path)?;
    match allowed {
        DirectoryBuildpacks::Anywhere => Ok(resolved),
        DirectoryBuildpacks::None => Err(BuildError::DirectoryBuildpack {
            path: path.to_path_buf(),
        }),
        DirectoryBuildpacks::Under(root) => {
            let root = resolve(root)?;
            if resolved.starts_with(&root) {
                Ok(resolved)
            } else {
                Err(BuildError::BuildpackOutsideRoot {
                    path: path.to_path_buf(),
                    root,
                })
            }
        }
    }
}

/// A build's output directory on the host, as the agent reads it back after the build.
///
/// Everything in it was written by the build, that is by the app's code, its `.profile` and
/// its buildpacks, running as the build's user; the agent reads it as root. So nothing here
/// is opened by path: the directory is opened once with `O_NOFOLLOW | O_DIRECTORY` and each
/// output by name from it with `O_NOFOLLOW`, after an `fstatat` that does not follow links
/// says it is a regular file (a FIFO or device is never opened at all). The opened file's own
/// `fstat` must then agree (same inode, still regular), be owned by the build's host uid
/// (so no hard link to someone else's file), have one link, and fit the size limit before a
/// byte is read; the slug is then streamed, never read whole into memory.
#[derive(Debug, Clone)]
pub struct OutputDir {
    pub path: PathBuf,
    /// The build's user as a host uid, which owns what an honest build writes.
    pub owner: u32,
    /// The stack the build ran on, which `slug.json` must name.
    pub stack: String,
    pub max_slug_bytes: u64,
}

/// What a finished build produced, checked.
#[derive(Debug)]
pub struct BuildOutputs {
    /// `slug.tgz`, open and rewound; exactly `slug_size` bytes are to be read from it.
    pub slug: fs::File,
    pub slug_size: u64,
    /// Lowercase hex sha256 of those bytes, computed by the agent.
    pub slug_sha256: String,
    /// `slug.json`, validated, and re-serialised from what was validated (so fields the
    /// slugbuilder never writes do not travel on).
    pub metadata: SlugMetadata,
    pub metadata_json: String,
}

/// The kinds of file a build may leave where a regular file is expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Symlink,
    Directory,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
    Unknown,
}

impl std::fmt::Display for FileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Symlink => "a symbolic link",
            Self::Directory => "a directory",
            Self::Fifo => "a FIFO",
            Self::Socket => "a socket",
            Self::CharDevice => "a character device",
            Self::BlockDevice => "a block device",
            Self::Unknown => "of an unknown type",
        })
    }
}

/// Why a build's output was refused.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot open the build's output directory {path}")]
    OpenDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the build's output directory {path} is not a directory owned by the build")]
    DirNotOwned { path: PathBuf },
    #[error("the build left no {name}")]
    Missing { name: &'static str },
    #[error("the build's {name} is {kind}, not a regular file")]
    NotRegular { name: &'static str, kind: FileKind },
    #[error("the build's {name} belongs to host uid {uid}, not to the build's user (host uid {expected})")]
    Owner {
        name: &'static str,
        uid: u32,
        expected: u32,
    },
    #[error("the build's {name} has {links} hard links, not 1")]
    Links { name: &'static str, links: u64 },
    #[error("the build's {name} is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        name: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("the build's {name} was replaced while it was opened")]
    Replaced { name: &'static str },
    #[error("cannot read the build's {name}")]
    Read {
        name: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the build's {name} is {actual} bytes long, not the {expected} its size said")]
    Changed {
        name: &'static str,
        expected: u64,
        actual: u64,
    },
    #[error("the build's slug.json is refused")]
    Metadata {
        #[source]
        source: MetadataError,
    },
    #[error("slug.json describes a slug of {claimed_size} bytes with sha256 {claimed}, but slug.tgz has {size} bytes with sha256 {actual}")]
    Mismatch {
        claimed: String,
        claimed_size: u64,
        actual: String,
        size: u64,
    },
}

const SLUG: &str = "slug.tgz";
const METADATA: &str = "slug.json";

impl OutputDir {
    /// Opens, checks and hashes the outputs of a build that exited 0. Blocking: it reads
    /// the whole slug once to hash it.
    pub fn read(&self) -> Result<BuildOutputs, OutputError> {
        let dir = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(&self.path)
            .map_err(|source| OutputError::OpenDir {
                path: self.path.clone(),
                source,
            })?;
        let meta = dir.metadata().map_err(|source| OutputError::OpenDir {
            path: self.path.clone(),
            source,
        })?;
        if !meta.is_dir() || meta.uid() != self.owner {
            return Err(OutputError::DirNotOwned {
                path: self.path.clone(),
            });
        }
        let dir = OwnedFd::from(dir);
        let (metadata_file, metadata_size) = self.open(&dir, METADATA, MAX_METADATA_BYTES)?;
        let mut text = Vec::new();
        read_exactly(metadata_file, metadata_size, &mut text, METADATA)?;
        let metadata = manifold_slugbuilder::metadata::parse(&text, &self.stack)
            .map_err(|source| OutputError::Metadata { source })?;
        let (mut slug, slug_size) = self.open(&dir, SLUG, self.max_slug_bytes)?;
        let mut hasher = HashingWriter(sha2::Sha256::new());
        read_exactly(&mut slug, slug_size, &mut hasher, SLUG)?;
        let slug_sha256: String = hasher
            .0
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if metadata.sha256 != slug_sha256 || metadata.size != slug_size {
            return Err(OutputError::Mismatch {
                claimed: metadata.sha256,
                claimed_size: metadata.size,
                actual: slug_sha256,
                size: slug_size,
            });
        }
        slug.rewind()
            .map_err(|source| OutputError::Read { name: SLUG, source })?;
        let metadata_json = serde_json::to_string(&metadata).map_err(|e| OutputError::Read {
            name: METADATA,
            source: io::Error::other(e),
        })?;
        Ok(BuildOutputs {
            slug,
            slug_size,
            slug_sha256,
            metadata,
            metadata_json,
        })
    }

    /// Opens output `name` of the directory `dir` if it is a regular file of the build's
    /// user with one link and at most `limit` bytes; returns it and its size.
    fn open(
        &self,
        dir: &OwnedFd,
        name: &'static str,
        limit: u64,
    ) -> Result<(fs::File, u64), OutputError> {
        use std::os::fd::AsRawFd;
        let read = |source: Errno| OutputError::Read {
            name,
            source: source.into(),
        };
        let before = match nix::sys::stat::fstatat(
            Some(dir.as_raw_fd()),
            name,
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(stat) => stat,
            Err(Errno::ENOENT) => return Err(OutputError::Missing { name }),
            Err(errno) => return Err(read(errno)),
        };
        let kind = SFlag::from_bits_truncate(before.st_mode) & SFlag::S_IFMT;
        if kind != SFlag::S_IFREG {
            return Err(OutputError::NotRegular {
                name,
                kind: file_kind(kind),
            });
        }
        // O_NONBLOCK: if a FIFO took the file's place since the fstatat, opening it must
        // not wait for a writer (the inode check below then refuses it).
        let flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let fd = match nix::fcntl::openat(Some(dir.as_raw_fd()), name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ELOOP) => {
                return Err(OutputError::NotRegular {
                    name,
                    kind: FileKind::Symlink,
                })
            }
            Err(Errno::ENOENT) => return Err(OutputError::Replaced { name }),
            Err(errno) => return Err(read(errno)),
        };
        // SAFETY: `openat` just returned `fd`, a new descriptor nothing else owns, so the
        // `File` may take it over and close it exactly once.
        let file = unsafe { fs::File::from_raw_fd(fd) };
        let meta = file
            .metadata()
            .map_err(|source| OutputError::Read { name, source })?;
        if meta.ino() != before.st_ino || meta.dev() != before.st_dev || !meta.is_file() {
            return Err(OutputError::Replaced { name });
        }
        if meta.uid() != self.owner {
            return Err(OutputError::Owner {
                name,
                uid: meta.uid(),
                expected: self.owner,
            });
        }
        if meta.nlink() != 1 {
            return Err(OutputError::Links {
                name,
                links: meta.nlink(),
            });
        }
        if meta.len() > limit {
            return Err(OutputError::TooLarge {
                name,
                size: meta.len(),
                limit,
            });
        }
        Ok((file, meta.len()))
    }
}

/// Copies exactly `size` bytes of `file` into `out`, in bounded chunks; a file that is
/// longer or shorter than the size its `fstat` gave is refused.
fn read_exactly(
    file: impl Read,
    size: u64,
    out: &mut impl Write,
    name: &'static str,
) -> Result<(), OutputError> {
    let mut limited = file.take(size.saturating_add(1));
    let copied =
        io::copy(&mut limited, out).map_err(|source| OutputError::Read { name, source })?;
    if copied != size {
        return Err(OutputError::Changed {
            name,
            expected: size,
            actual: copied,
        });
    }
    Ok(())
}

/// A `Write` that only hashes.
struct HashingWriter(sha2::Sha256);

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn file_kind(kind: SFlag) -> FileKind {
    match kind {
        SFlag::S_IFLNK => FileKind::Symlink,
        SFlag::S_IFDIR => FileKind::Directory,
        SFlag::S_IFIFO => FileKind::Fifo,
        SFlag::S_IFSOCK => FileKind::Socket,
        SFlag::S_IFCHR => FileKind::CharDevice,
        SFlag::S_IFBLK => FileKind::BlockDevice,
        _ => FileKind::Unknown,
    }
}

impl BuildOutputs {
    /// Copies the slug to `dest` (created 0644: a slug is not a secret) and writes the
    /// metadata beside it; for `manifold-agent build --out`.
    pub fn save(mut self, dest: &Path, metadata_dest: &Path) -> io::Result<()> {
        self.slug.rewind()?;
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(dest)?;
        let copied = io::copy(&mut (&mut self.slug).take(self.slug_size), &mut out)?;
        if copied != self.slug_size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the slug shrank while it was copied",
            ));
        }
        out.sync_all()?;
        fs::write(metadata_dest, &self.metadata_json)
    }
}

/// Unpacks an uploaded source archive (`tar.gz` with the app's files at its root, as
/// `manifold deploy` packs them) into `WORK/layer/.../app` and returns that directory.
///
/// The archive is hostile input. It goes through the slug unpacker itself, in its source
/// layout ([`crate::host::slug::ArchiveLayout::Source`]: every entry lands under `app/`), so it
/// gets every check a slug gets: capped extension headers (GNU long names and PAX records
/// are never buffered beyond 64 KiB), bounded size, entry count and depth, and no escaping
/// paths or links, devices or duplicates.
pub fn unpack_source(archive: &Path, work: &Path) -> Result<PathBuf, BuildError> {
    let cache = crate::host::slug::SlugCache::new(
        work.join("layer"),
        crate::host::slug::UnpackLimits::default(),
        None,
    )
    .with_layout(crate::host::slug::ArchiveLayout::Source);
    let layer = cache
        .layer(archive, None)
        .map_err(|source| BuildError::Unpack { source })?;
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
                matches!(
                    err,
                    BuildError::Unpack {
                        source: crate::host::slug::SlugError::Hostile { .. }
                    }
                ),
                "{bad}: {err}"
            );
        }
    }

    /// An output directory holding an honest `slug.tgz` and `slug.json` for stack
    /// "testing", owned by the current user; returns it and the slug's bytes.
    fn honest_output(tmp: &Path) -> (OutputDir, Vec<u8>) {
        let out = tmp.join("out");
        fs::create_dir_all(&out).expect("mkdir");
        let slug = b"not really gzip, but bytes".to_vec();
        let sha: String = sha2::Sha256::digest(&slug)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        fs::write(out.join(SLUG), &slug).expect("slug");
        let meta = serde_json::json!({
            "process_types": {"web": "./web"}, "buildpacks": [], "stack": "testing",
            "commit": null, "sha256": sha, "size": slug.len(), "duration_ms": 1,
            "config_vars": {}, "addons": [],
        });
        fs::write(out.join(METADATA), meta.to_string()).expect("json");
        let dir = OutputDir {
            path: out,
            owner: nix::unistd::geteuid().as_raw(),
            stack: "testing".into(),
            max_slug_bytes: 1024,
        };
        (dir, slug)
    }

    #[test]
    fn honest_outputs_are_read_hashed_and_rewound() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (dir, slug) = honest_output(tmp.path());
        let mut outputs = dir.read().expect("read");
        assert_eq!(outputs.slug_size, slug.len() as u64);
        assert_eq!(outputs.metadata.sha256, outputs.slug_sha256);
        let mut again = Vec::new();
        outputs.slug.read_to_end(&mut again).expect("read");
        assert_eq!(again, slug);
        let dest = tmp.path().join("copy.tgz");
        outputs
            .save(&dest, &tmp.path().join("copy.json"))
            .expect("save");
        assert_eq!(fs::read(&dest).expect("copy"), slug);
    }

    #[test]
    fn outputs_that_are_not_the_builds_regular_files_are_refused() {
        type Trick = fn(&Path);
        let cases: Vec<(&str, Trick, &str)> = vec![
            (
                "symlink",
                |out| {
                    fs::remove_file(out.join(SLUG)).expect("rm");
                    std::os::unix::fs::symlink("/etc/shadow", out.join(SLUG)).expect("ln");
                },
                "the build's slug.tgz is a symbolic link, not a regular file",
            ),
            (
                "fifo",
                |out| {
                    fs::remove_file(out.join(SLUG)).expect("rm");
                    nix::unistd::mkfifo(&out.join(SLUG), Mode::from_bits_truncate(0o644))
                        .expect("mkfifo");
                },
                "the build's slug.tgz is a FIFO, not a regular file",
            ),
            (
                "huge",
                |out| {
                    fs::File::options()
                        .write(true)
                        .open(out.join(SLUG))
                        .and_then(|f| f.set_len(1 << 40))
                        .expect("truncate");
                },
                "the build's slug.tgz is 1099511627776 bytes, more than the limit of 1024 bytes",
            ),
            (
                "hard link",
                |out| {
                    fs::hard_link(out.join(SLUG), out.join("other")).expect("link");
                },
                "the build's slug.tgz has 2 hard links, not 1",
            ),
            (
                "owner",
                |out| {
                    chown(out.join(SLUG), Some(12345), None).expect("chown");
                },
                "the build's slug.tgz belongs to host uid 12345, not to the build's user",
            ),
            (
                "missing",
                |out| fs::remove_file(out.join(METADATA)).expect("rm"),
                "the build left no slug.json",
            ),
            (
                "swapped content",
                |out| fs::write(out.join(SLUG), b"other bytes").expect("write"),
                "slug.json describes a slug of 26 bytes",
            ),
        ];
        for (what, trick, want) in cases {
            let tmp = tempfile::tempdir().expect("tempdir");
            let (dir, _) = honest_output(tmp.path());
            trick(&dir.path);
            let err = dir.read().expect_err(what);
            let text = crate::error::chain(&err);
            assert!(text.contains(want), "{what}: {text}");
        }
    }

    #[test]
    fn an_output_directory_that_is_a_symlink_or_not_the_builds_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (mut dir, _) = honest_output(tmp.path());
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dir.path, &link).expect("ln");
        let real = std::mem::replace(&mut dir.path, link);
        assert!(matches!(dir.read(), Err(OutputError::OpenDir { .. })));
        dir.path = real;
        dir.owner = 12345;
        assert!(matches!(dir.read(), Err(OutputError::DirNotOwned { .. })));
    }

    #[test]
    fn a_hostile_slug_json_is_refused_naming_the_field() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (dir, _) = honest_output(tmp.path());
        let text = fs::read_to_string(dir.path.join(METADATA)).expect("read");
        fs::write(
            dir.path.join(METADATA),
            text.replace("\"web\"", "\"../web\""),
        )
        .expect("write");
        let err = crate::error::chain(&dir.read().expect_err("refused"));
        assert!(
            err.contains("slug.json field process_types.\"../web\": invalid process type name"),
            "{err}"
        );
    }

    #[test]
    fn directory_buildpacks_are_confined_to_the_root() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("root");
        fs::create_dir_all(root.join("bp")).expect("mkdir");
        fs::create_dir_all(tmp.path().join("elsewhere")).expect("mkdir");
        std::os::unix::fs::symlink(tmp.path().join("elsewhere"), root.join("escape")).expect("ln");
        let under = DirectoryBuildpacks::Under(root.clone());
        assert_eq!(
            buildpack_dir(&root.join("bp"), &under).expect("inside"),
            fs::canonicalize(root.join("bp")).expect("canonical")
        );
        for outside in [
            root.join("escape"),
            root.join("bp/../.."),
            PathBuf::from("/etc"),
        ] {
            let err = buildpack_dir(&outside, &under).expect_err("outside");
            assert!(
                matches!(err, BuildError::BuildpackOutsideRoot { .. }),
                "{}: {err}",
                outside.display()
            );
        }
        let err = buildpack_dir(&root.join("bp"), &DirectoryBuildpacks::None).expect_err("none");
        assert!(
            matches!(err, BuildError::DirectoryBuildpack { .. }),
            "{err}"
        );
    }

    #[test]
    fn a_source_with_a_huge_long_name_is_refused_without_buffering_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // A GNU long-name header claiming 1 GiB, followed by only a little data: the old
        // buffering reader would have tried to read (and allocate) all of it.
        let mut header = tar::Header::new_gnu();
        header.as_gnu_mut().expect("gnu").name[..13].copy_from_slice(b"././@LongLink");
        header.set_entry_type(tar::EntryType::GNULongName);
        header.set_mode(0o644);
        header.set_size(1 << 30);
        header.set_cksum();
        let mut raw = header.as_bytes().to_vec();
        raw.extend_from_slice(&[b'a'; 4096]);
        let archive = tmp.path().join("huge-name.tgz");
        let mut gz = flate2::write::GzEncoder::new(
            fs::File::create(&archive).expect("create"),
            flate2::Compression::fast(),
        );
        gz.write_all(&raw).expect("write");
        gz.finish().expect("gz");
        let err = unpack_source(&archive, &tmp.path().join("w")).expect_err("refused");
        let text = crate::error::chain(&err);
        assert!(
            text.contains("extension header longer than 65536 bytes"),
            "{text}"
        );
    }

    /// A build of `src` with no config vars and the built-ins standing in for tools.
    fn request(src: &Path, cache_dir: PathBuf) -> BuildRequest {
        BuildRequest {
            source: src.to_path_buf(),
            stack: "testing".into(),
            size: DynoSize::Standard2X,
            env: BTreeMap::new(),
            buildpacks: vec![],
            cache_dir,
            slugbuilder: PathBuf::from("/bin/true"),
            buildpacks_dir: src.to_path_buf(),
            timeout: Duration::from_secs(60),
            directory_buildpacks: DirectoryBuildpacks::Anywhere,
            max_slug_bytes: DEFAULT_MAX_SLUG_BYTES,
        }
    }

    #[test]
    fn build_dyno_mounts_only_out_and_cache_writable() {
        let state = tempfile::tempdir().expect("tempdir");
        let src = tempfile::tempdir().expect("tempdir");
        fs::write(src.path().join("Procfile"), "web: true\n").expect("write");
        let host = HostConfig::with_state_dir(state.path());
        let req = BuildRequest {
            env: BTreeMap::from([("SECRET".to_string(), "s3".to_string())]),
            ..request(src.path(), state.path().join("cache"))
        };
        for bad in ["../../etc/cron.d/x", "A/B", "1X", ""] {
            let mut hostile = req.clone();
            hostile.env = BTreeMap::from([(bad.to_string(), "x".to_string())]);
            let err = prepare(&host, "build-bad", &hostile).expect_err(bad);
            assert!(
                matches!(err, BuildError::ConfigVarName { .. }),
                "{bad}: {err}"
            );
        }
        assert!(!state.path().join("etc").exists());
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
        let env = fs::metadata(b.work.join("env/SECRET")).expect("env");
        assert_eq!(env.mode() & 0o777, 0o600, "config vars are private");
        assert_eq!(
            fs::metadata(b.work.join("env")).expect("env dir").mode() & 0o777,
            0o700
        );
        assert_eq!(env.uid(), host.host_ids(DYNO_UID, DYNO_GID).0);
        assert!(b.dyno.command.starts_with(BIN) && b.dyno.command.contains("--in-place"));
        assert!(b.dyno.slug.as_ref().is_some_and(|s| s.path.exists()));
    }

    #[test]
    fn a_cache_of_another_id_range_starts_afresh_and_one_of_its_own_is_kept() {
        let state = tempfile::tempdir().expect("tempdir");
        let src = tempfile::tempdir().expect("tempdir");
        let host = HostConfig::with_state_dir(state.path());
        let cache = host.build_cache_dir("app");
        let req = request(src.path(), cache.clone());
        let (uid, gid) = host.host_ids(DYNO_UID, DYNO_GID);
        // Made by a build under another range, with a link out of it that must not be
        // followed when it is removed.
        let outside = state.path().join("outside");
        fs::create_dir_all(&outside).expect("outside");
        fs::write(outside.join("keep"), "x").expect("write");
        fs::create_dir_all(cache.join("deps")).expect("cache");
        fs::write(cache.join("deps/old"), "old").expect("write");
        std::os::unix::fs::symlink(&outside, cache.join("deps/link")).expect("link");
        chown(&cache, Some(uid + 65_536), Some(gid + 65_536)).expect("chown");
        prepare(&host, "build-a", &req).expect("prepare");
        assert!(
            !cache.join("deps").exists(),
            "the other range's cache is gone"
        );
        assert!(outside.join("keep").exists(), "nothing through its link");
        let meta = fs::metadata(&cache).expect("cache");
        assert_eq!((meta.uid(), meta.mode() & 0o777), (uid, 0o700));
        // The build user's own cache is kept.
        fs::write(cache.join("mine"), "kept").expect("write");
        prepare(&host, "build-b", &req).expect("prepare");
        assert_eq!(
            fs::read_to_string(cache.join("mine")).expect("kept"),
            "kept"
        );
    }
}
