//! Large bodies are streamed, not buffered: 64 MiB each way with the process's peak memory
//! well under the body size. In a file of its own so no other test shares the process.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::Response;
use manifold_router::RouterConfig;

const CHUNK: usize = 64 * 1024;
const CHUNKS: usize = 1024; // 64 MiB
static DATA: [u8; CHUNK] = [b'm'; CHUNK];

/// Peak resident memory of this process, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

fn big_body() -> TestBody {
    let frames = (0..CHUNKS).map(|_| Ok::<_, BoxError>(Frame::data(Bytes::from_static(&DATA))));
    StreamBody::new(futures::stream::iter(frames)).boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_each_way_in_bounded_memory() {
    let r = TestRouter::start(RouterConfig {
        request_timeout: Duration::from_secs(120),
        ..RouterConfig::default()
    })
    .await;
    // Counts what it receives; sends 64 MiB on GET.
    let b = backend(|req| async move {
        if req.method() == hyper::Method::GET {
            let mut response = Response::new(big_body());
            response
                .headers_mut()
                .insert("content-length", (CHUNK * CHUNKS).into());
            return response;
        }
        let mut body = req.into_body();
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.expect("upload frame").into_data() {
                total += data.len();
            }
        }
        Response::new(full(total.to_string()))
    })
    .await;
    r.table.set("app", serving(&[b.backend("1", "web.1")]));
    let before = peak_rss_kib();

    let mut client = r.client().await;
    let reply = client
        .read(request("POST", "app.localhost", "/upload", big_body()))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), (CHUNK * CHUNKS).to_string());

    let response = client
        .send(request("GET", "app.localhost", "/download", empty()))
        .await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("download frame").into_data() {
            total += data.len();
        }
    }
    assert_eq!(total, CHUNK * CHUNKS);

    let grown_mib = (peak_rss_kib() - before) / 1024;
    assert!(
        grown_mib < 32,
        "peak memory grew by {grown_mib} MiB for 64 MiB bodies"
    );
    let line = r
        .hooks
        .wait_line(|l| l.contains("path=\"/download\""))
        .await;
    assert_eq!(parse_line(&line)["bytes"], (CHUNK * CHUNKS).to_string());
}
