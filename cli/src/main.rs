//! `manifold`: the Heroku-style command-line client of the Manifold scheduler API.

mod api;
mod cli;
mod commands;
mod leader;
mod output;
mod run;
mod scale;
mod tarball;
mod term;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // One request at a time: a current-thread runtime is all the CLI needs.
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(commands::run(cli)));
    // `run` exits with its dyno's status; a failure to do what was asked is 1.
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("manifold: {e:#}");
            ExitCode::FAILURE
        }
    }
}
