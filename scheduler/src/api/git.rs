//! `/{app}.git/…`: the app's git remote over smart HTTP (see [`crate::git`]). Answers git
//! can show its user are `text/plain` ([`crate::git::refusal`]).

use std::ffi::OsString;

use axum::extract::Request;

use super::*;
use crate::git::{cgi, hook, refusal};

/// What a request asks of git.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Action {
    InfoRefs,
    UploadPack,
    ReceivePack,
}

impl Action {
    fn path(self) -> &'static str {
        match self {
            Action::InfoRefs => "info/refs",
            Action::UploadPack => "git-upload-pack",
            Action::ReceivePack => "git-receive-pack",
        }
    }
}

pub(super) async fn info_refs(
    State(core): State<Arc<Core>>,
    Path(repo): Path<String>,
    req: Request,
) -> Response {
    serve(core, &repo, Action::InfoRefs, req).await
}

pub(super) async fn upload_pack(
    State(core): State<Arc<Core>>,
    Path(repo): Path<String>,
    req: Request,
) -> Response {
    serve(core, &repo, Action::UploadPack, req).await
}

pub(super) async fn receive_pack(
    State(core): State<Arc<Core>>,
    Path(repo): Path<String>,
    req: Request,
) -> Response {
    serve(core, &repo, Action::ReceivePack, req).await
}

/// Most a request body may hold beyond the largest pack (git's protocol lines around it).
const PROTOCOL_SLACK: u64 = 1 << 20;

async fn serve(core: Arc<Core>, repo: &str, action: Action, req: Request) -> Response {
    let Some(name) = repo.strip_suffix(".git") else {
        return refusal(
            StatusCode::NOT_FOUND,
            format!("{repo} is not a git remote: the remote of app APP is {{API}}/APP.git"),
        );
    };
    if !apps::valid_app_name(name) {
        return refusal(
            StatusCode::NOT_FOUND,
            format!("no app {name:?}: app names are 3 to 30 lowercase letters, digits and dashes"),
        );
    }
    let app = match core.store.app(name).await {
        Ok(app) => app,
        Err(StoreError::AppNotFound(_)) => {
            return refusal(
                StatusCode::NOT_FOUND,
                format!("app {name} not found: see `manifold apps`"),
            )
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    let query = req.uri().query().unwrap_or_default().to_string();
    if action == Action::InfoRefs
        && !matches!(
            query.as_str(),
            "service=git-upload-pack" | "service=git-receive-pack"
        )
    {
        return refusal(
            StatusCode::BAD_REQUEST,
            "only git's smart HTTP protocol is served: use git 1.6.6 or later",
        );
    }
    let limit = core.settings.upload_limit;
    let headers = req.headers();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit + PROTOCOL_SLACK) {
        return refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the push is larger than {} MiB: remove large files from the repository's history",
                limit >> 20
            ),
        );
    }
    let user = crate::git::basic_credentials(headers)
        .map(|(u, _)| u)
        .filter(|u| !u.is_empty() && u.len() <= 100 && !u.contains(char::is_control))
        .unwrap_or_else(|| "git".into());
    let header = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let mut env: Vec<(OsString, OsString)> = vec![
        ("REQUEST_METHOD".into(), req.method().as_str().into()),
        ("QUERY_STRING".into(), query.into()),
        (
            "PATH_INFO".into(),
            format!("/{}.git/{}", app.id, action.path()).into(),
        ),
        ("REMOTE_USER".into(), user.clone().into()),
        ("GIT_HTTP_EXPORT_ALL".into(), "1".into()),
        ("GIT_HTTP_MAX_REQUEST_BUFFER".into(), "16M".into()),
    ];
    for (var, name) in [
        ("CONTENT_TYPE", header::CONTENT_TYPE),
        ("HTTP_CONTENT_ENCODING", header::CONTENT_ENCODING),
        (
            "HTTP_GIT_PROTOCOL",
            header::HeaderName::from_static("git-protocol"),
        ),
    ] {
        if let Some(value) = header(name) {
            env.push((var.into(), value.into()));
        }
    }
    if let Some(n) = declared {
        env.push(("CONTENT_LENGTH".into(), n.to_string().into()));
    }
    let backend = match core
        .git_repo(app.id)
        .await
        .and_then(|_| core.git.backend_env(limit))
    {
        Ok((backend, more)) => {
            env.extend(more);
            backend
        }
        Err(e) => {
            tracing::error!("git remote of {}: {e}", app.name);
            return refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
    };
    let socket = if action == Action::ReceivePack {
        match crate::git::serve_push(core.clone(), app.clone(), user) {
            Ok(socket) => {
                env.push((hook::SOCKET_ENV.into(), socket.path.clone().into()));
                Some(socket)
            }
            Err(e) => {
                tracing::error!("git push to {}: {e}", app.name);
                return refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
            }
        }
    } else {
        None
    };
    let body = req.into_body();
    let after = socket.as_ref().map(|s| s.after());
    match cgi::run(&backend, env, body, limit + PROTOCOL_SLACK, socket, after).await {
        Ok(res) => res,
        Err(e) => {
            tracing::error!("git remote of {}: {e}", app.name);
            refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}
