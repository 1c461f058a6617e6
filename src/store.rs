//! The content-addressed artifact store under `artifacts/`.
//!
//! ```text
//! artifacts/
//!   objects/<2 hex>/<digest>   blobs: stage outputs and manifests, named by their blake3
//!   actions/<key>.json         action cache: stage key -> manifest and output digests (written last)
//!   runs/<key>.json            run stats (time, host, threads): never hashed, never in a key
//!   locks/<key>.lock           one OS advisory lock per stage key
//!   tmp/<key>/                 scratch space of the process holding that key's lock
//!   statcache.json             raw-input stat cache
//! ```
//!
//! Invariants, which hold after a kill at any instant:
//! - a file under `objects/` is complete and its name is its digest (temp file, fsync, rename);
//! - an `actions/` entry exists only once every object it names does (it is written after them);
//! - locks are `flock`s: the kernel drops them when a process dies, so no stale lock ever needs a manual
//!   unlock; leftovers in `tmp/<key>/` are wiped by the next holder of that key's lock.
//!
//! The store is a plain struct now; it is the single place to put behind a trait for a shared object-store
//! cache later.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hashing::{digest_file, Digest};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: corrupt record: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a finished stage run published, found by its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRecord {
    pub key: Digest,
    pub manifest: Digest,
    pub outputs: std::collections::BTreeMap<String, Digest>,
}

pub struct Store {
    root: PathBuf,
}

/// Held while a process works on one stage key; dropping it releases the OS lock.
pub struct KeyLock {
    _file: File,
    pub scratch: PathBuf,
}

/// Write `bytes` to `path` atomically: a temp file beside it, fsync, rename, fsync the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut file = File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io(path))?;
    sync_dir(dir);
    Ok(())
}

fn sync_dir(dir: &Path) {
    // Best effort: makes the rename durable on power loss; a failure here cannot make a file look valid.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl Store {
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        for sub in ["objects", "actions", "runs", "locks", "tmp"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn object_path(&self, digest: &str) -> PathBuf {
        let shard = digest.get(..2).unwrap_or("00");
        self.root.join("objects").join(shard).join(digest)
    }

    pub fn has_object(&self, digest: &str) -> bool {
        self.object_path(digest).is_file()
    }

    /// Publish a finished file: hash it, fsync it, rename it into `objects/`. The source file is consumed.
    pub fn put_file(&self, src: &Path) -> Result<(Digest, u64), StoreError> {
        let (digest, size) = digest_file(src).map_err(io(src))?;
        let dest = self.object_path(&digest);
        if dest.is_file() {
            // Same digest, same bytes: first writer wins.
            fs::remove_file(src).map_err(io(src))?;
            return Ok((digest, size));
        }
        File::open(src)
            .and_then(|f| f.sync_all())
            .map_err(io(src))?;
        let dir = dest.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).map_err(io(dir))?;
        fs::rename(src, &dest).map_err(io(&dest))?;
        sync_dir(dir);
        Ok((digest, size))
    }

    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let digest = crate::hashing::digest_bytes(bytes);
        let dest = self.object_path(&digest);
        if !dest.is_file() {
            write_atomic(&dest, bytes)?;
        }
        Ok(digest)
    }

    pub fn read_object(&self, digest: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.object_path(digest);
        fs::read(&path).map_err(io(&path))
    }

    /// Re-hash an object; `Ok(false)` when it is missing or its bytes no longer match its name.
    pub fn check_object(&self, digest: &str) -> Result<bool, StoreError> {
        let path = self.object_path(digest);
        if !path.is_file() {
            return Ok(false);
        }
        let (actual, _) = digest_file(&path).map_err(io(&path))?;
        Ok(actual == digest)
    }

    fn action_path(&self, key: &str) -> PathBuf {
        self.root.join("actions").join(format!("{key}.json"))
    }

    /// The action record for `key`, only if every object it names is present.
    pub fn action(&self, key: &str) -> Result<Option<ActionRecord>, StoreError> {
        let path = self.action_path(key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let record: ActionRecord =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let complete = self.has_object(&record.manifest)
            && record.outputs.values().all(|d| self.has_object(d));
        Ok(complete.then_some(record))
    }

    pub fn put_action(&self, record: &ActionRecord) -> Result<(), StoreError> {
        write_atomic(
            &self.action_path(&record.key),
            &crate::hashing::canonical_json(record),
        )
    }

    pub fn remove_action(&self, key: &str) -> Result<(), StoreError> {
        let path = self.action_path(key);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
            _ => Ok(()),
        }
    }

    pub fn action_keys(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.root.join("actions");
        let mut keys: Vec<String> = fs::read_dir(&dir)
            .map_err(io(&dir))?
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".json")
                    .map(str::to_string)
            })
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Run stats, kept apart from everything hashed.
    pub fn put_run_stats(&self, key: &str, stats: &serde_json::Value) -> Result<(), StoreError> {
        let path = self.root.join("runs").join(format!("{key}.json"));
        write_atomic(&path, &serde_json::to_vec_pretty(stats).unwrap_or_default())
    }

    /// Take the lock for one stage key, waiting for another process that holds it; then wipe the key's
    /// scratch folder, which can only hold leftovers of a killed run.
    pub fn lock_key(&self, key: &str, on_wait: impl FnOnce()) -> Result<KeyLock, StoreError> {
        let path = self.root.join("locks").join(format!("{key}.lock"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                on_wait();
                file.lock().map_err(io(&path))?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
        }
        let scratch = self.root.join("tmp").join(key);
        if scratch.exists() {
            fs::remove_dir_all(&scratch).map_err(io(&scratch))?;
        }
        fs::create_dir_all(&scratch).map_err(io(&scratch))?;
        Ok(KeyLock {
            _file: file,
            scratch,
        })
    }

    /// Every object digest in the store, sorted.
    pub fn object_digests(&self) -> Result<Vec<(Digest, u64)>, StoreError> {
        let dir = self.root.join("objects");
        let mut out = Vec::new();
        for shard in fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
            let Ok(entries) = fs::read_dir(shard.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                    let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                    out.push((name, size));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    pub fn remove_object(&self, digest: &str) -> Result<(), StoreError> {
        let path = self.object_path(digest);
        fs::remove_file(&path).map_err(io(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_file_is_content_addressed_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let src = dir.path().join("a");
        fs::write(&src, b"hello").unwrap();
        let (d1, size) = store.put_file(&src).unwrap();
        assert_eq!(size, 5);
        assert!(!src.exists());
        fs::write(&src, b"hello").unwrap();
        let (d2, _) = store.put_file(&src).unwrap();
        assert_eq!(d1, d2);
        assert!(store.check_object(&d1).unwrap());
        // Flip a byte: the check must notice.
        fs::write(store.object_path(&d1), b"hellp").unwrap();
        assert!(!store.check_object(&d1).unwrap());
    }

    #[test]
    fn an_action_with_a_missing_object_is_not_a_hit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let manifest = store.put_bytes(b"{}").unwrap();
        let out = store.put_bytes(b"data").unwrap();
        let record = ActionRecord {
            key: "k".into(),
            manifest,
            outputs: [("o".to_string(), out.clone())].into(),
        };
        store.put_action(&record).unwrap();
        assert_eq!(store.action("k").unwrap(), Some(record));
        store.remove_object(&out).unwrap();
        assert_eq!(store.action("k").unwrap(), None);
    }

    #[test]
    fn key_lock_wipes_leftover_scratch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let leftover = dir.path().join("tmp/k/half-written");
        fs::create_dir_all(leftover.parent().unwrap()).unwrap();
        fs::write(&leftover, b"half").unwrap();
        let lock = store.lock_key("k", || {}).unwrap();
        assert!(!leftover.exists());
        assert!(lock.scratch.is_dir());
    }
}
