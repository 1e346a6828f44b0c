//! The HTTP plumbing every JSON route shares: errors as JSON with an `id` and a message,
//! a body extractor that says what is wrong with a body, the request id, the user, times.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::store::StoreError;

/// Largest JSON request body.
pub(crate) const JSON_LIMIT: usize = 1024 * 1024;

/// An error as the API returns it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    id: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        id: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            id,
            message: message.into(),
        }
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub(crate) fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_params", message)
    }
    pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    /// What the error says (for answers that are not JSON).
    pub(crate) fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({"id": self.id, "message": self.message})),
        )
            .into_response()
    }
}

impl From<crate::core::ScaleError> for ApiError {
    fn from(err: crate::core::ScaleError) -> ApiError {
        match err {
            crate::core::ScaleError::NoRoom { .. } => ApiError::invalid(err.to_string()),
            crate::core::ScaleError::Store(e) => e.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        match &err {
            StoreError::AppExists(_)
            | StoreError::PipelineExists(_)
            | StoreError::AppCoupled { .. }
            | StoreError::PipelineHasReviewApps { .. }
            | StoreError::DrainExists { .. }
            | StoreError::DomainTaken { .. }
            | StoreError::AttachmentExists { .. } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", err.to_string())
            }
            StoreError::AppNotFound(name) => ApiError::not_found(format!(
                "app {name} not found: see `manifold apps`, or create it with `manifold apps:create {name}`"
            )),
            StoreError::ReleaseNotFound { .. }
            | StoreError::BuildNotFound(_)
            | StoreError::SlugNotFound(_)
            | StoreError::HostNotFound(_)
            | StoreError::DrainNotFound { .. }
            | StoreError::DomainNotFound { .. }
            | StoreError::CertNotFound { .. }
            | StoreError::PipelineNotFound(_)
            | StoreError::NotCoupled(_)
            | StoreError::AddonNotFound(_)
            | StoreError::AttachmentNotFound(_) => ApiError::not_found(err.to_string()),
            StoreError::NoRelease { .. }
            | StoreError::Promotion(_)
            | StoreError::LastAttachment { .. } => {
                ApiError::invalid(err.to_string())
            }
            // The lease passed to another replica while this request was handled: nothing
            // was written, and the client goes to the new leader as for any follower.
            StoreError::Fenced { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                manifold_endpoints::NOT_LEADER,
                format!("{err}; retry: another scheduler leads now"),
            ),
            _ => {
                tracing::error!("store: {err:?}");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", err.to_string())
            }
        }
    }
}

/// JSON bodies with the API's own errors (axum's are plain text).
pub(crate) struct Json<T>(pub(crate) T);

#[axum::async_trait]
impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("request body is larger than {JSON_LIMIT} bytes"),
                )
            } else {
                ApiError::bad_request(rej.body_text())
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(Json)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

pub(crate) type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Every response carries a `Request-Id` (the caller's when it sent a sane one).
pub(crate) async fn request_id(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 200 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| Uuid::new_v4().to_string());
    let mut res = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert("request-id", v);
    }
    res
}

pub(crate) fn user(headers: &HeaderMap) -> String {
    headers
        .get("manifold-user")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 100)
        .unwrap_or("admin")
        .to_string()
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}
