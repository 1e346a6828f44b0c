//! The host: what the kernel gives every dyno on this machine, set up once and shared, and the
//! pieces of a dyno that live in the host's state rather than in the dyno.
//!
//! A dyno's start takes these in order (see [`crate::shim`]): [`slug`] (verify and unpack
//! the slug once per host and id range), [`rootfs`] (overlay of the slug layer over the
//! stack), [`ids`] (the app's user-namespace range), [`seccomp`] (the filter, compiled once
//! per host), [`cgroup`] (limits, the cgroup driver), [`quota`] (the writable layer's disk
//! quota), [`inotify`] (limits of its own), [`network`] (veth to the host bridge, leases,
//! NAT, the published port) with [`netpolicy`] (what a dyno may reach). [`gc`] collects
//! what no dyno uses any more; [`tuning`] is done once at start.

pub mod cgroup;
pub mod gc;
pub mod ids;
pub mod inotify;
pub mod netpolicy;
pub mod network;
pub mod quota;
pub mod rootfs;
pub mod seccomp;
pub mod slug;
pub mod tuning;
