//! A first end-to-end check of the harness: PUT then GET on both databases.
use crate::common;
use common::{start_server, Db};

async fn put_then_get(db: Db) {
    let t = start_server(db).await;
    let put = t
        .client
        .put(t.url("/team/0/a/7/key"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let got = t.client.get(t.url("/team/0/a/7/key")).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap(), "hello");
    t.stop().await;
}

on_both_databases!(put_then_get);
