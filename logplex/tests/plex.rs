//! The plex without drains: history, filters, tails, removal, metrics.

use std::time::{Duration, Instant};

use futures::StreamExt;
use manifold_logplex::{Filter, LogLine, LogPlex, PlexConfig, Source, MAX_MESSAGE_BYTES};

fn plex() -> LogPlex {
    LogPlex::new(PlexConfig {
        system_roots: false,
        ..PlexConfig::default()
    })
}

fn app_line(process: &str, msg: impl Into<String>) -> LogLine {
    LogLine::now(Source::App, process, msg)
}

fn messages(lines: &[LogLine]) -> Vec<String> {
    lines.iter().map(|l| l.message.clone()).collect()
}

async fn next(tail: &mut manifold_logplex::Tail) -> Option<LogLine> {
    tokio::time::timeout(Duration::from_secs(5), tail.next())
        .await
        .expect("tail produced nothing within 5 s")
}

#[test]
fn ring_keeps_exactly_the_last_1500() {
    let plex = plex();
    for i in 0..2000 {
        plex.push("a", app_line("web.1", i.to_string()));
    }
    let all = plex.recent("a", &Filter::default(), 5000);
    assert_eq!(all.len(), 1500);
    assert_eq!(all.first().map(|l| l.message.as_str()), Some("500"));
    assert_eq!(all.last().map(|l| l.message.as_str()), Some("1999"));
}

#[test]
fn recent_with_n_and_filters() {
    let plex = plex();
    plex.push("a", app_line("web.1", "w1-a"));
    plex.push("a", app_line("web.2", "w2-a"));
    plex.push(
        "a",
        LogLine::now(Source::Heroku, "web.1", "State changed from starting to up"),
    );
    plex.push("a", app_line("worker.1", "k1"));
    plex.push(
        "a",
        LogLine::now(Source::Heroku, "router", "at=info status=200"),
    );
    plex.push("a", app_line("web.12", "w12"));
    plex.push("a", app_line("web.1", "w1-b"));
    plex.push("other", app_line("web.1", "not mine"));

    let all = Filter::default();
    assert_eq!(messages(&plex.recent("a", &all, 2)), ["w12", "w1-b"]);
    assert_eq!(plex.recent("a", &all, 100).len(), 7);

    let web = Filter {
        process: Some("web".into()),
        source: None,
    };
    assert_eq!(
        messages(&plex.recent("a", &web, 100)),
        [
            "w1-a",
            "w2-a",
            "State changed from starting to up",
            "w12",
            "w1-b"
        ]
    );

    let web1 = Filter {
        process: Some("web.1".into()),
        source: None,
    };
    assert_eq!(
        messages(&plex.recent("a", &web1, 100)),
        ["w1-a", "State changed from starting to up", "w1-b"]
    );

    let web1_app = Filter {
        process: Some("web.1".into()),
        source: Some(Source::App),
    };
    assert_eq!(messages(&plex.recent("a", &web1_app, 1)), ["w1-b"]);

    let heroku = Filter {
        process: None,
        source: Some(Source::Heroku),
    };
    assert_eq!(
        messages(&plex.recent("a", &heroku, 100)),
        ["State changed from starting to up", "at=info status=200"]
    );

    assert!(plex.recent("nope", &all, 100).is_empty());
}

#[test]
fn render_is_heroku_logs_format() {
    let line = LogLine {
        time: time::macros::datetime!(2026-11-23 10:00:00.123456 UTC),
        source: Source::App,
        process: "api".into(),
        message: "Deploy 1a2b3c by user x".into(),
    };
    assert_eq!(
        line.render(),
        "2026-11-23T10:00:00.123456+00:00 app[api]: Deploy 1a2b3c by user x"
    );
    let now = LogLine::now(Source::Heroku, "router", "x").render();
    // YYYY-MM-DDTHH:MM:SS.ffffff+00:00 is 32 characters.
    assert_eq!(&now[26..33], "+00:00 ", "{now}");
    assert_eq!(&now[19..20], ".", "{now}");
    assert!(now.ends_with(" heroku[router]: x"), "{now}");
}

#[test]
fn long_lines_are_split() {
    let plex = plex();
    plex.push(
        "a",
        app_line("web.1", "x".repeat(MAX_MESSAGE_BYTES * 2 + 5)),
    );
    let lines = plex.recent("a", &Filter::default(), 10);
    assert_eq!(
        lines.iter().map(|l| l.message.len()).collect::<Vec<_>>(),
        [MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES, 5]
    );
}

#[tokio::test]
async fn tail_sees_only_later_matching_lines() {
    let plex = plex();
    plex.push("a", app_line("web.1", "before"));
    let mut tail = plex.tail(
        "a",
        Filter {
            process: Some("web".into()),
            source: Some(Source::App),
        },
    );
    plex.push("a", app_line("worker.1", "other type"));
    plex.push("a", LogLine::now(Source::Heroku, "web.1", "other source"));
    plex.push("b", app_line("web.1", "other app"));
    plex.push("a", app_line("web.2", "after 1"));
    plex.push("a", app_line("web.1", "after 2"));
    assert_eq!(
        next(&mut tail).await.map(|l| l.message),
        Some("after 1".into())
    );
    assert_eq!(
        next(&mut tail).await.map(|l| l.message),
        Some("after 2".into())
    );

    // A reader waiting for a line is woken by a push from another task.
    let pusher = plex.clone();
    let waiter = tokio::spawn(async move { next(&mut tail).await.map(|l| l.message) });
    tokio::time::sleep(Duration::from_millis(50)).await;
    pusher.push("a", app_line("web.3", "later"));
    assert_eq!(waiter.await.expect("join"), Some("later".into()));
}

#[tokio::test]
async fn tail_is_a_stream() {
    let plex = plex();
    let tail = plex.tail("a", Filter::default());
    for i in 0..3 {
        plex.push("a", app_line("web.1", i.to_string()));
    }
    let got: Vec<String> = tail.take(3).map(|l| l.message).collect().await;
    assert_eq!(got, ["0", "1", "2"]);
}

#[tokio::test]
async fn recent_and_tail_has_no_gap_and_no_duplicate() {
    let plex = plex();
    for i in 0..5 {
        plex.push("a", app_line("web.1", i.to_string()));
    }
    let (recent, mut tail) = plex.recent_and_tail("a", Filter::default(), 2);
    plex.push("a", app_line("web.1", "5"));
    assert_eq!(messages(&recent), ["3", "4"]);
    assert_eq!(next(&mut tail).await.map(|l| l.message), Some("5".into()));
}

#[tokio::test]
async fn a_never_read_tail_does_not_block_push_and_gets_l11() {
    let plex = plex();
    let mut tail = plex.tail("a", Filter::default());
    let started = Instant::now();
    for i in 0..3000 {
        plex.push("a", app_line("web.1", i.to_string()));
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "push waited for the tail: {:?}",
        started.elapsed()
    );

    // The buffered 1024 lines, in order, then the notice for the 1976 lost.
    for i in 0..1024 {
        assert_eq!(
            next(&mut tail).await.map(|l| l.message),
            Some(i.to_string())
        );
    }
    let notice = next(&mut tail).await.expect("L11 line");
    assert_eq!(notice.source, Source::Heroku);
    assert_eq!(notice.process, "logplex");
    assert!(
        notice
            .message
            .starts_with("Error L11 (Tail buffer overflow): 1976 messages dropped since "),
        "{}",
        notice.render()
    );
    assert!(notice.message.ends_with("+00:00"), "{}", notice.message);

    // And then it carries on.
    plex.push("a", app_line("web.1", "fresh"));
    assert_eq!(
        next(&mut tail).await.map(|l| l.message),
        Some("fresh".into())
    );
    assert!(plex
        .metrics()
        .contains("manifold_logplex_dropped_total{reason=\"tail_overflow\"} 1976\n"));
}

#[tokio::test]
async fn l11_comes_before_newer_lines_once_there_is_room() {
    let plex = LogPlex::new(PlexConfig {
        tail_buffer: 2,
        system_roots: false,
        ..PlexConfig::default()
    });
    let mut tail = plex.tail("a", Filter::default());
    for i in 0..5 {
        plex.push("a", app_line("web.1", i.to_string()));
    }
    assert_eq!(next(&mut tail).await.map(|l| l.message), Some("0".into()));
    plex.push("a", app_line("web.1", "5"));
    let got: Vec<String> = [
        next(&mut tail).await,
        next(&mut tail).await,
        next(&mut tail).await,
    ]
    .into_iter()
    .map(|l| l.expect("line").message)
    .collect();
    assert_eq!(got[0], "1");
    assert!(got[1].starts_with("Error L11 (Tail buffer overflow): 3 messages dropped since "));
    assert_eq!(got[2], "5");
}

#[tokio::test]
async fn remove_app_ends_tails_and_forgets_history() {
    let plex = plex();
    let mut tail = plex.tail("a", Filter::default());
    plex.push("a", app_line("web.1", "last words"));
    let waiter = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(line) = next(&mut tail).await {
            got.push(line.message);
        }
        got
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    plex.remove_app("a");
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("tail did not end")
        .expect("join");
    assert_eq!(got, ["last words"]);
    assert!(plex.recent("a", &Filter::default(), 100).is_empty());
}

#[tokio::test]
async fn dropped_tails_are_forgotten() {
    let plex = plex();
    // A filter that the next line does not match: the tail must go all the same.
    let tail = plex.tail(
        "a",
        Filter {
            process: Some("worker".into()),
            source: None,
        },
    );
    assert!(plex.metrics().contains("manifold_logplex_tails 1\n"));
    drop(tail);
    plex.push("a", app_line("web.1", "x"));
    let metrics = plex.metrics();
    assert!(metrics.contains("manifold_logplex_tails 0\n"), "{metrics}");
    assert!(
        metrics.contains("manifold_logplex_lines_total 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("manifold_logplex_apps 1\n"), "{metrics}");
}

#[test]
fn set_drains_outside_a_runtime_is_an_error() {
    let plex = plex();
    let err = plex
        .set_drains(
            "a",
            vec![manifold_logplex::Drain {
                id: "1".into(),
                url: "syslog://127.0.0.1:1".into(),
                token: "d.1".into(),
            }],
        )
        .expect_err("no runtime");
    assert!(err.to_string().contains("tokio runtime"), "{err}");
}
