//! The users' side: the scheduler's HTTP API (scheduler/API.md), over HTTPS with the API
//! token, as the `manifold` CLI calls it. Each error names the request and the answer.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    token: String,
    pub client: reqwest::Client,
}

impl Api {
    pub fn new(base: String, token: String, ca_pem: &str) -> anyhow::Result<Api> {
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes())?)
            .timeout(Duration::from_secs(600))
            .build()?;
        Ok(Api {
            base,
            token,
            client,
        })
    }

    /// Sends a request; a non-2xx answer is an error with its body.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<reqwest::Body>,
        json_body: Option<Value>,
    ) -> anyhow::Result<reqwest::Response> {
        let mut request = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = json_body {
            request = request.json(&body);
        }
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/gzip")
                .body(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        if !response.status().is_success() {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            anyhow::bail!("{method} {path}: {status}: {text}");
        }
        Ok(response)
    }

    async fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let response = self.send(method.clone(), path, None, body).await?;
        response
            .json()
            .await
            .with_context(|| format!("{method} {path}: the answer is not JSON"))
    }

    pub async fn create_app(&self, name: &str, stack: &str) -> anyhow::Result<()> {
        self.json(
            reqwest::Method::POST,
            "/apps",
            Some(json!({"name": name, "stack": stack})),
        )
        .await?;
        Ok(())
    }

    /// Builds `app` from `source` (a tar.gz) and waits for the build's end.
    pub async fn build(&self, app: &str, source: Vec<u8>, within: Duration) -> anyhow::Result<()> {
        let path = format!("/apps/{app}/builds");
        let build = self
            .send(reqwest::Method::POST, &path, Some(source.into()), None)
            .await?
            .json::<Value>()
            .await?;
        let id = build["id"]
            .as_str()
            .context("the build has no id")?
            .to_string();
        let started = Instant::now();
        loop {
            let b = self
                .json(reqwest::Method::GET, &format!("{path}/{id}"), None)
                .await?;
            match b["status"].as_str() {
                Some("succeeded") => return Ok(()),
                Some("failed") => anyhow::bail!("the seed build of {app} failed: {b}"),
                _ if started.elapsed() > within => {
                    anyhow::bail!("the seed build of {app} did not end within {within:?}")
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// A pipeline with `app` at `stage`; returns its id.
    pub async fn create_pipeline(
        &self,
        name: &str,
        app: &str,
        stage: &str,
    ) -> anyhow::Result<String> {
        let p = self
            .json(
                reqwest::Method::POST,
                "/pipelines",
                Some(json!({"name": name, "app": app, "stage": stage})),
            )
            .await?;
        Ok(p["id"]
            .as_str()
            .context("the pipeline has no id")?
            .to_string())
    }

    pub async fn couple(&self, app: &str, pipeline: &str, stage: &str) -> anyhow::Result<()> {
        self.json(
            reqwest::Method::POST,
            "/pipeline-couplings",
            Some(json!({"app": app, "pipeline": pipeline, "stage": stage})),
        )
        .await?;
        Ok(())
    }

    /// Promotes `source`'s release to `targets`.
    pub async fn promote(
        &self,
        pipeline: &str,
        source: &str,
        targets: &[String],
    ) -> anyhow::Result<()> {
        let targets: Vec<Value> = targets.iter().map(|t| json!({"app": {"id": t}})).collect();
        self.json(
            reqwest::Method::POST,
            "/pipeline-promotions",
            Some(json!({
                "pipeline": {"id": pipeline},
                "source": {"app": {"id": source}},
                "targets": targets,
            })),
        )
        .await?;
        Ok(())
    }

    /// `ps:scale web=N`.
    pub async fn scale(&self, app: &str, quantity: u32) -> anyhow::Result<()> {
        self.json(
            reqwest::Method::PATCH,
            &format!("/apps/{app}/formation"),
            Some(json!({"updates": [{"type": crate::slug::PROCESS, "quantity": quantity}]})),
        )
        .await?;
        Ok(())
    }

    /// `ps`: the app's dynos.
    pub async fn dynos(&self, app: &str) -> anyhow::Result<Vec<Value>> {
        let v = self
            .json(reqwest::Method::GET, &format!("/apps/{app}/dynos"), None)
            .await?;
        v.as_array().cloned().context("the dynos are not a list")
    }

    /// `config:set KEY=VALUE`; returns the release it made.
    pub async fn set_config(&self, app: &str, key: &str, value: &str) -> anyhow::Result<u32> {
        let path = format!("/apps/{app}/config-vars");
        let response = self
            .send(
                reqwest::Method::PATCH,
                &path,
                None,
                Some(json!({ key: value })),
            )
            .await?;
        response
            .headers()
            .get("manifold-release")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("PATCH {path}: no Manifold-Release header"))
    }

    /// `GET /metrics`, as text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(self
            .send(reqwest::Method::GET, "/metrics", None, None)
            .await?
            .text()
            .await?)
    }
}
