//! `pipeline.lock`: what the last runs produced, per stage, sorted and diff-friendly; users commit it.
//!
//! Each entry keeps the key's components (code folders' digests, canonical params, input digests), not only
//! the key, so that `status` and `run` can say *why* a stage is stale in one sentence with old and new
//! values. The file is rewritten whole, atomically, under an OS lock, after every stage whose entry changed
//! (never when nothing did): a crash loses at most the stages that were running.
//!
//! The lock always describes one consistent plan: every entry's recorded inputs are the outputs of the
//! entries it names (and the dataset's digest). An entry that no longer agrees, because an upstream stage
//! was re-run with other params or the dataset changed, is dropped on every write rather than left to pair
//! one run's inputs with another run's outputs; `verify` reports any disagreement it finds.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hashing::Digest;
use crate::store::write_atomic;

pub const LOCK_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid lock file: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockFile {
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetEntry>,
    /// The named datasets (`datasets:` in pipeline.yaml), by name; absent when there are none, so a
    /// pipeline with the unnamed `dataset:` alone keeps its lock bytes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub datasets: BTreeMap<String, DatasetEntry>,
    #[serde(default)]
    pub stages: BTreeMap<String, StageEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetEntry {
    pub root: String,
    pub digest: Digest,
    pub files: usize,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageEntry {
    pub kind: String,
    pub key: Digest,
    pub engine_version: u32,
    /// `stages/` folder -> source digest at build time.
    pub code: BTreeMap<String, Digest>,
    pub params: serde_json::Value,
    pub params_digest: Digest,
    /// Input stage -> needed artifact -> digest.
    pub inputs: BTreeMap<String, BTreeMap<String, Digest>>,
    pub outputs: BTreeMap<String, Digest>,
    pub manifest: Digest,
    /// Files named by params: dotted param path -> digest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, Digest>,
}

/// One way a lock entry disagrees with the entries it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inconsistency {
    pub stage: String,
    pub reason: String,
}

impl Default for LockFile {
    fn default() -> Self {
        LockFile {
            version: LOCK_VERSION,
            dataset: None,
            datasets: BTreeMap::new(),
            stages: BTreeMap::new(),
        }
    }
}

const HEADER: &str =
    "# genrelab lock file: written by `genrelab run`, checked by `genrelab verify`. Commit it.\n";

impl LockFile {
    pub fn load(path: &Path) -> Result<LockFile, LockError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LockFile::default()),
            Err(source) => {
                return Err(LockError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        serde_yaml::from_str(&text).map_err(|e| LockError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Entries whose recorded inputs are not what the lock records for those inputs, sorted by stage.
    pub fn inconsistencies(&self) -> Vec<Inconsistency> {
        let mut out = Vec::new();
        for (stage, entry) in &self.stages {
            for (input, artifacts) in &entry.inputs {
                let dataset = if input == crate::stage::DATASET {
                    Some(self.dataset.as_ref())
                } else {
                    input
                        .strip_prefix(crate::config::DATASET_PREFIX)
                        .map(|name| self.datasets.get(name))
                };
                let produced: Option<BTreeMap<String, Digest>> = if let Some(dataset) = dataset {
                    // A dataset provides one artifact, `dataset`, whatever its name.
                    dataset.map(|d| {
                        BTreeMap::from([(crate::stage::DATASET.to_string(), d.digest.clone())])
                    })
                } else {
                    self.stages.get(input).map(|e| e.outputs.clone())
                };
                let Some(produced) = produced else {
                    out.push(Inconsistency {
                        stage: stage.clone(),
                        reason: format!(
                            "it records input `{input}`, which the lock has no entry for"
                        ),
                    });
                    continue;
                };
                for (artifact, digest) in artifacts {
                    let now = produced.get(artifact).map(String::as_str).unwrap_or("none");
                    if now != digest {
                        out.push(Inconsistency {
                            stage: stage.clone(),
                            reason: format!(
                                "it was computed from `{input}` {artifact} {}, but the lock records {} for it",
                                crate::hashing::short(digest),
                                crate::hashing::short(now)
                            ),
                        });
                    }
                }
            }
        }
        out
    }

    /// Drop entries that disagree with their inputs' entries, until every remaining one agrees.
    pub fn prune_inconsistent(&mut self) -> Vec<String> {
        let mut dropped = Vec::new();
        loop {
            let bad: std::collections::BTreeSet<String> = self
                .inconsistencies()
                .into_iter()
                .map(|i| i.stage)
                .collect();
            if bad.is_empty() {
                return dropped;
            }
            for stage in bad {
                self.stages.remove(&stage);
                dropped.push(stage);
            }
        }
    }

    pub fn render(&self) -> String {
        let body = serde_yaml::to_string(self).unwrap_or_default();
        format!("{HEADER}{body}")
    }

    /// Read-modify-write under an exclusive OS lock on `guard_path` (kept in the store, not beside the
    /// committed file), so concurrent runs never lose each other's entries.
    pub fn update(
        path: &Path,
        guard_path: &Path,
        edit: impl FnOnce(&mut LockFile),
    ) -> Result<LockFile, LockError> {
        let guard_path = guard_path.to_path_buf();
        let guard = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&guard_path)
            .map_err(|source| LockError::Io {
                path: guard_path.clone(),
                source,
            })?;
        guard.lock().map_err(|source| LockError::Io {
            path: guard_path.clone(),
            source,
        })?;
        let before = LockFile::load(path)?;
        let mut lock = before.clone();
        edit(&mut lock);
        lock.prune_inconsistent();
        // A no-op run must not touch the committed file: no rewrite, no fsync, no mtime change.
        if lock != before || (!path.exists() && !lock.stages.is_empty()) {
            write_atomic(path, lock.render().as_bytes()).map_err(|e| LockError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            })?;
        }
        Ok(lock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_is_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pipeline.lock");
        let entry = |k: &str| StageEntry {
            kind: "toy".into(),
            key: k.into(),
            engine_version: 1,
            code: BTreeMap::new(),
            params: serde_json::json!({"b": 1, "a": 2}),
            params_digest: "p".into(),
            inputs: BTreeMap::new(),
            outputs: BTreeMap::new(),
            manifest: "m".into(),
            files: BTreeMap::new(),
        };
        LockFile::update(&path, &dir.path().join("guard"), |l| {
            l.stages.insert("zeta".into(), entry("z"));
            l.stages.insert("alpha".into(), entry("a"));
        })
        .unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.find("alpha:").unwrap() < text.find("zeta:").unwrap());
        assert!(text.find("a: 2").unwrap() < text.find("b: 1").unwrap());
        let back = LockFile::load(&path).unwrap();
        assert_eq!(back.stages["zeta"].key, "z");
    }

    fn entry(inputs: &[(&str, &str)], output: &str) -> StageEntry {
        StageEntry {
            kind: "toy".into(),
            key: format!("key-{output}"),
            engine_version: 1,
            code: BTreeMap::new(),
            params: serde_json::json!({}),
            params_digest: "p".into(),
            inputs: inputs
                .iter()
                .map(|(stage, digest)| {
                    (
                        stage.to_string(),
                        BTreeMap::from([("data".to_string(), digest.to_string())]),
                    )
                })
                .collect(),
            outputs: BTreeMap::from([("data".to_string(), output.to_string())]),
            manifest: "m".into(),
            files: BTreeMap::new(),
        }
    }

    #[test]
    fn entries_that_disagree_with_their_inputs_are_found_and_pruned_transitively() {
        let mut lock = LockFile::default();
        lock.stages.insert("a".into(), entry(&[], "A1"));
        lock.stages.insert("b".into(), entry(&[("a", "A0")], "B"));
        lock.stages.insert("c".into(), entry(&[("b", "B")], "C"));
        lock.stages.insert("d".into(), entry(&[("a", "A1")], "D"));
        let found = lock.inconsistencies();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].stage, "b");
        assert!(
            found[0].reason.contains("computed from `a` data A0"),
            "{}",
            found[0].reason
        );
        let mut dropped = lock.prune_inconsistent();
        dropped.sort();
        assert_eq!(dropped, ["b", "c"]);
        assert_eq!(lock.stages.keys().collect::<Vec<_>>(), ["a", "d"]);
        assert!(lock.inconsistencies().is_empty());
    }

    #[test]
    fn an_unchanged_lock_is_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pipeline.lock");
        let guard = dir.path().join("guard");
        LockFile::update(&path, &guard, |l| {
            l.stages.insert("a".into(), entry(&[], "A"));
        })
        .unwrap();
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
        let before = inode(&path);
        LockFile::update(&path, &guard, |l| {
            l.stages.insert("a".into(), entry(&[], "A"));
        })
        .unwrap();
        assert_eq!(inode(&path), before, "a no-op update replaced the file");
    }
}
