//! Shared artifact stores by URL, for checkpoints that every worker of a
//! study reaches: `file:///shared/folder` (a local or network folder) and
//! `s3://bucket/prefix` (S3 or any S3-compatible object store), both through
//! the `object_store` crate.
//!
//! S3 settings come from the environment, as AWS tools read them:
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, and for
//! another S3-compatible server `AWS_ENDPOINT` (e.g. `http://minio:9000`)
//! with `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use archsearch_tasks::Artifacts;
use object_store::{path::Path as Key, ObjectStore, PutPayload};

/// An artifact store on `object_store`, with the runtime its calls block on.
pub struct ObjectArtifacts {
    store: Arc<dyn ObjectStore>,
    /// The key prefix inside the store (an S3 URL's path).
    prefix: String,
    url: String,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for ObjectArtifacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectArtifacts({})", self.url)
    }
}

/// Opens the artifact store at `url` (`file://ABSOLUTE/PATH` or `s3://BUCKET[/PREFIX]`).
pub fn open(url: &str) -> Result<Arc<dyn Artifacts>> {
    let (store, prefix): (Arc<dyn ObjectStore>, String) = if let Some(dir) = url.strip_prefix("file://") {
        if !dir.starts_with('/') {
            bail!("artifact store `{url}`: a file:// URL needs an absolute path (file:///shared/checkpoints)");
        }
        std::fs::create_dir_all(dir).with_context(|| format!("artifact store `{url}`: creating {dir}"))?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir).with_context(|| format!("artifact store `{url}`"))?;
        (Arc::new(fs), String::new())
    } else if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!("artifact store `{url}`: no bucket (s3://BUCKET/PREFIX)");
        }
        let s3 = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .with_context(|| format!("artifact store `{url}` (S3 settings come from AWS_* environment variables)"))?;
        (Arc::new(s3), prefix.trim_matches('/').to_string())
    } else {
        bail!("unsupported artifact store `{url}` (use file:///ABSOLUTE/PATH or s3://BUCKET/PREFIX)");
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the artifact store's I/O runtime")?;
    Ok(Arc::new(ObjectArtifacts { store, prefix, url: url.to_string(), runtime }))
}

impl ObjectArtifacts {
    fn key(&self, key: &str) -> Result<Key, String> {
        let full = if self.prefix.is_empty() { key.to_string() } else { format!("{}/{key}", self.prefix) };
        Key::parse(&full).map_err(|e| format!("key `{full}`: {e}"))
    }
}

impl Artifacts for ObjectArtifacts {
    fn put(&self, key: &str, from: &Path) -> Result<(), String> {
        let k = self.key(key)?;
        let bytes = std::fs::read(from).map_err(|e| format!("{}: {e}", from.display()))?;
        self.runtime.block_on(self.store.put(&k, PutPayload::from(bytes))).map_err(|e| format!("{}: putting `{k}`: {e}", self.url))?;
        Ok(())
    }

    fn get(&self, key: &str, to: &Path) -> Result<bool, String> {
        let k = self.key(key)?;
        let got = self.runtime.block_on(async {
            match self.store.get(&k).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        match got.map_err(|e| format!("{}: getting `{k}`: {e}", self.url))? {
            Some(bytes) => {
                std::fs::write(to, &bytes).map_err(|e| format!("{}: {e}", to.display()))?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn url(&self) -> &str {
        &self.url
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What one worker puts, another (its own store on the same URL) gets;
    /// a missing key is `false`; a put replaces.
    fn shares_objects_between_workers(url: &str) {
        let (a, b) = (open(url).unwrap(), open(url).unwrap());
        let local = tempfile::tempdir().unwrap();
        let (src, dst) = (local.path().join("src"), local.path().join("dst"));
        let key = "study/trial-0/checkpoint.safetensors";
        std::fs::write(&src, b"epoch 1").unwrap();
        assert!(!b.get(key, &dst).unwrap(), "no object yet");
        a.put(key, &src).unwrap();
        assert!(b.get(key, &dst).unwrap());
        assert_eq!(std::fs::read(&dst).unwrap(), b"epoch 1");
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &big).unwrap();
        a.put(key, &src).unwrap();
        b.get(key, &dst).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), big, "replaced, byte for byte");
    }

    #[test]
    fn a_shared_folder_shares_objects_between_workers() {
        let dir = tempfile::tempdir().unwrap();
        shares_objects_between_workers(&format!("file://{}", dir.path().join("shared").display()));
        assert!(dir.path().join("shared/study/trial-0/checkpoint.safetensors").exists());
    }

    /// On a real S3-compatible server (SeaweedFS, which
    /// `scripts/with-s3.sh` starts and `scripts/test.sh` uses).
    #[test]
    fn s3_shares_objects_between_workers() {
        let bucket = std::env::var("ARCHSEARCH_S3_URL").expect(
            "ARCHSEARCH_S3_URL is not set: this test needs an S3-compatible server; run it through scripts/test.sh or scripts/with-s3.sh",
        );
        shares_objects_between_workers(&format!("{bucket}/unit-{:x}", rand::random::<u64>()));
    }

    #[test]
    fn bad_urls_are_named() {
        for (url, says) in [("file://relative/x", "absolute"), ("ftp://x", "unsupported"), ("s3://", "no bucket")] {
            let e = format!("{:#}", open(url).unwrap_err());
            assert!(e.contains(url) && e.contains(says), "{e}");
        }
    }
}
