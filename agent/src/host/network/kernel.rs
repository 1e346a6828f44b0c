//! The real dataplane: rtnetlink for links, addresses and routes, `setns` for the one step
//! inside the dyno's network namespace.

use super::*;

/// A current-thread runtime and an rtnetlink handle bound to the calling thread's netns.
/// Dropping the runtime drops the connection task with it; no thread is started.
pub(super) fn connect() -> Result<(tokio::runtime::Runtime, rtnetlink::Handle), NetworkError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| NetworkError::Connect { source })?;
    let (connection, handle, _) = {
        let _context = rt.enter();
        rtnetlink::new_connection().map_err(|source| NetworkError::Connect { source })?
    };
    rt.spawn(connection);
    Ok((rt, handle))
}

fn errno_of(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.to_io().raw_os_error(),
        _ => None,
    }
}

async fn find_link(
    handle: &rtnetlink::Handle,
    name: &str,
) -> Result<Option<rtnetlink::packet_route::link::LinkMessage>, NetworkError> {
    match handle
        .link()
        .get()
        .match_name(name)
        .execute()
        .try_next()
        .await
    {
        Ok(link) => Ok(link),
        Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(netlink_error("look up", name)(e)),
    }
}

pub(super) async fn ensure_bridge(
    handle: &rtnetlink::Handle,
    cfg: &NetworkConfig,
) -> Result<(), NetworkError> {
    let name = cfg.bridge.as_str();
    let mac = mac_for(cfg.subnet.gateway()).to_vec();
    if find_link(handle, name).await?.is_none() {
        let create = LinkBridge::new(name).address(mac.clone()).build();
        match handle.link().add(create).execute().await {
            Err(e) if errno_of(&e) != Some(libc::EEXIST) => {
                return Err(netlink_error("create bridge", name)(e))
            }
            _ => {}
        }
    }
    let link = find_link(handle, name)
        .await?
        .ok_or_else(|| NetworkError::BridgeMissing {
            bridge: name.to_string(),
        })?;
    let is_bridge = link.attributes.iter().any(|attribute| {
        matches!(attribute, LinkAttribute::LinkInfo(infos)
            if infos.iter().any(|info| matches!(info, LinkInfo::Kind(InfoKind::Bridge))))
    });
    if !is_bridge {
        return Err(NetworkError::NotABridge {
            device: name.to_string(),
        });
    }
    let index = link.header.index;
    // Also for a bridge made by someone else: pin its MAC and bring it up.
    let up = LinkUnspec::new_with_index(index).address(mac).up().build();
    handle
        .link()
        .change(up)
        .execute()
        .await
        .map_err(netlink_error("bring up", name))?;
    let gateway = cfg.subnet.gateway().into();
    let add = handle.address().add(index, gateway, cfg.subnet.prefix());
    match add.execute().await {
        Err(e) if errno_of(&e) != Some(libc::EEXIST) => {
            Err(netlink_error("add the gateway address to", name)(e))
        }
        _ => Ok(()),
    }
}

/// Opens the netns of `pid`, refusing our own: wiring "the dyno's" namespace when it is
/// really the host's would rename and re-address the host's interfaces.
fn open_netns(pid: i32) -> Result<File, NetworkError> {
    let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let theirs = File::open(&path).map_err(io_error("open", &path))?;
    let own_path = Path::new("/proc/thread-self/ns/net");
    let own = fs::metadata(own_path).map_err(io_error("stat", own_path))?;
    let their_meta = theirs.metadata().map_err(io_error("stat", &path))?;
    if (own.dev(), own.ino()) == (their_meta.dev(), their_meta.ino()) {
        return Err(NetworkError::SharedNamespace { pid });
    }
    Ok(theirs)
}

/// Runs `work` on a short-lived thread that has joined the netns `ns`, and joins it. The
/// calling thread never changes namespace, so a failure cannot strand it in the dyno's.
pub(super) fn in_netns<T: Send>(
    ns: &File,
    pid: i32,
    work: impl FnOnce() -> Result<T, NetworkError> + Send,
) -> Result<T, NetworkError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(|source| NetworkError::EnterNamespace { pid, source })?;
                work()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The real [`Dataplane`]: rtnetlink for links, addresses and routes, the `nft` binary for
/// NAT. Lives for one API call.
pub(super) struct Kernel {
    rt: tokio::runtime::Runtime,
    handle: rtnetlink::Handle,
}

impl Kernel {
    pub(super) fn new() -> Result<Self, NetworkError> {
        let (rt, handle) = connect()?;
        Ok(Self { rt, handle })
    }
}

impl Dataplane for Kernel {
    /// One RTM_NEWLINK makes both ends: the peer is born in the dyno's netns, named and with
    /// its MAC, and the host end is born on the bridge and up. Asking for the peer to be up
    /// as well is refused (ENOTCONN, kernel 6.18), so `configure_inside` brings it up.
    ///
    /// The kernel ignores port options and the alias on a link it is creating, hence a second
    /// message for the alias (the dyno id, for operators) and isolation: the bridge forwards
    /// no frame between two isolated ports, so dynos cannot reach each other at layer 2 (where
    /// nft's `ip` table sees nothing unless `br_netfilter` is loaded), only the host.
    fn create_veth(
        &mut self,
        bridge: &str,
        host: &str,
        alias: &str,
        pid: i32,
        mac: [u8; 6],
        isolated: bool,
    ) -> Result<(), NetworkError> {
        let ns = open_netns(pid)?;
        let handle = &self.handle;
        self.rt.block_on(async {
            let bridge_index = find_link(handle, bridge)
                .await?
                .ok_or_else(|| NetworkError::BridgeMissing {
                    bridge: bridge.to_string(),
                })?
                .header
                .index;
            let peer = LinkUnspec::new_with_name(PEER_NAME)
                .address(mac.to_vec())
                .setns_by_fd(ns.as_raw_fd())
                .build();
            let pair = LinkVeth::new(host, PEER_NAME)
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                .controller(bridge_index)
                .up()
                .build();
            handle
                .link()
                .add(pair)
                .execute()
                .await
                .map_err(netlink_error("create veth", host))?;
            let port = LinkBridgePort::new(0)
                .name(host)
                .alias(alias)
                .isolated(isolated)
                .build();
            handle
                .link()
                .set_port(port)
                .execute()
                .await
                .map_err(netlink_error("isolate and set the alias of", host))
        })
    }

    fn configure_inside(
        &mut self,
        pid: i32,
        address: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
    ) -> Result<(), NetworkError> {
        let ns = open_netns(pid)?;
        in_netns(&ns, pid, || {
            // Before the link is up, so it never gets a link-local address. `/proc/sys/net`
            // shows the netns of the thread that opens it: this one, the dyno's.
            disable_ipv6(Path::new(&format!(
                "/proc/sys/net/ipv6/conf/{PEER_NAME}/disable_ipv6"
            )))?;
            let (rt, handle) = connect()?;
            rt.block_on(async {
                let lo = LinkUnspec::new_with_name("lo").up().build();
                handle
                    .link()
                    .change(lo)
                    .execute()
                    .await
                    .map_err(netlink_error("bring up", "lo"))?;
                let index = find_link(&handle, PEER_NAME)
                    .await?
                    .ok_or(NetworkError::LinkVanished {
                        pid,
                        device: PEER_NAME,
                    })?
                    .header
                    .index;
                let up = LinkUnspec::new_with_index(index).up().build();
                handle
                    .link()
                    .change(up)
                    .execute()
                    .await
                    .map_err(netlink_error("bring up", PEER_NAME))?;
                handle
                    .address()
                    .add(index, address.into(), prefix)
                    .execute()
                    .await
                    .map_err(netlink_error("add the dyno address to", PEER_NAME))?;
                let route = RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(gateway)
                    .output_interface(index)
                    .build();
                handle
                    .route()
                    .add(route)
                    .execute()
                    .await
                    .map_err(netlink_error("add the default route via", PEER_NAME))
            })
        })
    }

    fn redirect_loopback(
        &mut self,
        pid: i32,
        gateway: Ipv4Addr,
        endpoints: &[Endpoint],
    ) -> Result<(), NetworkError> {
        let ns = open_netns(pid)?;
        let script = loopback_script(gateway, endpoints);
        in_netns(&ns, pid, || {
            // `/proc/sys/net` and the `nft` child are this thread's netns: the dyno's.
            let path = format!("/proc/sys/net/ipv4/conf/{PEER_NAME}/route_localnet");
            fs::write(&path, "1").map_err(io_error("write", Path::new(&path)))?;
            run_nft(
                "redirect loopback endpoints in the dyno",
                &["-f", "-"],
                Some(&script),
            )
            .map(|_| ())
        })
    }

    fn delete_link(&mut self, name: &str) -> Result<(), NetworkError> {
        let request = LinkUnspec::new_with_name(name).build();
        match self
            .rt
            .block_on(self.handle.link().del_with_message(request).execute())
        {
            Err(e) if errno_of(&e) != Some(libc::ENODEV) => Err(netlink_error("delete", name)(e)),
            _ => Ok(()),
        }
    }

    fn nft(
        &mut self,
        step: &'static str,
        args: &[&str],
        script: Option<&str>,
    ) -> Result<String, NetworkError> {
        run_nft(step, args, script)
    }
}
