//! A certificate a user brings (`certs:add`): read and checked before it is stored, so a
//! router never gets one it cannot serve. Errors say what is wrong and never quote the key.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::model::CertMaterial;

use super::hostname::covers;

/// Largest PEM accepted for a chain or a key (a chain of a few certificates is ~10 KiB).
pub const MAX_PEM: usize = 64 * 1024;

/// What is wrong with a certificate or its key.
#[derive(Debug, thiserror::Error)]
pub enum CertCheckError {
    #[error("the certificate is larger than {MAX_PEM} bytes")]
    TooLarge,
    #[error("the certificate file is not PEM (it should hold -----BEGIN CERTIFICATE----- blocks)")]
    NotPem,
    #[error("the certificate file holds no certificate")]
    NoCertificate,
    #[error("the first certificate does not parse: {0}")]
    Unparsable(String),
    #[error("the key is not a PEM private key (PKCS#8, SEC1 or PKCS#1)")]
    KeyNotPem,
    #[error("the key's type is not supported (use RSA, ECDSA P-256/P-384 or Ed25519)")]
    KeyUnsupported,
    #[error("the key does not match the certificate: give the key the certificate was issued for")]
    KeyMismatch,
    #[error("the certificate expired on {0}")]
    Expired(String),
    #[error("the certificate is not valid before {0}")]
    NotYetValid(String),
    #[error("the certificate names no DNS name")]
    NoNames,
    #[error("the certificate is for {names}, which covers none of {app}'s domains ({domains}): add one with `manifold domains:add NAME -a {app}` first")]
    CoversNoDomain {
        app: String,
        names: String,
        domains: String,
    },
}

/// A certificate as read: its names and what the store keeps.
#[derive(Debug)]
pub struct Inspected {
    pub names: Vec<String>,
    pub material: CertMaterial,
}

/// Reads `chain_pem` and `key_pem`, and checks that the key is the certificate's and that
/// it is valid now.
pub fn inspect(chain_pem: &str, key_pem: &str) -> Result<Inspected, CertCheckError> {
    if chain_pem.len() > MAX_PEM || key_pem.len() > MAX_PEM {
        return Err(CertCheckError::TooLarge);
    }
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| CertCheckError::NotPem)?;
    let leaf = chain.first().ok_or(CertCheckError::NoCertificate)?.clone();
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| CertCheckError::KeyNotPem)?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|_| CertCheckError::KeyUnsupported)?;
    CertifiedKey::new(chain, signing)
        .keys_match()
        .map_err(|_| CertCheckError::KeyMismatch)?;

    let (_, cert) =
        X509Certificate::from_der(&leaf).map_err(|e| CertCheckError::Unparsable(e.to_string()))?;
    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    let now = OffsetDateTime::now_utc();
    if not_after < now {
        return Err(CertCheckError::Expired(day(not_after)));
    }
    if not_before > now {
        return Err(CertCheckError::NotYetValid(day(not_before)));
    }
    let mut names: Vec<String> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        // Old certificates name their host in the subject's common name only.
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    if names.is_empty() {
        return Err(CertCheckError::NoNames);
    }
    Ok(Inspected {
        names,
        material: CertMaterial {
            chain_pem: chain_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer: cert.issuer().to_string(),
            not_before,
            not_after,
        },
    })
}

/// The app's domains a certificate with `names` covers; refused when none.
pub fn covered_domains(
    app: &str,
    names: &[String],
    domains: &[String],
) -> Result<Vec<String>, CertCheckError> {
    let covered: Vec<String> = domains
        .iter()
        .filter(|d| names.iter().any(|n| covers(n, d)))
        .cloned()
        .collect();
    if covered.is_empty() {
        return Err(CertCheckError::CoversNoDomain {
            app: app.to_owned(),
            names: names.join(", "),
            domains: if domains.is_empty() {
                "it has none".to_owned()
            } else {
                domains.join(", ")
            },
        });
    }
    Ok(covered)
}

fn day(at: OffsetDateTime) -> String {
    at.date().to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed certificate for `names` valid from `from` to `until` days from now.
    pub(crate) fn make(names: &[&str], from: i64, until: i64) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .expect("params");
        let now = OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(from);
        params.not_after = now + time::Duration::days(until);
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_good_certificate_is_read() {
        let (chain, key) = make(&["www.example.com", "*.example.org"], -1, 90);
        let got = inspect(&chain, &key).expect("good");
        assert_eq!(got.names, ["www.example.com", "*.example.org"]);
        assert!(got.material.not_after > OffsetDateTime::now_utc());
        let domains = [
            "www.example.com".to_owned(),
            "api.example.org".to_owned(),
            "x.y".to_owned(),
        ];
        assert_eq!(
            covered_domains("web", &got.names, &domains).expect("covers"),
            ["www.example.com", "api.example.org"]
        );
    }

    #[test]
    fn bad_certificates_are_refused_with_the_reason() {
        let (chain, key) = make(&["www.example.com"], -1, 90);
        let (_, other_key) = make(&["www.example.com"], -1, 90);
        let err = |chain: &str, key: &str| inspect(chain, key).expect_err("refused").to_string();
        assert!(err(&chain, &other_key).contains("does not match"));
        assert!(err("garbage", &key).contains("holds no certificate"));
        assert!(err(
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
            &key
        )
        .contains("not PEM"));
        assert!(err(&chain, "garbage").contains("not a PEM private key"));
        assert!(err(&"x".repeat(MAX_PEM + 1), &key).contains("larger"));
        let (old, old_key) = make(&["www.example.com"], -100, -1);
        assert!(err(&old, &old_key).contains("expired"));
        let (soon, soon_key) = make(&["www.example.com"], 2, 90);
        assert!(err(&soon, &soon_key).contains("not valid before"));
        let names = ["other.example.com".to_owned()];
        let refused = covered_domains("web", &names, &["www.example.com".to_owned()])
            .expect_err("covers none");
        assert!(refused
            .to_string()
            .contains("covers none of web's domains (www.example.com)"));
        for message in [err(&chain, &other_key), refused.to_string()] {
            assert!(!message.contains("PRIVATE"), "no key in {message}");
        }
    }
}
