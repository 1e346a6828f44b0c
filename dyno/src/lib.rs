//! The dyno vocabulary: the words the agent, the scheduler, the slugbuilder and the wire
//! contract (`manifold-proto`) share, defined once so that no two of them can spell a rule
//! differently.
//!
//! Where to start:
//! - [`size`]: the dyno size table ([`DynoSize`] → cgroup [`Limits`]).

pub mod size;

pub use size::{DynoSize, Limits, UnknownSize};
