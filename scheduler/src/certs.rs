//! `manifold-scheduler certs`: the cluster CA and the hosts' certificates for mutual TLS
//! between agents and the scheduler ([`crate::tls`] says how they are checked).
//!
//! ```text
//! certs ca --dir D           ─▶ D/ca.pem (every host trusts it), D/ca-key.pem (0600, keep it
//!                               on the machine that issues certificates)
//! certs issue NAME --dir D   ─▶ D/NAME.pem, D/NAME-key.pem (0600), signed by D/ca.pem:
//!                               DNS NAME (+ --dns, --ip), for server and client auth
//! certs router --dir D --domain DOMAIN [--app APP]…
//!                            ─▶ D/router.pem, D/router-key.pem: the router's HTTPS
//!                               certificate for DOMAIN, *.DOMAIN and each APP.DOMAIN
//! ```
//!
//! An agent's certificate names its host id: the scheduler lets a connection act for host
//! `h` only if its certificate is valid for the DNS name `h`. The scheduler's certificate
//! names whatever agents and users dial (`--dns`, `--ip`). Keys are ECDSA P-256.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, DnsName, UnixTime};
use time::OffsetDateTime;

/// How long a new CA is valid by default (ten years).
pub const CA_DAYS: u32 = 3650;
/// How long a new host certificate is valid by default (two years): issue a new one and
/// restart the host before then.
pub const HOST_DAYS: u32 = 730;

/// `manifold-scheduler certs …`.
#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Create the cluster CA: DIR/ca.pem (give it to every host) and DIR/ca-key.pem (secret).
    Ca {
        /// Where to write the files (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Replace an existing CA: every certificate it signed stops being trusted.
        #[arg(long)]
        force: bool,
        /// Days the CA is valid.
        #[arg(long, default_value_t = CA_DAYS)]
        days: u32,
    },
    /// Issue a certificate signed by DIR/ca.pem: DIR/NAME.pem and DIR/NAME-key.pem. NAME is
    /// an agent's host id, or e.g. `scheduler` for the scheduler's listener.
    Issue {
        /// The host id (or `scheduler`), which the certificate names as a DNS name.
        name: String,
        /// Where the CA is and the files go.
        #[arg(long)]
        dir: PathBuf,
        /// Another IP address the certificate is valid for (repeat), e.g. the address
        /// agents and users dial the scheduler at.
        #[arg(long = "ip", value_name = "IP")]
        ips: Vec<IpAddr>,
        /// Another DNS name the certificate is valid for (repeat).
        #[arg(long = "dns", value_name = "NAME")]
        dns: Vec<String>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = HOST_DAYS)]
        days: u32,
    },
    /// Issue the router's HTTPS certificate for the apps' domain, signed by DIR/ca.pem:
    /// DIR/router.pem and DIR/router-key.pem for `*.DOMAIN`, DOMAIN and `APP.DOMAIN` of each
    /// --app (give them as --router-cert and --router-key). The scheduler does this itself
    /// when it has the CA's key (see --router-ca).
    Router {
        /// Where the CA is and the files go.
        #[arg(long)]
        dir: PathBuf,
        /// The apps' domain (apps are APP.DOMAIN).
        #[arg(long, default_value = "localhost")]
        domain: String,
        /// An app to name explicitly (repeat): needed under a single-label domain such as
        /// `localhost`, whose wildcard clients refuse.
        #[arg(long = "app", value_name = "APP")]
        apps: Vec<String>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = ROUTER_DAYS)]
        days: u32,
    },
}

impl CertsCommand {
    /// Runs the command and prints what it wrote.
    pub fn run(&self) -> Result<(), CertsError> {
        match self {
            CertsCommand::Ca { dir, force, days } => {
                let ca = create_ca(dir, *force, *days)?;
                println!(
                    "wrote the cluster CA {} (copy it to every host: --cluster-ca, MANIFOLD_CA) and its key {} (keep it secret)",
                    ca.cert.display(),
                    ca.key.display()
                );
            }
            CertsCommand::Issue {
                name,
                dir,
                ips,
                dns,
                days,
            } => {
                let names = Names {
                    dns: dns.clone(),
                    ips: ips.clone(),
                };
                let issued = issue(dir, name, &names, *days)?;
                println!(
                    "wrote {} and {} for {} (valid {days} days)",
                    issued.cert.display(),
                    issued.key.display(),
                    issued.names.join(", ")
                );
            }
            CertsCommand::Router {
                dir,
                domain,
                apps,
                days,
            } => {
                let issued = issue_router(dir, domain, apps, *days)?;
                println!(
                    "wrote {} and {} for {} (valid {days} days)",
                    issued.cert.display(),
                    issued.key.display(),
                    issued.names.join(", ")
                );
            }
        }
        Ok(())
    }
}

/// Errors of `certs`.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{path} already exists: a new CA would invalidate every certificate the old one signed; pass --force to replace it")]
    CaExists { path: PathBuf },
    #[error(
        "no cluster CA in {dir}: create it first with `manifold-scheduler certs ca --dir {dir}`"
    )]
    NoCa { dir: PathBuf },
    #[error("invalid name {name:?}: {why}")]
    InvalidName { name: String, why: &'static str },
    #[error("invalid --dns {name:?}: not a DNS name")]
    InvalidDns { name: String },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a usable {what}")]
    Parse {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("the new certificate does not verify against {ca}: is {key} the key of that CA?")]
    Mismatch {
        ca: PathBuf,
        key: PathBuf,
        #[source]
        source: webpki::Error,
    },
    #[error("cannot make the certificate")]
    Generate(#[from] rcgen::Error),
}

/// The files of a CA or of an issued certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The names the certificate is valid for (DNS names, then addresses).
    pub names: Vec<String>,
}

/// Extra names of an issued certificate, besides its NAME.
#[derive(Debug, Clone, Default)]
pub struct Names {
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

fn ca_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("ca.pem"), dir.join("ca-key.pem"))
}

/// A random positive 128-bit serial number.
fn serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// Valid from an hour ago (clocks of hosts differ a little) for `days`.
fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::from_secs(3600);
    params.not_after = now + Duration::from_secs(u64::from(days.max(1)) * 86_400);
}

/// Creates the cluster CA in `dir`; refuses to replace one unless `force`.
pub fn create_ca(dir: &Path, force: bool, days: u32) -> Result<Written, CertsError> {
    let (cert_path, key_path) = ca_paths(dir);
    if !force {
        if let Some(path) = [&cert_path, &key_path].into_iter().find(|p| p.exists()) {
            return Err(CertsError::CaExists { path: path.clone() });
        }
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Manifold");
    // A name of its own: a certificate from another cluster's CA is then "unknown issuer"
    // rather than a signature that does not verify, and operators can tell CAs apart.
    let name = format!("Manifold cluster CA {:08x}", rand::random::<u32>());
    dn.push(DnType::CommonName, name.as_str());
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(serial());
    validity(&mut params, days);
    let cert = params.self_signed(&key)?;
    create_dir(dir)?;
    // The key first: a CA certificate without its key on disk would be useless.
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(Written {
        cert: cert_path,
        key: key_path,
        names: vec![name],
    })
}

/// Why `name` cannot be a certificate's NAME (a host id, also a file name in the CA's
/// directory).
fn check_name(name: &str) -> Result<(), CertsError> {
    let invalid = |why| {
        Err(CertsError::InvalidName {
            name: name.to_string(),
            why,
        })
    };
    let host_id = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !host_id || name.starts_with(['.', '-']) {
        return invalid("use a host id: up to 63 letters, digits, '-', '_' or '.', not starting with '.' or '-'");
    }
    if DnsName::try_from(name).is_err() {
        return invalid("a host id with a certificate must be a DNS name (not an address; no empty or all-numeric last label)");
    }
    if name == "ca" || name.ends_with("-key") {
        return invalid("the files would clash with the CA's or another certificate's key");
    }
    Ok(())
}

/// The cluster CA as read from its directory, ready to sign.
pub struct ClusterCa {
    pem: String,
    key: KeyPair,
    issuer: rcgen::Certificate,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cert", &self.cert_path)
            .finish_non_exhaustive()
    }
}

/// A certificate signed by the cluster CA, as PEM.
#[derive(Clone)]
pub struct Signed {
    pub cert_pem: String,
    pub key_pem: String,
}

impl ClusterCa {
    /// Reads `dir/ca.pem` and `dir/ca-key.pem`.
    pub fn load(dir: &Path) -> Result<ClusterCa, CertsError> {
        let (cert_path, key_path) = ca_paths(dir);
        if !cert_path.exists() {
            return Err(CertsError::NoCa {
                dir: dir.to_path_buf(),
            });
        }
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| CertsError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        let pem = read(&cert_path)?;
        let key = KeyPair::from_pem(&read(&key_path)?).map_err(|source| CertsError::Parse {
            path: key_path.clone(),
            what: "private key",
            source,
        })?;
        let issuer = CertificateParams::from_ca_cert_pem(&pem)
            .map_err(|source| CertsError::Parse {
                path: cert_path.clone(),
                what: "CA certificate",
                source,
            })?
            .self_signed(&key)?;
        Ok(ClusterCa {
            pem,
            key,
            issuer,
            cert_path,
            key_path,
        })
    }

    /// The CA certificate's PEM (what clients trust).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Signs a new key's certificate named `common_name`, valid for the DNS names `dns`
    /// (wildcards allowed) and the addresses `ips`, for server and client auth.
    pub fn sign(
        &self,
        common_name: &str,
        dns: &[String],
        ips: &[IpAddr],
        days: u32,
    ) -> Result<Signed, CertsError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Manifold");
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.subject_alt_names = dns
            .iter()
            .map(|d| Ok(SanType::DnsName(d.clone().try_into()?)))
            .collect::<Result<Vec<_>, rcgen::Error>>()?;
        params
            .subject_alt_names
            .extend(ips.iter().copied().map(SanType::IpAddress));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(serial());
        validity(&mut params, days);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        verify(cert.der(), &self.pem, &self.cert_path, &self.key_path)?;
        Ok(Signed {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Issues a certificate for `name` (plus `names`) in `dir`, signed by the CA there; an
/// existing certificate of that name is replaced.
pub fn issue(dir: &Path, name: &str, names: &Names, days: u32) -> Result<Written, CertsError> {
    check_name(name)?;
    for dns in &names.dns {
        if DnsName::try_from(dns.as_str()).is_err() {
            return Err(CertsError::InvalidDns { name: dns.clone() });
        }
    }
    let ca = ClusterCa::load(dir)?;
    let mut all: Vec<String> = vec![name.to_string()];
    all.extend(names.dns.iter().filter(|d| d.as_str() != name).cloned());
    let signed = ca.sign(name, &all, &names.ips, days)?;
    all.extend(names.ips.iter().map(IpAddr::to_string));
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}-key.pem"));
    write_file(&key_path, signed.key_pem.as_bytes(), 0o600)?;
    write_file(&cert_path, signed.cert_pem.as_bytes(), 0o644)?;
    Ok(Written {
        cert: cert_path,
        key: key_path,
        names: all,
    })
}

/// The names of the router's certificate for the cluster's `domain`: `DOMAIN`, `*.DOMAIN`,
/// and `APP.DOMAIN` for each app, because clients (rustls, OpenSSL, so curl) refuse a
/// wildcard directly under a single label (`*.localhost`).
pub fn router_names(domain: &str, apps: &[String]) -> Vec<String> {
    let domain = domain.trim_matches('.').to_ascii_lowercase();
    let mut names = vec![domain.clone(), format!("*.{domain}")];
    names.extend(apps.iter().map(|app| format!("{app}.{domain}")));
    names
}

/// How long the router's certificate for the cluster's domain is valid (clients refuse
/// longer-lived server certificates).
pub const ROUTER_DAYS: u32 = 397;

/// Issues the router's certificate for the cluster's `domain` (see [`router_names`]) in
/// `dir`: `router.pem`, `router-key.pem`.
pub fn issue_router(
    dir: &Path,
    domain: &str,
    apps: &[String],
    days: u32,
) -> Result<Written, CertsError> {
    let names = router_names(domain, apps);
    for dns in &names {
        if DnsName::try_from(dns.trim_start_matches("*.")).is_err() {
            return Err(CertsError::InvalidDns { name: dns.clone() });
        }
    }
    let signed = ClusterCa::load(dir)?.sign(&format!("*.{domain}"), &names, &[], days)?;
    let cert_path = dir.join("router.pem");
    let key_path = dir.join("router-key.pem");
    write_file(&key_path, signed.key_pem.as_bytes(), 0o600)?;
    write_file(&cert_path, signed.cert_pem.as_bytes(), 0o644)?;
    Ok(Written {
        cert: cert_path,
        key: key_path,
        names,
    })
}

/// Checks a new certificate against the CA file, as the scheduler will.
fn verify(
    cert: &CertificateDer<'_>,
    ca_pem: &str,
    ca_path: &Path,
    ca_key_path: &Path,
) -> Result<(), CertsError> {
    use rustls::pki_types::pem::PemObject;
    let mismatch = |source| CertsError::Mismatch {
        ca: ca_path.to_path_buf(),
        key: ca_key_path.to_path_buf(),
        source,
    };
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|_| CertsError::Parse {
        path: ca_path.to_path_buf(),
        what: "CA certificate",
        source: rcgen::Error::CouldNotParseCertificate,
    })?;
    let anchor = webpki::anchor_from_trusted_cert(&ca).map_err(mismatch)?;
    let end_entity = webpki::EndEntityCert::try_from(cert).map_err(mismatch)?;
    let algs = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all;
    end_entity
        .verify_for_usage(
            algs,
            &[anchor],
            &[],
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map(|_| ())
        .map_err(mismatch)
}

fn create_dir(dir: &Path) -> Result<(), CertsError> {
    std::fs::create_dir_all(dir).map_err(|source| CertsError::Write {
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes a file whole (a temporary file renamed over it), with `mode`.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertsError> {
    let err = |source| CertsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    create_dir(dir)?;
    let tmp = dir.join(format!(
        ".{}.{:08x}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("cert"),
        rand::random::<u32>()
    ));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(contents)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path))
        // A rename is durable once its directory is flushed.
        .and_then(|()| match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => std::fs::File::open(dir)?.sync_all(),
            _ => Ok(()),
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(err)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn ca_files_and_refusal_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("pki");
        let ca = create_ca(&d, false, CA_DAYS).unwrap();
        assert_eq!(ca.cert, d.join("ca.pem"));
        assert_eq!(ca.key, d.join("ca-key.pem"));
        assert_eq!(mode(&ca.key), 0o600);
        let pem = std::fs::read_to_string(&ca.cert).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        let err = create_ca(&d, false, CA_DAYS).unwrap_err();
        assert!(
            err.to_string().contains("already exists") && err.to_string().contains("--force"),
            "{err}"
        );
        create_ca(&d, true, CA_DAYS).unwrap();
        assert_ne!(std::fs::read_to_string(&ca.cert).unwrap(), pem);
    }

    #[test]
    fn issued_certificates_chain_to_the_ca_and_name_the_host() {
        let dir = tempfile::tempdir().unwrap();
        create_ca(dir.path(), false, CA_DAYS).unwrap();
        let names = Names {
            dns: vec!["localhost".into()],
            ips: vec!["127.0.0.1".parse().unwrap()],
        };
        let issued = issue(dir.path(), "scheduler", &names, HOST_DAYS).unwrap();
        assert_eq!(issued.cert, dir.path().join("scheduler.pem"));
        assert_eq!(issued.key, dir.path().join("scheduler-key.pem"));
        assert_eq!(issued.names, vec!["scheduler", "localhost", "127.0.0.1"]);
        assert_eq!(mode(&issued.key), 0o600);
        // rustls' own server-side check: the name, the address and the server usage.
        let ca = manifold_tls::load_certs("ca", &dir.path().join("ca.pem")).unwrap();
        let cert = manifold_tls::load_certs("cert", &issued.cert).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca[0].clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        use rustls::client::danger::ServerCertVerifier;
        for name in ["scheduler", "localhost", "127.0.0.1"] {
            let server = rustls::pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&cert[0], &[], &server, &[], UnixTime::now())
                .unwrap();
        }
        let other = rustls::pki_types::ServerName::try_from("elsewhere").unwrap();
        assert!(verifier
            .verify_server_cert(&cert[0], &[], &other, &[], UnixTime::now())
            .is_err());
    }

    #[test]
    fn bad_names_and_a_missing_ca_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = issue(dir.path(), "host-1", &Names::default(), HOST_DAYS).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "no cluster CA in {0}: create it first with `manifold-scheduler certs ca --dir {0}`",
                dir.path().display()
            )
        );
        create_ca(dir.path(), false, CA_DAYS).unwrap();
        for bad in [
            "", "../etc", "a/b", "ca", "ca-key", "web-key", ".hidden", "10.0.0.1", "x y",
        ] {
            let err = issue(dir.path(), bad, &Names::default(), HOST_DAYS).unwrap_err();
            assert!(err.to_string().starts_with("invalid name"), "{bad}: {err}");
        }
        let names = Names {
            dns: vec!["not a name".into()],
            ips: vec![],
        };
        assert!(issue(dir.path(), "h", &names, HOST_DAYS).is_err());
        // The CA is untouched.
        assert!(dir.path().join("ca-key.pem").exists());
        issue(dir.path(), "host_1.example", &Names::default(), HOST_DAYS).unwrap();
    }

    #[test]
    fn a_ca_key_that_is_not_the_cas_is_noticed() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        create_ca(a.path(), false, CA_DAYS).unwrap();
        create_ca(b.path(), false, CA_DAYS).unwrap();
        std::fs::copy(b.path().join("ca-key.pem"), a.path().join("ca-key.pem")).unwrap();
        let err = issue(a.path(), "h1", &Names::default(), HOST_DAYS).unwrap_err();
        assert!(matches!(err, CertsError::Mismatch { .. }), "{err}");
    }

    #[test]
    fn the_router_certificate_names_the_domain_its_wildcard_and_each_app() {
        let dir = tempfile::tempdir().unwrap();
        create_ca(dir.path(), false, CA_DAYS).unwrap();
        let written = issue_router(
            dir.path(),
            "localhost.",
            &["web".into(), "api".into()],
            ROUTER_DAYS,
        )
        .unwrap();
        assert_eq!(
            written.names,
            ["localhost", "*.localhost", "web.localhost", "api.localhost"]
        );
        assert_eq!(mode(&written.key), 0o600);
        let pem = std::fs::read_to_string(&written.cert).unwrap();
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes()).unwrap();
        let cert = webpki::EndEntityCert::try_from(&der).unwrap();
        for name in ["web.localhost", "api.localhost", "localhost"] {
            let name = rustls::pki_types::ServerName::try_from(name).unwrap();
            cert.verify_is_valid_for_subject_name(&name).unwrap();
        }
        let bad = issue_router(dir.path(), "local host", &[], ROUTER_DAYS).unwrap_err();
        assert!(matches!(bad, CertsError::InvalidDns { .. }), "{bad}");
    }
}
