//! Pipelines (Heroku Flow): apps grouped by stage, so that the slug that ran in staging is
//! promoted to production as it is, without a rebuild.
//!
//! A pipeline has a name and couplings; a coupling puts one app at one [`Stage`]. An app is
//! in one pipeline at most. Stages run in one direction (review → development → staging →
//! production): a promotion copies the source app's current slug to apps of later stages
//! only, each as a new release with the target's own config vars, and the target's release
//! phase runs as for any release. The rules live here, pure, so the store checks them inside
//! the promotion's transaction and the API can explain them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// A pipeline's stages, in the order slugs flow through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Temporary apps of a branch (`reviewapps:create`).
    Review,
    Development,
    Staging,
    Production,
}

impl Stage {
    pub const ALL: [Stage; 4] = [
        Stage::Review,
        Stage::Development,
        Stage::Staging,
        Stage::Production,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Review => "review",
            Stage::Development => "development",
            Stage::Staging => "staging",
            Stage::Production => "production",
        }
    }

    /// The stage a `--stage` names, or an error listing the stages.
    pub fn parse(text: &str) -> Result<Stage, String> {
        Stage::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| {
                format!("unknown stage {text:?}: use review, development, staging or production")
            })
    }

    /// Where a promotion from this stage goes when no target is named: the next stage
    /// (none after production).
    pub fn next(self) -> Option<Stage> {
        match self {
            Stage::Review => Some(Stage::Development),
            Stage::Development => Some(Stage::Staging),
            Stage::Staging => Some(Stage::Production),
            Stage::Production => None,
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    pub id: Uuid,
    pub name: String,
    /// The config vars each review app of the pipeline starts with (on top of its
    /// app.json's `env`).
    pub review_config: BTreeMap<String, String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// One app's place in a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Coupling {
    pub id: Uuid,
    pub pipeline_id: Uuid,
    /// The pipeline's name.
    pub pipeline: String,
    pub app_id: Uuid,
    /// The app's name.
    pub app: String,
    pub stage: Stage,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A review app: a temporary app of a pipeline, made from a branch and coupled at stage
/// review, destroyed by `reviewapps:destroy` or when it expires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewApp {
    pub app_id: Uuid,
    pub app: String,
    pub pipeline_id: Uuid,
    pub pipeline: String,
    pub branch: String,
    /// When the leader destroys it (`None`: never).
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A review app's name: `PIPELINE-pr-BRANCH-SUFFIX`, the branch reduced to what an app
/// name may hold (lowercase letters, digits, single dashes) and the whole cut to the
/// 30 characters app names allow, `suffix` (4 random hex digits) kept so that two review
/// apps of one branch differ.
pub fn review_app_name(pipeline: &str, branch: &str, suffix: &str) -> String {
    let mut slug = String::new();
    for c in branch.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    let head = format!("{pipeline}-pr-{slug}");
    let room = 30 - suffix.len() - 1;
    let head: String = head.chars().take(room).collect();
    format!("{}-{suffix}", head.trim_end_matches('-'))
}

/// A branch name as git allows it, roughly (`git check-ref-format`): what a review app
/// is asked to be made from.
pub fn check_branch(branch: &str) -> Result<(), String> {
    let ok = !branch.is_empty()
        && branch.len() <= 255
        && !branch.starts_with(['-', '/', '.'])
        && !branch.ends_with(['/', '.'])
        && !branch.contains("..")
        && !branch.contains("//")
        && !branch.ends_with(".lock")
        && branch
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"~^:?*[\\".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid branch name {branch:?}"))
    }
}

/// Pipeline names follow app names' rules (Heroku's): 3 to 30 lowercase letters, digits
/// and dashes, starting with a letter, not ending with a dash.
pub fn check_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let ok = (3..=30).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-';
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid pipeline name {name:?}: use 3 to 30 lowercase letters, digits and dashes, starting with a letter and not ending with a dash"
        ))
    }
}

/// Why a promotion cannot go ahead. Checked before anything is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromotionError {
    #[error("{app} is not in a pipeline: add it with `manifold pipelines:add PIPELINE -a {app} --stage STAGE`")]
    SourceNotCoupled { app: String },
    #[error("{app} is in pipeline {actual}, not {expected}")]
    OtherPipeline {
        app: String,
        actual: String,
        expected: String,
    },
    #[error("{app} is not in a pipeline; only apps of {pipeline} can be promoted to")]
    TargetNotCoupled { app: String, pipeline: String },
    #[error("cannot promote {app} to itself")]
    SameApp { app: String },
    #[error("{target} ({target_stage}) is not downstream of {from} ({from_stage}): promotion goes review → development → staging → production")]
    NotDownstream {
        from: String,
        from_stage: Stage,
        target: String,
        target_stage: Stage,
    },
    #[error("{app} is at stage production: there is nothing downstream to promote to")]
    NothingDownstream { app: String },
    #[error("pipeline {pipeline} has no app at stage {stage} to promote {from} to: add one with `manifold pipelines:add {pipeline} -a APP --stage {stage}`")]
    EmptyStage {
        pipeline: String,
        stage: Stage,
        from: String,
    },
    #[error("{target} is on stack {target_stack} but {from}'s slug was built for {slug_stack}: a slug runs on the stack it was built for")]
    StackMismatch {
        from: String,
        target: String,
        target_stack: String,
        slug_stack: String,
    },
    #[error("{app} is named twice among the targets")]
    Duplicate { app: String },
}

/// Chooses and checks a promotion's targets among the pipeline's `couplings`: the named
/// `targets`, or, when none are named, every app of the stage after the source's. Returns
/// the couplings of the targets, in the order given (or by app name).
pub fn plan_promotion(
    couplings: &[Coupling],
    source: &str,
    targets: &[String],
) -> Result<Vec<Coupling>, PromotionError> {
    let from = couplings.iter().find(|c| c.app == source).ok_or_else(|| {
        PromotionError::SourceNotCoupled {
            app: source.to_owned(),
        }
    })?;
    if targets.is_empty() {
        let next = from.stage.next().ok_or(PromotionError::NothingDownstream {
            app: source.to_owned(),
        })?;
        let mut chosen: Vec<Coupling> = couplings
            .iter()
            .filter(|c| c.pipeline_id == from.pipeline_id && c.stage == next)
            .cloned()
            .collect();
        if chosen.is_empty() {
            return Err(PromotionError::EmptyStage {
                pipeline: from.pipeline.clone(),
                stage: next,
                from: source.to_owned(),
            });
        }
        chosen.sort_by(|a, b| a.app.cmp(&b.app));
        return Ok(chosen);
    }
    let mut chosen: Vec<Coupling> = Vec::new();
    for target in targets {
        if target == source {
            return Err(PromotionError::SameApp {
                app: source.to_owned(),
            });
        }
        if chosen.iter().any(|c| &c.app == target) {
            return Err(PromotionError::Duplicate {
                app: target.clone(),
            });
        }
        let to = couplings.iter().find(|c| &c.app == target).ok_or_else(|| {
            PromotionError::TargetNotCoupled {
                app: target.clone(),
                pipeline: from.pipeline.clone(),
            }
        })?;
        if to.pipeline_id != from.pipeline_id {
            return Err(PromotionError::OtherPipeline {
                app: target.clone(),
                actual: to.pipeline.clone(),
                expected: from.pipeline.clone(),
            });
        }
        if to.stage <= from.stage {
            return Err(PromotionError::NotDownstream {
                from: source.to_owned(),
                from_stage: from.stage,
                target: target.clone(),
                target_stage: to.stage,
            });
        }
        chosen.push(to.clone());
    }
    Ok(chosen)
}

/// A promotion's release description, as Heroku words it.
pub fn description(source: &str, version: u32) -> String {
    format!("Promote {source} v{version}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coupling(pipeline: &str, app: &str, stage: Stage) -> Coupling {
        // Ids derived from the names, so couplings of one pipeline share its id.
        let id = |s: &str| {
            let mut bytes = [0u8; 16];
            for (i, b) in s.bytes().enumerate() {
                bytes[i % 16] ^= b.wrapping_add(i as u8);
            }
            Uuid::from_bytes(bytes)
        };
        Coupling {
            id: Uuid::new_v4(),
            pipeline_id: id(pipeline),
            pipeline: pipeline.to_owned(),
            app_id: id(app),
            app: app.to_owned(),
            stage,
            created_at: OffsetDateTime::now_utc(),
        }
    }

    fn shop() -> Vec<Coupling> {
        vec![
            coupling("shop", "shop-dev", Stage::Development),
            coupling("shop", "shop-staging", Stage::Staging),
            coupling("shop", "shop-eu", Stage::Production),
            coupling("shop", "shop-us", Stage::Production),
            coupling("blog", "blog-prod", Stage::Production),
        ]
    }

    fn names(chosen: &[Coupling]) -> Vec<&str> {
        chosen.iter().map(|c| c.app.as_str()).collect()
    }

    #[test]
    fn stages_parse_order_and_step() {
        assert_eq!(Stage::parse("staging"), Ok(Stage::Staging));
        let err = Stage::parse("prod").expect_err("unknown");
        assert!(err.contains("unknown stage \"prod\""), "{err}");
        assert!(Stage::Review < Stage::Development && Stage::Staging < Stage::Production);
        assert_eq!(Stage::Development.next(), Some(Stage::Staging));
        assert_eq!(Stage::Production.next(), None);
    }

    #[test]
    fn review_app_names_are_valid_app_names() {
        assert_eq!(
            review_app_name("shop", "feature-x", "1a2b"),
            "shop-pr-feature-x-1a2b"
        );
        assert_eq!(
            review_app_name("shop", "Feature/Big__Change!", "1a2b"),
            "shop-pr-feature-big-chang-1a2b"
        );
        let long = review_app_name("a-long-pipeline-name", "a-very-long-branch", "ffff");
        assert_eq!(long.len(), 30, "{long}");
        assert!(long.ends_with("-ffff") && !long.contains("--"), "{long}");
        for name in [long, review_app_name("shop", "---", "0000")] {
            assert!(check_name(&name).is_ok(), "{name}");
        }
        assert!(check_branch("feature/x-1").is_ok());
        for bad in ["", "-x", "a..b", "a b", "x.lock", "a:b", "a/"] {
            assert!(check_branch(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_follow_app_rules() {
        assert!(check_name("shop").is_ok());
        for bad in ["ab", "Shop", "1shop", "shop-", "shop_x", &"a".repeat(31)] {
            let err = check_name(bad).expect_err(bad);
            assert!(err.starts_with("invalid pipeline name"), "{err}");
        }
    }

    #[test]
    fn default_targets_are_the_next_stage() {
        let all = shop();
        assert_eq!(
            names(&plan_promotion(&all, "shop-staging", &[]).expect("plan")),
            ["shop-eu", "shop-us"]
        );
        assert_eq!(
            names(&plan_promotion(&all, "shop-dev", &[]).expect("plan")),
            ["shop-staging"]
        );
        assert_eq!(
            plan_promotion(&all, "shop-eu", &[]),
            Err(PromotionError::NothingDownstream {
                app: "shop-eu".into()
            })
        );
        let lonely = vec![coupling("solo", "solo-dev", Stage::Development)];
        let err = plan_promotion(&lonely, "solo-dev", &[]).expect_err("empty");
        assert!(
            err.to_string()
                .starts_with("pipeline solo has no app at stage staging"),
            "{err}"
        );
    }

    #[test]
    fn named_targets_must_be_downstream_in_the_same_pipeline() {
        let all = shop();
        let t = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(&plan_promotion(&all, "shop-dev", &t(&["shop-us"])).expect("skip a stage")),
            ["shop-us"]
        );
        let cases: [(&str, &[&str], &str); 6] = [
            (
                "shop-staging",
                &["shop-dev"],
                "is not downstream of shop-staging",
            ),
            ("shop-eu", &["shop-us"], "is not downstream of shop-eu"),
            (
                "shop-staging",
                &["blog-prod"],
                "is in pipeline blog, not shop",
            ),
            ("shop-staging", &["shop-staging"], "to itself"),
            ("shop-staging", &["nobody"], "nobody is not in a pipeline"),
            ("shop-staging", &["shop-eu", "shop-eu"], "named twice"),
        ];
        for (source, targets, says) in cases {
            let err = plan_promotion(&all, source, &t(targets)).expect_err(says);
            assert!(
                err.to_string().contains(says),
                "{source} → {targets:?}: {err}"
            );
        }
        let err = plan_promotion(&all, "stray", &[]).expect_err("not coupled");
        assert!(
            err.to_string().starts_with("stray is not in a pipeline"),
            "{err}"
        );
    }
}
