//! The built-in Node.js buildpack with the real npm registry: npm, Yarn and pnpm lockfiles,
//! Heroku's script order, pruning devDependencies and when not to, engines.node, the cache.
//! Each fixture depends on `ms` and has `is-number` as its one devDependency; its scripts
//! append their names to `order.txt`. About 10 s a build (Yarn and pnpm are installed from
//! the registry on a cold cache).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use serde_json::Value;

/// Builds `src` with the Node.js buildpack, a cache at `tmp/cache` and config vars `env`;
/// returns the build and the unpacked app (when it built).
fn build_node(src: &Path, tmp: &Path, env: &[(&str, &str)]) -> (Output, PathBuf) {
    let env_dir = tmp.join("env");
    let _ = fs::remove_dir_all(&env_dir);
    fs::create_dir_all(&env_dir).expect("mkdir env");
    for (name, value) in env {
        fs::write(env_dir.join(name), value).expect("write config var");
    }
    let slug = tmp.join("slug.tgz");
    let out = build(
        src,
        &slug,
        &[
            "--buildpack",
            "heroku/nodejs",
            "--cache-dir",
            tmp.join("cache").to_str().expect("utf8"),
            "--env-dir",
            env_dir.to_str().expect("utf8"),
        ],
    );
    let dyno = tmp.join("dyno");
    let _ = fs::remove_dir_all(&dyno);
    let app = if out.status.success() {
        unpack(&slug, &dyno)
    } else {
        dyno.join("app")
    };
    (out, app)
}

/// Changes the fixture's package.json with `edit`.
fn edit_package_json(src: &Path, edit: impl FnOnce(&mut Value)) {
    let path = src.join("package.json");
    let mut json: Value =
        serde_json::from_str(&fs::read_to_string(&path).expect("read")).expect("JSON");
    edit(&mut json);
    fs::write(&path, serde_json::to_string_pretty(&json).expect("JSON")).expect("write");
}

fn order(app: &Path) -> String {
    fs::read_to_string(app.join("order.txt")).expect("the scripts wrote order.txt")
}

#[test]
fn npm_yarn_and_pnpm_install_run_scripts_in_order_prune_and_cache() {
    for manager in ["npm", "yarn", "pnpm"] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = fixture(&format!("node-{manager}"), &tmp.path().join("src"));
        let (out, app) = build_node(&src, tmp.path(), &[]);
        assert_ok(&out);
        let text = log(&out);
        assert!(text.contains(&format!("-----> Using {manager} ")), "{text}");
        assert!(
            text.contains("Using node ") && text.contains("which satisfies >=18"),
            "{text}"
        );
        assert_eq!(
            order(&app),
            "heroku-prebuild\nbuild true\nheroku-cleanup\n",
            "{manager}"
        );
        assert!(
            app.join("node_modules/ms/package.json").exists(),
            "{manager}"
        );
        assert!(
            !app.join("node_modules/is-number").exists(),
            "{manager} left the devDependency"
        );
        assert!(text.contains("-----> Pruning devDependencies"), "{text}");
        if manager != "npm" {
            assert!(
                text.contains(&format!("-----> Installing {manager}")),
                "{text}"
            );
            assert!(
                !list(&tmp.path().join("slug.tgz"))
                    .iter()
                    .any(|e| e.contains("tools/")),
                "the {manager} tool stays in the cache"
            );
        }

        let (again, app) = build_node(&src, tmp.path(), &[]);
        assert_ok(&again);
        let text = log(&again);
        assert!(text.contains("-----> Restoring cache"), "{text}");
        assert!(text.contains("skipping install"), "{text}");
        if manager != "npm" {
            assert!(
                text.contains(&format!("-----> Using cached {manager} ")),
                "{text}"
            );
        }
        assert!(
            app.join("node_modules/ms/package.json").exists(),
            "{manager}"
        );
        assert!(!app.join("node_modules/is-number").exists(), "{manager}");
    }
}

#[test]
fn heroku_postbuild_replaces_build_and_production_false_keeps_dev_dependencies() {
    for (manager, keep) in [
        ("npm", ("NPM_CONFIG_PRODUCTION", "false")),
        ("yarn", ("YARN_PRODUCTION", "false")),
    ] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = fixture(&format!("node-{manager}"), &tmp.path().join("src"));
        edit_package_json(&src, |json| {
            json["scripts"]["heroku-postbuild"] = Value::from(
                "node -e \"require('fs').appendFileSync('order.txt', 'heroku-postbuild\\n')\"",
            );
        });
        let (out, app) = build_node(&src, tmp.path(), &[keep]);
        assert_ok(&out);
        assert_eq!(
            order(&app),
            "heroku-prebuild\nheroku-postbuild\nheroku-cleanup\n",
            "{manager}"
        );
        assert!(
            log(&out).contains(&format!("Skipping because {} is 'false'", keep.0)),
            "{}",
            log(&out)
        );
        assert!(app.join("node_modules/is-number").exists(), "{manager}");
    }
}

#[test]
fn engines_lockfiles_and_cache_settings_are_explained() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = fixture("node-npm", &tmp.path().join("src"));

    edit_package_json(&src, |json| json["engines"]["node"] = Value::from("<1"));
    let (out, _) = build_node(&src, tmp.path(), &[("NODE_MODULES_CACHE", "false")]);
    assert_ok(&out);
    let text = log(&out);
    for expected in [
        "-----> Resolving node version <1 (engines.node in package.json)",
        " !     Warning: The requested Node.js version isn't available on this stack.",
        "asks for node \"<1\" (engines.node)",
        "-----> Caching has been disabled because NODE_MODULES_CACHE=false",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
    let (again, _) = build_node(&src, tmp.path(), &[("NODE_MODULES_CACHE", "false")]);
    assert_ok(&again);
    assert!(!log(&again).contains("Restoring cache"), "{}", log(&again));

    edit_package_json(&src, |json| json["engines"]["node"] = Value::from("banana"));
    let (out, _) = build_node(&src, tmp.path(), &[]);
    assert_ok(&out);
    assert!(
        log(&out).contains("Warning: Invalid semver requirement \"banana\" in engines.node."),
        "{}",
        log(&out)
    );

    write_files(&src, &[("yarn.lock", "")]);
    // The earlier builds' slug goes, so that the failed build is seen to write none.
    fs::remove_file(tmp.path().join("slug.tgz")).expect("rm slug");
    fs::remove_file(tmp.path().join("slug.json")).expect("rm metadata");
    let (out, _) = build_node(&src, tmp.path(), &[]);
    assert_failed(
        &out,
        "failed to compile Node.js app",
        &tmp.path().join("slug.tgz"),
    );
    let text = log(&out);
    assert!(text.contains("Error: Multiple lockfiles found."), "{text}");
    assert!(
        text.contains(" !     yarn.lock\n !     package-lock.json\n"),
        "{text}"
    );
}

#[test]
fn cache_directories_are_restored_before_the_install_and_saved_after_the_build() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = fixture("node-npm", &tmp.path().join("src"));
    edit_package_json(&src, |json| {
        json["cacheDirectories"] =
            serde_json::json!(["node_modules", ".build-cache/", "../escape"]);
        // Counts its runs in a directory that only the cache carries from build to build.
        json["scripts"]["build"] = Value::from(
            "node -e \"const fs = require('fs'); fs.mkdirSync('.build-cache', {recursive: true}); \
             const f = '.build-cache/runs'; const n = fs.existsSync(f) ? +fs.readFileSync(f, 'utf8') + 1 : 1; \
             fs.writeFileSync(f, String(n)); fs.appendFileSync('order.txt', 'build ' + n + '\\n')\"",
        );
    });
    let (out, app) = build_node(&src, tmp.path(), &[]);
    assert_ok(&out);
    let text = log(&out);
    for expected in [
        "Warning: cacheDirectories entry \"../escape\" skipped",
        "- .build-cache (not cached - skipping)",
        "-----> Caching build",
        "Saving 2 cacheDirectories (package.json):",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
    assert!(order(&app).contains("build 1\n"), "{}", order(&app));
    assert!(!tmp.path().join("escape").exists());

    let (again, app) = build_node(&src, tmp.path(), &[]);
    assert_ok(&again);
    let text = log(&again);
    assert!(
        text.contains("Loading from cacheDirectories (package.json):"),
        "{text}"
    );
    assert!(text.contains("       - .build-cache\n"), "{text}");
    assert!(order(&app).contains("build 2\n"), "{}", order(&app));
    assert!(!app.join("node_modules/is-number").exists(), "still pruned");
}
