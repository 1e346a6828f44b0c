//! The wire's `DynoState` and the vocabulary's [`manifold_dyno::DynoState`]: the same words,
//! so the conversions are the one mapping between them (the agent converts what it reports,
//! the scheduler what it receives).
//!
//! They differ in two values: the wire has `unspecified` (protobuf's zero, what a missing or
//! unknown value reads as), which is no state; the vocabulary has `created`, the scheduler's
//! own state for a dyno placed and not yet reported, which no agent sends.

use manifold_dyno::DynoState as State;

use crate::{DynoState as Wire, DynoStatus};

/// A report whose state is `unspecified`: missing, or a value this build does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the dyno state is unspecified")]
pub struct UnspecifiedState;

impl From<State> for Wire {
    /// `created` has no wire value: it goes out as `unspecified`, which a receiver refuses as
    /// it would a report without a state.
    fn from(state: State) -> Wire {
        match state {
            State::Created => Wire::Unspecified,
            State::Starting => Wire::Starting,
            State::Up => Wire::Up,
            State::Stopping => Wire::Stopping,
            State::Crashed => Wire::Crashed,
            State::Down => Wire::Down,
            State::Complete => Wire::Complete,
        }
    }
}

impl TryFrom<Wire> for State {
    type Error = UnspecifiedState;

    fn try_from(wire: Wire) -> Result<State, UnspecifiedState> {
        Ok(match wire {
            Wire::Unspecified => return Err(UnspecifiedState),
            Wire::Starting => State::Starting,
            Wire::Up => State::Up,
            Wire::Stopping => State::Stopping,
            Wire::Crashed => State::Crashed,
            Wire::Down => State::Down,
            Wire::Complete => State::Complete,
        })
    }
}

impl DynoStatus {
    /// The reported state, or [`UnspecifiedState`] when the field is missing or holds a
    /// value this build does not know (prost reads both as `unspecified`).
    pub fn dyno_state(&self) -> Result<State, UnspecifiedState> {
        State::try_from(self.state())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reported_state_goes_there_and_back() {
        for state in State::ALL {
            let wire = Wire::from(state);
            if state == State::Created {
                assert_eq!(wire, Wire::Unspecified);
                continue;
            }
            assert_eq!(State::try_from(wire), Ok(state));
            // The two enums spell their values alike (`UP` / `up`).
            assert_eq!(wire.as_str_name().to_lowercase(), state.as_str());
        }
    }

    #[test]
    fn unspecified_and_unknown_values_are_no_state() {
        assert_eq!(State::try_from(Wire::Unspecified), Err(UnspecifiedState));
        let status = |state: i32| DynoStatus {
            state,
            ..Default::default()
        };
        assert_eq!(status(Wire::Up.into()).dyno_state(), Ok(State::Up));
        assert_eq!(status(0).dyno_state(), Err(UnspecifiedState));
        assert_eq!(status(99).dyno_state(), Err(UnspecifiedState));
    }
}
