//! TEMPORARY stand-in until the real module lands.
use std::net::Ipv4Addr;
use std::path::PathBuf;
use serde::{Deserialize, Serialize};
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkConfig { pub bridge: String, pub state_dir: PathBuf }
impl Default for NetworkConfig { fn default() -> Self { NetworkConfig { bridge: "manifold0".into(), state_dir: "/var/lib/manifold/net".into() } } }
pub struct Attachment { pub address: Ipv4Addr }
#[derive(Debug, thiserror::Error)]
#[error("net")]
pub struct NetworkError;
pub fn ensure_host(_c: &NetworkConfig) -> Result<(), NetworkError> { Ok(()) }
pub fn attach(_c: &NetworkConfig, _id: &str, _pid: i32, _p: Option<(u16,u16)>) -> Result<Attachment, NetworkError> { Ok(Attachment { address: Ipv4Addr::LOCALHOST }) }
pub fn detach(_c: &NetworkConfig, _id: &str) -> Result<(), NetworkError> { Ok(()) }
pub fn sweep(_c: &NetworkConfig, _a: &dyn Fn(&str) -> bool) -> Result<Vec<String>, NetworkError> { Ok(vec![]) }
