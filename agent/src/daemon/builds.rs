//! Builds the scheduler asks for: the source fetched and unpacked, the slugbuilder in a
//! build dyno, the slug and its metadata sent back.

use super::*;

/// Runs one build for the scheduler: source blob in, output lines and the slug blob out.
pub(super) async fn run_build(
    config: Arc<DaemonConfig>,
    blobs: Arc<dyn BlobStore>,
    request: proto::BuildRequest,
    inputs: mpsc::UnboundedSender<Message>,
) {
    let build_id = request.build_id.clone();
    let send = |kind: proto::build_event::Kind| {
        let _ = inputs.send(Message::Build(proto::BuildEvent {
            build_id: build_id.clone(),
            kind: Some(kind),
        }));
    };
    let container = format!("build-{:08x}", rand::random::<u32>());
    let work = config
        .host
        .state_dir
        .join("builds")
        .join(format!("{container}-src"));
    let finished = match build_in(&config, blobs.as_ref(), &request, &container, &work, &send).await
    {
        Ok(finished) => finished,
        Err(error) => proto::BuildFinished {
            status: 1,
            error,
            ..Default::default()
        },
    };
    // Cleaned up first, so that a finished build has left nothing behind.
    if let Err(err) = tokio::fs::remove_dir_all(&work).await {
        tracing::warn!("cannot remove {}: {err}", work.display());
    }
    send(proto::build_event::Kind::Finished(finished));
}

/// The steps of a build; an `Err` is a failure outside the build's own output.
async fn build_in(
    config: &DaemonConfig,
    blobs: &dyn BlobStore,
    request: &proto::BuildRequest,
    container: &str,
    work: &Path,
    send: &impl Fn(proto::build_event::Kind),
) -> Result<proto::BuildFinished, String> {
    let archive = blobs
        .fetch(&request.source_sha256, work)
        .await
        .map_err(|e| format!("source fetch failed: {}", chain(&e)))?;
    let unpack_work = work.to_path_buf();
    let source =
        tokio::task::spawn_blocking(move || build_dyno::unpack_source(&archive, &unpack_work))
            .await
            .map_err(|e| format!("source unpack failed: {e}"))?
            .map_err(|e| format!("source unpack failed: {}", chain(&e)))?;
    let buildpacks_dir = config
        .buildpacks_dir
        .clone()
        .ok_or("no buildpacks directory configured on this host")?;
    let req = build_dyno::BuildRequest {
        source,
        stack: request.stack.clone(),
        size: DynoSize::Standard2X,
        env: request.env.clone().into_iter().collect(),
        buildpacks: request.buildpacks.clone(),
        cache_dir: config.host.build_cache_dir(&request.app),
        slugbuilder: config.slugbuilder.clone(),
        buildpacks_dir,
        timeout: Duration::from_secs(15 * 60),
        directory_buildpacks: match &config.buildpack_root {
            Some(root) => build_dyno::DirectoryBuildpacks::Under(root.clone()),
            None => build_dyno::DirectoryBuildpacks::None,
        },
        max_slug_bytes: config.max_slug_bytes,
    };
    let host = app_host(config, &request.app).await?;
    let prepared = build_dyno::prepare(&host, container, &req).map_err(|e| chain(&e))?;
    let result = async {
        let dyno = Dyno::start(prepared.dyno.clone(), config.shim_binary.clone())
            .await
            .map_err(|e| chain(&e))?;
        let (events_tx, mut events_rx) = mpsc::unbounded_channel();
        let (_stop_tx, stop_rx) = mpsc::unbounded_channel();
        let follower = tokio::spawn(dyno.follow_events(events_tx, stop_rx));
        while let Some(event) = events_rx.recv().await {
            if let Event::Line(line) = event {
                if line.source == Source::App {
                    send(proto::build_event::Kind::Output(line.text));
                } else {
                    // The platform's errors (a failed start, R14/R15, R12) are the only
                    // explanation the deploying user gets when a build dies outside the
                    // buildpacks' own output.
                    if line.text.starts_with("Error ") {
                        send(proto::build_event::Kind::Output(format!(
                            "-----> Build dyno: {}",
                            line.text
                        )));
                    }
                    tracing::info!("{line}");
                }
            }
        }
        let status = follower
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| chain(&e))?;
        if status != 0 {
            return Ok(proto::BuildFinished {
                status,
                ..Default::default()
            });
        }
        // The build's outputs are the build's: read back as hostile input, off the runtime.
        let output = prepared.output.clone();
        let outputs = tokio::task::spawn_blocking(move || output.read())
            .await
            .map_err(|e| format!("cannot read the build's output: {e}"))?
            .map_err(|e| format!("the build's output is refused: {}", chain(&e)))?;
        blobs
            .upload(outputs.slug, outputs.slug_size, &outputs.slug_sha256)
            .await
            .map_err(|e| format!("slug upload failed: {}", chain(&e)))?;
        Ok(proto::BuildFinished {
            status: 0,
            slug_sha256: outputs.slug_sha256,
            slug_json: outputs.metadata_json,
            error: String::new(),
        })
    }
    .await;
    let _ = tokio::fs::remove_dir_all(&prepared.work).await;
    result
}
