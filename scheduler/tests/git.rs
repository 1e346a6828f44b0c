//! End-to-end: `git push` to an app's remote on the real scheduler (git's own client and
//! `git http-backend`), building on a real agent and answering through the router. As
//! root, with the `testing` stack.

#![allow(clippy::unwrap_used)]

mod harness;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use harness::{bins, Cluster, API_TOKEN, TINY, UP};
use serde_json::Value;

/// A git work tree for an app's code, set up with `manifold git:remote`.
struct Work {
    dir: PathBuf,
    api: String,
    token: String,
    /// The cluster's CA, for the CLI (`MANIFOLD_CA`), with an https:// API.
    ca: Option<PathBuf>,
}

impl Work {
    /// A repository holding a copy of `source`, committed on `main`.
    fn new(c: &Cluster, name: &str, source: &str) -> Work {
        let dir = c.dir.path().join(name);
        let status = Command::new("cp")
            .args(["-r", source])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success());
        let w = Work {
            dir,
            api: c.api(),
            token: API_TOKEN.into(),
            ca: c.ca.clone(),
        };
        w.git(&["init", "-q", "-b", "main"]);
        w.commit("first");
        w
    }

    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(&self.dir)
            .envs(self.ca.as_ref().map(|ca| ("MANIFOLD_CA", ca)))
            .env("MANIFOLD_API", &self.api)
            .env("MANIFOLD_API_TOKEN", &self.token)
            .env("USER", "pusher-person")
            // This machine's git settings stay out of the test.
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            // It would override the CA `git:remote` configures.
            .env_remove("GIT_SSL_CAINFO")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_AUTHOR_NAME", "e2e")
            .env("GIT_AUTHOR_EMAIL", "e2e@example.com")
            .env("GIT_COMMITTER_NAME", "e2e")
            .env("GIT_COMMITTER_EMAIL", "e2e@example.com");
        cmd
    }

    /// Runs git; its output (stdout and stderr, where git prints the remote's lines).
    fn run(&self, args: &[&str]) -> Output {
        self.command(Path::new("git")).args(args).output().unwrap()
    }

    fn git(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "git {args:?}: {}", text(&out));
        text(&out)
    }

    fn commit(&self, message: &str) {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
    }

    /// `git push` that must succeed; everything it printed.
    fn push(&self, args: &[&str]) -> String {
        let mut all = vec!["push"];
        all.extend_from_slice(args);
        self.git(&all)
    }

    /// `git push` that must fail; everything it printed.
    fn push_refused(&self, args: &[&str]) -> String {
        let mut all = vec!["push"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(
            !out.status.success(),
            "git {all:?} should fail: {}",
            text(&out)
        );
        text(&out)
    }

    fn manifold(&self, args: &[&str]) -> String {
        let out = self
            .command(&bins().join("manifold"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "manifold {args:?}: {}", text(&out));
        text(&out)
    }

    fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"]).trim().to_string()
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn releases(c: &Cluster, app: &str) -> Vec<Value> {
    c.json(&["releases", "-a", app]).as_array().unwrap().clone()
}

/// The app's page through the router, once a web dyno of release `version` serves it.
fn serves(c: &Cluster, app: &str, version: u64, expect: &str) {
    harness::wait_for(&format!("{app} v{version} to serve"), UP, || {
        let up = c.dynos(app).iter().any(|d| {
            d["type"] == "web" && d["state"] == "up" && d["release"]["version"] == version
        });
        let (status, body) = c.route(app, "/", &[]);
        (up && status == 200 && body.contains(expect)).then_some(())
    });
}

/// The remote's refs, as the scheduler's repository has them.
fn remote_refs(w: &Work) -> String {
    w.git(&["ls-remote", "manifold"])
}

/// `git push manifold main` builds and releases with the output in the pusher's terminal;
/// a broken push is rejected with its reason and changes nothing; another branch is kept
/// and not deployed; a force push and `HEAD:main` deploy; deleting main is refused; a wrong
/// token makes git say authentication failed.
#[test]
fn git_push_deploys_as_on_heroku() {
    if !harness::ready() {
        return;
    }
    let mut c = Cluster::start(Duration::from_secs(10));
    c.add_agent("pusher", 20);
    c.wait_hosts(1);
    c.ok(&["apps:create", "pushed", "--stack", "testing"]);
    let w = Work::new(&c, "pushed-src", TINY);
    let said = w.manifold(&["git:remote", "-a", "pushed"]);
    assert!(said.contains(&format!("{}/pushed.git", c.api())), "{said}");
    let config = std::fs::read_to_string(w.dir.join(".git/config")).unwrap();
    assert!(
        !config.contains(API_TOKEN),
        "the token stays out of the repository: {config}"
    );

    // The first push: the build's output reaches the pusher, then the release is live.
    let out = w.push(&["manifold", "main"]);
    for line in [
        "remote: -----> Building main",
        "remote: -----> Building on pusher",
        "remote: -----> Nothing to compile",
        "remote: -----> Released v1",
        "remote: -----> pushed deployed: v1",
        "main -> main",
    ] {
        assert!(out.contains(line), "{line:?} missing from:\n{out}");
    }
    c.wait_dynos("pushed", &["web.1"], "up", UP);
    serves(&c, "pushed", 1, "");
    let first = w.head();
    let builds = c.json(&["builds", "-a", "pushed"]);
    assert_eq!(
        builds[0]["user"]["email"], "pusher-person",
        "the pusher's name (git's user name, from $USER) is the build's user: {builds}"
    );
    assert!(remote_refs(&w).contains(&format!("{first}\trefs/heads/main")));

    // A push whose build fails (no Procfile: no buildpack takes it) is rejected, says
    // why, and changes nothing: main stays, no release is made, v1 keeps serving.
    std::fs::rename(w.dir.join("Procfile"), w.dir.join("Procfile.off")).unwrap();
    w.commit("no procfile");
    let out = w.push_refused(&["manifold", "main"]);
    assert!(
        out.contains("Push rejected to pushed: the build failed"),
        "{out}"
    );
    assert!(out.contains("pre-receive hook declined"), "{out}");
    assert!(remote_refs(&w).contains(&format!("{first}\trefs/heads/main")));
    assert_eq!(releases(&c, "pushed").len(), 1);
    let (status, _) = c.route("pushed", "/", &[]);
    assert_eq!(status, 200, "v1 still serves");

    // A failing release phase rejects the push too, and v1 keeps serving.
    std::fs::rename(w.dir.join("Procfile.off"), w.dir.join("Procfile")).unwrap();
    let mut procfile = std::fs::read_to_string(w.dir.join("Procfile")).unwrap();
    procfile.push_str("release: echo 'migration failed' >&2; exit 4\n");
    std::fs::write(w.dir.join("Procfile"), &procfile).unwrap();
    w.commit("failing release phase");
    let out = w.push_refused(&["manifold", "main"]);
    assert!(
        out.contains("migration failed"),
        "the release output: {out}"
    );
    assert!(out.contains("failed in its release phase"), "{out}");
    assert!(remote_refs(&w).contains(&format!("{first}\trefs/heads/main")));
    let r = releases(&c, "pushed");
    assert_eq!(r.last().unwrap()["status"], "failed", "{r:?}");
    assert!(r[0]["current"].as_bool().unwrap(), "{r:?}");

    // Another branch is stored and not deployed.
    std::fs::write(
        w.dir.join("Procfile"),
        procfile.replace("release: echo 'migration failed' >&2; exit 4\n", ""),
    )
    .unwrap();
    std::fs::write(w.dir.join("public/index.html"), "second version\n").unwrap();
    w.commit("second");
    let before = releases(&c, "pushed").len();
    let out = w.push(&["manifold", "main:feature"]);
    assert!(
        out.contains("Pushed to non-deploy branch feature, not deploying"),
        "{out}"
    );
    assert!(!out.contains("Building"), "{out}");
    assert_eq!(releases(&c, "pushed").len(), before);
    assert!(remote_refs(&w).contains(&format!("{}\trefs/heads/feature", w.head())));

    // `HEAD:main` deploys.
    let out = w.push(&["manifold", "HEAD:main"]);
    assert!(out.contains("remote: -----> Building main"), "{out}");
    assert!(out.contains("deployed: v"), "{out}");
    let version = releases(&c, "pushed").last().unwrap()["version"]
        .as_u64()
        .unwrap();
    serves(&c, "pushed", version, "second version");

    // A force push of an older history deploys it.
    w.git(&["reset", "-q", "--hard", &first]);
    let out = w.push_refused(&["manifold", "main"]);
    assert!(
        out.contains("rejected"),
        "without --force git refuses: {out}"
    );
    let out = w.push(&["--force", "manifold", "main"]);
    assert!(out.contains("forced update"), "{out}");
    assert!(out.contains("deployed: v"), "{out}");
    let forced = releases(&c, "pushed").last().unwrap()["version"]
        .as_u64()
        .unwrap();
    assert!(forced > version);
    serves(&c, "pushed", forced, "");
    let (_, body) = c.route("pushed", "/", &[]);
    assert!(!body.contains("second version"), "{body}");

    // Deleting main is refused; deleting another branch is not.
    let out = w.push_refused(&["manifold", ":main"]);
    assert!(out.contains("cannot delete main"), "{out}");
    w.push(&["manifold", ":feature"]);
    assert!(!remote_refs(&w).contains("refs/heads/feature"));

    // A wrong token: git says authentication failed, and pushes nothing.
    let wrong = Work {
        dir: w.dir.clone(),
        api: w.api.clone(),
        token: "not-the-token".into(),
        ca: None,
    };
    let out = wrong.push_refused(&["manifold", "main:wrong"]);
    assert!(out.contains("Authentication failed"), "{out}");
    assert!(out.contains("wrong token"), "the scheduler's reason: {out}");
    assert!(!remote_refs(&w).contains("refs/heads/wrong"));

    // The repository outlives the scheduler's disk: a scheduler without it (another
    // replica, or this one after losing its state dir's repositories) restores it from the
    // bundle the last accepted push stored.
    let before = remote_refs(&w);
    c.kill_scheduler();
    std::fs::remove_dir_all(c.dir.path().join("scheduler/git")).unwrap();
    c.start_scheduler();
    let after = harness::wait_for("the restarted scheduler to lead and serve git", UP, || {
        let out = w.run(&["ls-remote", "manifold"]);
        out.status.success().then(|| text(&out))
    });
    assert_eq!(after, before);

    // `git:clone` gets the deployed code back.
    let clone = c.dir.path().join("cloned");
    w.manifold(&["git:clone", "-a", "pushed", clone.to_str().unwrap()]);
    assert!(clone.join("Procfile").exists());
}

/// The build cache is kept across pushes: the second push of an app whose requirements did
/// not change reuses the virtualenv the first one cached (on the build host, in the app's
/// cache directory).
#[test]
fn a_second_push_reuses_the_build_cache() {
    if !harness::ready() {
        return;
    }
    if !Path::new("/var/lib/manifold/stacks/bookworm/.manifold-stack").exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the bookworm stack is missing"
        );
        eprintln!("!!! SKIPPING: the bookworm stack is missing: run scripts/setup bookworm");
        return;
    }
    let mut c = Cluster::start(Duration::from_secs(10));
    c.add_agent("cacher", 20);
    c.wait_hosts(1);
    c.ok(&["apps:create", "cached"]);
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/python-web");
    let w = Work::new(&c, "cached-src", examples);
    w.manifold(&["git:remote", "-a", "cached"]);
    let out = w.push(&["manifold", "main"]);
    assert!(out.contains("remote: -----> Creating virtualenv"), "{out}");
    assert!(!out.contains("Restoring cache"), "{out}");
    let cache = c.agents[0].state_dir.join("cache/cached/python/venv");
    assert!(cache.is_dir(), "the first build cached its virtualenv");

    std::fs::write(w.dir.join("README.md"), "changed, not the requirements\n").unwrap();
    w.commit("second");
    let out = w.push(&["manifold", "main"]);
    assert!(out.contains("remote: -----> Restoring cache"), "{out}");
    assert!(out.contains("skipping the install"), "{out}");
    assert!(out.contains("deployed: v2"), "{out}");
}

/// Over HTTPS with the cluster's own CA: `git:remote` tells git to trust it
/// (`http.URL.sslCAInfo`, from `MANIFOLD_CA`), and git pushes with no other setup.
#[test]
fn git_over_https_trusts_the_cluster_ca() {
    if !harness::ready() {
        return;
    }
    let mut c = Cluster::prepare(Duration::from_secs(10), &[]);
    let pki = c.dir.path().join("pki");
    for args in [vec!["ca"], vec!["issue", "scheduler", "--ip", "127.0.0.1"]] {
        let out = Command::new(bins().join("manifold-scheduler"))
            .arg("certs")
            .args(&args)
            .arg("--dir")
            .arg(&pki)
            .output()
            .unwrap();
        assert!(out.status.success(), "certs {args:?}: {}", text(&out));
    }
    c.flags.extend([
        "--tls-cert".to_string(),
        pki.join("scheduler.pem").display().to_string(),
        "--tls-key".to_string(),
        pki.join("scheduler-key.pem").display().to_string(),
    ]);
    c.ca = Some(pki.join("ca.pem"));
    c.start_scheduler();
    assert!(c.api().starts_with("https://"));
    c.ok(&["apps:create", "tlsgit", "--stack", "testing"]);
    let w = Work::new(&c, "tlsgit-src", TINY);
    w.manifold(&["git:remote", "-a", "tlsgit"]);
    let config = std::fs::read_to_string(w.dir.join(".git/config")).unwrap();
    assert!(config.contains("sslCAInfo"), "{config}");
    let out = w.push(&["manifold", "main:feature"]);
    assert!(
        out.contains("Pushed to non-deploy branch feature, not deploying"),
        "{out}"
    );
}
