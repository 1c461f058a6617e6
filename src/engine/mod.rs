//! Planning and running: which stages are stale and why, and running the stale ones in parallel.
//!
//! Keys are computed before running, in topological order, from the outputs of upstream stages. An upstream
//! stage that re-runs but produces identical bytes leaves its dependants' keys unchanged, so they stay
//! cached (early cutoff). A failing stage stops only its descendants. Results never depend on `-j`: stages
//! see a thread budget, not a schedule, and every lock entry is a function of the key.
//!
//! - [`plan`]: keys, stale reasons, files named by params; `status` is planning alone.
//! - [`schedule`]: `run`'s loop: cached stages settle at once, stale ones launch up to `-j`, failures and
//!   Ctrl-C reach descendants only.
//! - [`ancestry`]: every upstream run's manifest, for kinds that read how results were made (`audit`).
//! - [`execute`]: one stage under its key's lock, from verified inputs to the published action record.
//! - here: the project (its store, lock file and project lock) and the engine's errors.

pub mod ancestry;
mod cluster;
mod execute;
mod plan;
mod schedule;

pub use cluster::run_job;
pub use plan::{resolve_param_files, status, ResolvedFile, StageStatus, State};
pub use schedule::{run, unknown_stage, JobSink, Outcome, RunOptions, StageResult};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::ConfigErrors;
use crate::lock::{LockError, LockFile};
use crate::rawinput::{hash_dataset, RawInputError, StatCache};
use crate::stage::DatasetView;
use crate::store::{ActionCache, BlobStore, LocalStore, Lookup, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    RawInput(#[from] RawInputError),
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error("unknown stage `{0}`{1}")]
    UnknownStage(String, String),
    #[error("{0}")]
    Other(String),
}

/// Where a project's files are: the config, its lock file beside it, the store under `artifacts/`.
///
/// Results are published and looked up through [`Project::blobs`] and [`Project::actions`]; the local store
/// itself serves what only a local filesystem can: key locks, scratch and checkpoint folders, the project
/// lock, run stats and the stat cache.
pub struct Project {
    pub dir: PathBuf,
    pub lock_path: PathBuf,
    pub store: LocalStore,
    /// The shared cache stale stages are looked up in (and results uploaded to), when one is configured.
    pub remote: Option<crate::remote::Remote>,
    /// Set at the remote's first failure: a cache that is down costs one warning, not one per stage.
    remote_down: std::sync::atomic::AtomicBool,
}

/// `pipeline.yaml` locks into `pipeline.lock`, `pipeline.study.yaml` into `pipeline.study.lock`: two
/// profiles in one folder share the store (and every result they have in common) but never each other's lock.
pub fn lock_file_name(config_path: &Path) -> String {
    let name = config_path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("pipeline.yaml");
    let stem = name
        .strip_suffix(".yaml")
        .or_else(|| name.strip_suffix(".yml"))
        .unwrap_or(name);
    format!("{stem}.lock")
}

impl Project {
    pub fn open(config_path: &Path) -> Result<Project, EngineError> {
        let dir = config_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let store = LocalStore::open(&dir.join("artifacts"))?;
        Ok(Project::new(
            dir.clone(),
            dir.join(lock_file_name(config_path)),
            store,
        ))
    }

    /// A project over an opened store (`verify --rerun` uses a scratch one), with no remote.
    pub fn new(dir: PathBuf, lock_path: PathBuf, store: LocalStore) -> Project {
        Project {
            dir,
            lock_path,
            store,
            remote: None,
            remote_down: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Look stale stages up in `remote` (and upload new results to it unless it is read-only).
    pub fn with_remote(mut self, remote: Option<crate::remote::Remote>) -> Project {
        self.remote = remote;
        self
    }

    /// The remote, unless none is configured or it failed earlier in this process.
    fn live_remote(&self) -> Option<&crate::remote::Remote> {
        self.remote
            .as_ref()
            .filter(|_| !self.remote_down.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn remote_failed(&self, remote: &crate::remote::Remote, error: &crate::remote::RemoteError) {
        if !self
            .remote_down
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            eprintln!(
                "warning: {error}; going on without the remote cache {} for the rest of this run",
                remote.url()
            );
        }
    }

    /// The local lookup of `key`; when it is not a hit, the remote's result brought home (downloaded,
    /// verified, published locally) and looked up again. The flag says whether it came from the remote.
    pub fn lookup_or_pull(&self, key: &str) -> Result<(Lookup, bool), StoreError> {
        let local = self.lookup(key)?;
        let Some(remote) = self.live_remote() else {
            return Ok((local, false));
        };
        if matches!(local, Lookup::Hit(_)) {
            return Ok((local, false));
        }
        match remote.fetch(key, self.blobs(), self.actions()) {
            Ok(crate::remote::Fetched::Hit { record, downloaded }) => {
                tracing::info!(key = %crate::hashing::short(key), blobs = downloaded.blobs, bytes = downloaded.bytes, "pulled from the remote cache");
                // The record is published locally only after every blob it names: a local lookup now hits.
                Ok((self.lookup(&record.key)?, true))
            }
            Ok(crate::remote::Fetched::Miss) => Ok((local, false)),
            Ok(crate::remote::Fetched::Rejected(reason)) => {
                eprintln!(
                    "warning: remote cache {}: the result for key {} is unusable ({reason}); ignored",
                    remote.url(),
                    crate::hashing::short(key)
                );
                Ok((local, false))
            }
            Err(crate::remote::RemoteError::Store(e)) => Err(e),
            Err(e) => {
                self.remote_failed(remote, &e);
                Ok((local, false))
            }
        }
    }

    /// Upload a freshly published result to the remote, unless none is configured or it is read-only. A
    /// failed upload is a warning: the result is safe locally and `genrelab push` can send it later.
    pub fn share(&self, record: &crate::store::ActionRecord) {
        let Some(remote) = self.live_remote().filter(|r| !r.read_only()) else {
            return;
        };
        match remote.upload(record, self.blobs()) {
            Ok(uploaded) => tracing::info!(
                key = %crate::hashing::short(&record.key),
                blobs = uploaded.sent.blobs,
                bytes = uploaded.sent.bytes,
                "uploaded to the remote cache"
            ),
            Err(e) => self.remote_failed(remote, &e),
        }
    }

    /// Whether the remote holds a record for `key` (blobs unchecked), for `status`.
    pub fn remote_peek(&self, key: &str) -> Option<crate::store::ActionRecord> {
        let remote = self.live_remote()?;
        match remote.peek(key) {
            Ok(found) => found,
            Err(e) => {
                self.remote_failed(remote, &e);
                None
            }
        }
    }

    /// The blob store results are published to and read from.
    pub fn blobs(&self) -> &dyn BlobStore {
        &self.store
    }

    /// The action cache: stage key -> published outputs.
    pub fn actions(&self) -> &dyn ActionCache {
        &self.store
    }

    /// The action cache's entry for `key`, every blob it names checked.
    pub fn lookup(&self, key: &str) -> Result<Lookup, StoreError> {
        self.actions().lookup(key, self.blobs())
    }

    /// Edit pipeline.lock under the project's lock-file lock.
    pub fn update_lock(&self, edit: impl FnOnce(&mut LockFile)) -> Result<LockFile, LockError> {
        let guard = self.store.root().join("locks").join("pipeline.lock.guard");
        LockFile::update(&self.lock_path, &guard, edit)
    }

    /// Take the project lock: `run` and `gc` hold it exclusively (one writer of the store and the lock file
    /// at a time, so a gc never deletes what a running plan is about to record, and two runs never
    /// interleave their lock entries); `verify` shares it. A process that must wait says so, naming the
    /// holder.
    pub fn lock(&self, exclusive: bool, what: &str) -> Result<ProjectLock, EngineError> {
        let locks = self.store.root().join("locks");
        let path = locks.join("project.lock");
        let holder_path = locks.join("project.holder");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        let attempt = if exclusive {
            file.try_lock()
        } else {
            file.try_lock_shared()
        };
        match attempt {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&holder_path).unwrap_or_default();
                let holder = holder.trim();
                eprintln!(
                    "{what}: waiting for another genrelab process in this project to finish{}",
                    if holder.is_empty() {
                        String::new()
                    } else {
                        format!(" ({holder})")
                    }
                );
                if exclusive {
                    file.lock().map_err(io(&path))?;
                } else {
                    file.lock_shared().map_err(io(&path))?;
                }
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&path)(e).into()),
        }
        if exclusive {
            // Only for the waiting message: a stale holder file after a kill names a finished process.
            let _ = std::fs::write(
                &holder_path,
                format!("pid {}: genrelab {what}\n", std::process::id()),
            );
        }
        Ok(ProjectLock { _file: file })
    }

    fn stat_cache_path(&self) -> PathBuf {
        self.store.root().join("statcache.json")
    }

    /// Hash the datasets behind `inputs` (`dataset`, `dataset:NAME`; others are skipped), one stat cache
    /// for all, kept for next time. Keyed by input name.
    pub fn hash_datasets<'a>(
        &self,
        pipeline: &crate::config::Pipeline,
        inputs: impl IntoIterator<Item = &'a str>,
    ) -> Result<BTreeMap<String, HashedDataset>, EngineError> {
        let path = self.stat_cache_path();
        let mut cache = StatCache::load(&path);
        let mut rehashed = 0;
        let mut out = BTreeMap::new();
        for input in inputs {
            let Some(config) = pipeline.dataset_for_input(input) else {
                continue;
            };
            let (view, stats) =
                hash_dataset(&config.root, &mut cache, config.follow_external_symlinks)?;
            rehashed += stats.rehashed;
            tracing::info!(
                dataset = input,
                files = stats.files,
                unlisted = view.unlisted.len(),
                rehashed = stats.rehashed,
                bytes = stats.bytes_rehashed,
                "dataset hashed"
            );
            out.insert(
                input.to_string(),
                HashedDataset {
                    view,
                    name: config.name.clone(),
                    root_as_written: config.root_as_written.clone(),
                },
            );
        }
        if rehashed > 0 {
            cache.save(&path)?;
        }
        Ok(out)
    }
}

/// One dataset as hashed for a plan: its view and how pipeline.yaml names it.
#[derive(Debug, Clone)]
pub struct HashedDataset {
    pub view: DatasetView,
    /// `None` for the unnamed `dataset:`.
    pub name: Option<String>,
    pub root_as_written: String,
}

impl HashedDataset {
    /// Its lock entry: what it is, by digest and size.
    pub fn lock_entry(&self) -> crate::lock::DatasetEntry {
        crate::lock::DatasetEntry {
            root: self.root_as_written.clone(),
            digest: self.view.digest.clone(),
            files: self.view.files.len(),
            bytes: self.view.files.iter().map(|f| f.size).sum(),
        }
    }
}

/// Held while a process runs, collects or verifies; the kernel releases it when the process ends.
pub struct ProjectLock {
    _file: std::fs::File,
}

#[cfg(test)]
mod tests {
    use super::lock_file_name;
    use std::path::Path;

    #[test]
    fn each_profile_locks_into_its_own_file() {
        assert_eq!(lock_file_name(Path::new("pipeline.yaml")), "pipeline.lock");
        assert_eq!(
            lock_file_name(Path::new("dir/pipeline.study.yaml")),
            "pipeline.study.lock"
        );
        assert_eq!(lock_file_name(Path::new("other.yml")), "other.lock");
        assert_eq!(lock_file_name(Path::new("noext")), "noext.lock");
    }
}
