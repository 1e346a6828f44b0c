//! Packing a source directory into the `tar.gz` that `POST /apps/{app}/builds` takes.
//!
//! The archive goes to an anonymous temp file, not memory: sources can be tens of MB.
//! `.git` directories are skipped (history is not part of a build), symlinks are stored
//! as symlinks (following them could pull in files outside the tree or loop), and file
//! modes are kept so executables in the source (`bin/start`) stay executable.
//! Ownership is reset to root: the local uid means nothing on the build host.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};
use tar::{EntryType, Header, HeaderMode};

/// A finished archive: the rewound file, its size and `SHA256:hex` checksum.
#[derive(Debug)]
pub struct Tarball {
    pub file: File,
    pub len: u64,
    pub checksum: String,
}

/// Packs `dir` into a temp file.
pub fn pack(dir: &Path) -> Result<Tarball> {
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let file = tempfile::tempfile().context("cannot create a temp file for the source archive")?;
    let gz = GzEncoder::new(BufWriter::new(file), Compression::default());
    let mut builder = tar::Builder::new(gz);
    add_dir(&mut builder, dir, "").with_context(|| format!("cannot pack {}", dir.display()))?;
    let gz = builder.into_inner().context("cannot finish the archive")?;
    let buf = gz.finish().context("cannot finish the archive")?;
    let mut file = buf
        .into_inner()
        .map_err(|e| e.into_error())
        .context("cannot write the archive")?;
    file.flush()?;
    file.seek(SeekFrom::Start(0))?;
    let mut hasher = Sha256::new();
    let len = io::copy(&mut file, &mut HashWriter(&mut hasher))?;
    file.seek(SeekFrom::Start(0))?;
    let checksum = format!("SHA256:{}", hex(&hasher.finalize()));
    Ok(Tarball {
        file,
        len,
        checksum,
    })
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Adds the entries of `dir` (sorted, so the same tree gives the same archive order)
/// under the archive path `prefix`.
fn add_dir<W: Write>(builder: &mut tar::Builder<W>, dir: &Path, prefix: &str) -> Result<()> {
    let mut entries = fs::read_dir(dir)?.collect::<io::Result<Vec<_>>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        let meta = fs::symlink_metadata(&path)?;
        let ft = meta.file_type();
        if ft.is_dir() && name == ".git" {
            continue;
        }
        let archive_name = format!("{prefix}{name}");
        let mut header = Header::new_gnu();
        header.set_metadata_in_mode(&meta, HeaderMode::Complete);
        header.set_uid(0);
        header.set_gid(0);
        // Names are best effort; ignore a failure to store them (ids are what counts).
        let _ = header.set_username("root");
        let _ = header.set_groupname("root");
        if ft.is_symlink() {
            let target = fs::read_link(&path)?;
            header.set_entry_type(EntryType::Symlink);
            header.set_size(0);
            builder.append_link(&mut header, &archive_name, &target)?;
        } else if ft.is_dir() {
            header.set_size(0);
            builder.append_data(&mut header, format!("{archive_name}/"), io::empty())?;
            add_dir(builder, &path, &format!("{archive_name}/"))?;
        } else if ft.is_file() {
            let f = File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
            // The header's size came from the metadata; read no more than that in case
            // the file grows while we pack it.
            builder.append_data(&mut header, &archive_name, f.take(meta.len()))?;
        }
        // Sockets, fifos and devices have no place in a source tree: skipped.
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use std::collections::BTreeMap;
    use std::os::unix::fs::{symlink, PermissionsExt};

    /// Archive path → (entry type, mode, link target, contents).
    fn list(t: Tarball) -> BTreeMap<String, (EntryType, u32, Option<String>, String)> {
        let mut archive = tar::Archive::new(GzDecoder::new(t.file));
        let mut out = BTreeMap::new();
        for e in archive.entries().expect("entries") {
            let mut e = e.expect("entry");
            let path = e.path().expect("path").to_string_lossy().to_string();
            let h = e.header().clone();
            let link = e
                .link_name()
                .expect("link")
                .map(|l| l.to_string_lossy().to_string());
            let mut body = String::new();
            e.read_to_string(&mut body).expect("read");
            out.insert(
                path,
                (h.entry_type(), h.mode().expect("mode") & 0o7777, link, body),
            );
        }
        out
    }

    #[test]
    fn packs_tree_skipping_git_keeping_links_and_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join(".git/objects")).expect("mkdir");
        fs::write(root.join(".git/HEAD"), "ref").expect("write");
        fs::create_dir_all(root.join("bin")).expect("mkdir");
        fs::write(root.join("bin/start"), "#!/bin/sh\n").expect("write");
        fs::set_permissions(root.join("bin/start"), fs::Permissions::from_mode(0o755))
            .expect("chmod");
        fs::write(root.join("app.py"), "print(1)\n").expect("write");
        fs::set_permissions(root.join("app.py"), fs::Permissions::from_mode(0o644)).expect("chmod");
        // A symlink pointing outside the tree must not be followed.
        symlink("/etc/passwd", root.join("passwd")).expect("symlink");
        symlink("app.py", root.join("main.py")).expect("symlink");
        fs::create_dir_all(root.join("sub/.git")).expect("mkdir");
        fs::write(root.join("sub/.gitignore"), "x\n").expect("write");

        let t = pack(root).expect("pack");
        assert!(t.checksum.starts_with("SHA256:") && t.checksum.len() == 7 + 64);
        let got = list(t);
        let names: Vec<&str> = got.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "app.py",
                "bin/",
                "bin/start",
                "main.py",
                "passwd",
                "sub/",
                "sub/.gitignore"
            ]
        );
        assert_eq!(got["bin/start"].0, EntryType::Regular);
        assert_eq!(got["bin/start"].1, 0o755);
        assert_eq!(got["bin/start"].3, "#!/bin/sh\n");
        assert_eq!(got["app.py"].1, 0o644);
        assert_eq!(got["passwd"].0, EntryType::Symlink);
        assert_eq!(got["passwd"].2.as_deref(), Some("/etc/passwd"));
        assert_eq!(got["passwd"].3, "");
        assert_eq!(got["main.py"].0, EntryType::Symlink);
        assert_eq!(got["main.py"].2.as_deref(), Some("app.py"));
        assert_eq!(got["bin/"].0, EntryType::Directory);
    }

    #[test]
    fn refuses_a_file() {
        let f = tempfile::NamedTempFile::new().expect("tmp");
        assert!(pack(f.path()).is_err());
    }
}
