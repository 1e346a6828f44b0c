//! `manifold-cluster-sim`: see the crate's documentation and `--help`.
//!
//! ```sh
//! cargo build --release -p manifold-scheduler -p manifold-cluster-sim
//! target/release/manifold-cluster-sim --hosts 1000 --dynos 100000 --apps 1000
//! ```

use clap::Parser;
use manifold_cluster_sim::config::Flags;

fn main() -> std::process::ExitCode {
    let config = match Flags::parse().check() {
        Ok(c) => c,
        Err(err) => {
            eprintln!("manifold-cluster-sim: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    let json = config.flags.json.clone();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(err) => {
            eprintln!("manifold-cluster-sim: cannot start the runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // On Ctrl-C or SIGTERM the simulation is dropped: the scheduler is killed and its
    // temporary directory removed before exiting.
    let result = runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = manifold_cluster_sim::simulate(config) => r.map(Some),
            _ = tokio::signal::ctrl_c() => Ok(None),
            _ = term.recv() => Ok(None),
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(Some((setup, outcomes))) => {
            println!("{}", manifold_cluster_sim::report::table(&setup, &outcomes));
            let doc = serde_json::json!({"setup": setup, "scenarios": outcomes});
            match json {
                Some(path) => {
                    if let Err(err) = std::fs::write(&path, format!("{doc:#}\n")) {
                        eprintln!(
                            "manifold-cluster-sim: cannot write {}: {err}",
                            path.display()
                        );
                        return std::process::ExitCode::FAILURE;
                    }
                }
                None => println!("{doc}"),
            }
            std::process::ExitCode::SUCCESS
        }
        Ok(None) => {
            eprintln!(
                "manifold-cluster-sim: interrupted; the scheduler is stopped and its files removed"
            );
            std::process::ExitCode::from(130)
        }
        Err(err) => {
            eprintln!("manifold-cluster-sim: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
