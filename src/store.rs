//! The content-addressed artifact store under `artifacts/`.
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
//! The store is a plain struct now; it is the single place to put behind a trait for a shared object-store
//! cache later.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hashing::{digest_file, stat_key, Digest, RACY_WINDOW};

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

/// The state of one stored object, checked against its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectState {
    Intact,
    Missing,
    /// Its bytes no longer hash to its name.
    Corrupt,
}

/// One object an action record names that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadObject {
    /// The output name, or `manifest`.
    pub name: String,
    pub digest: Digest,
    pub state: ObjectState,
}

/// What the action cache holds for a key.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// A record whose manifest and outputs are all present and intact.
    Hit(ActionRecord),
    Miss,
    /// A record naming objects that are missing or corrupt: the stage must run again to restore them.
    Broken {
        record: ActionRecord,
        bad: Vec<BadObject>,
    },
    /// The record file itself cannot be parsed (a flipped byte, a truncated write by another tool).
    Unreadable {
        reason: String,
    },
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
    /// Outputs that are folders: their digest names a [`Tree`] object.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub folders: std::collections::BTreeSet<String>,
}

/// A folder output as stored: every regular file under it by `/`-separated relative path, sorted, with its
/// size and digest. Its canonical JSON is an object like any other; that object's digest is the output's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub genrelab_tree: u32,
    pub files: Vec<TreeFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeFile {
    pub path: String,
    pub size: u64,
    pub digest: Digest,
}

/// Files in one folder output at most: a model folder holds a handful; a runaway loop writing files should
/// fail here rather than fill the store.
const MAX_TREE_FILES: usize = 100_000;

pub struct Store {
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

/// Regular files under `dir` as (relative `/`-path, path), refusing links and special files.
fn collect_tree(
    base: &Path,
    dir: &Path,
    out: &mut Vec<(String, PathBuf)>,
) -> Result<(), StoreError> {
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io(&path))?;
        if kind.is_dir() {
            collect_tree(base, &path, out)?;
        } else if kind.is_file() {
            let rel = path.strip_prefix(base).unwrap_or(&path);
            let Some(rel) = rel.to_str() else {
                return Err(StoreError::Corrupt {
                    path: path.clone(),
                    reason: "a file name in a folder output is not UTF-8".into(),
                });
            };
            out.push((rel.replace('\\', "/"), path.clone()));
            if out.len() > MAX_TREE_FILES {
                return Err(StoreError::Corrupt {
                    path: base.to_path_buf(),
                    reason: format!("a folder output holds more than {MAX_TREE_FILES} files"),
                });
            }
        } else {
            return Err(StoreError::Corrupt {
                path,
                reason:
                    "a folder output may hold only files and folders, not links or special files"
                        .into(),
            });
        }
    }
    Ok(())
}

impl Store {
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        for sub in [
            "objects", "actions", "runs", "locks", "tmp", "stamps", "trees",
        ] {
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
        if dest.is_file() && self.object_state(&digest)? == ObjectState::Intact {
            // Same digest, same bytes: first writer wins.
            fs::remove_file(src).map_err(io(src))?;
            return Ok((digest, size));
        }
        // Absent, or present but corrupt: a stored object that fails its digest never wins over good bytes.
        self.quarantine_object(&digest)?;
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

    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let digest = crate::hashing::digest_bytes(bytes);
        let dest = self.object_path(&digest);
        if !dest.is_file() || self.object_state(&digest)? != ObjectState::Intact {
            self.quarantine_object(&digest)?;
            write_atomic(&dest, bytes)?;
            self.stamp(&digest);
        }
        Ok(digest)
    }

    pub fn read_object(&self, digest: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.object_path(digest);
        fs::read(&path).map_err(io(&path))
    }

    /// Re-hash an object in full; `Ok(false)` when it is missing or its bytes no longer match its name.
    pub fn check_object(&self, digest: &str) -> Result<bool, StoreError> {
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

    /// Whether an object is present and intact: trusted through its stamp while its stat is unchanged,
    /// re-hashed otherwise.
    pub fn object_state(&self, digest: &str) -> Result<ObjectState, StoreError> {
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

    /// Move a corrupt object out of `objects/` (kept under `corrupt/` for inspection), so that nothing reads
    /// it and the stage that made it can publish it again. `None` when there was nothing to move.
    pub fn quarantine_object(&self, digest: &str) -> Result<Option<PathBuf>, StoreError> {
        let _ = fs::remove_file(self.stamp_path(digest));
        self.move_aside(&self.object_path(digest), digest)
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

    /// The action record for `key`, only if every object it names is present and intact.
    pub fn action(&self, key: &str) -> Result<Option<ActionRecord>, StoreError> {
        Ok(match self.lookup(key)? {
            Lookup::Hit(record) => Some(record),
            _ => None,
        })
    }

    /// The action cache entry for `key`, with every object it names checked (cheaply, through stamps).
    pub fn lookup(&self, key: &str) -> Result<Lookup, StoreError> {
        let path = self.action_path(key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lookup::Miss),
            Err(e) => return Err(io(&path)(e)),
        };
        let record: ActionRecord = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                return Ok(Lookup::Unreadable {
                    reason: e.to_string(),
                })
            }
        };
        if record.key != key {
            return Ok(Lookup::Unreadable {
                reason: format!("it records key {} under key {key}", record.key),
            });
        }
        let mut bad = Vec::new();
        let named = std::iter::once(("manifest", &record.manifest))
            .chain(record.outputs.iter().map(|(k, v)| (k.as_str(), v)));
        for (name, digest) in named {
            if record.folders.contains(name) {
                bad.extend(self.tree_problems(name, digest)?);
                continue;
            }
            let state = self.object_state(digest)?;
            if state != ObjectState::Intact {
                bad.push(BadObject {
                    name: name.to_string(),
                    digest: digest.clone(),
                    state,
                });
            }
        }
        Ok(if bad.is_empty() {
            Lookup::Hit(record)
        } else {
            Lookup::Broken { record, bad }
        })
    }

    /// Publish a finished folder: every file becomes an object, then the tree naming them. The folder is
    /// consumed. Only regular files and folders may be in it: a link or a special file is an error (its
    /// meaning would depend on the machine).
    pub fn put_tree(&self, dir: &Path) -> Result<(Digest, u64), StoreError> {
        let mut files = Vec::new();
        collect_tree(dir, dir, &mut files)?;
        files.sort();
        let mut tree = Tree {
            genrelab_tree: 1,
            files: Vec::with_capacity(files.len()),
        };
        let mut total = 0;
        for (rel, path) in files {
            let (digest, size) = self.put_file(&path)?;
            total += size;
            tree.files.push(TreeFile {
                path: rel,
                size,
                digest,
            });
        }
        let digest = self.put_bytes(&crate::hashing::canonical_json(&tree))?;
        let _ = fs::remove_dir_all(dir);
        Ok((digest, total))
    }

    pub fn read_tree(&self, digest: &str) -> Result<Tree, StoreError> {
        let path = self.object_path(digest);
        let bytes = fs::read(&path).map_err(io(&path))?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path,
            reason: format!("not a folder tree: {e}"),
        })
    }

    /// Every object a folder output consists of that is missing or corrupt (the tree object first).
    pub fn tree_problems(&self, name: &str, digest: &str) -> Result<Vec<BadObject>, StoreError> {
        let state = self.object_state(digest)?;
        if state != ObjectState::Intact {
            return Ok(vec![BadObject {
                name: name.to_string(),
                digest: digest.to_string(),
                state,
            }]);
        }
        let mut bad = Vec::new();
        for file in self.read_tree(digest)?.files {
            let state = self.object_state(&file.digest)?;
            if state != ObjectState::Intact {
                bad.push(BadObject {
                    name: format!("{name}/{}", file.path),
                    digest: file.digest,
                    state,
                });
            }
        }
        Ok(bad)
    }

    /// A read-only folder holding a tree's files, hard-linked from `objects/` (copied where links cannot
    /// be made), built once per tree digest under `trees/` and renamed into place whole.
    pub fn materialize_tree(&self, digest: &str) -> Result<PathBuf, StoreError> {
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

    /// Move an unreadable action record aside (to `corrupt/`), so that the key's next run rewrites it.
    pub fn quarantine_action(&self, key: &str) -> Result<Option<PathBuf>, StoreError> {
        self.move_aside(&self.action_path(key), &format!("action-{key}.json"))
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
        let checkpoint = self.root.join("checkpoints").join(key);
        fs::create_dir_all(&checkpoint).map_err(io(&checkpoint))?;
        Ok(KeyLock {
            _file: file,
            scratch,
            checkpoint,
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
        let _ = fs::remove_file(self.stamp_path(digest));
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
            folders: Default::default(),
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
