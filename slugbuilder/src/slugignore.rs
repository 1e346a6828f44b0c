//! `.slugignore`: paths removed from the build directory before any buildpack compiles.
//!
//! The syntax is gitignore's without negation, as on Heroku: matching is delegated to the
//! `ignore` crate's gitignore matcher (the one ripgrep uses) so anchoring (`/tmp`),
//! directory-only patterns (`logs/`), `**` and character classes behave exactly as in git.
//! A `!pattern` line is reported and skipped rather than half-supported.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

/// The file name, at the root of the build directory.
pub const FILE_NAME: &str = ".slugignore";

/// What applying a `.slugignore` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Removed paths relative to the build directory, files and whole directories alike.
    pub removed: Vec<PathBuf>,
    /// 1-based numbers of `!` lines that were skipped because negation is not supported.
    pub skipped_negations: Vec<usize>,
}

/// Why a `.slugignore` could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum SlugignoreError {
    #[error("cannot read {}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error(".slugignore line {line}: invalid pattern {pattern:?}")]
    Pattern {
        line: usize,
        pattern: String,
        source: ignore::Error,
    },
    #[error("cannot compile the .slugignore patterns")]
    Compile { source: ignore::Error },
    #[error("cannot remove {}", path.display())]
    Remove { path: PathBuf, source: io::Error },
}

/// Applies `build_dir/.slugignore`, if there is one, by deleting what it names.
pub fn apply(build_dir: &Path) -> Result<Applied, SlugignoreError> {
    let path = build_dir.join(FILE_NAME);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Applied::default()),
        Err(source) => return Err(SlugignoreError::Read { path, source }),
    };
    let mut applied = Applied::default();
    let mut builder = GitignoreBuilder::new(build_dir);
    for (index, line) in text.lines().enumerate() {
        let pattern = line.trim_end_matches('\r');
        if pattern.starts_with('!') {
            applied.skipped_negations.push(index + 1);
            continue;
        }
        builder
            .add_line(None, pattern)
            .map_err(|source| SlugignoreError::Pattern {
                line: index + 1,
                pattern: pattern.to_owned(),
                source,
            })?;
    }
    let matcher = builder
        .build()
        .map_err(|source| SlugignoreError::Compile { source })?;
    remove_matches(&matcher, build_dir, build_dir, &mut applied.removed)?;
    applied.removed.sort();
    Ok(applied)
}

/// Walks `dir` without following symlinks, removing every match and not descending into
/// removed directories.
fn remove_matches(
    matcher: &Gitignore,
    root: &Path,
    dir: &Path,
    removed: &mut Vec<PathBuf>,
) -> Result<(), SlugignoreError> {
    let read_error = |source| SlugignoreError::Read {
        path: dir.to_owned(),
        source,
    };
    for entry in fs::read_dir(dir).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        let path = entry.path();
        let is_dir = entry.file_type().map_err(read_error)?.is_dir();
        if matcher.matched(&path, is_dir).is_ignore() {
            let result = if is_dir {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            result.map_err(|source| SlugignoreError::Remove {
                path: path.clone(),
                source,
            })?;
            removed.push(path.strip_prefix(root).unwrap_or(&path).to_owned());
        } else if is_dir {
            remove_matches(matcher, root, &path, removed)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for file in files {
            let path = dir.path().join(file);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(&path, file).expect("write");
        }
        dir
    }

    fn remaining(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            for entry in fs::read_dir(dir).expect("read_dir") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    walk(root, &path, out);
                } else {
                    let rel = path.strip_prefix(root).expect("prefix");
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        walk(root, root, &mut out);
        out.sort();
        out
    }

    #[test]
    fn gitignore_patterns_remove_what_they_name() {
        let dir = tree(&[
            "app.py",
            "docs/guide.md",
            "src/docs/keep.md",
            "logs/a.log",
            "src/debug.log",
            "tests/test_app.py",
            "src/tests/unit.py",
            "data/big.bin",
            "data/small.txt",
        ]);
        fs::write(
            dir.path().join(FILE_NAME),
            "# comment\n/docs\n*.log\ntests/\ndata/*.bin\n!src/debug.log\n\n",
        )
        .expect("write");
        let applied = apply(dir.path()).expect("apply");
        assert_eq!(applied.skipped_negations, vec![6]);
        assert_eq!(
            remaining(dir.path()),
            vec![
                ".slugignore",
                "app.py",
                "data/small.txt",
                "src/docs/keep.md"
            ]
        );
        assert!(applied.removed.contains(&PathBuf::from("docs")));
        assert!(applied.removed.contains(&PathBuf::from("src/tests")));
    }

    #[test]
    fn no_slugignore_is_a_no_op() {
        let dir = tree(&["a.txt"]);
        assert_eq!(apply(dir.path()).expect("apply"), Applied::default());
        assert_eq!(remaining(dir.path()), vec!["a.txt"]);
    }

    #[test]
    fn symlinks_are_removed_not_followed() {
        let dir = tree(&["keep/data.txt"]);
        std::os::unix::fs::symlink(dir.path().join("keep"), dir.path().join("link"))
            .expect("symlink");
        fs::write(dir.path().join(FILE_NAME), "link\n").expect("write");
        apply(dir.path()).expect("apply");
        assert!(fs::symlink_metadata(dir.path().join("link")).is_err());
        assert!(dir.path().join("keep/data.txt").exists());
    }
}
