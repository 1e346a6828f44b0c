//! The `pre-receive` hook, run by git inside a push as `manifold-scheduler git-hook
//! pre-receive`, and what it and the scheduler say to each other over the push's socket.
//!
//! The hook reads the ref updates git gives it on stdin, sends them with where the
//! pushed objects wait (git's quarantine) to the scheduler as one JSON line, then prints
//! each line the scheduler sends back (git relays the hook's output to the pusher as
//! `remote: …`) until the verdict: accept (exit 0: git moves the refs) or reject (exit 1:
//! git moves nothing and tells the pusher the hook declined).

use std::io::{BufRead, BufReader, Write};

use serde::{Deserialize, Serialize};

use super::Quarantine;

/// The variable that names the push's socket in the hook's environment.
pub const SOCKET_ENV: &str = "MANIFOLD_GIT_SOCKET";

/// Most ref updates one push may carry.
pub(crate) const MAX_UPDATES: usize = 1000;

/// One ref a push moves: from `old` to `new` (all zeros: created, or deleted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Update {
    pub old: String,
    pub new: String,
    pub name: String,
}

impl Update {
    /// Whether the update deletes its ref.
    pub fn deletes(&self) -> bool {
        self.new.bytes().all(|b| b == b'0')
    }
}

/// What the hook sends: the push's updates and its quarantined objects.
#[derive(Debug, Serialize, Deserialize)]
pub struct Pushed {
    pub updates: Vec<Update>,
    pub quarantine: Option<Quarantine>,
}

/// What the scheduler sends back: output lines, then one verdict.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Said {
    Line(String),
    Accept,
    Reject(String),
}

/// The hook subcommand: `git-hook pre-receive` (the only hook the repositories have);
/// its exit status.
pub fn main(args: &[String]) -> i32 {
    if args != ["pre-receive"] {
        eprintln!("usage: manifold-scheduler git-hook pre-receive (git runs it in a push)");
        return 2;
    }
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    match pre_receive(stdin.lock(), &mut out) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(why) => {
            let _ = writeln!(out, " !     Push rejected: {why}");
            1
        }
    }
}

/// Parses git's `OLD NEW REF` lines.
pub(crate) fn parse_updates(input: impl BufRead) -> Result<Vec<Update>, String> {
    let mut updates = Vec::new();
    for line in input.lines() {
        let line = line.map_err(|e| format!("cannot read the ref updates: {e}"))?;
        let mut fields = line.split_whitespace();
        let (Some(old), Some(new), Some(name), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(format!("git gave the hook an odd line {line:?}"));
        };
        if updates.len() == MAX_UPDATES {
            return Err(format!("a push may move at most {MAX_UPDATES} refs"));
        }
        updates.push(Update {
            old: old.into(),
            new: new.into(),
            name: name.into(),
        });
    }
    Ok(updates)
}

/// Hands the push to the scheduler and relays what it says; whether it accepted.
fn pre_receive(input: impl BufRead, out: &mut impl Write) -> Result<bool, String> {
    let socket = std::env::var_os(SOCKET_ENV)
        .ok_or("this repository takes pushes through the scheduler's API only")?;
    let updates = parse_updates(input)?;
    let quarantine = match (
        std::env::var_os("GIT_OBJECT_DIRECTORY"),
        std::env::var("GIT_ALTERNATE_OBJECT_DIRECTORIES"),
    ) {
        (Some(objects), Ok(alternates)) => Some(Quarantine {
            objects: objects.into(),
            alternates,
        }),
        _ => None,
    };
    let mut conn = std::os::unix::net::UnixStream::connect(&socket)
        .map_err(|e| format!("cannot reach the scheduler: {e}"))?;
    let mut request = serde_json::to_string(&Pushed {
        updates,
        quarantine,
    })
    .map_err(|e| e.to_string())?;
    request.push('\n');
    conn.write_all(request.as_bytes())
        .map_err(|e| format!("cannot reach the scheduler: {e}"))?;
    for line in BufReader::new(conn).lines() {
        let line = line.map_err(|e| format!("the scheduler stopped answering: {e}"))?;
        let said: Said = serde_json::from_str(&line)
            .map_err(|e| format!("the scheduler said something odd: {e}"))?;
        match said {
            Said::Line(text) => {
                let _ = writeln!(out, "{text}");
                let _ = out.flush();
            }
            Said::Accept => return Ok(true),
            Said::Reject(why) => {
                let _ = writeln!(out, " !     {why}");
                return Ok(false);
            }
        }
    }
    Err("the scheduler ended the push without a verdict".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_s_update_lines_parse_and_odd_ones_are_refused() {
        let (old, new) = ("0".repeat(40), "a".repeat(40));
        let input = format!("{old} {new} refs/heads/main\n{new} {old} refs/heads/gone\n");
        let updates = parse_updates(input.as_bytes()).expect("parse");
        assert_eq!(updates.len(), 2);
        assert_eq!(updates[0].name, "refs/heads/main");
        assert!(!updates[0].deletes());
        assert!(updates[1].deletes());
        for odd in ["just one", "a b c d\n"] {
            let err = parse_updates(odd.as_bytes()).expect_err(odd);
            assert!(err.contains("odd line"), "{err}");
        }
        let many = format!("{old} {new} refs/heads/x\n").repeat(MAX_UPDATES + 1);
        let err = parse_updates(many.as_bytes()).expect_err("too many");
        assert!(err.contains("at most"), "{err}");
    }

    #[test]
    fn what_the_scheduler_says_round_trips_as_json_lines() {
        for said in [
            Said::Line("-----> Building".into()),
            Said::Accept,
            Said::Reject("no".into()),
        ] {
            let text = serde_json::to_string(&said).expect("json");
            assert!(!text.contains('\n'));
            assert_eq!(serde_json::from_str::<Said>(&text).expect("back"), said);
        }
    }
}
