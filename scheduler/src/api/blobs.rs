//! `/blobs/{sha256}`: slugs and sources, by their digest.

use super::*;

pub(super) async fn get_blob(
    State(core): State<Arc<Core>>,
    Path(sha): Path<String>,
) -> Result<Response> {
    let blob = core
        .blobs
        .open(&sha)
        .await
        .map_err(blob_error)?
        .ok_or_else(|| ApiError::not_found(format!("blob {sha} not found")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, blob.size.to_string()),
        ],
        Body::from_stream(blob.body),
    )
        .into_response())
}

/// What a blob request did wrong is the caller's to hear (400, 413); the blob store
/// failing (its disk, its database) is the scheduler's (500).
pub(super) fn blob_error(err: BlobError) -> ApiError {
    match err {
        BlobError::TooLarge { .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            err.to_string(),
        ),
        BlobError::InvalidDigest(_) | BlobError::Mismatch { .. } | BlobError::Upload(_) => {
            ApiError::bad_request(err.to_string())
        }
        BlobError::Io { .. } | BlobError::Database(_) | BlobError::Damaged { .. } => {
            tracing::error!("blob store: {err:?}");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                err.to_string(),
            )
        }
    }
}

pub(super) async fn put_blob(
    State(core): State<Arc<Core>>,
    Path(sha): Path<String>,
    body: Body,
) -> Result<StatusCode> {
    core.blobs
        .put(
            crate::blobs::upload(body.into_data_stream()),
            core.settings.slug_limit,
            Some(&sha),
        )
        .await
        .map_err(blob_error)?;
    Ok(StatusCode::CREATED)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::Method;
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::blobs::PgBlobs;
    use crate::testing::{settings, Harness, AGENT_TOKEN};
    use manifold_test_support::postgres::Postgres;

    fn hex(data: &[u8]) -> String {
        Sha256::digest(data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Settings whose slugs may be a few chunks (PostgreSQL's are 1 MiB).
    fn roomy() -> crate::core::Settings {
        crate::core::Settings {
            slug_limit: 4 << 20,
            ..settings(Duration::from_secs(30))
        }
    }

    async fn blob(
        h: &Harness,
        method: Method,
        sha: &str,
        body: Vec<u8>,
    ) -> (StatusCode, HeaderMap, Bytes) {
        h.raw(
            method,
            &format!("/agent/v1/blobs/{sha}"),
            AGENT_TOKEN,
            "application/octet-stream",
            Body::from(body),
        )
        .await
    }

    /// What an agent uploads it downloads again, whole and with its length; what is wrong
    /// is refused and not stored.
    async fn serves_what_it_stored(h: &Harness) {
        let slug: Vec<u8> = (0..(2 << 20) + 4321)
            .map(|i: u32| (i % 253) as u8)
            .collect();
        let sha = hex(&slug);
        let (status, _, _) = blob(h, Method::PUT, &sha, slug.clone()).await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, headers, body) = blob(h, Method::GET, &sha, Vec::new()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_LENGTH], slug.len().to_string());
        assert!(body == slug, "the slug read back");

        let other = hex(b"other");
        let (status, _, body) = blob(h, Method::PUT, &other, b"not other".to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let message = String::from_utf8_lossy(&body);
        assert!(message.contains("does not match its checksum"), "{message}");
        let (status, _, body) = blob(h, Method::GET, &other, Vec::new()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(String::from_utf8_lossy(&body).contains(&format!("blob {other} not found")));

        let big = vec![7u8; (4 << 20) + 1];
        let (status, _, _) = blob(h, Method::PUT, &hex(&big), big.clone()).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        let (status, _, _) = blob(h, Method::GET, &hex(&big), Vec::new()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        let (status, _, body) = blob(h, Method::GET, "..%2Fmanifold.db", Vec::new()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(String::from_utf8_lossy(&body).contains("is not a sha256"));
    }

    #[tokio::test]
    async fn serves_blobs_from_disk() {
        serves_what_it_stored(&Harness::new(roomy()).await).await;
    }

    #[tokio::test]
    async fn serves_blobs_from_postgres() {
        let Some(server) = Postgres::start("serves_blobs_from_postgres") else {
            return;
        };
        let blobs = PgBlobs::connect(&server.url()).await.expect("connect");
        serves_what_it_stored(&Harness::with_blobs(roomy(), Arc::new(blobs)).await).await;
    }
}
