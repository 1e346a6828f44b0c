//! Custom domain names: what `domains:add` accepts. Strict, because a name is routed to an
//! app and put in certificates: DNS names of letters, digits and hyphens only, never the
//! cluster's own domain (its names are `APP.DOMAIN`, given by app names).

/// Why a name cannot be a custom domain. Each message names the domain and says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostnameError {
    #[error("invalid domain {name:?}: {why}")]
    Invalid { name: String, why: &'static str },
    #[error("{name} is under the cluster's own domain {domain}: apps are reached as APP.{domain} without adding a domain")]
    ClusterDomain { name: String, domain: String },
}

/// Longest DNS name (RFC 1035), without the trailing dot.
const MAX_NAME: usize = 253;
const MAX_LABEL: usize = 63;

/// The name `given` as stored (lowercase, no trailing dot), or why it cannot be a domain.
pub fn check_hostname(given: &str, cluster_domain: &str) -> Result<String, HostnameError> {
    let invalid = |why| HostnameError::Invalid {
        name: given.chars().take(MAX_NAME + 10).collect(),
        why,
    };
    let name = given
        .strip_suffix('.')
        .unwrap_or(given)
        .to_ascii_lowercase();
    if name.is_empty() {
        return Err(invalid("empty"));
    }
    if name.len() > MAX_NAME {
        return Err(invalid("longer than 253 characters"));
    }
    if name.starts_with("*.") {
        return Err(invalid(
            "wildcard domains are not supported: add each name (www.example.com)",
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(invalid(
            "only letters, digits, '-' and '.' (write internationalized names in punycode, xn--…)",
        ));
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 2 {
        return Err(invalid("a domain needs at least two labels (example.com)"));
    }
    for label in &labels {
        if label.is_empty() {
            return Err(invalid("empty label (two dots in a row, or a leading dot)"));
        }
        if label.len() > MAX_LABEL {
            return Err(invalid("a label is longer than 63 characters"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid("a label starts or ends with '-'"));
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(invalid(
            "an IP address or a numeric top-level label is not a domain",
        ));
    }
    let domain = cluster_domain.trim_matches('.').to_ascii_lowercase();
    if name == domain || name.ends_with(&format!(".{domain}")) {
        return Err(HostnameError::ClusterDomain { name, domain });
    }
    Ok(name)
}

/// Whether a certificate name (`www.example.com` or `*.example.com`) covers `host`.
pub fn covers(cert_name: &str, host: &str) -> bool {
    let cert_name = cert_name.to_ascii_lowercase();
    match cert_name.strip_prefix("*.") {
        Some(parent) => host.split_once('.').is_some_and(|(_, rest)| rest == parent),
        None => cert_name == host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_are_normalized() {
        assert_eq!(
            check_hostname("WWW.Example.COM.", "localhost"),
            Ok("www.example.com".into())
        );
        assert_eq!(
            check_hostname("xn--bcher-kva.example", "localhost"),
            Ok("xn--bcher-kva.example".into())
        );
    }

    #[test]
    fn bad_names_say_what_is_wrong() {
        let why = |name: &str| match check_hostname(name, "apps.example.net") {
            Err(HostnameError::Invalid { why, .. }) => why,
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(why(""), "empty");
        assert!(why("localhost").contains("two labels"));
        assert!(why("a..example.com").contains("empty label"));
        assert!(why(".example.com").contains("empty label"));
        assert!(why("-a.example.com").contains("'-'"));
        assert!(why("a_b.example.com").contains("only letters"));
        assert!(why("www.example.com/x").contains("only letters"));
        assert!(why("bücher.example").contains("punycode"));
        assert!(why("127.0.0.1").contains("IP address"));
        assert!(why("*.example.com").contains("wildcard"));
        assert!(why(&format!("{}.com", "a".repeat(64))).contains("63"));
        assert!(why(&format!("{}com", "abcdefghi.".repeat(26))).contains("253"));
        let cluster = check_hostname("myapp.apps.example.net", "apps.example.net");
        assert!(
            matches!(cluster, Err(HostnameError::ClusterDomain { .. })),
            "{cluster:?}"
        );
        assert!(check_hostname("apps.example.net", "apps.example.net").is_err());
        assert!(check_hostname("xapps.example.net", "apps.example.net").is_ok());
    }

    #[test]
    fn wildcards_cover_one_label() {
        assert!(covers("*.example.com", "www.example.com"));
        assert!(!covers("*.example.com", "a.b.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(covers("WWW.example.com", "www.example.com"));
    }
}
