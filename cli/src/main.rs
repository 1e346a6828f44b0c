//! `manifold`: the Heroku-style command-line client of the Manifold scheduler API.

mod api;
mod cli;
mod commands;
mod output;
mod scale;
mod tarball;

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
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("manifold: {e:#}");
            ExitCode::FAILURE
        }
    }
}
