//! The one slug of the simulation. Apps get releases the cheapest real way: one app is built
//! through the API (`POST /apps/{app}/builds` with a tiny source), a simulated agent answers
//! the build request by uploading this slug to the blob store and reporting its `slug.json`
//! (as an agent does once its slugbuilder is done), and a pipeline promotion copies that
//! release to every other app. No agent ever fetches the slug: nothing runs.

use std::collections::BTreeMap;

use anyhow::Context as _;
use manifold_dyno::slug::SlugMetadata;
use sha2::Digest;

use crate::agent::{Link, SimHost};

/// The process type every simulated app scales.
pub const PROCESS: &str = "web";

/// A gzipped tarball with one file: the source sent to the build, and the slug.
#[derive(Debug, Clone)]
pub struct Slug {
    pub bytes: Vec<u8>,
    pub sha256: String,
}

impl Slug {
    pub fn new() -> anyhow::Result<Slug> {
        let procfile = format!("{PROCESS}: sim-web --port $PORT\n");
        let mut archive = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::default(),
        ));
        let mut header = tar::Header::new_gnu();
        header.set_size(procfile.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        archive.append_data(&mut header, "app/Procfile", procfile.as_bytes())?;
        let bytes = archive.into_inner()?.finish()?;
        let sha256 = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Slug { bytes, sha256 })
    }

    /// The `slug.json` a slugbuilder would have written for this slug on `stack`.
    pub fn metadata(&self, stack: &str) -> anyhow::Result<String> {
        let metadata = SlugMetadata {
            process_types: BTreeMap::from([(
                PROCESS.to_string(),
                "sim-web --port $PORT".to_string(),
            )]),
            buildpacks: Vec::new(),
            stack: stack.to_string(),
            commit: None,
            sha256: self.sha256.clone(),
            size: self.bytes.len() as u64,
            duration_ms: 0,
            config_vars: BTreeMap::new(),
            addons: Vec::new(),
        };
        Ok(serde_json::to_string(&metadata)?)
    }
}

/// Uploads the slug as one host, over the blob store's HTTPS with that host's certificate
/// and the agent token (`PUT /agent/v1/blobs/{sha256}`).
#[derive(Debug)]
pub struct Uploader {
    url: String,
    token: String,
    host: String,
    identity_pem: String,
    ca_pem: String,
    slug: Slug,
}

impl Uploader {
    pub fn new(link: &Link, host: &SimHost) -> Uploader {
        Uploader {
            url: link.url.clone(),
            token: link.agent_token.clone(),
            host: host.id.clone(),
            identity_pem: format!("{}{}", host.cert_pem, host.key_pem),
            ca_pem: link.ca_pem.clone(),
            slug: link.slug.clone(),
        }
    }

    /// Returns the slug's sha256 and its `slug.json` once stored.
    pub async fn upload(&self, stack: &str) -> anyhow::Result<(String, String)> {
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes())?)
            .identity(reqwest::Identity::from_pem(self.identity_pem.as_bytes())?)
            .build()?;
        let response = client
            .put(format!("{}/agent/v1/blobs/{}", self.url, self.slug.sha256))
            .bearer_auth(&self.token)
            .header("manifold-host", &self.host)
            .body(self.slug.bytes.clone())
            .send()
            .await
            .context("uploading the slug")?;
        if !response.status().is_success() {
            anyhow::bail!(
                "uploading the slug: the scheduler answered {}",
                response.status()
            );
        }
        Ok((self.slug.sha256.clone(), self.slug.metadata(stack)?))
    }
}
