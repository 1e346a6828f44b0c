//! Drains against real local servers: syslog over TCP and TLS, HTTP and HTTPS, drains that
//! are down, slow or refusing.

mod common;

use std::time::{Duration, Instant};

use common::{
    closed_port, http_server, listener, parse_frames, recv_until, syslog_server, test_ca, Frame,
};
use hyper::StatusCode;
use manifold_logplex::{
    load_pem_roots, Drain, Filter, LogLine, LogPlex, PlexConfig, SetDrainsError, Source,
};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

fn config() -> PlexConfig {
    PlexConfig {
        system_roots: false,
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        batch_linger: Duration::from_millis(50),
        // The test servers listen on loopback, which drains may reach only when allowed.
        drain_allow: vec![
            "127.0.0.0/8".parse().expect("net"),
            "::1/128".parse().expect("net"),
        ],
        ..PlexConfig::default()
    }
}

/// Waits for the app's `heroku[logplex]` line starting with `start`.
async fn wait_for_notice(plex: &LogPlex, app: &str, start: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = plex.recent(
            app,
            &Filter {
                process: Some("logplex".into()),
                source: Some(Source::Heroku),
            },
            10,
        );
        if let Some(line) = lines.iter().find(|l| l.message.starts_with(start)) {
            return line.message.clone();
        }
        assert!(Instant::now() < deadline, "no {start:?} line in {lines:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A drain to loopback (by address or by a name that resolves there) is refused at connect
/// time with a line in the app's stream saying why; nothing reaches the server. Named in the
/// operator's allow-list, the same drain works.
#[tokio::test]
async fn drains_to_internal_addresses_are_refused_unless_allowed() {
    let (l, addr) = listener().await;
    let mut frames = syslog_server(l, None);
    let (l, http_addr) = listener().await;
    let mut posts = http_server(l, None, 0);
    let closed = PlexConfig {
        drain_allow: Vec::new(),
        ..config()
    };
    let plex = LogPlex::new(closed);
    plex.set_drains(
        "a",
        vec![
            drain("ssrf", format!("syslog://{addr}")),
            drain("named", format!("http://localhost:{}/", http_addr.port())),
        ],
    )
    .expect("set drains");
    plex.push("a", LogLine::now(Source::App, "web.1", "secret"));
    let tail = ": log drains may not reach loopback, private or link-local addresses unless the operator allows them (--drain-allow)";
    let by_address = wait_for_notice(&plex, "a", "Error: log drain d.ssrf refused:").await;
    assert_eq!(
        by_address,
        format!("Error: log drain d.ssrf refused: 127.0.0.1 is a loopback address{tail}")
    );
    let by_name = wait_for_notice(&plex, "a", "Error: log drain d.named refused:").await;
    assert!(
        by_name.starts_with("Error: log drain d.named refused: localhost (")
            && by_name.ends_with(&format!(") is a loopback address{tail}")),
        "{by_name}"
    );
    // Told once, though the drains keep retrying.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let notices = plex.recent(
        "a",
        &Filter {
            process: Some("logplex".into()),
            source: Some(Source::Heroku),
        },
        10,
    );
    assert_eq!(notices.len(), 2, "{notices:?}");
    assert!(frames.try_recv().is_err(), "the syslog server got nothing");
    assert!(posts.try_recv().is_err(), "the http server got nothing");
    let metrics = plex.metrics();
    assert!(
        metrics.contains("manifold_logplex_drain_failed_total{transport=\"syslog\"}")
            && !metrics.contains("manifold_logplex_drain_failed_total{transport=\"syslog\"} 0\n"),
        "{metrics}"
    );

    let allowed = LogPlex::new(PlexConfig {
        drain_allow: vec![
            "127.0.0.1/32".parse().expect("net"),
            "::1/128".parse().expect("net"),
        ],
        ..config()
    });
    allowed
        .set_drains("a", vec![drain("ssrf", format!("syslog://{addr}"))])
        .expect("set drains");
    allowed.push("a", LogLine::now(Source::App, "web.1", "allowed"));
    let got = recv_until(&mut frames, 10, |f| !f.is_empty()).await;
    assert_app_frame(&got[0], "d.ssrf", "allowed");
}

fn drain(id: &str, url: String) -> Drain {
    Drain {
        id: id.into(),
        url,
        token: format!("d.{id}"),
    }
}

/// Checks a frame is the RFC 5424 message the plex must send for an `app[web.1]` line.
fn assert_app_frame(frame: &Frame, token: &str, msg: &str) {
    assert_eq!(frame.pri, "190", "{frame:?}");
    assert_eq!(frame.version, "1", "{frame:?}");
    assert!(
        OffsetDateTime::parse(&frame.timestamp, &Rfc3339).is_ok(),
        "bad timestamp {frame:?}"
    );
    assert!(frame.timestamp.ends_with("+00:00"), "{frame:?}");
    assert_eq!(frame.hostname, token, "{frame:?}");
    assert_eq!(frame.app_name, "app", "{frame:?}");
    assert_eq!(frame.procid, "web.1", "{frame:?}");
    assert_eq!(frame.msgid, "-", "{frame:?}");
    assert_eq!(frame.sd, "-", "{frame:?}");
    assert_eq!(frame.msg, msg, "{frame:?}");
}

#[tokio::test]
async fn syslog_tcp_drain_gets_octet_counted_rfc5424_frames() {
    let (l, addr) = listener().await;
    let mut frames = syslog_server(l, None);
    let plex = LogPlex::new(config());
    plex.set_drains("a", vec![drain("tcp", format!("syslog://{addr}"))])
        .expect("set drains");
    plex.push("a", LogLine::now(Source::App, "web.1", "hello syslog"));
    plex.push(
        "a",
        LogLine::now(Source::App, "web.1", "multi word line with ünïcode"),
    );
    plex.push(
        "a",
        LogLine::now(Source::Heroku, "router", "at=info status=200"),
    );
    let got = recv_until(&mut frames, 10, |f| f.len() == 3).await;
    assert_app_frame(&got[0], "d.tcp", "hello syslog");
    assert_app_frame(&got[1], "d.tcp", "multi word line with ünïcode");
    assert_eq!(
        (got[2].app_name.as_str(), got[2].procid.as_str()),
        ("heroku", "router")
    );
    assert_eq!(plex.drains("a").len(), 1);
    wait_for_metric(
        &plex,
        "manifold_logplex_drain_delivered_total{transport=\"syslog\"} 3\n",
    )
    .await;
}

#[tokio::test]
async fn syslog_tls_drain_trusts_the_configured_ca() {
    let ca = test_ca();
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = dir.path().join("ca.pem");
    std::fs::write(&pem, &ca.ca_pem).expect("write pem");
    let roots = load_pem_roots(&pem).expect("load roots");
    assert_eq!(roots, vec![ca.ca_der.clone()]);

    let (l, addr) = listener().await;
    let mut frames = syslog_server(l, Some(ca.acceptor.clone()));
    let plex = LogPlex::new(PlexConfig {
        drain_roots: roots,
        ..config()
    });
    plex.set_drains(
        "a",
        vec![drain(
            "tls",
            format!("syslog+tls://localhost:{}", addr.port()),
        )],
    )
    .expect("set drains");
    for i in 0..50 {
        plex.push(
            "a",
            LogLine::now(Source::App, "web.1", format!("secret {i}")),
        );
    }
    let got = recv_until(&mut frames, 10, |f| f.len() == 50).await;
    for (i, frame) in got.iter().enumerate() {
        assert_app_frame(frame, "d.tls", &format!("secret {i}"));
    }
}

#[tokio::test]
async fn tls_drain_refuses_an_unknown_ca() {
    let ca = test_ca();
    let (l, addr) = listener().await;
    let mut frames = syslog_server(l, Some(ca.acceptor));
    // No configured roots and no system roots: the test CA is not trusted.
    let plex = LogPlex::new(config());
    plex.set_drains(
        "a",
        vec![drain(
            "tls",
            format!("syslog+tls://127.0.0.1:{}", addr.port()),
        )],
    )
    .expect("set drains");
    plex.push("a", LogLine::now(Source::App, "web.1", "must not leak"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        frames.try_recv().is_err(),
        "a frame went to an untrusted server"
    );
    let metrics = plex.metrics();
    assert!(
        !metrics.contains("manifold_logplex_drain_failed_total{transport=\"syslog\"} 0\n"),
        "{metrics}"
    );
}

async fn https_drain_gets_headers_and_frames(tls: bool) {
    let ca = test_ca();
    let (l, addr) = listener().await;
    let mut posts = http_server(l, tls.then(|| ca.acceptor.clone()), 0);
    let scheme = if tls { "https" } else { "http" };
    let plex = LogPlex::new(PlexConfig {
        drain_roots: vec![ca.ca_der.clone()],
        batch_max: 10,
        ..config()
    });
    plex.set_drains(
        "a",
        vec![drain(
            "h",
            format!("{scheme}://user:pw@localhost:{}/logs", addr.port()),
        )],
    )
    .expect("set drains");
    for i in 0..25 {
        plex.push("a", LogLine::now(Source::App, "web.1", format!("line {i}")));
    }
    let got = recv_until(&mut posts, 10, |p| {
        p.iter()
            .map(|(_, p)| parse_frames(&p.body).len())
            .sum::<usize>()
            == 25
    })
    .await;
    let mut frames = Vec::new();
    let mut frame_ids = std::collections::HashSet::new();
    for (status, post) in &got {
        assert_eq!(*status, StatusCode::OK);
        assert_eq!(post.path, "/logs");
        assert_eq!(post.header("content-type"), "application/logplex-1");
        assert_eq!(post.header("logplex-drain-token"), "d.h");
        // "user:pw" in base64.
        assert_eq!(post.header("authorization"), "Basic dXNlcjpwdw==");
        let batch = parse_frames(&post.body);
        assert!(batch.len() <= 10, "batch of {}", batch.len());
        assert_eq!(
            post.header("logplex-msg-count")
                .parse::<usize>()
                .expect("count"),
            batch.len()
        );
        let id = post.header("logplex-frame-id");
        assert!(uuid::Uuid::parse_str(id).is_ok(), "frame id {id}");
        assert!(frame_ids.insert(id.to_owned()), "frame id reused: {id}");
        frames.extend(batch);
    }
    for (i, frame) in frames.iter().enumerate() {
        assert_app_frame(frame, "d.h", &format!("line {i}"));
    }
}

#[tokio::test]
async fn http_drain_gets_headers_and_frames() {
    https_drain_gets_headers_and_frames(false).await;
}

#[tokio::test]
async fn https_drain_with_the_test_ca_gets_headers_and_frames() {
    https_drain_gets_headers_and_frames(true).await;
}

#[tokio::test]
async fn https_drain_retries_a_refused_batch_under_the_same_frame_id() {
    let (l, addr) = listener().await;
    let mut posts = http_server(l, None, 3);
    let plex = LogPlex::new(config());
    plex.set_drains("a", vec![drain("h", format!("http://{addr}/"))])
        .expect("set drains");
    plex.push("a", LogLine::now(Source::App, "web.1", "persistent"));
    let got = recv_until(&mut posts, 10, |p| {
        p.last().is_some_and(|(s, _)| *s == StatusCode::OK)
    })
    .await;
    assert_eq!(got.len(), 4, "three refusals, then success");
    let ids: std::collections::HashSet<_> = got
        .iter()
        .map(|(_, p)| p.header("logplex-frame-id").to_owned())
        .collect();
    assert_eq!(ids.len(), 1, "a retry keeps its frame id");
    let frames = parse_frames(&got[3].1.body);
    assert_app_frame(&frames[0], "d.h", "persistent");
    // The server records a request before the plex has read the answer.
    wait_for_metric(
        &plex,
        "manifold_logplex_drain_delivered_total{transport=\"https\"} 1\n",
    )
    .await;
    assert!(plex
        .metrics()
        .contains("manifold_logplex_drain_failed_total{transport=\"https\"} 3\n"));
}

async fn wait_for_metric(plex: &LogPlex, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !plex.metrics().contains(want) {
        assert!(
            Instant::now() < deadline,
            "no {want:?} in\n{}",
            plex.metrics()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Pushes `n` numbered lines in paced chunks (so a working drain can keep up with its
/// 1,024-line queue) and returns the longest time one chunk of pushes took.
async fn push_paced(plex: &LogPlex, n: usize) -> Duration {
    let mut slowest = Duration::ZERO;
    for chunk in 0..n / 100 {
        let started = Instant::now();
        for i in chunk * 100..(chunk + 1) * 100 {
            plex.push("a", LogLine::now(Source::App, "web.1", i.to_string()));
        }
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    slowest
}

fn l10_count(msg: &str) -> Option<usize> {
    let rest = msg.strip_prefix("Error L10 (output buffer overflow): ")?;
    let (count, since) = rest.split_once(" messages dropped since ")?;
    assert!(
        OffsetDateTime::parse(since, &Rfc3339).is_ok(),
        "bad time in {msg:?}"
    );
    count.parse().ok()
}

#[tokio::test]
async fn a_down_syslog_drain_blocks_nothing_and_reports_l10_when_back() {
    let down_port = closed_port().await;
    let (l, up_addr) = listener().await;
    let mut up = syslog_server(l, None);
    let plex = LogPlex::new(config());
    plex.set_drains(
        "a",
        vec![
            drain("down", format!("syslog://127.0.0.1:{down_port}")),
            drain("up", format!("syslog://{up_addr}")),
        ],
    )
    .expect("set drains");

    let slowest = push_paced(&plex, 2000).await;
    assert!(
        slowest < Duration::from_millis(500),
        "push blocked for {slowest:?}"
    );

    // The working drain got every line while the other was down.
    let got = recv_until(&mut up, 10, |f| f.len() == 2000).await;
    for (i, frame) in got.iter().enumerate() {
        assert_app_frame(frame, "d.up", &i.to_string());
    }

    // The down drain comes up: it gets its queue (the first 1,024 lines) and then the L10
    // line for the rest.
    let l = tokio::net::TcpListener::bind(("127.0.0.1", down_port))
        .await
        .expect("rebind the down drain's port");
    let mut down = syslog_server(l, None);
    let got = recv_until(&mut down, 10, |f| {
        f.last().is_some_and(|f| f.msg.starts_with("Error L10"))
    })
    .await;
    let (notice, lines) = got.split_last().expect("frames");
    assert_eq!(lines.len(), 1024);
    for (i, frame) in lines.iter().enumerate() {
        assert_app_frame(frame, "d.down", &i.to_string());
    }
    assert_eq!(notice.app_name, "heroku");
    assert_eq!(notice.procid, "logplex");
    assert_eq!(l10_count(&notice.msg), Some(2000 - 1024), "{}", notice.msg);

    // The L10 line is in the app's stream too, so `manifold logs` shows it.
    let heroku = plex.recent(
        "a",
        &Filter {
            process: Some("logplex".into()),
            source: Some(Source::Heroku),
        },
        10,
    );
    assert_eq!(heroku.len(), 1);
    assert_eq!(l10_count(&heroku[0].message), Some(976));
    assert!(plex
        .metrics()
        .contains("manifold_logplex_dropped_total{reason=\"drain_overflow\"} 976\n"));
}

#[tokio::test]
async fn a_down_https_drain_reports_l10_when_back() {
    let down_port = closed_port().await;
    let plex = LogPlex::new(config());
    plex.set_drains(
        "a",
        vec![drain("h", format!("http://127.0.0.1:{down_port}/"))],
    )
    .expect("set drains");
    let started = Instant::now();
    for i in 0..3000 {
        plex.push("a", LogLine::now(Source::App, "web.1", i.to_string()));
    }
    assert!(started.elapsed() < Duration::from_secs(1), "push blocked");

    let l = tokio::net::TcpListener::bind(("127.0.0.1", down_port))
        .await
        .expect("rebind");
    let mut posts = http_server(l, None, 0);
    let got = recv_until(&mut posts, 20, |p| {
        p.iter().any(|(_, p)| {
            parse_frames(&p.body)
                .iter()
                .any(|f| f.msg.starts_with("Error L10"))
        })
    })
    .await;
    let frames: Vec<Frame> = got
        .iter()
        .flat_map(|(_, p)| parse_frames(&p.body))
        .collect();
    let (notice, lines) = frames.split_last().expect("frames");
    // In order, none twice, and the notice accounts for every line not delivered.
    for (i, frame) in lines.iter().enumerate() {
        assert_eq!(frame.msg, i.to_string());
    }
    assert_eq!(
        l10_count(&notice.msg),
        Some(3000 - lines.len()),
        "{}",
        notice.msg
    );
}

#[tokio::test]
async fn set_drains_starts_stops_and_keeps() {
    let (l1, a1) = listener().await;
    let (l2, a2) = listener().await;
    let mut s1 = syslog_server(l1, None);
    let mut s2 = syslog_server(l2, None);
    let plex = LogPlex::new(config());
    let d1 = drain("one", format!("syslog://{a1}"));
    let d2 = drain("two", format!("syslog://{a2}"));

    plex.set_drains("a", vec![d1.clone()]).expect("set");
    plex.push("a", LogLine::now(Source::App, "web.1", "first"));
    assert_eq!(
        recv_until(&mut s1, 10, |f| f.len() == 1).await[0].msg,
        "first"
    );

    plex.set_drains("a", vec![d1.clone(), d2.clone()])
        .expect("set");
    plex.push("a", LogLine::now(Source::App, "web.1", "second"));
    assert_eq!(
        recv_until(&mut s1, 10, |f| f.len() == 1).await[0].msg,
        "second"
    );
    assert_eq!(
        recv_until(&mut s2, 10, |f| f.len() == 1).await[0].msg,
        "second"
    );

    plex.set_drains("a", vec![d2.clone()]).expect("set");
    plex.push("a", LogLine::now(Source::App, "web.1", "third"));
    assert_eq!(
        recv_until(&mut s2, 10, |f| f.len() == 1).await[0].msg,
        "third"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(s1.try_recv().is_err(), "a removed drain still sends");
    assert_eq!(plex.drains("a"), vec![d2.clone()]);

    let bad = plex
        .set_drains("a", vec![drain("bad", "ftp://x:1".into())])
        .expect_err("bad url");
    assert!(
        matches!(bad, SetDrainsError::Url { ref id, .. } if id == "bad"),
        "{bad}"
    );
    assert_eq!(plex.drains("a"), vec![d2], "a refused set changes nothing");

    plex.remove_app("a");
    assert!(plex.drains("a").is_empty());
    assert!(plex.metrics().contains("manifold_logplex_drains 0\n"));
}

#[tokio::test]
async fn a_syslog_drain_reconnects_when_the_server_closes_without_losing_lines() {
    use tokio::io::AsyncReadExt;
    let (l, addr) = listener().await;
    let plex = LogPlex::new(config());
    plex.set_drains("a", vec![drain("re", format!("syslog://{addr}"))])
        .expect("set drains");
    plex.push("a", LogLine::now(Source::App, "web.1", "0"));

    // The first connection gets one frame, then the server hangs up (an idle timeout).
    let (mut first, _) = l.accept().await.expect("accept");
    let mut buf = Vec::new();
    while common::parse_frame(&buf).is_none() {
        let mut chunk = [0u8; 1024];
        let n = first.read(&mut chunk).await.expect("read");
        assert!(n > 0, "drain closed first");
        buf.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(common::parse_frame(&buf).expect("frame").0.msg, "0");
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut frames = syslog_server(l, None);
    for i in 1..=10 {
        plex.push("a", LogLine::now(Source::App, "web.1", i.to_string()));
    }
    let got = recv_until(&mut frames, 10, |f| f.len() == 10).await;
    for (i, frame) in got.iter().enumerate() {
        assert_app_frame(frame, "d.re", &(i + 1).to_string());
    }
}
