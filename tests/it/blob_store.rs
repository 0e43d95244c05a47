//! One conformance suite for the blob store, run unchanged against the local file system and
//! against S3 (the test S3-compatible server): whatever the backend, a blob reads back exactly,
//! damage is detected, deletion is idempotent.
use crate::common;
use bytes::Bytes;
use common::{compressible, incompressible, s3};
use hearth::blob::{BlobRead, BlobStore, Encoding, LocalStore, S3Settings, S3Store};
use std::time::Duration;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Local,
    S3,
}

struct Fixture {
    store: BlobStore,
    _dir: tempfile::TempDir,
}

async fn open(backend: Backend) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalStore::open(dir.path()).unwrap();
    let store = match backend {
        Backend::Local => BlobStore::Local(local),
        Backend::S3 => {
            s3::require_credentials();
            let settings = S3Settings {
                bucket: s3::bucket().await,
                prefix: "conformance/".into(),
                endpoint: Some(s3::endpoint()),
                region: Some("us-east-1".into()),
                path_style: true,
                operation_timeout: Duration::from_secs(30),
            };
            BlobStore::S3(S3Store::connect(&settings, local).await.unwrap())
        }
    };
    Fixture { store, _dir: dir }
}

async fn store(store: &BlobStore, content: &[u8]) -> hearth::blob::BlobInfo {
    let chunks: Vec<Result<Bytes, std::io::Error>> = content
        .chunks(64 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let staged = store
        .stage(futures_util::stream::iter(chunks), u64::MAX, 3)
        .await
        .unwrap();
    let info = staged.info.clone();
    store.publish(staged).await.unwrap();
    info
}

async fn read_all(store: &BlobStore, info: &hearth::blob::BlobInfo) -> Result<Option<Vec<u8>>, String> {
    use futures_util::StreamExt;
    match store.read(info).await {
        Ok(None) => Ok(None),
        Ok(Some(BlobRead::Whole(bytes))) => Ok(Some(bytes.to_vec())),
        Ok(Some(BlobRead::Stream(mut stream))) => {
            let mut out = Vec::new();
            while let Some(chunk) = stream.next().await {
                out.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
            }
            Ok(Some(out))
        }
        Err(e) => Err(e.to_string()),
    }
}

async fn round_trips(backend: Backend) {
    let f = open(backend).await;
    for (content, encoding) in [
        (incompressible(100, 1), Encoding::Raw),
        (incompressible(300_000, 2), Encoding::Raw),
        (compressible(500_000, 3), Encoding::Zstd),
        (incompressible(9 << 20, 4), Encoding::Raw), // streamed, and multipart on S3
        (compressible(12 << 20, 5), Encoding::Zstd),
        (Vec::new(), Encoding::Raw),
    ] {
        let info = store(&f.store, &content).await;
        assert_eq!(info.encoding, encoding, "{backend:?} {} bytes", content.len());
        assert_eq!(info.hash, blake3::hash(&content).to_hex().to_string());
        let read = read_all(&f.store, &info).await.unwrap().expect("stored");
        assert_eq!(read.len(), content.len());
        assert!(
            read == content,
            "{backend:?}: {} bytes did not read back exactly",
            content.len()
        );
    }
    f.store.check_ready().await.unwrap();
}

async fn missing_and_deleted_blobs(backend: Backend) {
    let f = open(backend).await;
    let content = incompressible(50_000, 6);
    let info = store(&f.store, &content).await;
    f.store.delete(&info).await.unwrap();
    assert_eq!(read_all(&f.store, &info).await.unwrap(), None);
    f.store.delete(&info).await.unwrap(); // deleting again is fine
    let never = hearth::blob::BlobInfo {
        meaning: None,
        hash: "ab".repeat(32),
        raw_size: 3,
        stored_size: 3,
        encoding: Encoding::Raw,
    };
    assert_eq!(read_all(&f.store, &never).await.unwrap(), None);
}

/// A blob whose bytes do not match its name never reads back whole.
async fn mismatched_content_is_detected(backend: Backend) {
    let f = open(backend).await;
    for size in [40_000, 3 << 20] {
        let real = incompressible(size, 7);
        let info = store(&f.store, &real).await;
        // Store other bytes of the same length under the same name.
        let mut other = real.clone();
        other[size / 2] ^= 1;
        let staged = f
            .store
            .stage(
                futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(other))]),
                u64::MAX,
                3,
            )
            .await
            .unwrap();
        let mut forged = staged;
        forged.info.hash = info.hash.clone();
        f.store.publish(forged).await.unwrap();
        match read_all(&f.store, &info).await {
            Err(_) => {}
            Ok(Some(read)) => panic!("{backend:?}: a damaged blob of {} bytes read back whole", read.len()),
            Ok(None) => panic!("{backend:?}: the forged blob is missing"),
        }
    }
}

/// An S3 store that is down answers with an error quickly; it never hangs a request.
#[tokio::test]
async fn s3_outage_fails_fast() {
    s3::require_credentials();
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let settings = S3Settings {
        bucket: "down".into(),
        prefix: String::new(),
        endpoint: Some(format!("http://{closed}")),
        region: Some("us-east-1".into()),
        path_style: true,
        operation_timeout: Duration::from_secs(5),
    };
    let store = BlobStore::S3(
        S3Store::connect(&settings, LocalStore::open(dir.path()).unwrap())
            .await
            .unwrap(),
    );
    let info = hearth::blob::BlobInfo {
        meaning: None,
        hash: "cd".repeat(32),
        raw_size: 3,
        stored_size: 3,
        encoding: Encoding::Raw,
    };
    let started = std::time::Instant::now();
    assert!(read_all(&store, &info).await.is_err());
    assert!(store.check_ready().await.is_err());
    let staged = store
        .stage(
            futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"abc"))]),
            10,
            3,
        )
        .await
        .unwrap();
    assert!(store.publish(staged).await.is_err());
    // Generous: only a hang (no timeout at all) could fail this.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(common::temp_files_in(dir.path()).is_empty(), "staged file left behind");
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod local {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::Backend::Local).await } )*
        }
        mod s3_backend {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::Backend::S3).await } )*
        }
    };
}

on_both_backends!(round_trips, missing_and_deleted_blobs, mismatched_content_is_detected);
