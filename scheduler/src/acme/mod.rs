//! Automated certificates for custom domains, as Heroku ACM does: certificates from an ACME
//! server (RFC 8555, Let's Encrypt or any other), with HTTP-01 challenges answered by the
//! routers, renewed well before they expire.
//!
//! Start at [`service::AcmeService`]: a loop that asks [`service::AutoDomains`] which
//! domains want a certificate and what they have, decides with [`renewal::decide`] (a pure
//! function) which to order now, orders them through an [`service::Issuer`] (the real one is
//! [`order::Acme`]) and hands the outcome to a [`service::CertSink`]. [`order::Acme`] speaks
//! ACME with the `instant-acme` crate (no hand-made JWS), keeps its account through an
//! [`account::AccountStore`] and answers challenges through a [`order::ChallengeBoard`].
//! [`settings`] holds the scheduler's flags (`--acme-directory`, `--acme-contact`,
//! `--acme-ca`).
//!
//! Private keys (the account's, each certificate's) are [`Secret`]s: their `Debug` says
//! `<redacted>` and they have no `Display` nor `Serialize`, so they cannot reach a log line or
//! a `--json` answer by accident.

pub mod account;
pub mod order;
#[cfg(test)]
pub(crate) mod pebble;
pub mod renewal;
pub mod service;
pub mod settings;
#[cfg(test)]
pub(crate) mod testing;

use std::fmt;

/// Text that must stay out of logs and API answers (a private key, account credentials):
/// `{:?}` prints `<redacted>`; the text itself only through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: String) -> Self {
        Self(text)
    }

    /// The secret text, for the store or the TLS config that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why getting a certificate failed. The message says what went wrong and, when the ACME
/// server said why, its problem document's detail and type
/// (`www.example.com: HTTP-01 challenge failed: ... (urn:ietf:params:acme:error:connection)`):
/// it is what `manifold certs` shows the user.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("the ACME directory {directory:?} must be an https:// URL")]
    Directory { directory: String },
    #[error("the ACME contact {contact:?} must be an email address")]
    Contact { contact: String },
    #[error(transparent)]
    CaBundle(#[from] manifold_tls::FileError),
    #[error("cannot set up TLS for the ACME client")]
    Tls(#[source] rustls::Error),
    #[error("{domain:?} cannot have an automated certificate: {why}")]
    Domain { domain: String, why: &'static str },
    #[error("an order needs at least one domain")]
    NoDomains,
    #[error("the stored ACME account for {directory} is unreadable")]
    StoredAccount {
        directory: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot keep the ACME account")]
    Store(#[from] crate::store::StoreError),
    /// The ACME server refused a step or could not be reached; `detail` is its problem
    /// document (detail and type) or the transport's error.
    #[error("ACME server {directory}: {step}: {detail}")]
    Server {
        directory: String,
        step: Step,
        detail: String,
    },
    #[error("{domain}: the ACME server offers no HTTP-01 challenge")]
    NoHttp01 { domain: String },
    /// The ACME server could not check the answer to its challenge for `domain`.
    #[error("{domain}: HTTP-01 challenge failed: {detail}")]
    Challenge { domain: String, detail: String },
    #[error("{domains}: the order became invalid: {detail}")]
    Invalid { domains: String, detail: String },
    #[error("cannot make the certificate's key or signing request")]
    Csr(#[from] rcgen::Error),
    #[error("the certificate the ACME server issued for {domains} is unusable: {why}")]
    Certificate { domains: String, why: String },
}

/// The step of talking to the ACME server that failed, for [`AcmeError::Server`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Directory,
    Account,
    Order,
    Authorization,
    Challenge,
    Validation,
    Finalize,
    Certificate,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Directory => "reading the directory",
            Step::Account => "registering the account",
            Step::Order => "placing the order",
            Step::Authorization => "reading an authorization",
            Step::Challenge => "answering a challenge",
            Step::Validation => "waiting for validation",
            Step::Finalize => "finalizing the order",
            Step::Certificate => "downloading the certificate",
        })
    }
}

/// An ACME problem document (RFC 7807) as one line: `detail (type)`, then its subproblems
/// (one per domain of the order) the same way.
pub(crate) fn describe_problem(problem: &instant_acme::Problem) -> String {
    let mut text = match (&problem.detail, &problem.r#type) {
        (Some(detail), Some(kind)) => format!("{detail} ({kind})"),
        (Some(detail), None) => detail.clone(),
        (None, Some(kind)) => kind.clone(),
        (None, None) => "no detail given".to_string(),
    };
    for sub in &problem.subproblems {
        let detail = sub.detail.as_deref().unwrap_or("no detail given");
        text.push_str(&format!("; {detail}"));
        if let Some(kind) = &sub.r#type {
            text.push_str(&format!(" ({kind})"));
        }
    }
    text
}

/// An `instant-acme` error as one line, with the server's problem document when there is one.
pub(crate) fn describe(err: &instant_acme::Error) -> String {
    match err {
        instant_acme::Error::Api(problem) => describe_problem(problem),
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let secret = Secret::new("-----BEGIN PRIVATE KEY-----\nMIG...".to_string());
        assert_eq!(format!("{secret:?}"), "<redacted>");
        assert!(secret.expose().starts_with("-----BEGIN"));
    }

    #[test]
    fn problems_read_as_detail_then_type() {
        let problem: instant_acme::Problem = serde_json::from_value(serde_json::json!({
            "type": "urn:ietf:params:acme:error:rejectedIdentifier",
            "detail": "Error creating new order",
            "status": 400,
            "subproblems": [{
                "type": "urn:ietf:params:acme:error:malformed",
                "detail": "bad.example: Invalid character in DNS name",
                "identifier": {"type": "dns", "value": "bad.example"}
            }]
        }))
        .expect("a problem document");
        assert_eq!(
            describe_problem(&problem),
            "Error creating new order (urn:ietf:params:acme:error:rejectedIdentifier); \
             bad.example: Invalid character in DNS name (urn:ietf:params:acme:error:malformed)"
        );
    }
}
