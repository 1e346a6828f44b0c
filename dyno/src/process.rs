//! Process types and dyno names: which types the platform treats specially, the one-off
//! rules, the default `$PORT`, and `TYPE.N`.
//!
//! A process type is a Procfile name (`web`, `worker`) or one of the types the platform runs
//! itself (`run`, `release`, `build`). A dyno is named `TYPE.N`: `web.1`, `run.4821`.
//!
//! Two one-off rules, because the two sides see different dynos:
//! - [`is_one_off`] (`run`, `release`) is the scheduler's and the CLI's: dynos placed for a
//!   single run, outside any formation. Builds are not dynos there (the scheduler keeps them
//!   as builds), so a type called `build` in the scheduler's store can only be an app's own
//!   Procfile type, which it runs as part of the formation.
//! - [`runs_once`] (`run`, `release`, `build`) is the agent's: what it never restarts, whose
//!   end is `complete` rather than a crash, and which it never kills for not binding
//!   `$PORT`. The agent runs its build dynos (`build.1`) with the same machinery as the
//!   others, so the set has `build` too.

use std::fmt;
use std::str::FromStr;

/// The process type that receives HTTP traffic: the router sends an app's requests to its
/// `web` dynos, which alone get a `$PORT` by default and can be killed for not binding it
/// (R10). The name is Heroku's.
pub const WEB: &str = "web";

/// The process type of `manifold run`'s one-off dynos (`run.4821`).
pub const RUN: &str = "run";

/// The Procfile type of the release phase (Heroku's): its command runs in a one-off dyno
/// (`release.1234`) before a release goes live.
pub const RELEASE: &str = "release";

/// The process type of the agent's build dynos (`build.1`), which compile a slug.
pub const BUILD: &str = "build";

/// The `$PORT` a web dyno listens on inside its network namespace (Heroku's default); the
/// agent publishes it on a host port of its choosing.
pub const WEB_PORT: u16 = 5000;

/// The longest process type name: the Platform API's `^[-\w]{1,128}$`.
pub const MAX_PROCESS_TYPE_LEN: usize = 128;

/// Whether `process_type` is the one the router sends traffic to.
pub fn is_web(process_type: &str) -> bool {
    process_type == WEB
}

/// Whether dynos of this type are one-offs to the scheduler: placed for one run, then never
/// restarted, replaced, cycled or routed to, and part of no formation (`run`, `release`).
/// See the module documentation for why the agent's rule, [`runs_once`], also has `build`.
pub fn is_one_off(process_type: &str) -> bool {
    process_type == RUN || process_type == RELEASE
}

/// Whether the agent runs dynos of this type once: it never restarts them, reports their
/// end as `complete` rather than `crashed`, and never kills them for not binding `$PORT`.
/// The one-offs ([`is_one_off`]) and the agent's own build dynos.
pub fn runs_once(process_type: &str) -> bool {
    is_one_off(process_type) || process_type == BUILD
}

/// Whether `name` is a valid process type name: 1 to [`MAX_PROCESS_TYPE_LEN`] of
/// `[A-Za-z0-9_-]`. This is the Procfile's rule, and it keeps names safe to use in dyno
/// names (no `.`), host paths, nft comments and log lines.
pub fn is_valid_process_type(name: &str) -> bool {
    (1..=MAX_PROCESS_TYPE_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A dyno's name, `TYPE.N`: its process type and its index (`web.1`, `run.4821`).
///
/// The formation's dynos are numbered from 1; a one-off gets a random number, so that names
/// do not hint at how many ran. [`DynoName::parse`] accepts exactly what [`fmt::Display`]
/// writes, so that two spellings never name one dyno.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DynoName {
    pub process_type: String,
    pub index: u32,
}

/// A dyno name that is not `TYPE.N`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid dyno name {given:?}: use TYPE.N, e.g. web.1 \
     (TYPE: 1 to {MAX_PROCESS_TYPE_LEN} of A-Z a-z 0-9 _ -; N: a number)"
)]
pub struct InvalidDynoName {
    pub given: String,
}

impl DynoName {
    /// The dyno `index` of `process_type`. The type is not checked: it comes from a
    /// Procfile or a formation, which were.
    pub fn new(process_type: impl Into<String>, index: u32) -> Self {
        DynoName {
            process_type: process_type.into(),
            index,
        }
    }

    /// Parses `TYPE.N`: a valid process type ([`is_valid_process_type`]), one dot, and a
    /// decimal number without sign or leading zeros that fits a `u32`.
    pub fn parse(name: &str) -> Result<Self, InvalidDynoName> {
        let invalid = || InvalidDynoName {
            given: name.to_owned(),
        };
        let (process_type, index) = name.split_once('.').ok_or_else(invalid)?;
        let canonical = !index.is_empty()
            && index.bytes().all(|b| b.is_ascii_digit())
            && (index == "0" || !index.starts_with('0'));
        if !is_valid_process_type(process_type) || !canonical {
            return Err(invalid());
        }
        let index = index.parse().map_err(|_| invalid())?;
        Ok(DynoName::new(process_type, index))
    }

    /// See [`is_web`].
    pub fn is_web(&self) -> bool {
        is_web(&self.process_type)
    }

    /// See [`is_one_off`].
    pub fn is_one_off(&self) -> bool {
        is_one_off(&self.process_type)
    }

    /// See [`runs_once`].
    pub fn runs_once(&self) -> bool {
        runs_once(&self.process_type)
    }
}

impl fmt::Display for DynoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.process_type, self.index)
    }
}

impl FromStr for DynoName {
    type Err = InvalidDynoName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DynoName::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_web_is_web() {
        assert!(is_web(WEB));
        for other in ["worker", "Web", "web2", RUN, RELEASE, BUILD, ""] {
            assert!(!is_web(other), "{other}");
        }
    }

    #[test]
    fn the_scheduler_one_offs_are_run_and_release() {
        assert!(is_one_off(RUN) && is_one_off(RELEASE));
        for formation in [WEB, "worker", BUILD, "runner", "release-notes"] {
            assert!(!is_one_off(formation), "{formation}");
        }
    }

    #[test]
    fn the_agent_also_runs_builds_once() {
        for once in [RUN, RELEASE, BUILD] {
            assert!(runs_once(once), "{once}");
        }
        for restarted in [WEB, "worker", "builder"] {
            assert!(!runs_once(restarted), "{restarted}");
        }
    }

    #[test]
    fn process_type_names_follow_the_procfile_rule() {
        for good in ["web", "worker_2", "clock-tick", "A9"] {
            assert!(is_valid_process_type(good), "{good}");
        }
        assert!(is_valid_process_type(&"a".repeat(MAX_PROCESS_TYPE_LEN)));
        assert!(!is_valid_process_type(
            &"a".repeat(MAX_PROCESS_TYPE_LEN + 1)
        ));
        for bad in ["", "web.1", "my web", "wéb", "web;rm", "a/b"] {
            assert!(!is_valid_process_type(bad), "{bad:?}");
        }
    }

    #[test]
    fn names_parse_and_print_alike() {
        for (text, process_type, index) in [
            ("web.1", "web", 1),
            ("run.4821", "run", 4821),
            ("release.1234", "release", 1234),
            ("build.1", "build", 1),
            ("clock-tick_2.0", "clock-tick_2", 0),
            ("web.4294967295", "web", u32::MAX),
        ] {
            let name = DynoName::parse(text).expect(text);
            assert_eq!(name, DynoName::new(process_type, index));
            assert_eq!(name.to_string(), text);
            assert_eq!(text.parse::<DynoName>().ok(), Some(name));
        }
    }

    #[test]
    fn malformed_names_are_refused() {
        for bad in [
            "",
            "web",
            "web.",
            ".1",
            "web.x",
            "web.-1",
            "web.+1",
            "web.01",
            "web.1.2",
            "a.b.1",
            "my web.1",
            "web.4294967296",
            "wéb.1",
        ] {
            let err = DynoName::parse(bad).expect_err(bad);
            assert_eq!(err.given, bad);
            assert!(err.to_string().contains("TYPE.N"), "{err}");
        }
    }

    #[test]
    fn a_name_knows_its_rules() {
        let web = DynoName::new(WEB, 1);
        assert!(web.is_web() && !web.is_one_off() && !web.runs_once());
        let build = DynoName::new(BUILD, 1);
        assert!(!build.is_one_off() && build.runs_once());
        assert!(DynoName::new(RUN, 7).is_one_off());
    }
}
