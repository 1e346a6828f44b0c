//! `buildpacks`, `buildpacks:set`, `buildpacks:add`, `buildpacks:remove`,
//! `buildpacks:clear`: the app's buildpacks, which its deploys use unless a deploy names its
//! own (`deploy --buildpack`). The scheduler checks each name; the list is read, changed
//! here and written back whole, as Heroku's CLI does with its buildpack installations.

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::*;

/// A change to an app's list of buildpacks. Indexes count from 1, as Heroku's CLI does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Change {
    /// Replace the one at the index (one past the end appends).
    Set(String, usize),
    /// Insert at the index, or append.
    Add(String, Option<usize>),
    /// Remove the one with this name.
    RemoveNamed(String),
    /// Remove the one at the index.
    RemoveAt(usize),
    Clear,
}

impl Change {
    /// `buildpacks:remove` takes a name or an index, not both.
    pub(super) fn remove(buildpack: Option<String>, index: Option<usize>) -> Result<Change> {
        match (buildpack, index) {
            (Some(name), None) => Ok(Change::RemoveNamed(name)),
            (None, Some(index)) => Ok(Change::RemoveAt(index)),
            (Some(_), Some(_)) => bail!("name the buildpack to remove or give --index, not both"),
            (None, None) => bail!("name the buildpack to remove, or give its --index"),
        }
    }

    /// The list after the change, or what is wrong with it.
    fn apply(&self, mut list: Vec<String>) -> Result<Vec<String>> {
        let check_index = |index: usize, max: usize| -> Result<usize> {
            if index == 0 || index > max {
                bail!(
                    "--index {index} is out of range: the app has {} buildpack(s); use 1 to {max}",
                    list.len()
                );
            }
            Ok(index - 1)
        };
        match self {
            Change::Set(name, index) => {
                let i = check_index(*index, list.len() + 1)?;
                if list.iter().enumerate().any(|(j, b)| b == name && j != i) {
                    bail!("the app already has buildpack {name}");
                }
                if i == list.len() {
                    list.push(name.clone());
                } else {
                    list[i] = name.clone();
                }
            }
            Change::Add(name, index) => {
                if list.contains(name) {
                    bail!("the app already has buildpack {name}");
                }
                let i = match index {
                    Some(index) => check_index(*index, list.len() + 1)?,
                    None => list.len(),
                };
                list.insert(i, name.clone());
            }
            Change::RemoveNamed(name) => {
                let Some(i) = list.iter().position(|b| b == name) else {
                    bail!("the app has no buildpack {name} (see `manifold buildpacks`)");
                };
                list.remove(i);
            }
            Change::RemoveAt(index) => {
                let i = check_index(*index, list.len())?;
                list.remove(i);
            }
            Change::Clear => list.clear(),
        }
        Ok(list)
    }
}

fn urls(installations: &Value) -> Vec<String> {
    installations
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|i| i["buildpack"]["url"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn print_list(app: &str, list: &[String]) {
    match list {
        [] => println!("{app} has no buildpacks set: a deploy uses BUILDPACK_URL or detects one."),
        [one] => println!("=== {app} Buildpack URL\n{one}"),
        many => {
            println!("=== {app} Buildpack URLs");
            for (i, url) in many.iter().enumerate() {
                println!("{}. {url}", i + 1);
            }
        }
    }
}

impl Ctx {
    pub(super) async fn buildpacks(&self, app: &str) -> Result<()> {
        let r = self
            .client
            .get(&format!("/apps/{app}/buildpack-installations"))
            .await?;
        if self.json {
            return print_json(&r.body);
        }
        print_list(app, &urls(&r.body));
        Ok(())
    }

    pub(super) async fn change_buildpacks(&self, app: &str, change: Change) -> Result<()> {
        let path = format!("/apps/{app}/buildpack-installations");
        let current = urls(&self.client.get(&path).await?.body);
        let list = change.apply(current)?;
        let updates: Vec<Value> = list.iter().map(|b| json!({ "buildpack": b })).collect();
        let r = self
            .client
            .put(&path, &json!({ "updates": updates }))
            .await?;
        if self.json {
            return print_json(&r.body);
        }
        let stored = urls(&r.body);
        if stored.is_empty() {
            println!("Buildpacks cleared. Next release on {app} will detect buildpacks normally.");
        } else {
            println!("Buildpacks set. Next release on {app} will use:");
            for (i, url) in stored.iter().enumerate() {
                println!("  {}. {url}", i + 1);
            }
            println!("Run `manifold deploy -a {app}` to create a new release using them.");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn changes_by_index_from_one_as_heroku() {
        let two = list(&["heroku/nodejs", "heroku/python"]);
        let set = |name: &str, i| Change::Set(name.into(), i).apply(two.clone());
        assert_eq!(
            set("generic", 1).expect("valid"),
            list(&["generic", "heroku/python"])
        );
        assert_eq!(
            set("generic", 3).expect("valid"),
            list(&["heroku/nodejs", "heroku/python", "generic"])
        );
        assert_eq!(
            set("heroku/nodejs", 1).expect("valid"),
            two,
            "setting one in place"
        );
        assert!(set("generic", 0).is_err());
        let err = set("generic", 4).expect_err("refused").to_string();
        assert!(err.contains("--index 4 is out of range"), "{err}");
        assert!(set("heroku/python", 1)
            .expect_err("refused")
            .to_string()
            .contains("already has"));
        assert_eq!(
            Change::Set("python".into(), 1)
                .apply(Vec::new())
                .expect("valid"),
            list(&["python"])
        );

        let add = |name: &str, i| Change::Add(name.into(), i).apply(two.clone());
        assert_eq!(
            add("generic", None).expect("valid"),
            list(&["heroku/nodejs", "heroku/python", "generic"])
        );
        assert_eq!(
            add("generic", Some(1)).expect("valid"),
            list(&["generic", "heroku/nodejs", "heroku/python"])
        );
        assert!(add("heroku/python", None).is_err());
        assert!(add("generic", Some(9)).is_err());

        assert_eq!(
            Change::RemoveNamed("heroku/nodejs".into())
                .apply(two.clone())
                .expect("valid"),
            list(&["heroku/python"])
        );
        assert!(Change::RemoveNamed("generic".into())
            .apply(two.clone())
            .is_err());
        assert_eq!(
            Change::RemoveAt(2).apply(two.clone()).expect("valid"),
            list(&["heroku/nodejs"])
        );
        assert!(Change::RemoveAt(3).apply(two.clone()).is_err());
        assert!(Change::Clear.apply(two).expect("valid").is_empty());
    }

    #[test]
    fn remove_takes_a_name_or_an_index() {
        assert_eq!(
            Change::remove(Some("x".into()), None).expect("valid"),
            Change::RemoveNamed("x".into())
        );
        assert_eq!(
            Change::remove(None, Some(2)).expect("valid"),
            Change::RemoveAt(2)
        );
        assert!(Change::remove(None, None).is_err());
        assert!(Change::remove(Some("x".into()), Some(1)).is_err());
    }
}
