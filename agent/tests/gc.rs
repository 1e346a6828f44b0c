//! Acceptance: `manifold-agent gc` removes the slugs no dyno uses, and only those.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use sha2::Digest;

/// Every unpacked layer of the slug with this digest, under any owner.
fn layers(sha256: &str) -> Vec<PathBuf> {
    std::fs::read_dir("/var/lib/manifold/slugs")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|owner| owner.path().join(sha256))
        .filter(|layer| layer.exists())
        .collect()
}

fn gc() -> String {
    let out = Command::new(BIN)
        .args(["--slug-retention", "0s", "gc"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

#[test]
fn gc_removes_slugs_no_dyno_uses() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let marker = format!("{:032x}", rand::random::<u128>());
    let slug = slug(
        tmp.path(),
        "app.tgz",
        &[
            ("Procfile", "worker: sleep 600\n", 0o644),
            ("marker", &marker, 0o644),
        ],
    );
    let sha256: String = sha2::Sha256::digest(std::fs::read(&slug).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

    let mut dyno = Background::spawn(
        Command::new(BIN)
            .args(["run", "--name", "worker.1", "--grace", "1s", "--slug"])
            .arg(&slug)
            .args(["--", "echo ready; exec sleep 600"]),
    );
    let mut child = dyno.child.take().unwrap();
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("]: ready") {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the dyno ended early"
        );
    }
    assert_eq!(layers(&sha256).len(), 1, "the slug was not unpacked");

    // In use: kept, however idle the retention says it is.
    let kept = gc();
    assert!(!kept.contains(&sha256), "{kept}");
    assert_eq!(
        layers(&sha256).len(),
        1,
        "a running dyno's layer was removed"
    );

    dyno.child = Some(child);
    dyno.stop();
    let removed = gc();
    assert!(
        removed.contains(&format!("removed slug layer {sha256}")),
        "{removed}"
    );
    assert!(
        layers(&sha256).is_empty(),
        "the unused layer is still there"
    );
    let owner_markers: Vec<PathBuf> = std::fs::read_dir("/var/lib/manifold/slugs")
        .unwrap()
        .filter_map(Result::ok)
        .map(|o| o.path().join(format!("{sha256}.done")))
        .filter(|m| Path::new(m).exists())
        .collect();
    assert!(owner_markers.is_empty(), "markers left: {owner_markers:?}");
}
