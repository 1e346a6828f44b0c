//! The order of a dyno's network steps and their undo, over the [`Dataplane`] trait, so that
//! they are unit-tested with a fake.

use super::*;

/// What plug, unplug and sweep need from the kernel, so their ordering and undo paths can
/// be tested against a fake that records calls and injects failures.
pub(super) trait Dataplane {
    /// Creates the veth pair: host end `host` on `bridge`, up, with `alias`, an isolated
    /// port unless `isolated` is false; peer [`PEER_NAME`] with `mac`, directly in the netns
    /// of `pid`.
    fn create_veth(
        &mut self,
        bridge: &str,
        host: &str,
        alias: &str,
        pid: i32,
        mac: [u8; 6],
        isolated: bool,
    ) -> Result<(), NetworkError>;
    /// Inside the netns of `pid`: IPv6 off on [`PEER_NAME`], `lo` and [`PEER_NAME`] up,
    /// `address/prefix` on it, default route via `gateway`.
    fn configure_inside(
        &mut self,
        pid: i32,
        address: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
    ) -> Result<(), NetworkError>;
    /// Inside the netns of `pid`: the dyno's connections to `endpoints` (on the host's
    /// loopback) go to `gateway` instead ([`loopback_script`]).
    fn redirect_loopback(
        &mut self,
        pid: i32,
        gateway: Ipv4Addr,
        endpoints: &[Endpoint],
    ) -> Result<(), NetworkError>;
    /// Deletes the link `name`; a link that does not exist is success.
    fn delete_link(&mut self, name: &str) -> Result<(), NetworkError>;
    /// Runs `nft args…` with `script` on stdin and returns its stdout.
    fn nft(
        &mut self,
        step: &'static str,
        args: &[&str],
        script: Option<&str>,
    ) -> Result<String, NetworkError>;
}

pub(super) fn plug_with(
    kernel: &mut impl Dataplane,
    cfg: &NetworkConfig,
    dyno_id: &str,
    pid: i32,
    publish: Option<(u16, u16)>,
    access: &Access,
    start: u32,
) -> Result<Plug, NetworkError> {
    let lease_dir = cfg.lease_dir();
    let lease = Lease {
        dyno: dyno_id.to_string(),
        publish,
        access: access.clone(),
    };
    let address = allocate_lease(&lease_dir, cfg.subnet, &lease, start)?;
    let host_veth = host_veth_name(dyno_id);
    let wired = wire(kernel, cfg, &lease, pid, address, &host_veth);
    if let Err(error) = wired {
        if let Err(undo) = kernel.delete_link(&host_veth) {
            tracing::warn!(dyno = dyno_id, error = %undo, "plug undo: could not delete the veth");
        }
        if let Err(undo) = remove_lease(&lease_dir, address) {
            tracing::warn!(dyno = dyno_id, error = %undo, "plug undo: could not release the lease");
        }
        return Err(error);
    }
    Ok(Plug {
        address,
        gateway: cfg.subnet.gateway(),
        host_veth,
        published: publish.map(|(host_port, _)| host_port),
    })
}

/// The steps of plug after the lease; any failure leaves the undo to [`plug_with`].
/// The published port and the policy elements go in one nft transaction: all or none.
fn wire(
    kernel: &mut impl Dataplane,
    cfg: &NetworkConfig,
    lease: &Lease,
    pid: i32,
    address: Ipv4Addr,
    host_veth: &str,
) -> Result<(), NetworkError> {
    let (dyno_id, publish) = (lease.dyno.as_str(), lease.publish);
    // An add-on service that local dynos reach: where `br_netfilter` hands bridge frames to
    // nft, a connection DNATed to an address on the bridge is bridged port to port (not
    // routed through the host), which an isolated pair of ports would drop; there, nft's
    // `forward` chain sees those frames and refuses all but the DNATed ones, so the
    // service's port need not be isolated. Elsewhere the connection is routed and it stays
    // isolated.
    let isolated = !(lease.access.shared && bridge_frames_filtered());
    kernel.create_veth(
        &cfg.bridge,
        host_veth,
        dyno_id,
        pid,
        mac_for(address),
        isolated,
    )?;
    kernel.configure_inside(pid, address, cfg.subnet.prefix(), cfg.subnet.gateway())?;
    let loopback = lease.access.loopback_egress();
    if !loopback.is_empty() {
        kernel.redirect_loopback(pid, cfg.subnet.gateway(), &loopback)?;
    }
    let mut script = publish
        .map(|publish| publish_script(cfg, dyno_id, address, publish))
        .unwrap_or_default();
    script += &access_script(cfg, "add", dyno_id, address, lease);
    if !script.is_empty() {
        let publish = publish.unwrap_or_default();
        kernel
            .nft("publish a port", &["-f", "-"], Some(&script))
            .map_err(|e| {
                if e.nft_says("File exists") {
                    NetworkError::PortInUse { port: publish.0 }
                } else {
                    e
                }
            })?;
    }
    Ok(())
}

/// Order matters for crash safety: published ports, then the veth, then the lease last, so
/// whatever a crash leaves behind still has a lease naming its dyno for the next sweep.
/// The host lock keeps two unplugs of one dyno from racing a new plug for the same
/// address or port.
pub(super) fn unplug_with(
    kernel: &mut impl Dataplane,
    cfg: &NetworkConfig,
    dyno_id: &str,
    veth: Veth,
) -> Result<(), NetworkError> {
    let _lock = lock_host(&cfg.state_dir)?;
    let lease_dir = cfg.lease_dir();
    let leases: Vec<(Ipv4Addr, Lease)> = read_leases(&lease_dir)?
        .into_iter()
        .filter(|(_, lease)| lease.dyno == dyno_id)
        .collect();
    if leases.is_empty() {
        // Nothing says what was published (a sweep finds dynos this way): look.
        let ports: Vec<u16> = list_published(kernel, cfg)?
            .into_iter()
            .filter(|(_, id)| id == dyno_id)
            .map(|(port, _)| port)
            .collect();
        if !ports.is_empty() {
            kernel.nft(
                "unpublish ports",
                &["-f", "-"],
                Some(&unpublish_script(cfg, &ports)),
            )?;
        }
    } else {
        // The policy elements: `add` then `delete`, so that one already gone (a flushed
        // table) does not fail the transaction.
        let script: String = leases
            .iter()
            .map(|(address, lease)| {
                let published = lease
                    .publish
                    .map(|publish| retract_script(cfg, dyno_id, *address, publish))
                    .unwrap_or_default();
                access_script(cfg, "add", dyno_id, *address, lease)
                    + &access_script(cfg, "delete", dyno_id, *address, lease)
                    + &published
            })
            .collect();
        if !script.is_empty() {
            match kernel.nft("unpublish a port", &["-f", "-"], Some(&script)) {
                // The port maps elsewhere, so nothing of ours is left; or there is no table.
                Err(e) if e.nft_says("File exists") || e.nft_says("No such file or directory") => {}
                other => {
                    other?;
                }
            }
        }
    }
    if veth == Veth::Delete {
        kernel.delete_link(&host_veth_name(dyno_id))?;
    }
    for (address, _) in leases {
        remove_lease(&lease_dir, address)?;
    }
    Ok(())
}

pub(super) fn update_access_with(
    kernel: &mut impl Dataplane,
    cfg: &NetworkConfig,
    dyno_id: &str,
    access: &Access,
) -> Result<(), NetworkError> {
    let _lock = lock_host(&cfg.state_dir)?;
    let lease_dir = cfg.lease_dir();
    let (address, old) = read_leases(&lease_dir)?
        .into_iter()
        .find(|(_, lease)| lease.dyno == dyno_id)
        .ok_or_else(|| NetworkError::NotPlugged {
            dyno: dyno_id.to_string(),
        })?;
    let new = Lease {
        access: access.clone(),
        ..old.clone()
    };
    let (gateway, published) = (cfg.subnet.gateway(), old.publish.is_some());
    let wanted = new.access.elements(address, gateway, published);
    let gone: Vec<(&'static str, String)> = old
        .access
        .elements(address, gateway, published)
        .into_iter()
        .filter(|e| !wanted.contains(e))
        .collect();
    // `add` first, so that each deletion names an element that exists.
    let script = elements_script(cfg, "add", dyno_id, &wanted)
        + &elements_script(cfg, "add", dyno_id, &gone)
        + &elements_script(cfg, "delete", dyno_id, &gone);
    if !script.is_empty() {
        kernel.nft(
            "update a dyno's policy elements",
            &["-f", "-"],
            Some(&script),
        )?;
    }
    replace_lease(&lease_dir, address, &new)
}

pub(super) fn sweep_with(
    kernel: &mut impl Dataplane,
    cfg: &NetworkConfig,
    alive: &dyn Fn(&str) -> bool,
) -> Result<Vec<String>, NetworkError> {
    let mut ids: BTreeSet<String> = read_leases(&cfg.lease_dir())?
        .into_iter()
        .map(|(_, lease)| lease.dyno)
        .collect();
    ids.extend(list_published(kernel, cfg)?.into_iter().map(|(_, id)| id));
    let dead: Vec<String> = ids.into_iter().filter(|id| !alive(id)).collect();
    for id in &dead {
        tracing::info!(dyno = %id, "sweeping the network of a dyno that is gone");
        unplug_with(kernel, cfg, id, Veth::Delete)?;
    }
    Ok(dead)
}

/// Whether `br_netfilter` passes bridged IPv4 frames through the `ip` hooks (nft's `forward`
/// chain sees traffic between two ports of the bridge).
fn bridge_frames_filtered() -> bool {
    std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
        .is_ok_and(|v| v.trim() == "1")
}
