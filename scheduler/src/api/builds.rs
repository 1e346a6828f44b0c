//! `/apps/{app}/builds`: builds from a source blob, their state and their output.

use super::*;

pub(super) fn build_json(app: &str, b: &Build, stack: &str) -> Value {
    json!({
        "id": b.id,
        "status": b.status,
        "source_blob": {"checksum": format!("SHA256:{}", b.source_sha256)},
        "output_stream_url": format!("/apps/{app}/builds/{}/output", b.id),
        "slug": b.slug_id.map(|id| json!({"id": id})),
        "release": b.release_version.map(|v| json!({"version": v})),
        "host": b.host_id.as_ref().map(|h| json!({"id": h})),
        "stack": stack,
        "user": {"email": b.user},
        "created_at": rfc3339(b.created_at),
        "updated_at": rfc3339(b.updated_at),
    })
}

pub(super) async fn list_builds(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
) -> Result<axum::Json<Vec<Value>>> {
    let a = core.store.app(&app).await?;
    let builds = core.store.builds(&app).await?;
    Ok(axum::Json(
        builds
            .iter()
            .map(|b| build_json(&app, b, &a.stack))
            .collect(),
    ))
}

pub(super) async fn create_build(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
    headers: HeaderMap,
    query: Option<Query<Vec<(String, String)>>>,
    body: Body,
) -> Result<(StatusCode, axum::Json<Value>)> {
    let a = core.store.app(&app).await?;
    let named: Vec<String> = query
        .map(|Query(q)| {
            q.into_iter()
                .filter(|(k, _)| k == "buildpack")
                .map(|(_, v)| v)
                .collect()
        })
        .unwrap_or_default();
    // Checked before the upload, so a bad name costs no transfer.
    let (buildpacks, origin) = choose_buildpacks(&core, &a, named).await?;
    let source = receive_source(&core, &headers, body).await?;
    let build = core
        .builds
        .start(&a, &source, buildpacks, origin, &user(&headers))
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(build_json(&app, &build, &a.stack)),
    ))
}

/// Stores an uploaded source (a tar.gz within the upload limit) as a blob.
pub(super) async fn receive_source(
    core: &Core,
    headers: &HeaderMap,
    body: Body,
) -> Result<crate::blobs::Blob> {
    let limit = core.settings.upload_limit;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the source is larger than {} MiB: add a .slugignore or remove large files",
                limit / (1024 * 1024)
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut stream = body.into_data_stream();
    // The first two bytes, kept as they pass, say whether it is gzip (without reading the
    // stored blob back).
    let mut magic = Vec::with_capacity(2);
    let stored = if declared.is_some_and(|n| n > limit) {
        Err(BlobError::TooLarge { limit })
    } else {
        let tee = (&mut stream).inspect(|chunk| {
            if let Ok(chunk) = chunk {
                let want = 2 - magic.len();
                magic.extend_from_slice(&chunk[..want.min(chunk.len())]);
            }
        });
        core.blobs.put(crate::blobs::upload(tee), limit, None).await
    };
    let source = match stored {
        Ok(source) => source,
        Err(BlobError::TooLarge { .. }) => {
            // Read (and drop) the rest of a modest overrun, so the client, still sending,
            // gets the 413 rather than a reset connection.
            let mut rest = 0u64;
            while let Some(Ok(chunk)) = stream.next().await {
                rest += chunk.len() as u64;
                if rest > DRAIN_LIMIT {
                    break;
                }
            }
            return Err(too_large());
        }
        Err(err @ BlobError::Upload(_)) => {
            return Err(ApiError::bad_request(format!(
                "cannot receive the source: {err}"
            )))
        }
        Err(other) => return Err(super::blobs::blob_error(other)),
    };
    let gzip = magic == [0x1f, 0x8b];
    if !gzip {
        return Err(ApiError::bad_request(
            "the source must be a gzip-compressed tarball (tar.gz), as `manifold deploy DIR` sends",
        ));
    }
    Ok(source)
}

/// The buildpacks a build of `app` uses (those named for it, else the app's, else
/// detection) and the line that says so.
pub(crate) async fn choose_buildpacks(
    core: &Core,
    app: &App,
    named: Vec<String>,
) -> Result<(Vec<String>, String)> {
    // Only built-in names and git URLs: a path would name a directory on the build host,
    // which the agent would mount into the build.
    super::buildpacks::choose(named, core.store.buildpacks(&app.name).await?, &app.config)
}

fn parse_uuid(s: &str, what: &str) -> Result<Uuid> {
    s.parse()
        .map_err(|_| ApiError::not_found(format!("{what} {s} not found")))
}

pub(super) async fn get_build(
    State(core): State<Arc<Core>>,
    Path((app, id)): Path<(String, String)>,
) -> Result<axum::Json<Value>> {
    let a = core.store.app(&app).await?;
    let build = core.store.build(parse_uuid(&id, "build")?).await?;
    if build.app_id != a.id {
        return Err(ApiError::not_found(format!(
            "build {id} not found in {app}"
        )));
    }
    Ok(axum::Json(build_json(&app, &build, &a.stack)))
}

pub(super) async fn build_output(
    State(core): State<Arc<Core>>,
    Path((app, id)): Path<(String, String)>,
) -> Result<Response> {
    let a = core.store.app(&app).await?;
    let id = parse_uuid(&id, "build")?;
    let build = core.store.build(id).await?;
    if build.app_id != a.id {
        return Err(ApiError::not_found(format!(
            "build {id} not found in {app}"
        )));
    }
    let stream = core.builds.clone().lines(id).map(|lines| {
        let mut text = lines.join("\n");
        text.push('\n');
        Ok::<_, std::io::Error>(Bytes::from(text))
    });
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::Method;

    use super::*;
    use crate::testing::{settings, Harness, API_TOKEN, STACK};

    /// A source is gzip by its first two bytes, however the upload splits them.
    #[tokio::test]
    async fn a_source_must_be_gzip() {
        let h = Harness::new(settings(Duration::from_secs(30))).await;
        h.core.store.create_app("app", STACK).await.expect("app");
        let post = |parts: Vec<&'static [u8]>| {
            let body = futures::stream::iter(
                parts
                    .into_iter()
                    .map(|p| Ok::<_, std::io::Error>(Bytes::from_static(p))),
            );
            h.raw(
                Method::POST,
                "/apps/app/builds",
                API_TOKEN,
                "application/octet-stream",
                Body::from_stream(body),
            )
        };
        for refused in [
            vec![&b"PK\x03\x04zip"[..]],
            vec![b"\x1f"],
            vec![b"", b"\x8b\x1f"],
        ] {
            let (status, _, body) = post(refused).await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            let message = String::from_utf8_lossy(&body);
            assert!(
                message.contains("must be a gzip-compressed tarball"),
                "{message}"
            );
        }
        let (status, _, _) = post(vec![b"", b"\x1f", b"\x8b\x08rest"]).await;
        assert_eq!(status, StatusCode::CREATED);
        use sha2::Digest;
        let sha: String = sha2::Sha256::digest(b"\x1f\x8b\x08rest")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let stored = h.core.store.builds("app").await.expect("builds");
        assert_eq!(stored.len(), 1, "one build, of the gzip source");
        assert_eq!(stored[0].source_sha256, sha);
        assert_eq!(
            h.core.blobs.stat(&sha).await.expect("stat").map(|b| b.size),
            Some(7)
        );
    }
}
