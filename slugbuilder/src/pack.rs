//! Slug packing: a compiled build directory into a gzipped tar of `./app/...`.
//!
//! The archive looks like `tar czf slug.tgz ./app` made with GNU tar, as Heroku's slugs do:
//! GNU headers, names that literally start with `./app/` (the `tar` crate drops a leading
//! `./`, so names are written into the headers here), long names and link targets as GNU
//! long-name entries, permission bits and mtimes kept, symlinks stored as symlinks (never
//! followed), hard links stored as separate copies. Owners are stored as 0:0: the agent decides
//! who owns `/app` in a dyno, so the builder's own uid must not leak into the slug. Sockets,
//! fifos and device nodes are left out; an app has no use for them in a slug.
//!
//! Compression runs on every core with `gzp` (pigz's scheme: fixed-size blocks compressed in
//! parallel, each primed with the previous block's last 32 KiB as a dictionary, so the result
//! is a single ordinary gzip member that any gzip reader, including a non-multi-member one,
//! can read). The sha256 and size are computed while writing, so the slug is read zero times
//! after it is written, and a slug over the size limit is abandoned as soon as it crosses it.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use flate2::Compression;
use gzp::deflate::Gzip;
use gzp::par::compress::{ParCompress, ParCompressBuilder};
use gzp::ZWriter;
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

/// The prefix of every entry in a slug.
const ROOT: &[u8] = b"./app";

/// The widest name or link target a plain tar header holds.
const HEADER_NAME_LEN: usize = 100;

/// How a slug is packed.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Abandon the slug once its compressed size exceeds this many bytes.
    pub max_size: Option<u64>,
    /// gzip level, 0 to 9; 6 is gzip's own default.
    pub level: u32,
    /// Compression threads; 0 means one per available core.
    pub threads: usize,
}

impl Default for PackOptions {
    fn default() -> Self {
        Self {
            max_size: None,
            level: 6,
            threads: 0,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    /// Hex sha256 of the compressed slug.
    pub sha256: String,
    /// Size of the compressed slug in bytes.
    pub size: u64,
}

/// Why packing failed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("slug exceeds the size limit of {limit} bytes compressed")]
    TooLarge { limit: u64 },
    #[error("cannot read {}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write the slug to {}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot start the compressor")]
    Compressor { source: gzp::GzpError },
}

/// Packs the directory `app_dir` into a slug at `out`, replacing any file there.
///
/// On error `out` may hold a partial file; callers that must never expose one write to a
/// temporary name and rename (as [`crate::build`] does).
pub fn pack(app_dir: &Path, out: &Path, options: &PackOptions) -> Result<Packed, PackError> {
    let write_error = |source| PackError::Write {
        path: out.to_owned(),
        source,
    };
    let file = File::create(out).map_err(write_error)?;
    let exceeded = Arc::new(AtomicBool::new(false));
    let sink = Sink {
        file,
        hasher: Sha256::new(),
        written: 0,
        limit: options.max_size,
        exceeded: Arc::clone(&exceeded),
    };
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let compressor = ParCompressBuilder::<Gzip>::new()
        .num_threads(threads)
        .map_err(|source| PackError::Compressor { source })?
        .compression_level(Compression::new(options.level.min(9)))
        .from_writer(sink);
    let mut archive = tar::Builder::new(GzWriter(Some(compressor)));

    let written = append_tree(&mut archive, app_dir).and_then(|()| {
        archive.finish().map_err(write_error)?;
        let gz = archive.into_inner().map_err(write_error)?;
        gz.finish().map_err(write_error)
    });
    match written {
        Ok(sink) => {
            sink.file.sync_all().map_err(write_error)?;
            Ok(Packed {
                sha256: hex(&sink.hasher.finalize()),
                size: sink.written,
            })
        }
        Err(_) if exceeded.load(Ordering::SeqCst) => Err(PackError::TooLarge {
            limit: options.max_size.unwrap_or_default(),
        }),
        Err(e) => Err(e),
    }
}

/// Lower-case hex of a digest.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn append_tree<W: Write>(archive: &mut tar::Builder<W>, app_dir: &Path) -> Result<(), PackError> {
    let meta = fs::metadata(app_dir).map_err(|source| PackError::Read {
        path: app_dir.to_owned(),
        source,
    })?;
    let mut name = ROOT.to_vec();
    append_entry(archive, app_dir, &meta, &mut name)
}

/// Appends `path` (already `lstat`ed) under the archive name in `name`, recursing into
/// directories in name order so that equal trees give equal archives.
fn append_entry<W: Write>(
    archive: &mut tar::Builder<W>,
    path: &Path,
    meta: &fs::Metadata,
    name: &mut Vec<u8>,
) -> Result<(), PackError> {
    let read_error = |source| PackError::Read {
        path: path.to_owned(),
        source,
    };
    // The archive is in memory until the sink; failures there surface as write errors.
    let write_error = |source| PackError::Write {
        path: path.to_owned(),
        source,
    };
    let file_type = meta.file_type();
    let mut header = Header::new_gnu();
    header.set_mode(meta.permissions().mode() & 0o7777);
    header.set_mtime(u64::try_from(meta.mtime()).unwrap_or_default());
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(0);
    if file_type.is_dir() {
        header.set_entry_type(EntryType::Directory);
        name.push(b'/');
        append_raw(archive, &mut header, name, None, io::empty()).map_err(write_error)?;
        let mut children: Vec<fs::DirEntry> = fs::read_dir(path)
            .map_err(read_error)?
            .collect::<Result<_, _>>()
            .map_err(read_error)?;
        children.sort_by_key(|entry| entry.file_name());
        let len = name.len();
        for child in children {
            name.truncate(len);
            name.extend_from_slice(child.file_name().as_bytes());
            let child_path = child.path();
            let child_meta =
                fs::symlink_metadata(&child_path).map_err(|source| PackError::Read {
                    path: child_path.clone(),
                    source,
                })?;
            append_entry(archive, &child_path, &child_meta, name)?;
        }
        name.truncate(len - 1);
    } else if file_type.is_symlink() {
        let target = fs::read_link(path).map_err(read_error)?;
        header.set_entry_type(EntryType::Symlink);
        let target = target.as_os_str().as_bytes();
        append_raw(archive, &mut header, name, Some(target), io::empty()).map_err(write_error)?;
    } else if file_type.is_file() {
        let file = File::open(path).map_err(read_error)?;
        header.set_entry_type(EntryType::Regular);
        header.set_size(meta.len());
        // `take` so that a file growing while it is read cannot overrun its header's size.
        append_raw(archive, &mut header, name, None, file.take(meta.len())).map_err(write_error)?;
    }
    Ok(())
}

/// Appends one entry with `name` (and `link`) written verbatim into the header, preceded by
/// GNU long-name / long-link entries when they do not fit, as GNU tar does.
fn append_raw<W: Write>(
    archive: &mut tar::Builder<W>,
    header: &mut Header,
    name: &[u8],
    link: Option<&[u8]>,
    data: impl Read,
) -> io::Result<()> {
    if name.len() > HEADER_NAME_LEN {
        append_long(archive, EntryType::GNULongName, name)?;
    }
    let old = header.as_old_mut();
    let n = name.len().min(HEADER_NAME_LEN);
    old.name[..n].copy_from_slice(&name[..n]);
    if let Some(link) = link {
        if link.len() > HEADER_NAME_LEN {
            append_long(archive, EntryType::GNULongLink, link)?;
        }
        let n = link.len().min(HEADER_NAME_LEN);
        header.as_old_mut().linkname[..n].copy_from_slice(&link[..n]);
    }
    header.set_cksum();
    archive.append(header, data)
}

/// A GNU `././@LongLink` entry carrying a name or link target longer than a header holds.
fn append_long<W: Write>(
    archive: &mut tar::Builder<W>,
    kind: EntryType,
    value: &[u8],
) -> io::Result<()> {
    let mut header = Header::new_gnu();
    let marker = b"././@LongLink";
    header.as_old_mut().name[..marker.len()].copy_from_slice(marker);
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    let data = [value, b"\0"].concat();
    header.set_size(data.len() as u64);
    header.set_cksum();
    archive.append(&header, data.as_slice())
}

/// The end of the pipeline: the slug file, hashed and counted as it is written.
struct Sink {
    file: File,
    hasher: Sha256,
    written: u64,
    limit: Option<u64>,
    /// Set when the limit is crossed, so the caller can tell that error from an I/O one after
    /// it has travelled through the compressor's threads.
    exceeded: Arc<AtomicBool>,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.written + buf.len() as u64;
        if self.limit.is_some_and(|limit| written > limit) {
            self.exceeded.store(true, Ordering::SeqCst);
            return Err(io::Error::other("slug size limit exceeded"));
        }
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// `ParCompress` with a safe end of life: `ParCompress` panics if it is dropped unfinished
/// after an error, and on any write after its pipeline failed. This wrapper drops it at the
/// first error and finishes it (ignoring the result) if it is dropped on an error path.
struct GzWriter(Option<ParCompress<'static, Gzip, Sink>>);

impl GzWriter {
    fn finish(mut self) -> io::Result<Sink> {
        let mut inner = self.0.take().ok_or_else(closed)?;
        inner.finish().map_err(gzp_to_io)
    }

    fn inner(&mut self) -> io::Result<&mut ParCompress<'static, Gzip, Sink>> {
        self.0.as_mut().ok_or_else(closed)
    }
}

fn closed() -> io::Error {
    io::Error::other("compressor already failed")
}

fn gzp_to_io(e: gzp::GzpError) -> io::Error {
    match e {
        gzp::GzpError::Io(e) => e,
        e => io::Error::other(e),
    }
}

impl Write for GzWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let result = self.inner()?.write(buf);
        if result.is_err() {
            self.0 = None;
        }
        result
    }

    fn flush(&mut self) -> io::Result<()> {
        let result = self.inner()?.flush();
        if result.is_err() {
            self.0 = None;
        }
        result
    }
}

impl Drop for GzWriter {
    fn drop(&mut self) {
        if let Some(mut inner) = self.0.take() {
            // Dropping on an error path: the error that got us here is already reported.
            let _ = inner.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// One archive entry as read back: name, type, mode, link target, content.
    type Entry = (String, EntryType, u32, Option<String>, Vec<u8>);

    fn entries(slug: &Path) -> Vec<Entry> {
        let file = File::open(slug).expect("open slug");
        // A single-member decoder on purpose: the slug must be one gzip member.
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        let mut out = Vec::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let name = String::from_utf8(entry.path_bytes().into_owned()).expect("utf8 name");
            let link = entry
                .link_name_bytes()
                .map(|l| String::from_utf8(l.into_owned()).expect("utf8 link"));
            let header = entry.header();
            let (kind, mode) = (header.entry_type(), header.mode().expect("mode"));
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("read entry");
            out.push((name, kind, mode, link, data));
        }
        out
    }

    #[test]
    fn packs_under_dot_app_with_modes_symlinks_and_long_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = dir.path().join("build");
        fs::create_dir_all(app.join("bin")).expect("mkdir");
        fs::write(app.join("bin/run"), "#!/bin/sh\necho hi\n").expect("write");
        fs::set_permissions(app.join("bin/run"), fs::Permissions::from_mode(0o750)).expect("chmod");
        fs::write(app.join("README"), "hello").expect("write");
        symlink("bin/run", app.join("run")).expect("symlink");
        let long_dir = "d".repeat(80);
        let long_file = "f".repeat(90);
        fs::create_dir_all(app.join(&long_dir)).expect("mkdir");
        fs::write(app.join(&long_dir).join(&long_file), "long").expect("write");
        let long_target = format!("{}/{}", "t".repeat(70), "u".repeat(70));
        symlink(&long_target, app.join("dangling")).expect("symlink");

        let out = dir.path().join("slug.tgz");
        let packed = pack(&app, &out, &PackOptions::default()).expect("pack");
        let bytes = fs::read(&out).expect("read slug");
        assert_eq!(packed.size, bytes.len() as u64);
        assert_eq!(packed.sha256, hex(&Sha256::digest(&bytes)));

        let got = entries(&out);
        let names: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
        let long_path = format!("./app/{long_dir}/{long_file}");
        assert_eq!(
            names,
            vec![
                "./app/",
                "./app/README",
                "./app/bin/",
                "./app/bin/run",
                "./app/dangling",
                &format!("./app/{long_dir}/"),
                &long_path,
                "./app/run",
            ]
        );
        let find = |name: &str| got.iter().find(|e| e.0 == name).expect("entry present");
        assert_eq!(find("./app/bin/run").2, 0o750);
        assert_eq!(find("./app/bin/run").4, b"#!/bin/sh\necho hi\n");
        assert_eq!(find("./app/run").1, EntryType::Symlink);
        assert_eq!(find("./app/run").3.as_deref(), Some("bin/run"));
        assert_eq!(
            find("./app/dangling").3.as_deref(),
            Some(long_target.as_str())
        );
        assert_eq!(find(&long_path).4, b"long");
    }

    #[test]
    fn gnu_tar_reads_the_slug() {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = dir.path().join("build");
        fs::create_dir_all(app.join("a/b")).expect("mkdir");
        fs::write(app.join("a/b/c.txt"), "c").expect("write");
        let out = dir.path().join("slug.tgz");
        pack(&app, &out, &PackOptions::default()).expect("pack");
        let listing = std::process::Command::new("tar")
            .arg("tzf")
            .arg(&out)
            .output()
            .expect("run tar");
        assert!(listing.status.success());
        assert_eq!(
            String::from_utf8_lossy(&listing.stdout),
            "./app/\n./app/a/\n./app/a/b/\n./app/a/b/c.txt\n"
        );
    }

    #[test]
    fn large_input_round_trips_across_many_blocks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = dir.path().join("build");
        fs::create_dir_all(&app).expect("mkdir");
        // Several compressor blocks of mixed compressibility.
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 % 16 + b'a')
            .collect();
        fs::write(app.join("big"), &data).expect("write");
        let out = dir.path().join("slug.tgz");
        pack(&app, &out, &PackOptions::default()).expect("pack");
        let got = entries(&out);
        assert_eq!(got[1].0, "./app/big");
        assert!(got[1].4 == data, "content differs after a round trip");
    }

    #[test]
    fn size_limit_is_enforced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = dir.path().join("build");
        fs::create_dir_all(&app).expect("mkdir");
        // Incompressible: a xorshift stream.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let data: Vec<u8> = (0..2_000_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        fs::write(app.join("noise"), &data).expect("write");
        let out = dir.path().join("slug.tgz");
        let options = PackOptions {
            max_size: Some(1_000_000),
            ..PackOptions::default()
        };
        let err = pack(&app, &out, &options).expect_err("over the limit");
        assert!(
            matches!(err, PackError::TooLarge { limit: 1_000_000 }),
            "{err}"
        );
    }
}
