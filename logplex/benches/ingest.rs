//! Ingest benchmark: how many lines per second one app's stream takes.
//!
//! `cargo bench -p manifold-logplex --bench ingest [-- LINES RUNS]`
//!
//! * `push+tail`: one thread pushes router-sized lines, one `--tail` reader (a tokio task)
//!   reads them all. The pusher never lets itself get more than 3/4 of the tail buffer
//!   ahead of the reader, so the figure is end-to-end throughput *without loss*; the run
//!   fails if the reader sees an L11 or a line is missing.
//! * `push only`: the same pushes with no reader (ring and metrics only).
//!
//! Prints the median of the runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use manifold_logplex::{Filter, LogLine, LogPlex, PlexConfig, Source};

const CHUNK: u64 = 256;

fn line(i: u64) -> LogLine {
    LogLine::now(
        Source::Heroku,
        "router",
        format!(
            "at=info method=GET path=\"/items/{i}\" host=bench.example.com request_id={i:032x} \
             fwd=\"10.0.0.1\" dyno=web.1 connect=0ms service=3ms status=200 bytes=512 protocol=http"
        ),
    )
}

fn push_and_tail(runtime: &tokio::runtime::Runtime, lines: u64) -> Duration {
    let config = PlexConfig {
        system_roots: false,
        ..PlexConfig::default()
    };
    let max_ahead = (config.tail_buffer as u64) * 3 / 4;
    let plex = LogPlex::new(config);
    let mut tail = plex.tail("bench", Filter::default());
    let read = Arc::new(AtomicU64::new(0));
    let reader = {
        let read = read.clone();
        runtime.spawn(async move {
            let mut n = 0u64;
            while n < lines {
                let Some(line) = tail.next().await else {
                    panic!("tail ended after {n} lines")
                };
                assert!(
                    !line.message.starts_with("Error L11"),
                    "lost lines: {}",
                    line.message
                );
                n += 1;
                if n % 64 == 0 || n == lines {
                    read.store(n, Ordering::Release);
                }
            }
            n
        })
    };
    let started = Instant::now();
    let mut pushed = 0u64;
    while pushed < lines {
        while pushed - read.load(Ordering::Acquire) > max_ahead {
            std::thread::yield_now();
        }
        let end = (pushed + CHUNK).min(lines);
        for i in pushed..end {
            plex.push("bench", line(i));
        }
        pushed = end;
    }
    let got = runtime.block_on(reader).expect("reader");
    let elapsed = started.elapsed();
    assert_eq!(got, lines);
    assert!(plex
        .metrics()
        .contains("manifold_logplex_dropped_total{reason=\"tail_overflow\"} 0\n"));
    elapsed
}

fn push_only(lines: u64) -> Duration {
    let plex = LogPlex::new(PlexConfig {
        system_roots: false,
        ..PlexConfig::default()
    });
    let started = Instant::now();
    for i in 0..lines {
        plex.push("bench", line(i));
    }
    started.elapsed()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; numbers are the optional LINES and RUNS.
    let numbers: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let lines = numbers.first().copied().unwrap_or(500_000);
    let runs = numbers.get(1).copied().unwrap_or(5).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");

    let rate = |d: Duration| lines as f64 / d.as_secs_f64();
    let tailed: Vec<f64> = (0..runs)
        .map(|_| rate(push_and_tail(&runtime, lines)))
        .collect();
    let alone: Vec<f64> = (0..runs).map(|_| rate(push_only(lines))).collect();
    println!("ingest: {lines} lines x {runs} runs, one app");
    println!(
        "push+tail (no loss): median {:>10.0} lines/s  (runs: {})",
        median(tailed.clone()),
        tailed
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "push only:           median {:>10.0} lines/s  (runs: {})",
        median(alone.clone()),
        alone
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
