//! `slug.json` read back as untrusted input.
//!
//! The slugbuilder writes [`SlugMetadata`] (defined in `manifold-dyno`) beside the slug, but it runs inside the build
//! dyno, next to the app's code, its `.profile` and every buildpack's scripts: whatever the
//! agent and the scheduler read back from a build may have been rewritten by any of them.
//! [`parse`] is the one gate for that text. It accepts exactly what an honest build writes:
//! process type names as the Procfile parser allows them, non-empty bounded commands, the
//! stack the build was run on, a sha256 that is a sha256, and bounded lists and strings, so
//! that nothing a build writes can smuggle an odd process type into the scheduler's store or
//! grow without bound on its way there. Each error names the field at fault.

use std::fmt;

use crate::build::SlugMetadata;
use crate::procfile;

/// The largest `slug.json` read: an honest one is a few hundred bytes, and even a thousand
/// process types with long commands fit.
pub const MAX_METADATA_BYTES: u64 = 64 * 1024;
/// The longest process command accepted (a Procfile line is rarely a tenth of it).
pub const MAX_COMMAND_BYTES: usize = 4096;
/// The most process types a slug may declare.
pub const MAX_PROCESS_TYPES: usize = 100;
/// The longest buildpack name or URL, add-on, commit or config var value.
pub const MAX_TEXT_BYTES: usize = 2048;
/// The most buildpacks, add-ons or config vars a slug may list.
pub const MAX_LIST_LEN: usize = 100;

/// Why a `slug.json` was refused.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("slug.json is not the slugbuilder's JSON")]
    Json {
        #[source]
        source: serde_json::Error,
    },
    #[error("slug.json field {field}: {problem}")]
    Field { field: String, problem: Problem },
}

/// What is wrong with one field of a `slug.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A process type name the Procfile parser would refuse.
    InvalidProcessType,
    Empty,
    TooLong {
        limit: usize,
    },
    TooMany {
        limit: usize,
    },
    /// A NUL or another control character (a tab is allowed in commands).
    ControlCharacter,
    /// The slug says it was built for another stack than its build ran on.
    WrongStack {
        expected: String,
    },
    NotSha256,
    InvalidVarName,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidProcessType => write!(
                f,
                "invalid process type name (use 1 to {} of A-Z a-z 0-9 _ -)",
                procfile::MAX_NAME_LEN
            ),
            Self::Empty => write!(f, "is empty"),
            Self::TooLong { limit } => write!(f, "is longer than {limit} bytes"),
            Self::TooMany { limit } => write!(f, "has more than {limit} entries"),
            Self::ControlCharacter => write!(f, "contains a control character"),
            Self::WrongStack { expected } => {
                write!(f, "is not the stack the build ran on ({expected})")
            }
            Self::NotSha256 => write!(f, "is not 64 lowercase hex digits"),
            Self::InvalidVarName => write!(
                f,
                "is not a config var name (letters, digits and _, not starting with a digit)"
            ),
        }
    }
}

/// Parses and validates a build's `slug.json` for a build run on `stack`. The caller bounds
/// the text's size (see [`MAX_METADATA_BYTES`]) before reading it.
pub fn parse(json: &[u8], stack: &str) -> Result<SlugMetadata, MetadataError> {
    let metadata: SlugMetadata =
        serde_json::from_slice(json).map_err(|source| MetadataError::Json { source })?;
    validate(&metadata, stack)?;
    Ok(metadata)
}

/// Checks every field of `metadata` as user input; see the module documentation.
pub fn validate(metadata: &SlugMetadata, stack: &str) -> Result<(), MetadataError> {
    let fail = |field: String, problem| Err(MetadataError::Field { field, problem });
    if metadata.process_types.len() > MAX_PROCESS_TYPES {
        return fail(
            "process_types".into(),
            Problem::TooMany {
                limit: MAX_PROCESS_TYPES,
            },
        );
    }
    for (name, command) in &metadata.process_types {
        let field = || format!("process_types.{name:?}");
        if !procfile::is_valid_name(name) {
            return fail(field(), Problem::InvalidProcessType);
        }
        if command.trim().is_empty() {
            return fail(field(), Problem::Empty);
        }
        text(command, MAX_COMMAND_BYTES, true).or_else(|p| fail(field(), p))?;
    }
    if metadata.stack != stack {
        return fail(
            "stack".into(),
            Problem::WrongStack {
                expected: stack.to_owned(),
            },
        );
    }
    if metadata.sha256.len() != 64
        || !metadata
            .sha256
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return fail("sha256".into(), Problem::NotSha256);
    }
    if let Some(commit) = &metadata.commit {
        text(commit, MAX_TEXT_BYTES, false).or_else(|p| fail("commit".into(), p))?;
    }
    list(metadata.buildpacks.len(), "buildpacks")?;
    for (i, bp) in metadata.buildpacks.iter().enumerate() {
        for (what, value) in [("name", &bp.name), ("url", &bp.url)] {
            text(value, MAX_TEXT_BYTES, false)
                .or_else(|p| fail(format!("buildpacks[{i}].{what}"), p))?;
        }
    }
    list(metadata.addons.len(), "addons")?;
    for (i, addon) in metadata.addons.iter().enumerate() {
        if addon.is_empty() {
            return fail(format!("addons[{i}]"), Problem::Empty);
        }
        text(addon, MAX_TEXT_BYTES, false).or_else(|p| fail(format!("addons[{i}]"), p))?;
    }
    list(metadata.config_vars.len(), "config_vars")?;
    for (key, value) in &metadata.config_vars {
        let field = || format!("config_vars.{key:?}");
        let valid = !key.is_empty()
            && key.len() <= MAX_TEXT_BYTES
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return fail(field(), Problem::InvalidVarName);
        }
        if value.len() > MAX_TEXT_BYTES {
            return fail(
                field(),
                Problem::TooLong {
                    limit: MAX_TEXT_BYTES,
                },
            );
        }
        if value.contains('\0') {
            return fail(field(), Problem::ControlCharacter);
        }
    }
    Ok(())
}

/// A bounded string without control characters (`tab` allowed where `tab` is true).
fn text(value: &str, limit: usize, tab: bool) -> Result<(), Problem> {
    if value.len() > limit {
        return Err(Problem::TooLong { limit });
    }
    if value.chars().any(|c| c.is_control() && !(tab && c == '\t')) {
        return Err(Problem::ControlCharacter);
    }
    Ok(())
}

fn list(len: usize, field: &str) -> Result<(), MetadataError> {
    if len > MAX_LIST_LEN {
        return Err(MetadataError::Field {
            field: field.to_owned(),
            problem: Problem::TooMany {
                limit: MAX_LIST_LEN,
            },
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn honest() -> serde_json::Value {
        json!({
            "process_types": {"web": "gunicorn -b 0.0.0.0:$PORT app:app", "release": "./migrate"},
            "buildpacks": [{"name": "Python", "url": "python"}],
            "stack": "bookworm",
            "commit": "0123abc",
            "sha256": "a".repeat(64),
            "size": 1234,
            "duration_ms": 5,
            "config_vars": {"LANG": "en_US.UTF-8"},
            "addons": ["heroku-postgresql"],
        })
    }

    fn refused(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut value = honest();
        edit(&mut value);
        let bytes = serde_json::to_vec(&value).expect("json");
        parse(&bytes, "bookworm").expect_err("refused").to_string()
    }

    #[test]
    fn an_honest_slug_json_parses() {
        let bytes = serde_json::to_vec(&honest()).expect("json");
        let meta = parse(&bytes, "bookworm").expect("valid");
        assert_eq!(meta.process_types.len(), 2);
    }

    #[test]
    fn hostile_fields_are_refused_naming_the_field() {
        type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|v| v["process_types"]["web; rm -rf /"] = json!("x")),
                "slug.json field process_types.\"web; rm -rf /\": invalid process type name",
            ),
            (
                Box::new(|v| v["process_types"][""] = json!("x")),
                "process_types.\"\": invalid process type name",
            ),
            (
                Box::new(|v| v["process_types"]["web"] = json!("   ")),
                "process_types.\"web\": is empty",
            ),
            (
                Box::new(|v| v["process_types"]["web"] = json!("x".repeat(5000))),
                "process_types.\"web\": is longer than 4096 bytes",
            ),
            (
                Box::new(|v| v["process_types"]["web"] = json!("a\u{0}b")),
                "process_types.\"web\": contains a control character",
            ),
            (
                Box::new(|v| v["stack"] = json!("other")),
                "slug.json field stack: is not the stack the build ran on (bookworm)",
            ),
            (
                Box::new(|v| v["sha256"] = json!("../../etc")),
                "field sha256: is not 64 lowercase hex digits",
            ),
            (
                Box::new(|v| v["buildpacks"][0]["name"] = json!("a\nb")),
                "field buildpacks[0].name: contains a control character",
            ),
            (
                Box::new(|v| v["addons"] = json!(vec!["x"; 101])),
                "field addons: has more than 100 entries",
            ),
            (
                Box::new(|v| v["config_vars"]["1BAD"] = json!("x")),
                "config_vars.\"1BAD\": is not a config var name",
            ),
            (
                Box::new(|v| {
                    let many: serde_json::Map<_, _> =
                        (0..101).map(|i| (format!("p{i}"), json!("x"))).collect();
                    v["process_types"] = serde_json::Value::Object(many);
                }),
                "field process_types: has more than 100 entries",
            ),
            (
                Box::new(|v| v["process_types"] = json!(["web"])),
                "slug.json is not the slugbuilder's JSON",
            ),
        ];
        for (edit, want) in cases {
            let err = refused(edit);
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }
}
