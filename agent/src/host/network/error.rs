//! What can go wrong, with the step and the path or link it went wrong on.

use super::*;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidConfig {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("invalid dyno id {id:?}: {reason}")]
    InvalidDynoId { id: String, reason: &'static str },
    #[error("invalid port mapping {host_port}:{dyno_port}: ports must not be zero")]
    InvalidPublish { host_port: u16, dyno_port: u16 },
    #[error("could not {step} {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not open a netlink connection")]
    Connect {
        #[source]
        source: io::Error,
    },
    #[error("netlink could not {step} {device}")]
    Netlink {
        step: &'static str,
        device: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("dyno {dyno} holds no address lease: it is not plugged in")]
    NotPlugged { dyno: String },
    #[error("bridge {bridge} does not exist; ensure_host must run first")]
    BridgeMissing { bridge: String },
    #[error("{device} exists but is not a bridge")]
    NotABridge { device: String },
    #[error("{device} vanished from the network namespace of process {pid}")]
    LinkVanished { pid: i32, device: &'static str },
    #[error("process {pid} shares this process's network namespace; a dyno needs its own")]
    SharedNamespace { pid: i32 },
    #[error("could not enter the network namespace of process {pid}")]
    EnterNamespace {
        pid: i32,
        #[source]
        source: Errno,
    },
    #[error("no free address left in {subnet}")]
    SubnetExhausted { subnet: Ipv4Subnet },
    #[error("host port {port} is already published")]
    PortInUse { port: u16 },
    #[error("could not run nft to {step}")]
    NftSpawn {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("nft could not {step}: {stderr}")]
    Nft { step: &'static str, stderr: String },
    #[error("could not parse nft output to {step}")]
    NftOutput {
        step: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl NetworkError {
    /// nft reports kernel errors only as text; `LC_ALL=C` (see [`run_nft`]) keeps it stable.
    pub(super) fn nft_says(&self, text: &str) -> bool {
        matches!(self, NetworkError::Nft { stderr, .. } if stderr.contains(text))
    }
}

pub(super) fn io_error<'a>(
    step: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> NetworkError + 'a {
    move |source| NetworkError::Io {
        step,
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn netlink_error<'a>(
    step: &'static str,
    device: &'a str,
) -> impl FnOnce(rtnetlink::Error) -> NetworkError + 'a {
    move |source| NetworkError::Netlink {
        step,
        device: device.to_string(),
        source,
    }
}
