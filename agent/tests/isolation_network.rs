//! Isolation: the dynos' network policy, as a reachability matrix on the real kernel.
//!
//! Two dynos of two "apps" run with `manifold-agent run` on a bridge, subnet and nft table of
//! this test's own (so it disturbs no other agent on the host), with the policy settings from
//! an agent settings file (TOML lists). Around them:
//!
//! ```text
//!  netns mfiso-out ("the network"):  10.234.0.2 (a private host, and the router)
//!     │ veth                          198.51.100.2 (a public address: "the internet")
//!     │                               169.254.169.254 (the metadata service)
//!  host: mfisoh 10.234.0.1/24, 198.51.100.1/24, route 169.254.169.254 via 10.234.0.2
//!        eth0 (the host's own address), listeners on every address
//!  bridge mfiso0 10.233.0.1/24 ── dyno web.1 (app b: greets on $PORT, published)
//!                              └─ dyno run.1 (app a: probes everything)
//! ```
//!
//! Every probed address has a listener, so "refused" is the policy answering (a TCP reset),
//! not an empty port, and each denied destination has an allow-listed twin on another port
//! that does connect, so the route is shown to exist.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BRIDGE: &str = "mfiso0";
const SUBNET: &str = "10.233.0.0/24";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 233, 0, 1);
const TABLE: &str = "mfiso0";
const NETNS: &str = "mfiso-out";
const HOST_VETH: &str = "mfisoh";
const HOST_PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 234, 0, 1);
const HOST_PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const PRIVATE_HOST: Ipv4Addr = Ipv4Addr::new(10, 234, 0, 2);
const INTERNET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn must(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The network around the dynos; removes all of it (and the agent's bridge and table) when
/// dropped, and whatever an earlier, interrupted run left when made.
struct Network;

impl Network {
    fn new() -> Network {
        Network::remove();
        must(&["ip", "netns", "add", NETNS]);
        must(&[
            "ip", "link", "add", HOST_VETH, "type", "veth", "peer", "name", "out0", "netns", NETNS,
        ]);
        must(&["ip", "addr", "add", "10.234.0.1/24", "dev", HOST_VETH]);
        must(&["ip", "addr", "add", "198.51.100.1/24", "dev", HOST_VETH]);
        must(&["ip", "link", "set", HOST_VETH, "up"]);
        for args in [
            "ip link set lo up",
            "ip link set out0 up",
            "ip addr add 10.234.0.2/24 dev out0",
            "ip addr add 198.51.100.2/24 dev out0",
            "ip addr add 169.254.169.254/32 dev lo",
        ] {
            let mut full = vec!["ip", "netns", "exec", NETNS];
            full.extend(args.split(' '));
            must(&full);
        }
        must(&[
            "ip",
            "route",
            "add",
            "169.254.169.254/32",
            "via",
            "10.234.0.2",
            "dev",
            HOST_VETH,
        ]);
        Network
    }

    fn remove() {
        sh(&[
            "ip",
            "route",
            "del",
            "169.254.169.254/32",
            "via",
            "10.234.0.2",
        ]);
        sh(&["ip", "netns", "del", NETNS]);
        sh(&["ip", "link", "del", HOST_VETH]);
        sh(&["nft", "delete", "table", "ip", TABLE]);
        sh(&["ip", "link", "del", BRIDGE]);
    }

    /// Runs `work` on a thread inside the outside network namespace.
    fn outside<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let ns = File::open(format!("/run/netns/{NETNS}")).unwrap();
                    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                    work()
                })
                .join()
                .unwrap()
        })
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        Network::remove();
    }
}

/// Answers every connection with `hello-NAME PEER`, on a thread that lives as long as the
/// test process.
fn greet(listener: TcpListener, name: &'static str) -> u16 {
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let peer = stream.peer_addr().map(|a| a.ip().to_string());
            let _ = writeln!(stream, "hello-{name} {}", peer.unwrap_or_default());
        }
    });
    port
}

/// Connects and reads the greeting; `Err` with the error's kind when that fails.
fn greeting(address: Ipv4Addr, port: u16) -> Result<String, std::io::ErrorKind> {
    let timeout = Duration::from_secs(5);
    let stream =
        TcpStream::connect_timeout(&(address, port).into(), timeout).map_err(|e| e.kind())?;
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| e.kind())?;
    Ok(line.trim().to_string())
}

/// The host's address on its default route's interface ("the host's other address").
fn host_address() -> Ipv4Addr {
    let out = Command::new("ip")
        .args(["-4", "-o", "route", "get", "192.0.2.200"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let src = text
        .split_whitespace()
        .skip_while(|w| *w != "src")
        .nth(1)
        .unwrap_or_else(|| panic!("no source address in {text:?}"));
    src.parse().unwrap()
}

/// An agent settings file with the policy: lists, as an operator writes them.
fn settings(dir: &std::path::Path, host_allowed: u16) -> std::path::PathBuf {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "bridge = \"{BRIDGE}\"\nsubnet = \"{SUBNET}\"\nnft_table = \"{TABLE}\"\n\
             allow_egress = [\"{GATEWAY}:{host_allowed}\", \"{PRIVATE_HOST}:7002\", \"{METADATA}:8080\"]\n\
             router_addresses = [\"{PRIVATE_HOST}\"]\n"
        ),
    )
    .unwrap();
    path
}

fn agent(config: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env("MANIFOLD_AGENT_CONFIG", config);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MANIFOLD_") && key != "MANIFOLD_AGENT_CONFIG" {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// The address leased to the only dyno on this test's subnet.
fn only_dyno_address() -> Ipv4Addr {
    let leases = std::fs::read_dir("/var/lib/manifold/net/leases").unwrap();
    let ours: Vec<Ipv4Addr> = leases
        .filter_map(|e| e.unwrap().file_name().to_str()?.parse().ok())
        .filter(|a: &Ipv4Addr| a.octets()[..3] == [10, 233, 0])
        .collect();
    assert_eq!(ours.len(), 1, "{ours:?}");
    ours[0]
}

/// What a probe from inside a dyno saw.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// Connected, and the listener greeted with this line.
    Greeting(String),
    /// A TCP reset: the policy's answer.
    Refused,
    /// No way there (no ARP answer across isolated bridge ports) or no answer in time.
    Unreachable,
}

#[test]
fn dynos_reach_the_internet_and_allow_listed_destinations_only() {
    if !ready() {
        return;
    }
    let net = Network::new();
    let tmp = tempfile::tempdir().unwrap();

    // Listeners on the host (every address) and in "the network".
    let host_denied = greet(TcpListener::bind("0.0.0.0:0").unwrap(), "host");
    let host_allowed = greet(TcpListener::bind("0.0.0.0:0").unwrap(), "host-allowed");
    net.outside(|| {
        for (address, port, name) in [
            (PRIVATE_HOST, 7001, "private"),
            (PRIVATE_HOST, 7002, "private-allowed"),
            (METADATA, 80, "metadata"),
            (METADATA, 8080, "metadata-allowed"),
            (INTERNET, 9000, "internet"),
        ] {
            greet(TcpListener::bind((address, port)).unwrap(), name);
        }
    });
    let config = settings(tmp.path(), host_allowed);

    // App b's web dyno, published on a host port.
    let published = free_port();
    let b = Background::spawn(agent(&config).args([
        "run",
        "--name",
        "web.1",
        "--grace",
        "1s",
        "--publish",
        &published.to_string(),
        "--",
        "exec busybox nc -ll -p $PORT -e busybox echo hello-b",
    ]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while greeting(Ipv4Addr::LOCALHOST, published).as_deref() != Ok("hello-b") {
        assert!(
            Instant::now() < deadline,
            "dyno b never answered on {published}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let b_address = only_dyno_address();
    let host = host_address();

    // App a's dyno probes everything from inside.
    let mut probes: Vec<(&str, Ipv4Addr, u16, Seen)> = vec![
        ("dyno b directly", b_address, 5000, Seen::Unreachable),
        (
            "b's published port via the gateway",
            GATEWAY,
            published,
            Seen::Refused,
        ),
        (
            "b's published port via the host",
            host,
            published,
            Seen::Refused,
        ),
        (
            "b's published port via another host address",
            HOST_PRIVATE,
            published,
            Seen::Refused,
        ),
        (
            "host service on the gateway",
            GATEWAY,
            host_denied,
            Seen::Refused,
        ),
        (
            "host service on the host's address",
            host,
            host_denied,
            Seen::Refused,
        ),
        (
            "host service on another host address",
            HOST_PUBLIC,
            host_denied,
            Seen::Refused,
        ),
        (
            "host's own allow-listed address",
            host,
            host_allowed,
            Seen::Refused,
        ),
        ("private address", PRIVATE_HOST, 7001, Seen::Refused),
        ("metadata", METADATA, 80, Seen::Refused),
    ];
    // Greetings name the peer the listener saw: the host sees the dyno's own address, the
    // network sees the host's (masqueraded).
    for (what, address, port, expected) in [
        (
            "allow-listed host service",
            GATEWAY,
            host_allowed,
            "hello-host-allowed 10.233.0.",
        ),
        (
            "allow-listed private port",
            PRIVATE_HOST,
            7002,
            "hello-private-allowed 10.234.0.1",
        ),
        (
            "allow-listed metadata port",
            METADATA,
            8080,
            "hello-metadata-allowed 10.234.0.1",
        ),
        (
            "the internet",
            INTERNET,
            9000,
            "hello-internet 198.51.100.1",
        ),
    ] {
        probes.push((what, address, port, Seen::Greeting(expected.to_string())));
    }
    let mut script = String::from(
        "probe() { out=$(timeout 6 bash -c 'exec 3<>\"/dev/tcp/$0/$1\" || exit 1; \
         read -r -t 5 line <&3; echo \"$line\"' \"$2\" \"$3\" 2>&1 | tr '\\n' ' '); \
         echo \"PROBE $1 ${out:-no answer}\"; }\n",
    );
    for (i, (_, address, port, _)) in probes.iter().enumerate() {
        script += &format!("probe {i} {address} {port}\n");
    }
    script += "echo \"IPV6 $(awk '{print $6}' /proc/net/if_inet6 | sort -u | tr '\\n' ' ')\"\n";
    let a = agent(&config)
        .args(["run", "--name", "run.1", "--", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let lines = app_lines(&a);
    assert_eq!(a.status.code(), Some(0), "{}", stdout(&a));
    let seen: BTreeMap<usize, String> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("PROBE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(i, out)| (i.parse().unwrap(), out.trim().to_string()))
        .collect();
    let mut wrong = Vec::new();
    for (i, (what, address, port, expected)) in probes.iter().enumerate() {
        let out = seen.get(&i).cloned().unwrap_or_default();
        let got = if out.starts_with("hello-") {
            Seen::Greeting(out.clone())
        } else if out.contains("Connection refused") {
            Seen::Refused
        } else {
            Seen::Unreachable
        };
        let matches = match (&got, expected) {
            (Seen::Greeting(line), Seen::Greeting(start)) => line.starts_with(start.as_str()),
            (got, expected) => got == expected,
        };
        if !matches {
            wrong.push(format!(
                "{what} ({address}:{port}): expected {expected:?}, got {got:?} ({out})"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}\n{}", wrong.join("\n"), stdout(&a));

    // IPv6: the dyno has only loopback, the bridge has no address (no link-local) at all.
    let ipv6 = lines.iter().find_map(|l| l.strip_prefix("IPV6 ")).unwrap();
    assert_eq!(ipv6.trim(), "lo", "{}", stdout(&a));
    let bridge6 = Command::new("ip")
        .args(["-6", "-o", "addr", "show", "dev", BRIDGE])
        .output()
        .unwrap();
    assert!(bridge6.status.success());
    assert_eq!(String::from_utf8_lossy(&bridge6.stdout), "");

    // The published port: from this host on any of its addresses, from the router (by the
    // address the scheduler knows the host by), and from nowhere else.
    assert_eq!(
        greeting(Ipv4Addr::LOCALHOST, published).as_deref(),
        Ok("hello-b")
    );
    assert_eq!(greeting(host, published).as_deref(), Ok("hello-b"));
    let (from_router, from_elsewhere) = net.outside(|| {
        (
            greeting(HOST_PRIVATE, published),
            greeting(HOST_PUBLIC, published),
        )
    });
    assert_eq!(
        from_router.as_deref(),
        Ok("hello-b"),
        "10.234.0.2 is a router"
    );
    assert_eq!(
        from_elsewhere,
        Err(std::io::ErrorKind::ConnectionRefused),
        "198.51.100.2 is not a router"
    );
    // And nobody reaches a dyno's address directly, not even through a route to the subnet.
    net.outside(|| must(&["ip", "route", "add", SUBNET, "via", "198.51.100.1"]));
    let direct = net.outside(|| greeting(b_address, 5000));
    assert_eq!(direct, Err(std::io::ErrorKind::ConnectionRefused));

    let out = b.stop();
    assert!(
        platform_lines(&out)
            .iter()
            .any(|l| l == "State changed from up to down"),
        "{}",
        stdout(&out)
    );
    // Both dynos' leases are released (the shims finish their cleanup on their own).
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir("/var/lib/manifold/net/leases")
        .unwrap()
        .any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("10.233.0.")
        })
    {
        assert!(
            Instant::now() < deadline,
            "a lease of the test's subnet is left"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(net);
    let leftovers = Command::new("nft")
        .args(["list", "table", "ip", TABLE])
        .output()
        .unwrap();
    assert!(!leftovers.status.success(), "the table is gone");
}
