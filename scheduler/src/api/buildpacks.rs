//! `/apps/{app}/buildpack-installations`: the buildpacks an app builds with, as Heroku's
//! Platform API shapes them, and which buildpacks a build gets.
//!
//! Heroku's precedence, highest first: the buildpacks a deploy names (`--buildpack`), the
//! app's buildpacks (`buildpacks:set`), the `BUILDPACK_URL` config var, detection.

use manifold_slugbuilder::buildpack::{builtin_name, BuildpackSource};

use super::*;

/// The most buildpacks an app may run in one build.
const MAX_BUILDPACKS: usize = 16;

/// Refuses what an API user may not name: anything but a built-in (or Heroku's name for
/// one) or a remote git URL. `what` says where the name came from, for the message.
pub(super) fn check_buildpack(spec: &str, what: &str) -> Result<()> {
    BuildpackSource::parse_remote(spec)
        .map(drop)
        .map_err(|e| ApiError::invalid(format!("{what}: {e}")))
}

/// The buildpacks a build runs, by Heroku's precedence (see the module's doc), and a line
/// for the build's output saying where they came from; none: the build detects one.
pub(super) fn choose(
    deploy: Vec<String>,
    app: Vec<String>,
    config: &BTreeMap<String, String>,
) -> Result<(Vec<String>, String)> {
    if !deploy.is_empty() {
        for bp in &deploy {
            check_buildpack(bp, "--buildpack")?;
        }
        let line = format!(
            "-----> Buildpacks named by this deploy: {}",
            deploy.join(", ")
        );
        return Ok((deploy, line));
    }
    if !app.is_empty() {
        let line = format!(
            "-----> Buildpacks set on the app (manifold buildpacks): {}",
            app.join(", ")
        );
        return Ok((app, line));
    }
    match config.get("BUILDPACK_URL").map(|v| v.trim()) {
        Some(url) if !url.is_empty() => {
            check_buildpack(url, "config var BUILDPACK_URL")?;
            let line = format!("-----> Buildpack from the BUILDPACK_URL config var: {url}");
            Ok((vec![url.to_owned()], line))
        }
        _ => Ok((
            Vec::new(),
            "-----> No buildpack set: the build detects one".to_owned(),
        )),
    }
}

fn installations(urls: &[String]) -> Vec<Value> {
    urls.iter()
        .enumerate()
        .map(|(ordinal, url)| {
            json!({
                "ordinal": ordinal,
                "buildpack": {"url": url, "name": builtin_name(url).unwrap_or(url)},
            })
        })
        .collect()
}

pub(super) async fn list_buildpacks(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
) -> Result<axum::Json<Vec<Value>>> {
    Ok(axum::Json(installations(
        &core.store.buildpacks(&app).await?,
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Update {
    buildpack: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdatesBody {
    updates: Vec<Update>,
}

/// Replaces the app's buildpacks with `updates`, in order; none clears them.
pub(super) async fn put_buildpacks(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
    Json(body): Json<UpdatesBody>,
) -> Result<axum::Json<Vec<Value>>> {
    if body.updates.len() > MAX_BUILDPACKS {
        return Err(ApiError::invalid(format!(
            "{} buildpacks given; an app may have at most {MAX_BUILDPACKS}",
            body.updates.len()
        )));
    }
    let mut urls: Vec<String> = Vec::new();
    for (i, update) in body.updates.into_iter().enumerate() {
        let url = update.buildpack.trim().to_owned();
        check_buildpack(&url, &format!("buildpack {}", i + 1))?;
        if urls.contains(&url) {
            return Err(ApiError::invalid(format!(
                "buildpack {url} is named twice: an app runs each buildpack once"
            )));
        }
        urls.push(url);
    }
    Ok(axum::Json(installations(
        &core.store.set_buildpacks(&app, &urls).await?,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_deploy_beats_the_app_which_beats_buildpack_url_which_beats_detection() {
        let url = config(&[("BUILDPACK_URL", "https://example.test/bp.git")]);
        let chosen = |deploy: &[&str], app: &[&str], config: &BTreeMap<String, String>| {
            choose(strings(deploy), strings(app), config).expect("valid")
        };
        let (list, line) = chosen(&["nodejs"], &["python"], &url);
        assert_eq!(list, strings(&["nodejs"]));
        assert_eq!(line, "-----> Buildpacks named by this deploy: nodejs");
        let (list, line) = chosen(&[], &["heroku/python", "nodejs"], &url);
        assert_eq!(list, strings(&["heroku/python", "nodejs"]));
        assert!(
            line.ends_with("(manifold buildpacks): heroku/python, nodejs"),
            "{line}"
        );
        let (list, line) = chosen(&[], &[], &url);
        assert_eq!(list, strings(&["https://example.test/bp.git"]));
        assert!(line.contains("BUILDPACK_URL"), "{line}");
        assert!(chosen(&[], &[], &config(&[("BUILDPACK_URL", " ")]))
            .0
            .is_empty());
        let (list, line) = chosen(&[], &[], &BTreeMap::new());
        assert!(list.is_empty());
        assert!(line.contains("detects"), "{line}");
    }

    #[test]
    fn bad_names_are_refused_saying_where_they_came_from() {
        let err = choose(
            Vec::new(),
            Vec::new(),
            &config(&[("BUILDPACK_URL", "/srv/bp")]),
        )
        .expect_err("a path");
        let text = format!("{err:?}");
        assert!(text.contains("422"), "{text}");
        assert!(
            text.contains("config var BUILDPACK_URL: buildpack"),
            "{text}"
        );
        assert!(text.contains("/srv/bp"), "{text}");
        let err = choose(strings(&["file:///srv/bp"]), Vec::new(), &BTreeMap::new())
            .expect_err("file://");
        assert!(format!("{err:?}").contains("--buildpack: "), "{err:?}");
        // A deploy's own buildpacks are used even when BUILDPACK_URL is bad.
        let bad_url = config(&[("BUILDPACK_URL", "nonsense")]);
        assert!(choose(strings(&["python"]), Vec::new(), &bad_url).is_ok());
    }

    #[test]
    fn installations_name_built_ins_and_number_from_zero() {
        let list = installations(&strings(&["heroku/nodejs", "https://example.test/bp.git"]));
        assert_eq!(list[0]["ordinal"], 0);
        assert_eq!(list[0]["buildpack"]["name"], "nodejs");
        assert_eq!(list[0]["buildpack"]["url"], "heroku/nodejs");
        assert_eq!(list[1]["ordinal"], 1);
        assert_eq!(list[1]["buildpack"]["name"], "https://example.test/bp.git");
    }
}
