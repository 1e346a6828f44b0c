//! `manifold-agent gc`: what dynos whose shim is gone left behind, and unused slugs.

use anyhow::Context;
use manifold_agent::dyno::{DynoDir, HostConfig};
use manifold_agent::host::{network, slug};
use manifold_agent::runner::shim_alive;
use manifold_agent::shim;

pub(crate) fn gc(host: &HostConfig, slug_retention: std::time::Duration) -> anyhow::Result<()> {
    let entries = match std::fs::read_dir(host.dynos_dir()) {
        Ok(e) => e.filter_map(Result::ok).collect::<Vec<_>>(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).context("cannot list dynos"),
    };
    for entry in entries {
        let id = entry.file_name().to_string_lossy().to_string();
        let dir = DynoDir { root: entry.path() };
        if shim_alive(&dir) {
            continue;
        }
        let errors = shim::remove_dead(&dir)
            .with_context(|| format!("cannot remove {}", dir.root.display()))?;
        for err in errors {
            eprintln!("gc {id}: {err}");
        }
        println!("removed dyno {id}");
    }
    let net = &host.network;
    // Repairs the host's bridge and rules too, in case someone flushed them.
    network::ensure_host(net)?;
    // Asked afresh for each dyno holding a network: a dyno started since the listing above
    // (by a daemon or another `run`) has its directory before it plugs in, so it is kept.
    let alive = |id: &str| {
        shim_alive(&DynoDir {
            root: host.dynos_dir().join(id),
        })
    };
    for id in network::sweep(net, &alive)? {
        println!("released network of {id}");
    }
    if let Ok(owners) = std::fs::read_dir(host.slugs_dir()) {
        for owner in owners.filter_map(Result::ok).filter(|e| e.path().is_dir()) {
            slug::SlugCache::sweep_tmp(&owner.path())?;
        }
    }
    let collected = manifold_agent::host::gc::collect_slugs(host, slug_retention)?;
    for sha256 in collected.layers {
        println!("removed slug layer {sha256}");
    }
    for sha256 in collected.archives {
        println!("removed slug archive {sha256}");
    }
    if let Some(ids) = manifold_agent::host::ids::IdRanges::new(host)? {
        for app in ids.release_unused(host, manifold_agent::host::ids::RELEASE_AFTER)? {
            println!("gave back the id range of app {app}");
        }
    }
    Ok(())
}
