//! The cluster's TLS files, read the same way by every daemon: the scheduler's listener and
//! its followers, and each agent. A certificate, key or cluster CA that is missing or broken
//! is an error naming the file and what it was for, found once at start rather than at every
//! handshake. All of rustls here uses ring, the one provider the workspace builds.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

/// What is wrong with one of the TLS files. `what` says what the file was for ("the cluster
/// CA", "the TLS key"), since the same file can be each of them for different daemons.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {what} {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path} is not PEM")]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{what} {path} holds no certificate")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("the cluster CA {path} is not a usable CA certificate")]
    Ca {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// A file's bytes.
pub fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(|source| FileError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate of `pem`, read from `path` (a chain, or a CA bundle); at least one.
pub fn certs_in(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, FileError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| FileError::Pem {
            what,
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(FileError::NoCertificate {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Every certificate of the PEM file at `path`; at least one.
pub fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, FileError> {
    certs_in(what, path, &read(what, path)?)
}

/// The private key of `pem`, read from `path` (PKCS#8, SEC1 or PKCS#1).
pub fn key_in(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<PrivateKeyDer<'static>, FileError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|source| FileError::Pem {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// The private key of the PEM file at `path`.
pub fn load_key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, FileError> {
    key_in(what, path, &read(what, path)?)
}

/// Adds the cluster CA's certificates at `path` to `roots`; returns the file's PEM (tonic
/// takes the CA as PEM, not as a root store).
pub fn add_cluster_ca(roots: &mut RootCertStore, path: &Path) -> Result<Vec<u8>, FileError> {
    let pem = read("the cluster CA", path)?;
    for ca in certs_in("the cluster CA", path, &pem)? {
        roots.add(ca).map_err(|source| FileError::Ca {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(pem)
}

/// Adds the system's root certificates to `roots`; one that does not parse is skipped (and
/// logged at debug), as browsers do: a stray file in the system store must not stop a daemon.
pub fn add_system_roots(roots: &mut RootCertStore) {
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!("cannot load a system root certificate: {error}");
    }
    roots.add_parsable_certificates(native.certs);
}

/// The crypto provider of every TLS config in the cluster.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A self-signed certificate (made once with `manifold-scheduler certs ca`), enough to
    /// be a root.
    const CA: &str = include_str!("../testdata/ca.pem");

    #[test]
    fn a_missing_file_is_named_with_what_it_was_for() {
        let err = load_certs("the TLS certificate", Path::new("/nonexistent/h1.pem")).unwrap_err();
        assert!(matches!(err, FileError::Read { .. }));
        assert_eq!(
            err.to_string(),
            "cannot read the TLS certificate /nonexistent/h1.pem"
        );
    }

    #[test]
    fn a_file_without_a_certificate_or_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = load_certs("the cluster CA", &path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("the cluster CA {} holds no certificate", path.display())
        );
        let err = load_key("the TLS key", &path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("the TLS key {} is not PEM", path.display())
        );
        let mut roots = RootCertStore::empty();
        assert!(add_cluster_ca(&mut roots, &path).is_err());
        assert!(roots.is_empty());
    }

    #[test]
    fn the_cluster_ca_becomes_a_root_and_its_pem_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, CA).unwrap();
        let mut roots = RootCertStore::empty();
        let pem = add_cluster_ca(&mut roots, &path).unwrap();
        assert_eq!(pem, CA.as_bytes());
        assert_eq!(roots.len(), 1);
    }
}
