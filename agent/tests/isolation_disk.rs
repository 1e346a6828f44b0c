//! Isolation: disk quotas. A dyno writing without end fills its own quota, not the host's
//! disk; a build's directories and an app's build cache are limited the same way. Needs the
//! state directories on btrfs with quotas, as `scripts/setup` leaves them.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use manifold_agent::build_dyno::{self, BuildRequest, DirectoryBuildpacks};
use manifold_agent::dyno::HostConfig;
use manifold_agent::host::quota::{self, Made};
use manifold_agent::size::DynoSize;

const STATE_DIR: &str = "/var/lib/manifold";
const MIB: u64 = 1024 * 1024;

/// Fails the test (rather than skipping it) where quotas are off: CI runs `scripts/setup`.
fn quotas_on(dir: &str) {
    let made = quota::check(&Path::new(STATE_DIR).join(dir));
    assert_eq!(
        made,
        Made::Limited,
        "{STATE_DIR}/{dir} has no disk quotas: run scripts/setup"
    );
}

/// Whether `path` is a btrfs subvolume (its root directory's inode is always 256).
fn is_subvolume(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_dir() && m.ino() == 256)
}

#[test]
fn a_dyno_writing_past_its_disk_quota_gets_edquot_and_its_end_is_recorded() {
    if !ready() {
        return;
    }
    quotas_on("dynos");
    let limit = DynoSize::Eco.limits().disk;
    let count = limit / MIB + 100;
    let out = run(
        &["--name", "worker.1", "--size", "eco"],
        &format!(
            "dd if=/dev/zero of=/app/big bs=1M count={count} 2>&1 | grep -o 'Disk quota exceeded' | head -1; \
             echo size=$(stat -c %s /app/big); \
             echo more > /app/more 2>/dev/null; echo more=$?; \
             rm /app/big; echo again > /app/again; echo again=$?"
        ),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let app = app_lines(&out);
    assert_has(&app, "Disk quota exceeded");
    let got = key_values(&app);
    let size: u64 = got["size"].parse().unwrap();
    assert!(
        size <= limit,
        "wrote {size} bytes past a {limit}-byte quota"
    );
    assert!(size > limit / 2, "stopped early, at {size} bytes");
    assert_eq!(got["more"], "1", "a full quota refuses more writes");
    assert_eq!(
        got["again"], "0",
        "space freed inside the dyno is usable again"
    );
    // The shim still wrote the dyno's log and end, outside the quota.
    assert_has(&platform_lines(&out), "Process exited with status 0");
}

#[test]
fn a_limited_directory_refuses_writes_past_its_limit_and_goes_with_its_contents() {
    if !ready() {
        return;
    }
    quotas_on("builds");
    let dir = PathBuf::from(STATE_DIR)
        .join("builds")
        .join(format!("quota-test-{:08x}", rand::random::<u32>()));
    assert_eq!(quota::limited_dir(&dir, 4 * MIB).unwrap(), Made::Limited);
    assert!(is_subvolume(&dir));
    // Again: the same subvolume gets its limit again.
    assert_eq!(quota::limited_dir(&dir, 4 * MIB).unwrap(), Made::Limited);
    let mut file = std::fs::File::create(dir.join("f")).unwrap();
    let chunk = vec![0u8; MIB as usize];
    let err = (0..16)
        .try_for_each(|_| file.write_all(&chunk).and_then(|()| file.sync_data()))
        .expect_err("16 MiB went into a 4 MiB directory");
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err}");
    drop(file);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!dir.exists());
}

#[test]
fn a_builds_directory_and_its_apps_cache_are_limited() {
    if !ready() {
        return;
    }
    quotas_on("builds");
    quotas_on("cache");
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("Procfile"), "web: true\n").unwrap();
    let host = HostConfig::with_state_dir(STATE_DIR);
    let tag = format!("{:08x}", rand::random::<u32>());
    let cache_dir = PathBuf::from(STATE_DIR)
        .join("cache")
        .join(format!("quota-test-{tag}"));
    let req = BuildRequest {
        source: src.path().to_path_buf(),
        stack: "testing".into(),
        size: DynoSize::Standard2X,
        env: BTreeMap::new(),
        buildpacks: vec![],
        cache_dir: cache_dir.clone(),
        slugbuilder: PathBuf::from("/bin/true"),
        buildpacks_dir: src.path().to_path_buf(),
        timeout: Duration::from_secs(60),
        directory_buildpacks: DirectoryBuildpacks::Anywhere,
        max_slug_bytes: build_dyno::DEFAULT_MAX_SLUG_BYTES,
    };
    let id = format!("build-quota-{tag}");
    let prepared = build_dyno::prepare(&host, &id, &req).unwrap();
    let subvolumes = (is_subvolume(&prepared.work), is_subvolume(&cache_dir));
    std::fs::remove_dir_all(&prepared.work).unwrap();
    std::fs::remove_dir_all(&cache_dir).unwrap();
    assert_eq!(
        subvolumes,
        (true, true),
        "work and cache are limited subvolumes"
    );
}
