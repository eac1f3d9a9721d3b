//! The object store jobs' caches, workspaces, artifacts and test results live in: the
//! filesystem under the data directory (the embedded default) or S3.
//!
//! # Design
//! Objects are written whole under a key and never changed; the database says which objects
//! exist and what they are, so an object without a row (a crash between the upload and the
//! row) is garbage the collector removes once it is older than a grace period. A filesystem
//! object is written to a temporary name and renamed into place, so a reader never sees half
//! of one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where objects go and how long they stay.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `filesystem` (default) or `s3`.
    pub kind: StorageKind,
    /// The filesystem store's directory (default `<data_dir>/objects`).
    pub path: Option<PathBuf>,
    /// The S3 bucket (`kind: s3`).
    pub bucket: Option<String>,
    /// A prefix for every key in the bucket.
    pub prefix: String,
    /// The bucket's region (default: the provider's).
    pub region: Option<String>,
    /// An S3-compatible endpoint instead of AWS's.
    pub endpoint_url: Option<String>,
    /// Largest object (one cache, one workspace layer, one artifact, one test results file).
    pub max_object_bytes: u64,
    /// Most bytes one job task may store in all.
    pub max_job_bytes: u64,
    /// How long each kind is kept.
    pub retention: Retention,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            kind: StorageKind::Filesystem,
            path: None,
            bucket: None,
            prefix: String::new(),
            region: None,
            endpoint_url: None,
            max_object_bytes: 128 << 20,
            max_job_bytes: 512 << 20,
            retention: Retention::default(),
        }
    }
}

/// The object store's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// A directory.
    Filesystem,
    /// An S3 bucket.
    S3,
}

/// Retention per kind, as CircleCI's defaults.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// Caches, from when they were saved.
    #[serde(with = "humantime_serde")]
    pub caches: Duration,
    /// Workspace layers.
    #[serde(with = "humantime_serde")]
    pub workspaces: Duration,
    /// Artifacts.
    #[serde(with = "humantime_serde")]
    pub artifacts: Duration,
    /// Job output and test results.
    #[serde(with = "humantime_serde")]
    pub job_output: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        let days = |d: u64| Duration::from_secs(d * 86_400);
        Self { caches: days(15), workspaces: days(15), artifacts: days(30), job_output: days(30) }
    }
}

/// An object store failure.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// A key that is not a relative path of plain segments.
    #[error("bad object key {0:?}")]
    BadKey(String),
    /// The store failed.
    #[error("object store: {0}")]
    Io(String),
}

/// One stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Its key.
    pub key: String,
    /// Its size.
    pub size: u64,
    /// When it was written (ms since the epoch).
    pub modified_ms: i64,
}

/// An object store.
#[async_trait::async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// Writes `data` under `key`, replacing what was there.
    async fn put(&self, key: &str, data: Vec<u8>) -> Result<(), ObjectError>;
    /// The object under `key`, if there is one.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ObjectError>;
    /// Every object whose key starts with `prefix`.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ObjectError>;
    /// Removes the object under `key` (no error when there is none).
    async fn delete(&self, key: &str) -> Result<(), ObjectError>;
    /// `filesystem` or `s3`, for logs.
    fn kind(&self) -> &'static str;
}

/// Checks a key: relative, `/`-separated, no empty, `.` or `..` segment, no control character.
///
/// # Errors
/// [`ObjectError::BadKey`].
pub fn check_key(key: &str) -> Result<(), ObjectError> {
    let bad = key.is_empty()
        || key.len() > 1024
        || key.starts_with('/')
        || key.chars().any(char::is_control)
        || key.split('/').any(|s| s.is_empty() || s == "." || s == "..");
    if bad {
        Err(ObjectError::BadKey(key.to_string()))
    } else {
        Ok(())
    }
}

/// A key segment made of anything (a project name, a cache key): safe characters kept, the
/// rest percent-encoded.
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.starts_with('.') {
        out.replace_range(..1, "%2E");
    }
    out
}

/// The object store `storage` describes: the filesystem at `fs_path`, or S3 with the EC2
/// provider's region, credentials and proxy (`aws`) unless `storage` names its own.
///
/// # Errors
/// [`ObjectError::Io`] when it cannot be opened; a `kind: s3` without a bucket.
pub async fn open(
    storage: &StorageConfig,
    fs_path: &Path,
    aws: vmfleet_provisioner::ec2::Ec2Settings,
) -> Result<std::sync::Arc<dyn ObjectStore>, ObjectError> {
    match storage.kind {
        StorageKind::Filesystem => Ok(std::sync::Arc::new(FsStore::new(fs_path)?)),
        StorageKind::S3 => Ok(std::sync::Arc::new(S3Store::new(storage, aws).await?)),
    }
}

/// Objects in an S3 bucket, under a prefix. Region and credentials are the EC2 provider's unless
/// `storage` names its own region and endpoint.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

fn s3_error<E: std::error::Error + 'static>(what: &str, e: aws_sdk_s3::error::SdkError<E>) -> ObjectError {
    // The SDK's display of an error is its kind; the service's own code and message say more.
    let detail = match &e {
        aws_sdk_s3::error::SdkError::ServiceError(s) => {
            let raw = s.raw();
            format!("HTTP {}", raw.status().as_u16())
        }
        other => other.to_string(),
    };
    ObjectError::Io(format!("S3 {what}: {detail}"))
}

impl S3Store {
    /// The bucket of `s`.
    ///
    /// # Errors
    /// [`ObjectError::Io`] for `kind: s3` without a bucket.
    pub async fn new(s: &StorageConfig, aws: vmfleet_provisioner::ec2::Ec2Settings) -> Result<Self, ObjectError> {
        let bucket =
            s.bucket.clone().filter(|b| !b.is_empty()).ok_or_else(|| io("storage.kind s3 needs storage.bucket"))?;
        let mut settings = aws;
        if let Some(r) = &s.region {
            settings.region = r.clone();
        }
        if s.endpoint_url.is_some() {
            settings.endpoint_url = s.endpoint_url.clone();
        }
        let sdk = vmfleet_provisioner::ec2::sdk_config(&settings).await;
        // Emulators and most S3-compatible stores answer on paths, not on bucket host names.
        let conf = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(s.endpoint_url.is_some()).build();
        let prefix = s.prefix.trim_matches('/').to_string();
        Ok(Self { client: aws_sdk_s3::Client::from_conf(conf), bucket, prefix })
    }

    fn key(&self, key: &str) -> Result<String, ObjectError> {
        check_key(key)?;
        Ok(if self.prefix.is_empty() { key.to_string() } else { format!("{}/{key}", self.prefix) })
    }
}

#[async_trait::async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, data: Vec<u8>) -> Result<(), ObjectError> {
        let k = self.key(key)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&k)
            .body(aws_sdk_s3::primitives::ByteStream::from(data))
            .send()
            .await
            .map_err(|e| s3_error(&format!("put {k}"), e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ObjectError> {
        let k = self.key(key)?;
        match self.client.get_object().bucket(&self.bucket).key(&k).send().await {
            Ok(o) => {
                let body = o.body.collect().await.map_err(|e| io(format!("S3 get {k}: {e}")))?;
                Ok(Some(body.into_bytes().to_vec()))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(s3_error(&format!("get {k}"), e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ObjectError> {
        let full = if self.prefix.is_empty() { prefix.to_string() } else { format!("{}/{prefix}", self.prefix) };
        let strip = if self.prefix.is_empty() { 0 } else { self.prefix.len() + 1 };
        let mut out = Vec::new();
        let mut pages = self.client.list_objects_v2().bucket(&self.bucket).prefix(&full).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| s3_error(&format!("list {full}"), e))?;
            for o in page.contents() {
                let Some(k) = o.key() else { continue };
                out.push(ObjectMeta {
                    key: k.get(strip..).unwrap_or_default().to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    modified_ms: o.last_modified().map_or(0, |t| t.to_millis().unwrap_or(0)),
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        let k = self.key(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&k)
            .send()
            .await
            .map_err(|e| s3_error(&format!("delete {k}"), e))?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "s3"
    }
}

/// Objects as files under a directory.
#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
}

fn io(e: impl std::fmt::Display) -> ObjectError {
    ObjectError::Io(e.to_string())
}

impl FsStore {
    /// A store under `root` (created when missing).
    ///
    /// # Errors
    /// [`ObjectError::Io`] when it cannot be created.
    pub fn new(root: &Path) -> Result<Self, ObjectError> {
        std::fs::create_dir_all(root).map_err(|e| io(format!("creating {}: {e}", root.display())))?;
        Ok(Self { root: root.to_path_buf() })
    }

    fn path(&self, key: &str) -> Result<PathBuf, ObjectError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

#[async_trait::async_trait]
impl ObjectStore for FsStore {
    async fn put(&self, key: &str, data: Vec<u8>) -> Result<(), ObjectError> {
        let path = self.path(key)?;
        tokio::task::spawn_blocking(move || {
            let dir = path.parent().ok_or_else(|| io("no parent directory"))?;
            std::fs::create_dir_all(dir).map_err(io)?;
            let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
            let written = std::fs::write(&tmp, &data).and_then(|()| std::fs::rename(&tmp, &path));
            if written.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            written.map_err(io)
        })
        .await
        .map_err(io)?
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ObjectError> {
        let path = self.path(key)?;
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ObjectError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let mut stack = vec![root.clone()];
            while let Some(dir) = stack.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io(e)),
                };
                for entry in entries {
                    let entry = entry.map_err(io)?;
                    let meta = entry.metadata().map_err(io)?;
                    let path = entry.path();
                    if meta.is_dir() {
                        stack.push(path);
                        continue;
                    }
                    let key = path.strip_prefix(&root).map_err(io)?.to_string_lossy().to_string();
                    if key.rsplit('/').next().is_some_and(|n| n.starts_with(".tmp-")) || !key.starts_with(&prefix) {
                        continue;
                    }
                    let modified_ms = meta
                        .modified()
                        .ok()
                        .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_millis() as i64);
                    out.push(ObjectMeta { key, size: meta.len(), modified_ms });
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
        .map_err(io)?
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(e)),
        }
    }

    fn kind(&self) -> &'static str {
        "filesystem"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_plain_relative_paths_and_segments_encode_the_rest() {
        for bad in ["", "/abs", "a//b", "a/../b", "./a", "a/.", "a\nb"] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        check_key("caches/gh%2Facme/v1-abc").expect("good key");
        assert_eq!(segment("gh/acme app"), "gh%2Facme%20app");
        assert_eq!(segment(".."), "%2E.");
        check_key(&format!("x/{}", segment(".."))).expect("an encoded segment is a good key");
    }

    #[tokio::test]
    async fn the_filesystem_store_writes_whole_objects_lists_and_deletes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = FsStore::new(dir.path()).expect("store");
        s.put("a/b/one", b"1".to_vec()).await.expect("put");
        s.put("a/two", b"22".to_vec()).await.expect("put");
        s.put("c/three", b"333".to_vec()).await.expect("put");
        assert_eq!(s.get("a/two").await.expect("get"), Some(b"22".to_vec()));
        assert_eq!(s.get("a/none").await.expect("get"), None);
        let keys: Vec<String> = s.list("a/").await.expect("list").into_iter().map(|m| m.key).collect();
        assert_eq!(keys, ["a/b/one", "a/two"]);
        s.delete("a/two").await.expect("delete");
        s.delete("a/two").await.expect("deleting twice is fine");
        assert_eq!(s.list("").await.expect("list").len(), 2);
        assert!(s.put("../escape", vec![]).await.is_err());
    }
}
