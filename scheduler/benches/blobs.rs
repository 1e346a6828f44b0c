//! Blob store benchmark: uploads and then downloads one 100 MiB blob (incompressible, as
//! a gzipped slug is) through each store, several times, and prints the medians: the disk
//! (`LocalBlobs`, the embedded default) against PostgreSQL (`PgBlobs`, on a throwaway
//! server on this machine, as the HA schedulers use).
//!
//! Run with `cargo bench -p manifold-scheduler --bench blobs` (as root, with PostgreSQL
//! installed by `scripts/setup`; without, only the disk is measured).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use manifold_scheduler::blobs::{Blobs, LocalBlobs, PgBlobs};
use manifold_test_support::postgres::Postgres;

const SIZE: usize = 100 << 20;
/// As an HTTP body arrives: pieces of a few hundred KiB.
const PIECE: usize = 256 << 10;
const RUNS: usize = 5;

/// Bytes no compressor shrinks (xorshift), the same every run.
fn blob() -> Bytes {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut data = Vec::with_capacity(SIZE);
    while data.len() < SIZE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    Bytes::from(data)
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn line(store: &str, what: &str, times: Vec<Duration>) {
    let m = median(times);
    let mib_s = (SIZE >> 20) as f64 / m.as_secs_f64();
    println!(
        "blobs: {store:<10} {what:<8} 100 MiB  median {:>8.1} ms  {mib_s:>7.1} MiB/s  ({RUNS} runs)",
        m.as_secs_f64() * 1e3
    );
}

/// Times `RUNS` uploads and downloads; the blob is collected between runs, so every
/// upload stores it anew.
async fn measure(store: &str, blobs: &dyn Blobs, data: &Bytes) {
    let (mut ups, mut downs) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let pieces: Vec<Result<Bytes, String>> = (0..SIZE)
            .step_by(PIECE)
            .map(|at| Ok(data.slice(at..(at + PIECE).min(SIZE))))
            .collect();
        let started = Instant::now();
        let stored = blobs
            .put(futures::stream::iter(pieces).boxed(), SIZE as u64, None)
            .await
            .expect("put");
        ups.push(started.elapsed());
        let started = Instant::now();
        let mut reader = blobs
            .open(&stored.sha256)
            .await
            .expect("open")
            .expect("stored");
        let mut read = 0;
        while let Some(chunk) = reader.body.next().await {
            read += chunk.expect("read").len();
        }
        downs.push(started.elapsed());
        assert_eq!(read, SIZE);
        let removed = blobs
            .collect(&BTreeSet::new(), Duration::ZERO)
            .await
            .expect("collect");
        assert_eq!(removed, vec![stored.sha256]);
    }
    line(store, "upload", ups);
    line(store, "download", downs);
}

#[tokio::main]
async fn main() {
    let data = blob();
    let dir = tempfile::tempdir().expect("tempdir");
    measure("local", &LocalBlobs::new(dir.path()), &data).await;
    match Postgres::start("blobs benchmark on PostgreSQL") {
        Some(server) => {
            let blobs = PgBlobs::connect(&server.url()).await.expect("connect");
            measure("postgres", &blobs, &data).await;
        }
        None => println!("blobs: postgres skipped (see above)"),
    }
}
