//! Manifold's slug compiler: an app's source in, a slug (`./app` as a gzipped tar) and its
//! metadata out, using classic Heroku buildpacks that run real shell scripts.
//!
//! Where to start: [`build::build`] runs a whole build and its module documentation shows the
//! steps. The pieces it is made of are usable alone:
//! - [`procfile`]: the one Procfile parser that the agent and the scheduler use too;
//! - [`metadata`]: `slug.json` read back as untrusted input, by the agent and the scheduler;
//! - [`buildpack`]: naming, fetching and running classic buildpacks (`bin/detect`,
//!   `bin/compile`, `bin/release`);
//! - [`slugignore`]: applying `.slugignore` to a build directory;
//! - [`pack`]: packing a directory into a slug with parallel gzip;
//! - [`process`]: running a script with its output streamed and a deadline.
//!
//! The built-in buildpacks (Python, Node.js, generic) are shell scripts in the repository's
//! `buildpacks/` directory, found at run time (see [`buildpack::find_builtins_dir`]).

pub mod build;
pub mod buildpack;
mod fsutil;
pub mod metadata;
pub mod pack;
pub mod process;
pub mod procfile;
pub mod slugignore;
