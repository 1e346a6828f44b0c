//! The agent's side of its connection to the scheduler: the AgentLink stream (gRPC, dialled
//! by the agent and redialled with backoff for as long as the agent runs) and the blob store
//! (HTTP, same URL and token) that slugs and build sources come from and built slugs go to.
//! With an `https://` URL both speak TLS with [`crate::daemon::tls::ClientTls`].
//!
//! This module only moves messages: [`run`] hands every connection and every message from the
//! scheduler to the daemon as a [`LinkEvent`], and the daemon decides what to send. Who sends
//! what, in which order (`Hello` first), lives in [`crate::daemon`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use manifold_proto::agent_link_client::AgentLinkClient;
use manifold_proto::{AgentMessage, SchedulerMessage};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::daemon::tls::{ClientTls, TlsError};

/// Messages queued for the scheduler while the stream cannot take them. Beyond this the
/// daemon keeps its reports in its outbox ([`crate::daemon::outbox`]) and log lines in their queue.
pub const OUTBOUND_BUFFER: usize = 4096;

/// Where the scheduler is and how to prove who we are.
#[derive(Debug, Clone)]
pub struct Scheduler {
    /// `http(s)://host:port`, without a trailing slash.
    pub url: String,
    pub token: Option<String>,
    /// For an `https://` URL: the roots the scheduler is checked against and this host's
    /// certificate.
    pub tls: Option<Arc<ClientTls>>,
    /// The blob client (with `tls`' roots and certificate).
    http: reqwest::Client,
}

impl Scheduler {
    /// A scheduler at `url`; an `https://` one needs [`Scheduler::with_tls`].
    pub fn new(url: &str, token: Option<String>) -> Self {
        Scheduler {
            url: url.trim_end_matches('/').to_string(),
            token,
            tls: None,
            http: reqwest::Client::new(),
        }
    }

    /// A scheduler at `url` as the agent's flags give it: an `https://` one is checked
    /// against `cluster_ca` (else the system roots), and this host presents `cert` and `key`
    /// when given. The files are read now, so a missing or broken one stops the start; for an
    /// `http://` URL they are an error (they would be ignored).
    pub fn configure(
        url: &str,
        token: Option<String>,
        cluster_ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Scheduler, TlsError> {
        let scheduler = Scheduler::new(url, token);
        if !url.starts_with("https://") {
            if cluster_ca.is_some() || cert.is_some() || key.is_some() {
                return Err(TlsError::NotHttps { url: scheduler.url });
            }
            return Ok(scheduler);
        }
        let tls = ClientTls::load(cluster_ca, cert, key)?;
        if !tls.has_identity() {
            tracing::info!(
                "no --tls-cert: a scheduler that checks agents' certificates (--cluster-ca) refuses this host"
            );
        }
        Ok(scheduler.with_tls(tls))
    }

    /// Speaks TLS with `tls` (for an `https://` URL).
    pub fn with_tls(mut self, tls: ClientTls) -> Self {
        self.http = tls.http();
        self.tls = Some(Arc::new(tls));
        self
    }

    fn bearer(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }
}

/// What happens on the link, as the daemon sees it.
#[derive(Debug)]
pub enum LinkEvent {
    /// A stream is open: send `Hello` on this sender first, then anything else.
    Connected(mpsc::Sender<AgentMessage>),
    Message(SchedulerMessage),
    /// The stream ended or failed; a new one will be dialled.
    Disconnected,
}

/// Errors of one connection attempt or stream.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("invalid scheduler address {url}")]
    Address {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot connect to {url}")]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("invalid token")]
    Token,
    #[error("agent link failed")]
    Stream {
        #[source]
        source: Box<tonic::Status>,
    },
}

/// Redial delays: 100 ms doubling to 5 s, back to 100 ms once a stream was established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    pub fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    /// The delay before the next attempt, after a failed one.
    pub fn failed(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

/// Holds a link to the scheduler until `events`' receiver is dropped: dials, reports the
/// stream, forwards what the scheduler sends, and redials with [`Backoff`] when it ends.
pub async fn run(scheduler: Scheduler, events: mpsc::UnboundedSender<LinkEvent>) {
    let mut backoff = Backoff::new();
    loop {
        match session(&scheduler, &events, &mut backoff).await {
            Ok(()) => tracing::warn!("the scheduler closed the agent link"),
            Err(err) => tracing::warn!("agent link: {}", crate::error::chain(&err)),
        }
        if events.send(LinkEvent::Disconnected).is_err() {
            return;
        }
        tokio::time::sleep(backoff.failed()).await;
    }
}

/// Opens a connection to the scheduler (HTTP/2, on which AgentLink's streams run).
pub async fn dial(scheduler: &Scheduler) -> Result<Channel, LinkError> {
    let endpoint = tonic::transport::Endpoint::from_shared(scheduler.url.clone())
        .map_err(|source| LinkError::Address {
            url: scheduler.url.clone(),
            source,
        })?
        .connect_timeout(Duration::from_secs(5))
        // A scheduler that vanished without closing the connection is noticed in seconds.
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let endpoint = match &scheduler.tls {
        Some(tls) => endpoint
            .tls_config(tls.tonic())
            .map_err(|source| LinkError::Address {
                url: scheduler.url.clone(),
                source,
            })?,
        None => endpoint,
    };
    endpoint
        .connect()
        .await
        .map_err(|source| LinkError::Connect {
            url: scheduler.url.clone(),
            source,
        })
}

/// A request carrying the agent's token.
pub fn request<T>(scheduler: &Scheduler, message: T) -> Result<tonic::Request<T>, LinkError> {
    let mut request = tonic::Request::new(message);
    if let Some(bearer) = scheduler.bearer() {
        let value = bearer.parse().map_err(|_| LinkError::Token)?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

/// One connection: returns when the stream ends.
async fn session(
    scheduler: &Scheduler,
    events: &mpsc::UnboundedSender<LinkEvent>,
    backoff: &mut Backoff,
) -> Result<(), LinkError> {
    let channel = dial(scheduler).await?;
    let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
    // The daemon queues `Hello` before anything else can use the sender.
    if events.send(LinkEvent::Connected(tx)).is_err() {
        return Ok(());
    }
    let request = request(scheduler, ReceiverStream::new(rx))?;
    let stream_err = |status| LinkError::Stream {
        source: Box::new(status),
    };
    let mut inbound = AgentLinkClient::new(channel)
        .link(request)
        .await
        .map_err(stream_err)?
        .into_inner();
    tracing::info!("linked to {}", scheduler.url);
    backoff.reset();
    while let Some(message) = inbound.message().await.map_err(stream_err)? {
        if events.send(LinkEvent::Message(message)).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Errors moving blobs.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("invalid blob digest {sha256:?}")]
    Digest { sha256: String },
    #[error("blob {sha256}: request failed")]
    Http {
        sha256: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("blob {sha256}: the scheduler answered {status}")]
    Status {
        sha256: String,
        status: reqwest::StatusCode,
    },
    #[error("blob {sha256}: got content with sha256 {actual}")]
    Checksum { sha256: String, actual: String },
    #[error("blob file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The scheduler's content-addressed blob store.
#[derive(Debug, Clone)]
pub struct Blobs {
    scheduler: Scheduler,
    /// The host id sent as `Manifold-Host`, which a scheduler checking certificates matches
    /// against ours.
    host: Option<String>,
}

impl Blobs {
    pub fn new(scheduler: Scheduler) -> Self {
        Blobs {
            scheduler,
            host: None,
        }
    }

    /// Names this host on every request.
    pub fn for_host(mut self, host_id: &str) -> Self {
        self.host = Some(host_id.to_string());
        self
    }

    fn url(&self, sha256: &str) -> String {
        format!("{}/agent/v1/blobs/{sha256}", self.scheduler.url)
    }

    fn authorize(&self, mut request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some(host) = &self.host {
            request = request.header("manifold-host", host);
        }
        match self.scheduler.bearer() {
            Some(bearer) => request.header(reqwest::header::AUTHORIZATION, bearer),
            None => request,
        }
    }

    /// Downloads blob `sha256` to `DIR/{sha256}.tgz` unless it is there, verifying its digest;
    /// a temporary file and a rename mean a crash never leaves half a blob under that name.
    pub async fn fetch(&self, sha256: &str, dir: &Path) -> Result<PathBuf, BlobError> {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BlobError::Digest {
                sha256: sha256.to_string(),
            });
        }
        let path = dir.join(format!("{sha256}.tgz"));
        if path.is_file() {
            // Marks it as used now: the slug collection (`gc`) keeps what was used lately.
            let touched = std::fs::File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(std::time::SystemTime::now()));
            if touched.is_ok() {
                return Ok(path);
            }
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BlobError::Io { path, source }
        };
        tokio::fs::create_dir_all(dir).await.map_err(io(dir))?;
        let http = |source| BlobError::Http {
            sha256: sha256.to_string(),
            source,
        };
        let mut response = self
            .authorize(self.scheduler.http.get(self.url(sha256)))
            .send()
            .await
            .map_err(http)?;
        if !response.status().is_success() {
            return Err(BlobError::Status {
                sha256: sha256.to_string(),
                status: response.status(),
            });
        }
        let tmp = dir.join(format!(".{sha256}.{:08x}.tmp", rand::random::<u32>()));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await.map_err(io(&tmp))?;
            let mut hasher = sha2::Sha256::new();
            while let Some(chunk) = response.chunk().await.map_err(http)? {
                hasher.update(&chunk);
                file.write_all(&chunk).await.map_err(io(&tmp))?;
            }
            file.sync_all().await.map_err(io(&tmp))?;
            let actual: String = hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if actual != sha256.to_ascii_lowercase() {
                return Err(BlobError::Checksum {
                    sha256: sha256.to_string(),
                    actual,
                });
            }
            tokio::fs::rename(&tmp, &path).await.map_err(io(&path))?;
            // Flush the directory too, or a power loss can take the rename back.
            tokio::fs::File::open(dir)
                .await
                .map_err(io(dir))?
                .sync_all()
                .await
                .map_err(io(dir))
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result.map(|()| path)
    }

    /// Uploads `size` bytes of `file` (from its current position) as blob `sha256`, which
    /// the caller computed; the body is streamed, never held in memory, and the scheduler
    /// checks the digest of what it receives.
    pub async fn upload(
        &self,
        file: std::fs::File,
        size: u64,
        sha256: &str,
    ) -> Result<(), BlobError> {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BlobError::Digest {
                sha256: sha256.to_string(),
            });
        }
        let body = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file).take(size));
        let response = self
            .authorize(self.scheduler.http.put(self.url(sha256)))
            .header(reqwest::header::CONTENT_LENGTH, size)
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .map_err(|source| BlobError::Http {
                sha256: sha256.to_string(),
                source,
            })?;
        if !response.status().is_success() {
            return Err(BlobError::Status {
                sha256: sha256.to_string(),
                status: response.status(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_five_seconds_and_resets() {
        let mut b = Backoff::new();
        let delays: Vec<_> = (0..9).map(|_| b.failed().as_millis()).collect();
        assert_eq!(
            delays,
            vec![100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]
        );
        b.reset();
        assert_eq!(b.failed(), Duration::from_millis(100));
    }
}
