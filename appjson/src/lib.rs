//! app.json: the manifest an app carries to say how to set it up (Heroku's schema,
//! <https://devcenter.heroku.com/articles/app-json-schema>): its stack and buildpacks, the
//! config vars it needs, its formation, a `postdeploy` script run once after the first
//! release, and its add-ons.
//!
//! Why strict: app.json is read before anything is created, so every mistake must stop the
//! setup there, with the field it is in (`env.SECRET.generator`), rather than surface later
//! as a half-made app. Unknown fields are errors too, except Heroku's descriptive ones
//! (`description`, `keywords`, `website`, `repository`, `logo`, `success_url`), which
//! change nothing about the app.
//!
//! Shared by the CLI (`apps:create --from DIR`) and whatever else sets apps up from source.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Largest app.json read (Heroku's manifests are a few KiB).
pub const MAX_SIZE: usize = 64 * 1024;

/// Most dynos of one process type app.json may ask for.
const MAX_QUANTITY: u64 = 1000;

/// Fields that describe the app without changing it: accepted and ignored.
const DESCRIPTIVE: [&str; 6] = [
    "description",
    "keywords",
    "website",
    "repository",
    "logo",
    "success_url",
];

/// The add-on services a cluster provisions (`addons:create`).
pub const SERVICES: [&str; 2] = ["postgresql", "redis"];

/// A parsed app.json.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppJson {
    pub name: Option<String>,
    pub stack: Option<String>,
    /// Buildpack names or URLs, in order.
    pub buildpacks: Vec<String>,
    pub env: BTreeMap<String, EnvVar>,
    /// Process type → how many and what size.
    pub formation: BTreeMap<String, Formation>,
    /// Run once in a one-off dyno after the first release.
    pub postdeploy: Option<Script>,
    pub addons: Vec<Addon>,
}

/// One `env` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvVar {
    pub description: Option<String>,
    pub value: Option<String>,
    /// Must be given when the app is set up (Heroku: true unless a value or a generator
    /// provides one).
    pub required: bool,
    pub generator: Option<Generator>,
}

/// How a value is made when none is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generator {
    /// 64 random hex digits (256 bits).
    Secret,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Formation {
    pub quantity: Option<u32>,
    pub size: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    pub command: String,
    pub size: Option<String>,
}

/// An add-on asked for: the service (`postgresql`, `redis`) and the plan as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addon {
    pub service: String,
    pub plan: String,
    /// The name its config var is attached as (`as`: `DATABASE` → `DATABASE_URL`).
    pub attach_as: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppJsonError {
    #[error("app.json is {size} bytes; the limit is {MAX_SIZE}")]
    TooLarge { size: usize },
    #[error("app.json is not valid JSON at line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("app.json: {field}: {message}")]
    Field { field: String, message: String },
    #[error("app.json requires config vars {}: give each with --env KEY=VALUE", .0.join(", "))]
    MissingRequired(Vec<String>),
}

fn field(field: impl Into<String>, message: impl Into<String>) -> AppJsonError {
    AppJsonError::Field {
        field: field.into(),
        message: message.into(),
    }
}

/// What a JSON value is, for "expected a string, found a number".
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn string(v: &Value, at: &str) -> Result<String, AppJsonError> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| field(at, format!("expected a string, found {}", kind(v))))
}

fn object<'a>(v: &'a Value, at: &str) -> Result<&'a Map<String, Value>, AppJsonError> {
    v.as_object()
        .ok_or_else(|| field(at, format!("expected an object, found {}", kind(v))))
}

fn array<'a>(v: &'a Value, at: &str) -> Result<&'a Vec<Value>, AppJsonError> {
    v.as_array()
        .ok_or_else(|| field(at, format!("expected an array, found {}", kind(v))))
}

/// Refuses any key of `map` not in `known`.
fn only(map: &Map<String, Value>, known: &[&str], at: &str) -> Result<(), AppJsonError> {
    match map.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(field(
            if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            },
            format!("unknown field (known: {})", known.join(", ")),
        )),
        None => Ok(()),
    }
}

/// A config var name the platform accepts: letters, digits and `_`, not starting with a
/// digit.
fn check_var_name(key: &str, at: &str) -> Result<(), AppJsonError> {
    let ok = !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(field(
            at,
            "invalid config var name: use letters, digits and _, not starting with a digit",
        ))
    }
}

impl AppJson {
    /// Parses app.json's bytes.
    pub fn parse(bytes: &[u8]) -> Result<AppJson, AppJsonError> {
        if bytes.len() > MAX_SIZE {
            return Err(AppJsonError::TooLarge { size: bytes.len() });
        }
        let root: Value = serde_json::from_slice(bytes).map_err(|e| AppJsonError::Syntax {
            line: e.line(),
            column: e.column(),
            message: e
                .to_string()
                .split(" at line")
                .next()
                .unwrap_or("")
                .to_owned(),
        })?;
        let root = object(&root, "(top level)")?;
        let mut known = vec![
            "name",
            "stack",
            "buildpacks",
            "env",
            "formation",
            "scripts",
            "addons",
        ];
        known.extend(DESCRIPTIVE);
        only(root, &known, "")?;
        let mut out = AppJson::default();
        if let Some(v) = root.get("name") {
            out.name = Some(string(v, "name")?);
        }
        if let Some(v) = root.get("stack") {
            out.stack = Some(string(v, "stack")?);
        }
        if let Some(v) = root.get("buildpacks") {
            for (i, b) in array(v, "buildpacks")?.iter().enumerate() {
                let at = format!("buildpacks[{i}]");
                let b = object(b, &at)?;
                only(b, &["url"], &at)?;
                let url = b
                    .get("url")
                    .ok_or_else(|| field(&at, "missing url"))
                    .and_then(|u| string(u, &format!("{at}.url")))?;
                out.buildpacks.push(url);
            }
        }
        if let Some(v) = root.get("env") {
            for (key, spec) in object(v, "env")? {
                let at = format!("env.{key}");
                check_var_name(key, &at)?;
                out.env.insert(key.clone(), env_var(spec, &at)?);
            }
        }
        if let Some(v) = root.get("formation") {
            for (process_type, spec) in object(v, "formation")? {
                let at = format!("formation.{process_type}");
                out.formation
                    .insert(process_type.clone(), formation(process_type, spec, &at)?);
            }
        }
        if let Some(v) = root.get("scripts") {
            let scripts = object(v, "scripts")?;
            only(scripts, &["postdeploy"], "scripts")?;
            if let Some(p) = scripts.get("postdeploy") {
                out.postdeploy = Some(script(p, "scripts.postdeploy")?);
            }
        }
        if let Some(v) = root.get("addons") {
            for (i, a) in array(v, "addons")?.iter().enumerate() {
                out.addons.push(addon(a, &format!("addons[{i}]"))?);
            }
        }
        Ok(out)
    }

    /// The config vars to set: each `env` entry's value from `given` (what the user passed),
    /// else its `value`, else a generated one; an entry that is required and has none of
    /// these is missing, and all missing ones are named at once. Keys of `given` that
    /// app.json does not list are set too.
    pub fn resolve_env(
        &self,
        given: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, AppJsonError> {
        let mut out = given.clone();
        let mut missing = Vec::new();
        for (key, var) in &self.env {
            if given.contains_key(key) {
                continue;
            }
            match (&var.value, var.generator) {
                (_, Some(Generator::Secret)) => {
                    out.insert(key.clone(), secret());
                }
                (Some(value), None) => {
                    out.insert(key.clone(), value.clone());
                }
                (None, None) if var.required => missing.push(key.clone()),
                (None, None) => {}
            }
        }
        if missing.is_empty() {
            Ok(out)
        } else {
            Err(AppJsonError::MissingRequired(missing))
        }
    }
}

/// 64 random hex digits, as Heroku's `generator: "secret"` makes.
pub fn secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn env_var(spec: &Value, at: &str) -> Result<EnvVar, AppJsonError> {
    if let Value::String(value) = spec {
        return Ok(EnvVar {
            value: Some(value.clone()),
            ..EnvVar::default()
        });
    }
    let spec = object(spec, at).map_err(|_| {
        field(
            at,
            format!("expected a string or an object, found {}", kind(spec)),
        )
    })?;
    only(spec, &["description", "value", "required", "generator"], at)?;
    let description = spec
        .get("description")
        .map(|d| string(d, &format!("{at}.description")))
        .transpose()?;
    let value = spec
        .get("value")
        .map(|v| string(v, &format!("{at}.value")))
        .transpose()?;
    let generator = match spec.get("generator") {
        None => None,
        Some(g) => match string(g, &format!("{at}.generator"))?.as_str() {
            "secret" => Some(Generator::Secret),
            other => {
                return Err(field(
                    format!("{at}.generator"),
                    format!("unknown generator {other:?}: the one generator is \"secret\""),
                ))
            }
        },
    };
    let required = match spec.get("required") {
        None => value.is_none() && generator.is_none(),
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(field(
                format!("{at}.required"),
                format!("expected a boolean, found {}", kind(other)),
            ))
        }
    };
    Ok(EnvVar {
        description,
        value,
        required,
        generator,
    })
}

fn formation(process_type: &str, spec: &Value, at: &str) -> Result<Formation, AppJsonError> {
    let ok_name = !process_type.is_empty()
        && process_type
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !ok_name {
        return Err(field(
            at,
            "invalid process type: use lowercase letters, digits, _ and -",
        ));
    }
    let spec = object(spec, at)?;
    only(spec, &["quantity", "size"], at)?;
    let quantity = match spec.get("quantity") {
        None => None,
        Some(q) => {
            let n = q.as_u64().filter(|n| *n <= MAX_QUANTITY).ok_or_else(|| {
                field(
                    format!("{at}.quantity"),
                    format!("expected a whole number from 0 to {MAX_QUANTITY}, found {q}"),
                )
            })?;
            Some(u32::try_from(n).map_err(|e| field(format!("{at}.quantity"), e.to_string()))?)
        }
    };
    let size = spec
        .get("size")
        .map(|s| string(s, &format!("{at}.size")))
        .transpose()?;
    Ok(Formation { quantity, size })
}

fn script(spec: &Value, at: &str) -> Result<Script, AppJsonError> {
    let (command, size) = match spec {
        Value::String(command) => (command.clone(), None),
        Value::Object(map) => {
            only(map, &["command", "size"], at)?;
            let command = map
                .get("command")
                .ok_or_else(|| field(at, "missing command"))
                .and_then(|c| string(c, &format!("{at}.command")))?;
            let size = map
                .get("size")
                .map(|s| string(s, &format!("{at}.size")))
                .transpose()?;
            (command, size)
        }
        other => {
            return Err(field(
                at,
                format!("expected a string or an object, found {}", kind(other)),
            ))
        }
    };
    if command.trim().is_empty() {
        return Err(field(at, "the command is empty"));
    }
    Ok(Script { command, size })
}

fn addon(spec: &Value, at: &str) -> Result<Addon, AppJsonError> {
    let (plan, attach_as) = match spec {
        Value::String(plan) => (plan.clone(), None),
        Value::Object(map) => {
            only(map, &["plan", "as", "options"], at)?;
            let plan = map
                .get("plan")
                .ok_or_else(|| field(at, "missing plan"))
                .and_then(|p| string(p, &format!("{at}.plan")))?;
            let attach_as = map
                .get("as")
                .map(|a| string(a, &format!("{at}.as")))
                .transpose()?;
            if let Some(o) = map.get("options") {
                object(o, &format!("{at}.options"))?;
            }
            (plan, attach_as)
        }
        other => {
            return Err(field(
                at,
                format!("expected a string or an object, found {}", kind(other)),
            ))
        }
    };
    // `heroku-postgresql:essential-0` → postgresql; `redis` → redis.
    let service = plan.split(':').next().unwrap_or("");
    let service = service.strip_prefix("heroku-").unwrap_or(service);
    if !SERVICES.contains(&service) {
        return Err(field(
            at,
            format!(
                "unknown add-on {plan:?}: this cluster provides {}",
                SERVICES.join(" and ")
            ),
        ));
    }
    Ok(Addon {
        service: service.to_owned(),
        plan,
        attach_as,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AppJson, AppJsonError> {
        AppJson::parse(text.as_bytes())
    }

    fn err(text: &str) -> String {
        parse(text).expect_err(text).to_string()
    }

    #[test]
    fn heroku_s_example_parses() {
        let app = parse(
            r#"{
              "name": "Small Sharp Tool",
              "description": "This app does one little thing, and does it well.",
              "keywords": ["productivity", "HTML5", "scalpel"],
              "website": "https://small-sharp-tool.com/",
              "repository": "https://github.com/jane-doe/small-sharp-tool",
              "logo": "https://small-sharp-tool.com/logo.svg",
              "success_url": "/welcome",
              "scripts": {"postdeploy": "bundle exec rake bootstrap"},
              "env": {
                "SECRET_TOKEN": {"description": "A secret key.", "generator": "secret"},
                "WEB_CONCURRENCY": {"description": "Processes.", "value": "5"},
                "GREETING": "hello",
                "API_KEY": {"description": "Yours."},
                "OPTIONAL": {"required": false}
              },
              "formation": {"web": {"quantity": 2, "size": "standard-1x"}, "worker": {"quantity": 1}},
              "addons": ["heroku-postgresql", "postgresql:basic", {"plan": "heroku-redis:mini", "as": "CACHE"}],
              "buildpacks": [{"url": "https://github.com/heroku/heroku-buildpack-ruby"}],
              "stack": "bookworm"
            }"#,
        )
        .expect("parses");
        assert_eq!(app.name.as_deref(), Some("Small Sharp Tool"));
        assert_eq!(app.stack.as_deref(), Some("bookworm"));
        assert_eq!(app.buildpacks.len(), 1);
        assert_eq!(
            app.postdeploy,
            Some(Script {
                command: "bundle exec rake bootstrap".into(),
                size: None
            })
        );
        assert_eq!(app.env["SECRET_TOKEN"].generator, Some(Generator::Secret));
        assert!(!app.env["SECRET_TOKEN"].required);
        assert!(!app.env["WEB_CONCURRENCY"].required);
        assert!(app.env["API_KEY"].required, "no value: required by default");
        assert!(!app.env["OPTIONAL"].required);
        assert_eq!(app.env["GREETING"].value.as_deref(), Some("hello"));
        assert_eq!(app.formation["web"].quantity, Some(2));
        assert_eq!(app.formation["worker"].size, None);
        let services: Vec<&str> = app.addons.iter().map(|a| a.service.as_str()).collect();
        assert_eq!(services, ["postgresql", "postgresql", "redis"]);
        assert_eq!(app.addons[2].attach_as.as_deref(), Some("CACHE"));

        // Required vars must be given, all named at once; given ones win.
        let missing = app.resolve_env(&BTreeMap::new()).expect_err("API_KEY");
        assert_eq!(
            missing,
            AppJsonError::MissingRequired(vec!["API_KEY".into()])
        );
        let given = BTreeMap::from([
            ("API_KEY".to_owned(), "k".to_owned()),
            ("GREETING".to_owned(), "hi".to_owned()),
        ]);
        let env = app.resolve_env(&given).expect("resolved");
        assert_eq!(env["GREETING"], "hi");
        assert_eq!(env["WEB_CONCURRENCY"], "5");
        assert!(!env.contains_key("OPTIONAL"));
        let secret = &env["SECRET_TOKEN"];
        assert_eq!(secret.len(), 64);
        assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
        let again = app.resolve_env(&given).expect("resolved");
        assert_ne!(&again["SECRET_TOKEN"], secret, "a fresh secret each time");
    }

    #[test]
    fn the_add_on_example_parses() {
        let app = AppJson::parse(include_bytes!("../../examples/addon-web/app.json"))
            .expect("examples/addon-web/app.json");
        assert_eq!(app.addons[0].service, "postgresql");
        assert_eq!(
            app.postdeploy.expect("postdeploy").command,
            "bash bin/postdeploy"
        );
        assert_eq!(app.formation["web"].size.as_deref(), Some("standard-1x"));
    }

    #[test]
    fn postdeploy_as_an_object_and_an_empty_file() {
        let app =
            parse(r#"{"scripts": {"postdeploy": {"command": "./seed", "size": "standard-2x"}}}"#)
                .expect("parses");
        assert_eq!(
            app.postdeploy.expect("script").size.as_deref(),
            Some("standard-2x")
        );
        assert_eq!(parse("{}").expect("empty"), AppJson::default());
    }

    #[test]
    fn bad_manifests_say_which_field_is_wrong() {
        let cases = [
            (
                r#"{"env": {"S": {"generator": "uuid"}}}"#,
                "env.S.generator: unknown generator \"uuid\"",
            ),
            (
                r#"{"env": {"S": {"required": "yes"}}}"#,
                "env.S.required: expected a boolean, found a string",
            ),
            (
                r#"{"env": {"S": 5}}"#,
                "env.S: expected a string or an object, found a number",
            ),
            (
                r#"{"env": {"S": {"value": "x", "secret": true}}}"#,
                "env.S.secret: unknown field",
            ),
            (
                r#"{"env": {"1BAD": "x"}}"#,
                "env.1BAD: invalid config var name",
            ),
            (r#"{"env": []}"#, "env: expected an object, found an array"),
            (
                r#"{"formation": {"web": {"quantity": -1}}}"#,
                "formation.web.quantity: expected a whole number",
            ),
            (
                r#"{"formation": {"web": {"quantity": 5000}}}"#,
                "formation.web.quantity",
            ),
            (
                r#"{"formation": {"Web Server": {"quantity": 1}}}"#,
                "formation.Web Server: invalid process type",
            ),
            (
                r#"{"scripts": {"postdeploy": 3}}"#,
                "scripts.postdeploy: expected a string or an object",
            ),
            (
                r#"{"scripts": {"postdeploy": {"size": "x"}}}"#,
                "scripts.postdeploy: missing command",
            ),
            (
                r#"{"scripts": {"postdeploy": " "}}"#,
                "scripts.postdeploy: the command is empty",
            ),
            (
                r#"{"scripts": {"pr-predestroy": "x"}}"#,
                "scripts.pr-predestroy: unknown field",
            ),
            (
                r#"{"addons": ["mongodb"]}"#,
                "addons[0]: unknown add-on \"mongodb\"",
            ),
            (r#"{"addons": [{"as": "DB"}]}"#, "addons[0]: missing plan"),
            (
                r#"{"addons": "redis"}"#,
                "addons: expected an array, found a string",
            ),
            (
                r#"{"buildpacks": [{"uri": "x"}]}"#,
                "buildpacks[0].uri: unknown field",
            ),
            (r#"{"buildpacks": [{}]}"#, "buildpacks[0]: missing url"),
            (
                r#"{"stack": 24}"#,
                "stack: expected a string, found a number",
            ),
            (r#"{"image": "heroku/ruby"}"#, "image: unknown field"),
            (
                r#"[1, 2]"#,
                "(top level): expected an object, found an array",
            ),
        ];
        for (text, says) in cases {
            let message = err(text);
            assert!(
                message.contains(says),
                "{text}: {message:?} should say {says:?}"
            );
        }
    }

    #[test]
    fn broken_json_names_the_line_and_column_and_oversize_is_refused() {
        let message = err("{\n  \"env\": {\n    \"A\": \"x\",\n  }\n}");
        assert!(
            message.starts_with("app.json is not valid JSON at line 4, column 3: "),
            "{message}"
        );
        let big = format!("{{\"description\": \"{}\"}}", "x".repeat(MAX_SIZE));
        assert_eq!(
            AppJson::parse(big.as_bytes()),
            Err(AppJsonError::TooLarge { size: big.len() })
        );
    }
}
