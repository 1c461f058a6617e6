//! `pipeline.lock`: what the last runs produced, per stage, sorted and diff-friendly; users commit it.
//!
//! Each entry keeps the key's components (code folders' digests, canonical params, input digests), not only
//! the key, so that `status` and `run` can say *why* a stage is stale in one sentence with old and new
//! values. The file is rewritten whole, atomically, under an OS lock, after every finished stage: a crash
//! loses at most the stage that was running.

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
}

impl Default for LockFile {
    fn default() -> Self {
        LockFile {
            version: LOCK_VERSION,
            dataset: None,
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
        let mut lock = LockFile::load(path)?;
        edit(&mut lock);
        write_atomic(path, lock.render().as_bytes()).map_err(|e| LockError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
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
}
