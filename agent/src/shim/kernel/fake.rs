//! A recording kernel for the shim's unit tests: each call is written to a journal, any one
//! call can be made to fail, nothing needs root. Where the kernel would mount, it makes plain
//! directories, so that the steps after it (the spec in the bundle) run as they do for real.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::dyno::{DynoConfig, DynoDir};
use crate::host::cgroup::{Sentinel, ShimCgroup, ShimCgroupError};
use crate::host::network::Plug;
use crate::host::quota;
use crate::host::rootfs::Overlay;
use crate::host::seccomp::Filter;

use super::{Cgroups, Container, Kernel, Limiting, Mounts, Network, Runtime, Streams};

/// The calls made, in order, by name (`kill_all SIGTERM` for a signal).
#[derive(Clone, Default)]
pub(in crate::shim) struct Journal(Arc<Mutex<Vec<String>>>);

impl Journal {
    pub(in crate::shim) fn calls(&self) -> Vec<String> {
        self.0.lock().expect("journal").clone()
    }

    pub(in crate::shim) fn clear(&self) {
        self.0.lock().expect("journal").clear();
    }
}

/// The fake kernel: journals each call; the call named `fail` returns an error.
#[derive(Clone)]
pub(in crate::shim) struct Fake {
    journal: Journal,
    fail: Option<&'static str>,
}

impl Fake {
    /// A kernel of fakes sharing one journal; `fail` names the call that errs.
    pub(in crate::shim) fn kernel(fail: Option<&'static str>) -> (Kernel, Journal) {
        let journal = Journal::default();
        let fake = Fake {
            journal: journal.clone(),
            fail,
        };
        let kernel = Kernel {
            mounts: Box::new(fake.clone()),
            cgroups: Box::new(fake.clone()),
            runtime: Box::new(fake.clone()),
            network: Box::new(fake),
        };
        (kernel, journal)
    }

    /// Journals `call`; an error if it is the one to fail.
    fn call(&self, call: &str) -> io::Result<()> {
        self.journal
            .0
            .lock()
            .expect("journal")
            .push(call.to_owned());
        match self.fail {
            Some(f) if call.starts_with(f) => Err(io::Error::other(format!("{call} failed"))),
            _ => Ok(()),
        }
    }

    /// Journals a call whose failure is reported as text (an undo).
    fn undo(&self, call: &str) -> Vec<String> {
        self.call(call)
            .err()
            .map(|e| e.to_string())
            .into_iter()
            .collect()
    }
}

impl Mounts for Fake {
    fn slug_layer(&self, c: &DynoConfig) -> anyhow::Result<Option<PathBuf>> {
        self.call("slug_layer")?;
        Ok(c.slug.as_ref().map(|s| s.path.with_extension("layer")))
    }

    fn limit_disk(&self, disk: &Path, _bytes: u64) -> io::Result<quota::Made> {
        self.call("limit_disk")?;
        fs::create_dir_all(disk)?;
        Ok(quota::Made::Unlimited("a fake".into()))
    }

    fn mount(
        &self,
        _c: &DynoConfig,
        _dir: &DynoDir,
        overlay: &Overlay,
        _binds: &[(PathBuf, PathBuf)],
    ) -> anyhow::Result<()> {
        self.call("mount")?;
        for d in [&overlay.upper, &overlay.work, &overlay.merged] {
            fs::create_dir_all(d)?;
        }
        Ok(())
    }

    fn unmount(&self, _merged: &Path) -> anyhow::Result<()> {
        Ok(self.call("unmount")?)
    }
}

impl Cgroups for Fake {
    fn forbid_swap(&self, _c: &DynoConfig) -> io::Result<()> {
        self.call("forbid_swap")
    }

    fn keep_scope(&self, _c: &DynoConfig) -> io::Result<Option<Sentinel>> {
        self.call("keep_scope").map(|()| None)
    }

    fn join_cpu(&self, _c: &DynoConfig) -> Result<ShimCgroup, ShimCgroupError> {
        // Never joined: a fake shim has no cgroups to be in (which the shim only warns of).
        let _ = self.call("join_cpu");
        Err(ShimCgroupError::Unsupported)
    }

    fn remove_shim_cgroups(&self, _c: &DynoConfig) -> Vec<String> {
        self.undo("remove_shim_cgroups")
    }

    fn remove_dyno_cgroups(&self, _c: &DynoConfig) -> Vec<String> {
        self.undo("remove_dyno_cgroups")
    }
}

impl Runtime for Fake {
    fn build(
        &self,
        _c: &DynoConfig,
        _dir: &DynoDir,
        _streams: Streams,
        _filter: Filter,
    ) -> anyhow::Result<Box<dyn Container>> {
        self.call("build")?;
        Ok(Box::new(self.clone()))
    }

    fn limit_user_namespace(&self, _pid: Pid) -> Limiting {
        let limited = self.call("limit_user_namespace");
        Box::new(move || limited)
    }

    fn load(&self, _c: &DynoConfig) -> Option<Box<dyn Container>> {
        // Nothing outlives a fake shim: a sweep finds no container.
        let _ = self.call("load");
        None
    }

    fn remove_state(&self, _c: &DynoConfig) -> Vec<String> {
        self.undo("remove_state")
    }
}

impl Container for Fake {
    fn pid(&self) -> Option<Pid> {
        Some(Pid::this())
    }

    fn start(&mut self) -> anyhow::Result<()> {
        Ok(self.call("start")?)
    }

    fn kill_all(&mut self, sig: Signal) -> anyhow::Result<()> {
        Ok(self.call(&format!("kill_all {sig}"))?)
    }

    fn delete(&mut self) -> anyhow::Result<()> {
        Ok(self.call("delete")?)
    }
}

impl Network for Fake {
    fn ensure_host(&self, _c: &DynoConfig) -> anyhow::Result<()> {
        Ok(self.call("ensure_host")?)
    }

    fn plug(&self, _c: &DynoConfig, _pid: Pid) -> anyhow::Result<Plug> {
        self.call("plug")?;
        Ok(Plug {
            address: [10, 0, 0, 2].into(),
            gateway: [10, 0, 0, 1].into(),
            host_veth: "fake0".into(),
            published: None,
        })
    }

    fn release(&self, _c: &DynoConfig) -> anyhow::Result<()> {
        Ok(self.call("release")?)
    }
}
