//! A daemon's settings file: `/etc/manifold/agent.toml`, `/etc/manifold/scheduler.toml`.
//!
//! Every setting is a flag first: the file's keys are the flags' long names (`cgroup_parent`
//! or `cgroup-parent` for `--cgroup-parent`), and the values are what the flag takes
//! (`heartbeat = "2s"`, `slots = 100`). Precedence, highest first: the flag, its `MANIFOLD_*`
//! variable, the file, the built-in default — as with Nomad's `-config` files under flags.
//!
//! [`apply`] gets there by setting, for each key of the file, the variable the flag already
//! reads (only when it is not set), before clap parses the command line. So clap stays the
//! one place that knows the settings (`--help` lists them all with their variables), and a
//! key the daemon does not know is an error naming the file and the key, not something
//! silently ignored. Where the file is comes from `--config` (variable `MANIFOLD_CONFIG`),
//! which the binary declares with a default path; a missing default file is no error, a
//! missing file that was asked for is.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

/// The id of the argument naming the settings file (`--config`).
pub const CONFIG_ARG: &str = "config";

/// Errors reading or applying a settings file. Each names the file; the TOML parser's own
/// message gives the line and column.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read the settings file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: invalid TOML: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: unknown setting `{key}` (known: {known})", path.display())]
    Unknown {
        path: PathBuf,
        key: String,
        known: String,
    },
    #[error("{}: `{key}` can only be given on the command line (--{flag})", path.display())]
    FlagOnly {
        path: PathBuf,
        key: String,
        flag: String,
    },
    #[error("{}: `{key}` must be a string, a number or a boolean", path.display())]
    Type { path: PathBuf, key: String },
    #[error("{}: `{key}` must be a string, a number, a boolean or a list of them, without {delimiter:?} in an item", path.display())]
    ListType {
        path: PathBuf,
        key: String,
        delimiter: char,
    },
}

/// One setting of the file, as the variable its flag reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub variable: OsString,
    pub value: String,
}

/// Reads the settings file named by `command`'s `--config` argument (flag, variable or
/// default, as `args` and the environment give it) and sets the variable of each of its
/// settings that is not set already. Returns the file read, if any.
///
/// Call it before any thread starts (setting the environment is not thread-safe) and before
/// the command is built for the real parse: clap reads an argument's variable when the
/// argument is built.
pub fn apply(
    command: clap::Command,
    args: impl IntoIterator<Item = OsString>,
) -> Result<Option<PathBuf>, SettingsError> {
    let Some(path) = settings_file(command.clone(), args)? else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| SettingsError::Read {
        path: path.clone(),
        source,
    })?;
    for setting in resolve(&command, &path, &text)? {
        if std::env::var_os(&setting.variable).is_none() {
            std::env::set_var(&setting.variable, &setting.value);
        }
    }
    Ok(Some(path))
}

/// The settings file to read: `None` when it is the default one and does not exist.
fn settings_file(
    command: clap::Command,
    args: impl IntoIterator<Item = OsString>,
) -> Result<Option<PathBuf>, SettingsError> {
    // A best-effort parse: `--help`, a missing flag or a typo are the real parse's to report.
    let Ok(matches) = command.ignore_errors(true).try_get_matches_from(args) else {
        return Ok(None);
    };
    let Ok(Some(path)) = matches.try_get_one::<PathBuf>(CONFIG_ARG) else {
        return Ok(None);
    };
    let defaulted =
        matches.value_source(CONFIG_ARG) == Some(clap::parser::ValueSource::DefaultValue);
    if defaulted && !path.exists() {
        return Ok(None);
    }
    Ok(Some(path.clone()))
}

/// Maps each key of the settings file `text` (read from `path`) to the variable of the flag
/// of that name.
pub fn resolve(
    command: &clap::Command,
    path: &Path,
    text: &str,
) -> Result<Vec<Setting>, SettingsError> {
    let table: toml::Table = text
        .parse()
        .map_err(|err: toml::de::Error| SettingsError::Parse {
            path: path.to_path_buf(),
            message: err.to_string().trim().replace('\n', " "),
        })?;
    let known = || {
        let mut names: Vec<String> = settable(command)
            .map(|arg| arg.get_id().as_str().to_string())
            .collect();
        names.sort();
        names.join(", ")
    };
    let mut settings = Vec::new();
    for (key, value) in table {
        let id = key.replace('-', "_");
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_id().as_str() == id && arg.get_long().is_some() && id != CONFIG_ARG)
            .ok_or_else(|| SettingsError::Unknown {
                path: path.to_path_buf(),
                key: key.clone(),
                known: known(),
            })?;
        let Some(variable) = arg.get_env() else {
            return Err(SettingsError::FlagOnly {
                path: path.to_path_buf(),
                key,
                flag: arg.get_long().unwrap_or_default().to_string(),
            });
        };
        let value = match (value, arg.get_value_delimiter()) {
            // A flag that takes several values reads them from its variable split at its
            // delimiter, so a list becomes its items joined by it. An empty list is the
            // flag not given (an empty variable would be one empty value).
            (toml::Value::Array(items), Some(_)) if items.is_empty() => continue,
            (toml::Value::Array(items), Some(delimiter)) => {
                let items: Option<Vec<String>> = items
                    .into_iter()
                    .map(|item| scalar(item).filter(|s| !s.contains(delimiter)))
                    .collect();
                items
                    .ok_or_else(|| SettingsError::ListType {
                        path: path.to_path_buf(),
                        key: key.clone(),
                        delimiter,
                    })?
                    .join(&delimiter.to_string())
            }
            (value, _) => scalar(value).ok_or_else(|| SettingsError::Type {
                path: path.to_path_buf(),
                key: key.clone(),
            })?,
        };
        settings.push(Setting {
            variable: variable.to_os_string(),
            value,
        });
    }
    Ok(settings)
}

/// A string, number or boolean as the flag would take it on the command line.
fn scalar(value: toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s),
        toml::Value::Integer(n) => Some(n.to_string()),
        toml::Value::Float(x) => Some(x.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Datetime(_) | toml::Value::Array(_) | toml::Value::Table(_) => None,
    }
}

/// The arguments a settings file may set: named flags read from a variable.
fn settable(command: &clap::Command) -> impl Iterator<Item = &clap::Arg> {
    command.get_arguments().filter(|arg| {
        arg.get_long().is_some()
            && arg.get_env().is_some_and(|v: &OsStr| !v.is_empty())
            && arg.get_id().as_str() != CONFIG_ARG
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction, Command};

    fn command() -> Command {
        Command::new("daemon")
            .arg(
                Arg::new(CONFIG_ARG)
                    .long("config")
                    .global(true)
                    .env("TEST_SETTINGS_CONFIG")
                    .value_parser(clap::value_parser!(PathBuf))
                    .default_value("/nonexistent/manifold/daemon.toml"),
            )
            .arg(
                Arg::new("cgroup_parent")
                    .long("cgroup-parent")
                    .env("TEST_CGROUP_PARENT"),
            )
            .arg(Arg::new("slots").long("slots").env("TEST_SLOTS"))
            .arg(
                Arg::new("allow")
                    .long("allow")
                    .env("TEST_ALLOW")
                    .action(ArgAction::Append)
                    .value_delimiter(','),
            )
            .arg(
                Arg::new("verbose")
                    .long("verbose")
                    .env("TEST_VERBOSE")
                    .action(ArgAction::SetTrue),
            )
            .arg(
                Arg::new("with_agent")
                    .long("with-agent")
                    .action(ArgAction::SetTrue),
            )
            .subcommand(Command::new("run").arg(Arg::new("name").required(true)))
    }

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn keys_become_the_flags_variables() {
        let text = "cgroup-parent = \"lab/h1\"\nslots = 20\nverbose = true\n";
        let settings = resolve(&command(), Path::new("a.toml"), text).expect("valid");
        let pairs: Vec<(String, String)> = settings
            .into_iter()
            .map(|s| (s.variable.to_string_lossy().into_owned(), s.value))
            .collect();
        assert_eq!(
            pairs,
            [
                ("TEST_CGROUP_PARENT".into(), "lab/h1".into()),
                ("TEST_SLOTS".into(), "20".into()),
                ("TEST_VERBOSE".into(), "true".into()),
            ]
        );
    }

    #[test]
    fn lists_become_the_delimited_variable_of_a_flag_that_takes_several() {
        let text = "allow = [\"10.0.0.0/8:5432\", \"192.168.1.5\"]\nslots = 3\n";
        let settings = resolve(&command(), Path::new("a.toml"), text).expect("valid");
        assert_eq!(settings[0].variable, "TEST_ALLOW");
        assert_eq!(settings[0].value, "10.0.0.0/8:5432,192.168.1.5");
        // clap splits the variable again: one value per item.
        std::env::set_var("TEST_ALLOW", &settings[0].value);
        let matches = command().get_matches_from(args(&["daemon"]));
        let values: Vec<&String> = matches.get_many("allow").expect("set").collect();
        assert_eq!(values, ["10.0.0.0/8:5432", "192.168.1.5"]);
        std::env::remove_var("TEST_ALLOW");
        let empty = resolve(&command(), Path::new("a.toml"), "allow = []").expect("valid");
        assert_eq!(empty, []);
    }

    #[test]
    fn bad_files_say_where() {
        let path = Path::new("/etc/manifold/agent.toml");
        let err = resolve(&command(), path, "slots = 20\nslotz = 3\n").expect_err("unknown");
        let msg = err.to_string();
        assert!(
            msg.contains("/etc/manifold/agent.toml: unknown setting `slotz`"),
            "{msg}"
        );
        assert!(
            msg.contains("allow, cgroup_parent, slots, verbose"),
            "{msg}"
        );
        let err = resolve(&command(), path, "with_agent = true").expect_err("flag only");
        assert!(err.to_string().contains("(--with-agent)"), "{err}");
        let err = resolve(&command(), path, "slots = [1, 2]").expect_err("array");
        assert!(err.to_string().contains("`slots` must be"), "{err}");
        let err = resolve(&command(), path, "allow = [\"a,b\"]").expect_err("delimiter");
        assert!(
            err.to_string().contains(
                "`allow` must be a string, a number, a boolean or a list of them, without ','"
            ),
            "{err}"
        );
        let err = resolve(&command(), path, "allow = [[1]]").expect_err("nested");
        assert!(matches!(err, SettingsError::ListType { .. }), "{err}");
        let err = resolve(&command(), path, "config = \"x\"").expect_err("config");
        assert!(matches!(err, SettingsError::Unknown { .. }), "{err}");
        let err = resolve(&command(), path, "slots = \n").expect_err("syntax");
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn the_file_comes_from_the_flag_or_its_default() {
        // The default file does not exist: nothing to read, no error.
        assert_eq!(
            settings_file(command(), args(&["daemon"])).expect("ok"),
            None
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("daemon.toml");
        std::fs::write(&file, "slots = 7\n").expect("write");
        let given = file.to_string_lossy().into_owned();
        for argv in [
            args(&["daemon", "--config", &given]),
            args(&["daemon", "run", "web.1", &format!("--config={given}")]),
            args(&["daemon", "--config", &given, "--slotz", "3"]),
        ] {
            assert_eq!(
                settings_file(command(), argv.clone()).expect("ok"),
                Some(file.clone()),
                "{argv:?}"
            );
        }
        // A file that was asked for must exist.
        let missing = dir.path().join("missing.toml");
        let argv = args(&["daemon", "--config", &missing.to_string_lossy()]);
        assert_eq!(
            settings_file(command(), argv.clone()).expect("ok"),
            Some(missing.clone())
        );
        let err = apply(command(), argv).expect_err("missing");
        assert!(err.to_string().contains("missing.toml"), "{err}");
    }

    #[test]
    fn variables_and_flags_win_over_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("daemon.toml");
        std::fs::write(&file, "cgroup_parent = \"from-file\"\nverbose = true\n").expect("write");
        std::env::set_var("TEST_VERBOSE", "false");
        let argv = args(&["daemon", "--config", &file.to_string_lossy()]);
        apply(command(), argv.clone()).expect("applied");
        assert_eq!(
            std::env::var("TEST_CGROUP_PARENT").as_deref(),
            Ok("from-file")
        );
        assert_eq!(std::env::var("TEST_VERBOSE").as_deref(), Ok("false"));
        // Built after apply, the command sees the file's value as the variable's; a flag wins.
        let matches = command().get_matches_from(argv.clone());
        assert_eq!(
            matches
                .get_one::<String>("cgroup_parent")
                .map(String::as_str),
            Some("from-file")
        );
        assert!(!matches.get_flag("verbose"));
        let mut with_flag = argv;
        with_flag.extend(args(&["--cgroup-parent", "from-flag"]));
        let matches = command().get_matches_from(with_flag);
        assert_eq!(
            matches
                .get_one::<String>("cgroup_parent")
                .map(String::as_str),
            Some("from-flag")
        );
    }
}
