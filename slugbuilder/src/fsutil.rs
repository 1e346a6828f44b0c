//! Copying trees the way `cp -a` does, for the source and for buildpacks.

use std::fs::{self, File, FileTimes};
use std::io;
use std::os::unix::fs::symlink;
use std::path::Path;

/// Copies directory `src` into `dest` (created if absent; its parent must exist): permission bits and
/// file mtimes kept, symlinks copied as symlinks, sockets, fifos and devices left out.
/// Top-level entries named in `skip` are not copied.
///
/// Mtimes matter: they end up in the slug, and keeping them makes two builds of the same
/// source pack the same files the same way.
pub(crate) fn copy_tree(src: &Path, dest: &Path, skip: &[&str]) -> io::Result<()> {
    if !dest.is_dir() {
        fs::create_dir(dest)?;
    }
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        if skip.iter().any(|s| entry.file_name() == **s) {
            continue;
        }
        let from = entry.path();
        let to = dest.join(entry.file_name());
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            copy_tree(&from, &to, &[])?;
        } else if file_type.is_symlink() {
            symlink(fs::read_link(&from)?, &to)?;
        } else if file_type.is_file() {
            fs::copy(&from, &to)?;
            let modified = entry.metadata()?.modified()?;
            // Read-only is enough: the owner may set explicit times on any open file.
            File::open(&to)?.set_times(FileTimes::new().set_modified(modified))?;
        }
    }
    fs::set_permissions(dest, fs::metadata(src)?.permissions())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn copies_modes_links_and_mtimes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("bin")).expect("mkdir");
        fs::create_dir_all(src.join(".git")).expect("mkdir");
        fs::write(src.join("bin/run"), "x").expect("write");
        fs::set_permissions(src.join("bin/run"), fs::Permissions::from_mode(0o755)).expect("chmod");
        symlink("bin/run", src.join("run")).expect("symlink");
        let dest = dir.path().join("dest");
        copy_tree(&src, &dest, &[".git"]).expect("copy");
        let meta = fs::metadata(dest.join("bin/run")).expect("meta");
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
        assert_eq!(
            meta.modified().expect("mtime"),
            fs::metadata(src.join("bin/run"))
                .expect("meta")
                .modified()
                .expect("mtime")
        );
        assert_eq!(
            fs::read_link(dest.join("run")).expect("link"),
            Path::new("bin/run")
        );
        assert!(!dest.join(".git").exists());
    }
}
