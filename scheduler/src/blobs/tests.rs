//! What every blob store must do, checked against each implementation on the real thing
//! (a temp dir; a PostgreSQL server of its own).

use std::time::Duration;

use super::*;

/// What a test needs to see behind a store's interface.
#[async_trait::async_trait]
pub(super) trait Inspect: Blobs {
    /// Makes the blob look last stored two hours ago.
    async fn age(&self, sha256: &str);
    /// What refused or failed uploads left behind.
    async fn strays(&self) -> Vec<String>;
}

pub(super) const HELLO: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
const HOUR: Duration = Duration::from_secs(3600);

/// An upload of `parts`, as separate chunks.
pub(super) fn chunks(parts: &[&'static [u8]]) -> Upload<'static> {
    upload(futures::stream::iter(
        parts
            .iter()
            .map(|p| Ok::<_, String>(Bytes::from_static(p)))
            .collect::<Vec<_>>(),
    ))
}

/// `data` as an upload in pieces of `piece` bytes.
fn pieces(data: &[u8], piece: usize) -> Upload<'static> {
    let parts: Vec<Result<Bytes, String>> = data
        .chunks(piece)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(parts).boxed()
}

/// `n` bytes that differ from one chunk to the next.
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 13) as u8 ^ seed)
        .collect()
}

fn digest(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The whole blob (which must be stored), checked against the size given before it.
pub(super) async fn read(blobs: &dyn Blobs, sha256: &str) -> Vec<u8> {
    let mut reader = blobs.open(sha256).await.expect("open").expect("stored");
    let mut data = Vec::new();
    while let Some(chunk) = reader.body.next().await {
        data.extend_from_slice(&chunk.expect("read"));
    }
    assert_eq!(
        data.len() as u64,
        reader.size,
        "the size given before the bytes"
    );
    data
}

/// A blob of several chunks (uploaded in pieces that fit no chunk boundary) comes back
/// whole, as does an empty one.
pub(super) async fn round_trip(blobs: &dyn Inspect) {
    let data = pattern(3 * postgres::CHUNK + 12_345, 1);
    let sha256 = digest(&data);
    let blob = blobs
        .put(pieces(&data, 100_003), 10 << 20, Some(&sha256))
        .await
        .expect("put");
    assert_eq!(
        blob,
        Blob {
            sha256: sha256.clone(),
            size: data.len() as u64
        }
    );
    assert_eq!(blobs.stat(&sha256).await.expect("stat"), Some(blob));
    assert!(read(blobs, &sha256).await == data, "the bytes read back");
    let empty = blobs.put(chunks(&[]), 10, None).await.expect("put empty");
    assert_eq!(empty.size, 0);
    assert!(read(blobs, &empty.sha256).await.is_empty());
    let hello = blobs
        .put(chunks(&[b"hel", b"lo"]), 100, Some(HELLO))
        .await
        .expect("put");
    assert_eq!(
        hello,
        Blob {
            sha256: HELLO.into(),
            size: 5
        }
    );
    assert_eq!(read(blobs, HELLO).await, b"hello");
    assert!(blobs.strays().await.is_empty());
}

/// A wrong checksum, an upload over the limit, a sender that fails and a bad name are
/// each refused with their error, and none leaves anything stored.
pub(super) async fn refusals(blobs: &dyn Inspect) {
    let data = pattern(2 * postgres::CHUNK + 7, 2);
    let actual = digest(&data);
    let err = blobs
        .put(pieces(&data, 65_536), 10 << 20, Some(HELLO))
        .await
        .expect_err("mismatch");
    assert_eq!(
        err.to_string(),
        format!("blob does not match its checksum: expected {HELLO}, got {actual}")
    );
    let err = blobs
        .put(pieces(&data, 65_536), 2 * postgres::CHUNK as u64, None)
        .await
        .expect_err("limit");
    assert!(matches!(err, BlobError::TooLarge { limit } if limit == 2 * postgres::CHUNK as u64));
    assert_eq!(
        err.to_string(),
        format!(
            "blob is larger than the limit of {} bytes",
            2 * postgres::CHUNK
        )
    );
    let failing = futures::stream::iter(vec![
        Ok(Bytes::from(pattern(postgres::CHUNK + 1, 3))),
        Err("connection reset".to_string()),
    ])
    .boxed();
    let err = blobs
        .put(failing, 10 << 20, None)
        .await
        .expect_err("failed");
    assert_eq!(err.to_string(), "upload failed: connection reset");
    let err = blobs
        .put(chunks(&[b"x"]), 10, Some("../etc/passwd"))
        .await
        .expect_err("bad name");
    assert_eq!(
        err.to_string(),
        r#""../etc/passwd" is not a sha256 (64 lowercase hex digits)"#
    );
    assert!(matches!(
        blobs.open("../etc/passwd").await,
        Err(BlobError::InvalidDigest(_))
    ));
    assert!(matches!(
        blobs.stat(&HELLO.to_uppercase()).await,
        Err(BlobError::InvalidDigest(_))
    ));
    assert_eq!(blobs.stat(&actual).await.expect("stat"), None);
    assert!(blobs.open(&actual).await.expect("open").is_none());
    assert_eq!(blobs.strays().await, Vec::<String>::new());
}

/// Uploads of one blob at the same time all succeed and leave one whole blob.
pub(super) async fn concurrent_puts(blobs: &dyn Inspect) {
    let data = pattern(2 * postgres::CHUNK + postgres::CHUNK / 2, 4);
    let sha256 = digest(&data);
    let puts = (0..6).map(|_| blobs.put(pieces(&data, 300_000), 10 << 20, Some(&sha256)));
    for put in futures::future::join_all(puts).await {
        assert_eq!(put.expect("put").sha256, sha256);
    }
    assert!(read(blobs, &sha256).await == data);
    assert!(blobs.strays().await.is_empty());
}

/// Collection removes exactly the old blobs nothing refers to; storing a blob again
/// makes it new.
pub(super) async fn collection(blobs: &dyn Inspect) {
    let hello = blobs
        .put(chunks(&[b"hello"]), 100, None)
        .await
        .expect("put");
    let bye = blobs.put(chunks(&[b"bye"]), 100, None).await.expect("put");
    let big = pattern(postgres::CHUNK + 1, 5);
    let old_big = blobs
        .put(pieces(&big, 1 << 16), 10 << 20, None)
        .await
        .expect("put");
    let fresh = blobs
        .put(chunks(&[b"fresh"]), 100, None)
        .await
        .expect("put");
    for blob in [&hello, &bye, &old_big] {
        blobs.age(&blob.sha256).await;
    }
    let in_use = [hello.sha256.clone()].into();
    let mut removed = blobs.collect(&in_use, HOUR).await.expect("collect");
    removed.sort();
    let mut want = vec![bye.sha256.clone(), old_big.sha256.clone()];
    want.sort();
    assert_eq!(removed, want);
    for kept in [&hello, &fresh] {
        assert!(blobs.stat(&kept.sha256).await.expect("stat").is_some());
    }
    for gone in [&bye, &old_big] {
        assert!(blobs.open(&gone.sha256).await.expect("open").is_none());
    }
    // Storing a blob again marks it as stored now: it is not collected at once.
    blobs.age(&hello.sha256).await;
    blobs
        .put(chunks(&[b"hello"]), 100, None)
        .await
        .expect("put");
    assert!(blobs
        .collect(&Default::default(), HOUR)
        .await
        .expect("collect")
        .is_empty());
    assert_eq!(read(blobs, &hello.sha256).await, b"hello");
    assert!(blobs.strays().await.is_empty());
}
