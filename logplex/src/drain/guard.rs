//! Where drains may connect. A drain URL is user input, and the plex runs inside the
//! platform's network: without a check, an app could point a drain at the scheduler's own
//! loopback services, the hosts' private network or the cloud metadata service
//! (169.254.169.254) and have the plex talk to them (server-side request forgery).
//!
//! So drains may not reach loopback, private, shared, link-local, multicast, reserved or
//! unspecified addresses (IPv4 and IPv6, and IPv4 inside IPv6), unless the operator allows a
//! network (`--drain-allow`). The check is made on the addresses a connection is actually
//! made to, after DNS resolution: a name that resolves to 127.0.0.1 is refused like
//! 127.0.0.1 itself, and a name that resolves differently the second time (DNS rebinding)
//! gains nothing, because the connection uses the checked addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// Why a drain may not connect to a host.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The host is, or resolves to, an internal address the operator did not allow.
    #[error("{} is a {kind} address: log drains may not reach loopback, private or link-local addresses unless the operator allows them (--drain-allow)", target(host, address))]
    Internal {
        /// The host as the drain URL names it.
        host: String,
        /// The address refused (the first, when several were).
        address: IpAddr,
        /// What kind of address it is, as in "loopback".
        kind: &'static str,
    },
    /// DNS gave no address at all.
    #[error("{host} resolves to no address")]
    NoAddress {
        /// The host as the drain URL names it.
        host: String,
    },
}

/// Why resolving a drain's host failed.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The lookup itself failed.
    #[error("cannot resolve {host}: {source}")]
    Lookup {
        /// The host as the drain URL names it.
        host: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// The host resolved only to addresses drains may not reach.
    #[error(transparent)]
    Refused(#[from] Refused),
}

/// The networks drains may reach despite being internal: the operator's allow-list.
#[derive(Clone, Debug, Default)]
pub struct Destinations {
    allowed: Arc<Vec<IpNet>>,
}

impl Destinations {
    /// Drains may also reach the networks in `allowed`.
    pub fn new(allowed: Vec<IpNet>) -> Self {
        Self {
            allowed: Arc::new(allowed),
        }
    }

    /// Whether a drain may connect to `address`; `host` is only for the message.
    pub fn check(&self, host: &str, address: IpAddr) -> Result<(), Refused> {
        let Some(kind) = internal_kind(address) else {
            return Ok(());
        };
        let address = canonical(address);
        if self.allowed.iter().any(|net| net.contains(&address)) {
            return Ok(());
        }
        Err(Refused::Internal {
            host: host.to_owned(),
            address,
            kind,
        })
    }

    /// The addresses of `host` a drain may connect to, in DNS order; an error naming the
    /// first refused address when there is none.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        let found: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|source| ResolveError::Lookup {
                host: host.to_owned(),
                source,
            })?
            .collect();
        let mut refused = None;
        let mut allowed = Vec::new();
        for address in found {
            match self.check(host, address.ip()) {
                Ok(()) => allowed.push(address),
                Err(e) => {
                    refused.get_or_insert(e);
                }
            }
        }
        if allowed.is_empty() {
            return Err(refused
                .unwrap_or_else(|| Refused::NoAddress {
                    host: host.to_owned(),
                })
                .into());
        }
        Ok(allowed)
    }
}

/// `127.0.0.1`, or `localhost (127.0.0.1)` for a name.
fn target(host: &str, address: &IpAddr) -> String {
    match host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        Ok(literal) if canonical(literal) == *address => address.to_string(),
        _ => format!("{host} ({address})"),
    }
}

/// IPv4 written inside IPv6 (`::ffff:127.0.0.1`) is the IPv4 address it carries.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// What kind of internal address `address` is, or None for a public one.
fn internal_kind(address: IpAddr) -> Option<&'static str> {
    match canonical(address) {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => v6_kind(v6),
    }
}

fn v4_kind(a: Ipv4Addr) -> Option<&'static str> {
    let [first, second, ..] = a.octets();
    Some(match (first, second) {
        (0, _) => "unspecified",
        (127, _) => "loopback",
        (10, _) | (192, 168) => "private",
        (172, 16..=31) => "private",
        (100, 64..=127) => "shared (carrier-grade NAT)",
        (169, 254) => "link-local (cloud metadata)",
        (224..=239, _) => "multicast",
        (240..=255, _) => "reserved",
        _ => return None,
    })
}

fn v6_kind(a: Ipv6Addr) -> Option<&'static str> {
    let first = a.segments()[0];
    Some(if a.is_unspecified() {
        "unspecified"
    } else if a.is_loopback() {
        "loopback"
    } else if first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfec0 {
        "private"
    } else if first & 0xffc0 == 0xfe80 {
        "link-local"
    } else if first & 0xff00 == 0xff00 {
        "multicast"
    } else {
        return None;
    })
}

/// The guard as reqwest's resolver, so an HTTPS drain connects only to checked addresses.
/// (reqwest skips the resolver for a URL whose host is an address: the HTTPS drain checks
/// those itself, and redirects too.)
#[derive(Clone, Debug)]
pub(crate) struct GuardedResolver(pub Destinations);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0.clone();
        Box::pin(async move {
            // The refusal itself is the error, so the drain can find it in reqwest's chain.
            let addresses = guard.resolve(name.as_str(), 0).await.map_err(
                |e| -> Box<dyn std::error::Error + Send + Sync> {
                    match e {
                        ResolveError::Refused(refused) => Box::new(refused),
                        other => Box::new(other),
                    }
                },
            )?;
            let addresses: reqwest::dns::Addrs = Box::new(addresses.into_iter());
            Ok(addresses)
        })
    }
}

/// The host of `url`, when it is an address, checked; names are the resolver's to check.
pub(crate) fn check_url(guard: &Destinations, url: &url::Url) -> Result<(), Refused> {
    let address = match url.host() {
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        _ => return Ok(()),
    };
    guard.check(url.host_str().unwrap_or_default(), address)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn internal_addresses_are_refused_and_public_ones_pass() {
        let guard = Destinations::default();
        for (address, kind) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.31.255.1", "private"),
            ("192.168.0.1", "private"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("169.254.169.254", "link-local (cloud metadata)"),
            ("0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fd00::1", "private"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
        ] {
            let err = guard.check("h", ip(address)).expect_err(address);
            assert!(
                matches!(&err, Refused::Internal { kind: k, .. } if *k == kind),
                "{address}: {err}"
            );
        }
        for public in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2001:4860::8888",
            "192.0.2.1",
        ] {
            guard.check("h", ip(public)).expect(public);
        }
    }

    #[test]
    fn the_operator_allows_networks() {
        let guard = Destinations::new(vec![
            "127.0.0.0/8".parse().expect("net"),
            "fd00::/8".parse().expect("net"),
        ]);
        guard.check("h", ip("127.0.0.1")).expect("allowed");
        guard.check("h", ip("::ffff:127.0.0.2")).expect("mapped");
        guard.check("h", ip("fd00::5")).expect("allowed v6");
        assert!(guard.check("h", ip("10.0.0.1")).is_err());
        let message = guard
            .check("db.internal", ip("10.0.0.1"))
            .expect_err("private")
            .to_string();
        assert_eq!(
            message,
            "db.internal (10.0.0.1) is a private address: log drains may not reach loopback, private or link-local addresses unless the operator allows them (--drain-allow)"
        );
        let literal = guard.check("::ffff:169.254.169.254", ip("::ffff:169.254.169.254"));
        assert!(literal
            .expect_err("metadata")
            .to_string()
            .starts_with("169.254.169.254 is a link-local (cloud metadata) address:"),);
    }

    #[tokio::test]
    async fn names_are_checked_after_resolution() {
        let guard = Destinations::default();
        let err = guard.resolve("localhost", 514).await.expect_err("loopback");
        assert!(err.to_string().starts_with("localhost ("), "{err}");
        assert!(err.to_string().contains(") is a loopback address"), "{err}");
        let open = Destinations::new(vec![
            "127.0.0.0/8".parse().expect("net"),
            "::1/128".parse().expect("net"),
        ]);
        let found = open.resolve("localhost", 514).await.expect("allowed");
        assert!(
            found
                .iter()
                .all(|a| a.port() == 514 && a.ip().is_loopback()),
            "{found:?}"
        );
    }

    #[test]
    fn address_urls_are_checked_and_names_left_to_the_resolver() {
        let guard = Destinations::default();
        let url = |s: &str| url::Url::parse(s).expect("url");
        assert!(check_url(&guard, &url("http://127.0.0.1:8080/x")).is_err());
        assert!(check_url(&guard, &url("https://[::1]/x")).is_err());
        check_url(&guard, &url("https://logs.example.com/x")).expect("name");
        check_url(&guard, &url("https://8.8.8.8/x")).expect("public");
    }
}
