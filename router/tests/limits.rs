//! The client listener's limits: a client that sends its headers slowly, sends nothing, or
//! keeps an idle keep-alive connection is cut off after `idle_timeout`; connections past
//! `max_connections` wait to be accepted until one closes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use manifold_router::RouterConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the router closes the connection; returns what it sent. Fails the test if
/// it is still open after `within`.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the router kept the connection open past {within:?}"
    );
    String::from_utf8_lossy(&got).into_owned()
}

fn limited(idle: Duration, max_connections: usize) -> RouterConfig {
    RouterConfig {
        idle_timeout: idle,
        max_connections,
        ..RouterConfig::default()
    }
}

#[tokio::test]
async fn half_a_header_is_cut_off_after_the_timeout() {
    let idle = Duration::from_millis(500);
    let r = TestRouter::start(limited(idle, 100)).await;
    let mut slow = TcpStream::connect(r.addr).await.expect("connect");
    let start = Instant::now();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: app.localhost\r\nX-Slow: ")
        .await
        .expect("write");
    let got = read_to_close(&mut slow, Duration::from_secs(10)).await;
    assert!(start.elapsed() >= idle, "closed before the timeout");
    assert!(!got.contains("200"), "no request was served: {got:?}");
    // A silent connection too.
    let mut silent = TcpStream::connect(r.addr).await.expect("connect");
    read_to_close(&mut silent, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_timeout() {
    let idle = Duration::from_millis(500);
    let r = TestRouter::start(limited(idle, 100)).await;
    let mut client = TcpStream::connect(r.addr).await.expect("connect");
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: nope.localhost\r\n\r\n")
        .await
        .expect("write");
    // The answer (no such app) comes, then the connection idles until it is closed.
    let got = read_to_close(&mut client, Duration::from_secs(10)).await;
    assert!(got.starts_with("HTTP/1.1 404"), "{got:?}");
}

#[tokio::test]
async fn connections_past_the_cap_wait_until_one_closes() {
    let r = TestRouter::start(limited(Duration::from_secs(55), 1)).await;
    // Holds the only slot, saying nothing.
    let holder = TcpStream::connect(r.addr).await.expect("connect");
    let mut waiting = TcpStream::connect(r.addr).await.expect("connect (backlog)");
    waiting
        .write_all(b"GET / HTTP/1.1\r\nHost: nope.localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), waiting.read(&mut buf)).await;
    assert!(early.is_err(), "served past the cap: {early:?}");
    drop(holder);
    let got = read_to_close(&mut waiting, Duration::from_secs(10)).await;
    assert!(
        got.starts_with("HTTP/1.1 404"),
        "served once a slot freed: {got:?}"
    );
}
