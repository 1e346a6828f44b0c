//! The dyno vocabulary: the words the agent, the scheduler, the slugbuilder, the CLI and the
//! wire contract (`manifold-proto`) share, defined once so that no two of them can spell a
//! rule differently.
//!
//! Where to start:
//! - [`process`]: the process types the platform treats specially ([`WEB`], [`RUN`],
//!   [`RELEASE`], [`BUILD`]), the one-off rules ([`is_one_off`], [`runs_once`]), the
//!   default `$PORT` ([`WEB_PORT`]) and dyno names ([`DynoName`], `web.1`);
//! - [`state`]: the one [`DynoState`], its words and which report may follow which;
//! - [`size`]: the dyno size table ([`DynoSize`] → cgroup [`Limits`]);
//! - [`slug`]: `slug.json` ([`SlugMetadata`]), what a build says about its slug.
//!
//! The crate has no I/O and depends on nothing of Manifold; `manifold-proto` carries the
//! conversions between [`DynoState`] and its wire enum.

pub mod process;
pub mod size;
pub mod slug;
pub mod state;

pub use process::{
    is_one_off, is_valid_process_type, is_web, runs_once, DynoName, InvalidDynoName, BUILD,
    MAX_PROCESS_TYPE_LEN, RELEASE, RUN, WEB, WEB_PORT,
};
pub use size::{DynoSize, Limits, UnknownSize};
pub use slug::{BuildpackInfo, SlugMetadata};
pub use state::{DynoState, UnknownState};
