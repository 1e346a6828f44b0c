//! The TLS client setup shared by `syslog+tls://` and `https://` drains.
//!
//! Drain endpoints on a private network rarely have certificates from a public CA, so the
//! trusted roots are configurable ([`crate::PlexConfig::drain_roots`]) on top of, or instead
//! of, the machine's own roots. The ring provider is named explicitly so the choice does not
//! depend on which rustls features other crates of the build happen to enable.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// The client configuration, or why it could not be built (reported by each TLS drain).
pub(crate) type Tls = Result<Arc<ClientConfig>, Arc<rustls::Error>>;

/// Builds the client configuration trusting `extra` and, if asked, the system roots.
pub(crate) fn client_config(extra: &[CertificateDer<'static>], system_roots: bool) -> Tls {
    let mut roots = RootCertStore::empty();
    if system_roots {
        let native = rustls_native_certs::load_native_certs();
        for error in &native.errors {
            tracing::warn!(%error, "could not load a system root certificate");
        }
        let (added, ignored) = roots.add_parsable_certificates(native.certs);
        tracing::debug!(added, ignored, "system roots for drains");
    }
    let (_, ignored) = roots.add_parsable_certificates(extra.iter().cloned());
    if ignored > 0 {
        tracing::warn!(
            ignored,
            "some configured drain roots are not valid certificates"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Arc::new)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A PEM bundle of trusted roots that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read drain root certificates from {path}: {source}")]
pub struct RootsError {
    /// The bundle's path.
    pub path: PathBuf,
    /// What went wrong reading or decoding it.
    pub source: rustls::pki_types::pem::Error,
}

/// Reads every certificate of a PEM bundle, for [`crate::PlexConfig::drain_roots`].
pub fn load_pem_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, RootsError> {
    let err = |source| RootsError {
        path: path.to_owned(),
        source,
    };
    CertificateDer::pem_file_iter(path)
        .map_err(err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)
}
