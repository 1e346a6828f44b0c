//! What a host's dyno network is: its subnet, bridge, state directory and policy.

use super::*;

/// An IPv4 network in CIDR form. Its first host address is the gateway, on the bridge.
/// Serialised as its text, `"10.217.0.0/16"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Subnet {
    /// Prefixes shorter than /8 would swallow other routes of the host, and longer than /30
    /// leave no address for a dyno besides the gateway.
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Self, NetworkError> {
        let invalid = |reason| NetworkError::InvalidConfig {
            field: "subnet",
            value: format!("{network}/{prefix}"),
            reason,
        };
        if !(8..=30).contains(&prefix) {
            return Err(invalid("prefix must be between 8 and 30"));
        }
        if u32::from(network) & !(u32::MAX << (32 - prefix)) != 0 {
            return Err(invalid("host bits must be zero"));
        }
        Ok(Self { network, prefix })
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The bridge's address: the first host address, what dynos route through.
    pub fn gateway(&self) -> Ipv4Addr {
        self.host(1)
    }

    /// Addresses a dyno may get: everything but the network, gateway and broadcast addresses.
    pub(super) fn dyno_capacity(&self) -> u32 {
        (1u32 << (32 - self.prefix)) - 3
    }

    pub(super) fn host(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + offset)
    }
}

impl fmt::Display for Ipv4Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Ipv4Subnet {
    type Err = NetworkError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || NetworkError::InvalidConfig {
            field: "subnet",
            value: text.to_string(),
            reason: "expected an address and a prefix length, e.g. 10.217.0.0/16",
        };
        let (address, prefix) = text.split_once('/').ok_or_else(invalid)?;
        let address = address.parse().map_err(|_| invalid())?;
        let prefix = prefix.parse().map_err(|_| invalid())?;
        Self::new(address, prefix)
    }
}

impl TryFrom<String> for Ipv4Subnet {
    type Error = NetworkError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Ipv4Subnet> for String {
    fn from(subnet: Ipv4Subnet) -> Self {
        subnet.to_string()
    }
}

/// Where dynos live on this host. The four fields go together: every process that plugs,
/// unplugs or sweeps on one bridge must use the same subnet, table and state directory (the
/// leases there are what keeps addresses unique). Two configs that differ in all four do not
/// see each other, which is what lets tests run beside a real agent.
///
/// Fields missing from a serialised config take their defaults, so configs written before a
/// field existed still load.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkConfig {
    /// The host bridge every dyno's veth joins; at most 15 characters.
    pub bridge: String,
    /// The dynos' subnet; the gateway address goes on the bridge.
    pub subnet: Ipv4Subnet,
    /// Leases and the host lock live here.
    pub state_dir: PathBuf,
    /// Name of the `ip` family nft table that holds the NAT chains and published ports.
    pub table: String,
    /// Destinations dynos may reach although they are in a denied range (private, loopback,
    /// link-local, …) or on this host: see [`crate::host::netpolicy`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_egress: Vec<Destination>,
    /// Sources besides this host that may connect to published ports: the routers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub router_addresses: Vec<Cidr>,
    /// Nameservers dynos may reach on port 53: those of the `resolv.conf` they get.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resolvers: Vec<Ipv4Addr>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            bridge: "manifold0".to_string(),
            subnet: Ipv4Subnet {
                network: Ipv4Addr::new(10, 217, 0, 0),
                prefix: 16,
            },
            state_dir: PathBuf::from("/var/lib/manifold/net"),
            table: "manifold".to_string(),
            allow_egress: Vec::new(),
            router_addresses: Vec::new(),
            resolvers: Vec::new(),
        }
    }
}

impl NetworkConfig {
    /// The bridge name lands in `/proc/sys` paths and the table name in nft scripts, so both
    /// are held to a plain alphabet rather than quoted.
    pub(super) fn validate(&self) -> Result<(), NetworkError> {
        let plain = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if self.bridge.is_empty() || self.bridge.len() > 15 || !plain(&self.bridge) {
            return Err(NetworkError::InvalidConfig {
                field: "bridge",
                value: self.bridge.clone(),
                reason: "must be 1 to 15 letters, digits or underscores",
            });
        }
        if self.table.is_empty() || !plain(&self.table) {
            return Err(NetworkError::InvalidConfig {
                field: "table",
                value: self.table.clone(),
                reason: "must be letters, digits or underscores",
            });
        }
        Ok(())
    }

    pub(super) fn lease_dir(&self) -> PathBuf {
        self.state_dir.join("leases")
    }
}

/// What [`plug`] gave a dyno: its address, gateway, host veth and published port. (The
/// network calls wiring a dyno to the bridge plugging it in, so that "attach" keeps one
/// meaning: a client on a one-off's terminal.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plug {
    pub address: Ipv4Addr,
    pub gateway: Ipv4Addr,
    /// Host end of the veth pair, on the bridge.
    pub host_veth: String,
    /// Host port that forwards to the dyno, if one was published.
    pub published: Option<u16>,
}
