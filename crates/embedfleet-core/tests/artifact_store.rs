//! The artifact store against a real S3-compatible server (SeaweedFS, which checks request
//! signatures) and against a local directory: the same operations, the same results.

use embedfleet_core::testing::SeaweedFs;
use embedfleet_core::{ArtifactStore, StoreError, StoreOptions};

async fn exercise(store: &ArtifactStore) {
    store.put("runs/r1/data/a.json", b"{\"a\":1}".to_vec()).await.unwrap();
    store.put("runs/r1/data/b.json", b"bee".to_vec()).await.unwrap();
    store.put("runs/r2/x", b"x".to_vec()).await.unwrap();
    assert_eq!(store.get("runs/r1/data/b.json").await.unwrap().as_ref(), b"bee");
    assert!(store.exists("runs/r1/data/a.json").await.unwrap());
    assert!(!store.exists("runs/r1/none").await.unwrap());
    assert!(store.get_opt("runs/r1/none").await.unwrap().is_none());
    assert!(matches!(store.get("runs/r1/none").await, Err(StoreError::NotFound { .. })));
    assert_eq!(store.list("runs/r1").await.unwrap(), ["runs/r1/data/a.json", "runs/r1/data/b.json"]);

    // Overwrite is a whole replacement (redelivered fleet messages rely on it).
    store.put("runs/r1/data/b.json", b"second".to_vec()).await.unwrap();
    assert_eq!(store.get("runs/r1/data/b.json").await.unwrap().as_ref(), b"second");

    assert_eq!(store.copy_prefix("runs/r1/data", "runs/r1/copy").await.unwrap(), 2);
    assert_eq!(store.get("runs/r1/copy/a.json").await.unwrap().as_ref(), b"{\"a\":1}");

    let child = store.child("runs/r2");
    assert_eq!(child.get("x").await.unwrap().as_ref(), b"x");
    assert_eq!(child.list("").await.unwrap(), ["x"]);

    let local = tempfile::tempdir().unwrap();
    assert_eq!(store.get_dir("runs/r1/data", local.path()).await.unwrap(), 2);
    assert_eq!(std::fs::read(local.path().join("b.json")).unwrap(), b"second");
    assert_eq!(store.put_dir(local.path(), "runs/r3").await.unwrap(), 2);
    assert_eq!(store.list("runs/r3").await.unwrap(), ["runs/r3/a.json", "runs/r3/b.json"]);

    store.delete("runs/r2/x").await.unwrap();
    store.delete("runs/r2/x").await.unwrap();
    assert!(!store.exists("runs/r2/x").await.unwrap());
}

#[tokio::test]
async fn local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::open(dir.path().to_str().unwrap(), &StoreOptions::default()).unwrap();
    exercise(&store).await;
    assert!(dir.path().join("runs/r1/data/a.json").exists());
}

#[tokio::test]
async fn s3_compatible_server() {
    let server = SeaweedFs::start();
    let store = ArtifactStore::open(&format!("s3://{}/prefix", server.bucket), &server.store_options()).unwrap();
    exercise(&store).await;
    // The prefix is honoured: the objects live under it in the bucket.
    let root = ArtifactStore::open(&format!("s3://{}", server.bucket), &server.store_options()).unwrap();
    assert!(root.exists("prefix/runs/r1/data/a.json").await.unwrap());
}

#[tokio::test]
async fn s3_with_wrong_credentials_says_what_to_check() {
    let server = SeaweedFs::start();
    let mut options = server.store_options();
    options.secret_access_key = Some("wrong".into());
    let store = ArtifactStore::open(&format!("s3://{}", server.bucket), &options).unwrap();
    let err = store.put("k", b"v".to_vec()).await.unwrap_err();
    assert!(matches!(err, StoreError::Backend { .. }), "{err}");
    assert!(err.to_string().contains("credentials"), "{err}");
}

#[tokio::test]
async fn s3_unreachable_fails_with_the_location() {
    let port = embedfleet_core::testing::free_port();
    let options = StoreOptions {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        access_key_id: Some("k".into()),
        secret_access_key: Some("s".into()),
        region: None,
        ca: None,
    };
    let store = ArtifactStore::open("s3://bucket/p", &options).unwrap();
    let err = store.get_opt("k").await.unwrap_err();
    assert!(err.to_string().contains("s3://bucket/p/k"), "{err}");
}

#[tokio::test]
async fn s3_over_tls_with_a_private_ca() {
    let certs = embedfleet_core::testing::TestCerts::generate();
    let server = SeaweedFs::start_tls(&certs);
    let location = format!("s3://{}/tls", server.bucket);
    let store = ArtifactStore::open(&location, &server.store_options()).unwrap();
    store.put("k", b"over tls".to_vec()).await.unwrap();
    assert_eq!(store.get("k").await.unwrap().as_ref(), b"over tls");
    // Without the CA the server's certificate is not trusted.
    let mut untrusting = server.store_options();
    untrusting.ca = None;
    let err = ArtifactStore::open(&location, &untrusting).unwrap().get("k").await.unwrap_err();
    assert!(matches!(err, StoreError::Backend { .. }), "{err}");
    // Plain HTTP only where the endpoint says http://: an https endpoint is never downgraded,
    // and a CA file that is not PEM is refused with its name.
    let mut bad = server.store_options();
    let not_pem = certs.path("server.csr.txt");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    bad.ca = Some(not_pem);
    let err = ArtifactStore::open(&location, &bad).unwrap_err().to_string();
    assert!(err.contains("server.csr.txt"), "{err}");
}

/// What each connection through the proxy sent, in order.
type Sent = std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

/// Forwards connections on a port of its own to `upstream` and keeps every byte clients send (a
/// buffer per connection), so a test can read the requests as they went to the server.
async fn recording_proxy(upstream: String) -> (String, Sent) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let sent: Sent = Default::default();
    let record = sent.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let record = record.clone();
            let connection = {
                let mut all = record.lock().unwrap();
                all.push(Vec::new());
                all.len() - 1
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = client_read.read(&mut buf).await {
                    if n == 0 || server_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    record.lock().unwrap()[connection].extend_from_slice(&buf[..n]);
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            });
        }
    });
    (address, sent)
}

#[tokio::test]
async fn every_upload_carries_its_sha256() {
    let server = SeaweedFs::start();
    let upstream = server.endpoint().trim_start_matches("http://").to_owned();
    let (proxy, sent) = recording_proxy(upstream).await;
    let options = StoreOptions { endpoint: Some(proxy), ..server.store_options() };
    let store = ArtifactStore::open(&format!("s3://{}", server.bucket), &options).unwrap();

    store.put("one.json", b"{\"a\":1}".to_vec()).await.unwrap();
    // A multipart upload: each part carries its own checksum.
    let mut writer = store.writer("big.bin");
    let part = bytes::Bytes::from(vec![7u8; 6 * 1024 * 1024]);
    for _ in 0..3 {
        writer.write(part.clone()).await.unwrap();
    }
    assert_eq!(writer.finish().await.unwrap(), 18 * 1024 * 1024);
    assert_eq!(store.size("big.bin").await.unwrap(), Some(18 * 1024 * 1024));

    // Each connection's bytes: request lines and headers, then bodies, one request after another.
    let (mut puts, mut checksums) = (0, 0);
    for connection in sent.lock().unwrap().iter() {
        let text = String::from_utf8_lossy(connection).to_ascii_lowercase();
        // A request line follows the CRLF of the request before it, or, on a kept-alive connection,
        // the last byte of its body (the 7s below).
        puts += text.split("\r\n").filter(|line| line.starts_with("put /") || line.contains("\u{7}put /")).count();
        checksums += text.matches("\r\nx-amz-checksum-sha256: ").count();
    }
    // one.json, and three parts of big.bin.
    assert!(puts >= 4, "a PUT and the multipart parts went through the proxy: {puts}");
    assert_eq!(checksums, puts, "every PUT carries x-amz-checksum-sha256");
}
