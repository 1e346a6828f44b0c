//! `/blobs/{sha256}`: slugs and sources, by their digest.

use super::*;

pub(super) async fn get_blob(
    State(core): State<Arc<Core>>,
    Path(sha): Path<String>,
) -> Result<Response> {
    let path = core
        .blobs
        .path(&sha)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| ApiError::not_found(format!("blob {sha} not found")))?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

pub(super) async fn put_blob(
    State(core): State<Arc<Core>>,
    Path(sha): Path<String>,
    body: Body,
) -> Result<StatusCode> {
    let stream = body
        .into_data_stream()
        .map(|r| r.map_err(|e| e.to_string()));
    core.blobs
        .put(stream, core.settings.slug_limit, Some(&sha))
        .await
        .map_err(|e| match e {
            BlobError::TooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                e.to_string(),
            ),
            other => ApiError::bad_request(other.to_string()),
        })?;
    Ok(StatusCode::CREATED)
}
