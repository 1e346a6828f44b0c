//! What Manifold's test suites share, so that each keeps one copy: the rule for tests that
//! need something of the machine ([`require`]: CI must run them, elsewhere they skip with a
//! loud message), ports for the servers and dynos they start ([`free_port`]) and a
//! throwaway PostgreSQL server ([`postgres::Postgres`]).
//!
//! A dev-dependency only: nothing here is in a shipped binary.

use std::sync::{Mutex, PoisonError};

pub mod postgres;

/// Whether the machine has what a test needs: `needs` are (met, what to do when it is not),
/// in the order to report them. A test that cannot run fails in CI (a skipped acceptance
/// test is a missing one: CI is root and has the stacks) and elsewhere skips, loudly.
pub fn require(test: &str, needs: &[(bool, &str)]) -> bool {
    let Some((_, why)) = needs.iter().find(|(met, _)| !met) else {
        return true;
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} cannot run: {why} (CI must run it)"
    );
    eprintln!("\n\n!!! SKIPPING {test}: {why} !!!\n");
    false
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// [`require`] for a test that needs root and nothing else.
pub fn require_root(test: &str) -> bool {
    require(test, &[(is_root(), "it needs root")])
}

/// A port nothing listens on, for a process or dyno a test starts. Taken below the kernel's
/// ephemeral range (32768 and up), where a port the kernel handed out (`bind` to port 0)
/// could be taken again by any outgoing connection before the process binds it, and never
/// the same twice in one test binary, whose tests run side by side.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let port = rand::random::<u16>() % 10_000 + 10_000;
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

/// `n` distinct free ports.
pub fn free_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| free_port()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_below_the_ephemeral_range() {
        let ports = free_ports(50);
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len());
        assert!(ports.iter().all(|p| (10_000..20_000).contains(p)));
    }

    #[test]
    fn a_test_whose_needs_are_met_runs() {
        assert!(require("t", &[(true, "a"), (true, "b")]));
    }

    #[test]
    fn an_unmet_need_skips_outside_ci_and_fails_in_ci() {
        // The test process's own CI variable decides; both outcomes are checked.
        let in_ci = std::env::var_os("CI").is_some();
        let outcome = std::panic::catch_unwind(|| require("t", &[(true, "a"), (false, "b")]));
        match outcome {
            Ok(ran) => {
                assert!(!in_ci);
                assert!(!ran);
            }
            Err(panic) => {
                assert!(in_ci);
                let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
                assert!(message.contains("t cannot run: b"), "{message}");
            }
        }
    }
}
