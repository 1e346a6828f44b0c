//! The certificates the router serves over TLS, chosen by the name the client asks for
//! (SNI): a certificate naming it exactly (an app's custom domain, or an app's name under
//! the cluster's domain) wins over a wildcard (`*.DOMAIN`); a name no certificate covers
//! gets no certificate, so rustls ends the handshake with an alert instead of serving one
//! the client would (rightly) reject. A client that names nothing (no SNI, or an IP
//! address) gets the first certificate given, the cluster domain's, as nginx serves its
//! default server's.
//!
//! The scheduler gives the whole set at once ([`crate::RouteTable::set_certs`]): a
//! certificate that cannot be used is skipped, and reported, without taking the others down.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// A certificate chain and its key, and the names it is to be served for (exact names, or
/// `*.DOMAIN` for a wildcard). The scheduler decides the names: a certificate is served for
/// those of its own names that belong to the app it was added to.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsCert {
    pub names: Vec<String>,
    /// PEM: the leaf first, then intermediates.
    pub chain_pem: String,
    /// PEM: PKCS#8, SEC1 or PKCS#1.
    pub key_pem: String,
}

impl std::fmt::Debug for TlsCert {
    /// Never the key: certificates end up in logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCert")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// Why a certificate was not taken; the message names the certificate by its names and
/// never repeats the key.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate for {names}: its chain is not PEM")]
    Pem {
        names: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("certificate for {names}: no certificate in its chain")]
    NoCertificate { names: String },
    #[error("certificate for {names}: its private key is not PEM")]
    KeyPem { names: String },
    #[error("certificate for {names}: its private key cannot be used")]
    Key {
        names: String,
        #[source]
        source: rustls::Error,
    },
    #[error("certificate for {names}: its private key is not the certificate's")]
    KeyMismatch { names: String },
}

/// The names a certificate is served for, and what the router serves for each.
#[derive(Default)]
struct ByName {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// For clients without SNI.
    first: Option<Arc<CertifiedKey>>,
}

/// The router's certificates by name; a handshake reads them, the scheduler replaces them.
#[derive(Default)]
pub(crate) struct CertStore {
    by_name: RwLock<Arc<ByName>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore").finish_non_exhaustive()
    }
}

impl CertStore {
    /// Serves `certs` from now on; later certificates win a name over earlier ones. Returns
    /// the certificates that could not be used (they are left out).
    pub(crate) fn replace(&self, certs: &[TlsCert]) -> Vec<CertError> {
        let mut by_name = ByName::default();
        let mut errors = Vec::new();
        for cert in certs {
            let key = match certified_key(cert) {
                Ok(key) => Arc::new(key),
                Err(error) => {
                    errors.push(error);
                    continue;
                }
            };
            by_name.first.get_or_insert_with(|| key.clone());
            for name in &cert.names {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                match name.strip_prefix("*.") {
                    Some(parent) => by_name.wildcard.insert(parent.to_owned(), key.clone()),
                    None => by_name.exact.insert(name, key.clone()),
                };
            }
        }
        *self.by_name.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(by_name);
        errors
    }

    /// The certificate for `server_name`: one naming it, else a wildcard one level up.
    pub(crate) fn pick(&self, server_name: &str) -> Option<Arc<CertifiedKey>> {
        let name = server_name.trim_end_matches('.').to_ascii_lowercase();
        let by_name = self
            .by_name
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(key) = by_name.exact.get(&name) {
            return Some(key.clone());
        }
        let (_, parent) = name.split_once('.')?;
        by_name.wildcard.get(parent).cloned()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let picked = match hello.server_name() {
            Some(name) => self.pick(name),
            None => self
                .by_name
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .first
                .clone(),
        };
        if picked.is_none() {
            tracing::debug!(
                sni = hello.server_name().unwrap_or(""),
                "no certificate for this name: handshake refused"
            );
        }
        picked
    }
}

/// Parses one certificate and its key, and checks that they belong together.
fn certified_key(cert: &TlsCert) -> Result<CertifiedKey, CertError> {
    let names = || cert.names.join(", ");
    let chain = CertificateDer::pem_slice_iter(cert.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| CertError::Pem {
            names: names(),
            source,
        })?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate { names: names() });
    }
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
        .map_err(|_| CertError::KeyPem { names: names() })?;
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|source| CertError::Key {
            names: names(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|_| CertError::KeyMismatch { names: names() })?;
    Ok(certified)
}

/// The router's TLS settings: certificates by SNI, HTTP/2 or HTTP/1.1 by ALPN, and session
/// resumption (a session cache and tickets), which saves returning clients a full handshake.
pub(crate) fn server_config(certs: Arc<CertStore>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(config))
}

/// Sessions remembered for resumption (a few hundred bytes each).
const SESSION_CACHE: usize = 16 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(names: &[&str]) -> TlsCert {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(names.clone())
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        TlsCert {
            names,
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    #[test]
    fn exact_names_win_over_wildcards_and_unknown_names_get_none() {
        let store = CertStore::default();
        let wildcard = self_signed(&["*.localhost", "localhost"]);
        let custom = self_signed(&["www.example.com"]);
        let app = self_signed(&["app.localhost"]);
        assert!(store
            .replace(&[wildcard.clone(), custom.clone(), app.clone()])
            .is_empty());
        let der = |c: &TlsCert| {
            CertificateDer::pem_slice_iter(c.chain_pem.as_bytes())
                .next()
                .expect("one")
                .expect("pem")
        };
        let served = |name: &str| store.pick(name).map(|k| k.cert[0].clone());
        assert_eq!(served("other.localhost"), Some(der(&wildcard)));
        assert_eq!(served("APP.localhost."), Some(der(&app)));
        assert_eq!(served("www.example.com"), Some(der(&custom)));
        assert_eq!(served("localhost"), Some(der(&wildcard)));
        assert_eq!(served("a.b.localhost"), None, "a wildcard covers one label");
        assert_eq!(served("example.com"), None);
    }

    #[test]
    fn unusable_certificates_are_reported_and_left_out() {
        let store = CertStore::default();
        let good = self_signed(&["good.example.com"]);
        let other = self_signed(&["other.example.com"]);
        let mismatched = TlsCert {
            key_pem: other.key_pem.clone(),
            ..self_signed(&["bad.example.com"])
        };
        let garbage = TlsCert {
            names: vec!["junk.example.com".into()],
            chain_pem: "not a certificate".into(),
            key_pem: good.key_pem.clone(),
        };
        let errors = store.replace(&[good, mismatched, garbage]);
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                "certificate for bad.example.com: its private key is not the certificate's",
                "certificate for junk.example.com: no certificate in its chain",
            ]
        );
        assert!(store.pick("good.example.com").is_some());
        assert!(store.pick("bad.example.com").is_none());
        assert!(
            !format!("{other:?}").contains("PRIVATE KEY"),
            "Debug hides the key"
        );
    }
}
