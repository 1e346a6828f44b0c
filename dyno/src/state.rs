//! The one dyno state, spoken by the agent (its runs), the wire, the scheduler's store and
//! API, and `ps`: [`DynoState`], with its words and the rule of which report may follow
//! which ([`DynoState::may_follow`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A dyno's state: Heroku's API states plus `stopping` and the scheduler's `created`, and
/// without `idle`, which no dyno is in (`ps` shows it for a sleeping app's dynos, which
/// have no row while it sleeps). The agent's runs use all but `created`; the wire
/// (`manifold-proto`) has the same set, with `From` conversions there.
///
/// How it moves. `created` is the scheduler's, for a dyno placed and not yet reported; the
/// rest are the agent's. One run of a dyno goes along the arrows; the agent restarts a
/// crashed dyno in place (a new run, same dyno id) and never restarts a one-off:
///
/// ```text
///   created ──► starting ──► up ──► stopping ──► down
///                  ▲  │       │        │           │ still assigned: a crash, to the agent
///                  │  │       │        │           ▼
///                  │  └───────┴────────┴──────► crashed ──► down   no longer assigned
///                  │                                │
///                  └──────── restart in place ──────┘
///
///   starting, up ──► complete ──► down   one-offs, which are never restarted
///   starting, up ──► down                stopped before `stopping` was reported
/// ```
///
/// A `down` of a dyno still assigned was not asked for by the scheduler (something else
/// stopped it), so the agent restarts it as after a crash. Beside the arrows,
/// [`DynoState::may_follow`] allows what a working agent may also send: the same state
/// again, `starting` after any state but `complete` (a new run: a restart, or a restarted
/// agent re-adopting or relaunching the dyno), and skipped states (while the link is
/// congested the agent keeps only a dyno's newest report, so the scheduler may see
/// `created ──► up` or `crashed ──► up`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DynoState {
    /// Placed, not yet reported by its agent.
    Created,
    Starting,
    Up,
    Crashed,
    Stopping,
    Down,
    Complete,
}

impl DynoState {
    /// Every state, in the order of a dyno's life.
    pub const ALL: [DynoState; 7] = [
        DynoState::Created,
        DynoState::Starting,
        DynoState::Up,
        DynoState::Stopping,
        DynoState::Crashed,
        DynoState::Down,
        DynoState::Complete,
    ];

    /// The lower-case word `ps`, the API, the store and the platform's log lines use.
    pub fn as_str(self) -> &'static str {
        match self {
            DynoState::Created => "created",
            DynoState::Starting => "starting",
            DynoState::Up => "up",
            DynoState::Crashed => "crashed",
            DynoState::Stopping => "stopping",
            DynoState::Down => "down",
            DynoState::Complete => "complete",
        }
    }

    /// Whether an agent's report of this state may follow `from`, the dyno's stored state
    /// (see the diagram on [`DynoState`]). It refuses what only a late report can be, one
    /// sent before the stored state and delivered after it (as by a link being replaced):
    /// `up` after `stopping` or `down`, `stopping` after `down`, `complete` after a run that
    /// ended otherwise, anything but `down` after `complete`, and `created`, which no agent
    /// reports. A report carries no run id, so one legitimate sequence is refused as well: a
    /// dyno stopped by something other than the scheduler whose `crashed` and restart's
    /// `starting` were both skipped on a congested link shows `down` until its next change.
    pub fn may_follow(self, from: DynoState) -> bool {
        use DynoState::{Complete, Crashed, Created, Down, Starting, Stopping, Up};
        if self == from {
            // Reported again: after a reconnect, or by an agent re-adopting the dyno.
            return true;
        }
        match (from, self) {
            (_, Created) => false,
            // Any first report: the ones before it may have been skipped.
            (Created, _) => true,
            // A one-off runs once; its agent only forgets it.
            (Complete, to) => to == Down,
            // A new run: a restart, or a restarted agent re-adopting or relaunching the dyno.
            (_, Starting) => true,
            // The run goes on, or ends in any way.
            (Starting | Up, _) => true,
            // Restarted in place at once (the first restart has no delay), so the new run's
            // states, but not `complete`: one-offs are not restarted.
            (Crashed, to) => to != Complete,
            // A stop ends `down`, or `crashed` if the agent still has the dyno assigned.
            (Stopping, to) => matches!(to, Down | Crashed),
            // Still assigned: restarted, as after a crash.
            (Down, to) => to == Crashed,
        }
    }

    /// The state [`DynoState::as_str`] spells `s`, if any (as [`FromStr`], for callers that
    /// want an `Option`).
    pub fn parse(s: &str) -> Option<DynoState> {
        DynoState::ALL.into_iter().find(|d| d.as_str() == s)
    }

    /// Whether a dyno in this state has no process running: its run ended (`crashed`,
    /// `complete`) or it was stopped (`down`). A crashed dyno that is still assigned is
    /// restarted by its agent, as a new run.
    pub fn is_ended(self) -> bool {
        matches!(
            self,
            DynoState::Crashed | DynoState::Down | DynoState::Complete
        )
    }
}

impl fmt::Display for DynoState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is not a dyno state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown dyno state {given:?}: expected one of created, starting, up, stopping, crashed, down, complete")]
pub struct UnknownState {
    pub given: String,
}

impl FromStr for DynoState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DynoState::parse(s).ok_or_else(|| UnknownState {
            given: s.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [DynoState; 7] = DynoState::ALL;

    #[test]
    fn words_round_trip_through_every_spelling() {
        for state in ALL {
            let word = state.as_str();
            assert_eq!(state.to_string(), word);
            assert_eq!(DynoState::parse(word), Some(state));
            assert_eq!(word.parse::<DynoState>().ok(), Some(state));
            let json = serde_json::to_string(&state).expect("serialise");
            assert_eq!(json, format!("\"{word}\""));
            assert_eq!(serde_json::from_str::<DynoState>(&json).ok(), Some(state));
        }
        assert_eq!(DynoState::parse("idle"), None);
        let err = "Up".parse::<DynoState>().expect_err("words are lower-case");
        assert!(err.to_string().contains("\"Up\""), "{err}");
    }

    #[test]
    fn ended_states_have_no_process() {
        use DynoState::*;
        let ended: Vec<DynoState> = ALL.into_iter().filter(|s| s.is_ended()).collect();
        assert_eq!(ended, [Crashed, Down, Complete]);
    }

    #[test]
    fn may_follow_allows_and_refuses_as_the_table_says() {
        // Rows: the stored state; columns: the reported one. `y`: stored, `-`: refused.
        let table = "
            stored     created starting up stopping crashed down complete
            created    y       y        y  y        y       y    y
            starting   -       y        y  y        y       y    y
            up         -       y        y  y        y       y    y
            stopping   -       y        -  y        y       y    -
            crashed    -       y        y  y        y       y    -
            down       -       y        -  -        y       y    -
            complete   -       -        -  -        -       y    y
        ";
        let mut lines = table
            .lines()
            .map(str::split_whitespace)
            .filter_map(|mut words| {
                let first = words.next()?;
                Some((first, words.collect::<Vec<_>>()))
            });
        let (_, columns) = lines.next().expect("header");
        let columns: Vec<DynoState> = columns
            .iter()
            .map(|c| DynoState::parse(c).expect("a state"))
            .collect();
        assert_eq!(columns, ALL);
        let mut rows = Vec::new();
        for (from, cells) in lines {
            let from = DynoState::parse(from).expect("a state");
            rows.push(from);
            assert_eq!(cells.len(), columns.len(), "the row of {}", from.as_str());
            for (to, cell) in columns.iter().zip(cells) {
                assert_eq!(
                    to.may_follow(from),
                    cell == "y",
                    "{} after {}",
                    to.as_str(),
                    from.as_str()
                );
            }
        }
        assert_eq!(rows, ALL, "every stored state has its row");
    }

    /// Each report of a sequence may follow the one before it.
    fn accepted(states: &[DynoState]) -> bool {
        states.windows(2).all(|w| w[1].may_follow(w[0]))
    }

    #[test]
    fn what_an_agent_sends_is_accepted() {
        use DynoState::*;
        let sequences: &[(&str, &[DynoState])] = &[
            (
                "a web dyno's life",
                &[Created, Starting, Up, Stopping, Down],
            ),
            ("a worker without $PORT", &[Created, Starting, Up, Crashed]),
            (
                "stopped while starting",
                &[Created, Starting, Stopping, Down],
            ),
            (
                "the R10 boot timeout",
                &[Created, Starting, Crashed, Starting],
            ),
            (
                "restarted in place",
                &[Up, Crashed, Starting, Up, Crashed, Starting],
            ),
            (
                "a failed start, then unassigned",
                &[Starting, Crashed, Down],
            ),
            ("a one-off", &[Created, Starting, Up, Complete, Down]),
            ("a one-off stopped", &[Up, Stopping, Down]),
            ("a stop whose stopping was not reported", &[Up, Down]),
            (
                "stopped by someone else, restarted",
                &[Up, Stopping, Down, Crashed, Starting, Up],
            ),
            (
                "its run's records ended while stopping",
                &[Stopping, Crashed, Starting],
            ),
            ("re-adopted by a restarted agent", &[Up, Starting, Up, Up]),
            (
                "re-adopted while stopping",
                &[Stopping, Starting, Up, Stopping, Down],
            ),
            ("relaunched by a restarted agent", &[Down, Starting, Up]),
            (
                "reports skipped on a congested link",
                &[Created, Up, Crashed, Up, Down],
            ),
            (
                "a restart skipped on a congested link",
                &[Crashed, Stopping, Down],
            ),
            (
                "reported again after a reconnect",
                &[Up, Up, Crashed, Crashed, Down, Down],
            ),
        ];
        for (what, states) in sequences {
            assert!(accepted(states), "{what}: {states:?}");
        }
    }

    #[test]
    fn late_reports_are_refused() {
        use DynoState::*;
        for (from, late) in [
            (Down, Up),
            (Down, Stopping),
            (Stopping, Up),
            (Complete, Up),
            (Complete, Starting),
            (Complete, Crashed),
            (Down, Complete),
            (Up, Created),
        ] {
            assert!(!late.may_follow(from), "{late:?} after {from:?}");
        }
    }
}
