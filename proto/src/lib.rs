//! AgentLink, the wire contract between `manifold-agent` and `manifold-scheduler`: the
//! messages and the one bidirectional-streaming service in `proto/agentlink.proto`.
//!
//! Start with the `.proto` file: it documents the protocol (who dials whom, what is
//! level-triggered, what a generation is). This crate compiles it, and converts its
//! `DynoState` to and from the dyno vocabulary's (`manifold_dyno::DynoState`, in `state`).

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("manifold.agentlink.v1");

mod state;

pub use state::UnspecifiedState;
