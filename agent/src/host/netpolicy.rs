//! The dynos' network policy: what a dyno may connect to, and who may connect to a dyno.
//!
//! Dynos run other people's code, so the default is deny, as on Heroku's common runtime:
//!
//! - **dyno → dyno**: never directly. The bridge ports are isolated (see
//!   `network::Kernel::create_veth`), routed dyno-to-dyno traffic is refused in `forward`, and a
//!   dyno's connection to a published port on a host address is not forwarded either (the
//!   DNAT rules skip traffic from the bridge, so it is traffic to the host, refused in
//!   `input`). Dynos reach each other the way Heroku's do: through the router's address.
//! - **dyno → host**: refused in `input` for every local address (gateway, the host's other
//!   addresses, 127/8 through `route_localnet`).
//! - **dyno → its resolvers**: DNS (port 53, TCP and UDP) to the nameservers of the
//!   `resolv.conf` dynos get ([`dyno_resolv_conf`]) is allowed wherever they are, on this
//!   host or in a private range, as Docker does: an app that cannot resolve names cannot
//!   reach its database or an API, and a host's resolver is usually private (a cloud's VPC
//!   resolver, libvirt's dnsmasq). Only port 53 opens, so the resolver's host stays closed.
//! - **dyno → elsewhere**: allowed, except the ranges in [`DENIED`] (private, shared, loopback,
//!   link-local with the metadata address, multicast, reserved), which only the operator's
//!   [`Destination`] allow-list opens (an app's database on the private network).
//! - **→ published port**: from this host itself (any of its addresses), and from the
//!   operator's router addresses; DNATed traffic from anywhere else is refused in `forward`,
//!   and so is any other new connection into the dyno subnet.
//! - **add-ons** (managed services run by the agent, whose published port is an add-on's
//!   endpoint): a dyno may connect to the `ADDRESS:PORT` endpoints of its [`Access::egress`]
//!   (its app's add-ons), on this host or another, and to nothing else of the denied ranges;
//!   a service's published port accepts, besides this host, only the addresses of its
//!   [`Access::reach`] (the hosts of attached apps' dynos, the scheduler's) and local dynos
//!   whose egress names it. Both are per-dyno elements of the nft sets [`EGRESS_SET`]
//!   (`dyno address . endpoint address . port`) and [`REACH_SET`] (`dyno address . source`),
//!   added with the dyno's published port when it is plugged and removed with it, so a
//!   dyno's rules never outlive it. A dyno's connection to an endpoint on its own host is
//!   DNATed from the bridge (for an address and port in its egress only: the only DNAT of
//!   bridge traffic, so `forward` accepts DNATed bridge-to-bridge traffic as such) and, when
//!   routed through the host, masqueraded to the gateway so that the reply comes back the
//!   same way. Where `br_netfilter` bridges it port to port instead, the service's port is
//!   not isolated (`network::dataplane`), and `forward` still refuses every bridged frame
//!   between dynos that was not DNATed. An endpoint on the host's loopback (an agent whose
//!   address is `127.0.0.1`) is reached at the gateway: the dyno's own namespace DNATs its
//!   connections to it there ([`Access::loopback_egress`]). The routers do not reach a
//!   service's port: its address is in [`SERVICES_SET`].
//! - **IPv6**: dynos have none (the dyno's `eth0` and the bridge have IPv6 disabled), so
//!   neither the bridge's link-local address nor anything else is reachable over it.
//!
//! Refusals answer at once (a TCP reset, or ICMP administratively prohibited) rather than
//! dropping: an app then fails fast with "connection refused" instead of hanging in connect.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Destinations a dyno may not reach unless allow-listed: "this network", RFC 1918 private,
/// shared address space (carrier NAT), loopback, link-local (169.254.169.254, the cloud
/// metadata service, included), multicast, and reserved with broadcast.
pub const DENIED: [&str; 9] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("invalid network {text:?}: {reason}")]
    Cidr { text: String, reason: &'static str },
    #[error("invalid destination {text:?}: {reason}")]
    Destination { text: String, reason: &'static str },
    #[error("invalid endpoint {text:?}: {reason}")]
    Endpoint { text: String, reason: &'static str },
}

/// An IPv4 network: `10.1.0.0/16`, or one address (`10.1.2.3`, which is `/32`).
/// Serialised as its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl Cidr {
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `address` is inside this network.
    pub fn contains(&self, address: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        u32::from(address) & mask == u32::from(self.network)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix == 32 {
            write!(f, "{}", self.network)
        } else {
            write!(f, "{}/{}", self.network, self.prefix)
        }
    }
}

impl FromStr for Cidr {
    type Err = PolicyError;

    /// Host bits must be zero: `10.1.2.3/8` is more likely a typo than a wish for 10/8.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| PolicyError::Cidr {
            text: text.to_string(),
            reason,
        };
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: Ipv4Addr = address
            .parse()
            .map_err(|_| invalid("expected an IPv4 address, optionally with /PREFIX"))?;
        let prefix = match prefix {
            None => 32,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= 32)
                .ok_or_else(|| invalid("the prefix length must be 0 to 32"))?,
        };
        let cidr = Cidr { network, prefix };
        if !cidr.contains(network) {
            return Err(invalid("host bits must be zero"));
        }
        Ok(cidr)
    }
}

impl TryFrom<String> for Cidr {
    type Error = PolicyError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Cidr> for String {
    fn from(cidr: Cidr) -> Self {
        cidr.to_string()
    }
}

/// An allow-listed destination for dynos: `CIDR` (every port, TCP, UDP and ICMP) or
/// `CIDR:PORT` (that TCP or UDP port only), e.g. `10.0.5.20:5432`, `10.2.0.0/16:6379`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Destination {
    pub network: Cidr,
    pub port: Option<u16>,
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.network),
            None => write!(f, "{}", self.network),
        }
    }
}

impl FromStr for Destination {
    type Err = PolicyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (network, port) = match text.rsplit_once(':') {
            Some((network, port)) => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| PolicyError::Destination {
                        text: text.to_string(),
                        reason: "the port must be 1 to 65535",
                    })?;
                (network, Some(port))
            }
            None => (text, None),
        };
        let network = network.parse().map_err(|e| match e {
            PolicyError::Cidr { reason, .. } => PolicyError::Destination {
                text: text.to_string(),
                reason,
            },
            other => other,
        })?;
        Ok(Destination { network, port })
    }
}

impl TryFrom<String> for Destination {
    type Error = PolicyError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Destination> for String {
    fn from(destination: Destination) -> Self {
        destination.to_string()
    }
}

/// The nft set of the endpoints each dyno may reach: `dyno address . address . port`.
pub const EGRESS_SET: &str = "egress";
/// The nft set of who may reach each published dyno: `dyno address . source address`.
pub const REACH_SET: &str = "reach";
/// The nft set of the add-on services' addresses, which the routers do not reach (they route
/// to apps' dynos only).
pub const SERVICES_SET: &str = "services";

/// One TCP endpoint, `ADDRESS:PORT`: where an add-on listens (its host's address and
/// published port), as a dyno's egress names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Endpoint {
    pub address: Ipv4Addr,
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.address, self.port)
    }
}

impl FromStr for Endpoint {
    type Err = PolicyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| PolicyError::Endpoint {
            text: text.to_string(),
            reason,
        };
        let (address, port) = text
            .rsplit_once(':')
            .ok_or_else(|| invalid("expected IPV4ADDRESS:PORT"))?;
        let address = address
            .parse::<Ipv4Addr>()
            .map_err(|_| invalid("expected an IPv4 address before the port"))?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid("the port must be 1 to 65535"))?;
        Ok(Endpoint { address, port })
    }
}

impl TryFrom<String> for Endpoint {
    type Error = PolicyError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Endpoint> for String {
    fn from(endpoint: Endpoint) -> Self {
        endpoint.to_string()
    }
}

/// One dyno's own policy beyond the host's: what it may reach and who may reach it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// Endpoints the dyno may connect to although they are private or on this host: its
    /// app's add-ons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Endpoint>,
    /// Sources besides this host that may connect to the dyno's published port: an add-on
    /// service's peers and the scheduler.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reach: Vec<Ipv4Addr>,
    /// Dynos of this host reach it through its published port (an add-on service): see
    /// `network::dataplane::wire` for its bridge port.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
}

impl Access {
    pub fn is_empty(&self) -> bool {
        self.egress.is_empty() && self.reach.is_empty() && !self.shared
    }

    /// The endpoints on this host's loopback (an agent whose address is `127.0.0.1`): the
    /// dyno's own loopback is not the host's, so its connections to them are DNATed inside
    /// its network namespace to the gateway (`network::dataplane::wire`).
    pub fn loopback_egress(&self) -> Vec<Endpoint> {
        self.egress
            .iter()
            .filter(|e| e.address.is_loopback())
            .copied()
            .collect()
    }

    /// The nft set elements for a dyno at `address` (whose gateway is `gateway`), each as
    /// `(set, element)`; a loopback endpoint is reached at the gateway; `reach` only matters
    /// to a dyno that publishes a port.
    pub fn elements(
        &self,
        address: Ipv4Addr,
        gateway: Ipv4Addr,
        published: bool,
    ) -> Vec<(&'static str, String)> {
        let mut elements: Vec<(&'static str, String)> = self
            .egress
            .iter()
            .map(|e| {
                let to = if e.address.is_loopback() {
                    gateway
                } else {
                    e.address
                };
                (EGRESS_SET, format!("{address} . {to} . {}", e.port))
            })
            .collect();
        if published {
            elements.extend(
                self.reach
                    .iter()
                    .map(|source| (REACH_SET, format!("{address} . {source}"))),
            );
        }
        if self.shared {
            elements.push((SERVICES_SET, address.to_string()));
        }
        elements
    }
}

/// The host's resolver configuration, which dynos get unless it names only local resolvers.
pub const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";

/// systemd-resolved's list of the upstream servers it forwards to.
pub const RESOLVED_UPSTREAM_CONF: &str = "/run/systemd/resolve/resolv.conf";

/// The nameservers in a `resolv.conf` text that a dyno can use: IPv4 ones (dynos have no
/// IPv6) that are not loopback (a dyno's loopback is its own, with no resolver on it).
pub fn nameservers(resolv_conf: &str) -> Vec<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .filter_map(|address| address.parse::<Ipv4Addr>().ok())
        .filter(|address| !address.is_loopback())
        .collect()
}

/// The `resolv.conf` dynos get: the host's, unless it names no resolver a dyno can use
/// (systemd-resolved's stub `127.0.0.53`, a local dnsmasq on 127.0.0.1); then the upstream
/// servers systemd-resolved forwards to, as Docker and the kubelet do. `None` when the host
/// has no `resolv.conf` at all. The paths are parameters so tests can use fixtures.
pub fn dyno_resolv_conf(host: &Path, upstream: &Path) -> Option<PathBuf> {
    let usable = |path: &Path| {
        std::fs::read_to_string(path)
            .map(|text| !nameservers(&text).is_empty())
            .unwrap_or(false)
    };
    if usable(host) {
        Some(host.to_path_buf())
    } else if usable(upstream) {
        Some(upstream.to_path_buf())
    } else {
        host.exists().then(|| host.to_path_buf())
    }
}

/// The resolvers dynos may reach on port 53: those of [`dyno_resolv_conf`] on this host.
pub fn dyno_resolvers() -> Vec<Ipv4Addr> {
    dyno_resolv_conf(
        Path::new(HOST_RESOLV_CONF),
        Path::new(RESOLVED_UPSTREAM_CONF),
    )
    .and_then(|path| std::fs::read_to_string(path).ok())
    .map(|text| nameservers(&text))
    .unwrap_or_default()
}

/// What the policy rules need to know; borrowed from `network::NetworkConfig`.
pub struct Policy<'a> {
    pub table: &'a str,
    pub bridge: &'a str,
    pub allow_egress: &'a [Destination],
    pub router_addresses: &'a [Cidr],
    /// Nameservers dynos may reach on port 53 (see [`dyno_resolvers`]).
    pub resolvers: &'a [Ipv4Addr],
}

/// Refuses what `matches` matches: TCP with a reset (never rate-limited, so a test or an app
/// sees "connection refused" at once), the rest with ICMP administratively prohibited.
fn refuse(table: &str, chain: &str, matches: &str) -> String {
    format!(
        "add rule ip {table} {chain} {matches} meta l4proto tcp reject with tcp reset\n\
         add rule ip {table} {chain} {matches} reject with icmp type admin-prohibited\n"
    )
}

fn allow(table: &str, chain: &str, bridge: &str, destination: &Destination) -> String {
    let Destination { network, port } = destination;
    match port {
        None => format!("add rule ip {table} {chain} iifname \"{bridge}\" ip daddr {network} accept\n"),
        Some(port) => format!(
            "add rule ip {table} {chain} iifname \"{bridge}\" ip daddr {network} meta l4proto {{ tcp, udp }} th dport {port} accept\n"
        ),
    }
}

/// The rules of the `input` and `forward` filter chains (declared and flushed by the caller,
/// both `policy accept`, so traffic that is not the dynos' is left to the host's own rules).
/// Replies to connections someone else opened (`established,related`) always pass: that is
/// how the host and the routers hear back from dynos, and dynos from the internet.
pub fn filter_rules(policy: &Policy) -> String {
    let Policy {
        table,
        bridge,
        allow_egress,
        router_addresses,
        resolvers,
    } = policy;
    let mut rules = String::new();
    let from_dynos = format!("iifname \"{bridge}\"");
    let dns: Vec<Destination> = resolvers
        .iter()
        .map(|address| Destination {
            network: Cidr {
                network: *address,
                prefix: 32,
            },
            port: Some(53),
        })
        .collect();
    let allowed: Vec<&Destination> = dns.iter().chain(allow_egress.iter()).collect();

    // input: dyno → this host, only to its resolvers and allow-listed addresses.
    rules += &format!("add rule ip {table} input ct state established,related accept\n");
    for destination in &allowed {
        rules += &allow(table, "input", bridge, destination);
    }
    rules += &refuse(table, "input", &from_dynos);

    // forward: dyno → dyno never; dyno → denied ranges unless allow-listed; into dynos only
    // DNATed traffic (a published port) from a router.
    rules += &format!("add rule ip {table} forward ct state established,related accept\n");
    // A dyno's own add-on endpoints on this host (DNATed from the bridge in prerouting).
    // Only prerouting's egress rule DNATs traffic from the bridge: what it let through is
    // in the dyno's egress already.
    rules += &format!(
        "add rule ip {table} forward {from_dynos} oifname \"{bridge}\" ct status dnat accept\n"
    );
    rules += &refuse(
        table,
        "forward",
        &format!("{from_dynos} oifname \"{bridge}\""),
    );
    for destination in &allowed {
        rules += &allow(table, "forward", bridge, destination);
    }
    // A dyno's add-on endpoints on other hosts.
    rules += &format!(
        "add rule ip {table} forward {from_dynos} ip saddr . ip daddr . tcp dport @{EGRESS_SET} accept\n"
    );
    rules += &refuse(
        table,
        "forward",
        &format!("{from_dynos} ip daddr {{ {} }}", DENIED.join(", ")),
    );
    // A published port's own sources (an add-on's peers and the scheduler).
    rules += &format!(
        "add rule ip {table} forward oifname \"{bridge}\" ct status dnat ip daddr . ip saddr @{REACH_SET} accept\n"
    );
    if !router_addresses.is_empty() {
        let routers: Vec<String> = router_addresses.iter().map(Cidr::to_string).collect();
        rules += &format!(
            "add rule ip {table} forward oifname \"{bridge}\" ct status dnat ip saddr {{ {} }} ip daddr != @{SERVICES_SET} accept\n",
            routers.join(", ")
        );
    }
    rules += &refuse(table, "forward", &format!("oifname \"{bridge}\""));
    rules
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn cidrs_parse_print_and_contain() {
        let net: Cidr = "10.2.0.0/16".parse().unwrap();
        assert_eq!(net.to_string(), "10.2.0.0/16");
        assert!(net.contains(Ipv4Addr::new(10, 2, 200, 1)));
        assert!(!net.contains(Ipv4Addr::new(10, 3, 0, 1)));
        let one: Cidr = "10.79.0.2".parse().unwrap();
        assert_eq!((one.prefix(), one.to_string().as_str()), (32, "10.79.0.2"));
        assert_eq!("10.79.0.2/32".parse::<Cidr>().unwrap(), one);
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(8, 8, 8, 8)));
        for (bad, reason) in [
            ("10.1.2.3/8", "host bits must be zero"),
            ("10.0.0.0/33", "the prefix length must be 0 to 32"),
            ("1.2.3.4/0", "host bits must be zero"),
            (
                "fe80::1",
                "expected an IPv4 address, optionally with /PREFIX",
            ),
            ("", "expected an IPv4 address, optionally with /PREFIX"),
        ] {
            let err = bad.parse::<Cidr>().unwrap_err();
            assert_eq!(
                err,
                PolicyError::Cidr {
                    text: bad.into(),
                    reason
                }
            );
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn destinations_take_an_optional_port() {
        let db: Destination = "10.0.5.20:5432".parse().unwrap();
        assert_eq!(db.port, Some(5432));
        assert_eq!(db.network.to_string(), "10.0.5.20");
        assert_eq!(db.to_string(), "10.0.5.20:5432");
        let net: Destination = "10.2.0.0/16".parse().unwrap();
        assert_eq!((net.port, net.to_string().as_str()), (None, "10.2.0.0/16"));
        let json = serde_json::to_string(&[db, net]).unwrap();
        assert_eq!(json, r#"["10.0.5.20:5432","10.2.0.0/16"]"#);
        assert_eq!(
            serde_json::from_str::<Vec<Destination>>(&json).unwrap(),
            [db, net]
        );
        for bad in [
            "10.0.5.20:0",
            "10.0.5.20:x",
            "10.0.5.20:70000",
            "db:5432",
            "10.1.2.3/8:1",
        ] {
            let err = bad.parse::<Destination>().unwrap_err();
            assert!(
                matches!(&err, PolicyError::Destination { text, .. } if text == bad),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn default_policy_denies_and_lists_no_router() {
        let rules = filter_rules(&Policy {
            table: "manifold",
            bridge: "manifold0",
            allow_egress: &[],
            router_addresses: &[],
            resolvers: &[],
        });
        let expected = "add rule ip manifold input ct state established,related accept
add rule ip manifold input iifname \"manifold0\" meta l4proto tcp reject with tcp reset
add rule ip manifold input iifname \"manifold0\" reject with icmp type admin-prohibited
add rule ip manifold forward ct state established,related accept
add rule ip manifold forward iifname \"manifold0\" oifname \"manifold0\" ct status dnat accept
add rule ip manifold forward iifname \"manifold0\" oifname \"manifold0\" meta l4proto tcp reject with tcp reset
add rule ip manifold forward iifname \"manifold0\" oifname \"manifold0\" reject with icmp type admin-prohibited
add rule ip manifold forward iifname \"manifold0\" ip saddr . ip daddr . tcp dport @egress accept
add rule ip manifold forward iifname \"manifold0\" ip daddr { 0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 127.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12, 192.168.0.0/16, 224.0.0.0/4, 240.0.0.0/4 } meta l4proto tcp reject with tcp reset
add rule ip manifold forward iifname \"manifold0\" ip daddr { 0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 127.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12, 192.168.0.0/16, 224.0.0.0/4, 240.0.0.0/4 } reject with icmp type admin-prohibited
add rule ip manifold forward oifname \"manifold0\" ct status dnat ip daddr . ip saddr @reach accept
add rule ip manifold forward oifname \"manifold0\" meta l4proto tcp reject with tcp reset
add rule ip manifold forward oifname \"manifold0\" reject with icmp type admin-prohibited
";
        assert_eq!(rules, expected);
    }

    #[test]
    fn allowed_destinations_and_routers_come_before_the_refusals() {
        let allow: Vec<Destination> = ["10.0.5.20:5432", "192.168.7.0/24"]
            .iter()
            .map(|d| d.parse().unwrap())
            .collect();
        let routers: Vec<Cidr> = ["10.79.0.2", "10.80.0.0/24"]
            .iter()
            .map(|d| d.parse().unwrap())
            .collect();
        let rules = filter_rules(&Policy {
            table: "t",
            bridge: "b",
            allow_egress: &allow,
            router_addresses: &routers,
            resolvers: &[Ipv4Addr::new(10, 255, 255, 53)],
        });
        let lines: Vec<&str> = rules.lines().collect();
        let at = |needle: &str| {
            lines
                .iter()
                .position(|l| *l == needle)
                .unwrap_or_else(|| panic!("{needle} missing from\n{rules}"))
        };
        let dns_in = at("add rule ip t input iifname \"b\" ip daddr 10.255.255.53 meta l4proto { tcp, udp } th dport 53 accept");
        let dns_fwd = at("add rule ip t forward iifname \"b\" ip daddr 10.255.255.53 meta l4proto { tcp, udp } th dport 53 accept");
        let db_in = at("add rule ip t input iifname \"b\" ip daddr 10.0.5.20 meta l4proto { tcp, udp } th dport 5432 accept");
        let net_fwd = at("add rule ip t forward iifname \"b\" ip daddr 192.168.7.0/24 accept");
        let routers = at("add rule ip t forward oifname \"b\" ct status dnat ip saddr { 10.79.0.2, 10.80.0.0/24 } ip daddr != @services accept");
        let refuse_in =
            at("add rule ip t input iifname \"b\" meta l4proto tcp reject with tcp reset");
        let dyno_to_dyno =
            at("add rule ip t forward iifname \"b\" oifname \"b\" meta l4proto tcp reject with tcp reset");
        let refuse_into =
            at("add rule ip t forward oifname \"b\" meta l4proto tcp reject with tcp reset");
        assert!(db_in < refuse_in && dns_in < refuse_in);
        assert!(dyno_to_dyno < dns_fwd && dns_fwd < refuse_into);
        assert!(
            dyno_to_dyno < net_fwd,
            "no allow-list entry opens dyno-to-dyno"
        );
        assert!(net_fwd < routers && routers < refuse_into);
    }

    #[test]
    fn endpoints_and_access_elements() {
        let db: Endpoint = "10.0.5.20:40001".parse().unwrap();
        assert_eq!(db.to_string(), "10.0.5.20:40001");
        for bad in [
            "10.0.5.20",
            "10.0.5.20:0",
            "db:5432",
            "10.0.0.0/8:1",
            "10.0.5.20:x",
        ] {
            let err = bad.parse::<Endpoint>().unwrap_err();
            assert!(
                matches!(&err, PolicyError::Endpoint { text, .. } if text == bad),
                "{bad}: {err:?}"
            );
        }
        let access = Access {
            egress: vec![db],
            reach: vec![Ipv4Addr::new(10, 0, 0, 9)],
            shared: true,
        };
        let me = Ipv4Addr::new(10, 217, 0, 5);
        let gateway = Ipv4Addr::new(10, 217, 0, 1);
        assert_eq!(
            access.elements(me, gateway, true),
            [
                (EGRESS_SET, "10.217.0.5 . 10.0.5.20 . 40001".to_string()),
                (REACH_SET, "10.217.0.5 . 10.0.0.9".to_string()),
                (SERVICES_SET, "10.217.0.5".to_string())
            ]
        );
        // Nothing published, nothing to reach.
        assert_eq!(access.elements(me, gateway, false).len(), 2);
        // The host's loopback is the gateway, seen from a dyno.
        let local = Access {
            egress: vec!["127.0.0.1:40003".parse().unwrap()],
            ..Access::default()
        };
        assert_eq!(local.loopback_egress(), local.egress);
        assert_eq!(
            local.elements(me, gateway, false),
            [(EGRESS_SET, "10.217.0.5 . 10.217.0.1 . 40003".to_string())]
        );
    }

    #[test]
    fn nameservers_are_the_ipv4_non_loopback_ones() {
        let text = "# generated\nsearch example.com\nnameserver 127.0.0.53\n\
                    nameserver 10.255.255.53\nnameserver   192.0.2.1 # comment\n\
                    nameserver fe80::1\nnameserverx 1.1.1.1\noptions edns0\n";
        assert_eq!(
            nameservers(text),
            [Ipv4Addr::new(10, 255, 255, 53), Ipv4Addr::new(192, 0, 2, 1)]
        );
    }

    #[test]
    fn a_stub_resolver_gives_way_to_its_upstream_servers() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("resolv.conf");
        let upstream = dir.path().join("upstream.conf");
        let missing = dir.path().join("missing");
        assert_eq!(dyno_resolv_conf(&host, &upstream), None);

        std::fs::write(&host, "nameserver 127.0.0.53\n").unwrap();
        assert_eq!(dyno_resolv_conf(&host, &missing), Some(host.clone()));
        std::fs::write(&upstream, "nameserver 10.0.0.2\n").unwrap();
        assert_eq!(dyno_resolv_conf(&host, &upstream), Some(upstream.clone()));

        std::fs::write(&host, "nameserver 10.255.255.53\n").unwrap();
        assert_eq!(dyno_resolv_conf(&host, &upstream), Some(host));
    }
}
