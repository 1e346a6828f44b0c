//! The slug cache: verify a slug's sha256 and unpack it **once per host** into a
//! read-only layer that every dyno of that slug shares as an overlay lower directory.
//!
//! Start at [`SlugCache::layer`]. On disk, under the cache root:
//!
//! ```text
//! ROOT/<sha256>/app/...       a finished layer, installed by one atomic rename
//! ROOT/<sha256>.done          completion marker, written after the rename is durable
//! ROOT/<sha256>.lock          flock serialising unpacks of one slug across processes
//! ROOT/.tmp-<sha256>-<random> an unpack in progress, or what a crashed one left behind
//! ```
//!
//! A slug is a `tar.gz` whose app lives under `app/` (`./app/...` or `app/...`); every
//! entry outside `app/` is ignored, as Heroku does. Slugs come from builds of code we
//! do not trust, so the unpacker treats the archive as hostile: see [`HostileReason`]
//! for what it refuses and [`SlugCache::layer`] for the guarantees.

use std::collections::BTreeSet;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use flate2::read::MultiGzDecoder;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::stat::UtimensatFlags;
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

mod unpack;
use unpack::{Stats, Unpacker};

/// Longest GNU long-name or PAX extension we read into memory. `PATH_MAX` is 4096, so
/// anything near this is not a name; without a cap the `tar` crate would buffer an
/// extension of any claimed size and a tiny gzip could exhaust the agent's memory.
const MAX_EXTENSION_BYTES: u64 = 64 * 1024;

/// Longest entry path accepted: Linux's `PATH_MAX`, so no slug built on Linux is
/// refused. It also bounds the tree's depth (about 2048 levels), which matters because
/// removing a tree with `std::fs::remove_dir_all` holds one descriptor per level.
const MAX_PATH_BYTES: usize = 4096;

/// Buffer for copying entry data.
const COPY_BUF_BYTES: usize = 64 * 1024;

const TMP_PREFIX: &str = ".tmp-";

/// Why a slug was refused or could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum SlugError {
    /// The slug's content is not what the release says it is; nothing was installed.
    #[error("slug checksum mismatch: expected sha256 {expected}, got {actual}")]
    Checksum { expected: String, actual: String },
    /// The caller's digest is not 64 lowercase hex digits; it would also name a
    /// directory under the cache root, so it is never used unchecked.
    #[error("invalid sha256 digest {digest:?}: expected 64 lowercase hex digits")]
    InvalidDigest { digest: String },
    /// An entry that could escape the layer or subvert the dyno; nothing was installed.
    #[error("hostile slug entry {entry:?}: {reason}")]
    Hostile {
        entry: String,
        reason: HostileReason,
    },
    /// More bytes came out of the archive than [`UnpackLimits::max_unpacked_bytes`].
    #[error("slug unpacks to more than {limit} bytes")]
    TooLarge { limit: u64 },
    /// More entries than [`UnpackLimits::max_entries`].
    #[error("slug has more than {limit} entries")]
    TooManyEntries { limit: u64 },
    /// The archive has nothing under `app/`, so it is not a slug (a source tarball, say).
    #[error("slug has no entries under app/")]
    NoApp,
    /// Not gzip, not tar, truncated, or a corrupted gzip trailer.
    #[error("slug {slug} is not a valid tar.gz archive")]
    Corrupt {
        slug: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The slug file itself could not be read.
    #[error("cannot read slug {slug}")]
    ReadSlug {
        slug: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Creating an entry inside the temporary layer failed (disk full, chown refused, ...).
    #[error("cannot unpack slug entry {entry:?}")]
    Unpack {
        entry: String,
        #[source]
        source: io::Error,
    },
    /// Creating, locking or renaming something in the cache directory failed.
    #[error("cannot update slug cache at {path}")]
    Cache {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What makes an entry hostile. Each is refused, never repaired, because a slug built by
/// our own slugbuilder never contains one: seeing one means a broken or malicious build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostileReason {
    #[error("absolute path")]
    AbsolutePath,
    #[error("path has a `..` component")]
    ParentDir,
    #[error("path contains a nul byte")]
    NulByte,
    #[error("path longer than {limit} bytes")]
    PathTooLong { limit: usize },
    #[error("path deeper than {limit} components")]
    TooDeep { limit: usize },
    /// `app` itself must be a directory: `app -> /etc` followed by `app/passwd` is the
    /// classic way to write through a symlink.
    #[error("app must be a directory")]
    AppNotDirectory,
    /// A *relative* symlink target that, resolved lexically from the link's directory,
    /// climbs out of `app/` (even if it comes back: `..` may never pop `app`).
    ///
    /// Absolute targets are allowed, because they are resolved inside the dyno's own
    /// root: the kernel resolves `/usr/bin/python3` in the dyno's mount namespace, where
    /// `/` is the stack and the slug sits at `/app`, and real slugs need them (a Python
    /// venv's `bin/python -> /usr/bin/python3`). They are harmless on the host only
    /// because nothing there follows links inside a layer: this unpacker never does
    /// (every path is walked with `O_NOFOLLOW`), and host tools must not either.
    ///
    /// Relative targets that climb out are refused although a dyno would keep them
    /// inside its root too: no slug needs one (the same link can be written absolute),
    /// and refusing them means every relative link stays inside the layer wherever it
    /// is resolved from, instead of reaching the cache's other layers from the host.
    #[error("symlink target {target:?} leaves app/")]
    SymlinkEscape { target: String },
    #[error("symlink has an empty target")]
    EmptySymlinkTarget,
    #[error("hard link target {target:?} is not an earlier file inside app/")]
    HardLinkTarget { target: String },
    /// Creating the entry would follow a symlink the archive created earlier.
    #[error("path goes through symlink {component}")]
    ThroughSymlink { component: String },
    #[error("parent {component} is not a directory")]
    ParentNotDirectory { component: String },
    /// Tar lets a later entry replace an earlier one; we refuse instead, because
    /// replacing is how archives turn a checked entry into an unchecked one.
    #[error("entry already exists")]
    Duplicate,
    #[error("character device nodes are not allowed")]
    CharDevice,
    #[error("block device nodes are not allowed")]
    BlockDevice,
    #[error("fifos are not allowed")]
    Fifo,
    #[error("sparse files are not supported")]
    Sparse,
    #[error("unsupported entry type {type_flag:?}")]
    UnsupportedType { type_flag: char },
    /// A PAX `size` that disagrees with the header makes tar readers disagree about
    /// where the next entry starts, so two tools would see two different slugs.
    #[error("pax size {pax} disagrees with header size {header}")]
    SizeMismatch { pax: u64, header: u64 },
    #[error("extension header longer than {limit} bytes")]
    ExtensionTooLong { limit: u64 },
}

/// Bounds on what one slug may unpack to, so a hostile slug cannot fill the disk or pin
/// the agent's CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Bytes of entry data actually decompressed, counted as they are read, never taken
    /// from header claims. Data of entries outside `app/` counts too: skipping them costs
    /// the same decompression.
    pub max_unpacked_bytes: u64,
    /// Tar entries, counting global PAX headers but not the per-entry extension headers
    /// (GNU long names, local PAX headers), which each belong to a counted entry.
    pub max_entries: u64,
    /// Path components of an entry, `app` included. Walking to an entry's directory costs
    /// at most this many `openat` calls, so the unpacker's work is bounded per entry, and
    /// it holds at most this many directory descriptors open.
    pub max_depth: usize,
}

/// No real slug comes near it: a Python venv is about 10 levels deep, npm's nested
/// `node_modules` of old a few dozen; `PATH_MAX` alone would allow about 2048.
pub const DEFAULT_MAX_DEPTH: usize = 256;

/// How an archive lays out the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveLayout {
    /// A slug: the app is under `app/`, everything else is ignored.
    Slug,
    /// An uploaded source tarball: the app's files are at the archive's root and are
    /// unpacked under `app/` (hard link targets too), with a slug's every check.
    Source,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self {
            max_unpacked_bytes: 2 << 30,
            max_entries: 1_000_000,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

/// An unpacked slug, ready to be an overlay lower directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Lowercase hex sha256 of the slug file; also the layer's directory name.
    pub sha256: String,
    /// `ROOT/<sha256>`; contains `app/` and nothing else.
    pub dir: PathBuf,
    /// Whether this call did the unpacking, rather than finding the layer installed:
    /// lets the caller log the cost once and lets tests prove "once per host".
    pub unpacked: bool,
}

/// The per-host cache of unpacked slugs.
#[derive(Debug, Clone)]
pub struct SlugCache {
    root: PathBuf,
    limits: UnpackLimits,
    owner: Option<(Uid, Gid)>,
    layout: ArchiveLayout,
}

impl SlugCache {
    /// A cache rooted at `root` (e.g. `/var/lib/manifold/slugs`, created on first use).
    ///
    /// `owner`: when `Some((uid, gid))` every unpacked file and directory is chowned to
    /// it, because dynos run as an unprivileged user that must own `/app`. When `None`
    /// entries belong to the agent's own user (root in production). The archive's own
    /// uid/gid fields are never used: a slug must not pick who owns its files.
    pub fn new(root: impl Into<PathBuf>, limits: UnpackLimits, owner: Option<(u32, u32)>) -> Self {
        Self {
            root: root.into(),
            limits,
            owner: owner.map(|(uid, gid)| (Uid::from_raw(uid), Gid::from_raw(gid))),
            layout: ArchiveLayout::Slug,
        }
    }

    /// The same cache for archives laid out as `layout` (sources: see
    /// [`ArchiveLayout::Source`]).
    pub fn with_layout(mut self, layout: ArchiveLayout) -> Self {
        self.layout = layout;
        self
    }

    /// Verify the slug (against `expected_sha256` when given, lowercase hex) and unpack
    /// it once per host; returns its read-only layer.
    ///
    /// - An installed layer is returned at once, without the lock. When the digest is
    ///   given, the slug file is then not even read: the layer was verified against that
    ///   digest when it was installed, and re-reading the file would say nothing about it.
    /// - Otherwise the caller takes `ROOT/<sha256>.lock` (an `flock`, so concurrent
    ///   threads *and* processes wait for one unpack), removes leftovers of crashed
    ///   unpacks of this slug, unpacks into `ROOT/.tmp-<sha256>-<random>` while hashing
    ///   the file, and renames that into place only if the hash matches.
    /// - Without a digest the file is hashed first to learn its key; the unpack hashes it
    ///   again, so a file that changes in between fails as a checksum mismatch rather
    ///   than being installed under the wrong name.
    /// - On any error nothing is installed and the temporary directory is removed; no
    ///   entry is ever created outside it, because every path is walked from the
    ///   temporary directory's descriptor with `O_NOFOLLOW` and created with `*at` calls
    ///   that never follow a symlink.
    /// - When an unpack fails *and* the file's hash does not match, the error is
    ///   [`SlugError::Checksum`]: a corrupted download explains any other symptom.
    /// - Before the rename the layer is flushed with one `syncfs` (one call instead of
    ///   an fsync per file), so a layer is never visible with data a power loss could
    ///   take back. It flushes the whole filesystem, which is the price of that.
    ///
    /// Blocking (file I/O and possibly waiting on another process's unpack): call it
    /// from `spawn_blocking` or a helper process, not from an async task.
    pub fn layer(&self, slug: &Path, expected_sha256: Option<&str>) -> Result<Layer, SlugError> {
        let sha256 = match expected_sha256 {
            Some(digest) => {
                if !is_digest(digest) {
                    return Err(SlugError::InvalidDigest {
                        digest: digest.to_owned(),
                    });
                }
                digest.to_owned()
            }
            None => sha256_file(slug).map_err(|source| SlugError::ReadSlug {
                slug: slug.to_owned(),
                source,
            })?,
        };
        if let Some(layer) = self.use_finished(&sha256)? {
            return Ok(layer);
        }
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&self.root)
            .map_err(|source| self.cache_error(&self.root, source))?;
        let _lock = self.lock(&sha256)?;
        if self.is_finished(&sha256) {
            return Ok(self.finished_layer(sha256, false));
        }
        self.remove_leftovers(&sha256)?;
        self.install(slug, &sha256)?;
        Ok(self.finished_layer(sha256, true))
    }

    /// Remove what crashed unpacks left in the cache at `root`: `.tmp-<sha256>-*`
    /// directories, and layers renamed into place whose completion marker was never
    /// written. Returns how many paths were removed. An associated function because
    /// garbage collection has no limits or owner to give; [`SlugCache::layer`] also
    /// removes a slug's own leftovers before unpacking it.
    ///
    /// Safe while other processes unpack: a slug's leftovers are touched only while
    /// holding that slug's lock, and slugs whose lock is busy (an unpack in progress)
    /// are skipped. Lock files are never removed: unlinking one that another process
    /// is blocked on would let two processes each hold "the" lock.
    pub fn sweep_tmp(root: &Path) -> Result<usize, SlugError> {
        let cache = SlugCache::new(root, UnpackLimits::default(), None);
        let dir = match fs::read_dir(root) {
            Ok(dir) => dir,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(source) => return Err(cache.cache_error(root, source)),
        };
        let mut keys = BTreeSet::new();
        for item in dir {
            let item = item.map_err(|source| cache.cache_error(root, source))?;
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            let key = if let Some(rest) = name.strip_prefix(TMP_PREFIX) {
                rest.split_once('-').map(|(sha, _)| sha)
            } else {
                Some(name.strip_suffix(".done").unwrap_or(name))
            };
            if let Some(key) = key.filter(|key| is_digest(key)) {
                if !cache.is_finished(key) || name.starts_with(TMP_PREFIX) {
                    keys.insert(key.to_owned());
                }
            }
        }
        let mut removed = 0;
        for key in keys {
            if let Some(_lock) = cache.try_lock(&key)? {
                removed += cache.remove_leftovers(&key)?;
            }
        }
        Ok(removed)
    }

    /// The installed layer, marked as used now (its marker's mtime), or `None`. Done under
    /// the slug's lock taken shared, so that [`SlugCache::collect`] (which takes it
    /// exclusively and re-reads the mtime) either sees this use or has removed the layer
    /// before it is looked at here, never in between. A cache whose root does not exist yet
    /// has no layers (and no lock files to take).
    fn use_finished(&self, sha256: &str) -> Result<Option<Layer>, SlugError> {
        if !self.is_finished(sha256) {
            return Ok(None);
        }
        let (file, path) = self.lock_file(sha256)?;
        let _shared = Flock::lock(file, FlockArg::LockShared)
            .map_err(|(_, errno)| self.cache_error(&path, errno.into()))?;
        if !self.is_finished(sha256) {
            return Ok(None);
        }
        let marker = self.marker(sha256);
        let now = TimeSpec::UTIME_NOW;
        nix::sys::stat::utimensat(None, &marker, &now, &now, UtimensatFlags::NoFollowSymlink)
            .map_err(|errno| self.cache_error(&marker, errno.into()))?;
        Ok(Some(self.finished_layer(sha256.to_owned(), false)))
    }

    /// Removes the installed layers of the cache at `root` that no dyno uses (`in_use`
    /// says which digests are) and that nothing has used for `unused_for`; returns the
    /// digests removed. Without it every slug ever run on a host stays on its disk.
    ///
    /// Each layer is removed under its slug's lock, taken exclusively and without waiting
    /// (an unpack or a dyno's start in progress skips it), after reading its last use again
    /// and asking `in_use` again: a dyno's `dyno.json` names its slug before its shim asks
    /// for the layer, so a dyno starting now is either seen by `in_use` or finds the layer
    /// gone and unpacks it again. The marker goes first, so a crash half-way leaves a
    /// leftover that [`SlugCache::sweep_tmp`] removes, never a marked half layer.
    pub fn collect(
        root: &Path,
        in_use: &dyn Fn(&str) -> bool,
        unused_for: std::time::Duration,
    ) -> Result<Vec<String>, SlugError> {
        let cache = SlugCache::new(root, UnpackLimits::default(), None);
        let dir = match fs::read_dir(root) {
            Ok(dir) => dir,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(cache.cache_error(root, source)),
        };
        let mut finished = BTreeSet::new();
        for item in dir {
            let item = item.map_err(|source| cache.cache_error(root, source))?;
            if let Some(key) = item
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".done"))
            {
                if is_digest(key) {
                    finished.insert(key.to_owned());
                }
            }
        }
        let unused = |sha256: &str| {
            fs::symlink_metadata(cache.marker(sha256))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= unused_for)
        };
        let mut removed = Vec::new();
        for sha256 in finished {
            if in_use(&sha256) || !unused(&sha256) {
                continue;
            }
            let Some(_lock) = cache.try_lock(&sha256)? else {
                continue;
            };
            if in_use(&sha256) || !unused(&sha256) {
                continue;
            }
            let marker = cache.marker(&sha256);
            fs::remove_file(&marker).map_err(|source| cache.cache_error(&marker, source))?;
            let layer = root.join(&sha256);
            match fs::remove_dir_all(&layer) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(cache.cache_error(&layer, source)),
            }
            info!(
                sha256,
                "removed a slug layer no dyno used for {unused_for:?}"
            );
            removed.push(sha256);
        }
        Ok(removed)
    }

    fn finished_layer(&self, sha256: String, unpacked: bool) -> Layer {
        Layer {
            dir: self.root.join(&sha256),
            sha256,
            unpacked,
        }
    }

    /// The marker is written only after the renamed layer is durable, so marker present
    /// means complete even after a power loss; a layer without it is a leftover.
    fn is_finished(&self, sha256: &str) -> bool {
        let marker_ok = fs::symlink_metadata(self.marker(sha256)).is_ok_and(|m| m.is_file());
        marker_ok
            && fs::symlink_metadata(self.root.join(sha256).join("app")).is_ok_and(|m| m.is_dir())
    }

    fn marker(&self, sha256: &str) -> PathBuf {
        self.root.join(format!("{sha256}.done"))
    }

    /// Wait for the slug's lock; released when the returned guard drops (or the
    /// process dies, which is what makes a crashed unpack recoverable).
    fn lock(&self, sha256: &str) -> Result<Flock<File>, SlugError> {
        let (mut file, path) = self.lock_file(sha256)?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusive) {
                Ok(lock) => return Ok(lock),
                Err((unlocked, Errno::EINTR)) => file = unlocked,
                Err((_, errno)) => return Err(self.cache_error(&path, errno.into())),
            }
        }
    }

    /// The slug's lock if nobody holds it, else `None` (an unpack is in progress).
    fn try_lock(&self, sha256: &str) -> Result<Option<Flock<File>>, SlugError> {
        let (file, path) = self.lock_file(sha256)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(lock)),
            Err((_, Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(self.cache_error(&path, errno.into())),
        }
    }

    fn lock_file(&self, sha256: &str) -> Result<(File, PathBuf), SlugError> {
        let path = self.root.join(format!("{sha256}.lock"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|source| self.cache_error(&path, source))?;
        Ok((file, path))
    }

    /// With the slug's lock held and the layer not finished: remove its temporary
    /// directories, a layer directory without marker, and a marker without layer.
    fn remove_leftovers(&self, sha256: &str) -> Result<usize, SlugError> {
        let mut doomed = Vec::new();
        let tmp_prefix = format!("{TMP_PREFIX}{sha256}-");
        let dir =
            fs::read_dir(&self.root).map_err(|source| self.cache_error(&self.root, source))?;
        for item in dir {
            let item = item.map_err(|source| self.cache_error(&self.root, source))?;
            if item
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&tmp_prefix))
            {
                doomed.push(item.path());
            }
        }
        if !self.is_finished(sha256) {
            doomed.push(self.marker(sha256));
            doomed.push(self.root.join(sha256));
        }
        let mut removed = 0;
        for path in doomed {
            let result = match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => fs::remove_dir_all(&path),
                Ok(_) => fs::remove_file(&path),
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => Err(err),
            };
            result.map_err(|source| self.cache_error(&path, source))?;
            warn!(path = %path.display(), "removed leftover of an interrupted slug unpack");
            removed += 1;
        }
        Ok(removed)
    }

    /// Unpack into a fresh temporary directory and move it into place; with the lock held.
    fn install(&self, slug: &Path, sha256: &str) -> Result<(), SlugError> {
        let started = Instant::now();
        let tmp = self.root.join(format!(
            "{TMP_PREFIX}{sha256}-{:016x}",
            rand::random::<u64>()
        ));
        DirBuilder::new()
            .mode(0o755)
            .create(&tmp)
            .map_err(|source| self.cache_error(&tmp, source))?;
        let stats = match self.unpack_into(&tmp, slug, sha256) {
            Ok(stats) => stats,
            Err(err) => {
                if let Err(rm) = fs::remove_dir_all(&tmp) {
                    warn!(path = %tmp.display(), error = %rm, "cannot remove failed slug unpack");
                }
                return Err(err);
            }
        };
        let dest = self.root.join(sha256);
        if let Err(source) = fs::rename(&tmp, &dest) {
            // Best effort: the next call or sweep_tmp() removes it otherwise.
            let _ = fs::remove_dir_all(&tmp);
            return Err(self.cache_error(&dest, source));
        }
        self.sync_root()?;
        let marker = self.marker(sha256);
        File::create(&marker).map_err(|source| self.cache_error(&marker, source))?;
        self.sync_root()?;
        info!(
            sha256,
            files = stats.files,
            dirs = stats.dirs,
            dir_opens = stats.dir_opens,
            symlinks = stats.symlinks,
            hard_links = stats.hard_links,
            ignored = stats.ignored,
            bytes = stats.bytes,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "unpacked slug"
        );
        Ok(())
    }

    fn sync_root(&self) -> Result<(), SlugError> {
        File::open(&self.root)
            .and_then(|dir| dir.sync_all())
            .map_err(|source| self.cache_error(&self.root, source))
    }

    /// Unpack `slug` into the empty directory `tmp`, hashing the file as it is read.
    fn unpack_into(&self, tmp: &Path, slug: &Path, sha256: &str) -> Result<Stats, SlugError> {
        let file = File::open(slug).map_err(|source| SlugError::ReadSlug {
            slug: slug.to_owned(),
            source,
        })?;
        let root = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(tmp)
            .map_err(|source| self.cache_error(tmp, source))?;
        let mut unpacker = Unpacker::new(
            slug,
            tmp,
            OwnedFd::from(root),
            (self.limits, self.layout),
            self.owner,
        );
        // Multi-member: concatenated gzip members are one stream (RFC 1952, and what
        // `gzip -d` does); anything after the last member that is not one is refused.
        let mut decoder = MultiGzDecoder::new(HashingReader::new(file));
        let outcome = unpacker.run(&mut decoder);
        let mut reader = decoder.into_inner();
        let outcome = match outcome {
            Err(SlugError::Corrupt { slug, source }) if reader.failed => {
                Err(SlugError::ReadSlug { slug, source })
            }
            other => other,
        };
        if let Err(err @ SlugError::ReadSlug { .. }) = outcome {
            return Err(err);
        }
        // Hash what the decoder did not consume, i.e. everything after an early error,
        // so that a corrupted download is named as such.
        io::copy(&mut reader, &mut io::sink()).map_err(|source| SlugError::ReadSlug {
            slug: slug.to_owned(),
            source,
        })?;
        let actual = reader.finish();
        if actual != sha256 {
            return Err(SlugError::Checksum {
                expected: sha256.to_owned(),
                actual,
            });
        }
        outcome?;
        unpacker.finish()
    }

    fn cache_error(&self, path: &Path, source: io::Error) -> SlugError {
        SlugError::Cache {
            path: path.to_owned(),
            source,
        }
    }
}

/// Lowercase hex sha256 of a file's content.
pub fn sha256_file(path: &Path) -> Result<String, io::Error> {
    let mut reader = HashingReader::new(File::open(path)?);
    io::copy(&mut reader, &mut io::sink())?;
    Ok(reader.finish())
}

fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Hashes everything read through it, and remembers whether the underlying file failed,
/// so an I/O error is not reported as a corrupt archive.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    failed: bool,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            failed: false,
        }
    }

    fn finish(self) -> String {
        self.hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                Ok(n)
            }
            Err(err) => {
                if err.kind() != io::ErrorKind::Interrupted {
                    self.failed = true;
                }
                Err(err)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use nix::sys::stat::Mode;
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::process::{Command, Stdio};
    use std::sync::{Arc, Barrier};
    use std::thread;
    use std::time::Duration;
    use tar::EntryType;

    use flate2::write::GzEncoder;
    use flate2::Compression;
    use tar::{Builder, Header};

    const MTIME: u64 = 1_600_000_000;

    /// Builds slugs entry by entry from raw headers, so tests can write what
    /// `tar::Builder::append_data` refuses to: absolute paths, `..`, devices.
    struct Slug {
        tar: Builder<Vec<u8>>,
    }

    impl Slug {
        fn new() -> Self {
            Self {
                tar: Builder::new(Vec::new()),
            }
        }

        fn entry(
            mut self,
            path: &str,
            kind: EntryType,
            mode: u32,
            data: &[u8],
            link: Option<&str>,
        ) -> Self {
            let mut header = Header::new_gnu();
            let old = header.as_old_mut();
            old.name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(link) = link {
                old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_entry_type(kind);
            header.set_mode(mode);
            header.set_size(data.len() as u64);
            header.set_mtime(MTIME);
            // Never applied: ownership is the cache's decision.
            header.set_uid(1234);
            header.set_gid(1234);
            header.set_cksum();
            self.tar.append(&header, data).unwrap();
            self
        }

        fn dir(self, path: &str, mode: u32) -> Self {
            self.entry(path, EntryType::Directory, mode, b"", None)
        }

        fn file(self, path: &str, mode: u32, data: &[u8]) -> Self {
            self.entry(path, EntryType::Regular, mode, data, None)
        }

        fn symlink(self, path: &str, target: &str) -> Self {
            self.entry(path, EntryType::Symlink, 0o777, b"", Some(target))
        }

        fn hard_link(self, path: &str, target: &str) -> Self {
            self.entry(path, EntryType::Link, 0o644, b"", Some(target))
        }

        /// A path too long for the header: the builder emits a GNU long-name entry.
        fn long_file(mut self, path: &str, data: &[u8]) -> Self {
            let mut header = Header::new_gnu();
            header.set_mode(0o644);
            header.set_mtime(MTIME);
            header.set_size(data.len() as u64);
            self.tar.append_data(&mut header, path, data).unwrap();
            self
        }

        /// A symlink target too long for the header: a GNU long-link entry.
        fn long_symlink(mut self, path: &str, target: &str) -> Self {
            let mut header = Header::new_gnu();
            header.set_entry_type(EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            header.set_mtime(MTIME);
            self.tar.append_link(&mut header, path, target).unwrap();
            self
        }

        fn pax(mut self, records: &[(&str, &[u8])]) -> Self {
            self.tar
                .append_pax_extensions(records.iter().copied())
                .unwrap();
            self
        }

        fn tar(self) -> Vec<u8> {
            self.tar.into_inner().unwrap()
        }

        fn gz(self) -> Vec<u8> {
            gzip(&self.tar())
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn simple_slug() -> Vec<u8> {
        Slug::new()
            .dir("./app/", 0o755)
            .file("./app/Procfile", 0o644, b"web: ./web\n")
            .gz()
    }

    fn many_files_slug(count: usize) -> Vec<u8> {
        let mut slug = Slug::new().dir("./app/", 0o755);
        for i in 0..count {
            slug = slug.file(&format!("./app/f/{i:05}"), 0o644, &[b'x'; 700]);
        }
        slug.gz()
    }

    /// A cache root inside a temp dir, next to `outside`, which must stay empty: it is
    /// where every escape attempt aims.
    struct Fx {
        _dir: tempfile::TempDir,
        base: PathBuf,
        root: PathBuf,
        outside: PathBuf,
    }

    impl Fx {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let base = dir.path().to_owned();
            let outside = base.join("outside");
            fs::create_dir(&outside).unwrap();
            Self {
                root: base.join("cache"),
                outside,
                base,
                _dir: dir,
            }
        }

        fn cache(&self) -> SlugCache {
            SlugCache::new(&self.root, UnpackLimits::default(), None)
        }

        fn write(&self, name: &str, bytes: &[u8]) -> (PathBuf, String) {
            let path = self.base.join(name);
            fs::write(&path, bytes).unwrap();
            let sha = sha256_file(&path).unwrap();
            (path, sha)
        }

        fn refuse(&self, bytes: &[u8]) -> SlugError {
            self.refuse_with(&self.cache(), bytes)
        }

        /// Unpack a slug that must be refused (with its correct digest, so the refusal
        /// is about the content) and check that nothing was installed or escaped.
        fn refuse_with(&self, cache: &SlugCache, bytes: &[u8]) -> SlugError {
            let (slug, sha) = self.write("slug.tgz", bytes);
            let err = cache.layer(&slug, Some(&sha)).unwrap_err();
            self.assert_nothing_installed();
            err
        }

        fn assert_nothing_installed(&self) {
            let escaped: Vec<_> = fs::read_dir(&self.outside).unwrap().collect();
            assert!(escaped.is_empty(), "written outside the cache: {escaped:?}");
            if self.root.exists() {
                for item in fs::read_dir(&self.root).unwrap() {
                    let name = item.unwrap().file_name().into_string().unwrap();
                    assert!(name.ends_with(".lock"), "left in the cache: {name}");
                }
            }
        }

        fn leftovers(&self) -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(&self.root)
                .unwrap()
                .map(|item| item.unwrap().file_name().into_string().unwrap())
                .filter(|name| name.starts_with(TMP_PREFIX))
                .collect();
            names.sort();
            names
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn hostile_reason(err: &SlugError) -> (&str, &HostileReason) {
        match err {
            SlugError::Hostile { entry, reason } => (entry, reason),
            other => panic!("expected a hostile-entry error, got {other:?}"),
        }
    }

    #[test]
    fn good_slug_unpacks_with_modes_links_and_mtimes() {
        let fx = Fx::new();
        let long_dir = "d".repeat(120);
        let long_target = format!("/usr/lib/{}", "t".repeat(120));
        let bytes = Slug::new()
            .dir("./", 0o755)
            .dir("./app/", 0o700)
            .file("./app/Procfile", 0o644, b"web: ./bin/web\n")
            .dir("./app/bin/", 0o750)
            .file("./app/bin/web", 0o755, b"#!/bin/sh\n")
            .file("./app/bin/suid", 0o6755, b"x")
            .dir("./app/tmp/", 0o1777)
            .file("app/private", 0o600, b"secret")
            .symlink("./app/.venv/bin/python", "/usr/bin/python3")
            .symlink("./app/current", "bin/web")
            .symlink("./app/bin/up", "../Procfile")
            .symlink("./app/self", ".")
            .hard_link("./app/bin/web2", "./app/bin/web")
            .file("./README", 0o644, b"outside app/")
            .file("other/x", 0o644, b"outside app/")
            .long_file(&format!("app/{long_dir}/deep.txt"), b"long name")
            .long_symlink("app/long-link", &long_target)
            .pax(&[("path", b"app/pax-named.txt"), ("mtime", b"1500000000.5")])
            .file("app/header-name", 0o644, b"pax")
            .gz();
        let (slug, sha) = fx.write("slug.tgz", &bytes);
        let cache = fx.cache();

        let layer = cache.layer(&slug, Some(&sha)).unwrap();

        assert_eq!(
            layer,
            Layer {
                sha256: sha.clone(),
                dir: fx.root.join(&sha),
                unpacked: true
            }
        );
        let app = layer.dir.join("app");
        let top: Vec<_> = fs::read_dir(&layer.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            top,
            ["app"],
            "only app/ is unpacked; README and other/ are ignored"
        );
        assert_eq!(mode(&app), 0o755, "directories are at least 0755");
        assert_eq!(mode(&app.join("bin")), 0o755);
        assert_eq!(mode(&app.join("tmp")), 0o777, "sticky bit stripped");
        assert_eq!(mode(&app.join(".venv")), 0o755, "implicit parents are 0755");
        assert_eq!(mode(&app.join("Procfile")), 0o644);
        assert_eq!(mode(&app.join("bin/web")), 0o755);
        assert_eq!(mode(&app.join("bin/suid")), 0o755, "setuid/setgid stripped");
        assert_eq!(mode(&app.join("private")), 0o600);
        assert_eq!(fs::read(app.join("Procfile")).unwrap(), b"web: ./bin/web\n");
        assert_eq!(
            fs::read_link(app.join(".venv/bin/python")).unwrap(),
            Path::new("/usr/bin/python3")
        );
        assert_eq!(
            fs::read_link(app.join("current")).unwrap(),
            Path::new("bin/web")
        );
        assert_eq!(
            fs::read_link(app.join("bin/up")).unwrap(),
            Path::new("../Procfile")
        );
        assert_eq!(fs::read_link(app.join("self")).unwrap(), Path::new("."));
        assert_eq!(
            fs::read_link(app.join("long-link")).unwrap(),
            Path::new(&long_target)
        );
        assert_eq!(
            fs::metadata(app.join("bin/web")).unwrap().ino(),
            fs::metadata(app.join("bin/web2")).unwrap().ino(),
            "hard link preserved"
        );
        assert_eq!(
            fs::read(app.join(&long_dir).join("deep.txt")).unwrap(),
            b"long name"
        );
        assert_eq!(fs::read(app.join("pax-named.txt")).unwrap(), b"pax");
        assert!(
            !app.join("header-name").exists(),
            "the pax path wins over the header's"
        );
        for path in ["Procfile", "bin", ".", "current"] {
            let meta = fs::symlink_metadata(app.join(path)).unwrap();
            assert_eq!(meta.mtime(), MTIME as i64, "mtime of {path}");
        }
        assert_eq!(
            fs::metadata(app.join("pax-named.txt")).unwrap().mtime(),
            1_500_000_000
        );
        let me = nix::unistd::geteuid().as_raw();
        assert_eq!(
            fs::metadata(app.join("Procfile")).unwrap().uid(),
            me,
            "archive uid ignored"
        );
        assert!(fx.root.join(format!("{sha}.done")).is_file());
        assert!(fx.leftovers().is_empty());

        let again = cache.layer(&slug, Some(&sha)).unwrap();
        assert_eq!(
            again,
            Layer {
                unpacked: false,
                ..layer.clone()
            }
        );
        let undigested = cache.layer(&slug, None).unwrap();
        assert_eq!(
            undigested,
            Layer {
                unpacked: false,
                ..layer
            }
        );
    }

    #[test]
    fn concatenated_gzip_members_are_one_slug() {
        let fx = Fx::new();
        let tar = Slug::new()
            .file("app/a", 0o644, b"first member")
            .file("app/b", 0o644, b"second member")
            .tar();
        let (first, second) = tar.split_at(1024);
        let (slug, sha) = fx.write("slug.tgz", &[gzip(first), gzip(second)].concat());

        let layer = fx.cache().layer(&slug, Some(&sha)).unwrap();

        assert_eq!(fs::read(layer.dir.join("app/b")).unwrap(), b"second member");
    }

    #[test]
    fn without_a_digest_the_layer_is_keyed_by_the_file_sha256() {
        let fx = Fx::new();
        let (slug, sha) = fx.write("slug.tgz", &simple_slug());

        let layer = fx.cache().layer(&slug, None).unwrap();

        assert_eq!(layer.sha256, sha);
        assert!(layer.unpacked);
        assert!(layer.dir.join("app/Procfile").is_file());
    }

    #[test]
    fn checksum_mismatch_installs_nothing() {
        let fx = Fx::new();
        let (slug, sha) = fx.write("slug.tgz", &simple_slug());
        let wrong = "0".repeat(64);

        let err = fx.cache().layer(&slug, Some(&wrong)).unwrap_err();

        assert!(
            matches!(&err, SlugError::Checksum { expected, actual } if *expected == wrong && *actual == sha),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("slug checksum mismatch: expected sha256 {wrong}, got {sha}")
        );
        fx.assert_nothing_installed();
    }

    #[test]
    fn a_corrupted_download_is_a_checksum_mismatch_not_a_hostile_slug() {
        let fx = Fx::new();
        let (slug, _) = fx.write(
            "slug.tgz",
            &Slug::new().file("/etc/passwd", 0o644, b"x").gz(),
        );

        let err = fx.cache().layer(&slug, Some(&"a".repeat(64))).unwrap_err();

        assert!(matches!(err, SlugError::Checksum { .. }), "{err:?}");
        fx.assert_nothing_installed();
    }

    #[test]
    fn malformed_digests_are_refused_before_touching_the_cache() {
        let fx = Fx::new();
        let (slug, sha) = fx.write("slug.tgz", &simple_slug());
        for digest in ["../../etc", "", &sha.to_uppercase(), &sha[1..]] {
            let err = fx.cache().layer(&slug, Some(digest)).unwrap_err();
            assert!(
                matches!(&err, SlugError::InvalidDigest { digest: d } if d == digest),
                "{err:?}"
            );
        }
        assert!(!fx.root.exists());
    }

    #[test]
    fn absolute_paths_are_refused() {
        let fx = Fx::new();
        let target = format!("{}/pwned", fx.outside.display());

        let err = fx.refuse(
            &Slug::new()
                .dir("app/", 0o755)
                .file(&target, 0o644, b"x")
                .gz(),
        );

        assert_eq!(
            hostile_reason(&err),
            (target.as_str(), &HostileReason::AbsolutePath)
        );
        assert_eq!(
            err.to_string(),
            format!("hostile slug entry {target:?}: absolute path")
        );
    }

    #[test]
    fn dot_dot_components_are_refused() {
        for path in [
            "../../outside/pwned",
            "app/../../../outside/pwned",
            "./app/x/../y",
        ] {
            let fx = Fx::new();

            let err = fx.refuse(&Slug::new().dir("app/", 0o755).file(path, 0o644, b"x").gz());

            assert_eq!(hostile_reason(&err), (path, &HostileReason::ParentDir));
            assert_eq!(
                err.to_string(),
                format!("hostile slug entry {path:?}: path has a `..` component")
            );
        }
    }

    #[test]
    fn relative_symlinks_leaving_app_are_refused() {
        for (path, target) in [
            ("app/a/l", "../../outside"),
            ("app/l", ".."),
            ("app/l", "x/../../app"),
        ] {
            let fx = Fx::new();

            let err = fx.refuse(&Slug::new().symlink(path, target).gz());

            assert_eq!(
                hostile_reason(&err),
                (
                    path,
                    &HostileReason::SymlinkEscape {
                        target: target.to_owned()
                    }
                )
            );
            assert_eq!(
                err.to_string(),
                format!("hostile slug entry {path:?}: symlink target {target:?} leaves app/")
            );
        }
    }

    #[test]
    fn empty_symlink_targets_are_refused() {
        let fx = Fx::new();

        let err = fx.refuse(&Slug::new().symlink("app/empty", "").gz());

        assert_eq!(
            hostile_reason(&err),
            ("app/empty", &HostileReason::EmptySymlinkTarget)
        );
    }

    #[test]
    fn writing_through_an_absolute_symlink_is_refused() {
        let fx = Fx::new();
        let target = fx.outside.display().to_string();

        let err = fx.refuse(
            &Slug::new()
                .symlink("app/l", &target)
                .file("app/l/pwned", 0o644, b"x")
                .gz(),
        );

        assert_eq!(
            hostile_reason(&err),
            (
                "app/l/pwned",
                &HostileReason::ThroughSymlink {
                    component: "app/l".into()
                }
            )
        );
        assert_eq!(
            err.to_string(),
            "hostile slug entry \"app/l/pwned\": path goes through symlink app/l"
        );
    }

    #[test]
    fn writing_through_a_dot_symlink_is_refused() {
        let fx = Fx::new();

        let err = fx.refuse(
            &Slug::new()
                .symlink("./app/l", ".")
                .dir("./app/l/sub/", 0o755)
                .gz(),
        );

        assert_eq!(
            hostile_reason(&err),
            (
                "./app/l/sub/",
                &HostileReason::ThroughSymlink {
                    component: "app/l".into()
                }
            )
        );
    }

    #[test]
    fn a_directory_entry_cannot_replace_a_symlink() {
        let fx = Fx::new();
        let target = fx.outside.display().to_string();

        let err = fx.refuse(
            &Slug::new()
                .symlink("app/l", &target)
                .dir("app/l/", 0o755)
                .gz(),
        );

        assert_eq!(hostile_reason(&err), ("app/l/", &HostileReason::Duplicate));
    }

    #[test]
    fn app_itself_must_be_a_directory() {
        let fx = Fx::new();
        let target = fx.outside.display().to_string();

        let err = fx.refuse(
            &Slug::new()
                .symlink("./app", &target)
                .file("./app/pwned", 0o644, b"x")
                .gz(),
        );

        assert_eq!(
            hostile_reason(&err),
            ("./app", &HostileReason::AppNotDirectory)
        );
        assert_eq!(
            err.to_string(),
            "hostile slug entry \"./app\": app must be a directory"
        );
    }

    #[test]
    fn hard_links_must_target_an_earlier_file_inside_app() {
        for (target, earlier) in [
            ("/etc/passwd", None),
            ("../outside/x", None),
            ("other/x", Some(Slug::new().file("other/x", 0o644, b"x"))),
            ("app/later", None),
            ("app", None),
            ("app/dir", Some(Slug::new().dir("app/dir/", 0o755))),
            (
                "app/sym",
                Some(Slug::new().symlink("app/sym", "/etc/passwd")),
            ),
        ] {
            let fx = Fx::new();
            let slug = earlier
                .unwrap_or_else(Slug::new)
                .hard_link("app/h", target)
                .file("app/later", 0o644, b"x");

            let err = fx.refuse(&slug.gz());

            assert_eq!(
                hostile_reason(&err),
                (
                    "app/h",
                    &HostileReason::HardLinkTarget {
                        target: target.to_owned()
                    }
                )
            );
            assert_eq!(
                err.to_string(),
                format!("hostile slug entry \"app/h\": hard link target {target:?} is not an earlier file inside app/")
            );
        }
    }

    #[test]
    fn hard_links_are_not_resolved_through_symlinks() {
        let fx = Fx::new();
        let elsewhere = fx.base.join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        fs::write(elsewhere.join("secret"), b"host secret").unwrap();
        let slug = Slug::new()
            .symlink("app/l", &elsewhere.display().to_string())
            .hard_link("app/h", "app/l/secret");

        let err = fx.refuse(&slug.gz());

        assert!(
            matches!(hostile_reason(&err).1, HostileReason::HardLinkTarget { .. }),
            "{err:?}"
        );
        assert_eq!(fs::metadata(elsewhere.join("secret")).unwrap().nlink(), 1);
    }

    #[test]
    fn device_nodes_fifos_and_unknown_types_are_refused() {
        for (kind, reason, message) in [
            (
                EntryType::Char,
                HostileReason::CharDevice,
                "character device nodes are not allowed",
            ),
            (
                EntryType::Block,
                HostileReason::BlockDevice,
                "block device nodes are not allowed",
            ),
            (
                EntryType::Fifo,
                HostileReason::Fifo,
                "fifos are not allowed",
            ),
            (
                EntryType::GNUSparse,
                HostileReason::Sparse,
                "sparse files are not supported",
            ),
            (
                EntryType::new(b'V'),
                HostileReason::UnsupportedType { type_flag: 'V' },
                "unsupported entry type 'V'",
            ),
        ] {
            let fx = Fx::new();

            let err = fx.refuse(&Slug::new().entry("app/node", kind, 0o644, b"", None).gz());

            assert_eq!(hostile_reason(&err), ("app/node", &reason));
            assert_eq!(
                err.to_string(),
                format!("hostile slug entry \"app/node\": {message}")
            );
        }
    }

    #[test]
    fn devices_outside_app_are_ignored_like_everything_else_there() {
        let fx = Fx::new();
        let bytes = Slug::new()
            .entry("dev/null", EntryType::Char, 0o666, b"", None)
            .file("app/Procfile", 0o644, b"web: x")
            .gz();
        let (slug, sha) = fx.write("slug.tgz", &bytes);

        let layer = fx.cache().layer(&slug, Some(&sha)).unwrap();

        assert!(!layer.dir.join("dev").exists());
    }

    #[test]
    fn duplicate_entries_are_refused() {
        let fx = Fx::new();

        let err = fx.refuse(
            &Slug::new()
                .file("app/x", 0o644, b"checked")
                .file("./app/x", 0o644, b"replaced")
                .gz(),
        );

        assert_eq!(hostile_reason(&err), ("./app/x", &HostileReason::Duplicate));
    }

    #[test]
    fn entries_below_a_file_are_refused() {
        let fx = Fx::new();

        let err = fx.refuse(
            &Slug::new()
                .file("app/f", 0o644, b"x")
                .file("app/f/x", 0o644, b"x")
                .gz(),
        );

        assert_eq!(
            hostile_reason(&err),
            (
                "app/f/x",
                &HostileReason::ParentNotDirectory {
                    component: "app/f".into()
                }
            )
        );
        assert_eq!(
            err.to_string(),
            "hostile slug entry \"app/f/x\": parent app/f is not a directory"
        );
    }

    #[test]
    fn pax_records_cannot_smuggle_nul_bytes_huge_paths_or_a_second_size() {
        let fx = Fx::new();
        let err = fx.refuse(
            &Slug::new()
                .pax(&[("path", b"app/a\0b")])
                .file("app/a", 0o644, b"x")
                .gz(),
        );
        assert_eq!(hostile_reason(&err), ("app/a\0b", &HostileReason::NulByte));

        let fx = Fx::new();
        let deep = "app/".to_owned() + &"d/".repeat(2100) + "f";
        let err = fx.refuse(
            &Slug::new()
                .pax(&[("path", deep.as_bytes())])
                .file("app/a", 0o644, b"x")
                .gz(),
        );
        assert_eq!(
            hostile_reason(&err),
            (deep.as_str(), &HostileReason::PathTooLong { limit: 4096 })
        );

        let fx = Fx::new();
        let err = fx.refuse(
            &Slug::new()
                .pax(&[("size", b"5")])
                .file("app/a", 0o644, b"abc")
                .gz(),
        );
        assert_eq!(
            hostile_reason(&err),
            ("app/a", &HostileReason::SizeMismatch { pax: 5, header: 3 })
        );
    }

    #[test]
    fn oversized_extension_headers_are_refused_without_buffering_them() {
        let fx = Fx::new();
        let name = vec![b'a'; 70_000];

        let err = fx.refuse(
            &Slug::new()
                .entry("././@LongLink", EntryType::GNULongName, 0o644, &name, None)
                .file("app/x", 0o644, b"x")
                .gz(),
        );

        assert_eq!(
            hostile_reason(&err),
            (
                "././@LongLink",
                &HostileReason::ExtensionTooLong {
                    limit: MAX_EXTENSION_BYTES
                }
            )
        );
    }

    #[test]
    fn unpacked_size_is_limited_by_bytes_actually_read() {
        let limits = UnpackLimits {
            max_unpacked_bytes: 1000,
            ..UnpackLimits::default()
        };
        for bytes in [
            Slug::new().file("app/big", 0o644, &[0; 1500]).gz(),
            Slug::new()
                .file("app/a", 0o644, &[0; 600])
                .file("app/b", 0o644, &[0; 600])
                .gz(),
            // Skipped entries are decompressed too, so they count.
            Slug::new()
                .file("other/big", 0o644, &[0; 1500])
                .file("app/a", 0o644, b"x")
                .gz(),
        ] {
            let fx = Fx::new();
            let cache = SlugCache::new(&fx.root, limits, None);

            let err = fx.refuse_with(&cache, &bytes);

            assert!(
                matches!(err, SlugError::TooLarge { limit: 1000 }),
                "{err:?}"
            );
            assert_eq!(err.to_string(), "slug unpacks to more than 1000 bytes");
        }
    }

    /// A slug of `app/` and a chain of `depth` nested directories with a file in each,
    /// listed depth first as `tar` lists them (every name a GNU long name once deep).
    fn deep_slug(depth: usize) -> Vec<u8> {
        let mut slug = Slug::new().dir("./app/", 0o755);
        let mut dir = String::from("./app");
        for _ in 0..depth {
            dir.push_str("/d");
            let mut header = Header::new_gnu();
            header.set_entry_type(EntryType::Directory);
            header.set_mode(0o755);
            header.set_mtime(MTIME);
            header.set_size(0);
            slug.tar
                .append_data(&mut header, format!("{dir}/"), io::empty())
                .unwrap();
            slug = slug.long_file(&format!("{dir}/f"), b"x");
        }
        slug.gz()
    }

    /// A slug of `app/` and `count` files in it.
    fn flat_slug(count: usize) -> Vec<u8> {
        let mut slug = Slug::new().dir("./app/", 0o755);
        for i in 0..count {
            slug = slug.file(&format!("./app/{i}"), 0o644, b"x");
        }
        slug.gz()
    }

    /// Unpacks `gz` into a fresh directory with the unpacker itself, for its statistics.
    fn unpack_stats(gz: &[u8], limits: UnpackLimits) -> Result<Stats, SlugError> {
        let tmp = tempfile::tempdir().unwrap();
        let root = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(tmp.path())
            .unwrap();
        let mut unpacker = Unpacker::new(
            Path::new("test.tgz"),
            tmp.path(),
            OwnedFd::from(root),
            (limits, ArchiveLayout::Slug),
            None,
        );
        unpacker.run(&mut MultiGzDecoder::new(gz))?;
        unpacker.finish()
    }

    #[test]
    fn walking_to_entries_is_linear_in_entries_however_deep_the_tree() {
        let limits = UnpackLimits {
            max_depth: 4096,
            ..UnpackLimits::default()
        };
        for depth in [100, 1000, 2000] {
            let entries = 1 + 2 * depth as u64;
            let deep = unpack_stats(&deep_slug(depth), limits).unwrap();
            let flat = unpack_stats(&flat_slug(entries as usize), limits).unwrap();
            assert_eq!(deep.files + deep.dirs, entries);
            // One open per directory to reach its file, one per directory to fix its mode
            // at the end: 2 per directory, against depth²/2 with a walk from the root.
            assert!(
                deep.dir_opens <= 2 * entries,
                "depth {depth}: {} directory opens for {entries} entries",
                deep.dir_opens
            );
            assert!(flat.dir_opens <= 2, "flat: {}", flat.dir_opens);
        }
    }

    #[test]
    fn paths_deeper_than_the_limit_are_refused() {
        let fx = Fx::new();
        // app + 256 directories: the directory entry at depth 256 is within the limit, its
        // file (257 components) is not.
        let err = fx.refuse(&deep_slug(DEFAULT_MAX_DEPTH));
        let (entry, reason) = hostile_reason(&err);
        assert_eq!(
            reason,
            &HostileReason::TooDeep {
                limit: DEFAULT_MAX_DEPTH
            }
        );
        assert!(entry.ends_with("/d/f"), "{entry}");
        assert!(err.to_string().contains("path deeper than 256 components"));
    }

    #[test]
    fn sources_unpack_under_app_with_every_slug_check() {
        let fx = Fx::new();
        let cache = fx.cache().with_layout(ArchiveLayout::Source);
        let source = Slug::new()
            .file("Procfile", 0o644, b"web: x")
            .dir("bin/", 0o755)
            .file("bin/web", 0o755, b"#!/bin/sh")
            .hard_link("bin/again", "bin/web")
            .symlink("up", "bin/web")
            .gz();
        let (path, sha) = fx.write("source.tgz", &source);
        let layer = cache.layer(&path, Some(&sha)).unwrap();
        let app = layer.dir.join("app");
        assert_eq!(fs::read(app.join("Procfile")).unwrap(), b"web: x");
        assert_eq!(fs::read(app.join("bin/again")).unwrap(), b"#!/bin/sh");
        assert_eq!(fs::read_link(app.join("up")).unwrap(), Path::new("bin/web"));
        // At the source's root, `..` is already outside app/.
        for hostile in [
            Slug::new().symlink("up", "../x").gz(),
            Slug::new().file("../x", 0o644, b"x").gz(),
            Slug::new().hard_link("x", "../etc/passwd").gz(),
        ] {
            let fx = Fx::new();
            let cache = fx.cache().with_layout(ArchiveLayout::Source);
            let err = fx.refuse_with(&cache, &hostile);
            hostile_reason(&err);
        }
    }

    #[test]
    fn entry_count_is_limited() {
        let fx = Fx::new();
        let cache = SlugCache::new(
            &fx.root,
            UnpackLimits {
                max_entries: 3,
                ..UnpackLimits::default()
            },
            None,
        );
        let mut slug = Slug::new();
        for i in 0..4 {
            slug = slug.file(&format!("app/{i}"), 0o644, b"x");
        }

        let err = fx.refuse_with(&cache, &slug.gz());

        assert!(
            matches!(err, SlugError::TooManyEntries { limit: 3 }),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "slug has more than 3 entries");
    }

    #[test]
    fn archives_without_app_are_refused() {
        let fx = Fx::new();

        let err = fx.refuse(&Slug::new().file("Procfile", 0o644, b"web: x").gz());

        assert!(matches!(err, SlugError::NoApp), "{err:?}");
        assert_eq!(err.to_string(), "slug has no entries under app/");
    }

    #[test]
    fn broken_archives_are_refused_with_a_clear_error() {
        let good = Slug::new().file("app/big", 0o644, &[7; 5000]).gz();
        let plain_tar = Slug::new().file("app/x", 0o644, b"x").tar();
        let mut bad_crc = good.clone();
        let crc_at = bad_crc.len() - 8;
        bad_crc[crc_at] ^= 0xff;
        let mut short_tar = Slug::new().file("app/big", 0o644, &[7; 5000]).tar();
        short_tar.truncate(512 + 2048);
        for (bytes, cause) in [
            (Vec::new(), "unexpected end of file"),
            (plain_tar, "invalid gzip header"),
            (good[..good.len() / 2].to_vec(), "incomplete deflate stream"),
            (
                bad_crc,
                "corrupt gzip stream does not have a matching checksum",
            ),
            (gzip(&short_tar), "archive ends inside entry \"app/big\""),
            (
                [good.as_slice(), b"trailing garbage"].concat(),
                "invalid gzip header",
            ),
        ] {
            let fx = Fx::new();

            let err = fx.refuse(&bytes);

            let SlugError::Corrupt { slug, source } = &err else {
                panic!("expected a corrupt-archive error, got {err:?}");
            };
            assert_eq!(
                err.to_string(),
                format!("slug {} is not a valid tar.gz archive", slug.display())
            );
            assert_eq!(source.to_string(), cause);
        }
    }

    #[test]
    fn concurrent_threads_unpack_once() {
        let fx = Fx::new();
        let (slug, sha) = fx.write("slug.tgz", &many_files_slug(300));
        let cache = Arc::new(fx.cache());
        let start = Arc::new(Barrier::new(8));

        let layers: Vec<Layer> = (0..8)
            .map(|_| {
                let (cache, start, slug, sha) =
                    (cache.clone(), start.clone(), slug.clone(), sha.clone());
                thread::spawn(move || {
                    start.wait();
                    cache.layer(&slug, Some(&sha)).unwrap()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|handle| handle.join().unwrap())
            .collect();

        assert_eq!(layers.iter().filter(|layer| layer.unpacked).count(), 1);
        assert!(layers.iter().all(|layer| layer.dir == fx.root.join(&sha)));
        assert_eq!(
            fs::read_dir(fx.root.join(&sha).join("app/f"))
                .unwrap()
                .count(),
            300
        );
        assert!(fx.leftovers().is_empty());
    }

    const CHILD_ROOT: &str = "MANIFOLD_SLUG_TEST_ROOT";
    const CHILD_SLUG: &str = "MANIFOLD_SLUG_TEST_SLUG";
    const CHILD_SHA: &str = "MANIFOLD_SLUG_TEST_SHA";
    const CHILD_READY: &str = "MANIFOLD_SLUG_TEST_READY";
    const CHILD_GO: &str = "MANIFOLD_SLUG_TEST_GO";
    const CHILD_OUT: &str = "MANIFOLD_SLUG_TEST_OUT";

    /// Not a test of its own: the body of the child processes that
    /// `concurrent_processes_unpack_once` and `a_killed_unpack_is_cleaned_up` start.
    #[test]
    #[ignore = "run in child processes by other tests"]
    fn child_process_layer() {
        let Ok(root) = std::env::var(CHILD_ROOT) else {
            return;
        };
        let var = |name| std::env::var(name).unwrap();
        if let Ok(ready) = std::env::var(CHILD_READY) {
            fs::write(ready, b"").unwrap();
            while !Path::new(&var(CHILD_GO)).exists() {
                thread::sleep(Duration::from_millis(1));
            }
        }
        let layer = SlugCache::new(root, UnpackLimits::default(), None)
            .layer(Path::new(&var(CHILD_SLUG)), Some(&var(CHILD_SHA)))
            .unwrap();
        fs::write(
            var(CHILD_OUT),
            if layer.unpacked { "unpacked" } else { "found" },
        )
        .unwrap();
    }

    /// Re-run this test binary as a separate process executing `child_process_layer`.
    /// A fresh process rather than `fork()`: the test harness is multi-threaded, and a
    /// forked child of a multi-threaded process may deadlock on a lock another thread held.
    fn spawn_child(envs: &[(&str, &Path)], sha: &str) -> std::process::Child {
        let module = module_path!();
        let module = module.split_once("::").map_or(module, |(_, rest)| rest);
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args([
                &format!("{module}::child_process_layer"),
                "--exact",
                "--ignored",
                "--test-threads=1",
            ])
            .env(CHILD_SHA, sha)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in envs {
            command.env(name, value);
        }
        command.spawn().unwrap()
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn concurrent_processes_unpack_once() {
        let fx = Fx::new();
        let (slug, sha) = fx.write("slug.tgz", &many_files_slug(1000));
        let go = fx.base.join("go");
        let children: Vec<_> = (0..4)
            .map(|i| {
                let ready = fx.base.join(format!("ready-{i}"));
                let out = fx.base.join(format!("out-{i}"));
                let child = spawn_child(
                    &[
                        (CHILD_ROOT, &fx.root),
                        (CHILD_SLUG, &slug),
                        (CHILD_READY, &ready),
                        (CHILD_GO, &go),
                        (CHILD_OUT, &out),
                    ],
                    &sha,
                );
                (child, ready, out)
            })
            .collect();
        wait_for("children to start", || {
            children.iter().all(|(_, ready, _)| ready.exists())
        });

        fs::write(&go, b"").unwrap();

        let mut outcomes = Vec::new();
        for (child, _, out) in children {
            let output = child.wait_with_output().unwrap();
            assert!(output.status.success(), "child failed: {output:?}");
            outcomes.push(fs::read_to_string(out).unwrap());
        }
        outcomes.sort();
        assert_eq!(outcomes, ["found", "found", "found", "unpacked"]);
        assert!(fx.leftovers().is_empty());
    }

    #[test]
    fn a_killed_unpack_is_cleaned_up_by_the_next_call() {
        let fx = Fx::new();
        let bytes = many_files_slug(2000);
        let (slug, sha) = fx.write("slug.tgz", &bytes);
        // The child reads the slug from a fifo, so it is provably mid-unpack (lock
        // held, temporary directory half full) when it is killed.
        let fifo = fx.base.join("slug.fifo");
        nix::unistd::mkfifo(&fifo, Mode::S_IRWXU).unwrap();
        let out = fx.base.join("out");
        let mut child = spawn_child(
            &[
                (CHILD_ROOT, &fx.root),
                (CHILD_SLUG, &fifo),
                (CHILD_OUT, &out),
            ],
            &sha,
        );
        let mut writer = OpenOptions::new().write(true).open(&fifo).unwrap();
        writer.write_all(&bytes[..bytes.len() / 2]).unwrap();
        wait_for("the child to unpack something", || {
            fx.leftovers()
                .first()
                .is_some_and(|tmp| fx.root.join(tmp).join("app/f").exists())
        });

        child.kill().unwrap();
        child.wait().unwrap();
        drop(writer);

        assert_eq!(
            fx.leftovers().len(),
            1,
            "the crash leaves its temporary directory"
        );
        assert!(!out.exists());
        let layer = fx.cache().layer(&slug, Some(&sha)).unwrap();
        assert!(layer.unpacked);
        assert_eq!(fs::read_dir(layer.dir.join("app/f")).unwrap().count(), 2000);
        assert!(fx.leftovers().is_empty());
    }

    #[test]
    fn a_layer_renamed_but_never_marked_complete_is_redone() {
        let fx = Fx::new();
        let (slug, sha) = fx.write("slug.tgz", &simple_slug());
        let half = fx.root.join(&sha).join("app");
        fs::create_dir_all(&half).unwrap();
        fs::write(half.join("partial"), b"").unwrap();

        let layer = fx.cache().layer(&slug, Some(&sha)).unwrap();

        assert!(layer.unpacked);
        assert!(!half.join("partial").exists());
        assert!(half.join("Procfile").is_file());
    }

    #[test]
    fn sweep_removes_leftovers_but_not_unpacks_in_progress() {
        let fx = Fx::new();
        let cache = fx.cache();
        assert_eq!(
            SlugCache::sweep_tmp(&fx.root).unwrap(),
            0,
            "no cache root yet"
        );
        let (slug, done) = fx.write("slug.tgz", &simple_slug());
        cache.layer(&slug, Some(&done)).unwrap();
        let (crashed, busy) = ("a".repeat(64), "b".repeat(64));
        for dir in [
            format!(".tmp-{crashed}-0123456789abcdef/app/x"),
            format!("{crashed}/app"),
            format!(".tmp-{busy}-0123456789abcdef/app"),
        ] {
            fs::create_dir_all(fx.root.join(dir)).unwrap();
        }
        let busy_lock = File::create(fx.root.join(format!("{busy}.lock"))).unwrap();
        let busy_lock = Flock::lock(busy_lock, FlockArg::LockExclusive).unwrap();

        assert_eq!(SlugCache::sweep_tmp(&fx.root).unwrap(), 2);

        assert!(!fx.root.join(&crashed).exists());
        assert_eq!(fx.leftovers(), [format!(".tmp-{busy}-0123456789abcdef")]);
        assert!(fx.root.join(&done).join("app/Procfile").is_file());
        drop(busy_lock);
        assert_eq!(SlugCache::sweep_tmp(&fx.root).unwrap(), 1);
        assert!(fx.leftovers().is_empty());
        assert!(cache
            .layer(&slug, Some(&done))
            .is_ok_and(|layer| !layer.unpacked));
    }

    #[test]
    fn owner_is_applied_to_every_entry() {
        if !manifold_test_support::require_root("owner_is_applied_to_every_entry") {
            return;
        }
        let fx = Fx::new();
        let bytes = Slug::new()
            .dir("./app/", 0o755)
            .dir("./app/bin/", 0o755)
            .file("./app/bin/web", 0o4755, b"#!/bin/sh\n")
            .file("./app/.venv/pyvenv.cfg", 0o644, b"home = /usr/bin\n")
            .symlink("./app/current", "bin/web")
            .hard_link("./app/web2", "./app/bin/web")
            .gz();
        let (slug, sha) = fx.write("slug.tgz", &bytes);
        let cache = SlugCache::new(&fx.root, UnpackLimits::default(), Some((4242, 4343)));

        let layer = cache.layer(&slug, Some(&sha)).unwrap();

        for path in [
            "app",
            "app/bin",
            "app/bin/web",
            "app/.venv",
            "app/.venv/pyvenv.cfg",
            "app/current",
            "app/web2",
        ] {
            let meta = fs::symlink_metadata(layer.dir.join(path)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (4242, 4343), "owner of {path}");
        }
        assert_eq!(mode(&layer.dir.join("app/bin/web")), 0o755);
        let top = fs::metadata(&layer.dir).unwrap();
        assert_eq!(
            (top.uid(), top.gid()),
            (0, 0),
            "the layer root stays root's"
        );
    }

    #[test]
    fn collect_removes_only_layers_unused_and_idle() {
        let fx = Fx::new();
        let cache = fx.cache();
        let slug_of = |name: &str| {
            let bytes = Slug::new()
                .dir("./app/", 0o755)
                .file("./app/Procfile", 0o644, name.as_bytes())
                .gz();
            fx.write(&format!("{name}.tgz"), &bytes)
        };
        let (a, sha_a) = slug_of("a");
        let (b, sha_b) = slug_of("b");
        let (c, sha_c) = slug_of("c");
        for (slug, sha) in [(&a, &sha_a), (&b, &sha_b), (&c, &sha_c)] {
            cache.layer(slug, Some(sha)).unwrap();
        }
        let idle = std::time::Duration::from_secs(3600);
        let age = |sha: &str, secs: u64| {
            File::options()
                .write(true)
                .open(fx.root.join(format!("{sha}.done")))
                .unwrap()
                .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(secs))
                .unwrap();
        };
        // a: idle and unused; b: idle but a dyno uses it; c: used a minute ago.
        age(&sha_a, 7200);
        age(&sha_b, 7200);
        age(&sha_c, 60);
        let in_use = |sha: &str| sha == sha_b;

        let removed = SlugCache::collect(&fx.root, &in_use, idle).unwrap();
        assert_eq!(removed, [sha_a.as_str()]);
        assert!(!fx.root.join(&sha_a).exists() && !fx.root.join(format!("{sha_a}.done")).exists());
        assert!(fx.root.join(&sha_b).join("app/Procfile").is_file());
        assert!(fx.root.join(&sha_c).join("app/Procfile").is_file());

        // A layer in use again is marked as used: an idle one taken back is kept.
        age(&sha_c, 7200);
        assert!(!cache.layer(&c, Some(&sha_c)).unwrap().unpacked);
        assert!(SlugCache::collect(&fx.root, &in_use, idle)
            .unwrap()
            .is_empty());

        // A layer whose lock is held (an unpack or a start in progress) is skipped.
        age(&sha_c, 7200);
        let busy = cache.try_lock(&sha_c).unwrap().unwrap();
        assert!(SlugCache::collect(&fx.root, &in_use, idle)
            .unwrap()
            .is_empty());
        drop(busy);
        assert_eq!(
            SlugCache::collect(&fx.root, &in_use, idle).unwrap(),
            [sha_c.as_str()]
        );

        // A collected layer is unpacked again when asked for.
        assert!(cache.layer(&a, Some(&sha_a)).unwrap().unpacked);
        assert!(SlugCache::collect(&fx.root.join("missing"), &in_use, idle)
            .unwrap()
            .is_empty());
    }
}
