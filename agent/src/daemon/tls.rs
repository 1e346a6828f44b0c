//! TLS toward an `https://` scheduler: whom the agent trusts (the cluster CA, else the
//! system roots) and who it is (this host's certificate, from `manifold-scheduler certs
//! issue HOST_ID`). The same files serve both of the agent's clients: tonic's TLS for the
//! AgentLink streams ([`ClientTls::tonic`]) and reqwest (rustls with ring) for blobs
//! ([`ClientTls::http`]). Everything is read and checked once, at start, so that a missing or
//! broken file is an error naming it rather than a failure at every dial.

use std::fmt;
use std::path::{Path, PathBuf};

use rustls::RootCertStore;

/// Errors reading the TLS files or setting up the clients.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    File(#[from] manifold_tls::FileError),
    #[error("--cluster-ca, --tls-cert and --tls-key need an https:// scheduler URL, not {url}")]
    NotHttps { url: String },
    #[error("--tls-cert and --tls-key go together: give both or neither")]
    HalfIdentity,
    #[error("the TLS certificate {cert} and key {key} do not go together")]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("no system root certificates to check the scheduler's with: give --cluster-ca")]
    NoRoots,
    #[error("cannot set up TLS")]
    Rustls(#[from] rustls::Error),
    #[error("cannot set up the HTTPS client")]
    Client(#[from] reqwest::Error),
}

/// What the agent's TLS clients use.
#[derive(Clone)]
pub struct ClientTls {
    /// The cluster CA's PEM; `None`: the system roots.
    ca: Option<Vec<u8>>,
    /// This host's certificate chain and key, PEM.
    identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The blob client, with the same roots and identity.
    http: reqwest::Client,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("cluster_ca", &self.ca.is_some())
            .field("identity", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Reads the cluster CA (`None`: trust the system roots) and this host's certificate and
    /// key (both or neither).
    pub fn load(
        cluster_ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<ClientTls, TlsError> {
        let mut roots = RootCertStore::empty();
        let ca = match cluster_ca {
            Some(path) => Some(manifold_tls::add_cluster_ca(&mut roots, path)?),
            None => {
                manifold_tls::add_system_roots(&mut roots);
                if roots.is_empty() {
                    return Err(TlsError::NoRoots);
                }
                None
            }
        };
        let builder = rustls::ClientConfig::builder_with_provider(manifold_tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let (mut config, identity) = match (cert, key) {
            (Some(cert), Some(key)) => {
                let cert_pem = manifold_tls::read("the TLS certificate", cert)?;
                let key_pem = manifold_tls::read("the TLS key", key)?;
                let chain = manifold_tls::certs_in("the TLS certificate", cert, &cert_pem)?;
                let private = manifold_tls::key_in("the TLS key", key, &key_pem)?;
                let config = builder
                    .with_client_auth_cert(chain, private)
                    .map_err(|source| TlsError::Identity {
                        cert: cert.to_path_buf(),
                        key: key.to_path_buf(),
                        source,
                    })?;
                (config, Some((cert_pem, key_pem)))
            }
            (None, None) => (builder.with_no_client_auth(), None),
            _ => return Err(TlsError::HalfIdentity),
        };
        // The blob client speaks HTTP/1.1 (reqwest is built without HTTP/2 here).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .build()?;
        Ok(ClientTls { ca, identity, http })
    }

    /// Whether this host presents a certificate.
    pub fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// The configuration of an AgentLink channel (tonic's TLS, ALPN h2).
    pub fn tonic(&self) -> tonic::transport::ClientTlsConfig {
        let config = tonic::transport::ClientTlsConfig::new();
        let config = match &self.ca {
            Some(pem) => config.ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            None => config.with_native_roots(),
        };
        match &self.identity {
            Some((cert, key)) => config.identity(tonic::transport::Identity::from_pem(cert, key)),
            None => config,
        }
    }

    /// The HTTP client for blobs.
    pub fn http(&self) -> reqwest::Client {
        self.http.clone()
    }
}
