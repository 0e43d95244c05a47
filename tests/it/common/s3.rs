//! An S3-compatible server for tests: the one `scripts/test.sh` starts (moto, at
//! `HEARTH_TEST_S3_ENDPOINT`), a fresh bucket per test, and a client to look inside it.

use aws_sdk_s3::Client;

/// Endpoint of the test S3 server.
pub fn endpoint() -> String {
    std::env::var("HEARTH_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!("HEARTH_TEST_S3_ENDPOINT is not set: run ./scripts/test.sh, which starts an S3-compatible server")
    })
}

/// hearth finds credentials through the standard chain; the test server accepts any, and
/// `scripts/test.sh` exports them with its endpoint. Never set here: tests share one process,
/// and changing its environment while other tests read it is unsound.
pub fn require_credentials() {
    for name in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        assert!(
            std::env::var_os(name).is_some(),
            "{name} is not set: run ./scripts/test.sh, which exports test credentials for its S3 server"
        );
    }
}

/// A client of the test server.
pub async fn client() -> Client {
    require_credentials();
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint())
        .load()
        .await;
    Client::from_conf(
        aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(true)
            .build(),
    )
}

/// A new, empty bucket.
pub async fn bucket() -> String {
    let name = format!("hearth-test-{:016x}", rand::random::<u64>());
    client()
        .await
        .create_bucket()
        .bucket(&name)
        .send()
        .await
        .expect("create test bucket");
    name
}

/// Points a server configuration at `bucket` on the test server.
pub fn configure(config: &mut hearth::config::Config, bucket: &str) {
    require_credentials();
    config.storage = hearth::config::StorageKind::S3;
    config.s3_bucket = Some(bucket.to_string());
    config.s3_endpoint = Some(endpoint());
    config.s3_region = Some("us-east-1".into());
    config.s3_path_style = true;
}

/// Every object key in the bucket (tests may list; hearth never does).
pub async fn keys(bucket: &str) -> Vec<String> {
    let listed = client()
        .await
        .list_objects_v2()
        .bucket(bucket)
        .send()
        .await
        .expect("list objects");
    let mut keys: Vec<String> = listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(String::from))
        .collect();
    keys.sort();
    keys
}

/// Multipart uploads started and neither completed nor aborted.
pub async fn open_multipart_uploads(bucket: &str) -> usize {
    let listed = client()
        .await
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .expect("list uploads");
    listed.uploads().len()
}
