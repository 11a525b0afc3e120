//! One artifact store over `object_store`: a local directory or `s3://bucket/prefix` on any
//! S3-compatible server (AWS, MinIO, R2, SeaweedFS). Keys are `/`-separated and relative to the root.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Settings for `s3://` locations; unset fields fall back to the usual `AWS_*` variables.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// `http://127.0.0.1:8333` for a local server; None means AWS (or `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// A PEM file of the CA that signed the endpoint's certificate (a private CA).
    pub ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid storage location '{location}': {reason}")]
    BadLocation { location: String, reason: String },
    #[error("{location} not found")]
    NotFound { location: String },
    #[error(
        "storage {op} of {location} failed: {message}. Check the S3 endpoint, bucket and credentials (--s3-endpoint, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or that the directory is writable"
    )]
    Backend { op: &'static str, location: String, message: String },
}

/// Told of every read and write (the fleet's workers count bytes and latency with it).
pub trait StoreObserver: Send + Sync {
    fn observe(&self, op: &'static str, bytes: usize, seconds: f64);
}

#[derive(Clone)]
pub struct ArtifactStore {
    inner: Arc<dyn ObjectStore>,
    observer: Option<Arc<dyn StoreObserver>>,
    /// Prefix inside the bucket (S3) or empty (local directory root).
    prefix: String,
    /// `s3://bucket/prefix` or the absolute directory, for messages.
    base: String,
    /// The directory of a local store.
    local_root: Option<PathBuf>,
}

impl std::fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ArtifactStore({})", self.base)
    }
}

impl ArtifactStore {
    /// `s3://bucket[/prefix]` or a local path (`file://` accepted).
    pub fn open(location: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(StoreError::BadLocation { location: location.into(), reason: "no bucket name".into() });
            }
            return Self::s3(bucket, prefix.trim_matches('/'), options);
        }
        if location.contains("://") && !location.starts_with("file://") {
            return Err(StoreError::BadLocation { location: location.into(), reason: "use a local path or s3://bucket/prefix".into() });
        }
        Self::local(Path::new(location.trim_start_matches("file://")))
    }

    /// A local directory, created if missing.
    pub fn local(dir: &Path) -> Result<Self, StoreError> {
        let bad = |reason: String| StoreError::BadLocation { location: dir.display().to_string(), reason };
        std::fs::create_dir_all(dir).map_err(|e| bad(format!("cannot create the directory: {e}")))?;
        let abs: PathBuf = dir.canonicalize().map_err(|e| bad(e.to_string()))?;
        let fs = LocalFileSystem::new_with_prefix(&abs).map_err(|e| bad(e.to_string()))?;
        Ok(Self { inner: Arc::new(fs), observer: None, prefix: String::new(), base: abs.display().to_string(), local_root: Some(abs) })
    }

    fn s3(bucket: &str, prefix: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            // Local servers (MinIO, SeaweedFS) want path-style requests, and speak plain HTTP.
            .with_virtual_hosted_style_request(false)
            // Plain HTTP only where the endpoint says so (a local MinIO or SeaweedFS).
            .with_allow_http(options.endpoint.as_deref().is_some_and(|e| e.starts_with("http://")))
            // Every PUT and multipart part carries its SHA-256 (x-amz-checksum-sha256): a store that
            // checks it (AWS S3, MinIO) refuses a body damaged on the way instead of keeping it.
            .with_checksum_algorithm(object_store::aws::Checksum::SHA256)
            .with_retry(object_store::RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(20),
                backoff: object_store::BackoffConfig::default(),
            });
        if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none() {
            builder = builder.with_region("us-east-1");
        }
        if let Some(endpoint) = &options.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &options.region {
            builder = builder.with_region(region);
        }
        if let Some(key) = &options.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &options.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        if let Some(ca) = &options.ca {
            let bad = |reason: String| StoreError::BadLocation { location: format!("s3://{bucket}/{prefix}"), reason };
            let pem = std::fs::read(ca).map_err(|e| bad(format!("the CA file {}: {e}", ca.display())))?;
            let certificates = object_store::Certificate::from_pem_bundle(&pem)
                .map_err(|e| bad(format!("the CA file {} is not PEM certificates: {e}", ca.display())))?;
            if certificates.is_empty() {
                return Err(bad(format!("the CA file {} holds no PEM certificate", ca.display())));
            }
            let mut client = object_store::ClientOptions::new();
            for certificate in certificates {
                client = client.with_root_certificate(certificate);
            }
            builder = builder.with_client_options(client);
        }
        let store =
            builder.build().map_err(|e| StoreError::BadLocation { location: format!("s3://{bucket}/{prefix}"), reason: e.to_string() })?;
        let base = if prefix.is_empty() { format!("s3://{bucket}") } else { format!("s3://{bucket}/{prefix}") };
        Ok(Self { inner: Arc::new(store), observer: None, prefix: prefix.to_owned(), base, local_root: None })
    }

    /// The same store rooted at `base/sub`.
    pub fn child(&self, sub: &str) -> Self {
        let sub = sub.trim_matches('/');
        Self {
            inner: self.inner.clone(),
            observer: self.observer.clone(),
            prefix: join(&self.prefix, sub),
            base: format!("{}/{}", self.base.trim_end_matches('/'), sub),
            local_root: self.local_root.clone(),
        }
    }

    pub fn with_observer(mut self, observer: Arc<dyn StoreObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    fn observe(&self, op: &'static str, bytes: usize, started: std::time::Instant) {
        if let Some(o) = &self.observer {
            o.observe(op, bytes, started.elapsed().as_secs_f64());
        }
    }

    /// A human-readable location for `key`, for messages.
    pub fn describe(&self, key: &str) -> String {
        format!("{}/{}", self.base.trim_end_matches('/'), key)
    }

    fn path(&self, key: &str) -> ObjectPath {
        ObjectPath::from(join(&self.prefix, key))
    }

    /// Writes atomically: readers see the old object or the new one, never a part.
    pub async fn put(&self, key: &str, bytes: impl Into<Bytes>) -> Result<(), StoreError> {
        let bytes: Bytes = bytes.into();
        let (len, started) = (bytes.len(), std::time::Instant::now());
        self.inner
            .put(&self.path(key), PutPayload::from(bytes))
            .await
            .map(|_| self.observe("put", len, started))
            .map_err(|e| self.backend("write", key, e))
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        match self.get_opt(key).await? {
            Some(bytes) => Ok(bytes),
            None => Err(StoreError::NotFound { location: self.describe(key) }),
        }
    }

    pub async fn get_opt(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let started = std::time::Instant::now();
        match self.inner.get(&self.path(key)).await {
            Ok(result) => {
                let bytes = result.bytes().await.map_err(|e| self.backend("read", key, e))?;
                self.observe("get", bytes.len(), started);
                Ok(Some(bytes))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.backend("read", key, e)),
        }
    }

    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        match self.inner.head(&self.path(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.backend("stat", key, e)),
        }
    }

    /// Keys (relative to the store root) under `prefix`, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let root = self.path(prefix);
        let objects: Vec<_> = self.inner.list(Some(&root)).try_collect().await.map_err(|e| self.backend("list", prefix, e))?;
        let strip = if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) };
        let mut keys: Vec<String> =
            objects.into_iter().map(|m| m.location.to_string()).map(|k| k.strip_prefix(&strip).map(str::to_owned).unwrap_or(k)).collect();
        keys.sort();
        Ok(keys)
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.inner.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.backend("delete", key, e)),
        }
    }

    /// Copies every object under `from` to the same relative key under `to`, inside the store (an
    /// S3 server copies without the bytes passing through this process).
    pub async fn copy_prefix(&self, from: &str, to: &str) -> Result<usize, StoreError> {
        let keys = self.list(from).await?;
        let from_root = format!("{}/", from.trim_end_matches('/'));
        for key in &keys {
            let rel = key.strip_prefix(&from_root).unwrap_or(key);
            self.copy(key, &join(to, rel)).await?;
        }
        Ok(keys.len())
    }

    /// Copies one object inside the store (server-side on S3).
    pub async fn copy(&self, from: &str, to: &str) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        match self.inner.copy(&self.path(from), &self.path(to)).await {
            Ok(()) => {
                self.observe("copy", 0, started);
                Ok(())
            }
            Err(object_store::Error::NotFound { .. }) => Err(StoreError::NotFound { location: self.describe(from) }),
            Err(e) => Err(self.backend("copy", from, e)),
        }
    }

    /// The size of an object in bytes (None: no such object).
    pub async fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match self.inner.head(&self.path(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.backend("stat", key, e)),
        }
    }

    /// A writer for one object of any size: small ones go up in one request, large ones as a
    /// multipart upload of [`WRITE_PART_BYTES`] parts, so memory stays bounded. Readers see the
    /// object only once [`ObjectWriter::finish`] returns.
    pub fn writer(&self, key: &str) -> ObjectWriter {
        let inner = object_store::buffered::BufWriter::with_capacity(self.inner.clone(), self.path(key), WRITE_PART_BYTES)
            .with_max_concurrency(WRITE_PARTS_IN_FLIGHT);
        ObjectWriter { inner, key: key.to_owned(), store: self.clone(), written: 0, started: std::time::Instant::now() }
    }

    /// The object's bytes as they arrive, for a reader on a blocking thread (a parser that takes
    /// [`std::io::Read`]): at most a few parts are held at once, whatever the object's size.
    /// Call from inside a Tokio runtime; read from a blocking thread (`spawn_blocking`).
    pub async fn blocking_reader(&self, key: &str) -> Result<BlockingReader, StoreError> {
        let result = match self.inner.get(&self.path(key)).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Err(StoreError::NotFound { location: self.describe(key) }),
            Err(e) => return Err(self.backend("read", key, e)),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<std::io::Result<Bytes>>(4);
        let location = self.describe(key);
        tokio::spawn(async move {
            let mut parts = result.into_stream();
            while let Some(part) = parts.next().await {
                let part = part.map_err(|e| std::io::Error::other(format!("reading {location}: {e}")));
                let failed = part.is_err();
                // A blocking send on a runtime thread would stall it: hand it to the blocking pool.
                let tx = tx.clone();
                let sent = tokio::task::spawn_blocking(move || tx.send(part).is_ok()).await.unwrap_or(false);
                if !sent || failed {
                    break;
                }
            }
        });
        Ok(BlockingReader { parts: rx, current: Bytes::new() })
    }

    /// An object's bytes as they arrive, a part at a time.
    pub async fn get_stream(&self, key: &str) -> Result<futures::stream::BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        let result = match self.inner.get(&self.path(key)).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Err(StoreError::NotFound { location: self.describe(key) }),
            Err(e) => return Err(self.backend("read", key, e)),
        };
        let location = self.describe(key);
        Ok(result
            .into_stream()
            .map_err(move |e| StoreError::Backend { op: "read", location: location.clone(), message: e.to_string() })
            .boxed())
    }

    /// The SHA-256 of an object, in hex, read a part at a time.
    pub async fn sha256(&self, key: &str) -> Result<String, StoreError> {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        let mut parts = self.get_stream(key).await?;
        while let Some(part) = parts.try_next().await? {
            hasher.update(&part);
        }
        Ok(hex::encode(hasher.finalize()))
    }

    /// Moves one object (a rename on a local directory; a copy and a delete on S3).
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), StoreError> {
        match self.inner.rename(&self.path(from), &self.path(to)).await {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Err(StoreError::NotFound { location: self.describe(from) }),
            Err(e) => Err(self.backend("rename", from, e)),
        }
    }

    /// Removes the directory `prefix` of a local store if it is empty (a local store keeps the
    /// directories of objects that were moved away); nothing on S3, which has no directories.
    pub fn remove_empty_dir(&self, prefix: &str) {
        if let Some(root) = &self.local_root {
            let _ = std::fs::remove_dir(root.join(join(&self.prefix, prefix)));
        }
    }

    /// Uploads a local file of any size, streamed (see [`ArtifactStore::writer`]).
    pub async fn put_file(&self, file: &Path, key: &str) -> Result<u64, StoreError> {
        use tokio::io::AsyncReadExt;
        let mut reader = tokio::fs::File::open(file).await.map_err(|e| self.backend("read", &file.display().to_string(), e))?;
        let mut writer = self.writer(key);
        loop {
            let mut buf = vec![0u8; 1 << 20];
            let n = reader.read(&mut buf).await.map_err(|e| self.backend("read", &file.display().to_string(), e))?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            writer.write(buf.into()).await?;
        }
        writer.finish().await
    }

    /// Uploads a local directory tree under `prefix`.
    pub async fn put_dir(&self, dir: &Path, prefix: &str) -> Result<usize, StoreError> {
        let mut count = 0;
        for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
            let entry = entry.map_err(|e| self.backend("read", &dir.display().to_string(), e))?;
            if !entry.file_type().is_file() {
                continue;
            }
            let rel = entry.path().strip_prefix(dir).expect("walkdir stays inside").to_string_lossy().replace('\\', "/");
            self.put_file(entry.path(), &join(prefix, &rel)).await?;
            count += 1;
        }
        Ok(count)
    }

    /// Downloads every object under `prefix` into a local directory.
    pub async fn get_dir(&self, prefix: &str, dir: &Path) -> Result<usize, StoreError> {
        let keys = self.list(prefix).await?;
        let root = format!("{}/", prefix.trim_end_matches('/'));
        for key in &keys {
            let rel = key.strip_prefix(&root).unwrap_or(key);
            let target = dir.join(rel);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| self.backend("write", rel, e))?;
            }
            self.get_file(key, &target).await?;
        }
        Ok(keys.len())
    }

    /// Downloads one object of any size into a local file, streamed.
    pub async fn get_file(&self, key: &str, target: &Path) -> Result<u64, StoreError> {
        use tokio::io::AsyncWriteExt;
        let started = std::time::Instant::now();
        let result = match self.inner.get(&self.path(key)).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Err(StoreError::NotFound { location: self.describe(key) }),
            Err(e) => return Err(self.backend("read", key, e)),
        };
        let local = |e: std::io::Error| self.backend("write", &target.display().to_string(), e);
        let mut file = tokio::fs::File::create(target).await.map_err(local)?;
        let mut parts = result.into_stream();
        let mut total = 0u64;
        while let Some(part) = parts.next().await {
            let part = part.map_err(|e| self.backend("read", key, e))?;
            total += part.len() as u64;
            file.write_all(&part).await.map_err(local)?;
        }
        file.flush().await.map_err(local)?;
        self.observe("get", total as usize, started);
        Ok(total)
    }

    fn backend(&self, op: &'static str, key: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Backend { op, location: self.describe(key), message: e.to_string() }
    }
}

/// Part size of multipart uploads (S3 wants at least 5 MiB for every part but the last).
pub const WRITE_PART_BYTES: usize = 8 << 20;
/// Parts of one upload in flight at once: a writer holds at most this many parts in memory.
const WRITE_PARTS_IN_FLIGHT: usize = 2;

/// One object being written; see [`ArtifactStore::writer`]. Dropped without
/// [`ObjectWriter::finish`], the object is not written.
pub struct ObjectWriter {
    inner: object_store::buffered::BufWriter,
    key: String,
    store: ArtifactStore,
    written: u64,
    started: std::time::Instant,
}

impl ObjectWriter {
    pub async fn write(&mut self, bytes: Bytes) -> Result<(), StoreError> {
        self.written += bytes.len() as u64;
        self.inner.put(bytes).await.map_err(|e| self.store.backend("write", &self.key, e))
    }

    /// Completes the object; returns its size.
    pub async fn finish(mut self) -> Result<u64, StoreError> {
        use tokio::io::AsyncWriteExt;
        self.inner.shutdown().await.map_err(|e| self.store.backend("write", &self.key, e))?;
        self.store.observe("put", self.written as usize, self.started);
        Ok(self.written)
    }

    /// Gives up the object, removing any parts already uploaded.
    pub async fn abort(mut self) {
        let _ = self.inner.abort().await;
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }
}

/// An object's bytes for a blocking reader; see [`ArtifactStore::blocking_reader`].
pub struct BlockingReader {
    parts: std::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
}

impl std::io::Read for BlockingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.parts.recv() {
                Ok(part) => self.current = part?,
                // The sender is gone: the whole object was read.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        bytes::Buf::advance(&mut self.current, n);
        Ok(n)
    }
}

fn join(a: &str, b: &str) -> String {
    match (a.trim_matches('/'), b.trim_matches('/')) {
        ("", b) => b.to_owned(),
        (a, "") => a.to_owned(),
        (a, b) => format!("{a}/{b}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unknown_schemes_and_empty_buckets() {
        assert!(matches!(ArtifactStore::open("gs://x", &StoreOptions::default()), Err(StoreError::BadLocation { .. })));
        assert!(matches!(ArtifactStore::open("s3://", &StoreOptions::default()), Err(StoreError::BadLocation { .. })));
    }

    #[test]
    fn keys_join_cleanly() {
        assert_eq!(join("", "a/b"), "a/b");
        assert_eq!(join("runs/", "/x"), "runs/x");
        assert_eq!(join("p", ""), "p");
    }
}
