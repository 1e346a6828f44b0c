//! HTTP client for the scheduler's REST API (scheduler/API.md) and the types it returns.
//!
//! The types are deliberately lenient (`#[serde(default)]` everywhere): the CLI only needs a
//! few fields to render its tables, and a missing or renamed field on the server should
//! degrade one column rather than make a whole command fail.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{anyhow, bail, Context, Result};
use manifold_endpoints::Endpoints;
use reqwest::header::{
    HeaderMap, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, UPGRADE,
};
use reqwest::{Method, Response, StatusCode, Upgraded};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::leader::{self, Resend};

/// Where the API listens when `MANIFOLD_API` is unset (scheduler/API.md).
pub const DEFAULT_API: &str = "http://127.0.0.1:8750";
/// Token file the scheduler writes on first start; readable by root / the admin group.
pub const DEFAULT_TOKEN_FILE: &str = "/var/lib/manifold-scheduler/api-token";

/// Connection settings, resolved once from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The schedulers' APIs (`MANIFOLD_API`, comma-separated): requests go to the leader.
    pub apis: Endpoints,
    pub token: Option<String>,
    pub user: String,
    /// A CA (PEM) an https:// API is also checked against, besides the system roots.
    pub ca: Option<PathBuf>,
}

impl Settings {
    /// Reads `MANIFOLD_API` (one URL or several, comma-separated), `MANIFOLD_API_TOKEN` (or
    /// a token file), `MANIFOLD_CA` and `$USER`.
    pub fn from_env() -> Result<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let apis = var("MANIFOLD_API").unwrap_or_else(|| DEFAULT_API.to_string());
        Ok(Settings {
            apis: Endpoints::parse(&apis).context("MANIFOLD_API")?,
            token: resolve_token(var("MANIFOLD_API_TOKEN"), var("MANIFOLD_API_TOKEN_FILE")),
            user: var("USER").unwrap_or_else(|| "admin".to_string()),
            ca: var("MANIFOLD_CA").map(PathBuf::from),
        })
    }

    /// Trusts `ca` (`--ca`) instead of `MANIFOLD_CA`, when given.
    pub fn with_ca(mut self, ca: Option<PathBuf>) -> Self {
        if ca.is_some() {
            self.ca = ca;
        }
        self
    }
}

/// The TLS client setup for an https:// API: the system roots plus `ca`. The ring provider
/// is named so the choice does not hang on other crates' rustls features.
fn tls_config(ca: Option<&Path>) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = ca {
        let what = || format!("the CA {} (MANIFOLD_CA, --ca)", path.display());
        let pem = std::fs::read(path).with_context(|| format!("cannot read {}", what()))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{} is not PEM", what()))?;
        if certs.is_empty() {
            bail!("{} holds no certificate", what());
        }
        for cert in certs {
            roots
                .add(cert)
                .with_context(|| format!("{} is not a usable CA certificate", what()))?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("cannot set up TLS")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // HTTP/1.1 only: reqwest is built without HTTP/2, and attach upgrades need HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The TLS error under a transport error, if the failure was TLS.
fn tls_failure<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // tokio-rustls wraps it in an io::Error (and hyper-rustls that in another), whose
        // `source()` skips the error it wraps: look inside.
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// The token comes from the environment first, then from the named file, then from the
/// scheduler's default token file, so that an admin on the scheduler host needs no setup.
pub fn resolve_token(env_token: Option<String>, token_file: Option<String>) -> Option<String> {
    if let Some(t) = env_token {
        return Some(t.trim().to_string());
    }
    let file = token_file.unwrap_or_else(|| DEFAULT_TOKEN_FILE.to_string());
    first_line(Path::new(&file))
}

fn first_line(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_string())
}

/// Turns a non-2xx response into the one-line message the user sees after `manifold: `.
pub fn error_message(status: StatusCode, body: &str) -> String {
    if status == StatusCode::UNAUTHORIZED {
        return "the API refused the token: set MANIFOLD_API_TOKEN".to_string();
    }
    let from_json = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string));
    match from_json {
        Some(m) if !m.is_empty() => m,
        _ => {
            let body = body.trim();
            if body.is_empty() {
                format!("the API answered {status}")
            } else {
                let snippet: String = body.chars().take(200).collect();
                format!("the API answered {status}: {snippet}")
            }
        }
    }
}

/// Message for a request that never got an answer.
pub fn transport_message(base: &str, err: &reqwest::Error) -> String {
    if let Some(tls) = tls_failure(err) {
        return match tls {
            rustls::Error::InvalidCertificate(_) => format!(
                "the Manifold API at {base} presented a certificate this machine does not trust ({tls}): set MANIFOLD_CA (or --ca) to the cluster CA, e.g. ca.pem"
            ),
            _ => format!("TLS with the Manifold API at {base} failed: {tls}"),
        };
    }
    if err.is_connect() {
        format!("cannot reach the Manifold API at {base}: is manifold-scheduler running? (set MANIFOLD_API)")
    } else {
        format!("request to the Manifold API at {base} failed: {err}")
    }
}

/// A decoded answer: the JSON body plus the headers (for `Manifold-Release`).
#[derive(Debug)]
pub struct Reply {
    pub body: Value,
    pub headers: HeaderMap,
}

impl Reply {
    /// Decodes the body into a typed value; the raw JSON stays available for `--json`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.body.clone()).context("unexpected answer from the API")
    }

    /// The release a config change created, from the `Manifold-Release` header.
    pub fn release_version(&self) -> Option<u64> {
        self.headers
            .get("Manifold-Release")?
            .to_str()
            .ok()?
            .trim()
            .trim_start_matches('v')
            .parse()
            .ok()
    }
}

/// Thin wrapper over reqwest that adds auth headers, sends to the leader among the APIs
/// ([`leader`]) and maps errors to user messages.
#[derive(Debug, Clone)]
pub struct Client {
    settings: Settings,
    http: reqwest::Client,
    /// Which API is tried next (the leader once one answered).
    apis: Arc<Mutex<Endpoints>>,
}

impl Client {
    pub fn new(settings: Settings) -> Result<Self> {
        let mut http = reqwest::Client::builder()
            .user_agent(concat!("manifold-cli/", env!("CARGO_PKG_VERSION")));
        if settings.apis.is_https() || settings.ca.is_some() {
            http = http.use_preconfigured_tls(tls_config(settings.ca.as_deref())?);
        }
        let http = http.build().context("cannot set up the HTTP client")?;
        let apis = Arc::new(Mutex::new(settings.apis.clone()));
        Ok(Client {
            settings,
            http,
            apis,
        })
    }

    /// The settings the client was made with (its token, its CA).
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The API requests go to now (the leader, once one answered).
    pub fn base(&self) -> String {
        self.apis
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .current()
            .to_string()
    }

    /// Absolute URL for an API path (`/apps/x`) at `base`; absolute URLs pass through
    /// unchanged so a server may hand out full `output_stream_url`s later.
    fn url_at(base: &str, path: &str) -> String {
        if is_absolute(path) {
            path.to_string()
        } else {
            format!("{base}{path}")
        }
    }

    fn builder(&self, method: Method, base: &str, path: &str) -> reqwest::RequestBuilder {
        let url = Self::url_at(base, path);
        let ours = self
            .apis
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .knows(&url);
        let mut b = self
            .http
            .request(method, url)
            .header("Manifold-User", &self.settings.user)
            .header("Accept", "application/json");
        // A URL the server handed out (`output_stream_url`) may point anywhere: the token
        // goes only to the APIs of MANIFOLD_API (and the leader they name).
        if let Some(t) = self.settings.token.as_ref().filter(|_| ours) {
            b = b.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        b
    }

    /// Sends `path` as built by `build` (once per attempt) to the leader; an absolute URL
    /// goes where it says, once. The answer may have any status.
    async fn answer(
        &self,
        method: Method,
        path: &str,
        build: impl Fn(reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder, String>,
    ) -> Result<Response, String> {
        if is_absolute(path) {
            let request = build(self.builder(method, path, path))?;
            return request
                .send()
                .await
                .map_err(|e| transport_message(path, &e));
        }
        let resend = match method {
            Method::GET => Resend::Always,
            _ => Resend::IfUnsent,
        };
        leader::send(&self.apis, resend, |base| {
            build(self.builder(method.clone(), base, path))
        })
        .await
    }

    /// Sends a request and fails with the API's message on a non-2xx status.
    async fn send(
        &self,
        method: Method,
        path: &str,
        build: impl Fn(reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder, String>,
    ) -> Result<Response> {
        let resp = self
            .answer(method, path, build)
            .await
            .map_err(|m| anyhow!(m))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        bail!(error_message(status, &body))
    }

    async fn reply(
        &self,
        method: Method,
        path: &str,
        build: impl Fn(reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder, String>,
    ) -> Result<Reply> {
        let resp = self.send(method, path, build).await?;
        let headers = resp.headers().clone();
        let text = resp
            .text()
            .await
            .map_err(|e| anyhow!(transport_message(&self.base(), &e)))?;
        // 202s (restart, stop) may come back empty; treat that as `{}`.
        let body = if text.trim().is_empty() {
            Value::Object(Default::default())
        } else {
            serde_json::from_str(&text).context("the API answered something that is not JSON")?
        };
        Ok(Reply { body, headers })
    }

    pub async fn get(&self, path: &str) -> Result<Reply> {
        self.reply(Method::GET, path, Ok).await
    }

    pub async fn delete(&self, path: &str) -> Result<Reply> {
        self.reply(Method::DELETE, path, Ok).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Reply> {
        self.reply(Method::POST, path, |b| Ok(b.json(body))).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Reply> {
        self.reply(Method::PUT, path, |b| Ok(b.json(body))).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Result<Reply> {
        self.reply(Method::PATCH, path, |b| Ok(b.json(body))).await
    }

    /// Uploads a source tarball to build; see [`Client::post_source`].
    pub async fn post_build(
        &self,
        app: &str,
        buildpacks: &[String],
        tarball: std::fs::File,
        len: u64,
    ) -> Result<Reply> {
        let query: Vec<(&str, &str)> = buildpacks
            .iter()
            .map(|b| ("buildpack", b.as_str()))
            .collect();
        self.post_source(&format!("/apps/{app}/builds"), &query, tarball, len)
            .await
    }

    /// POSTs nothing (`Content-Length: 0`) to `path` with `query`.
    pub async fn post_query(&self, path: &str, query: &[(&str, &str)]) -> Result<Reply> {
        self.reply(Method::POST, path, |b| {
            Ok(b.query(query).header(CONTENT_LENGTH, 0).body(""))
        })
        .await
    }

    /// POSTs a source tarball to `path` with `query`; the file is streamed, not read into
    /// memory, and streamed again from its start when a follower refused it.
    pub async fn post_source(
        &self,
        path: &str,
        query: &[(&str, &str)],
        tarball: std::fs::File,
        len: u64,
    ) -> Result<Reply> {
        use std::os::fd::AsRawFd;
        self.reply(Method::POST, path, |b| {
            // Each attempt opens the archive anew, with an offset of its own: a clone would
            // share one offset, and an abandoned attempt still reading (a follower's refusal
            // arrives while the body streams) would move the resend's. Through /proc, so an
            // unlinked temporary file opens too.
            let file = std::fs::File::open(format!("/proc/self/fd/{}", tarball.as_raw_fd()))
                .map_err(|e| format!("cannot read the source archive again to send it: {e}"))?;
            Ok(b.query(query)
                .header(CONTENT_TYPE, "application/gzip")
                .header(CONTENT_LENGTH, len)
                .body(tokio::fs::File::from_std(file)))
        })
        .await
    }

    /// Opens a streamed text response (build output).
    pub async fn stream(&self, path: &str) -> Result<Response> {
        self.send(Method::GET, path, Ok).await
    }

    /// `GET path` as an HTTP/1.1 upgrade to `protocol`: on `101 Switching Protocols`, the
    /// connection, which then carries that protocol both ways.
    pub async fn upgrade(&self, path: &str, protocol: &str) -> Result<Upgraded, UpgradeError> {
        let resp = self
            .answer(Method::GET, path, |b| {
                Ok(b.header(CONNECTION, "Upgrade").header(UPGRADE, protocol))
            })
            .await
            .map_err(UpgradeError::Transport)?;
        let status = resp.status();
        if status != StatusCode::SWITCHING_PROTOCOLS {
            let body = resp.text().await.unwrap_or_default();
            return Err(UpgradeError::Refused {
                status,
                message: error_message(status, &body),
            });
        }
        resp.upgrade()
            .await
            .map_err(|e| UpgradeError::Transport(transport_message(&self.base(), &e)))
    }
}

/// Whether `path` is a whole URL rather than an API path.
fn is_absolute(path: &str) -> bool {
    path.starts_with("http://") || path.starts_with("https://")
}

/// Why [`Client::upgrade`] has no connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    /// No answer: the server is unreachable or the connection broke.
    #[error("{0}")]
    Transport(String),
    /// The server answered something else than `101`.
    #[error("{message}")]
    Refused { status: StatusCode, message: String },
}

impl UpgradeError {
    /// Whether trying again may work: no answer, or a gateway or an overloaded server in
    /// between. Any other answer is the server's final word.
    pub fn is_transient(&self) -> bool {
        match self {
            UpgradeError::Transport(_) => true,
            UpgradeError::Refused { status, .. } => matches!(
                *status,
                StatusCode::BAD_GATEWAY
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT
            ),
        }
    }
}

/// `{"version": N}` as embedded in apps, builds and dynos.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct VersionRef {
    #[serde(default)]
    pub version: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NameRef {
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct UserRef {
    #[serde(default)]
    pub email: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct App {
    pub name: String,
    pub stack: NameRef,
    pub created_at: String,
    pub released_at: Option<String>,
    pub current_release: Option<VersionRef>,
    pub boot_timeout: Option<u64>,
    pub stop_timeout: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SourceBlob {
    pub checksum: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Build {
    pub id: String,
    pub status: String,
    pub source_blob: SourceBlob,
    pub output_stream_url: String,
    pub release: Option<VersionRef>,
    pub created_at: String,
    pub user: UserRef,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Slug {
    pub id: String,
    pub checksum: String,
    pub process_types: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Release {
    pub version: u64,
    pub description: String,
    pub status: String,
    pub current: bool,
    pub slug: Option<Slug>,
    pub user: UserRef,
    pub created_at: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Formation {
    #[serde(rename = "type")]
    pub kind: String,
    pub quantity: u32,
    pub size: String,
    pub command: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct HostRef {
    pub id: String,
    pub address: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Dyno {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub state: String,
    pub size: String,
    pub command: String,
    pub host: Option<HostRef>,
    pub port: Option<u16>,
    pub updated_at: String,
    /// Where to attach to a one-off started with `"attach": true` (only in the `POST`'s
    /// answer): an API path with the session's secret.
    pub attach_url: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Host {
    pub id: String,
    pub address: String,
    pub state: String,
    pub memory_bytes: u64,
    pub memory_used: u64,
    pub dyno_slots: u64,
    pub dynos: u64,
    pub stacks: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base: &str) -> Client {
        Client::new(Settings {
            apis: Endpoints::parse(base).expect("url"),
            token: Some("secret".to_string()),
            user: "me".to_string(),
            ca: None,
        })
        .expect("client")
    }

    fn token_sent(c: &Client, path: &str) -> bool {
        let req = c
            .builder(Method::GET, &c.base(), path)
            .build()
            .expect("request");
        // (A URL with credentials gets reqwest's own Basic header: only ours matters.)
        req.headers()
            .get_all(AUTHORIZATION)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.contains("secret")))
    }

    #[test]
    fn the_token_goes_only_to_the_apis_origin() {
        let c = client("http://10.0.0.1:8750");
        assert!(token_sent(&c, "/apps/a/builds/1/output"));
        assert!(token_sent(
            &c,
            "http://10.0.0.1:8750/apps/a/builds/1/output"
        ));
        for elsewhere in [
            "http://evil.example/steal",
            "http://10.0.0.1:9999/apps",
            "https://10.0.0.1:8750/apps",
            "http://10.0.0.1.evil.example:8750/apps",
            "http://10.0.0.1:8750@evil.example/apps",
        ] {
            assert!(!token_sent(&c, elsewhere), "token sent to {elsewhere}");
        }
        // The default port is the same origin, written or not.
        let c = client("https://api.example");
        assert!(token_sent(&c, "https://api.example:443/apps"));
        assert!(!token_sent(&c, "http://api.example/apps"));
    }

    #[test]
    fn error_message_uses_api_message() {
        let body = r#"{"id":"not_found","message":"app nope not found"}"#;
        assert_eq!(
            error_message(StatusCode::NOT_FOUND, body),
            "app nope not found"
        );
    }

    #[test]
    fn error_message_401_points_at_token() {
        let body = r#"{"id":"unauthorized","message":"bad token"}"#;
        assert_eq!(
            error_message(StatusCode::UNAUTHORIZED, body),
            "the API refused the token: set MANIFOLD_API_TOKEN"
        );
    }

    #[test]
    fn error_message_without_json_names_status() {
        assert_eq!(
            error_message(StatusCode::BAD_GATEWAY, "upstream down\n"),
            "the API answered 502 Bad Gateway: upstream down"
        );
        assert_eq!(
            error_message(StatusCode::INTERNAL_SERVER_ERROR, ""),
            "the API answered 500 Internal Server Error"
        );
    }

    #[tokio::test]
    async fn connection_refused_is_explained() {
        // Bind then drop a listener to get a port nobody listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let base = format!("http://127.0.0.1:{port}");
        let err = reqwest::get(format!("{base}/apps"))
            .await
            .expect_err("nothing listens");
        assert_eq!(
            transport_message(&base, &err),
            format!("cannot reach the Manifold API at {base}: is manifold-scheduler running? (set MANIFOLD_API)")
        );
    }

    #[test]
    fn tls_failures_are_found_inside_io_errors() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        // As hyper-rustls hands it on: an io::Error around tokio-rustls' io::Error.
        let wrapped = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            tls.clone(),
        ));
        assert_eq!(tls_failure(&wrapped), Some(&tls));
        let plain = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(tls_failure(&plain), None);
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let err = tls_config(Some(Path::new("/nonexistent/ca.pem"))).expect_err("no such file");
        assert_eq!(
            err.to_string(),
            "cannot read the CA /nonexistent/ca.pem (MANIFOLD_CA, --ca)"
        );
    }

    #[test]
    fn token_resolution_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\nsecond line\n").expect("write");
        let file = file.to_string_lossy().to_string();
        assert_eq!(
            resolve_token(Some("env".into()), Some(file.clone())),
            Some("env".into())
        );
        assert_eq!(resolve_token(None, Some(file)), Some("from-file".into()));
        let missing = dir.path().join("missing").to_string_lossy().to_string();
        assert_eq!(resolve_token(None, Some(missing)), None);
    }

    #[test]
    fn release_header_parsed() {
        let mut headers = HeaderMap::new();
        headers.insert("Manifold-Release", "3".parse().expect("header"));
        let r = Reply {
            body: Value::Null,
            headers,
        };
        assert_eq!(r.release_version(), Some(3));
    }
}
