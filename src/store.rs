//! The local content-addressed artifact store under `artifacts/`.
//!
//! ```text
//! artifacts/
//!   objects/<2 hex>/<digest>   blobs: stage outputs and manifests, named by their blake3
//!   actions/<key>.json         action cache: stage key -> manifest and output digests (written last)
//!   runs/<key>.json            run stats (time, host, threads): never hashed, never in a key
//!   stamps/<2 hex>/<digest>    when an object was last re-hashed and found intact (its stat then)
//!   trees/<digest>/            a folder output materialised read-only from its tree (hard links)
//!   corrupt/<digest>.<n>       objects and records that failed their digest, moved aside for inspection
//!   locks/project.lock         one run or gc at a time per project; verify shares it
//!   locks/<key>.lock           one OS advisory lock per stage key
//!   tmp/<key>/                 scratch space of the process holding that key's lock
//!   checkpoints/<key>/         a long stage's saved progress: kept across kills, removed once published
//!   statcache.json             raw-input stat cache
//! ```
//!
//! Invariants, which hold after a kill at any instant:
//! - a file under `objects/` is complete and its name is its digest (temp file, fsync, rename);
//! - an `actions/` entry exists only once every object it names does (it is written after them);
//! - locks are `flock`s: the kernel drops them when a process dies, so no stale lock ever needs a manual
//!   unlock; leftovers in `tmp/<key>/` are wiped by the next holder of that key's lock;
//! - an object that fails its digest is never used and never kept in place of a good one: lookups check it,
//!   publishing over it replaces it, and it is moved to `corrupt/` so that its stage can be recomputed.
//!
//! Checking every object by re-hashing it would make `status` read the whole store. Like git's index, a
//! stamp remembers the object's (size, mtime, ctime, inode) when it was last hashed intact; while the stat is
//! unchanged the object is trusted without reading it. A stamp taken within [`RACY_WINDOW`] of the object's
//! mtime is never trusted, since a write in the same timestamp tick would leave the stat unchanged.
//! `genrelab verify` always re-hashes in full, which also catches corruption that leaves the stat alone
//! (media errors).
//!
//! [`LocalStore`] implements [`BlobStore`] and [`ActionCache`] (their contracts are in [`crate::cas`]); what
//! only a local filesystem can offer stays inherent to it: key locks with their scratch and checkpoint
//! folders, run stats, and the `trees/` folders a materialised tree lives in.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cas::io;
pub use crate::cas::{
    ActionCache, ActionEntry, ActionRecord, BadObject, BlobStore, Lookup, ObjectState, StoreError,
    Tree, TreeFile,
};
use crate::hashing::{digest_file, stat_key, Digest, RACY_WINDOW};

/// The store under one project's `artifacts/` folder.
pub struct LocalStore {
    root: PathBuf,
}

/// An object's stat when it was last hashed intact, and when that was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    inode: u64,
    stamped_ns: i128,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        let (size, mtime_ns, ctime_ns, inode) = stat_key(meta);
        let stamped_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        Stamp {
            size,
            mtime_ns,
            ctime_ns,
            inode,
            stamped_ns,
        }
    }

    fn trusts(&self, meta: &fs::Metadata) -> bool {
        let (size, mtime_ns, ctime_ns, inode) = stat_key(meta);
        let settled =
            self.stamped_ns - self.mtime_ns.max(self.ctime_ns) >= RACY_WINDOW.as_nanos() as i128;
        settled
            && (self.size, self.mtime_ns, self.ctime_ns, self.inode)
                == (size, mtime_ns, ctime_ns, inode)
    }
}

/// Replace `path` with `bytes` (temp file + rename, no fsync): for caches whose loss costs only time.
fn write_file_replacing(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", std::process::id()));
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

/// Held while a process works on one stage key; dropping it releases the OS lock.
pub struct KeyLock {
    _file: File,
    pub scratch: PathBuf,
    /// Survives a kill (unlike `scratch`): a long stage saves its progress here and resumes from it. Removed
    /// once the key's outputs are published.
    pub checkpoint: PathBuf,
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

impl LocalStore {
    pub fn open(root: &Path) -> Result<LocalStore, StoreError> {
        for sub in [
            "objects", "actions", "runs", "locks", "tmp", "stamps", "trees",
        ] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        Ok(LocalStore {
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

    /// Re-hash an object in full; `Ok(false)` when it is missing or its bytes no longer match its name.
    fn check_object(&self, digest: &str) -> Result<bool, StoreError> {
        let path = self.object_path(digest);
        if !path.is_file() {
            return Ok(false);
        }
        let (actual, _) = digest_file(&path).map_err(io(&path))?;
        if actual == digest {
            self.stamp(digest);
        }
        Ok(actual == digest)
    }

    fn stamp_path(&self, digest: &str) -> PathBuf {
        let shard = digest.get(..2).unwrap_or("00");
        self.root.join("stamps").join(shard).join(digest)
    }

    /// Remember that `digest`'s object was just found intact. Best effort and not fsynced: a lost stamp only
    /// costs one re-hash.
    fn stamp(&self, digest: &str) {
        let path = self.object_path(digest);
        let Ok(meta) = fs::metadata(&path) else {
            return;
        };
        let stamp = Stamp::of(&meta);
        if let Ok(bytes) = serde_json::to_vec(&stamp) {
            let _ = write_file_replacing(&self.stamp_path(digest), &bytes);
        }
    }

    fn move_aside(&self, path: &Path, name: &str) -> Result<Option<PathBuf>, StoreError> {
        if fs::symlink_metadata(path).is_err() {
            return Ok(None);
        }
        let dir = self.root.join("corrupt");
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        // Numbered, so that a second corruption of the same object never overwrites the first exhibit.
        for n in 0u32.. {
            let dest = dir.join(format!("{name}.{n}"));
            if fs::symlink_metadata(&dest).is_ok() {
                continue;
            }
            return match fs::rename(path, &dest) {
                Ok(()) => Ok(Some(dest)),
                // Another process moved it first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io(path)(e)),
            };
        }
        Ok(None)
    }

    fn action_path(&self, key: &str) -> PathBuf {
        self.root.join("actions").join(format!("{key}.json"))
    }

    /// Remove every materialised folder under `trees/` whose tree is not in `keep` (and leftovers of killed
    /// materialisations). They are hard links, so this frees nothing that `objects/` still holds.
    pub fn remove_materialized_trees_except(
        &self,
        keep: &std::collections::BTreeSet<Digest>,
    ) -> Result<(), StoreError> {
        let dir = self.root.join("trees");
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                let path = entry.path();
                fs::remove_dir_all(&path).map_err(io(&path))?;
            }
        }
        Ok(())
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
        let checkpoint = self.root.join("checkpoints").join(key);
        fs::create_dir_all(&checkpoint).map_err(io(&checkpoint))?;
        Ok(KeyLock {
            _file: file,
            scratch,
            checkpoint,
        })
    }
}

impl BlobStore for LocalStore {
    /// Hash the file, fsync it, rename it into `objects/`.
    fn put_file(&self, src: &Path) -> Result<(Digest, u64), StoreError> {
        let (digest, size) = digest_file(src).map_err(io(src))?;
        let dest = self.object_path(&digest);
        if dest.is_file() && self.state(&digest)? == ObjectState::Intact {
            // Same digest, same bytes: first writer wins.
            fs::remove_file(src).map_err(io(src))?;
            return Ok((digest, size));
        }
        // Absent, or present but corrupt: a stored object that fails its digest never wins over good bytes.
        self.quarantine_blob(&digest)?;
        File::open(src)
            .and_then(|f| f.sync_all())
            .map_err(io(src))?;
        let dir = dest.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).map_err(io(dir))?;
        fs::rename(src, &dest).map_err(io(&dest))?;
        sync_dir(dir);
        self.stamp(&digest);
        Ok((digest, size))
    }

    fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let digest = crate::hashing::digest_bytes(bytes);
        let dest = self.object_path(&digest);
        if !dest.is_file() || self.state(&digest)? != ObjectState::Intact {
            self.quarantine_blob(&digest)?;
            write_atomic(&dest, bytes)?;
            self.stamp(&digest);
        }
        Ok(digest)
    }

    fn contains(&self, digest: &str) -> bool {
        self.object_path(digest).is_file()
    }

    /// Trusted through the object's stamp while its stat is unchanged, re-hashed otherwise.
    fn state(&self, digest: &str) -> Result<ObjectState, StoreError> {
        let path = self.object_path(digest);
        let meta = match fs::metadata(&path) {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Ok(ObjectState::Corrupt),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ObjectState::Missing),
            Err(e) => return Err(io(&path)(e)),
        };
        let stamp: Option<Stamp> = fs::read(self.stamp_path(digest))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if stamp.is_some_and(|s| s.trusts(&meta)) {
            return Ok(ObjectState::Intact);
        }
        Ok(if self.check_object(digest)? {
            ObjectState::Intact
        } else {
            ObjectState::Corrupt
        })
    }

    fn verify(&self, digest: &str) -> Result<ObjectState, StoreError> {
        Ok(if !self.contains(digest) {
            ObjectState::Missing
        } else if self.check_object(digest)? {
            ObjectState::Intact
        } else {
            ObjectState::Corrupt
        })
    }

    fn read(&self, digest: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.object_path(digest);
        fs::read(&path).map_err(io(&path))
    }

    /// The object itself, under `objects/`.
    fn materialize(&self, digest: &str) -> Result<PathBuf, StoreError> {
        Ok(self.object_path(digest))
    }

    /// A read-only folder holding a tree's files, hard-linked from `objects/` (copied where links cannot
    /// be made), built once per tree digest under `trees/` and renamed into place whole.
    fn materialize_tree(&self, digest: &str) -> Result<PathBuf, StoreError> {
        let dest = self.root.join("trees").join(digest);
        let tree = self.read_tree(digest)?;
        if dest.is_dir() {
            // Hard links share the object's inode: a folder linked before an object was found corrupt and
            // re-published still holds the old inode, so it is rebuilt rather than trusted.
            let same = |f: &TreeFile| {
                let ino =
                    |p: &Path| fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
                matches!((ino(&dest.join(&f.path)), ino(&self.object_path(&f.digest))), (Ok(a), Ok(b)) if a == b)
            };
            if tree.files.iter().all(same) {
                return Ok(dest);
            }
            fs::remove_dir_all(&dest).map_err(io(&dest))?;
        }
        let tmp = self
            .root
            .join("trees")
            .join(format!(".{digest}.{}.tmp", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        for file in &tree.files {
            let to = tmp.join(&file.path);
            let parent = to.parent().unwrap_or(&tmp);
            fs::create_dir_all(parent).map_err(io(parent))?;
            let from = self.object_path(&file.digest);
            if fs::hard_link(&from, &to).is_err() {
                fs::copy(&from, &to).map_err(io(&to))?;
            }
        }
        fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        match fs::rename(&tmp, &dest) {
            Ok(()) => Ok(dest),
            // Another process materialised it first: the same bytes by construction.
            Err(_) if dest.is_dir() => {
                let _ = fs::remove_dir_all(&tmp);
                Ok(dest)
            }
            Err(e) => Err(io(&dest)(e)),
        }
    }

    /// Moved under `corrupt/`, numbered, its stamp dropped.
    fn quarantine_blob(&self, digest: &str) -> Result<Option<String>, StoreError> {
        let _ = fs::remove_file(self.stamp_path(digest));
        Ok(self
            .move_aside(&self.object_path(digest), digest)?
            .map(|to| to.display().to_string()))
    }

    /// Every object digest in the store, sorted, with its size.
    fn list_blobs(&self) -> Result<Vec<(Digest, u64)>, StoreError> {
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

    fn remove_blob(&self, digest: &str) -> Result<(), StoreError> {
        let _ = fs::remove_file(self.stamp_path(digest));
        let path = self.object_path(digest);
        fs::remove_file(&path).map_err(io(&path))
    }

    /// Same as the provided method, naming the object's path on error.
    fn read_tree(&self, digest: &str) -> Result<Tree, StoreError> {
        let path = self.object_path(digest);
        let bytes = fs::read(&path).map_err(io(&path))?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path,
            reason: format!("not a folder tree: {e}"),
        })
    }
}

impl ActionCache for LocalStore {
    fn get_action(&self, key: &str) -> Result<ActionEntry, StoreError> {
        let path = self.action_path(key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ActionEntry::Absent),
            Err(e) => return Err(io(&path)(e)),
        };
        Ok(match serde_json::from_slice(&bytes) {
            Ok(record) => ActionEntry::Found(record),
            Err(e) => ActionEntry::Unreadable {
                reason: e.to_string(),
            },
        })
    }

    fn put_action(&self, record: &ActionRecord) -> Result<(), StoreError> {
        write_atomic(
            &self.action_path(&record.key),
            &crate::hashing::canonical_json(record),
        )
    }

    fn remove_action(&self, key: &str) -> Result<(), StoreError> {
        let path = self.action_path(key);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
            _ => Ok(()),
        }
    }

    fn action_keys(&self) -> Result<Vec<String>, StoreError> {
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

    /// Moved under `corrupt/` as `action-<key>.json.<n>`.
    fn quarantine_action(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .move_aside(&self.action_path(key), &format!("action-{key}.json"))?
            .map(|to| to.display().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_store_passes_the_store_conformance_checks() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(&dir.path().join("artifacts")).unwrap();
        let scratch = dir.path().join("scratch");
        fs::create_dir_all(&scratch).unwrap();
        let corrupt =
            |digest: &str, bytes: &[u8]| fs::write(store.object_path(digest), bytes).unwrap();
        crate::cas::conformance(&store, &store, &scratch, &corrupt);
    }

    #[test]
    fn layout_is_objects_by_shard_and_actions_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let digest = store.put_bytes(b"hello").unwrap();
        let path = dir.path().join("objects").join(&digest[..2]).join(&digest);
        assert_eq!(fs::read(&path).unwrap(), b"hello");
        assert_eq!(store.materialize(&digest).unwrap(), path);
        let record = ActionRecord {
            key: "k".into(),
            manifest: digest.clone(),
            outputs: [("o".to_string(), digest.clone())].into(),
            folders: Default::default(),
        };
        store.put_action(&record).unwrap();
        assert_eq!(
            fs::read(dir.path().join("actions/k.json")).unwrap(),
            crate::hashing::canonical_json(&record)
        );
    }

    #[test]
    fn an_unparsable_or_misfiled_action_record_is_unreadable_and_can_be_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        fs::write(dir.path().join("actions/k.json"), b"{not json").unwrap();
        assert!(matches!(
            store.lookup("k", &store).unwrap(),
            Lookup::Unreadable { .. }
        ));
        let to = store.quarantine_action("k").unwrap().unwrap();
        assert!(to.ends_with("corrupt/action-k.json.0"), "{to}");
        assert_eq!(store.lookup("k", &store).unwrap(), Lookup::Miss);
        let digest = store.put_bytes(b"m").unwrap();
        let record = ActionRecord {
            key: "other".into(),
            manifest: digest,
            outputs: Default::default(),
            folders: Default::default(),
        };
        let bytes = crate::hashing::canonical_json(&record);
        fs::write(dir.path().join("actions/k.json"), bytes).unwrap();
        assert!(matches!(
            store.lookup("k", &store).unwrap(),
            Lookup::Unreadable { .. }
        ));
    }

    #[test]
    fn key_lock_wipes_leftover_scratch() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let leftover = dir.path().join("tmp/k/half-written");
        fs::create_dir_all(leftover.parent().unwrap()).unwrap();
        fs::write(&leftover, b"half").unwrap();
        let lock = store.lock_key("k", || {}).unwrap();
        assert!(!leftover.exists());
        assert!(lock.scratch.is_dir());
    }
}
