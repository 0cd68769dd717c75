//! Buckets configured by Thanos's objstore YAML (`type`, `config`, `prefix`), backed by
//! the `object_store` crate. Supported types: `FILESYSTEM` and `S3`. Knows nothing of
//! blocks.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

/// A bucket error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("objstore config: {0}")]
    Config(String),
    #[error("{op} {key}: {source}")]
    Store { op: &'static str, key: String, source: object_store::Error },
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: String, source: std::io::Error },
}

/// Result of bucket operations.
pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Deserialize)]
struct Conf {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    config: ProviderConf,
    #[serde(default)]
    prefix: String,
}

/// The provider keys Norn reads; others (http_config, sse_config, …) are accepted
/// and ignored.
#[derive(Debug, Default, Deserialize)]
struct ProviderConf {
    directory: Option<String>,
    bucket: Option<String>,
    endpoint: Option<String>,
    region: Option<String>,
    access_key: Option<String>,
    secret_key: Option<String>,
    session_token: Option<String>,
    #[serde(default)]
    insecure: bool,
    bucket_lookup_type: Option<String>,
}

/// A bucket: an object store plus an optional key prefix.
#[derive(Debug, Clone)]
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    kind: &'static str,
}

fn nonempty(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

impl Bucket {
    /// Builds a bucket from Thanos objstore YAML.
    pub fn from_yaml(yaml: &str) -> Result<Bucket> {
        let c: Conf = serde_saphyr::from_str(yaml).map_err(|e| Error::Config(e.to_string()))?;
        let prefix = c.prefix.trim_matches('/').to_string();
        let cfg = &c.config;
        match c.kind.to_ascii_uppercase().as_str() {
            "FILESYSTEM" => {
                let dir = nonempty(&cfg.directory)
                    .ok_or_else(|| Error::Config("FILESYSTEM needs config.directory".into()))?;
                let mut b = Bucket::filesystem(Path::new(dir))?;
                b.prefix = prefix;
                Ok(b)
            }
            "S3" => {
                let bucket = nonempty(&cfg.bucket).ok_or_else(|| Error::Config("S3 needs config.bucket".into()))?;
                let endpoint =
                    nonempty(&cfg.endpoint).ok_or_else(|| Error::Config("S3 needs config.endpoint".into()))?;
                let scheme = if cfg.insecure { "http" } else { "https" };
                let url =
                    if endpoint.contains("://") { endpoint.to_string() } else { format!("{scheme}://{endpoint}") };
                let mut b = AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_endpoint(url)
                    .with_region(nonempty(&cfg.region).unwrap_or("us-east-1"))
                    .with_allow_http(cfg.insecure)
                    .with_virtual_hosted_style_request(
                        cfg.bucket_lookup_type.as_deref() == Some("virtual-hosted")
                            || (cfg.bucket_lookup_type.as_deref().unwrap_or("auto") == "auto"
                                && endpoint.contains("amazonaws.com")),
                    );
                if let Some(k) = nonempty(&cfg.access_key) {
                    b = b.with_access_key_id(k);
                }
                if let Some(k) = nonempty(&cfg.secret_key) {
                    b = b.with_secret_access_key(k);
                }
                if let Some(k) = nonempty(&cfg.session_token) {
                    b = b.with_token(k);
                }
                let store = b.build().map_err(|e| Error::Config(e.to_string()))?;
                Ok(Bucket { store: Arc::new(store), prefix, kind: "S3" })
            }
            other => Err(Error::Config(format!("unsupported bucket type {other:?} (FILESYSTEM and S3 are)"))),
        }
    }

    /// A bucket in a local directory (created if missing).
    pub fn filesystem(dir: &Path) -> Result<Bucket> {
        let io = |source| Error::Io { op: "create bucket dir", path: dir.display().to_string(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let store = LocalFileSystem::new_with_prefix(dir).map_err(|e| Error::Config(e.to_string()))?;
        Ok(Bucket { store: Arc::new(store), prefix: String::new(), kind: "FILESYSTEM" })
    }

    /// `FILESYSTEM` or `S3`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    fn path(&self, key: &str) -> ObjPath {
        if self.prefix.is_empty() { ObjPath::from(key) } else { ObjPath::from(format!("{}/{key}", self.prefix)) }
    }

    fn unprefix(&self, p: &ObjPath) -> String {
        let s = p.as_ref();
        if self.prefix.is_empty() {
            s.to_string()
        } else {
            s.strip_prefix(&self.prefix).map(|x| x.trim_start_matches('/').to_string()).unwrap_or_else(|| s.to_string())
        }
    }

    /// Writes an object.
    pub async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.store.put(&self.path(key), PutPayload::from(data)).await.map(|_| ()).map_err(|source| Error::Store {
            op: "put",
            key: key.into(),
            source,
        })
    }

    /// Uploads a local file, streaming it in parts (multipart upload for large files).
    pub async fn upload_file(&self, key: &str, file: &Path) -> Result<()> {
        let io = |op, source| Error::Io { op, path: file.display().to_string(), source };
        let mut f = tokio::fs::File::open(file).await.map_err(|e| io("open", e))?;
        let mut w = object_store::buffered::BufWriter::new(self.store.clone(), self.path(key));
        tokio::io::copy(&mut f, &mut w).await.map_err(|e| io("upload", e))?;
        w.shutdown().await.map_err(|e| io("upload", e))
    }

    /// Reads an object.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        let store_err = |source| Error::Store { op: "get", key: key.into(), source };
        let r = self.store.get(&self.path(key)).await.map_err(store_err)?;
        r.bytes().await.map_err(store_err)
    }

    /// Reads bytes `range` of an object; a range running past the end is cut at the end
    /// (the result may be shorter), a range starting past it is an error.
    pub async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Bytes> {
        self.store.get_range(&self.path(key), range).await.map_err(|source| Error::Store {
            op: "get range",
            key: key.into(),
            source,
        })
    }

    /// Streams an object into a local file (created or truncated), so large objects never
    /// sit in memory whole. Returns the bytes written.
    pub async fn download_file(&self, key: &str, file: &Path) -> Result<u64> {
        let store_err = |source| Error::Store { op: "get", key: key.into(), source };
        let io = |op, source| Error::Io { op, path: file.display().to_string(), source };
        let r = self.store.get(&self.path(key)).await.map_err(store_err)?;
        let mut f = tokio::fs::File::create(file).await.map_err(|e| io("create", e))?;
        let mut stream = r.into_stream();
        let mut n = 0u64;
        while let Some(chunk) = stream.try_next().await.map_err(store_err)? {
            f.write_all(&chunk).await.map_err(|e| io("write", e))?;
            n += chunk.len() as u64;
        }
        f.flush().await.map_err(|e| io("flush", e))?;
        Ok(n)
    }

    /// Whether an object exists.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        match self.store.head(&self.path(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(source) => Err(Error::Store { op: "head", key: key.into(), source }),
        }
    }

    /// Every key under `prefix` (recursively), sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let p = self.path(prefix.trim_end_matches('/'));
        let p = if prefix.is_empty() && self.prefix.is_empty() { None } else { Some(&p) };
        let mut v: Vec<String> = self
            .store
            .list(p)
            .map_ok(|m| self.unprefix(&m.location))
            .try_collect()
            .await
            .map_err(|source| Error::Store { op: "list", key: prefix.into(), source })?;
        v.sort();
        Ok(v)
    }

    /// Every key under `prefix` (recursively) with its size in bytes, sorted by key.
    pub async fn list_with_sizes(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let p = self.path(prefix.trim_end_matches('/'));
        let p = if prefix.is_empty() && self.prefix.is_empty() { None } else { Some(&p) };
        let mut v: Vec<(String, u64)> = self
            .store
            .list(p)
            .map_ok(|m| (self.unprefix(&m.location), m.size))
            .try_collect()
            .await
            .map_err(|source| Error::Store { op: "list", key: prefix.into(), source })?;
        v.sort();
        Ok(v)
    }

    /// Deletes an object (missing objects are not an error).
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(Error::Store { op: "delete", key: key.into(), source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn filesystem_bucket_from_yaml() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!("type: FILESYSTEM\nconfig:\n  directory: {}\nprefix: pre\n", dir.path().display());
        let b = Bucket::from_yaml(&yaml).unwrap();
        b.put("a/b/meta.json", Bytes::from_static(b"{}")).await.unwrap();
        let f = dir.path().join("src.bin");
        std::fs::write(&f, vec![7u8; 100_000]).unwrap();
        b.upload_file("a/chunks/000001", &f).await.unwrap();
        assert!(dir.path().join("pre/a/b/meta.json").exists());
        assert_eq!(b.get("a/chunks/000001").await.unwrap().len(), 100_000);
        assert_eq!(b.get_range("a/chunks/000001", 10..20).await.unwrap().len(), 10);
        assert_eq!(b.get_range("a/chunks/000001", 99_990..100_100).await.unwrap().len(), 10, "cut at the end");
        assert!(b.get_range("a/chunks/000001", 100_000..100_100).await.is_err());
        assert!(b.get_range("nope", 0..1).await.is_err());
        let dl = dir.path().join("dl.bin");
        assert_eq!(b.download_file("a/chunks/000001", &dl).await.unwrap(), 100_000);
        assert_eq!(std::fs::read(&dl).unwrap(), vec![7u8; 100_000]);
        assert_eq!(
            b.list_with_sizes("a").await.unwrap(),
            vec![("a/b/meta.json".to_string(), 2), ("a/chunks/000001".to_string(), 100_000)]
        );
        assert!(b.exists("a/b/meta.json").await.unwrap());
        assert!(!b.exists("nope").await.unwrap());
        assert_eq!(b.list("a").await.unwrap(), vec!["a/b/meta.json", "a/chunks/000001"]);
        b.delete("a/b/meta.json").await.unwrap();
        b.delete("a/b/meta.json").await.unwrap();
        assert!(!b.exists("a/b/meta.json").await.unwrap());
    }

    #[test]
    fn config_errors() {
        for bad in ["type: GCS\nconfig: {}\n", "type: S3\nconfig: {}\n", "type: FILESYSTEM\n", "::"] {
            assert!(Bucket::from_yaml(bad).is_err(), "{bad}");
        }
        let s3 = "type: S3\nconfig:\n  bucket: b\n  endpoint: 127.0.0.1:9000\n  insecure: true\n  access_key: a\n  secret_key: s\n  http_config:\n    idle_conn_timeout: 1m\n";
        assert_eq!(Bucket::from_yaml(s3).unwrap().kind(), "S3");
    }
}
