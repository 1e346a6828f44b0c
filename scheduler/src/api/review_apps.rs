//! `/pipelines/{p}/review-apps`, `/review-apps/{app}`: temporary apps of a pipeline made
//! from a branch's source (see [`crate::review_apps`]). The source is the branch of the
//! pipeline's repository (the git repository of its staging app), or, when the request has
//! a body, that body (a tar.gz, as a build's upload) said to be of the branch.

use super::*;
use crate::pipelines::{check_branch, review_app_name, ReviewApp, Stage};
use crate::store::NewReviewApp;

/// Longest life a review app may be given (Heroku: 30 days).
const MAX_TTL_HOURS: u32 = 720;

fn review_json(r: &ReviewApp) -> Value {
    json!({
        "id": r.app_id,
        "app": {"id": r.app_id, "name": r.app},
        "pipeline": {"id": r.pipeline_id, "name": r.pipeline},
        "branch": r.branch,
        "expires_at": r.expires_at.map(rfc3339),
        "created_at": rfc3339(r.created_at),
    })
}

pub(super) async fn list_review_apps(
    State(core): State<Arc<Core>>,
    Path(pipeline): Path<String>,
) -> Result<axum::Json<Vec<Value>>> {
    let reviews = core.store.review_apps(Some(&pipeline)).await?;
    Ok(axum::Json(reviews.iter().map(review_json).collect()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateQuery {
    branch: String,
    ttl_hours: Option<u32>,
}

pub(super) async fn create_review_app(
    State(core): State<Arc<Core>>,
    Path(pipeline): Path<String>,
    headers: HeaderMap,
    query: std::result::Result<Query<CreateQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Result<(StatusCode, axum::Json<Value>)> {
    // Everything about the request is checked before its source is stored.
    let Query(query) = query.map_err(|e| {
        ApiError::bad_request(format!(
            "{e}: give ?branch=BRANCH and optionally &ttl_hours=N"
        ))
    })?;
    check_branch(&query.branch).map_err(ApiError::bad_request)?;
    let ttl = match query.ttl_hours {
        Some(h) if h == 0 || h > MAX_TTL_HOURS => {
            return Err(ApiError::invalid(format!(
                "ttl_hours {h} is out of range: from 1 to {MAX_TTL_HOURS}"
            )))
        }
        other => other,
    };
    let pipeline = core.store.pipeline(&pipeline).await?;
    let repo_app = repository_app(&core, &pipeline.name).await?;
    let (source, app_json) = if has_body(&body) {
        let source = super::builds::receive_source(&core, &headers, body).await?;
        let app_json = crate::review_apps::app_json_in(core.blobs.as_ref(), &source.sha256)
            .await
            .map_err(ApiError::bad_request)?;
        (source, app_json)
    } else {
        let repo = repo_app.as_ref().ok_or_else(|| {
            ApiError::invalid(format!(
                "pipeline {} has no staging app whose repository has {}: add one, or upload the branch's source",
                pipeline.name, query.branch
            ))
        })?;
        from_git(&core, repo.id, &query.branch).await?
    };
    let manifest = manifest_of(app_json.as_deref().unwrap_or(b"{}"))?;
    for url in &manifest.buildpacks {
        super::buildpacks::check_buildpack(url, "app.json buildpacks")?;
    }
    let config = manifest.resolve_env(&pipeline.review_config).map_err(|e| {
        ApiError::invalid(format!(
            "{e} (or as a review config var of pipeline {})",
            pipeline.name
        ))
    })?;
    for key in config.keys() {
        check_config_key(key)?;
    }
    let stack = match (&manifest.stack, &repo_app) {
        (Some(stack), _) => stack.clone(),
        (None, Some(app)) => app.stack.clone(),
        (None, None) => "bookworm".to_owned(),
    };
    let suffix = format!("{:04x}", rand::random::<u16>());
    let name = review_app_name(&pipeline.name, &query.branch, &suffix);
    let (app, review) = core
        .store
        .create_review_app(&NewReviewApp {
            pipeline: &pipeline.name,
            app: &name,
            stack: &stack,
            branch: &query.branch,
            config: &config,
            buildpacks: &manifest.buildpacks,
            expires_at: ttl
                .map(|h| time::OffsetDateTime::now_utc() + time::Duration::hours(h.into())),
        })
        .await?;
    // The default certificate names every app.
    super::domains::publish(&core).await?;
    // app.json's add-ons, before the build, as Heroku's app setups provision them: their URLs
    // are set as they come up, and postdeploy waits for them (see `review_apps::follow`).
    for addon in &manifest.addons {
        if let Err(err) = core
            .create_addon(&app.name, &addon.service, addon.attach_as.as_deref())
            .await
        {
            // A review app without the add-ons its app.json asks for is not kept.
            core.delete_app(&app.name).await?;
            return Err(err.into());
        }
    }
    let (buildpacks, origin) =
        super::buildpacks::choose(Vec::new(), manifest.buildpacks.clone(), &app.config)?;
    let build = core
        .builds
        .start(&app, &source, buildpacks, origin, &user(&headers))
        .await?;
    tokio::spawn(crate::review_apps::follow(
        core.clone(),
        app.name.clone(),
        build.id,
        manifest,
    ));
    let mut out = review_json(&review);
    out["build"] = super::builds::build_json(&app.name, &build, &app.stack);
    Ok((StatusCode::CREATED, axum::Json(out)))
}

fn manifest_of(bytes: &[u8]) -> Result<manifold_appjson::AppJson> {
    manifold_appjson::AppJson::parse(bytes).map_err(|e| ApiError::invalid(e.to_string()))
}

/// The app whose git repository is the pipeline's: its staging app (else any of its apps
/// but review apps). A review app without app.json's `stack` runs on its stack.
async fn repository_app(core: &Core, pipeline: &str) -> Result<Option<App>> {
    let couplings = core.store.couplings(Some(pipeline)).await?;
    let pick = couplings
        .iter()
        .find(|c| c.stage == Stage::Staging)
        .or_else(|| couplings.iter().find(|c| c.stage != Stage::Review));
    Ok(match pick {
        Some(c) => Some(core.store.app(&c.app).await?),
        None => None,
    })
}

/// Whether the request carries a body (an uploaded source) rather than none (the source
/// is then the branch in the pipeline's repository): a body known to be empty (no
/// Content-Length, or 0, and not chunked) is none.
fn has_body(body: &Body) -> bool {
    axum::body::HttpBody::size_hint(body).exact() != Some(0)
}

/// The branch's source blob and app.json from the app's repository.
async fn from_git(
    core: &Core,
    repo: Uuid,
    branch: &str,
) -> Result<(crate::blobs::Blob, Option<Vec<u8>>)> {
    use crate::git::GitError;
    let refused = |err: GitError| match err {
        GitError::UnknownRev { .. } | GitError::BadRev { .. } | GitError::NotConfigured => {
            ApiError::invalid(err.to_string())
        }
        other => {
            tracing::error!("review app source: {other:?}");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                other.to_string(),
            )
        }
    };
    let rev = format!("refs/heads/{branch}");
    let limit = manifold_appjson::MAX_SIZE as u64;
    let app_json = match core.git_read_file(repo, &rev, "app.json", limit).await {
        Ok(bytes) => Some(bytes),
        Err(GitError::FileNotFound { .. }) => None,
        Err(GitError::FileTooLarge { .. }) => {
            return Err(ApiError::invalid(format!(
                "app.json in {branch} is larger than {limit} bytes"
            )))
        }
        Err(err) => return Err(refused(err)),
    };
    let source = core.git_source_blob(repo, &rev).await.map_err(refused)?;
    Ok((source, app_json))
}

/// `DELETE /review-apps/{app}`: the app with its dynos, releases and coupling.
pub(super) async fn delete_review_app(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
) -> Result<axum::Json<Value>> {
    core.store.app(&app).await?;
    let review = core
        .store
        .review_apps(None)
        .await?
        .into_iter()
        .find(|r| r.app == app)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "{app} is not a review app: destroy it with `manifold apps:destroy {app}`"
            ))
        })?;
    core.delete_app(&app).await?;
    Ok(axum::Json(review_json(&review)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::Method;
    use serde_json::json;
    use time::OffsetDateTime;

    use crate::model::{BuildStatus, Slug};
    use crate::store::BuildOutcome;
    use crate::testing::{settings, Harness, API_TOKEN, STACK};

    /// A tar.gz source with these files.
    fn source(files: &[(&str, &str)]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for (path, text) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(text.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, path, text.as_bytes())
                .expect("append");
        }
        tar.into_inner().expect("tar").finish().expect("gzip")
    }

    async fn create(h: &Harness, query: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
        let (status, _, bytes) = h
            .raw(
                Method::POST,
                &format!("/pipelines/shop/review-apps?{query}"),
                API_TOKEN,
                "application/gzip",
                Body::from(body),
            )
            .await;
        (
            status.as_u16(),
            serde_json::from_slice(&bytes).unwrap_or_default(),
        )
    }

    const APP_JSON: &str = r#"{
        "env": {"GREETING": {"value": "Review"}, "NEED": {"description": "must be given"}},
        "formation": {"web": {"quantity": 1}},
        "scripts": {"postdeploy": "./seed"}
    }"#;

    /// Runs git in `dir` (as a user would, with no global config).
    fn git(dir: &std::path::Path, args: &[&str]) {
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
    }

    #[tokio::test]
    async fn without_a_body_the_source_is_the_branch_of_the_staging_apps_repository() {
        let dir = tempfile::tempdir().expect("dir");
        let h = Harness::new(settings(Duration::from_secs(30))).await;
        h.core
            .git
            .configure(&dir.path().join("git"), std::path::Path::new("/bin/false"))
            .expect("configure git");
        let _agent = h.agent("h1").await;
        h.deployed("shop-staging", &[("web", "bin/web")]).await;
        let staging = h.core.store.app("shop-staging").await.expect("staging");
        let (status, _) = h
            .api(
                Method::POST,
                "/pipelines",
                json!({"name": "shop", "app": "shop-staging", "stage": "staging"}),
            )
            .await;
        assert_eq!(status.as_u16(), 201);
        // A push of branch feature-x to staging's repository (not deployed: not main).
        let repo = h.core.git_repo(staging.id).await.expect("repo");
        let work = dir.path().join("work");
        std::fs::create_dir(&work).expect("work");
        git(&work, &["init", "-q", "-b", "main"]);
        std::fs::write(work.join("Procfile"), "web: bin/web\n").expect("write");
        git(&work, &["add", "."]);
        git(&work, &["commit", "-qm", "main"]);
        git(&work, &["checkout", "-q", "-b", "feature-x"]);
        std::fs::write(
            work.join("app.json"),
            r#"{"env": {"GREETING": "from the branch"}}"#,
        )
        .expect("write");
        git(&work, &["add", "."]);
        git(&work, &["commit", "-qm", "review"]);
        git(
            &work,
            &[
                "push",
                "-q",
                &repo.display().to_string(),
                "main",
                "feature-x",
            ],
        );

        let (status, said) = create_from_git(&h, "branch=no-such-branch").await;
        assert_eq!(status, 422, "{said}");
        assert!(
            said["message"]
                .as_str()
                .unwrap_or("")
                .contains("no-such-branch"),
            "{said}"
        );
        assert_eq!(
            h.core.store.apps().await.expect("apps").len(),
            1,
            "nothing created"
        );

        let (status, review) = create_from_git(&h, "branch=feature-x").await;
        assert_eq!(status, 201, "{review}");
        let name = review["app"]["name"].as_str().expect("name");
        let app = h.core.store.app(name).await.expect("the review app");
        assert_eq!(app.config["GREETING"], "from the branch");
        let builds = h.core.store.builds(name).await.expect("builds");
        let expected = h
            .core
            .git_source_blob(staging.id, "refs/heads/feature-x")
            .await
            .expect("blob");
        assert_eq!(
            builds[0].source_sha256, expected.sha256,
            "built from the branch"
        );
    }

    async fn create_from_git(h: &Harness, query: &str) -> (u16, serde_json::Value) {
        let (status, _, bytes) = h
            .raw(
                Method::POST,
                &format!("/pipelines/shop/review-apps?{query}"),
                API_TOKEN,
                "application/json",
                Body::empty(),
            )
            .await;
        (
            status.as_u16(),
            serde_json::from_slice(&bytes).unwrap_or_default(),
        )
    }

    #[tokio::test]
    async fn a_review_app_is_set_up_from_its_branch_and_goes_away_whole() {
        let h = Harness::new(settings(Duration::from_secs(30))).await;
        let _agent = h.agent("h1").await;
        h.deployed("shop-staging", &[("web", "bin/web")]).await;
        let (status, _) = h
            .api(
                Method::POST,
                "/pipelines",
                json!({"name": "shop", "app": "shop-staging", "stage": "staging"}),
            )
            .await;
        assert_eq!(status.as_u16(), 201);
        let files = [("app.json", APP_JSON), ("Procfile", "web: bin/web\n")];

        // Refused, with nothing created: NEED is neither in the review config nor given;
        // a bad branch, TTL or app.json; no branch; an unknown pipeline.
        let (status, said) = create(&h, "branch=feature-x", source(&files)).await;
        assert_eq!(status, 422, "{said}");
        assert!(
            said["message"]
                .as_str()
                .unwrap_or("")
                .contains("requires config vars NEED"),
            "{said}"
        );
        for (query, body, code, says) in [
            ("branch=a..b", source(&files), 400, "invalid branch name"),
            (
                "branch=x&ttl_hours=0",
                source(&files),
                422,
                "ttl_hours 0 is out of range",
            ),
            ("ttl_hours=3", source(&files), 400, "branch"),
            (
                "branch=x",
                source(&[("app.json", "{\"env\": 3}")]),
                422,
                "app.json: env: expected an object",
            ),
            (
                "branch=x",
                b"not gzip".to_vec(),
                400,
                "gzip-compressed tarball",
            ),
        ] {
            let (status, said) = create(&h, query, body).await;
            assert_eq!(status, code, "{query}: {said}");
            assert!(
                said["message"].as_str().unwrap_or("").contains(says),
                "{query}: {said}"
            );
        }
        let (status, _, _) = h
            .raw(
                Method::POST,
                "/pipelines/nope/review-apps?branch=x",
                API_TOKEN,
                "application/gzip",
                Body::from(source(&files)),
            )
            .await;
        assert_eq!(status.as_u16(), 404);
        assert_eq!(
            h.core.store.apps().await.expect("apps").len(),
            1,
            "nothing created"
        );

        let (status, _) = h
            .api(
                Method::PATCH,
                "/pipelines/shop/stage/review/config-vars",
                json!({"NEED": "from-pipeline"}),
            )
            .await;
        assert_eq!(status.as_u16(), 200);
        let (status, review) = create(&h, "branch=Feature/X&ttl_hours=2", source(&files)).await;
        assert_eq!(status, 201, "{review}");
        let name = review["app"]["name"].as_str().expect("name").to_owned();
        assert!(name.starts_with("shop-pr-feature-x-"), "{name}");
        let app = h.core.store.app(&name).await.expect("the review app");
        assert_eq!(app.stack, STACK, "staging's stack");
        assert_eq!(app.config["GREETING"], "Review");
        assert_eq!(app.config["NEED"], "from-pipeline");
        let (_, listed) = h
            .api(Method::GET, "/pipelines/shop/review-apps", json!(null))
            .await;
        assert_eq!(listed[0]["app"]["name"], name.as_str());
        assert_eq!(listed[0]["branch"], "Feature/X");
        let coupling = h
            .core
            .store
            .couplings(Some("shop"))
            .await
            .expect("couplings");
        assert!(coupling
            .iter()
            .any(|c| c.app == name && c.stage == crate::pipelines::Stage::Review));

        // The build (sent to h1) succeeds: the formation is scaled, postdeploy runs once.
        let build = h.core.store.builds(&name).await.expect("builds").remove(0);
        assert_eq!(build.status, BuildStatus::Pending);
        let now = OffsetDateTime::now_utc();
        let slug = Slug {
            id: uuid::Uuid::new_v4(),
            app_id: app.id,
            sha256: "ef".repeat(32),
            size: 10,
            process_types: [("web".to_owned(), "bin/web".to_owned())].into(),
            stack: STACK.into(),
            buildpacks: Vec::new(),
            created_at: now,
        };
        h.core
            .store
            .finish_build(
                build.id,
                BuildOutcome::Succeeded {
                    slug,
                    description: "Deploy".into(),
                },
                "ann",
            )
            .await
            .expect("built");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let names = loop {
            let dynos = h.core.store.dynos(Some(&name)).await.expect("dynos");
            let names: Vec<String> = dynos.iter().map(|d| d.name.clone()).collect();
            if names.iter().any(|n| n.starts_with("run.")) {
                break names;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no postdeploy: {names:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let postdeploy: Vec<_> = h
            .core
            .store
            .dynos(Some(&name))
            .await
            .expect("dynos")
            .into_iter()
            .filter(|d| d.name.starts_with("run."))
            .collect();
        assert_eq!(postdeploy.len(), 1, "{names:?}");
        assert_eq!(postdeploy[0].command, "./seed");
        let formation = h.core.store.formation(&name).await.expect("formation");
        assert!(
            formation
                .iter()
                .any(|f| f.process_type == "web" && f.quantity == 1),
            "{formation:?}"
        );

        // Not yet expired; then expired: destroyed with its dynos, releases and coupling.
        let gone = crate::review_apps::expire(&h.core, now)
            .await
            .expect("expire");
        assert!(gone.is_empty());
        let later = now + time::Duration::hours(3);
        let gone = crate::review_apps::expire(&h.core, later)
            .await
            .expect("expire");
        assert_eq!(gone, std::slice::from_ref(&name));
        assert!(h.core.store.app(&name).await.is_err());
        assert!(h.core.store.dynos(Some(&name)).await.is_err());
        assert!(h
            .core
            .store
            .review_apps(None)
            .await
            .expect("list")
            .is_empty());
        assert_eq!(
            h.core.store.couplings(Some("shop")).await.expect("c").len(),
            1
        );

        // reviewapps:destroy; a plain app is not a review app.
        let (status, review) = create(&h, "branch=other", source(&files)).await;
        assert_eq!(status, 201, "{review}");
        let name = review["app"]["name"].as_str().expect("name").to_owned();
        let (status, _) = h
            .api(Method::DELETE, &format!("/review-apps/{name}"), json!(null))
            .await;
        assert_eq!(status.as_u16(), 200);
        assert!(h.core.store.app(&name).await.is_err());
        let (status, said) = h
            .api(Method::DELETE, "/review-apps/shop-staging", json!(null))
            .await;
        assert_eq!(status.as_u16(), 404);
        assert!(
            said["message"]
                .as_str()
                .unwrap_or("")
                .contains("not a review app"),
            "{said}"
        );
    }
}
