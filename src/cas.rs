//! The store's interface: a content-addressed blob store and an action cache (stage key → outputs).
//!
//! The engine publishes and looks up results only through [`BlobStore`] and [`ActionCache`], so a shared
//! cache (an object store such as S3) can sit behind the same traits without touching stages. The local
//! filesystem store, [`crate::store::LocalStore`], is the first implementation.
//!
//! Contract shared by every implementation:
//! - A blob is named by the blake3 digest of its bytes. Publishing is idempotent: publishing the same bytes
//!   again is a no-op that returns the same digest, and a stored blob that no longer hashes to its name is
//!   replaced, never kept in place of good bytes.
//! - A blob is visible only once complete: no reader ever sees part of one.
//! - Writers publish every blob a record names before the record ([`ActionCache::put_action`] last), so an
//!   action entry never names a blob that was never written.
//! - [`ActionCache::lookup`] returns [`Lookup::Hit`] only when the record parses, records its own key, and
//!   every blob it names (the manifest, each output, each file of a folder output) is intact.
//! - A remote implementation verifies what it downloads before [`BlobStore::materialize`] hands out a path.
//!
//! What is inherently local stays on [`crate::store::LocalStore`] and [`crate::engine::Project`], outside
//! these traits: the per-key OS locks with their scratch and checkpoint folders, the project lock, run stats
//! and the raw-input stat cache.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hashing::Digest;

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
    /// A failure of a non-local back-end (a network error, a refused request), naming what was attempted.
    #[error("{what}: {source}")]
    Backend {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
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

/// What the action cache holds for a key, with every blob it names checked.
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
    /// The record itself cannot be parsed (a flipped byte, a truncated write by another tool).
    Unreadable {
        reason: String,
    },
}

/// What the action cache holds for a key, unchecked against the blob store.
#[derive(Debug, Clone, PartialEq)]
pub enum ActionEntry {
    Absent,
    Found(ActionRecord),
    /// The stored record does not parse.
    Unreadable {
        reason: String,
    },
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

/// Content-addressed blobs: stage outputs, manifests, folder trees and the files they list.
pub trait BlobStore: Send + Sync {
    /// Publish a finished local file and return its digest and size. The source file is consumed. Idempotent;
    /// an existing blob of that digest that fails its digest is replaced.
    fn put_file(&self, src: &Path) -> Result<(Digest, u64), StoreError>;

    /// Publish bytes and return their digest, with the same guarantees as [`BlobStore::put_file`].
    fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, StoreError>;

    /// Whether a blob is present, without checking its bytes.
    fn contains(&self, digest: &str) -> bool;

    /// Whether a blob is present and intact. May trust an earlier check while the blob is provably unchanged
    /// (the local store's stamps); otherwise re-hashes.
    fn state(&self, digest: &str) -> Result<ObjectState, StoreError>;

    /// Like [`BlobStore::state`], but always re-hashes the blob in full (`verify`).
    fn verify(&self, digest: &str) -> Result<ObjectState, StoreError>;

    /// A blob's bytes. Does not check them: call [`BlobStore::state`] first where it matters.
    fn read(&self, digest: &str) -> Result<Vec<u8>, StoreError>;

    /// A local, read-only path holding a file blob's bytes, valid while the blob is stored. A stage reads its
    /// inputs through it; it must never be written to.
    fn materialize(&self, digest: &str) -> Result<PathBuf, StoreError>;

    /// A local, read-only folder holding a tree blob's files, valid while the tree is stored. Rebuilt if any
    /// of its files no longer are the stored blob.
    fn materialize_tree(&self, digest: &str) -> Result<PathBuf, StoreError>;

    /// Move a bad blob out of the way (kept aside for inspection where the back-end can), so that nothing
    /// reads it and it can be published again. Returns where it went, for messages; `None` when there was
    /// nothing to move.
    fn quarantine_blob(&self, digest: &str) -> Result<Option<String>, StoreError>;

    /// Every stored blob with its size, sorted by digest.
    fn list_blobs(&self) -> Result<Vec<(Digest, u64)>, StoreError>;

    /// Delete a blob (`gc`). An error when it is not there.
    fn remove_blob(&self, digest: &str) -> Result<(), StoreError>;

    /// A tree blob, parsed.
    fn read_tree(&self, digest: &str) -> Result<Tree, StoreError> {
        let bytes = self.read(digest)?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path: PathBuf::from(digest),
            reason: format!("not a folder tree: {e}"),
        })
    }

    /// Publish a finished local folder: every file becomes a blob, then the tree naming them. The folder is
    /// consumed. Only regular files and folders may be in it: a link or a special file is an error (its
    /// meaning would depend on the machine).
    fn put_tree(&self, dir: &Path) -> Result<(Digest, u64), StoreError> {
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

    /// Every blob a folder output consists of that is missing or corrupt (the tree blob first).
    fn tree_problems(&self, name: &str, digest: &str) -> Result<Vec<BadObject>, StoreError> {
        let state = self.state(digest)?;
        if state != ObjectState::Intact {
            return Ok(vec![BadObject {
                name: name.to_string(),
                digest: digest.to_string(),
                state,
            }]);
        }
        let mut bad = Vec::new();
        for file in self.read_tree(digest)?.files {
            let state = self.state(&file.digest)?;
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
}

/// Action records: a stage key → the manifest and output digests its run published.
pub trait ActionCache: Send + Sync {
    /// The stored record for `key`, as stored: neither its key nor its blobs checked.
    fn get_action(&self, key: &str) -> Result<ActionEntry, StoreError>;

    /// Publish a record, replacing any for its key. Call only once every blob it names is published.
    fn put_action(&self, record: &ActionRecord) -> Result<(), StoreError>;

    /// Delete the record for `key`; nothing to delete is not an error.
    fn remove_action(&self, key: &str) -> Result<(), StoreError>;

    /// Move an unreadable record aside, so that the key's next run rewrites it. Returns where it went.
    fn quarantine_action(&self, key: &str) -> Result<Option<String>, StoreError>;

    /// Every key with a record, sorted.
    fn action_keys(&self) -> Result<Vec<String>, StoreError>;

    /// The entry for `key` with every blob it names checked in `blobs` (cheaply, through
    /// [`BlobStore::state`]): a [`Lookup::Hit`] only when all are intact.
    fn lookup(&self, key: &str, blobs: &dyn BlobStore) -> Result<Lookup, StoreError> {
        let record = match self.get_action(key)? {
            ActionEntry::Absent => return Ok(Lookup::Miss),
            ActionEntry::Unreadable { reason } => return Ok(Lookup::Unreadable { reason }),
            ActionEntry::Found(record) => record,
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
                bad.extend(blobs.tree_problems(name, digest)?);
                continue;
            }
            let state = blobs.state(digest)?;
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

/// Behaviour checks any [`BlobStore`] + [`ActionCache`] pair must pass; `scratch` is a local folder for the
/// files it publishes. `corrupt` overwrites a stored blob's bytes in place (each back-end knows how).
#[cfg(test)]
pub(crate) fn conformance(
    blobs: &dyn BlobStore,
    actions: &dyn ActionCache,
    scratch: &Path,
    corrupt: &dyn Fn(&str, &[u8]),
) {
    use std::collections::{BTreeMap, BTreeSet};
    let digest_of = crate::hashing::digest_bytes;

    // put_bytes / put_file: content-addressed, idempotent, the source consumed.
    let d = blobs.put_bytes(b"hello").unwrap();
    assert_eq!(d, digest_of(b"hello"));
    assert_eq!(blobs.put_bytes(b"hello").unwrap(), d);
    let src = scratch.join("a");
    fs::write(&src, b"hello").unwrap();
    assert_eq!(blobs.put_file(&src).unwrap(), (d.clone(), 5));
    assert!(!src.exists());
    assert!(blobs.contains(&d));
    assert_eq!(blobs.state(&d).unwrap(), ObjectState::Intact);
    assert_eq!(blobs.verify(&d).unwrap(), ObjectState::Intact);
    assert_eq!(blobs.read(&d).unwrap(), b"hello");
    assert_eq!(fs::read(blobs.materialize(&d).unwrap()).unwrap(), b"hello");

    let absent = digest_of(b"never stored");
    assert!(!blobs.contains(&absent));
    assert_eq!(blobs.state(&absent).unwrap(), ObjectState::Missing);
    assert_eq!(blobs.verify(&absent).unwrap(), ObjectState::Missing);
    assert_eq!(blobs.quarantine_blob(&absent).unwrap(), None);

    // A corrupt blob is reported, and publishing good bytes over it replaces it.
    corrupt(&d, b"hellp");
    assert_eq!(blobs.verify(&d).unwrap(), ObjectState::Corrupt);
    assert_eq!(blobs.state(&d).unwrap(), ObjectState::Corrupt);
    assert_eq!(blobs.put_bytes(b"hello").unwrap(), d);
    assert_eq!(blobs.state(&d).unwrap(), ObjectState::Intact);
    assert_eq!(blobs.read(&d).unwrap(), b"hello");

    // Quarantine takes a blob out of reach; it can be published again.
    corrupt(&d, b"hellp");
    assert!(blobs.quarantine_blob(&d).unwrap().is_some());
    assert_eq!(blobs.state(&d).unwrap(), ObjectState::Missing);
    let src = scratch.join("b");
    fs::write(&src, b"hello").unwrap();
    assert_eq!(blobs.put_file(&src).unwrap().0, d);

    // Folders: a tree of blobs, materialised read-only with the same bytes.
    let folder = scratch.join("model");
    fs::create_dir_all(folder.join("sub")).unwrap();
    fs::write(folder.join("w.bin"), b"weights").unwrap();
    fs::write(folder.join("sub/cfg.json"), b"{}").unwrap();
    let (tree_digest, total) = blobs.put_tree(&folder).unwrap();
    assert_eq!(total, 9);
    assert!(!folder.exists());
    let tree = blobs.read_tree(&tree_digest).unwrap();
    let paths: Vec<&str> = tree.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["sub/cfg.json", "w.bin"]);
    let out = blobs.materialize_tree(&tree_digest).unwrap();
    assert_eq!(fs::read(out.join("w.bin")).unwrap(), b"weights");
    assert_eq!(fs::read(out.join("sub/cfg.json")).unwrap(), b"{}");
    assert!(blobs
        .tree_problems("model", &tree_digest)
        .unwrap()
        .is_empty());

    // Listing and removal.
    let listed: BTreeMap<Digest, u64> = blobs.list_blobs().unwrap().into_iter().collect();
    assert_eq!(listed.get(&d), Some(&5));
    assert!(listed.contains_key(&tree_digest));
    let gone = blobs.put_bytes(b"to remove").unwrap();
    blobs.remove_blob(&gone).unwrap();
    assert_eq!(blobs.state(&gone).unwrap(), ObjectState::Missing);
    assert!(blobs.remove_blob(&gone).is_err());

    // Actions: a hit only while every named blob is intact, file or folder.
    assert_eq!(actions.lookup("k1", blobs).unwrap(), Lookup::Miss);
    assert_eq!(actions.get_action("k1").unwrap(), ActionEntry::Absent);
    let manifest = blobs.put_bytes(b"{\"m\":1}").unwrap();
    let output = blobs.put_bytes(b"data").unwrap();
    let record = ActionRecord {
        key: "k1".into(),
        manifest: manifest.clone(),
        outputs: [
            ("o".to_string(), output.clone()),
            ("model".to_string(), tree_digest.clone()),
        ]
        .into(),
        folders: BTreeSet::from(["model".to_string()]),
    };
    actions.put_action(&record).unwrap();
    actions.put_action(&record).unwrap();
    assert_eq!(
        actions.get_action("k1").unwrap(),
        ActionEntry::Found(record.clone())
    );
    assert_eq!(
        actions.lookup("k1", blobs).unwrap(),
        Lookup::Hit(record.clone())
    );
    assert_eq!(actions.action_keys().unwrap(), ["k1"]);

    blobs.remove_blob(&output).unwrap();
    let Lookup::Broken { bad, .. } = actions.lookup("k1", blobs).unwrap() else {
        panic!("a record naming a missing blob must not be a hit");
    };
    assert_eq!(
        bad,
        [BadObject {
            name: "o".into(),
            digest: output.clone(),
            state: ObjectState::Missing
        }]
    );
    assert_eq!(blobs.put_bytes(b"data").unwrap(), output);
    let weights = digest_of(b"weights");
    corrupt(&weights, b"weighs");
    let Lookup::Broken { bad, .. } = actions.lookup("k1", blobs).unwrap() else {
        panic!("a record naming a corrupt file of a folder must not be a hit");
    };
    assert_eq!(bad.len(), 1);
    assert_eq!(
        (bad[0].name.as_str(), bad[0].state),
        ("model/w.bin", ObjectState::Corrupt)
    );

    // Removal is idempotent.
    actions
        .put_action(&ActionRecord {
            key: "k2".into(),
            ..record.clone()
        })
        .unwrap();
    assert_eq!(actions.action_keys().unwrap(), ["k1", "k2"]);
    actions.remove_action("k2").unwrap();
    actions.remove_action("k2").unwrap();
    assert_eq!(actions.lookup("k2", blobs).unwrap(), Lookup::Miss);
    assert_eq!(actions.quarantine_action("k2").unwrap(), None);
    assert_eq!(actions.action_keys().unwrap(), ["k1"]);
}
