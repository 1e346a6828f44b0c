//! The git remote through the real API router and the real `git http-backend`, and the
//! repository functions on real repositories (`git` made them).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use base64::Engine;

use super::*;
use crate::testing::{settings, Harness, API_TOKEN, STACK};

/// A scheduler whose repositories are in its temp dir (a hook program that is never run:
/// these tests push nothing through the API).
async fn harness(dir: &tempfile::TempDir) -> Harness {
    let h = Harness::new(settings(Duration::from_secs(30))).await;
    h.core
        .git
        .configure(&dir.path().join("git"), Path::new("/bin/false"))
        .expect("configure");
    h
}

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// A request to the API router; the status, headers and body.
async fn call(
    core: &Arc<crate::core::Core>,
    method: Method,
    path: &str,
    auth: Option<&str>,
    extra: &[(&str, &str)],
    body: Body,
) -> (StatusCode, HeaderMap, String) {
    let mut router = crate::api::router(core.clone());
    let mut req = Request::builder().method(method).uri(path);
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let res = tower_service::Service::call(&mut router, req.body(body).expect("request"))
        .await
        .expect("infallible");
    let (parts, body) = res.into_parts();
    let bytes: Bytes = axum::body::to_bytes(body, usize::MAX).await.expect("body");
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

const REFS: &str = "/gitapp.git/info/refs?service=git-upload-pack";

#[tokio::test]
async fn git_asks_for_the_token_and_refuses_a_wrong_one() {
    let dir = tempfile::tempdir().expect("dir");
    let h = harness(&dir).await;
    h.core.store.create_app("gitapp", STACK).await.expect("app");
    for auth in [
        None,
        Some(basic("me", "wrong")),
        Some("Bearer wrong".into()),
    ] {
        let (status, headers, body) = call(
            &h.core,
            Method::GET,
            REFS,
            auth.as_deref(),
            &[],
            Body::empty(),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}: {body}");
        assert_eq!(
            headers
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap_or("")),
            Some("Basic realm=\"manifold\""),
            "git asks for credentials on this header"
        );
        assert!(body.contains("API token"), "{body}");
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap_or("")
                .starts_with("text/plain"),
            "git shows text/plain bodies"
        );
    }
    // The right token, as Basic's password under any user name, or as a bearer token.
    for auth in [basic("anyone", API_TOKEN), format!("Bearer {API_TOKEN}")] {
        let (status, headers, body) =
            call(&h.core, Method::GET, REFS, Some(&auth), &[], Body::empty()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            headers["content-type"],
            "application/x-git-upload-pack-advertisement"
        );
        assert!(
            body.starts_with("001e# service=git-upload-pack\n"),
            "{body}"
        );
    }
    // The repository is named by the app's id, so that renaming the app keeps it.
    let app = h.core.store.app("gitapp").await.expect("app");
    assert!(dir.path().join(format!("git/{}.git/HEAD", app.id)).exists());
}

#[tokio::test]
async fn unknown_apps_odd_names_and_dumb_http_are_refused_clearly() {
    let dir = tempfile::tempdir().expect("dir");
    let h = harness(&dir).await;
    h.core.store.create_app("gitapp", STACK).await.expect("app");
    let auth = basic("me", API_TOKEN);
    for (path, status, says) in [
        (
            "/nope.git/info/refs?service=git-upload-pack",
            StatusCode::NOT_FOUND,
            "app nope not found",
        ),
        (
            "/..%2F..%2Fetc.git/info/refs?service=git-upload-pack",
            StatusCode::NOT_FOUND,
            "app names are",
        ),
        (
            "/GitApp.git/info/refs?service=git-upload-pack",
            StatusCode::NOT_FOUND,
            "app names are",
        ),
        (
            "/gitapp.git/info/refs",
            StatusCode::BAD_REQUEST,
            "smart HTTP",
        ),
        (
            "/gitapp.git/info/refs?service=git-upload-archive",
            StatusCode::BAD_REQUEST,
            "smart HTTP",
        ),
    ] {
        let (got, _, body) =
            call(&h.core, Method::GET, path, Some(&auth), &[], Body::empty()).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(body.contains(says), "{path}: {body}");
    }
    // Without `.git` it is no remote: git's Basic authentication is not taken there, and
    // with the API's bearer token the answer says what a remote's URL is.
    let path = "/gitapp/info/refs?service=git-upload-pack";
    let (got, _, _) = call(&h.core, Method::GET, path, Some(&auth), &[], Body::empty()).await;
    assert_eq!(got, StatusCode::UNAUTHORIZED);
    let bearer = format!("Bearer {API_TOKEN}");
    let (got, _, body) = call(
        &h.core,
        Method::GET,
        path,
        Some(&bearer),
        &[],
        Body::empty(),
    )
    .await;
    assert_eq!(got, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("is not a git remote"), "{body}");
    // Nothing was made outside the repositories' directory, nor for unknown apps.
    let made: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(made, vec![std::ffi::OsString::from("git")]);
    let repos = std::fs::read_dir(dir.path().join("git"))
        .expect("git")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".git"))
        })
        .count();
    assert_eq!(repos, 0, "no repository for a refused request");
}

#[tokio::test]
async fn a_push_over_the_size_limit_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().expect("dir");
    let h = harness(&dir).await;
    h.core.store.create_app("gitapp", STACK).await.expect("app");
    let too_big = (h.core.settings.upload_limit + (2 << 20)).to_string();
    let (status, _, body) = call(
        &h.core,
        Method::POST,
        "/gitapp.git/git-receive-pack",
        Some(&basic("me", API_TOKEN)),
        &[
            ("content-type", "application/x-git-receive-pack-request"),
            ("content-length", &too_big),
        ],
        Body::empty(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body.contains("larger than 1 MiB"), "{body}");
}

#[tokio::test]
async fn a_follower_sends_git_to_the_leader() {
    let dir = tempfile::tempdir().expect("dir");
    let store = crate::store::sql::SqlStore::open(&crate::store::sql::Database::Sqlite(
        dir.path().join("manifold.db"),
    ))
    .await
    .expect("store");
    let core = crate::core::Core::new(
        Arc::new(store),
        Arc::new(crate::blobs::LocalBlobs::new(dir.path().join("blobs"))),
        settings(Duration::from_secs(30)),
        Arc::new(crate::leadership::Leadership::follower(
            Duration::from_secs(3),
        )),
    );
    core.git
        .configure(&dir.path().join("git"), Path::new("/bin/false"))
        .expect("configure");
    let auth = basic("me", API_TOKEN);
    for (method, path) in [
        (Method::GET, REFS),
        (Method::POST, "/gitapp.git/git-receive-pack"),
        (Method::POST, "/gitapp.git/git-upload-pack"),
    ] {
        let (status, headers, body) =
            call(&core, method, path, Some(&auth), &[], Body::empty()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {body}");
        assert!(body.contains("not the leader"), "{body}");
        assert!(headers["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/plain"));
    }
}

/// Runs git in `dir`; panics with its stderr if it fails.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn a_branch_makes_a_source_blob_and_gives_its_files() {
    let dir = tempfile::tempdir().expect("dir");
    let h = harness(&dir).await;
    let app = h.core.store.create_app("gitapp", STACK).await.expect("app");
    let repo = h.core.git.ensure(app.id, None).await.expect("repo");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("work");
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("app.json"), r#"{"name":"x"}"#).expect("write");
    std::fs::write(work.join("big"), "x".repeat(5000)).expect("write");
    git(&work, &["add", "."]);
    git(&work, &["commit", "-qm", "one"]);
    git(
        &work,
        &[
            "push",
            "-q",
            &repo.display().to_string(),
            "main",
            "main:feature",
        ],
    );

    let text = h
        .core
        .git
        .read_file(app.id, "refs/heads/feature", "app.json", 1024)
        .await
        .expect("app.json");
    assert_eq!(text, br#"{"name":"x"}"#);
    let err = h.core.git.read_file(app.id, "nope", "app.json", 1024).await;
    assert!(
        matches!(&err, Err(GitError::UnknownRev { rev }) if rev == "nope"),
        "{err:?}"
    );
    let err = h
        .core
        .git
        .read_file(app.id, "main", "missing.json", 1024)
        .await;
    assert!(matches!(err, Err(GitError::FileNotFound { .. })), "{err:?}");
    let err = h.core.git.read_file(app.id, "main", "big", 1024).await;
    assert!(matches!(err, Err(GitError::FileTooLarge { .. })), "{err:?}");
    for hostile in ["../x", "/etc/passwd", "a:b", ""] {
        let err = h.core.git.read_file(app.id, "main", hostile, 1024).await;
        assert!(
            matches!(err, Err(GitError::BadPath { .. })),
            "{hostile}: {err:?}"
        );
    }
    for hostile in ["--output=/tmp/x", "main\nx", ""] {
        let err = h
            .core
            .git
            .read_file(app.id, hostile, "app.json", 1024)
            .await;
        assert!(
            matches!(err, Err(GitError::BadRev { .. })),
            "{hostile:?}: {err:?}"
        );
    }

    let blob = h
        .core
        .git
        .source_blob(h.core.blobs.as_ref(), app.id, "feature", 1 << 20)
        .await
        .expect("blob");
    let mut reader = h
        .core
        .blobs
        .open(&blob.sha256)
        .await
        .expect("open")
        .expect("stored");
    let mut bytes = Vec::new();
    use futures::StreamExt;
    while let Some(chunk) = reader.body.next().await {
        bytes.extend_from_slice(&chunk.expect("chunk"));
    }
    assert_eq!(&bytes[..2], &[0x1f, 0x8b], "a tar.gz, as builds take");
    let tgz = dir.path().join("source.tgz");
    std::fs::write(&tgz, &bytes).expect("write");
    let out = std::process::Command::new("tar")
        .arg("tzf")
        .arg(&tgz)
        .output()
        .expect("tar");
    let names = String::from_utf8_lossy(&out.stdout);
    assert!(names.lines().any(|l| l == "app.json"), "{names}");
    let err = h
        .core
        .git
        .source_blob(h.core.blobs.as_ref(), app.id, "refs/heads/gone", 1 << 20)
        .await;
    assert!(matches!(err, Err(GitError::UnknownRev { .. })), "{err:?}");
    // An app with no repository yet has no branches either.
    let other = h.core.store.create_app("other", STACK).await.expect("app");
    let err = h
        .core
        .git
        .source_blob(h.core.blobs.as_ref(), other.id, "main", 1 << 20)
        .await;
    assert!(matches!(err, Err(GitError::UnknownRev { .. })), "{err:?}");
}

#[tokio::test]
async fn a_repository_missing_from_this_replica_comes_back_from_its_bundle() {
    let dir = tempfile::tempdir().expect("dir");
    let h = harness(&dir).await;
    let app = h.core.store.create_app("gitapp", STACK).await.expect("app");
    // No bundle yet: the repository starts empty.
    let repo = h.core.git_repo(app.id).await.expect("repo");
    assert!(h
        .core
        .store
        .git_bundle(app.id)
        .await
        .expect("row")
        .is_none());
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("work");
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("Procfile"), "web: true\n").expect("write");
    git(&work, &["add", "."]);
    git(&work, &["commit", "-qm", "one"]);
    let target = repo.display().to_string();
    git(&work, &["push", "-q", &target, "main", "main:feature"]);
    let head = git(&work, &["rev-parse", "HEAD"]);

    h.core.save_git_bundle(app.id).await.expect("bundle");
    let sha = h
        .core
        .store
        .git_bundle(app.id)
        .await
        .expect("row")
        .expect("a bundle");
    assert!(
        h.core
            .store
            .blobs_in_use()
            .await
            .expect("in use")
            .contains(&sha),
        "the blob collection keeps the bundle"
    );

    // Another replica (or this one, its disk lost) has no repository: it is restored.
    std::fs::remove_dir_all(&repo).expect("remove");
    let restored = h.core.git_repo(app.id).await.expect("restored");
    assert_eq!(restored, repo);
    let refs = git(
        &restored,
        &["for-each-ref", "--format=%(refname) %(objectname)"],
    );
    assert_eq!(
        refs,
        format!("refs/heads/feature {}refs/heads/main {}", head, head),
        "every branch, at its commit"
    );
    let text = h
        .core
        .git_read_file(app.id, "main", "Procfile", 1024)
        .await
        .expect("Procfile");
    assert_eq!(text, b"web: true\n");
    // The same through a source blob, after losing the repository again.
    std::fs::remove_dir_all(&repo).expect("remove");
    let blob = h
        .core
        .git_source_blob(app.id, "refs/heads/feature")
        .await
        .expect("blob");
    assert!(blob.size > 0);
    assert!(repo.join("HEAD").exists(), "restored again");
    // The scratch files are gone.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("git/.push"))
        .expect("scratch dir")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
