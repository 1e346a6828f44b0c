//! `--database` as an operator meets it: a value that names no database is refused before
//! anything starts, and a PostgreSQL server that cannot be reached stops the start with its
//! URL (password hidden) and the reason.

use std::process::{Command, Output};

fn scheduler(database: &str, state_dir: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_manifold-scheduler"))
        .arg("--state-dir")
        .arg(state_dir)
        .args(["--listen", "127.0.0.1:0", "--database", database])
        .env_remove("MANIFOLD_DATABASE")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run manifold-scheduler")
}

#[test]
fn a_bad_database_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = scheduler("mysql://db/manifold", dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("bad database \"mysql://db/manifold\": unknown scheme mysql"),
        "{stderr}"
    );
    assert!(
        std::fs::read_dir(dir.path())
            .expect("read")
            .next()
            .is_none(),
        "refused before anything was written"
    );
}

#[test]
fn an_unreachable_postgres_stops_the_start_with_its_url_and_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = manifold_test_support::free_port();
    let out = scheduler(
        &format!("postgres://manifold:s3cret@127.0.0.1:{port}/manifold"),
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot connect to the database postgres://manifold:***@127.0.0.1:{port}/manifold"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("Connection refused"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
}
