//! The scheduler's ACME settings: flags, their `MANIFOLD_ACME_*` variables, or the keys
//! `acme_directory`, `acme_contact` and `acme_ca` of `/etc/manifold/scheduler.toml`
//! (see the `manifold-settings` crate). Checked once at start, so a typo in the directory
//! or an unreadable CA bundle stops the scheduler rather than every order failing later.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::RootCertStore;

use super::AcmeError;

/// The flags, as `manifold-scheduler` declares them (flattened into its command line).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AcmeSettings {
    /// The ACME directory that issues automated certificates (`manifold certs:auto:enable`),
    /// e.g. Let's Encrypt's https://acme-v02.api.letsencrypt.org/directory. Setting it agrees
    /// to that server's terms of service. Without it, automated certificates are off.
    #[arg(long, env = "MANIFOLD_ACME_DIRECTORY")]
    pub acme_directory: Option<String>,
    /// An email address the ACME server may write to about the cluster's certificates
    /// (expiry, revocation).
    #[arg(long, env = "MANIFOLD_ACME_CONTACT", requires = "acme_directory")]
    pub acme_contact: Option<String>,
    /// Trust only the CA certificates of this PEM bundle for the ACME server's HTTPS,
    /// instead of the system's: a private ACME server, or a test one such as pebble.
    #[arg(long, env = "MANIFOLD_ACME_CA", requires = "acme_directory")]
    pub acme_ca: Option<PathBuf>,
}

/// Checked settings, ready for [`super::order::Acme`].
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The directory URL; the account is kept under it, so pointing the cluster at another
    /// ACME server registers a new account there.
    pub directory: String,
    /// `mailto:` URIs for the account.
    pub contact: Vec<String>,
    /// The roots the ACME client trusts.
    pub roots: Arc<RootCertStore>,
}

impl AcmeSettings {
    /// The checked settings, or `None` when no directory is set (automated certificates off).
    pub fn config(&self) -> Result<Option<AcmeConfig>, AcmeError> {
        let Some(directory) = &self.acme_directory else {
            return Ok(None);
        };
        let https = directory
            .parse::<hyper::Uri>()
            .is_ok_and(|uri| uri.scheme_str() == Some("https") && uri.host().is_some());
        if !https {
            return Err(AcmeError::Directory {
                directory: directory.clone(),
            });
        }
        let contact = match &self.acme_contact {
            None => Vec::new(),
            Some(contact) => vec![mailto(contact)?],
        };
        let mut roots = RootCertStore::empty();
        match &self.acme_ca {
            Some(path) => {
                for ca in manifold_tls::load_certs("the ACME CA bundle", path)? {
                    roots.add(ca).map_err(AcmeError::Tls)?;
                }
            }
            None => manifold_tls::add_system_roots(&mut roots),
        }
        Ok(Some(AcmeConfig {
            directory: directory.clone(),
            contact,
            roots: Arc::new(roots),
        }))
    }
}

/// `contact` as a `mailto:` URI (it may already be one).
fn mailto(contact: &str) -> Result<String, AcmeError> {
    let address = contact.strip_prefix("mailto:").unwrap_or(contact);
    let valid = address.split_once('@').is_some_and(|(user, host)| {
        !user.is_empty() && host.contains('.') && !host.starts_with('.') && !host.ends_with('.')
    }) && !address
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ',');
    if !valid {
        return Err(AcmeError::Contact {
            contact: contact.to_string(),
        });
    }
    Ok(format!("mailto:{address}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn settings(directory: Option<&str>, contact: Option<&str>) -> AcmeSettings {
        AcmeSettings {
            acme_directory: directory.map(str::to_string),
            acme_contact: contact.map(str::to_string),
            acme_ca: None,
        }
    }

    #[test]
    fn no_directory_means_automated_certificates_are_off() {
        assert!(settings(None, None).config().unwrap().is_none());
    }

    #[test]
    fn a_directory_and_a_contact_are_checked() {
        let config = settings(Some("https://acme.test/dir"), Some("ops@example.com"))
            .config()
            .unwrap()
            .unwrap();
        assert_eq!(config.directory, "https://acme.test/dir");
        assert_eq!(config.contact, ["mailto:ops@example.com"]);
        let again = settings(
            Some("https://acme.test/dir"),
            Some("mailto:ops@example.com"),
        );
        assert_eq!(again.config().unwrap().unwrap().contact, config.contact);
    }

    #[test]
    fn bad_directories_and_contacts_are_refused_with_the_value() {
        for directory in [
            "http://acme.test/dir",
            "acme.test/dir",
            "https://",
            "not a url",
        ] {
            let err = settings(Some(directory), None).config().unwrap_err();
            assert!(
                matches!(err, AcmeError::Directory { .. }),
                "{directory}: {err}"
            );
            assert!(err.to_string().contains(directory), "{err}");
        }
        for contact in [
            "ops",
            "@example.com",
            "ops@localhost",
            "a b@example.com",
            "a@x.com,b@y.com",
        ] {
            let err = settings(Some("https://acme.test/dir"), Some(contact))
                .config()
                .unwrap_err();
            assert!(matches!(err, AcmeError::Contact { .. }), "{contact}: {err}");
            assert!(err.to_string().contains(contact), "{err}");
        }
    }

    #[test]
    fn a_ca_bundle_that_is_missing_or_not_pem_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        for path in [missing, garbage] {
            let mut acme = settings(Some("https://acme.test/dir"), None);
            acme.acme_ca = Some(path.clone());
            let err = acme.config().unwrap_err();
            let message = err.to_string();
            assert!(message.contains("the ACME CA bundle"), "{message}");
            assert!(message.contains(&path.display().to_string()), "{message}");
        }
    }
}
