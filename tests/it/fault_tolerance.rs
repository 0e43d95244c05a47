//! Faults a shared cache meets in production: the database going away, the disk filling up,
//! blob files damaged underneath it. A cache must never break or hang a build: it answers
//! misses or clear errors, changes nothing it cannot finish, and recovers by itself.

use crate::common;

use common::postgres::PrivatePostgres;
use common::sccache;
use common::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Requests during an outage must answer within this (the pool's acquire timeout is 1 s);
/// generous so that a loaded CI machine does not flake. The point is: never hang.
const ANSWER_BOUND: Duration = Duration::from_secs(3);

async fn timed(request: reqwest::RequestBuilder) -> (u16, Duration, Option<String>) {
    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(30), request.send())
        .await
        .expect("the request hung for 30 s")
        .expect("a response, not a transport error");
    let elapsed = started.elapsed();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (response.status().as_u16(), elapsed, retry_after)
}

async fn metric(t: &TestServer, name: &str) -> Option<f64> {
    let text = t.client.get(t.url("/metrics")).send().await.ok()?.text().await.ok()?;
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_fails_fast_and_recovers_without_restart() {
    let pg = PrivatePostgres::start();
    // Statistics stay buffered across the outage: flushed only at shutdown.
    let t = start_server_on(&pg.url(), |c| {
        c.stats_flush_interval = Duration::from_secs(3600);
        c.db_max_connections = 8;
    })
    .await;
    let bodies: Vec<Vec<u8>> = (0..10).map(|i| incompressible(20_000 + i, i as u64)).collect();
    for (i, body) in bodies.iter().enumerate() {
        let status = put_status(&t, &format!("/team/k{i}"), body.clone()).await;
        assert_eq!(status, 201);
    }
    let mut hits = 0;
    for (i, body) in bodies.iter().enumerate() {
        let response = t.client.get(t.url(&format!("/team/k{i}"))).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.bytes().await.unwrap(), body);
        hits += 1;
    }

    let feed_live = || async { metric(&t, "hearth_entry_feed_live").await == Some(1.0) };
    assert!(
        eventually(10, feed_live).await,
        "the entry change feed polls the database"
    );
    pg.stop_immediately();

    // Sequential GETs, HEADs and PUTs: each answers quickly, with a miss, a 503, or a hit
    // from memory (hot keys are trusted for 2 s without the database) with the exact bytes.
    let mut latencies = Vec::new();
    let mut served_from_memory = 0;
    for round in 0..30 {
        let i = round % 10;
        let started = Instant::now();
        let response = t.client.get(t.url(&format!("/team/k{i}"))).send().await.unwrap();
        let status = response.status().as_u16();
        match status {
            200 => {
                assert_eq!(response.bytes().await.unwrap(), bodies[i], "k{i} from memory");
                served_from_memory += 1;
            }
            503 => assert_eq!(response.headers()["retry-after"], "1", "503 carries Retry-After"),
            404 => {}
            _ => panic!("GET during the outage: {status}"),
        }
        latencies.push(started.elapsed());
        let (status, elapsed, _) = timed(t.client.head(t.url(&format!("/team/k{i}")))).await;
        assert!([200, 404, 503].contains(&status), "HEAD during the outage: {status}");
        latencies.push(elapsed);
    }
    hits += served_from_memory;
    // Past the 2 s the hot cache trusts an entry, the outage shows.
    tokio::time::sleep(hearth::hot::ENTRY_TTL).await;
    let (status, _, _) = timed(t.client.get(t.url("/team/k3"))).await;
    assert!(
        status == 404 || status == 503,
        "GET after the hot entry expired: {status}"
    );
    let (status, elapsed, retry_after) = timed(
        t.client
            .put(t.url("/team/during-outage"))
            .body(incompressible(50_000, 99)),
    )
    .await;
    assert_eq!(status, 503, "PUT during the outage");
    assert_eq!(retry_after.as_deref(), Some("1"));
    latencies.push(elapsed);

    // Concurrent GETs: none waits behind another.
    let concurrent: Vec<_> = (0..32)
        .map(|i| {
            let request = t.client.get(t.url(&format!("/team/k{}", i % 10)));
            tokio::spawn(timed(request))
        })
        .collect();
    for handle in concurrent {
        let (status, elapsed, _) = handle.await.unwrap();
        assert!(
            status == 404 || status == 503,
            "concurrent GET during the outage: {status}"
        );
        latencies.push(elapsed);
    }
    let (ready, _, _) = timed(t.client.get(t.url("/readyz"))).await;
    assert_eq!(ready, 503, "not ready while the database is down");
    assert_eq!(metric(&t, "hearth_database_available").await, Some(0.0));
    // Hot keys are trusted for the short TTL only (the feed's last poll is over 2 s old).
    assert_eq!(metric(&t, "hearth_entry_feed_live").await, Some(0.0));

    latencies.sort();
    let worst = *latencies.last().unwrap();
    let median = latencies[latencies.len() / 2];
    eprintln!(
        "outage: {} requests, median {:?}, worst {:?} (the first one waits out the acquire timeout); {served_from_memory} GETs served from memory",
        latencies.len(),
        median,
        worst
    );
    assert!(worst < ANSWER_BOUND, "a request took {worst:?} during the outage");

    // PostgreSQL returns: hearth recovers by itself, no restart.
    pg.start_again();
    let recovered = eventually(30, || async {
        matches!(t.client.get(t.url("/team/k0")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    assert!(recovered, "hearth did not recover within 30 s of the database's return");
    hits += 1;
    let response = t.client.get(t.url("/team/k1")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), bodies[1]);
    hits += 1;
    let status = put_status(&t, "/team/after", vec![7u8; 1000]).await;
    assert_eq!(status, 201, "uploads work again");
    assert_eq!(t.client.get(t.url("/readyz")).send().await.unwrap().status(), 200);
    assert_eq!(metric(&t, "hearth_database_available").await, Some(1.0));
    assert!(
        eventually(10, feed_live).await,
        "the entry change feed recovers by itself"
    );

    // Statistics buffered through the outage reach the database at shutdown: no hit is lost,
    // and the outage's failed requests are counted as errors.
    let url = t.db.url.clone();
    t.stop().await;
    let meta = open_meta(&url).await;
    let total = stats_total(&meta, "team").await;
    assert_eq!(total.hits, hits, "hits: {total:?}");
    assert_eq!(total.writes, 11, "writes: {total:?}");
    assert!(total.errors >= 1, "the refused PUT is an error: {total:?}");
}

/// `hearth <subcommand>` on a data dir and database, with no `HEARTH_*` variables from the
/// test's environment.
fn hearth_command(subcommand: &str, data_dir: &std::path::Path, database_url: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hearth"));
    for (name, _) in std::env::vars() {
        if name.starts_with("HEARTH_") || name == "RUST_LOG" {
            cmd.env_remove(name);
        }
    }
    cmd.arg(subcommand)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--database-url")
        .arg(database_url);
    cmd
}

/// Background work stalled behind a busy database does not open the breaker: while every
/// connection of background work is held by a statement running past the background pool's
/// acquire timeout (10 s), a background call waits that timeout out and fails, the probe, on a
/// connection of its own, finds the database answering, and requests, on theirs, are served
/// throughout. (A stopped database does open it:
/// `database_outage_fails_fast_and_recovers_without_restart`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_background_work_does_not_trip_the_breaker() {
    use hearth::meta::{MetaStore, MetadataStore};
    let t = start_server(Db::Postgres).await;
    let MetaStore::Postgres(background) = t.meta().background() else {
        unreachable!("a PostgreSQL server")
    };
    let pool = background.pool().clone();
    let body = incompressible(10_000, 7);
    assert_eq!(put_status(&t, "/team/before", body.clone()).await, 201);
    // Held longer than the acquire timeout, so that a call started after them waits it out.
    const STALL_SECONDS: f64 = 12.0;
    let mut holders = Vec::new();
    for _ in 0..pool.options().get_max_connections() {
        let mut conn = pool.acquire().await.unwrap();
        holders.push(tokio::spawn(async move {
            sqlx::query("SET statement_timeout = 0")
                .execute(&mut *conn)
                .await
                .unwrap();
            sqlx::query("SELECT pg_sleep($1)")
                .bind(STALL_SECONDS)
                .execute(&mut *conn)
                .await
                .unwrap();
            conn.close_on_drop();
        }));
    }
    let stalled = {
        let meta = t.meta().background();
        tokio::spawn(async move { meta.storage_usage().await })
    };
    let started = Instant::now();
    let mut i = 0;
    while !stalled.is_finished() {
        assert!(t.meta().available(), "the breaker opened after {:?}", started.elapsed());
        let key = format!("/team/during-{i}");
        assert_eq!(
            put_status(&t, &key, body.clone()).await,
            201,
            "PUT while background work waits"
        );
        let got = t.client.get(t.url(&key)).send().await.unwrap();
        assert_eq!(got.status(), 200, "GET while background work waits");
        assert_eq!(got.bytes().await.unwrap(), body);
        i += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let outcome = stalled.await.unwrap();
    assert!(
        outcome.is_err(),
        "the background call got a connection although all were held: {outcome:?}"
    );
    assert!(
        t.meta().available(),
        "a pool wait behind background work opened the breaker"
    );
    for holder in holders {
        holder.await.unwrap();
    }
    // Background work gets its connections back.
    assert!(t.meta().background().storage_usage().await.is_ok());
    assert!(i > 0);
    t.stop().await;
}

/// Starts `hearth serve` and waits until it answers.
async fn spawn_hearth(data_dir: &std::path::Path, database_url: &str, port: u16) -> std::process::Child {
    let log_path = data_dir.with_extension(format!("{port}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let child = hearth_command("serve", data_dir, database_url)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn hearth");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://127.0.0.1:{port}/readyz");
    let up = eventually(60, || async {
        matches!(client.get(&url).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    assert!(
        up,
        "hearth did not start on port {port}: {}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    child
}

/// What the uploader sends for key `i` of worker `w`: sizes from 1 KiB to 2 MiB, half of
/// them compressible, and every fifth the same content (deduplicated).
fn crash_body(w: u64, i: u64) -> Vec<u8> {
    let len = 1024 + ((w * 7919 + i * 104_729) % (2 << 20)) as usize;
    match i % 5 {
        0 => incompressible(300_000, 42),
        1 | 3 => compressible(len, w * 1000 + i),
        _ => incompressible(len, w * 1000 + i),
    }
}

/// kill -9 in the middle of many concurrent uploads: after a restart every key is a miss or
/// its exact bytes, every acknowledged upload survived, `hearth verify` finds nothing to
/// repair, and the killed process's temp files are gone.
async fn crash_during_uploads_loses_nothing_acknowledged(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let test_db = TestDb::create(db, dir.path()).await;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let port = sccache::free_port();
    let mut child = spawn_hearth(&data, &test_db.url, port).await;
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(u64, u64)>::new()));
    let attempted = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(u64, u64)>::new()));
    let workers: Vec<_> = (0..16u64)
        .map(|w| {
            let (client, base) = (client.clone(), base.clone());
            let (acknowledged, attempted) = (acknowledged.clone(), attempted.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    attempted.lock().unwrap().push((w, i));
                    let body = crash_body(w, i);
                    let length = body.len();
                    // Two workers trickle their bodies, so the kill finds uploads half-staged.
                    let body = if w < 2 {
                        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                            body.chunks(32 * 1024).map(|c| Ok(c.to_vec())).collect();
                        let paced = futures_util::StreamExt::then(futures_util::stream::iter(chunks), |c| async {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            c
                        });
                        reqwest::Body::wrap_stream(paced)
                    } else {
                        reqwest::Body::from(body)
                    };
                    let sent = client
                        .put(format!("{base}/crash/w{w}/k{i}"))
                        .header("content-length", length)
                        .body(body)
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().is_success() => acknowledged.lock().unwrap().push((w, i)),
                        _ => return,
                    }
                }
            })
        })
        .collect();
    // Kill once enough uploads are acknowledged and a trickling one is half-staged (it has a
    // temp file only after its first 128 KiB arrived).
    let enough = eventually(60, || async {
        acknowledged.lock().unwrap().len() >= 80 && !temp_files_in(&data).is_empty()
    })
    .await;
    assert!(enough, "uploads did not get going");
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    for worker in workers {
        let _ = worker.await;
    }
    let left_behind = temp_files_in(&data).len();
    assert!(
        left_behind > 0,
        "the kill found no upload half-staged; the test did not test"
    );

    // `hearth verify` on the crashed store: nothing to repair.
    let verify = hearth_command("verify", &data, &test_db.url)
        .args(["--format", "json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout)
        .unwrap_or_else(|e| panic!("verify output ({e}): {}", String::from_utf8_lossy(&verify.stderr)));
    for finding in ["orphan_files", "missing_blobs", "corrupt_blobs", "stale_temp_files"] {
        assert_eq!(
            report[finding],
            serde_json::json!([]),
            "{finding} after the crash: {report}"
        );
    }
    assert!(verify.status.success(), "verify: {report}");
    assert!(temp_files_in(&data).is_empty(), "the dead process's temp files remain");

    let mut child = spawn_hearth(&data, &test_db.url, port).await;
    let acknowledged = acknowledged.lock().unwrap().clone();
    let attempted = attempted.lock().unwrap().clone();
    let mut survived = 0;
    for (w, i) in &attempted {
        let response = client.get(format!("{base}/crash/w{w}/k{i}")).send().await.unwrap();
        match response.status().as_u16() {
            200 => {
                let body = response.bytes().await.unwrap();
                assert!(body == crash_body(*w, *i), "w{w}/k{i}: wrong bytes after the crash");
                survived += 1;
            }
            404 => assert!(
                !acknowledged.contains(&(*w, *i)),
                "w{w}/k{i} was acknowledged but is lost"
            ),
            status => panic!("w{w}/k{i}: {status} after the crash"),
        }
    }
    eprintln!(
        "crash: {} uploads attempted, {} acknowledged, {survived} present after restart, {left_behind} temp files left by the killed process",
        attempted.len(),
        acknowledged.len()
    );
    // And the store keeps working.
    let status = client
        .put(format!("{base}/crash/after"))
        .body(vec![1u8; 5000])
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 201);
    child.kill().unwrap();
    child.wait().unwrap();
    test_db.drop_database().await;
}

on_both_databases!(crash_during_uploads_loses_nothing_acknowledged);

/// A small tmpfs mounted for one test (root only), unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(Tmpfs { dir })
    }

    fn remount(&self, options: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "remount {options}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// The data dir fills up: uploads get 507 and leave nothing behind, reads keep working, and
/// uploads work again once there is room. Then it turns read-only: uploads get 503, reads
/// keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_or_read_only_disk_refuses_uploads_and_keeps_serving() {
    let Some(disk) = Tmpfs::mount("6m") else {
        assert!(!running_as_root(), "mounting a tmpfs failed although running as root");
        eprintln!("skipped: mounting a tmpfs needs root (./scripts/test.sh runs as root in CI)");
        return;
    };
    let data = disk.dir.path().to_path_buf();
    let t = start_server_with(Db::Sqlite, |c| c.data_dir = data.clone()).await;
    let mut stored = Vec::new();
    let mut refused = None;
    for i in 0..10u64 {
        let body = incompressible(1 << 20, i);
        let response = t
            .client
            .put(t.url(&format!("/ns/k{i}")))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            201 => stored.push((i, body)),
            507 => {
                refused = Some(i);
                break;
            }
            status => panic!("k{i}: {status} ({})", response.text().await.unwrap_or_default()),
        }
    }
    let refused = refused.expect("a 6 MiB disk took ten 1 MiB objects");
    assert!(stored.len() >= 3, "only {} objects fit", stored.len());
    assert!(
        eventually(5, || async { t.temp_files().is_empty() }).await,
        "partial upload left behind"
    );
    assert_eq!(t.blob_files().len(), stored.len(), "a partial blob was published");
    assert_eq!(
        t.client
            .get(t.url(&format!("/ns/k{refused}")))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    for (i, body) in &stored {
        let response = t.client.get(t.url(&format!("/ns/k{i}"))).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.bytes().await.unwrap(), body, "k{i}");
    }

    // Room again: uploads work without a restart.
    disk.remount("size=32m");
    let body = incompressible(1 << 20, refused);
    let status = put_status(&t, &format!("/ns/k{refused}"), body.clone()).await;
    assert_eq!(status, 201);

    // Read-only: uploads refused as unavailable, reads unaffected.
    disk.remount("ro");
    let response = t
        .client
        .put(t.url("/ns/readonly"))
        .body(incompressible(5000, 77))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503, "PUT on a read-only store");
    assert!(response.headers().contains_key("retry-after"));
    let response = t.client.get(t.url(&format!("/ns/k{refused}"))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), body);
    disk.remount("rw");
    t.stop().await;
}

/// A small volume mounted for one test (root only): tmpfs, or Btrfs on a loop device (the
/// file system hearth is meant for); unmounted when dropped.
struct SmallVolume {
    dir: tempfile::TempDir,
    /// The Btrfs image, beside the mount point's parent (not on the volume).
    _image: Option<tempfile::TempDir>,
}

#[derive(Clone, Copy, Debug)]
enum VolumeKind {
    Tmpfs,
    Btrfs,
}

impl SmallVolume {
    fn mount(kind: VolumeKind, megabytes: u64) -> Option<SmallVolume> {
        let dir = tempfile::tempdir().unwrap();
        let run = |cmd: &mut std::process::Command| cmd.status().is_ok_and(|s| s.success());
        match kind {
            VolumeKind::Tmpfs => run(std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
                .arg(dir.path()))
            .then_some(SmallVolume { dir, _image: None }),
            VolumeKind::Btrfs => {
                let image_dir = tempfile::tempdir().unwrap();
                let image = image_dir.path().join("btrfs.img");
                std::fs::File::create(&image).unwrap().set_len(megabytes << 20).unwrap();
                let made = run(std::process::Command::new("mkfs.btrfs").args(["-q", "-f"]).arg(&image))
                    && run(std::process::Command::new("mount")
                        .args(["-o", "loop"])
                        .arg(&image)
                        .arg(dir.path()));
                made.then_some(SmallVolume {
                    dir,
                    _image: Some(image_dir),
                })
            }
        }
    }
}

impl Drop for SmallVolume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.dir.path()).status();
    }
}

/// A child process killed when the test ends, passed or failed.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The data dir (blobs and the SQLite database) on a 300 MB volume that 64 concurrent uploads
/// of 20 KB fill up: hearth answers 201 or 507, never dies (on Btrfs it used to be killed by
/// SIGBUS, from SQLite's memory-mapped index), keeps serving what it stored, keeps its metadata
/// writable, and takes uploads again, without a restart, once space returns.
async fn full_volume_keeps_the_server_alive(kind: VolumeKind) {
    let Some(volume) = SmallVolume::mount(kind, 300) else {
        assert!(
            !running_as_root(),
            "mounting a {kind:?} volume failed although running as root (Btrfs needs btrfs-progs, \
             which ./scripts/test.sh installs)"
        );
        eprintln!("skipped: mounting a {kind:?} volume needs root (./scripts/test.sh runs as root in CI)");
        return;
    };
    // Most of the volume is taken by a file: uploads fill the rest sooner.
    let ballast = volume.dir.path().join("ballast");
    std::fs::write(&ballast, incompressible(150 << 20, 1)).unwrap();
    let data = volume.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let database = format!("sqlite://{}", data.join("hearth.db").display());
    let port = sccache::free_port();
    // Dropped before the volume, so that a failing test still unmounts it.
    let mut child = KillOnDrop(spawn_hearth(&data, &database, port).await);
    let child = &mut child.0;
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let log = || std::fs::read_to_string(data.with_extension(format!("{port}.log"))).unwrap_or_default();

    let before = incompressible(20_000, 7);
    let put = {
        let (client, base) = (client.clone(), base.clone());
        move |key: String, body: Vec<u8>| {
            let (client, base) = (client.clone(), base.clone());
            async move {
                let response = client.put(format!("{base}/ns/{key}")).body(body).send().await;
                response.map(|r| r.status().as_u16()).unwrap_or(0)
            }
        }
    };
    assert_eq!(put("before".into(), before.clone()).await, 201);

    let workers: Vec<_> = (0..64u64)
        .map(|w| {
            let put = put.clone();
            tokio::spawn(async move {
                let mut stored = Vec::new();
                let mut statuses = BTreeMap::new();
                for i in 0..2_000u64 {
                    let status = put(format!("w{w}-{i}"), incompressible(20_000, 1000 + w * 10_000 + i)).await;
                    *statuses.entry(status).or_insert(0) += 1;
                    match status {
                        201 => stored.push(i),
                        _ => break,
                    }
                }
                (w, stored, statuses)
            })
        })
        .collect();
    let mut statuses = BTreeMap::new();
    let mut stored = Vec::new();
    for worker in workers {
        let (w, keys, seen) = worker.await.unwrap();
        stored.extend(keys.into_iter().map(|i| (w, i)));
        for (status, n) in seen {
            *statuses.entry(status).or_insert(0) += n;
        }
    }
    eprintln!("{kind:?}: {} uploads stored; statuses {statuses:?}", stored.len());
    assert_eq!(
        child.try_wait().unwrap(),
        None,
        "hearth died on a full volume:\n{}",
        log()
    );
    assert!(
        statuses.keys().all(|s| *s == 201 || *s == 507),
        "uploads on a full volume get 201 or 507, not {statuses:?}:\n{}",
        log()
    );
    assert!(statuses.contains_key(&507), "the volume never filled: {statuses:?}");
    assert!(stored.len() > 100, "only {} uploads fit", stored.len());

    // Reads go on.
    let get = |key: String| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let response = client.get(format!("{base}/ns/{key}")).send().await.unwrap();
            (response.status().as_u16(), response.bytes().await.unwrap().to_vec())
        }
    };
    assert_eq!(get("before".into()).await, (200, before.clone()));
    for &(w, i) in stored.iter().step_by(stored.len() / 20) {
        let expected = incompressible(20_000, 1000 + w * 10_000 + i);
        assert_eq!(get(format!("w{w}-{i}")).await, (200, expected), "w{w}-{i}");
    }
    // The metadata stays writable: deletions, which give space back, go through.
    let (w, i) = stored[0];
    let deleted = client.delete(format!("{base}/ns/w{w}-{i}")).send().await.unwrap();
    assert_eq!(deleted.status(), 204, "DELETE on a full volume:\n{}", log());
    assert_eq!(get(format!("w{w}-{i}")).await.0, 404);

    // Garbage collection keeps working, run from a second process as an operator would (the
    // CLI opens the same database on the full volume): evicting down to a small budget gives
    // space back, and uploads work again without a restart (Btrfs frees it at its next commit).
    let gc = hearth_command("gc", &data, &database)
        .args(["--max-size", "10MiB"])
        .output()
        .unwrap();
    assert!(
        gc.status.success(),
        "hearth gc on a full volume: {}",
        String::from_utf8_lossy(&gc.stderr)
    );
    assert!(std::process::Command::new("sync").status().unwrap().success());
    let after = incompressible(20_000, 8);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut status = put("after".into(), after.clone()).await;
    while status != 201 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        status = put("after".into(), after.clone()).await;
    }
    assert_eq!(status, 201, "uploads still refused once space returned:\n{}", log());
    assert_eq!(get("after".into()).await, (200, after));
    assert_eq!(get("before".into()).await, (200, before));
    assert_eq!(child.try_wait().unwrap(), None, "hearth died:\n{}", log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_btrfs_volume_keeps_the_server_alive() {
    full_volume_keeps_the_server_alive(VolumeKind::Btrfs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_tmpfs_volume_keeps_the_server_alive() {
    full_volume_keeps_the_server_alive(VolumeKind::Tmpfs).await;
}

/// `min-free-space` above what the volume has free: uploads get 507 with a reason and store
/// nothing; `0` turns the check off.
#[tokio::test]
async fn min_free_space_refuses_uploads_with_507() {
    let t = start_server_with(Db::Sqlite, |c| {
        c.min_free_space = Some(hearth::size::ByteSize(u64::MAX))
    })
    .await;
    let response = t
        .client
        .put(t.url("/ns/refused"))
        .body(incompressible(200_000, 2))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 507);
    assert!(response.text().await.unwrap().contains("full"));
    assert!(t.temp_files().is_empty(), "a refused upload left a file behind");
    assert!(t.blob_files().is_empty(), "a refused upload stored a blob");
    assert_eq!(t.client.get(t.url("/ns/refused")).send().await.unwrap().status(), 404);
    t.stop().await;

    let t = start_server_with(Db::Sqlite, |c| c.min_free_space = Some(hearth::size::ByteSize(0))).await;
    assert_eq!(put_status(&t, "/ns/stored", incompressible(4000, 1)).await, 201);
    t.stop().await;
}
