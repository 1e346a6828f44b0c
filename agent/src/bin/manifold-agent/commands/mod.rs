//! The agent's commands besides the daemon, each calling the library.

pub mod build;
pub mod gc;
pub mod run;
