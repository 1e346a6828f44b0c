//! Runs the built `manifold` binary against tiny fake API servers and checks what it sends
//! and prints; with several (`MANIFOLD_API=A,B`), that requests find the leader.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::thread;

#[derive(Debug, Clone)]
struct Request {
    method: String,
    /// Path with query string.
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("json body")
    }
}

/// A canned answer: status, extra headers, body.
type Answer = (u16, Vec<(&'static str, String)>, String);
type Router = dyn Fn(&str, &str) -> Answer + Send + Sync;

struct FakeApi {
    url: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl FakeApi {
    fn start(router: impl Fn(&str, &str) -> Answer + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let router: Arc<Router> = Arc::new(router);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let seen = seen.clone();
                let router = router.clone();
                thread::spawn(move || serve(stream, &seen, &*router));
            }
        });
        FakeApi { url, requests }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("lock").clone()
    }

    fn run(&self, args: &[&str]) -> Output {
        run_at(&self.url, args)
    }
}

/// Runs `manifold ARGS` with `MANIFOLD_API` set to `api` (one URL or several).
fn run_at(api: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_manifold"))
        .args(args)
        .env("MANIFOLD_API", api)
        .env("MANIFOLD_API_TOKEN", "s3cret")
        .env("USER", "tester")
        .env_remove("MANIFOLD_APP")
        .env_remove("MANIFOLD_API_TOKEN_FILE")
        .output()
        .expect("run manifold")
}

/// Reads one HTTP/1.1 request (Content-Length bodies only: the CLI sends JSON) and
/// answers it, closing the connection.
fn serve(stream: TcpStream, seen: &Mutex<Vec<Request>>, router: &Router) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("request line");
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).expect("header");
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().expect("length"));
    let mut body = vec![0; len];
    reader.read_exact(&mut body).expect("body");
    let (status, extra, answer) = router(&method, &path);
    seen.lock().expect("lock").push(Request {
        method,
        path,
        headers,
        body,
    });
    let mut out = stream;
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nRequest-Id: test\r\n",
        answer.len()
    );
    for (k, v) in extra {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    out.write_all(head.as_bytes()).expect("write");
    out.write_all(answer.as_bytes()).expect("write");
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn json(v: serde_json::Value) -> String {
    v.to_string()
}

#[test]
fn apps_create_posts_name_with_auth() {
    let api = FakeApi::start(|_, _| {
        (
            201,
            vec![],
            json(serde_json::json!({"id": "1", "name": "myapp", "stack": {"name": "bookworm"}})),
        )
    });
    let o = api.run(&["apps:create", "myapp"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "Creating myapp... done\n");
    let reqs = api.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/apps"));
    assert_eq!(r.header("authorization"), Some("Bearer s3cret"));
    assert_eq!(r.header("manifold-user"), Some("tester"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json(), serde_json::json!({"name": "myapp"}));
}

#[test]
fn config_set_patches_and_reports_release() {
    let api = FakeApi::start(|_, _| {
        (
            200,
            vec![("Manifold-Release", "3".to_string())],
            json(serde_json::json!({"FOO": "bar", "OTHER": "x"})),
        )
    });
    let o = api.run(&["config:set", "FOO=bar", "-a", "myapp"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "Setting FOO and restarting myapp... done, v3\nFOO: bar\n"
    );
    let reqs = api.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("PATCH", "/apps/myapp/config-vars")
    );
    assert_eq!(r.header("authorization"), Some("Bearer s3cret"));
    assert_eq!(r.json(), serde_json::json!({"FOO": "bar"}));
}

#[test]
fn config_unset_sends_nulls_without_release() {
    let api = FakeApi::start(|_, _| (200, vec![], "{}".to_string()));
    let o = api.run(&["config:unset", "FOO", "BAR", "-a", "myapp"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "Unsetting FOO and BAR and restarting myapp... done\n"
    );
    assert_eq!(
        api.requests()[0].json(),
        serde_json::json!({"FOO": null, "BAR": null})
    );
}

#[test]
fn ps_renders_dynos_with_formation_commands() {
    let api = FakeApi::start(|method, path| match (method, path) {
        ("GET", "/apps/myapp/dynos") => (
            200,
            vec![],
            json(serde_json::json!([
                {"name": "web.1", "type": "web", "state": "up", "size": "standard-1x",
                 "command": "python app.py", "host": {"id": "host-a", "address": "127.0.0.1"},
                 "port": 30001, "updated_at": "2020-01-01T00:00:00Z"}
            ])),
        ),
        ("GET", "/apps/myapp/formation") => (
            200,
            vec![],
            json(serde_json::json!([
                {"type": "web", "quantity": 1, "size": "standard-1x", "command": "gunicorn app"}
            ])),
        ),
        _ => (
            404,
            vec![],
            r#"{"id":"not_found","message":"no route"}"#.to_string(),
        ),
    });
    let o = api.run(&["ps", "-a", "myapp"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("=== web (standard-1x): `gunicorn app` (1)")
    );
    let dyno = lines.next().expect("dyno line");
    assert!(
        dyno.starts_with("web.1: up 2020/01/01 00:00:00 (~ "),
        "{dyno}"
    );
    assert!(dyno.ends_with("d ago)  host-a 127.0.0.1:30001"), "{dyno}");
    let paths: Vec<String> = api.requests().into_iter().map(|r| r.path).collect();
    assert!(paths.contains(&"/apps/myapp/dynos".to_string()));
    assert!(paths.contains(&"/apps/myapp/formation".to_string()));
}

#[test]
fn api_error_is_printed_and_exits_1() {
    let api = FakeApi::start(|_, _| {
        (
            404,
            vec![],
            r#"{"id":"not_found","message":"app nope not found"}"#.to_string(),
        )
    });
    let o = api.run(&["apps:info", "-a", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), "manifold: app nope not found\n");
    assert_eq!(stdout(&o), "");
}

#[test]
fn unauthorized_points_at_token() {
    let api = FakeApi::start(|_, _| {
        (
            401,
            vec![],
            r#"{"id":"unauthorized","message":"bad token"}"#.to_string(),
        )
    });
    let o = api.run(&["apps"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "manifold: the API refused the token: set MANIFOLD_API_TOKEN\n"
    );
}

#[test]
fn bad_arguments_fail_before_any_request() {
    let api = FakeApi::start(|_, _| (200, vec![], "[]".to_string()));
    let o = api.run(&["ps:scale", "web=two", "-a", "myapp"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("`web=two`"), "{}", stderr(&o));
    let o = api.run(&["ps"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "manifold: missing app: pass -a APP (or set MANIFOLD_APP)\n"
    );
    let o = api.run(&["apps:destroy", "myapp"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--confirm myapp"), "{}", stderr(&o));
    assert!(api.requests().is_empty());
}

#[test]
fn scale_sends_updates_and_reports() {
    let api = FakeApi::start(|method, _| match method {
        "GET" => (
            200,
            vec![],
            json(serde_json::json!([
                {"type": "web", "quantity": 1, "size": "standard-1x", "command": "a"},
                {"type": "worker", "quantity": 2, "size": "standard-1x", "command": "b"}
            ])),
        ),
        _ => (
            200,
            vec![],
            json(serde_json::json!([
                {"type": "web", "quantity": 2, "size": "standard-2x", "command": "a"},
                {"type": "worker", "quantity": 1, "size": "standard-1x", "command": "b"}
            ])),
        ),
    });
    let o = api.run(&["ps:scale", "web=2:standard-2x", "worker-1", "-a", "myapp"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "Scaling dynos... done, now running web at 2:standard-2x, worker at 1:standard-1x\n"
    );
    let reqs = api.requests();
    let patch = reqs.iter().find(|r| r.method == "PATCH").expect("patch");
    assert_eq!(patch.path, "/apps/myapp/formation");
    assert_eq!(
        patch.json(),
        serde_json::json!({"updates": [
            {"type": "web", "quantity": 2, "size": "standard-2x"},
            {"type": "worker", "quantity": 1}
        ]})
    );
}

#[test]
fn unreachable_api_is_explained() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let o = Command::new(env!("CARGO_BIN_EXE_manifold"))
        .args(["apps"])
        .env("MANIFOLD_API", &url)
        .env("MANIFOLD_API_TOKEN", "x")
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!("manifold: cannot reach the Manifold API at {url}: is manifold-scheduler running? (set MANIFOLD_API)\n")
    );
}

/// A fake API for one build whose final status is `status`.
fn build_api(status: &'static str) -> FakeApi {
    build_api_with_release(status, "succeeded")
}

/// A build that ends with `status`; its release v2 (if it succeeded) ends as `release`.
fn build_api_with_release(status: &'static str, release: &'static str) -> FakeApi {
    FakeApi::start(move |method, path| match (method, path) {
        ("GET", "/apps/myapp/releases/2") => (
            200,
            vec![],
            json(
                serde_json::json!({"version": 2, "status": release, "current": release == "succeeded"}),
            ),
        ),
        ("POST", p) if p.starts_with("/apps/myapp/builds") => (
            201,
            vec![],
            json(serde_json::json!({"id": "b1", "status": "pending",
                "output_stream_url": "/apps/myapp/builds/b1/output"})),
        ),
        ("GET", "/apps/myapp/builds/b1/output") => (
            200,
            vec![],
            "-----> Python app detected\n-----> Done\n".to_string(),
        ),
        ("GET", "/apps/myapp/builds/b1") => (
            200,
            vec![],
            json(serde_json::json!({"id": "b1", "status": status,
                "release": if status == "succeeded" { serde_json::json!({"version": 2}) } else { serde_json::Value::Null }})),
        ),
        _ => (
            404,
            vec![],
            r#"{"id":"not_found","message":"no route"}"#.to_string(),
        ),
    })
}

fn source_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("app.py"), "print(1)\n").expect("write");
    std::fs::create_dir(dir.path().join(".git")).expect("mkdir");
    std::fs::write(dir.path().join(".git/HEAD"), "ref\n").expect("write");
    dir
}

#[test]
fn deploy_uploads_streams_and_reports_release() {
    let api = build_api("succeeded");
    let src = source_dir();
    let dir = src.path().to_string_lossy().to_string();
    let o = api.run(&["deploy", &dir, "-a", "myapp", "--buildpack", "python"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "-----> Python app detected\n-----> Done\nReleased v2\n"
    );
    let reqs = api.requests();
    let post = reqs.iter().find(|r| r.method == "POST").expect("upload");
    assert_eq!(post.path, "/apps/myapp/builds?buildpack=python");
    assert_eq!(post.header("content-type"), Some("application/gzip"));
    assert_eq!(post.header("authorization"), Some("Bearer s3cret"));
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&post.body[..]));
    let names: Vec<String> = archive
        .entries()
        .expect("entries")
        .map(|e| {
            e.expect("entry")
                .path()
                .expect("path")
                .to_string_lossy()
                .to_string()
        })
        .collect();
    assert_eq!(names, ["app.py"]);
}

#[test]
fn a_failed_release_phase_fails_the_deploy() {
    let api = build_api_with_release("succeeded", "failed");
    let src = source_dir();
    let dir = src.path().to_string_lossy().to_string();
    let o = api.run(&["deploy", &dir, "-a", "myapp"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("release v2 failed in its release phase"),
        "{}",
        stderr(&o)
    );
    assert!(!stdout(&o).contains("Released"), "{}", stdout(&o));
}

#[test]
fn failed_build_exits_1() {
    let api = build_api("failed");
    let src = source_dir();
    let dir = src.path().to_string_lossy().to_string();
    let o = api.run(&["deploy", &dir, "-a", "myapp"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("-----> Done\n"));
    assert!(
        stderr(&o).ends_with("manifold: build failed: see the output above\n"),
        "{}",
        stderr(&o)
    );
    let post = api
        .requests()
        .into_iter()
        .find(|r| r.method == "POST")
        .expect("upload");
    assert_eq!(post.path, "/apps/myapp/builds");
}

#[test]
fn domains_and_maintenance_call_the_api_and_print() {
    let api = FakeApi::start(|method, path| match (method, path) {
        ("GET", "/apps/web/domains") => (
            200,
            vec![],
            json(serde_json::json!([
                {"hostname": "web.localhost", "kind": "default"},
                {"hostname": "www.example.com", "kind": "custom"}
            ])),
        ),
        ("POST", "/apps/web/domains") => (
            201,
            vec![],
            json(serde_json::json!({"hostname": "www.example.com", "kind": "custom"})),
        ),
        ("GET", "/apps/web") => (200, vec![], json(serde_json::json!({"maintenance": true}))),
        _ => (200, vec![], json(serde_json::json!({"maintenance": false}))),
    });
    let o = api.run(&["domains", "-a", "web"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("=== web Default Domain\nweb.localhost\n"),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("www.example.com"));
    let o = api.run(&["domains:add", "www.example.com", "-a", "web"]);
    assert!(stdout(&o).starts_with("Adding www.example.com to web... done\n"));
    let o = api.run(&["maintenance", "-a", "web"]);
    assert_eq!(stdout(&o), "on\n");
    let o = api.run(&["maintenance:off", "-a", "web"]);
    assert_eq!(stdout(&o), "Disabling maintenance mode for web... done\n");
    let reqs = api.requests();
    assert_eq!(
        reqs[1].json(),
        serde_json::json!({"hostname": "www.example.com"})
    );
    let last = reqs.last().expect("patch");
    assert_eq!(
        (last.method.as_str(), last.path.as_str()),
        ("PATCH", "/apps/web")
    );
    assert_eq!(last.json(), serde_json::json!({"maintenance": false}));
}

#[test]
fn certs_add_sends_the_files_and_listing_never_shows_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nBB==\n-----END PRIVATE KEY-----\n",
    )
    .expect("write");
    let api = FakeApi::start(|method, _| {
        let cert = serde_json::json!({
            "id": "c-1", "source": "uploaded", "status": "active",
            "domains": ["www.example.com"], "issuer": "CN=Test CA",
            "expires_at": "2027-03-01T00:00:00Z", "last_error": null
        });
        match method {
            "GET" => (200, vec![], json(serde_json::json!([cert]))),
            _ => (201, vec![], json(cert)),
        }
    });
    let o = api.run(&[
        "certs:add",
        cert.to_str().expect("utf-8"),
        key.to_str().expect("utf-8"),
        "-a",
        "web",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("c-1 served for www.example.com"),
        "{}",
        stdout(&o)
    );
    let sent = api.requests()[0].json();
    assert!(sent["private_key"]
        .as_str()
        .expect("key")
        .contains("PRIVATE KEY"));
    let o = api.run(&["certs", "-a", "web"]);
    let listed = stdout(&o);
    assert!(
        listed.contains("CN=Test CA") && listed.contains("active"),
        "{listed}"
    );
    assert!(!listed.contains("PRIVATE"));

    // Unreadable or oversized files are refused before any request.
    let before = api.requests().len();
    let o = api.run(&[
        "certs:add",
        "/nonexistent/cert.pem",
        key.to_str().expect("utf-8"),
        "-a",
        "web",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot read the certificate /nonexistent/cert.pem"),
        "{}",
        stderr(&o)
    );
    let big = dir.path().join("big.pem");
    std::fs::write(&big, vec![b'A'; 70 * 1024]).expect("write");
    let o = api.run(&[
        "certs:add",
        big.to_str().expect("utf-8"),
        key.to_str().expect("utf-8"),
        "-a",
        "web",
    ]);
    assert!(
        stderr(&o).contains("a PEM certificate is a few KiB"),
        "{}",
        stderr(&o)
    );
    assert_eq!(api.requests().len(), before);
}

#[test]
fn certs_auto_turns_acm_on_and_off_and_shows_each_domain() {
    let api = FakeApi::start(|method, path| match (method, path) {
        ("GET", "/apps/web/acm") => (
            200,
            vec![],
            json(
                serde_json::json!({"acm": true, "directory": "https://acme.test/dir", "domains": [
                    {"hostname": "www.example.com", "status": "ok", "reason": null,
                     "issuer": "CN=R3", "expires_at": "2027-03-01T00:00:00Z"},
                    {"hostname": "down.example.com", "status": "failing",
                     "reason": "down.example.com: HTTP-01 challenge failed: connection refused",
                     "issuer": null, "expires_at": null}
                ]}),
            ),
        ),
        ("POST", "/apps/off/acm") => (
            422,
            vec![],
            json(serde_json::json!({"id": "invalid_params",
                "message": "automated certificates are off in this cluster: the operator must set --acme-directory"})),
        ),
        _ => (
            200,
            vec![],
            json(serde_json::json!({"name": "web", "acm": method == "POST"})),
        ),
    });
    let o = api.run(&["certs:auto:enable", "-a", "web"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("Enabling automated certificates for web... done"));
    let o = api.run(&["certs:auto", "-a", "web"]);
    let shown = stdout(&o);
    assert!(
        shown.contains("www.example.com") && shown.contains("2027-03-01"),
        "{shown}"
    );
    assert!(
        shown.contains("failing: down.example.com: HTTP-01 challenge failed: connection refused"),
        "{shown}"
    );
    let o = api.run(&["certs:auto:disable", "-a", "web"]);
    assert_eq!(
        stdout(&o),
        "Disabling automated certificates for web... done\n"
    );
    let o = api.run(&["certs:auto:enable", "-a", "off"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--acme-directory"), "{}", stderr(&o));
    let sent: Vec<(String, String)> = api
        .requests()
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    let sent: Vec<(&str, &str)> = sent.iter().map(|(m, p)| (m.as_str(), p.as_str())).collect();
    assert_eq!(
        sent,
        [
            ("POST", "/apps/web/acm"),
            ("GET", "/apps/web/acm"),
            ("DELETE", "/apps/web/acm"),
            ("POST", "/apps/off/acm")
        ]
    );
}

/// A follower scheduler: every request gets the contract's 503, naming `leader` (if any).
fn follower(leader: Option<String>) -> FakeApi {
    FakeApi::start(move |_, _| {
        let named = leader.clone().map(|l| ("manifold-leader", l));
        (
            503,
            named.into_iter().collect(),
            json(serde_json::json!({"id": "not_leader",
                "message": "this scheduler is not the leader"})),
        )
    })
}

/// A URL nothing listens on.
fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("http://{}", l.local_addr().expect("addr"))
}

fn created() -> FakeApi {
    FakeApi::start(|_, _| {
        (
            201,
            vec![],
            json(serde_json::json!({"id": "1", "name": "myapp"})),
        )
    })
}

#[test]
fn a_write_passes_a_dead_scheduler_and_goes_to_the_leader_a_follower_names() {
    let leader = created();
    let follower = follower(Some(leader.url.clone()));
    // The leader is not even in the list: the follower names it.
    let o = run_at(
        &format!("{},{}", dead_url(), follower.url),
        &["apps:create", "myapp"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "Creating myapp... done\n");
    assert_eq!(follower.requests().len(), 1);
    let reqs = leader.requests();
    assert_eq!(reqs.len(), 1, "sent once to the leader");
    assert_eq!(reqs[0].json(), serde_json::json!({"name": "myapp"}));
    assert_eq!(reqs[0].header("authorization"), Some("Bearer s3cret"));
}

/// A scheduler that reads each request whole and closes the connection without answering
/// (it may have carried it out); returns its URL and how many requests it read.
fn cut_off() -> (String, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let count = Arc::new(Mutex::new(0));
    let seen = count.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let mut reader = BufReader::new(stream);
            let mut len = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().expect("length");
                    }
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            *seen.lock().expect("lock") += 1;
        }
    });
    (url, count)
}

#[test]
fn a_write_cut_off_mid_request_is_never_sent_again_but_a_read_is() {
    let (cut, count) = cut_off();
    let other = created();
    let apis = format!("{cut},{}", other.url);
    let o = run_at(&apis, &["apps:create", "myapp"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("it may have been carried out: check before repeating it"),
        "{}",
        stderr(&o)
    );
    assert_eq!(*count.lock().expect("lock"), 1);
    assert!(other.requests().is_empty(), "not sent again elsewhere");

    let reads = FakeApi::start(|_, _| (200, vec![], "[]".to_string()));
    let o = run_at(&format!("{cut},{}", reads.url), &["apps"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(*count.lock().expect("lock"), 2);
    assert_eq!(reads.requests().len(), 1, "the read went on to the next");
}

#[test]
fn deploy_sends_the_whole_source_again_to_the_leader() {
    let leader = build_api("succeeded");
    let follower = follower(Some(leader.url.clone()));
    let src = source_dir();
    let dir = src.path().to_string_lossy().to_string();
    let o = run_at(
        &format!("{},{}", follower.url, leader.url),
        &["deploy", &dir, "-a", "myapp"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let refused = follower.requests();
    let sent = leader.requests();
    let upload = sent.iter().find(|r| r.method == "POST").expect("upload");
    assert_eq!(refused[0].body, upload.body, "the same archive, whole");
    assert!(!upload.body.is_empty());
    assert!(
        sent.iter()
            .all(|r| r.header("authorization") == Some("Bearer s3cret")),
        "every request went on to the leader"
    );
}

#[test]
fn no_scheduler_reachable_names_them_all_and_a_bad_list_is_refused() {
    let (a, b) = (dead_url(), dead_url());
    let o = run_at(&format!("{a},{b}"), &["apps"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!("manifold: cannot reach the Manifold API at any of {a}, {b}: is manifold-scheduler running? (set MANIFOLD_API)\n")
    );
    let o = run_at(&format!("{a},,{b}"), &["apps"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "manifold: MANIFOLD_API: scheduler URL 2 of 3 is empty (a stray comma?)\n"
    );
}

#[test]
fn pipelines_promote_names_the_source_and_prints_each_target() {
    let api = FakeApi::start(|method, path| match (method, path) {
        ("GET", "/apps/shop-staging/pipeline-couplings") => (
            200,
            vec![],
            json(serde_json::json!({"id": "c1", "stage": "staging",
                "pipeline": {"id": "p1", "name": "shop"}, "app": {"name": "shop-staging"}})),
        ),
        ("POST", "/pipeline-promotions") => (
            201,
            vec![],
            json(serde_json::json!({
            "source": {"app": {"name": "shop-staging"}, "release": {"version": 7}},
            "targets": [
                {"app": {"name": "shop-eu"}, "release": {"version": 3, "status": "succeeded"}},
                {"app": {"name": "shop-us"}, "release": {"version": 9, "status": "pending"}},
            ]})),
        ),
        _ => (404, vec![], json(serde_json::json!({"message": "no"}))),
    });
    let o = api.run(&[
        "pipelines:promote",
        "-a",
        "shop-staging",
        "--to",
        "shop-eu,shop-us",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "Promoting shop-staging v7 to shop-eu... done, v3\n\
         Promoting shop-staging v7 to shop-us... done, v9 (its release phase is running: see `manifold releases -a shop-us`)\n"
    );
    let reqs = api.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        reqs[1].json(),
        serde_json::json!({
            "pipeline": {"id": "p1"},
            "source": {"app": {"id": "shop-staging"}},
            "targets": [{"app": {"id": "shop-eu"}}, {"app": {"id": "shop-us"}}],
        })
    );
}

#[test]
fn pipelines_commands_check_stages_and_show_apps_by_stage() {
    let api = FakeApi::start(|method, path| match (method, path) {
        ("GET", "/pipelines/shop") => (
            200,
            vec![],
            json(serde_json::json!({"id": "p1", "name": "shop"})),
        ),
        ("GET", "/pipelines/shop/pipeline-couplings") => (
            200,
            vec![],
            json(serde_json::json!([
                {"app": {"name": "shop-prod"}, "stage": "production"},
                {"app": {"name": "shop-staging"}, "stage": "staging"},
            ])),
        ),
        _ => (201, vec![], "{}".to_string()),
    });
    let o = api.run(&["pipelines:add", "shop", "-a", "x", "--stage", "qa"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("unknown stage \"qa\""),
        "{}",
        stderr(&o)
    );
    assert!(api.requests().is_empty(), "nothing sent for a bad stage");
    let o = api.run(&[
        "pipelines:create",
        "shop",
        "-a",
        "shop-staging",
        "--stage",
        "staging",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        api.requests()[0].json(),
        serde_json::json!({"name": "shop", "app": "shop-staging", "stage": "staging"})
    );
    let o = api.run(&["pipelines:info", "shop"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let staging = out.find("shop-staging").expect("staging listed");
    let prod = out.find("shop-prod").expect("prod listed");
    assert!(out.starts_with("=== shop\n") && staging < prod, "{out}");
}

#[test]
fn apps_create_from_refuses_a_bad_app_json_or_a_missing_var_before_any_request() {
    let api = FakeApi::start(|_, _| (201, vec![], "{}".to_string()));
    let dir = source_dir();
    std::fs::write(
        dir.path().join("app.json"),
        r#"{"env": {"TOKEN": {"generator": "uuid"}}}"#,
    )
    .expect("write");
    let path = dir.path().to_str().expect("utf-8").to_owned();
    let o = api.run(&["apps:create", "setup", "--from", &path]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("env.TOKEN.generator: unknown generator \"uuid\""),
        "{}",
        stderr(&o)
    );
    std::fs::write(
        dir.path().join("app.json"),
        r#"{"env": {"API_KEY": {"description": "yours"}, "B": {"required": true}}}"#,
    )
    .expect("write");
    let o = api.run(&["apps:create", "setup", "--from", &path, "--env", "B=1"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o)
            .contains("app.json requires config vars API_KEY: give each with --env KEY=VALUE"),
        "{}",
        stderr(&o)
    );
    std::fs::write(dir.path().join("app.json"), "{\n  \"env\": \n}").expect("write");
    let o = api.run(&["apps:create", "setup", "--from", &path]);
    assert!(
        stderr(&o).contains("not valid JSON at line 3, column 1"),
        "{}",
        stderr(&o)
    );
    assert!(api.requests().is_empty(), "nothing was created");
}

#[test]
fn reviewapps_destroy_needs_confirmation_and_lists_show_branches() {
    let api = FakeApi::start(|method, path| match (method, path) {
        ("GET", "/pipelines/shop/review-apps") => (
            200,
            vec![],
            json(
                serde_json::json!([{"app": {"name": "shop-pr-x-1a2b"}, "branch": "x", "expires_at": null}]),
            ),
        ),
        _ => (200, vec![], "{}".to_string()),
    });
    let o = api.run(&["reviewapps:destroy", "shop-pr-x-1a2b"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--confirm shop-pr-x-1a2b"),
        "{}",
        stderr(&o)
    );
    assert!(api.requests().is_empty());
    let o = api.run(&["reviewapps", "--pipeline", "shop"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("shop-pr-x-1a2b") && out.contains("never"),
        "{out}"
    );
    let o = api.run(&["reviewapps:config:set", "S3=review", "--pipeline", "shop"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let set = api.requests().pop().expect("a request");
    assert_eq!(
        (set.method.as_str(), set.path.as_str()),
        ("PATCH", "/pipelines/shop/stage/review/config-vars")
    );
    assert_eq!(set.json(), serde_json::json!({"S3": "review"}));
    let o = api.run(&[
        "reviewapps:destroy",
        "shop-pr-x-1a2b",
        "--confirm",
        "shop-pr-x-1a2b",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let reqs = api.requests();
    assert_eq!(
        (reqs[2].method.as_str(), reqs[2].path.as_str()),
        ("DELETE", "/review-apps/shop-pr-x-1a2b")
    );
}

#[test]
fn reviewapps_create_without_a_source_asks_for_the_pushed_branch() {
    let api = FakeApi::start(|method, path| match (method, path) {
        ("POST", _) => (
            201,
            vec![],
            json(
                serde_json::json!({"app": {"name": "shop-pr-x-1a2b"}, "branch": "x",
                "build": {"id": "b1", "status": "pending"}}),
            ),
        ),
        ("GET", "/apps/shop-pr-x-1a2b/builds/b1/output") => (200, vec![], "-----> built\n".into()),
        ("GET", "/apps/shop-pr-x-1a2b/builds/b1") => (
            200,
            vec![],
            json(serde_json::json!({"id": "b1", "status": "succeeded"})),
        ),
        _ => (404, vec![], json(serde_json::json!({"message": "no"}))),
    });
    let o = api.run(&[
        "reviewapps:create",
        "--pipeline",
        "shop",
        "--branch",
        "x",
        "--ttl",
        "4",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("-----> built"), "{}", stdout(&o));
    let post = &api.requests()[0];
    assert_eq!(
        post.path,
        "/pipelines/shop/review-apps?branch=x&ttl_hours=4"
    );
    assert!(
        post.body.is_empty(),
        "no source uploaded: the scheduler takes the pushed branch"
    );
}

#[test]
fn addons_commands_call_the_api_and_confirm_destruction() {
    let api = FakeApi::start(|method, path| match (method, path) {
        ("POST", "/apps/web/addons") => (
            201,
            vec![],
            json(serde_json::json!({
                "name": "postgresql-curved-12345", "plan": {"name": "postgresql"},
                "config_vars": ["MAIN_URL"], "host": {"id": "h1"}, "state": "provisioning"
            })),
        ),
        ("GET", "/apps/web/addon-attachments") => (
            200,
            vec![],
            json(serde_json::json!([{"id": "a1b2", "name": "SHARED"}])),
        ),
        ("DELETE", "/addon-attachments/a1b2") => (
            200,
            vec![],
            json(
                serde_json::json!({"name": "SHARED", "addon": {"name": "postgresql-curved-12345"}}),
            ),
        ),
        ("GET", "/apps/web/pg-backups/b001/download") => (200, vec![], "PGDMP-bytes".into()),
        _ => (
            404,
            vec![],
            json(serde_json::json!({"id": "not_found", "message": "nope"})),
        ),
    });
    let o = api.run(&["addons:create", "postgresql", "-a", "web", "--as", "main"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with(
            "Creating postgresql on web... done: postgresql-curved-12345 (on host h1)\n"
        ),
        "{}",
        stdout(&o)
    );
    assert_eq!(
        api.requests()[0].json(),
        serde_json::json!({"plan": "postgresql", "attachment": {"name": "main"}})
    );

    // Destroying needs the app's name: a mismatch (or none, without a terminal) sends nothing.
    let sent = api.requests().len();
    let o = api.run(&[
        "addons:destroy",
        "postgresql-curved-12345",
        "-a",
        "web",
        "--confirm",
        "other",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("confirmation \"other\" did not match web: nothing was done"));
    let o = api.run(&["addons:destroy", "postgresql-curved-12345", "-a", "web"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("re-run this command with --confirm web"),
        "{}",
        stderr(&o)
    );
    assert_eq!(api.requests().len(), sent, "no request");

    // Detach names the attachment; the CLI finds its id.
    let o = api.run(&["addons:detach", "shared", "-a", "web"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "Detaching SHARED (postgresql-curved-12345) from web... done\n"
    );
    let o = api.run(&["addons:detach", "OTHER", "-a", "web"]);
    assert!(
        stderr(&o).contains("web has no attachment OTHER: it has SHARED"),
        "{}",
        stderr(&o)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("b001.dump");
    let file_arg = file.to_str().expect("utf-8");
    let o = api.run(&["pg:backups:download", "b001", "-a", "web", "-o", file_arg]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&file).expect("written"), b"PGDMP-bytes");
}
