//! Hit/miss recording off the hot path and graceful shutdown: statistics are exact, written
//! in batches, flushed at shutdown, and a GET never waits for a database write.
use crate::common;
use common::{eventually, incompressible, put_status, start_server_with, stats_total, Db, TestServer};
use hearth::meta::{MetaStore, MetadataStore};
use sqlx::Connection;
use std::time::Duration;

/// A scripted sequence; with an hour-long flush interval nothing reaches the database until
/// the graceful stop, which must flush everything exactly.
async fn statistics_are_exact_and_flushed_at_shutdown(db: Db) {
    let mut t = start_server_with(db, |c| c.stats_flush_interval = Duration::from_secs(3600)).await;
    let a = incompressible(1000, 1);
    let b = incompressible(3000, 2);
    assert_eq!(put_status(&t, "/proj/k1", a.clone()).await, 201);
    assert_eq!(put_status(&t, "/proj/k1", a.clone()).await, 204); // same bytes
    assert_eq!(put_status(&t, "/proj/k1", b.clone()).await, 204); // conflicting
    for _ in 0..3 {
        assert_eq!(t.client.get(t.url("/proj/k1")).send().await.unwrap().status(), 200);
    }
    for missing in ["/proj/nope1", "/proj/nope2"] {
        assert_eq!(t.client.get(t.url(missing)).send().await.unwrap().status(), 404);
    }
    assert_eq!(t.client.get(t.url("/other/x")).send().await.unwrap().status(), 404);

    assert!(
        t.meta().stats(None, 0).await.unwrap().is_empty(),
        "statistics were written synchronously"
    );
    let before = t.meta().lookup("proj", "k1").await.unwrap().unwrap();
    assert_eq!(before.hit_count, 0);

    t.restart().await; // graceful stop flushes
    let c = stats_total(t.meta(), "proj").await;
    assert_eq!(
        (c.hits, c.misses, c.writes, c.conflicting_writes, c.errors),
        (3, 2, 3, 1, 0)
    );
    assert_eq!(c.bytes_served, 3 * 3000);
    assert_eq!(c.bytes_received, 1000 + 1000 + 3000);
    assert_eq!(stats_total(t.meta(), "other").await.misses, 1);
    let after = t.meta().lookup("proj", "k1").await.unwrap().unwrap();
    assert_eq!(after.hit_count, 3);
    assert!(after.last_access_at >= before.last_access_at);
    t.stop().await;
}

/// Holds the database's write lock from outside while GETs run: every GET completes (hits
/// and misses) although the flusher cannot write; the batch lands once the lock is gone.
async fn gets_never_wait_for_database_writes(db: Db) {
    let t = start_server_with(db, |c| c.stats_flush_interval = Duration::from_millis(100)).await;
    let body = incompressible(20_000, 3);
    t.client.put(t.url("/ns/k")).body(body.clone()).send().await.unwrap();
    assert!(eventually(5, || async { stats_total(t.meta(), "ns").await.writes == 1 }).await);

    let blocker = WriteLock::take(&t).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // the flusher is now stuck behind the lock
    let client = t.client.clone();
    for i in 0..20 {
        let (path, status) = if i % 4 == 0 {
            ("/ns/missing", 404)
        } else {
            ("/ns/k", 200)
        };
        let response = tokio::time::timeout(Duration::from_secs(5), client.get(t.url(path)).send())
            .await
            .expect("a GET waited on the locked database")
            .unwrap();
        assert_eq!(response.status(), status);
        if status == 200 {
            assert_eq!(response.bytes().await.unwrap(), body);
        }
    }
    assert_eq!(
        blocker.flushed_hits().await,
        0,
        "a hit was written while the database was locked"
    );
    blocker.release().await;
    assert!(
        eventually(15, || async {
            let c = stats_total(t.meta(), "ns").await;
            c.hits == 15 && c.misses == 5
        })
        .await,
        "statistics were lost: {:?}",
        stats_total(t.meta(), "ns").await
    );
    t.stop().await;
}

/// A connection outside the server holding the lock the stats flusher needs.
struct WriteLock {
    url: String,
    holder: Holder,
}

enum Holder {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl WriteLock {
    async fn take(t: &TestServer) -> WriteLock {
        let holder = match t.meta() {
            MetaStore::Sqlite(_) => {
                let mut conn = sqlx::SqliteConnection::connect(&t.db.url).await.unwrap();
                // BEGIN IMMEDIATE takes SQLite's single write lock; WAL readers carry on.
                sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await.unwrap();
                Holder::Sqlite(conn)
            }
            MetaStore::Postgres(_) => {
                let mut conn = sqlx::PgConnection::connect(&t.db.url).await.unwrap();
                sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
                // EXCLUSIVE blocks every write but still admits plain SELECTs.
                sqlx::query("LOCK TABLE stats_hourly, entries IN EXCLUSIVE MODE")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                Holder::Postgres(conn)
            }
        };
        WriteLock {
            url: t.db.url.clone(),
            holder,
        }
    }

    /// Hits committed so far, read through a separate connection.
    async fn flushed_hits(&self) -> i64 {
        let sql = "SELECT CAST(COALESCE(SUM(hits), 0) AS BIGINT) FROM stats_hourly";
        match self.holder {
            Holder::Sqlite(_) => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
            }
            Holder::Postgres(_) => {
                let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
            }
        }
    }

    async fn release(self) {
        match self.holder {
            Holder::Sqlite(mut conn) => drop(sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap()),
            Holder::Postgres(mut conn) => drop(sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap()),
        }
    }
}

/// SIGTERM-style shutdown in the middle of a slow upload: the upload completes and is stored.
async fn shutdown_finishes_in_flight_uploads(db: Db) {
    let mut t = start_server_with(db, |c| c.shutdown_timeout = Duration::from_secs(20)).await;
    let body = incompressible(400_000, 4);
    let chunks: Vec<bytes::Bytes> = body.chunks(40_000).map(bytes::Bytes::copy_from_slice).collect();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let mut started_tx = Some(started_tx);
    let slow = futures_util::stream::unfold((chunks.into_iter(), 0), move |(mut it, n)| {
        if n == 1 {
            if let Some(tx) = started_tx.take() {
                let _ = tx.send(());
            }
        }
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            it.next().map(|c| (Ok::<_, std::io::Error>(c), (it, n + 1)))
        }
    });
    let request = t
        .client
        .put(t.url("/ns/slow"))
        .header("content-length", body.len())
        .body(reqwest::Body::wrap_stream(slow))
        .send();
    let upload = tokio::spawn(request);
    started_rx.await.unwrap();
    let server = t.server.take().unwrap();
    server.shutdown_token().cancel();
    let response = upload.await.unwrap().expect("upload survived the shutdown");
    assert_eq!(response.status(), 201);
    server.wait().await.unwrap();

    t.restart().await;
    let got = t.client.get(t.url("/ns/slow")).send().await.unwrap();
    assert_eq!(got.bytes().await.unwrap(), body);
    assert_eq!(stats_total(t.meta(), "ns").await.writes, 1);
    t.stop().await;
}

/// sccache's start-up probe is traffic, not cache use: it must not move the hit rate.
async fn client_probes_are_not_counted(db: Db) {
    let mut t = start_server_with(db, |c| c.stats_flush_interval = Duration::from_secs(3600)).await;
    for probe in ["/ns/.sccache_check", "/ns/team/proj/.sccache_check"] {
        assert_eq!(t.client.get(t.url(probe)).send().await.unwrap().status(), 404);
        assert_eq!(put_status(&t, probe, "Hello, World!").await, 201);
        assert_eq!(t.client.get(t.url(probe)).send().await.unwrap().status(), 200);
    }
    assert_eq!(t.client.get(t.url("/ns/real")).send().await.unwrap().status(), 404);
    t.restart().await;
    let c = stats_total(t.meta(), "ns").await;
    assert_eq!((c.hits, c.misses, c.writes), (0, 1, 0));
    t.stop().await;
}

on_both_databases!(
    client_probes_are_not_counted,
    statistics_are_exact_and_flushed_at_shutdown,
    gets_never_wait_for_database_writes,
    shutdown_finishes_in_flight_uploads,
);
