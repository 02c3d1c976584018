//! A directory standing for the bucket: object keys are paths below it.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use ferry_convert::RangeSource;
use ferry_pipeline::{ObjectMeta, ObjectStore, PortError};

/// Every bucket is this directory.
#[derive(Debug, Clone)]
pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    /// A store over `root`.
    pub fn new(root: impl Into<PathBuf>) -> DirStore {
        DirStore { root: root.into() }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of `key`, refusing keys that would leave the directory.
    fn path(&self, key: &str) -> Result<PathBuf, PortError> {
        let rel = Path::new(key);
        let segments_ok = key
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..");
        let safe = segments_ok && rel.components().all(|c| matches!(c, Component::Normal(_)));
        if !safe {
            return Err(PortError::permanent(format!(
                "key {key:?} is not a path inside the bucket folder"
            )));
        }
        Ok(self.root.join(rel))
    }

    fn meta(key: String, metadata: &std::fs::Metadata) -> ObjectMeta {
        let modified = metadata
            .modified()
            .ok()
            .and_then(|m| m.duration_since(UNIX_EPOCH).ok());
        let nanos = modified.map_or(0, |d| d.as_nanos());
        ObjectMeta {
            key,
            size: metadata.len(),
            // Like an ETag, it changes when the object is rewritten; it is part of the job id.
            etag: format!("{:x}-{nanos:x}", metadata.len()),
            last_modified_micros: modified.and_then(|d| i64::try_from(d.as_micros()).ok()),
        }
    }
}

fn io_error(key: &str, e: std::io::Error) -> PortError {
    PortError::retryable(format!("{key}: {e}"))
}

impl ObjectStore for DirStore {
    fn head(&self, _bucket: &str, key: &str) -> Result<Option<ObjectMeta>, PortError> {
        match std::fs::metadata(self.path(key)?) {
            Ok(m) if m.is_file() => Ok(Some(DirStore::meta(key.to_owned(), &m))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(key, e)),
        }
    }

    fn open(
        &self,
        _bucket: &str,
        key: &str,
        _meta: &ObjectMeta,
    ) -> Result<Arc<dyn RangeSource>, PortError> {
        let file = std::fs::File::open(self.path(key)?).map_err(|e| io_error(key, e))?;
        Ok(Arc::new(file))
    }

    fn list(&self, _bucket: &str, prefix: &str) -> Result<Vec<ObjectMeta>, PortError> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(&dir.display().to_string(), e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| io_error(&dir.display().to_string(), e))?;
                let path = entry.path();
                let metadata = entry
                    .metadata()
                    .map_err(|e| io_error(&path.display().to_string(), e))?;
                if metadata.is_dir() {
                    stack.push(path);
                    continue;
                }
                let Ok(rel) = path.strip_prefix(&self.root) else {
                    continue;
                };
                let key = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                if key.starts_with(prefix) {
                    out.push(DirStore::meta(key, &metadata));
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_leave_the_folder() {
        let store = DirStore::new("/tmp/ferry-store-test");
        for key in ["../etc/passwd", "a/../../b", "/etc/passwd", "", "a/./b"] {
            let err = store.head("b", key).expect_err(key);
            assert!(
                !err.retryable && err.message.contains("not a path inside the bucket folder"),
                "{key}: {err}"
            );
        }
        assert_eq!(store.head("b", "no/such/key.parquet"), Ok(None));
    }
}
