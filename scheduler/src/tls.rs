//! TLS between hosts: the scheduler's listener (`--tls-cert`, `--tls-key`) and who is on the
//! other end of each connection (`--cluster-ca`).
//!
//! ```text
//! TCP accept ─▶ first byte 0x16? ──no──▶ plain HTTP on a TLS port: every request is told to
//!                    │ yes                use https:// (a gRPC status for agents, 400 for users)
//!                    ▼
//!              rustls handshake (ALPN h2, http/1.1; a client certificate is asked for, never
//!                    │            required: users' CLIs have none)
//!                    ▼
//!              Peer { tls, cert: None | Trusted | Untrusted(why) } in every request's extensions
//!                    ▼
//!   Hub::link (the Hello's host id), Hub::attach (the dyno's host), /agent/v1/blobs
//!   (Manifold-Host) call [`check_agent`] when `Settings::agent_certs`
//! ```
//!
//! The handshake accepts any client certificate whose key the client holds (the signature
//! over the handshake is checked as usual) and the chain is checked right after it, against
//! the cluster CA, by rustls' own WebPKI verifier. Deciding there rather than failing the
//! handshake lets the scheduler answer an agent with a wrong certificate in words ("not
//! signed by the cluster CA", "for host b, not a") that the agent logs, instead of a TLS
//! alert, and lets the user paths of the same listener go on without any certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use manifold_tls::{load_certs, load_key, provider};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, DnsName, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerConnection, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

/// The header with which an agent names its host on blob requests (their connections carry
/// no `Hello`), so that its certificate can be checked against it.
pub const HOST_HEADER: &str = "manifold-host";

/// What the scheduler's listener knows about the client of one connection; the server puts
/// it into the extensions of every request on that connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    pub cert: ClientCert,
}

/// A TLS client's certificate, as checked against the cluster CA after the handshake.
#[derive(Debug, Clone)]
pub enum ClientCert {
    /// None presented (or no cluster CA to ask for one).
    None,
    /// Chains to the cluster CA and may be used for client authentication.
    Trusted(Arc<CertificateDer<'static>>),
    /// Presented, but not valid: why.
    Untrusted(String),
}

/// Why a request cannot act for an agent's host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentCertError {
    #[error("agent certificate for host {host} required: the connection is not TLS (use an https:// scheduler URL)")]
    NotTls { host: String },
    #[error("agent certificate for host {host} required: the agent presented none (start it with --tls-cert and --tls-key)")]
    Missing { host: String },
    #[error("agent certificate for host {host} required: the one presented is not valid for the cluster CA ({reason})")]
    Untrusted { host: String, reason: String },
    #[error("agent certificate for host {host} required: the one presented is for {names} (issue one with `manifold-scheduler certs issue {host}`)")]
    WrongHost { host: String, names: String },
    #[error("agent certificate for host {host} required: a host id that is not a DNS name cannot be named by a certificate")]
    NotDnsName { host: String },
}

impl AgentCertError {
    /// No usable certificate at all (as opposed to a good one for another host).
    pub fn unauthenticated(&self) -> bool {
        matches!(
            self,
            AgentCertError::NotTls { .. }
                | AgentCertError::Missing { .. }
                | AgentCertError::Untrusted { .. }
        )
    }

    /// The gRPC status an AgentLink call is refused with.
    pub fn status(&self) -> tonic::Status {
        if self.unauthenticated() {
            tonic::Status::unauthenticated(self.to_string())
        } else {
            tonic::Status::permission_denied(self.to_string())
        }
    }
}

/// Whether the connection `peer` describes may act for agent host `host`: its client
/// certificate chains to the cluster CA and names `host` as a DNS name, exactly (host ids
/// are case-sensitive, and a wildcard does not stand for a host).
pub fn check_agent(peer: Option<&Peer>, host: &str) -> Result<(), AgentCertError> {
    let host_owned = || host.to_string();
    let peer = match peer {
        Some(peer) if peer.tls => peer,
        _ => return Err(AgentCertError::NotTls { host: host_owned() }),
    };
    let der = match &peer.cert {
        ClientCert::None => return Err(AgentCertError::Missing { host: host_owned() }),
        ClientCert::Untrusted(reason) => {
            return Err(AgentCertError::Untrusted {
                host: host_owned(),
                reason: reason.clone(),
            })
        }
        ClientCert::Trusted(der) => der,
    };
    cert_names_host(der, host)
}

/// Whether a (trusted) certificate is valid for host id `host`.
fn cert_names_host(der: &CertificateDer<'_>, host: &str) -> Result<(), AgentCertError> {
    let untrusted = |reason: String| AgentCertError::Untrusted {
        host: host.to_string(),
        reason,
    };
    let cert = webpki::EndEntityCert::try_from(der).map_err(|e| untrusted(e.to_string()))?;
    let Ok(name) = DnsName::try_from(host) else {
        return Err(AgentCertError::NotDnsName {
            host: host.to_string(),
        });
    };
    let valid = cert
        .verify_is_valid_for_subject_name(&ServerName::DnsName(name))
        .is_ok();
    let names: Vec<&str> = cert.valid_dns_names().collect();
    if valid && names.contains(&host) {
        return Ok(());
    }
    Err(AgentCertError::WrongHost {
        host: host.to_string(),
        names: if names.is_empty() {
            "no DNS name".to_string()
        } else {
            names.join(", ")
        },
    })
}

/// Errors setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    File(#[from] manifold_tls::FileError),
    #[error("the cluster CA {path} cannot check client certificates")]
    Verifier {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error("the TLS certificate {cert} and key {key} do not go together")]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot set up TLS")]
    Rustls(#[from] rustls::Error),
    #[error("cannot set up the HTTPS client")]
    Client(#[from] reqwest::Error),
}

/// The listener's TLS: its certificate and, with a cluster CA, how client certificates are
/// checked.
pub struct ServerTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Checks client certificates against the cluster CA (none: none are asked for).
    clients: Option<Arc<dyn ClientCertVerifier>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("checks_clients", &self.checks_clients())
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the listener's certificate chain and key and, if given, the cluster CA whose
    /// certificates identify agents.
    pub fn load(cert: &Path, key: &Path, cluster_ca: Option<&Path>) -> Result<ServerTls, TlsError> {
        let chain = load_certs("the TLS certificate", cert)?;
        let private = load_key("the TLS key", key)?;
        let clients = match cluster_ca {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                manifold_tls::add_cluster_ca(&mut roots, path)?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .allow_unauthenticated()
                        .build()
                        .map_err(|source| TlsError::Verifier {
                            path: path.to_path_buf(),
                            source,
                        })?;
                Some(verifier)
            }
            None => None,
        };
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?;
        let builder = match &clients {
            Some(verifier) => builder.with_client_cert_verifier(Arc::new(AskForClientCert {
                inner: verifier.clone(),
            })),
            None => builder.with_no_client_auth(),
        };
        let mut config =
            builder
                .with_single_cert(chain, private)
                .map_err(|source| TlsError::Identity {
                    cert: cert.to_path_buf(),
                    key: key.to_path_buf(),
                    source,
                })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            clients,
        })
    }

    /// Whether agents are asked for certificates.
    pub fn checks_clients(&self) -> bool {
        self.clients.is_some()
    }

    /// The client certificate of a finished handshake, checked against the cluster CA.
    pub fn client_cert(&self, conn: &ServerConnection) -> ClientCert {
        let (Some(verifier), Some(certs)) = (&self.clients, conn.peer_certificates()) else {
            return ClientCert::None;
        };
        let Some((end_entity, intermediates)) = certs.split_first() else {
            return ClientCert::None;
        };
        match verifier.verify_client_cert(end_entity, intermediates, UnixTime::now()) {
            Ok(_) => ClientCert::Trusted(Arc::new(end_entity.clone())),
            Err(err) => ClientCert::Untrusted(err.to_string()),
        }
    }
}

/// Asks clients for a certificate and takes whatever they present, provided they hold its
/// key (the handshake signatures are checked by the WebPKI verifier as usual); the chain is
/// checked after the handshake by [`ServerTls::client_cert`] (see the module docs for why).
#[derive(Debug)]
struct AskForClientCert {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for AskForClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The HTTP client of a follower (`manifold-scheduler router|logplex`): an https://
/// scheduler is checked against the system roots plus `cluster_ca`.
pub fn follower_client(cluster_ca: Option<&Path>) -> Result<reqwest::Client, TlsError> {
    let mut roots = RootCertStore::empty();
    manifold_tls::add_system_roots(&mut roots);
    if let Some(path) = cluster_ca {
        manifold_tls::add_cluster_ca(&mut roots, path)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // reqwest is built without HTTP/2 here.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .build()?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::certs;

    fn peer(cert: ClientCert) -> Peer {
        Peer {
            addr: "127.0.0.1:1".parse().unwrap(),
            tls: true,
            cert,
        }
    }

    fn trusted(dir: &Path, name: &str) -> ClientCert {
        let issued = certs::issue(dir, name, &certs::Names::default(), certs::HOST_DAYS).unwrap();
        let der = load_certs("cert", &issued.cert).unwrap().remove(0);
        ClientCert::Trusted(Arc::new(der))
    }

    #[test]
    fn a_certificate_speaks_for_its_own_host_only() {
        let dir = tempfile::tempdir().unwrap();
        certs::create_ca(dir.path(), false, certs::CA_DAYS).unwrap();
        let a = peer(trusted(dir.path(), "host-a"));
        assert_eq!(check_agent(Some(&a), "host-a"), Ok(()));
        let err = check_agent(Some(&a), "host-b").unwrap_err();
        assert!(!err.unauthenticated());
        assert_eq!(
            err.to_string(),
            "agent certificate for host host-b required: the one presented is for host-a \
             (issue one with `manifold-scheduler certs issue host-b`)"
        );
        // Host ids are case-sensitive; DNS matching is not.
        assert!(check_agent(Some(&a), "HOST-A").is_err());
        assert!(matches!(
            check_agent(Some(&a), "10.0.0.1"),
            Err(AgentCertError::NotDnsName { .. })
        ));
    }

    #[test]
    fn no_tls_no_certificate_or_an_untrusted_one_is_unauthenticated() {
        let plain = Peer {
            tls: false,
            ..peer(ClientCert::None)
        };
        for (p, want) in [
            (None, "the connection is not TLS"),
            (Some(plain), "the connection is not TLS"),
            (Some(peer(ClientCert::None)), "the agent presented none"),
            (
                Some(peer(ClientCert::Untrusted(
                    "invalid peer certificate: UnknownIssuer".into(),
                ))),
                "not valid for the cluster CA (invalid peer certificate: UnknownIssuer)",
            ),
        ] {
            let err = check_agent(p.as_ref(), "h1").unwrap_err();
            assert!(err.unauthenticated(), "{err}");
            assert_eq!(err.status().code(), tonic::Code::Unauthenticated);
            assert!(err.to_string().contains(want), "{err}");
        }
    }

    #[test]
    fn server_tls_loads_issued_files_and_names_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let ca = certs::create_ca(dir.path(), false, certs::CA_DAYS).unwrap();
        let s = certs::issue(
            dir.path(),
            "scheduler",
            &certs::Names::default(),
            certs::HOST_DAYS,
        )
        .unwrap();
        let tls = ServerTls::load(&s.cert, &s.key, Some(&ca.cert)).unwrap();
        assert!(tls.checks_clients());
        let missing = dir.path().join("nope.pem");
        let err = ServerTls::load(&s.cert, &missing, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot read the TLS key {}", missing.display())
        );
        // A key that is not the certificate's.
        let other = certs::issue(
            dir.path(),
            "other",
            &certs::Names::default(),
            certs::HOST_DAYS,
        )
        .unwrap();
        let err = ServerTls::load(&s.cert, &other.key, None).unwrap_err();
        assert!(err.to_string().contains("do not go together"), "{err}");
    }
}
