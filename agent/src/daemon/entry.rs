//! One dyno entry of the daemon: where it is in its life ([`Phase`]) and what can happen to
//! it ([`Input`]), with the proto spellings of its states.

use super::*;

/// Where a dyno entry is in its life.
#[derive(Debug)]
pub(super) enum Phase {
    /// Fetching the slug and starting the shim.
    Launching,
    /// Followed; a message on `stop` stops it.
    Running { stop: mpsc::UnboundedSender<()> },
    /// A stop was asked for; waiting for its end.
    Stopping,
    /// Crashed; a timer will start it again.
    Backoff,
    /// A one-off that ended: kept (so it is not started again) until unassigned.
    Done,
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
    pub(super) phase: Phase,
    pub(super) status: proto::DynoStatus,
    pub(super) restarts: RestartSchedule,
    /// A re-adopted dyno's state before the daemon restarted, and since when.
    pub(super) since: Option<(proto::DynoState, i64)>,
}

/// What the core task reacts to, besides the link.
#[derive(Debug)]
pub(super) enum Input {
    Launched {
        id: String,
        run: String,
        stop: mpsc::UnboundedSender<()>,
    },
    LaunchFailed {
        id: String,
        run: String,
        reason: String,
    },
    Dyno {
        id: String,
        run: String,
        event: Event,
    },
    Ended {
        id: String,
        run: String,
    },
    Restart {
        id: String,
        run: String,
    },
    Build(proto::BuildEvent),
}

/// A state as `manifold ps` writes it.
pub(super) fn proto_state_name(state: proto::DynoState) -> &'static str {
    match state {
        proto::DynoState::Starting => "starting",
        proto::DynoState::Up => "up",
        proto::DynoState::Crashed => "crashed",
        proto::DynoState::Down => "down",
        proto::DynoState::Complete => "complete",
        proto::DynoState::Stopping => "stopping",
        proto::DynoState::Unspecified => "unknown",
    }
}

pub(super) fn proto_state(state: State) -> proto::DynoState {
    match state {
        State::Starting => proto::DynoState::Starting,
        State::Up => proto::DynoState::Up,
        State::Stopping => proto::DynoState::Stopping,
        State::Crashed => proto::DynoState::Crashed,
        State::Down => proto::DynoState::Down,
        State::Complete => proto::DynoState::Complete,
    }
}
