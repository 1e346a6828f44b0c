//! Add-on services' host ports: a service keeps its port for life, with its volume, and no
//! other unit gets it.

use super::*;
use crate::daemon::services::{key, ServiceRecord};

fn service(id: &str, port: u16) -> ServiceRecord {
    ServiceRecord {
        id: id.into(),
        name: format!("redis-{id}"),
        kind: "redis".into(),
        stack: "services".into(),
        size: "basic".into(),
        port,
        env: [("ADDON_PASSWORD".to_string(), "pw-0123456789".to_string())].into(),
        peers: Vec::new(),
    }
}

#[tokio::test]
async fn a_services_port_is_kept_with_its_volume_and_never_shared() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = AgentState {
        services: vec![
            service("kept", 0),
            service("fresh", 0),
            service("asks", 31000),
            service("bad.id", 0),
        ],
        ..AgentState::default()
    };
    let mut h = Harness::new(state, dir);
    // A volume a previous daemon left, with the port the service had.
    let volume = h.core.config.host.volumes_dir().join("kept");
    std::fs::create_dir_all(&volume).expect("volume");
    std::fs::write(
        volume.join("service.json"),
        r#"{"kind":"redis","port":31000}"#,
    )
    .expect("record");
    h.core.reserve_volume_ports();
    // Reserved: a dyno never gets it, even while the service is stopped.
    assert_eq!(h.core.ports.allocate(), Ok(31001));
    assert_eq!(h.core.service_port(&key("kept")), Ok(31000));
    assert_eq!(h.core.service_port(&key("fresh")), Ok(31002));
    // Another service naming that port is refused, and says why.
    let taken = h.core.service_port(&key("asks")).expect_err("taken");
    assert_eq!(taken, "port 31000 is taken on this host");
    let bad = h.core.service_port(&key("bad.id")).expect_err("bad id");
    assert!(bad.starts_with("invalid service id \"bad.id\""), "{bad}");
    // Destroyed: the port comes free with the volume.
    h.core.state.destroyed_services = vec!["kept".into()];
    h.core.destroy_services();
    assert!(!volume.exists());
    assert_eq!(h.core.ports.allocate(), Ok(31000));
}
