//! One dyno entry of the daemon as an explicit state machine: where it is in its life
//! ([`Phase`]), what can happen to it ([`Input`]), and what the daemon must do about it
//! ([`Effect`]). [`Entry::on`] is the only place a phase changes, and it decides from the
//! phase alone; the actor ([`super::Core`]) only carries the effects out.
//!
//! ```text
//!        Start ok                       Launched, assigned
//!  New ────────────▶ Launching ─────────────────────────────▶ Running{state, exit} ◀─┐
//!   │ Start err        │   │                                   │    │ State: [Report] │
//!   │                  │   │ Launched, unassigned: [Stop]      │    └─────────────────┘
//!   │                  │   ▼                                   │ Unassigned: [Stop]
//!   │                  │  Stopping{state, exit} ◀──────────────┘
//!   │    LaunchFailed  │   │   ▲ State: [Report]
//!   │ [Report crashed] │   │ Ended                       (and Running, on Ended)
//!   ▼                  ▼   ▼
//!  ┌──────────────── the run is over ──────────────────────────────────────────────┐
//!  │ unassigned         → gone            [Report down unless it said so, Remove]  │
//!  │ assigned, one-off  → Done{state, exit}                                        │
//!  │ assigned           → Backoff{exit}   [Report crashed unless it said so,       │
//!  │                                       RestartIn(RestartSchedule)]             │
//!  └───────────────────────────────────────────────────────────────────────────────┘
//!  Backoff ──Start ok (the timer)──▶ Launching   [Restarted, Report starting, Launch]
//!  Backoff ──Start err─────────────▶ as New's    [Restarted, Report crashed, …]
//!  New     ──Start ok──────────────▶ Launching   [Report starting, Launch]
//!  Backoff, Done ──Unassigned──────▶ gone        [Report down unless it said so, Remove]
//!  Launching ──Unassigned──────────▶ Launching   (stopped once launched, above)
//! ```
//!
//! `Start` does nothing to an unassigned entry; an `Up` also tells the restart schedule, so
//! a dyno up for long enough starts its crash count over. R10 (a web dyno that never bound
//! `$PORT`) is the runner's: it kills the dyno and reports it crashed, and this machine
//! restarts it like any crash.
//!
//! A phase carries the state the entry last reported (and its exit status) where a
//! decision needs it: whether the end of a run still has to be reported `crashed`, whether
//! its removal still has to be reported `down`. An entry re-adopted after a daemon restart
//! starts in `Launching` ([`Entry::adopted`]), its state `starting` recorded but not
//! reported: its replayed stream says what it really is.

use super::*;

/// Where a dyno entry is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Made for a new assignment; its first run is not asked for yet.
    New,
    /// Fetching the slug and starting the shim (or, re-adopted, about to be followed); it
    /// has been reported (or recorded) `starting`.
    Launching,
    /// Followed; `state` and `exit` are what its run last said.
    Running { state: State, exit: Option<i32> },
    /// A stop was asked for; waiting for its end. `state` and `exit` as in `Running`.
    Stopping { state: State, exit: Option<i32> },
    /// Crashed (reported so, with `exit`); a timer will start it again.
    Backoff { exit: Option<i32> },
    /// A one-off that ended, in `state`: kept (so it is not started again) until unassigned.
    Done { state: State, exit: Option<i32> },
}

/// What happens to one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Input {
    /// A run is wanted: the assignment is new, or its restart is due. `Err` says why the
    /// host cannot give a run what it needs before it is launched (a free port): that
    /// fails like a failed launch.
    Start(Result<(), String>),
    /// The run's dyno is started (or adopted) and followed.
    Launched,
    /// The run could not be started.
    LaunchFailed(String),
    /// The run's dyno changed state.
    State {
        state: State,
        exit: Option<i32>,
        reason: Option<String>,
    },
    /// The run is over: its dyno ended, or was lost sight of (and killed).
    Ended,
    /// The assignment is gone.
    Unassigned,
}

/// What the actor must do for an entry, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Effect {
    /// Start a new run (slug fetch, shim).
    Launch,
    /// Ask the running dyno to stop (SIGTERM, SIGKILL after its grace).
    Stop,
    /// Record the state and tell the scheduler.
    Report {
        state: State,
        exit: Option<i32>,
        reason: String,
    },
    /// A crashed dyno is started again: the daemon logs the change out of `crashed` (the new
    /// run's runner starts from `starting`) and counts it.
    Restarted,
    /// Feed [`Input::Start`] again after this delay.
    RestartIn(Duration),
    /// Forget the entry (its port, its log queue).
    Remove,
}

/// One dyno the agent has, whatever its phase.
#[derive(Debug)]
pub(super) struct Entry {
    /// The app, kept here because lines keep coming after the assignment is gone (a
    /// stopping dyno's last words).
    pub(super) app: String,
    pub(super) name: String,
    /// The current run's container id: events of an earlier run are ignored.
    pub(super) run: String,
    /// Published host port (web dynos).
    pub(super) port: Option<u16>,
    /// Asks the current run's follower to stop the dyno; set once it is launched.
    pub(super) stop: Option<mpsc::UnboundedSender<()>>,
    /// The last report, as `Hello` repeats it. Written by the actor when it reports; never
    /// read to decide anything (the phase is).
    pub(super) status: proto::DynoStatus,
    /// A re-adopted dyno's state before the daemon restarted, and since when.
    pub(super) since: Option<(proto::DynoState, i64)>,
    /// One-offs are never restarted.
    one_off: bool,
    phase: Phase,
    restarts: RestartSchedule,
}

impl Entry {
    /// An entry for a new assignment, before its first run.
    pub(super) fn new(app: &str, name: &str, id: &str, restarts: RestartSchedule) -> Self {
        Entry {
            app: app.to_string(),
            name: name.to_string(),
            run: String::new(),
            port: None,
            stop: None,
            status: proto::DynoStatus {
                id: id.to_string(),
                ..Default::default()
            },
            since: None,
            one_off: one_off(name),
            phase: Phase::New,
            restarts,
        }
    }

    /// An entry for a dyno a previous daemon left running: `starting` until its replayed
    /// stream says otherwise, recorded but not reported (that would overwrite the state it
    /// has been in `since`).
    pub(super) fn adopted(
        app: &str,
        config: &DynoConfig,
        id: &str,
        since: Option<(proto::DynoState, i64)>,
        restarts: RestartSchedule,
    ) -> Self {
        let mut entry = Entry::new(app, &config.name, id, restarts);
        entry.run = config.id.clone();
        entry.port = config.publish;
        entry.since = since;
        entry.phase = Phase::Launching;
        entry.status = proto::DynoStatus {
            id: id.to_string(),
            state: proto::DynoState::Starting.into(),
            changed_at_ms: now_ms(),
            exit_status: None,
            reason: String::new(),
            port: config.publish.map(u32::from).unwrap_or(0),
        };
        entry
    }

    /// Still `starting` as far as anyone was told: a re-adopted dyno whose replay has not
    /// caught up yet.
    pub(super) fn starting(&self) -> bool {
        matches!(
            self.phase,
            Phase::Launching
                | Phase::Running {
                    state: State::Starting,
                    ..
                }
        )
    }

    /// The transition function: `assigned` says whether the entry's assignment is in the
    /// current set, `now` is when `input` happened (for the restart schedule).
    pub(super) fn on(&mut self, input: Input, assigned: bool, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        match (self.phase, input) {
            // Only an assigned dyno is (re)started.
            (_, Input::Start(_)) if !assigned => {}
            (Phase::New | Phase::Backoff { .. }, Input::Start(Ok(()))) => {
                if matches!(self.phase, Phase::Backoff { .. }) {
                    effects.push(Effect::Restarted);
                }
                self.phase = Phase::Launching;
                effects.push(report(State::Starting, None, String::new()));
                effects.push(Effect::Launch);
            }
            (Phase::New | Phase::Backoff { .. }, Input::Start(Err(reason))) => {
                if matches!(self.phase, Phase::Backoff { .. }) {
                    effects.push(Effect::Restarted);
                }
                self.launch_failed(reason, assigned, now, &mut effects);
            }
            (Phase::Launching, Input::LaunchFailed(reason)) => {
                self.launch_failed(reason, assigned, now, &mut effects);
            }
            (Phase::Launching, Input::Launched) => {
                let (state, exit) = (State::Starting, None);
                self.phase = if assigned {
                    Phase::Running { state, exit }
                } else {
                    // Unassigned while it was launched.
                    effects.push(Effect::Stop);
                    Phase::Stopping { state, exit }
                };
            }
            (
                Phase::Running { .. } | Phase::Stopping { .. },
                Input::State {
                    state,
                    exit,
                    reason,
                },
            ) => {
                if state == State::Up {
                    self.restarts.up(now);
                }
                self.phase = match self.phase {
                    Phase::Stopping { .. } => Phase::Stopping { state, exit },
                    _ => Phase::Running { state, exit },
                };
                effects.push(report(state, exit, reason.unwrap_or_default()));
            }
            (Phase::Running { state, exit }, Input::Unassigned) => {
                self.phase = Phase::Stopping { state, exit };
                effects.push(Effect::Stop);
            }
            (Phase::Running { state, exit } | Phase::Stopping { state, exit }, Input::Ended) => {
                self.ended(state, exit, assigned, now, &mut effects)
            }
            (Phase::New, Input::Unassigned) => effects.push(Effect::Remove),
            (Phase::Backoff { exit }, Input::Unassigned) => {
                removed(State::Crashed, exit, &mut effects);
            }
            (Phase::Done { state, exit }, Input::Unassigned) => {
                removed(state, exit, &mut effects);
            }
            // Stopped once it is launched (see `Launched`); already stopping; and inputs a
            // phase cannot get from the run it follows (the actor drops earlier runs').
            (_, _) => {}
        }
        effects
    }

    /// The run could not be started: a crash, with the reason.
    fn launch_failed(
        &mut self,
        reason: String,
        assigned: bool,
        now: Instant,
        effects: &mut Vec<Effect>,
    ) {
        effects.push(report(State::Crashed, None, reason));
        self.ended(State::Crashed, None, assigned, now, effects);
    }

    /// A run ended (or never started), last reported in `state` with `exit`: remove the
    /// entry, keep it, or schedule a restart.
    fn ended(
        &mut self,
        state: State,
        exit: Option<i32>,
        assigned: bool,
        now: Instant,
        effects: &mut Vec<Effect>,
    ) {
        if !assigned {
            removed(state, exit, effects);
        } else if self.one_off {
            self.phase = Phase::Done { state, exit };
        } else {
            if state != State::Crashed {
                effects.push(report(State::Crashed, exit, String::new()));
            }
            self.phase = Phase::Backoff { exit };
            effects.push(Effect::RestartIn(self.restarts.crashed(now)));
        }
    }
}

/// An entry whose run is over and that is not assigned any more goes, reported `down`
/// (once).
fn removed(state: State, exit: Option<i32>, effects: &mut Vec<Effect>) {
    if state != State::Down {
        effects.push(report(State::Down, exit, String::new()));
    }
    effects.push(Effect::Remove);
}

fn report(state: State, exit: Option<i32>, reason: String) -> Effect {
    Effect::Report {
        state,
        exit,
        reason,
    }
}

/// One-offs and builds are never restarted; they are known by their process type (the
/// vocabulary's [`manifold_dyno::runs_once`]).
pub(super) fn one_off(name: &str) -> bool {
    manifold_dyno::runs_once(name.split('.').next().unwrap_or_default())
}

/// A runner's state as the wire spells it.
pub(super) fn proto_state(state: State) -> proto::DynoState {
    proto::DynoState::from(manifold_dyno::DynoState::from(state))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(name: &str) -> Entry {
        let schedule = RestartSchedule::with_random(RestartPolicy::default(), |n| n);
        Entry::new("app", name, "d1", schedule)
    }

    fn reported(state: State, exit: Option<i32>) -> Effect {
        report(state, exit, String::new())
    }

    fn state(state: State, exit: Option<i32>) -> Input {
        Input::State {
            state,
            exit,
            reason: None,
        }
    }

    #[test]
    fn a_run_is_reported_crashed_once_and_restarted_by_the_schedule() {
        let now = Instant::now();
        let mut e = worker("worker.1");
        assert_eq!(
            e.on(Input::Start(Ok(())), true, now),
            [reported(State::Starting, None), Effect::Launch]
        );
        assert_eq!(e.on(Input::Launched, true, now), []);
        assert_eq!(
            e.on(state(State::Up, None), true, now),
            [reported(State::Up, None)]
        );
        // Lost sight of without a last word: the daemon says it crashed.
        assert_eq!(
            e.on(Input::Ended, true, now),
            [
                reported(State::Crashed, None),
                Effect::RestartIn(Duration::ZERO)
            ]
        );
        assert_eq!(e.phase, Phase::Backoff { exit: None });
        assert_eq!(
            e.on(Input::Start(Ok(())), true, now),
            [
                Effect::Restarted,
                reported(State::Starting, None),
                Effect::Launch
            ]
        );
        e.on(Input::Launched, true, now);
        // The run said it crashed: not said again; the 2nd crash waits `base`.
        assert_eq!(
            e.on(state(State::Crashed, Some(1)), true, now),
            [reported(State::Crashed, Some(1))]
        );
        assert_eq!(
            e.on(Input::Ended, true, now),
            [Effect::RestartIn(RestartPolicy::default().base)]
        );
        // Unassigned while it waits: down, with the crash's exit status, and gone.
        assert_eq!(
            e.on(Input::Unassigned, false, now),
            [reported(State::Down, Some(1)), Effect::Remove]
        );
    }

    #[test]
    fn no_free_port_fails_the_start_like_a_failed_launch() {
        let now = Instant::now();
        let mut e = worker("web.1");
        let why = "no free host port in 1-2".to_string();
        assert_eq!(
            e.on(Input::Start(Err(why.clone())), true, now),
            [
                report(State::Crashed, None, why),
                Effect::RestartIn(Duration::ZERO)
            ]
        );
    }

    #[test]
    fn only_an_assigned_entry_in_backoff_or_new_is_started() {
        let now = Instant::now();
        let mut e = worker("worker.1");
        assert_eq!(e.on(Input::Start(Ok(())), false, now), []);
        assert_eq!(e.phase, Phase::New);
        e.on(Input::Start(Ok(())), true, now);
        assert_eq!(
            e.on(Input::Start(Ok(())), true, now),
            [],
            "already launching"
        );
        e.on(Input::Launched, true, now);
        assert_eq!(e.on(Input::Start(Ok(())), true, now), [], "running");
    }

    #[test]
    fn an_ended_one_off_is_done_until_unassigned_then_down_once() {
        let now = Instant::now();
        let mut e = worker("run.1");
        e.on(Input::Start(Ok(())), true, now);
        e.on(Input::Launched, true, now);
        e.on(state(State::Complete, Some(0)), true, now);
        assert_eq!(e.on(Input::Ended, true, now), []);
        assert_eq!(
            e.phase,
            Phase::Done {
                state: State::Complete,
                exit: Some(0)
            }
        );
        assert_eq!(
            e.on(Input::Unassigned, false, now),
            [reported(State::Down, Some(0)), Effect::Remove]
        );

        // One stopped by someone else said `down` itself: not said twice.
        let mut e = worker("run.2");
        e.on(Input::Start(Ok(())), true, now);
        e.on(Input::Launched, true, now);
        e.on(state(State::Down, Some(143)), true, now);
        e.on(Input::Ended, true, now);
        assert_eq!(e.on(Input::Unassigned, false, now), [Effect::Remove]);
    }

    #[test]
    fn unassigned_while_launching_it_is_stopped_once_launched() {
        let now = Instant::now();
        let mut e = worker("worker.1");
        e.on(Input::Start(Ok(())), true, now);
        assert_eq!(e.on(Input::Unassigned, false, now), []);
        assert_eq!(e.on(Input::Launched, false, now), [Effect::Stop]);
        assert_eq!(e.on(Input::Unassigned, false, now), [], "stopping already");
        e.on(state(State::Stopping, None), false, now);
        e.on(state(State::Down, Some(143)), false, now);
        assert_eq!(e.on(Input::Ended, false, now), [Effect::Remove]);

        // A launch that failed meanwhile: crashed, then down and gone.
        let mut e = worker("worker.1");
        e.on(Input::Start(Ok(())), true, now);
        let why = "slug fetch failed".to_string();
        assert_eq!(
            e.on(Input::LaunchFailed(why.clone()), false, now),
            [
                report(State::Crashed, None, why),
                reported(State::Down, None),
                Effect::Remove
            ]
        );
    }
}
