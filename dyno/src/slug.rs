//! `slug.json`: what a build says about the slug it made ([`SlugMetadata`]).
//!
//! The slugbuilder writes it beside the slug, the agent's build dyno reads it back and sends
//! it to the scheduler, which keeps its process types with the slug. Defined here so that
//! the three agree on its fields. It is written inside the build dyno, next to the app's
//! code and every buildpack's scripts, so a reader treats it as untrusted input: read it
//! through `manifold_slugbuilder::metadata::parse`, the one gate that checks every field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A buildpack that took part in a build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildpackInfo {
    /// What its `bin/detect` printed, e.g. `Python`.
    pub name: String,
    /// How it was named: a built-in's name, a directory or a git URL.
    pub url: String,
}

/// The slug's metadata, written as JSON beside the slug.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlugMetadata {
    /// Process type → command: the Procfile's, over the buildpacks' `default_process_types`.
    pub process_types: BTreeMap<String, String>,
    /// The buildpacks that compiled the app, in order.
    pub buildpacks: Vec<BuildpackInfo>,
    /// The stack the slug was built for and must run on.
    pub stack: String,
    /// `SOURCE_VERSION` (the source's commit) if known.
    pub commit: Option<String>,
    /// Hex sha256 of the slug file.
    pub sha256: String,
    /// Size of the slug file in bytes.
    pub size: u64,
    /// Wall time of the whole build, packing included.
    pub duration_ms: u64,
    /// Config vars the buildpacks' `bin/release` asked for (legacy; for a first release).
    pub config_vars: BTreeMap<String, String>,
    /// Add-ons the buildpacks' `bin/release` asked for (for a first deploy).
    pub addons: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The field names are a contract with slugs built by older slugbuilders: a rename must
    /// fail here.
    #[test]
    fn the_json_keeps_its_field_names() {
        let text = r#"{
            "process_types": {"web": "gunicorn app:app", "release": "./migrate"},
            "buildpacks": [{"name": "Python", "url": "python"}],
            "stack": "bookworm",
            "commit": null,
            "sha256": "ab",
            "size": 1234,
            "duration_ms": 5,
            "config_vars": {"LANG": "en_US.UTF-8"},
            "addons": ["heroku-postgresql"]
        }"#;
        let meta: SlugMetadata = serde_json::from_str(text).expect("parse");
        assert_eq!(meta.process_types[crate::WEB], "gunicorn app:app");
        assert_eq!(meta.buildpacks[0].url, "python");
        assert_eq!(
            (meta.size, meta.duration_ms, meta.commit.as_deref()),
            (1234, 5, None)
        );
        let again: serde_json::Value = serde_json::to_value(&meta).expect("serialise");
        let want: serde_json::Value = serde_json::from_str(text).expect("json");
        assert_eq!(again, want);
    }
}
