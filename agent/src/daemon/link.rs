//! The agent's side of its connection to the scheduler: the AgentLink stream (gRPC, dialled
//! by the agent and redialled for as long as the agent runs) and the blob store (HTTP, same
//! URL and token) that slugs and build sources come from and built slugs go to. With
//! `https://` URLs both speak TLS with [`crate::daemon::tls::ClientTls`].
//!
//! The agent knows every scheduler replica ([`Endpoints`]): the link dials the next one when
//! the current one is unreachable, refuses as a follower (`unavailable`, naming the leader in
//! `manifold-leader`, which is dialled next) or drops the stream. Blobs go to the replica the
//! link last reached (any replica serves them). Nothing about a dyno depends on which
//! replica is linked: after a failover the new leader gets the same `Hello`, with every
//! dyno this host runs, and answers with the assignments the replicas share.
//!
//! This module only moves messages: [`run`] hands every connection and every message from the
//! scheduler to the daemon as a [`LinkEvent`], and the daemon decides what to send. Who sends
//! what, in which order (`Hello` first), lives in [`crate::daemon`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use manifold_endpoints::{EndpointError, Endpoints, LEADER_HEADER};
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

/// Where the schedulers are and how to prove who we are.
#[derive(Debug, Clone)]
pub struct Scheduler {
    /// Every replica; clones share which one last worked.
    pub endpoints: Endpoints,
    pub token: Option<String>,
    /// For `https://` URLs: the roots the schedulers are checked against and this host's
    /// certificate.
    pub tls: Option<Arc<ClientTls>>,
    /// The blob client (with `tls`' roots and certificate).
    http: reqwest::Client,
}

/// Errors in the agent's scheduler settings.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("--scheduler (MANIFOLD_SCHEDULER)")]
    Endpoints(#[from] EndpointError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl Scheduler {
    /// The schedulers at `endpoints`; `https://` ones need [`Scheduler::with_tls`].
    pub fn new(endpoints: Endpoints, token: Option<String>) -> Self {
        Scheduler {
            endpoints,
            token,
            tls: None,
            http: reqwest::Client::new(),
        }
    }

    /// The schedulers at `urls` (comma-separated) as the agent's flags give them: `https://`
    /// ones are checked against `cluster_ca` (else the system roots), and this host presents
    /// `cert` and `key` when given. The files are read now, so a missing or broken one stops
    /// the start; for `http://` URLs they are an error (they would be ignored).
    pub fn configure(
        urls: &str,
        token: Option<String>,
        cluster_ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Scheduler, SchedulerError> {
        let scheduler = Scheduler::new(Endpoints::parse(urls)?, token);
        if !scheduler.endpoints.is_https() {
            if cluster_ca.is_some() || cert.is_some() || key.is_some() {
                return Err(TlsError::NotHttps {
                    url: urls.to_string(),
                }
                .into());
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

    /// Speaks TLS with `tls` (for `https://` URLs).
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

/// The leader a refusing scheduler named (`unavailable` with [`LEADER_HEADER`]), checked
/// against `endpoints`; a bad name is logged and ignored.
pub fn named_leader(endpoints: &Endpoints, status: &tonic::Status) -> Option<String> {
    if status.code() != tonic::Code::Unavailable {
        return None;
    }
    endpoints.named_leader(status.metadata().get(LEADER_HEADER)?.as_bytes())
}

/// How one [`session`] went.
#[derive(Debug)]
enum Session {
    /// No stream: the scheduler was unreachable or refused (a follower names the leader).
    Refused(LinkError),
    /// A stream was open, and ended (cleanly or not).
    Ended(Result<(), LinkError>),
}

/// Holds a link to a scheduler until `events`' receiver is dropped: dials, reports the
/// stream, forwards what the scheduler sends, and when it ends or fails, dials the next
/// candidate of [`Endpoints`] (after its pause).
pub async fn run(scheduler: Scheduler, events: mpsc::UnboundedSender<LinkEvent>) {
    let mut endpoints = scheduler.endpoints.fresh();
    loop {
        let url = endpoints.current().to_string();
        let pause = match session(&scheduler, &url, &events, &mut endpoints).await {
            Session::Ended(Ok(())) => {
                tracing::warn!("{url} closed the agent link");
                endpoints.dropped()
            }
            Session::Ended(Err(err)) => {
                tracing::warn!("agent link to {url}: {}", crate::error::chain(&err));
                endpoints.dropped()
            }
            Session::Refused(err) => {
                tracing::warn!("agent link to {url}: {}", crate::error::chain(&err));
                let leader = match &err {
                    LinkError::Stream { source } => named_leader(&endpoints, source),
                    _ => None,
                };
                endpoints.failed(leader)
            }
        };
        if events.send(LinkEvent::Disconnected).is_err() {
            return;
        }
        tokio::time::sleep(pause).await;
    }
}

/// Opens a connection to the scheduler at `url` (HTTP/2, on which AgentLink's streams run).
pub async fn dial(scheduler: &Scheduler, url: &str) -> Result<Channel, LinkError> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|source| LinkError::Address {
            url: url.to_string(),
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
                url: url.to_string(),
                source,
            })?,
        None => endpoint,
    };
    endpoint
        .connect()
        .await
        .map_err(|source| LinkError::Connect {
            url: url.to_string(),
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

/// One connection to `url`: returns when the stream ends, or when there is none.
async fn session(
    scheduler: &Scheduler,
    url: &str,
    events: &mpsc::UnboundedSender<LinkEvent>,
    endpoints: &mut Endpoints,
) -> Session {
    let channel = match dial(scheduler, url).await {
        Ok(channel) => channel,
        Err(err) => return Session::Refused(err),
    };
    let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
    // The daemon queues `Hello` before anything else can use the sender.
    if events.send(LinkEvent::Connected(tx)).is_err() {
        return Session::Ended(Ok(()));
    }
    let request = match request(scheduler, ReceiverStream::new(rx)) {
        Ok(request) => request,
        Err(err) => return Session::Refused(err),
    };
    let stream_err = |status| LinkError::Stream {
        source: Box::new(status),
    };
    let mut inbound = match AgentLinkClient::new(channel).link(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Session::Refused(stream_err(status)),
    };
    tracing::info!("linked to {url}");
    endpoints.succeeded();
    Session::Ended(
        async {
            while let Some(message) = inbound.message().await.map_err(stream_err)? {
                if events.send(LinkEvent::Message(message)).is_err() {
                    return Ok(());
                }
            }
            Ok(())
        }
        .await,
    )
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

    /// At the replica the link last reached: any replica serves blobs.
    fn url(&self, sha256: &str) -> String {
        format!(
            "{}/agent/v1/blobs/{sha256}",
            self.scheduler.endpoints.leader()
        )
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
