//! The nft scripts: the host's table, published ports, and reading them back.

use super::*;

/// The host's nft table. The table, map and chains are declared (a no-op when they exist),
/// then the chains are flushed and refilled in the same transaction: re-running it never
/// duplicates a rule, and it leaves the map's elements (the published ports) alone.
///
/// - prerouting/output: TCP to a host-local address whose port is in the map is DNATed to
///   the dyno; output covers connections from the host itself, 127.0.0.1 included. Traffic
///   from the bridge is never DNATed: a dyno reaching a published port on a host address
///   would bypass the router, so it stays traffic to the host, which `input` refuses.
/// - postrouting: the subnet leaving by any other interface is masqueraded; host-originated
///   127/8 traffic DNATed onto the bridge is masqueraded to the gateway (a dyno cannot reply
///   to 127.0.0.1), and so is a dyno's connection routed to an add-on on this host (the
///   bridge ports are isolated: the reply must come back through the host).
/// - the sets `egress` and `reach`: each dyno's own policy elements (`netpolicy::Access`);
///   like the map's elements, they survive a re-run.
/// - input/forward: the network policy, [`netpolicy::filter_rules`].
pub(super) fn host_script(cfg: &NetworkConfig) -> String {
    let NetworkConfig {
        bridge,
        subnet,
        table,
        ..
    } = cfg;
    let filter = netpolicy::filter_rules(&netpolicy::Policy {
        table,
        bridge,
        allow_egress: &cfg.allow_egress,
        router_addresses: &cfg.router_addresses,
        resolvers: &cfg.resolvers,
    });
    format!(
        "table ip {table} {{
    map {PUBLISHED_MAP} {{
        type inet_service : ipv4_addr . inet_service
    }}
    set {egress} {{
        type ipv4_addr . ipv4_addr . inet_service
    }}
    set {reach} {{
        type ipv4_addr . ipv4_addr
    }}
    set {services} {{
        type ipv4_addr
    }}
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
    }}
    chain output {{
        type nat hook output priority -100; policy accept;
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
    }}
}}
flush chain ip {table} prerouting
flush chain ip {table} output
flush chain ip {table} postrouting
flush chain ip {table} input
flush chain ip {table} forward
add rule ip {table} prerouting iifname \"{bridge}\" fib daddr type local ip saddr . ip daddr . tcp dport @{egress} dnat ip to tcp dport map @{PUBLISHED_MAP}
add rule ip {table} prerouting iifname != \"{bridge}\" fib daddr type local dnat ip to tcp dport map @{PUBLISHED_MAP}
add rule ip {table} output fib daddr type local dnat ip to tcp dport map @{PUBLISHED_MAP}
add rule ip {table} postrouting ip saddr {subnet} oifname != \"{bridge}\" masquerade
add rule ip {table} postrouting oifname \"{bridge}\" ip saddr 127.0.0.0/8 masquerade
add rule ip {table} postrouting iifname \"{bridge}\" oifname \"{bridge}\" ct status dnat masquerade
{filter}",
        egress = netpolicy::EGRESS_SET,
        reach = netpolicy::REACH_SET,
        services = netpolicy::SERVICES_SET,
    )
}

/// One map element: `host_port comment "dyno:<id>" : address . dyno_port`.
fn element(dyno_id: &str, address: Ipv4Addr, publish: (u16, u16)) -> String {
    let (host_port, dyno_port) = publish;
    format!("{host_port} comment \"{COMMENT_PREFIX}{dyno_id}\" : {address} . {dyno_port}")
}

/// `VERB element` lines (`add` or `delete`) for the dyno's policy elements in the sets of
/// [`netpolicy::Access`]; nothing when it has none. A deletion names the key only.
pub(super) fn access_script(
    cfg: &NetworkConfig,
    verb: &str,
    dyno_id: &str,
    address: Ipv4Addr,
    lease: &Lease,
) -> String {
    let elements = lease
        .access
        .elements(address, cfg.subnet.gateway(), lease.publish.is_some());
    elements_script(cfg, verb, dyno_id, &elements)
}

/// `VERB element` lines for `(set, element)` pairs of dyno `dyno_id`.
pub(super) fn elements_script(
    cfg: &NetworkConfig,
    verb: &str,
    dyno_id: &str,
    elements: &[(&'static str, String)],
) -> String {
    elements
        .iter()
        .map(|(set, element)| {
            let comment = match verb {
                "delete" => String::new(),
                _ => format!(" comment \"{COMMENT_PREFIX}{dyno_id}\""),
            };
            format!(
                "{verb} element ip {} {set} {{ {element}{comment} }}\n",
                cfg.table
            )
        })
        .collect()
}

/// The dyno's own table, inside its network namespace, for endpoints on the host's loopback:
/// its connections to them go to the gateway instead (the host DNATs them on), with the
/// dyno's address as their source (`route_localnet` lets 127/8 leave by `eth0` at all).
pub(super) fn loopback_script(gateway: Ipv4Addr, endpoints: &[Endpoint]) -> String {
    let targets: Vec<String> = endpoints
        .iter()
        .map(|e| format!("{} . {}", e.address, e.port))
        .collect();
    format!(
        "table ip manifold_dyno {{
    chain output {{
        type nat hook output priority -100; policy accept;
        ip daddr . tcp dport {{ {} }} dnat ip to {gateway}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname \"{PEER_NAME}\" ip saddr 127.0.0.0/8 masquerade
    }}
}}
",
        targets.join(", ")
    )
}

/// `create` (not `add`) fails if the host port is in the map at all, so two dynos can never
/// share a port, not even a stale one that a sweep has not yet removed.
pub(super) fn publish_script(
    cfg: &NetworkConfig,
    dyno_id: &str,
    address: Ipv4Addr,
    publish: (u16, u16),
) -> String {
    let element = element(dyno_id, address, publish);
    format!(
        "create element ip {} {PUBLISHED_MAP} {{ {element} }}\n",
        cfg.table
    )
}

pub(super) fn unpublish_script(cfg: &NetworkConfig, host_ports: &[u16]) -> String {
    let ports: Vec<String> = host_ports.iter().map(u16::to_string).collect();
    format!(
        "delete element ip {} {PUBLISHED_MAP} {{ {} }}\n",
        cfg.table,
        ports.join(", ")
    )
}

/// Deletes the element a lease says we published, in one nft run and only if it is still
/// ours: `add` of an identical element is a no-op (or re-creates one already gone, so the
/// `delete` cannot fail), while `add` over the same port mapped elsewhere fails with "File
/// exists" and aborts the whole transaction. That saves listing the map first (an nft run
/// costs 5-10 ms, most of it nft filling its cache).
pub(super) fn retract_script(
    cfg: &NetworkConfig,
    dyno_id: &str,
    address: Ipv4Addr,
    publish: (u16, u16),
) -> String {
    let table = &cfg.table;
    let element = element(dyno_id, address, publish);
    let host_port = publish.0;
    format!(
        "add element ip {table} {PUBLISHED_MAP} {{ {element} }}\n\
         delete element ip {table} {PUBLISHED_MAP} {{ {host_port} }}\n"
    )
}

/// `(host_port, dyno_id)` for every element of `nft -j list map` that carries our comment.
pub(super) fn parse_published(json: &str) -> Result<Vec<(u16, String)>, serde_json::Error> {
    let root: serde_json::Value = serde_json::from_str(json)?;
    let maps = root["nftables"].as_array().into_iter().flatten();
    let elements = maps
        .filter_map(|item| item["map"]["elem"].as_array())
        .flatten();
    Ok(elements
        .filter_map(|pair| {
            let element = &pair[0]["elem"];
            let port = u16::try_from(element["val"].as_u64()?).ok()?;
            let id = element["comment"].as_str()?.strip_prefix(COMMENT_PREFIX)?;
            Some((port, id.to_string()))
        })
        .collect())
}

/// The published ports of every dyno; none when the table does not exist (yet).
pub(super) fn list_published(
    kernel: &mut impl Dataplane,
    cfg: &NetworkConfig,
) -> Result<Vec<(u16, String)>, NetworkError> {
    const STEP: &str = "list published ports";
    let args = ["-j", "list", "map", "ip", &cfg.table, PUBLISHED_MAP];
    match kernel.nft(STEP, &args, None) {
        Ok(json) => {
            parse_published(&json).map_err(|source| NetworkError::NftOutput { step: STEP, source })
        }
        Err(e) if e.nft_says("No such file or directory") => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Runs nft with the C locale, because callers recognise kernel errors by their text.
pub(super) fn run_nft(
    step: &'static str,
    args: &[&str],
    script: Option<&str>,
) -> Result<String, NetworkError> {
    let spawn_error = |source| NetworkError::NftSpawn { step, source };
    let mut child = Command::new("nft")
        .args(args)
        .env("LC_ALL", "C")
        .stdin(if script.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    if let (Some(script), Some(mut stdin)) = (script, child.stdin.take()) {
        stdin.write_all(script.as_bytes()).map_err(spawn_error)?;
    }
    let output = child.wait_with_output().map_err(spawn_error)?;
    if !output.status.success() {
        return Err(NetworkError::Nft {
            step,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
