//! The hostile-archive unpacker: one slug (or build source) archive into a private
//! directory, walked with `openat` and `O_NOFOLLOW` from a directory held open, so that no
//! entry can reach outside it whatever its path, link or type; see [`super::HostileReason`]
//! for what it refuses and [`super::UnpackLimits`] for its bounds.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};
use tar::{Archive, EntryType};
use tracing::warn;

use super::{
    ArchiveLayout, HostileReason, SlugError, UnpackLimits, COPY_BUF_BYTES, MAX_EXTENSION_BYTES,
    MAX_PATH_BYTES,
};

#[derive(Debug, Default)]
pub(super) struct Stats {
    pub(super) files: u64,
    pub(super) dirs: u64,
    pub(super) symlinks: u64,
    pub(super) hard_links: u64,
    pub(super) ignored: u64,
    pub(super) bytes: u64,
    /// Directories opened (or created and opened) while walking to entries: the
    /// unpacker's work beyond reading, kept linear in the number of entries.
    pub(super) dir_opens: u64,
}

/// Extension headers seen since the last real entry; they describe the next one.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

/// The PAX records we act on. Everything else is ignored on purpose: `uid`/`gid`/names
/// because ownership is the cache's decision, and `SCHILY.xattr.*` because extended
/// attributes include file capabilities (`security.capability`), which a slug must not
/// grant.
#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    mtime: Option<u64>,
    size: Option<u64>,
    sparse: bool,
}

impl Pax {
    fn parse(data: &[u8]) -> io::Result<Self> {
        let mut pax = Pax::default();
        for record in tar::PaxExtensions::new(data) {
            let record = record?;
            let value = record.value_bytes();
            match record.key_bytes() {
                b"path" => pax.path = Some(value.to_vec()),
                b"linkpath" => pax.linkpath = Some(value.to_vec()),
                // Fractional and negative times are legal; whole seconds from 0 suffice.
                b"mtime" => {
                    let whole = value.split(|b| *b == b'.').next().unwrap_or_default();
                    pax.mtime = Some(parse_decimal(whole).unwrap_or(0));
                }
                b"size" => {
                    pax.size = Some(parse_decimal(value).ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidData, "malformed pax size record")
                    })?);
                }
                key if key.starts_with(b"GNU.sparse.") => pax.sparse = true,
                _ => {}
            }
        }
        Ok(pax)
    }
}

fn parse_decimal(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// A directory whose mode and mtime are applied after all entries: creating children
/// would otherwise bump the mtime, and a mode without owner write would block them.
struct DirFixup {
    path: Vec<Vec<u8>>,
    mode: u32,
    mtime: u64,
}

/// One directory of the open path: the directories from the root to the last entry's
/// parent stay open, so that the next entry opens only the components its path does not
/// share with the last one. Archives list entries depth first, so walking to each entry
/// costs O(1) `openat` calls instead of O(depth), and an unpack is linear instead of
/// quadratic in the tree's depth. Safe to reuse: nothing in the private temporary
/// directory is ever removed or replaced while unpacking (duplicates are refused).
struct OpenDir {
    component: Vec<u8>,
    fd: OwnedFd,
}

/// How walking to a directory failed.
enum WalkError {
    Symlink,
    NotDirectory,
    Sys(Errno),
}

/// Unpacks one archive into a temporary directory it holds open.
pub(super) struct Unpacker {
    slug: PathBuf,
    /// The temporary directory `root` is open on, for error messages.
    dir: PathBuf,
    root: OwnedFd,
    limits: UnpackLimits,
    layout: ArchiveLayout,
    owner: Option<(Uid, Gid)>,
    entries: u64,
    stats: Stats,
    buf: Vec<u8>,
    /// The open path, root first; never longer than `limits.max_depth`.
    open: Vec<OpenDir>,
    dirs: Vec<DirFixup>,
    saw_app: bool,
}

impl Unpacker {
    pub(super) fn new(
        slug: &Path,
        dir: &Path,
        root: OwnedFd,
        (limits, layout): (UnpackLimits, ArchiveLayout),
        owner: Option<(Uid, Gid)>,
    ) -> Self {
        Self {
            slug: slug.to_owned(),
            dir: dir.to_owned(),
            root,
            limits,
            layout,
            owner,
            entries: 0,
            stats: Stats::default(),
            buf: vec![0; COPY_BUF_BYTES],
            open: Vec::new(),
            dirs: Vec::new(),
            saw_app: false,
        }
    }

    /// Read every entry, then the rest of the decompressed stream.
    pub(super) fn run<R: Read>(&mut self, decoder: &mut R) -> Result<(), SlugError> {
        {
            // Raw mode: we handle GNU long names and PAX headers ourselves, so that
            // their size is capped (the `tar` crate would buffer any size).
            let mut archive = Archive::new(&mut *decoder);
            let entries = archive.entries().map_err(|e| self.corrupt(e))?.raw(true);
            let mut pending = Pending::default();
            for entry in entries {
                let mut entry = entry.map_err(|e| self.corrupt(e))?;
                self.entry(&mut entry, &mut pending)?;
            }
            if pending.long_name.is_some() || pending.long_link.is_some() || pending.pax.is_some() {
                return Err(
                    self.corrupt(invalid_data("extension header at the end of the archive"))
                );
            }
        }
        // Reading to the end makes the gzip decoder check its CRC and length trailer:
        // that is how a truncated or damaged slug is caught even when the tar stream
        // ended cleanly. Record padding after the end-of-archive blocks counts as data.
        self.copy(decoder, None, &mut io::sink(), "")?;
        if !self.saw_app {
            return Err(SlugError::NoApp);
        }
        Ok(())
    }

    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        pending: &mut Pending,
    ) -> Result<(), SlugError> {
        let kind = entry.header().entry_type();
        let slot = match kind {
            EntryType::GNULongName => Some(&mut pending.long_name),
            EntryType::GNULongLink => Some(&mut pending.long_link),
            EntryType::XHeader => Some(&mut pending.pax),
            _ => None,
        };
        if let Some(slot) = slot {
            if slot.is_some() {
                return Err(self.corrupt(invalid_data(
                    "two extension headers of one kind for one entry",
                )));
            }
            *slot = Some(self.read_extension(entry)?);
            return Ok(());
        }
        self.count_entry()?;
        if kind == EntryType::XGlobalHeader {
            // Global PAX headers carry nothing we use (git archive puts the commit id
            // there); read them only to cap their size.
            self.read_extension(entry)?;
            return Ok(());
        }

        let ext = std::mem::take(pending);
        let mut pax = match &ext.pax {
            Some(data) => Pax::parse(data).map_err(|e| self.corrupt(e))?,
            None => Pax::default(),
        };
        let header = entry.header();
        let raw_path = pax
            .path
            .take()
            .or(ext.long_name)
            .unwrap_or_else(|| header.path_bytes().into_owned());
        let name = String::from_utf8_lossy(&raw_path).into_owned();
        let size = entry.size();
        if let Some(pax_size) = pax.size.filter(|s| *s != size) {
            return Err(hostile(
                &name,
                HostileReason::SizeMismatch {
                    pax: pax_size,
                    header: size,
                },
            ));
        }
        let mut path = normalize(&raw_path).map_err(|reason| hostile(&name, reason))?;
        if self.layout == ArchiveLayout::Source {
            path.insert(0, b"app");
        }
        if path.len() > self.limits.max_depth {
            return Err(hostile(
                &name,
                HostileReason::TooDeep {
                    limit: self.limits.max_depth,
                },
            ));
        }
        // Refused even outside app/: the tar crate's raw reader does not know where
        // a sparse entry's extra map blocks end, so skipping one would misparse the rest.
        if pax.sparse || kind == EntryType::GNUSparse {
            return Err(hostile(&name, HostileReason::Sparse));
        }
        if path.first().copied() != Some(&b"app"[..]) {
            // Outside app/ (including `./` itself): ignored, as Heroku does.
            self.stats.ignored += 1;
            return self.drain(entry, &name);
        }
        self.saw_app = true;
        let link = pax
            .linkpath
            .take()
            .or(ext.long_link)
            .or_else(|| header.link_name_bytes().map(|l| l.into_owned()));
        let mode = header
            .mode()
            .map_err(|e| self.corrupt(e))
            .map(|mode| strip_special_bits(mode, &name, kind))?;
        let mtime = match pax.mtime {
            Some(mtime) => mtime,
            None => header.mtime().map_err(|e| self.corrupt(e))?,
        };
        // Old (v7) archives mark directories with a trailing slash on a regular entry.
        let is_dir = kind == EntryType::Directory
            || (matches!(kind, EntryType::Regular | EntryType::Continuous)
                && raw_path.ends_with(b"/"));
        if path.len() == 1 && !is_dir {
            return Err(hostile(&name, HostileReason::AppNotDirectory));
        }
        if is_dir {
            self.directory(&path, mode, mtime, &name)?;
        } else {
            match kind {
                EntryType::Regular | EntryType::Continuous => {
                    return self.file(entry, &path, mode, mtime, &name);
                }
                EntryType::Symlink => self.symlink(&path, link.as_deref(), mtime, &name)?,
                EntryType::Link => self.hard_link(&path, link.as_deref(), &name)?,
                EntryType::Char => return Err(hostile(&name, HostileReason::CharDevice)),
                EntryType::Block => return Err(hostile(&name, HostileReason::BlockDevice)),
                EntryType::Fifo => return Err(hostile(&name, HostileReason::Fifo)),
                other => {
                    let type_flag = char::from(other.as_byte());
                    return Err(hostile(&name, HostileReason::UnsupportedType { type_flag }));
                }
            }
        }
        self.drain(entry, &name)
    }

    fn count_entry(&mut self) -> Result<(), SlugError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(SlugError::TooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    fn read_extension<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<Vec<u8>, SlugError> {
        let size = entry.size();
        let name = String::from_utf8_lossy(&entry.header().path_bytes()).into_owned();
        if size > MAX_EXTENSION_BYTES {
            return Err(hostile(
                &name,
                HostileReason::ExtensionTooLong {
                    limit: MAX_EXTENSION_BYTES,
                },
            ));
        }
        let mut data = Vec::new();
        self.copy(entry, Some(size), &mut data, &name)?;
        // GNU long names and links are NUL-terminated.
        while data.last() == Some(&0) {
            data.pop();
        }
        Ok(data)
    }

    /// Skip an entry's data, charging it to the size limit: decompressing it costs the
    /// same whether we keep the bytes or not.
    fn drain<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
    ) -> Result<(), SlugError> {
        let size = entry.size();
        self.copy(entry, Some(size), &mut io::sink(), name)
            .map(drop)
    }

    /// Copy `reader` into `out`, charging every byte to the size limit *before* writing
    /// it, and check that exactly `expected` bytes came (fewer means a truncated tar).
    fn copy<R: Read + ?Sized, W: Write>(
        &mut self,
        reader: &mut R,
        expected: Option<u64>,
        out: &mut W,
        name: &str,
    ) -> Result<u64, SlugError> {
        let mut total: u64 = 0;
        loop {
            let n = match reader.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(self.corrupt(err)),
            };
            let n64 = u64::try_from(n).unwrap_or(u64::MAX);
            self.stats.bytes = self.stats.bytes.saturating_add(n64);
            if self.stats.bytes > self.limits.max_unpacked_bytes {
                return Err(SlugError::TooLarge {
                    limit: self.limits.max_unpacked_bytes,
                });
            }
            out.write_all(&self.buf[..n])
                .map_err(|source| unpack_error(name, source))?;
            total = total.saturating_add(n64);
        }
        if expected.is_some_and(|expected| expected != total) {
            return Err(self.corrupt(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("archive ends inside entry {name:?}"),
            )));
        }
        Ok(total)
    }

    fn directory(
        &mut self,
        path: &[&[u8]],
        mode: u32,
        mtime: u64,
        name: &str,
    ) -> Result<(), SlugError> {
        let (last, parents) = split(path);
        let dirfd = self.parent_dir(parents, name)?;
        match self.open_or_create_dir(dirfd, last) {
            Ok(_) => {}
            Err(WalkError::Symlink | WalkError::NotDirectory) => {
                return Err(hostile(name, HostileReason::Duplicate));
            }
            Err(WalkError::Sys(errno)) => return Err(unpack_error(name, errno.into())),
        }
        self.stats.dirs += 1;
        self.dirs.push(DirFixup {
            path: path.iter().map(|c| c.to_vec()).collect(),
            mode,
            mtime,
        });
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &[&[u8]],
        mode: u32,
        mtime: u64,
        name: &str,
    ) -> Result<(), SlugError> {
        let (last, parents) = split(path);
        let dirfd = self.parent_dir(parents, name)?;
        // O_EXCL: never open something that exists, in particular never a symlink.
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd =
            openat_owned(dirfd, last, flags, Mode::from_bits_truncate(0o600)).map_err(|errno| {
                match errno {
                    Errno::EEXIST => hostile(name, HostileReason::Duplicate),
                    errno => unpack_error(name, errno.into()),
                }
            })?;
        let mut file = File::from(fd);
        let size = entry.size();
        self.copy(entry, Some(size), &mut file, name)?;
        let fd = file.as_raw_fd();
        // chown before chmod: chown may clear mode bits.
        self.chown(fd)
            .and_then(|()| nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(mode)))
            .and_then(|()| nix::sys::stat::futimens(fd, &timespec(mtime), &timespec(mtime)))
            .map_err(|errno| unpack_error(name, errno.into()))?;
        self.stats.files += 1;
        Ok(())
    }

    fn symlink(
        &mut self,
        path: &[&[u8]],
        target: Option<&[u8]>,
        mtime: u64,
        name: &str,
    ) -> Result<(), SlugError> {
        let target = target.unwrap_or_default();
        check_symlink_target(path, target).map_err(|reason| hostile(name, reason))?;
        let (last, parents) = split(path);
        let dirfd = self.parent_dir(parents, name)?;
        nix::unistd::symlinkat(target, Some(dirfd), last).map_err(|errno| match errno {
            Errno::EEXIST => hostile(name, HostileReason::Duplicate),
            errno => unpack_error(name, errno.into()),
        })?;
        if let Some((uid, gid)) = self.owner {
            nix::unistd::fchownat(
                Some(dirfd),
                last,
                Some(uid),
                Some(gid),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|errno| unpack_error(name, errno.into()))?;
        }
        let time = timespec(mtime);
        nix::sys::stat::utimensat(
            Some(dirfd),
            last,
            &time,
            &time,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|errno| unpack_error(name, errno.into()))?;
        self.stats.symlinks += 1;
        Ok(())
    }

    /// The target must be a regular file an earlier entry created inside `app/`, reached
    /// without following any symlink; linking to a symlink is refused because its
    /// relative target was checked against *its* directory, not the link's.
    fn hard_link(
        &mut self,
        path: &[&[u8]],
        target: Option<&[u8]>,
        name: &str,
    ) -> Result<(), SlugError> {
        let target = target.unwrap_or_default();
        let refused = || {
            hostile(
                name,
                HostileReason::HardLinkTarget {
                    target: String::from_utf8_lossy(target).into_owned(),
                },
            )
        };
        let mut target_path = normalize(target).map_err(|_| refused())?;
        if self.layout == ArchiveLayout::Source {
            target_path.insert(0, b"app");
        }
        if target_path.len() < 2 || target_path[0] != b"app" {
            return Err(refused());
        }
        let (target_last, target_parents) = split(&target_path);
        let target_dir = self.open_existing(target_parents).ok_or_else(refused)?;
        let stat = nix::sys::stat::fstatat(
            Some(target_dir.as_raw_fd()),
            target_last,
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|_| refused())?;
        if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(refused());
        }
        let (last, parents) = split(path);
        let dirfd = self.parent_dir(parents, name)?;
        nix::unistd::linkat(
            Some(target_dir.as_raw_fd()),
            target_last,
            Some(dirfd),
            last,
            AtFlags::empty(),
        )
        .map_err(|errno| match errno {
            Errno::EEXIST => hostile(name, HostileReason::Duplicate),
            errno => unpack_error(name, errno.into()),
        })?;
        self.stats.hard_links += 1;
        Ok(())
    }

    /// The directory that will hold an entry, creating missing parents (mode 0755, the
    /// cache's owner) and refusing to pass through a symlink or a non-directory.
    fn parent_dir(&mut self, parents: &[&[u8]], name: &str) -> Result<RawFd, SlugError> {
        self.walk(parents).map_err(|(depth, err)| {
            let component = join(&parents[..=depth]);
            match err {
                WalkError::Symlink => hostile(name, HostileReason::ThroughSymlink { component }),
                WalkError::NotDirectory => {
                    hostile(name, HostileReason::ParentNotDirectory { component })
                }
                WalkError::Sys(errno) => unpack_error(name, errno.into()),
            }
        })
    }

    /// Makes `path` the open path, keeping the directories it shares with the current one
    /// and opening (creating where missing) only the rest; returns the last directory's
    /// descriptor, valid until the next walk. On error, the index of the failing component.
    fn walk<C: AsRef<[u8]>>(&mut self, path: &[C]) -> Result<RawFd, (usize, WalkError)> {
        let shared = self
            .open
            .iter()
            .zip(path)
            .take_while(|(open, component)| open.component == component.as_ref())
            .count();
        self.open.truncate(shared);
        for (depth, component) in path.iter().enumerate().skip(shared) {
            let at = self
                .open
                .last()
                .map_or(self.root.as_raw_fd(), |d| d.fd.as_raw_fd());
            self.stats.dir_opens += 1;
            let fd = self
                .open_or_create_dir(at, component.as_ref())
                .map_err(|err| (depth, err))?;
            self.open.push(OpenDir {
                component: component.as_ref().to_vec(),
                fd,
            });
        }
        Ok(self
            .open
            .last()
            .map_or(self.root.as_raw_fd(), |d| d.fd.as_raw_fd()))
    }

    fn open_or_create_dir(&self, dirfd: RawFd, component: &[u8]) -> Result<OwnedFd, WalkError> {
        match open_dir_at(dirfd, component) {
            Ok(fd) => return Ok(fd),
            Err(Errno::ENOENT) => {}
            Err(Errno::ENOTDIR | Errno::ELOOP) => return Err(classify(dirfd, component)),
            Err(errno) => return Err(WalkError::Sys(errno)),
        }
        nix::sys::stat::mkdirat(Some(dirfd), component, Mode::from_bits_truncate(0o755))
            .map_err(WalkError::Sys)?;
        let fd = open_dir_at(dirfd, component).map_err(WalkError::Sys)?;
        // Explicit, so the umask does not decide; explicit directory entries get their
        // own mode at the end.
        nix::sys::stat::fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(0o755))
            .and_then(|()| self.chown(fd.as_raw_fd()))
            .map_err(WalkError::Sys)?;
        Ok(fd)
    }

    /// Open an existing directory below the root without following symlinks.
    fn open_existing<C: AsRef<[u8]>>(&mut self, components: &[C]) -> Option<OwnedFd> {
        let mut current: Option<OwnedFd> = None;
        for component in components {
            self.stats.dir_opens += 1;
            let at = current
                .as_ref()
                .map_or(self.root.as_raw_fd(), AsRawFd::as_raw_fd);
            current = Some(open_dir_at(at, component.as_ref()).ok()?);
        }
        current
    }

    fn chown(&self, fd: RawFd) -> nix::Result<()> {
        match self.owner {
            Some((uid, gid)) => nix::unistd::fchown(fd, Some(uid), Some(gid)),
            None => Ok(()),
        }
    }

    /// Apply directory modes (always at least 0755, so the dyno user can read `/app`
    /// whoever owns it) and mtimes, then make the whole layer durable before it is
    /// renamed into place: a layer must never be visible with missing data.
    pub(super) fn finish(mut self) -> Result<Stats, SlugError> {
        // In path order, so that each walk opens only the components its path does not
        // share with the previous one: linear in the number of directories.
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by(|a, b| a.path.cmp(&b.path));
        for fixup in &dirs {
            let name = join(&fixup.path);
            // Every component exists (the entries created them), so this creates nothing.
            let fd = self.walk(&fixup.path).map_err(|(_, err)| match err {
                WalkError::Sys(errno) => unpack_error(&name, errno.into()),
                WalkError::Symlink | WalkError::NotDirectory => {
                    unpack_error(&name, io::ErrorKind::NotFound.into())
                }
            })?;
            let time = timespec(fixup.mtime);
            nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(fixup.mode | 0o755))
                .and_then(|()| nix::sys::stat::futimens(fd, &time, &time))
                .map_err(|errno| unpack_error(&name, errno.into()))?;
        }
        self.open.clear();
        nix::unistd::syncfs(self.root.as_raw_fd()).map_err(|errno| SlugError::Cache {
            path: self.dir.clone(),
            source: errno.into(),
        })?;
        Ok(self.stats)
    }

    fn corrupt(&self, source: io::Error) -> SlugError {
        SlugError::Corrupt {
            slug: self.slug.clone(),
            source,
        }
    }
}

/// Check a symlink's target; the policy is explained on [`HostileReason::SymlinkEscape`].
fn check_symlink_target(path: &[&[u8]], target: &[u8]) -> Result<(), HostileReason> {
    if target.is_empty() {
        return Err(HostileReason::EmptySymlinkTarget);
    }
    if target.contains(&0) {
        return Err(HostileReason::NulByte);
    }
    if target.starts_with(b"/") {
        return Ok(());
    }
    // Components of the link's directory, `app` included: `..` may never pop `app`.
    let mut depth = path.len().saturating_sub(1);
    for component in target.split(|b| *b == b'/') {
        match component {
            b"" | b"." => {}
            b".." if depth <= 1 => {
                return Err(HostileReason::SymlinkEscape {
                    target: String::from_utf8_lossy(target).into_owned(),
                });
            }
            b".." => depth -= 1,
            _ => depth += 1,
        }
    }
    Ok(())
}

/// Split an entry path into components, dropping empty and `.` ones (so `./app/x`,
/// `app//x` and `app/./x` are all `app/x`), refusing absolute paths, `..` anywhere and
/// NUL bytes (which only a PAX record could carry) and paths longer than `PATH_MAX`.
fn normalize(raw: &[u8]) -> Result<Vec<&[u8]>, HostileReason> {
    if raw.len() > MAX_PATH_BYTES {
        return Err(HostileReason::PathTooLong {
            limit: MAX_PATH_BYTES,
        });
    }
    if raw.contains(&0) {
        return Err(HostileReason::NulByte);
    }
    if raw.starts_with(b"/") {
        return Err(HostileReason::AbsolutePath);
    }
    let mut components = Vec::new();
    for component in raw.split(|b| *b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return Err(HostileReason::ParentDir),
            component => components.push(component),
        }
    }
    Ok(components)
}

/// Only called for non-empty paths (`normalize` output starting with `app`).
fn split<'p, 'c>(path: &'p [&'c [u8]]) -> (&'c [u8], &'p [&'c [u8]]) {
    match path.split_last() {
        Some((last, parents)) => (last, parents),
        None => (b".", path),
    }
}

fn join<C: AsRef<[u8]>>(components: &[C]) -> String {
    let parts: Vec<_> = components
        .iter()
        .map(|c| String::from_utf8_lossy(c.as_ref()))
        .collect();
    parts.join("/")
}

/// Keep the permission bits; drop setuid/setgid/sticky (a setuid binary in a slug is a
/// privilege escalation waiting for a dyno without `no_new_privs`) and file-type bits
/// some archivers put in the mode field.
fn strip_special_bits(mode: u32, name: &str, kind: EntryType) -> u32 {
    let mode = mode & 0o7777;
    // Link modes are meaningless (never applied), so no point warning about them.
    let applied = !matches!(kind, EntryType::Symlink | EntryType::Link);
    if mode & 0o7000 != 0 && applied {
        warn!(entry = name, mode = %format_args!("{mode:o}"), "stripping setuid/setgid/sticky bits from slug entry");
    }
    mode & 0o777
}

fn timespec(secs: u64) -> TimeSpec {
    TimeSpec::new(i64::try_from(secs).unwrap_or(i64::MAX), 0)
}

fn classify(dirfd: RawFd, component: &[u8]) -> WalkError {
    match nix::sys::stat::fstatat(Some(dirfd), component, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK => {
            WalkError::Symlink
        }
        Ok(_) => WalkError::NotDirectory,
        Err(errno) => WalkError::Sys(errno),
    }
}

fn open_dir_at(dirfd: RawFd, component: &[u8]) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    openat_owned(dirfd, component, flags, Mode::empty())
}

fn openat_owned(dirfd: RawFd, component: &[u8], flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
    let fd = nix::fcntl::openat(Some(dirfd), component, flags, mode)?;
    // SAFETY: `openat` just returned `fd` as a new descriptor that nothing else owns or
    // will close, so `OwnedFd` may take it over and close it exactly once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn hostile(entry: &str, reason: HostileReason) -> SlugError {
    SlugError::Hostile {
        entry: entry.to_owned(),
        reason,
    }
}

fn unpack_error(entry: &str, source: io::Error) -> SlugError {
    SlugError::Unpack {
        entry: entry.to_owned(),
        source,
    }
}

fn invalid_data(message: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}
