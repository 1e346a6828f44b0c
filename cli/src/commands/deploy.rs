//! `deploy` (a build from local source, its output streamed) and `builds`.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::StreamExt;

use crate::api::{Build, Release, Reply};
use crate::{output, tarball};

use super::*;

impl Ctx {
    pub(super) async fn deploy(
        &self,
        app: &str,
        dir: &std::path::Path,
        buildpacks: &[String],
    ) -> Result<()> {
        eprint!("Packing {}... ", dir.display());
        let tar = tarball::pack(dir)?;
        eprintln!("done, {:.1} MB ({})", tar.len as f64 / 1e6, tar.checksum);
        if tar.len > MAX_SOURCE_BYTES {
            bail!(
                "the source archive is {} MB; the API takes at most 512 MiB",
                tar.len / 1_000_000
            );
        }
        let checksum = tar.checksum.clone();
        let build: Build = self
            .client
            .post_build(app, buildpacks, tar.file, tar.len)
            .await?
            .parse()?;
        if !build.source_blob.checksum.is_empty() && build.source_blob.checksum != checksum {
            bail!(
                "the API stored the source as {} but we sent {checksum}",
                build.source_blob.checksum
            );
        }
        let stream_path = if build.output_stream_url.is_empty() {
            format!("/apps/{app}/builds/{}/output", build.id)
        } else {
            build.output_stream_url.clone()
        };
        self.stream_output(&stream_path).await?;
        let reply = self.wait_for_build(app, &build.id).await?;
        let build: Build = reply.parse()?;
        if self.json {
            print_json(&reply.body)?;
        }
        match build.status.as_str() {
            "succeeded" => {
                let Some(r) = build.release else {
                    if !self.json {
                        println!("Build succeeded");
                    }
                    return Ok(());
                };
                // With a release phase the slug built, yet the release may have failed.
                let release: Release = self
                    .client
                    .get(&format!("/apps/{app}/releases/{}", r.version))
                    .await?
                    .parse()?;
                match release.status.as_str() {
                    "failed" => bail!(
                        "release v{} failed in its release phase (see the output above): the current release keeps serving",
                        r.version
                    ),
                    "pending" => bail!(
                        "release v{} is still in its release phase: check `manifold releases -a {app}`",
                        r.version
                    ),
                    _ => {
                        if !self.json {
                            println!("Released v{}", r.version);
                        }
                        Ok(())
                    }
                }
            }
            "failed" => bail!("build failed: see the output above"),
            other => bail!(
                "build {} is still {other}: check `manifold builds -a {app}`",
                build.id
            ),
        }
    }

    /// Copies the build output to stdout as it arrives (to stderr with `--json`, so stdout
    /// stays parseable).
    pub(super) async fn stream_output(&self, path: &str) -> Result<()> {
        let resp = self.client.stream(path).await?;
        let mut body = resp.bytes_stream();
        let mut out: Box<dyn Write> = if self.json {
            Box::new(std::io::stderr())
        } else {
            Box::new(std::io::stdout())
        };
        while let Some(chunk) = body.next().await {
            let chunk = chunk.context("the build output stream broke off")?;
            out.write_all(&chunk)?;
            out.flush()?;
        }
        Ok(())
    }

    /// The output stream ends when the build does, but the status update may land a moment
    /// later: poll briefly while it still says pending.
    pub(super) async fn wait_for_build(&self, app: &str, id: &str) -> Result<Reply> {
        let path = format!("/apps/{app}/builds/{id}");
        let mut reply = self.client.get(&path).await?;
        for _ in 0..30 {
            if reply.parse::<Build>()?.status != "pending" {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            reply = self.client.get(&path).await?;
        }
        Ok(reply)
    }

    pub(super) async fn builds(&self, app: &str) -> Result<()> {
        let r = self.client.get(&format!("/apps/{app}/builds")).await?;
        if self.json {
            return print_json(&r.body);
        }
        print!("{}", output::builds(app, &r.parse::<Vec<Build>>()?));
        Ok(())
    }
}
