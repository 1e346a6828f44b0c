//! The Procfile: `name: command` lines naming an app's process types.
//!
//! One parser for every part of Manifold that reads a Procfile (the slugbuilder, the agent,
//! the scheduler), so they can never disagree about what an app declares.
//!
//! The grammar, kept close to Heroku's classic one but stricter where Heroku's regex
//! silently did something surprising:
//! - a UTF-8 byte order mark at the start and CRLF line ends are accepted;
//! - blank lines and lines whose first non-blank character is `#` are ignored;
//! - every other line is `name: command`, split at the first colon, so colons inside the
//!   command (`web: gunicorn -b 0.0.0.0:$PORT app:app`) stay part of it;
//! - a name is 1 to 128 characters of `[A-Za-z0-9_-]` (the Platform API's limit);
//! - the command is the rest of the line with surrounding blanks trimmed and must not be empty;
//! - a name may appear once.
//!
//! Every error names the 1-based line it was found on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The longest process type name the Platform API accepts (`^[-\w]{1,128}$`); the rule is
/// the dyno vocabulary's, which dyno names are checked with too.
pub use manifold_dyno::MAX_PROCESS_TYPE_LEN as MAX_NAME_LEN;

/// A parsed Procfile: process types in the order the file declares them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Procfile {
    entries: Vec<(String, String)>,
}

/// Why a Procfile was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ProcfileError {
    /// A line that is neither blank, a comment nor `name: command`.
    #[error("procfile line {line}: expected `name: command`, found {text:?}")]
    Malformed { line: usize, text: String },
    /// A name outside `[A-Za-z0-9_-]{1,128}`.
    #[error(
        "procfile line {line}: invalid process type name {name:?} \
         (use 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 _ -)"
    )]
    InvalidName { line: usize, name: String },
    /// A name declared twice.
    #[error("procfile line {line}: process type {name:?} is already declared on line {first}")]
    DuplicateName {
        line: usize,
        name: String,
        first: usize,
    },
    /// `name:` with nothing after it.
    #[error("procfile line {line}: process type {name:?} has an empty command")]
    EmptyCommand { line: usize, name: String },
    /// The file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not UTF-8.
    #[error("{} is not valid UTF-8", path.display())]
    Encoding { path: PathBuf },
}

impl ProcfileError {
    /// The 1-based line the error was found on, for errors that have one.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Malformed { line, .. }
            | Self::InvalidName { line, .. }
            | Self::DuplicateName { line, .. }
            | Self::EmptyCommand { line, .. } => Some(*line),
            Self::Read { .. } | Self::Encoding { .. } => None,
        }
    }
}

/// Whether `name` is a valid process type name (the dyno vocabulary's rule).
pub use manifold_dyno::is_valid_process_type as is_valid_name;

/// Parses the text of a Procfile.
pub fn parse(text: &str) -> Result<Procfile, ProcfileError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut entries: Vec<(String, String)> = Vec::new();
    // Line of each name's declaration, to point a duplicate at the first one.
    let mut declared_on: BTreeMap<String, usize> = BTreeMap::new();
    for (index, raw) in text.split('\n').enumerate() {
        let line = index + 1;
        let content = raw.strip_suffix('\r').unwrap_or(raw).trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let Some((name, command)) = content.split_once(':') else {
            return Err(ProcfileError::Malformed {
                line,
                text: content.to_owned(),
            });
        };
        if !is_valid_name(name) {
            return Err(ProcfileError::InvalidName {
                line,
                name: name.to_owned(),
            });
        }
        let command = command.trim();
        if command.is_empty() {
            return Err(ProcfileError::EmptyCommand {
                line,
                name: name.to_owned(),
            });
        }
        if let Some(&first) = declared_on.get(name) {
            return Err(ProcfileError::DuplicateName {
                line,
                name: name.to_owned(),
                first,
            });
        }
        declared_on.insert(name.to_owned(), line);
        entries.push((name.to_owned(), command.to_owned()));
    }
    Ok(Procfile { entries })
}

/// Reads and parses the Procfile at `path`.
pub fn read(path: &Path) -> Result<Procfile, ProcfileError> {
    let bytes = std::fs::read(path).map_err(|source| ProcfileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|_| ProcfileError::Encoding {
        path: path.to_owned(),
    })?;
    parse(&text)
}

impl Procfile {
    /// The command of process type `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.as_str())
    }

    /// `(name, command)` pairs in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, c)| (n.as_str(), c.as_str()))
    }

    /// Process type names in file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// The number of process types.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the Procfile declares no process type.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a case should give: the process types, or an error on a given line.
    enum Want {
        Types(&'static [(&'static str, &'static str)]),
        Malformed(usize),
        InvalidName(usize),
        Duplicate { line: usize, first: usize },
        EmptyCommand(usize),
    }

    /// Every Procfile case the slugbuilder promises, with what it must give.
    const CASES: &[(&str, &str, Want)] = &[
        (
            "simple",
            "web: python app.py\nworker: python worker.py\n",
            Want::Types(&[("web", "python app.py"), ("worker", "python worker.py")]),
        ),
        (
            "colons stay in the command",
            "web: gunicorn -b 0.0.0.0:$PORT app:application\n",
            Want::Types(&[("web", "gunicorn -b 0.0.0.0:$PORT app:application")]),
        ),
        (
            "url in the command",
            "web: curl http://example.test:8080/x\n",
            Want::Types(&[("web", "curl http://example.test:8080/x")]),
        ),
        (
            "blank lines and comments ignored",
            "\n# the web process\n   \nweb: node server.js\n  # indented comment\n\n",
            Want::Types(&[("web", "node server.js")]),
        ),
        (
            "crlf line ends",
            "web: node server.js\r\nworker: node worker.js\r\n",
            Want::Types(&[("web", "node server.js"), ("worker", "node worker.js")]),
        ),
        (
            "utf-8 bom",
            "\u{feff}web: node server.js\n",
            Want::Types(&[("web", "node server.js")]),
        ),
        (
            "no final newline",
            "web: node server.js",
            Want::Types(&[("web", "node server.js")]),
        ),
        (
            "surrounding blanks trimmed",
            "  web:    bundle exec puma   \t\n",
            Want::Types(&[("web", "bundle exec puma")]),
        ),
        (
            "no space after the colon",
            "web:node server.js\n",
            Want::Types(&[("web", "node server.js")]),
        ),
        (
            "names with digits, dashes and underscores",
            "web-2: a\nworker_high: b\nCLOCK9: c\n",
            Want::Types(&[("web-2", "a"), ("worker_high", "b"), ("CLOCK9", "c")]),
        ),
        ("empty file", "", Want::Types(&[])),
        ("only comments", "# nothing\n\n", Want::Types(&[])),
        (
            "hash inside a command is kept",
            "web: echo '#1' # trailing\n",
            Want::Types(&[("web", "echo '#1' # trailing")]),
        ),
        ("no colon", "web: a\nthis is not a process\n", Want::Malformed(2)),
        ("empty name", "\n: python app.py\n", Want::InvalidName(2)),
        ("space in name", "my web: python app.py\n", Want::InvalidName(1)),
        ("space before colon", "web : python app.py\n", Want::InvalidName(1)),
        ("dot in name", "web.1: python app.py\n", Want::InvalidName(1)),
        ("non-ascii name", "wéb: python app.py\n", Want::InvalidName(1)),
        (
            "name too long",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa: x
",
            Want::InvalidName(1),
        ),
        (
            "duplicate name",
            "web: a\n\nworker: b\nweb: c\n",
            Want::Duplicate { line: 4, first: 1 },
        ),
        ("empty command", "web: a\nworker:\n", Want::EmptyCommand(2)),
        ("blank command", "web:   \t\r\n", Want::EmptyCommand(1)),
        ("error line counts crlf lines", "web: a\r\n\r\nbad\r\n", Want::Malformed(3)),
    ];

    #[test]
    fn procfile_cases() {
        for (case, text, want) in CASES {
            let got = parse(text);
            match (want, got) {
                (Want::Types(types), Ok(procfile)) => {
                    let got: Vec<(&str, &str)> = procfile.iter().collect();
                    assert_eq!(&got, types, "case {case:?}");
                }
                (Want::Malformed(line), Err(e @ ProcfileError::Malformed { .. }))
                | (Want::InvalidName(line), Err(e @ ProcfileError::InvalidName { .. }))
                | (Want::EmptyCommand(line), Err(e @ ProcfileError::EmptyCommand { .. })) => {
                    assert_eq!(e.line(), Some(*line), "case {case:?}: {e}");
                    assert!(
                        e.to_string().contains(&format!("line {line}")),
                        "case {case:?}: message {e} does not name the line"
                    );
                }
                (
                    Want::Duplicate { line, first },
                    Err(
                        e @ ProcfileError::DuplicateName {
                            first: got_first, ..
                        },
                    ),
                ) => {
                    assert_eq!(
                        (e.line(), got_first),
                        (Some(*line), *first),
                        "case {case:?}"
                    );
                    assert!(e.to_string().contains(&format!("line {line}")));
                }
                (_, got) => panic!("case {case:?}: unexpected result {got:?}"),
            }
        }
    }

    #[test]
    fn names_at_the_length_limit_are_valid() {
        assert!(is_valid_name(&"a".repeat(MAX_NAME_LEN)));
        assert!(!is_valid_name(&"a".repeat(MAX_NAME_LEN + 1)));
        assert!(!is_valid_name(""));
    }

    #[test]
    fn read_rejects_invalid_utf8() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("Procfile");
        std::fs::write(&path, b"web: \xff\n").expect("write");
        assert!(matches!(read(&path), Err(ProcfileError::Encoding { .. })));
        let missing = read(&dir.path().join("nope"));
        assert!(matches!(missing, Err(ProcfileError::Read { .. })));
    }
}
