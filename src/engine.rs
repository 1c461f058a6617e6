//! Planning and running: which stages are stale and why, and running the stale ones in parallel.
//!
//! Keys are computed before running, in topological order, from the outputs of upstream stages. An upstream
//! stage that re-runs but produces identical bytes leaves its dependants' keys unchanged, so they stay
//! cached (early cutoff). A failing stage stops only its descendants. Results never depend on `-j`: stages
//! see a thread budget, not a schedule, and every lock entry is a function of the key.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use crate::config::{ConfigErrors, Pipeline};
use crate::dag::Dag;
use crate::hashing::{self, short, Digest, KeyInput, StageKeyInputs, ENGINE_VERSION};
use crate::lock::{DatasetEntry, LockError, LockFile, StageEntry};
use crate::manifest::{DatasetInfo, Manifest, ManifestInput, OutputInfo, ParamFileInfo};
use crate::rawinput::{hash_dataset, RawInputError, StatCache};
use crate::reason::{diff, recorded_input_order, StaleReason};
use crate::stage::{
    is_folder_output, output_name, DatasetView, Determinism, InputArtifact, StageContext, DATASET,
};
use crate::store::{
    ActionCache, ActionRecord, BlobStore, LocalStore, Lookup, ObjectState, StoreError,
};

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
}

impl Project {
    pub fn open(config_path: &Path) -> Result<Project, EngineError> {
        let dir = config_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let store = LocalStore::open(&dir.join("artifacts"))?;
        Ok(Project {
            lock_path: dir.join("pipeline.lock"),
            dir,
            store,
        })
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

    /// Hash the dataset folder (stat cache first), keeping the cache for next time.
    pub fn hash_dataset(
        &self,
        dataset: &crate::config::DatasetConfig,
    ) -> Result<DatasetView, EngineError> {
        let path = self.stat_cache_path();
        let mut cache = StatCache::load(&path);
        let (view, stats) =
            hash_dataset(&dataset.root, &mut cache, dataset.follow_external_symlinks)?;
        if stats.rehashed > 0 {
            cache.save(&path)?;
        }
        tracing::info!(
            files = stats.files,
            unlisted = view.unlisted.len(),
            rehashed = stats.rehashed,
            bytes = stats.bytes_rehashed,
            "dataset hashed"
        );
        Ok(view)
    }
}

/// Held while a process runs, collects or verifies; the kernel releases it when the process ends.
pub struct ProjectLock {
    _file: std::fs::File,
}

/// A file named by a stage's params, read and hashed once per plan.
#[derive(Debug, Clone)]
pub struct ResolvedFile {
    pub param: String,
    pub written: String,
    pub bytes: Vec<u8>,
    pub digest: Digest,
}

/// Files larger than this are refused: a list of track names is kilobytes, and the bytes are kept in memory
/// and copied into the store.
const MAX_PARAM_FILE_BYTES: u64 = 16 << 20;

/// Read every file the stages' params name (see [`crate::stage::ParamFile`]): resolved against the dataset
/// root, confined to the project and dataset folders after resolving links, bounded in size. All problems
/// are reported together, located at the stage in pipeline.yaml; file contents never appear in a message.
pub fn resolve_param_files(
    project: &Project,
    pipeline: &Pipeline,
    dag: &Dag,
) -> Result<Vec<Vec<ResolvedFile>>, EngineError> {
    let canonical = |p: &Path| std::fs::canonicalize(p).ok();
    let allowed: Vec<PathBuf> = [canonical(&project.dir), canonical(&pipeline.dataset.root)]
        .into_iter()
        .flatten()
        .collect();
    let mut errors = Vec::new();
    let mut all = Vec::with_capacity(dag.nodes.len());
    for node in &dag.nodes {
        let mut files = Vec::new();
        for declared in node.kind.param_files(&node.params) {
            let leaf = declared.param.rsplit('.').next().unwrap_or(&declared.param);
            let mut fail = |why: String| {
                errors.push(pipeline.locator().error(
                    &node.name,
                    0,
                    Some(leaf),
                    format!("stage `{}`: params.{}: {why}", node.name, declared.param),
                ))
            };
            let joined = pipeline.dataset.root.join(&declared.path);
            let Some(real) = canonical(&joined) else {
                fail(format!(
                    "{} does not exist (paths are relative to the dataset root {})",
                    joined.display(),
                    pipeline.dataset.root_as_written
                ));
                continue;
            };
            if !allowed.iter().any(|root| real.starts_with(root)) {
                fail(format!(
                    "{} is outside the project and dataset folders; copy the file into the project",
                    declared.path
                ));
                continue;
            }
            let meta = match std::fs::metadata(&real) {
                Ok(m) => m,
                Err(e) => {
                    fail(format!("{}: {e}", declared.path));
                    continue;
                }
            };
            if !meta.is_file() {
                fail(format!("{} is not a regular file", declared.path));
                continue;
            }
            if meta.len() > MAX_PARAM_FILE_BYTES {
                fail(format!(
                    "{} is {} bytes; at most {MAX_PARAM_FILE_BYTES} are read",
                    declared.path,
                    meta.len()
                ));
                continue;
            }
            match std::fs::read(&real) {
                Ok(bytes) => files.push(ResolvedFile {
                    param: declared.param.clone(),
                    written: declared.path.clone(),
                    digest: hashing::digest_bytes(&bytes),
                    bytes,
                }),
                Err(e) => fail(format!("{}: {e}", declared.path)),
            }
        }
        all.push(files);
    }
    if errors.is_empty() {
        Ok(all)
    } else {
        errors.sort_by_key(|e| (e.line, e.column));
        Err(ConfigErrors(errors).into())
    }
}

fn file_digests(files: &[ResolvedFile]) -> BTreeMap<String, Digest> {
    files
        .iter()
        .map(|f| (f.param.clone(), f.digest.clone()))
        .collect()
}

/// A stage's state as `status` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    UpToDate,
    /// Key differs from the lock, but a result for the new key is already in the store.
    Cached,
    Stale,
}

#[derive(Debug, Clone)]
pub struct StageStatus {
    pub name: String,
    pub kind: String,
    pub state: State,
    pub key: Option<Digest>,
    pub reasons: Vec<StaleReason>,
    pub summary: Vec<String>,
}

/// The key of one stage and everything it is made of.
struct Planned {
    key: Digest,
    code: BTreeMap<String, Digest>,
    inputs: Vec<KeyInput>,
    files: BTreeMap<String, Digest>,
    seed: [u8; 32],
}

fn plan_stage(
    dag: &Dag,
    idx: usize,
    upstream: &BTreeMap<String, BTreeMap<String, Digest>>,
    files: &[ResolvedFile],
) -> Option<Planned> {
    let node = &dag.nodes[idx];
    let code = hashing::code_dirs(node.kind.code_dirs());
    let fingerprint = hashing::code_fingerprint(&code);
    let mut inputs = Vec::new();
    for input in &node.inputs {
        let outputs = upstream.get(input)?;
        let artifacts: BTreeMap<String, Digest> = node
            .sources
            .iter()
            .filter(|(_, providers)| providers.contains(input))
            .filter_map(|(artifact, _)| Some((artifact.clone(), outputs.get(artifact)?.clone())))
            .collect();
        inputs.push(KeyInput {
            stage: input.clone(),
            artifacts,
        });
    }
    let files = file_digests(files);
    let key_inputs = StageKeyInputs {
        engine_version: ENGINE_VERSION,
        kind: node.kind.kind(),
        code_fingerprint: &fingerprint,
        params: &node.params,
        inputs: &inputs,
        files: &files,
    };
    Some(Planned {
        key: key_inputs.key(),
        seed: key_inputs.seed_material(),
        code,
        inputs,
        files,
    })
}

fn reasons_against_lock(
    lock: &LockFile,
    dag: &Dag,
    idx: usize,
    planned: &Planned,
) -> Vec<StaleReason> {
    let node = &dag.nodes[idx];
    match lock.stages.get(&node.name) {
        None => vec![StaleReason::NeverRun],
        Some(entry) if entry.key == planned.key => Vec::new(),
        Some(entry) => {
            let mut reasons = diff(
                entry,
                ENGINE_VERSION,
                node.kind.kind(),
                &planned.code,
                &node.params,
                &planned.inputs,
            );
            let params: BTreeSet<&String> =
                entry.files.keys().chain(planned.files.keys()).collect();
            for param in params {
                let old = entry.files.get(param).cloned().unwrap_or_default();
                let new = planned.files.get(param).cloned().unwrap_or_default();
                if old != new {
                    reasons.push(StaleReason::FileChanged {
                        param: param.clone(),
                        old,
                        new,
                    });
                }
            }
            if !reasons.is_empty() {
                reasons
            } else if entry.engine_version != ENGINE_VERSION {
                vec![StaleReason::EngineChanged {
                    old: entry.engine_version,
                    new: ENGINE_VERSION,
                }]
            } else if let Some(old) = recorded_input_order(
                entry,
                node.kind.kind(),
                &planned.code,
                &node.params,
                &planned.inputs,
                &planned.files,
            ) {
                // The lock keeps inputs as a map, so only the key remembers their order.
                vec![StaleReason::InputsReordered {
                    old,
                    new: planned.inputs.iter().map(|i| i.stage.clone()).collect(),
                }]
            } else {
                // Same engine, same components in any order, yet another key: the entry no longer agrees
                // with itself, which only an edit or damage to pipeline.lock can do.
                vec![StaleReason::LockKeyMismatch {
                    recorded: entry.key.clone(),
                    computed: planned.key.clone(),
                }]
            }
        }
    }
}

fn load_manifest(blobs: &dyn BlobStore, digest: &str) -> Option<Manifest> {
    blobs
        .read(digest)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
}

/// What `status` shows: every stage's state and reasons, without running anything.
pub fn status(
    project: &Project,
    pipeline: &Pipeline,
    dag: &Dag,
) -> Result<Vec<StageStatus>, EngineError> {
    let lock = LockFile::load(&project.lock_path)?;
    let files = resolve_param_files(project, pipeline, dag)?;
    let mut upstream: BTreeMap<String, BTreeMap<String, Digest>> = BTreeMap::new();
    if dag.uses_dataset() {
        let view = project.hash_dataset(&pipeline.dataset)?;
        upstream.insert(
            DATASET.into(),
            BTreeMap::from([(DATASET.to_string(), view.digest)]),
        );
    }
    let mut out = Vec::new();
    for &idx in &dag.order {
        let node = &dag.nodes[idx];
        let Some(planned) = plan_stage(dag, idx, &upstream, &files[idx]) else {
            let stale_input = node
                .inputs
                .iter()
                .find(|i| !upstream.contains_key(*i))
                .cloned()
                .unwrap_or_default();
            out.push(StageStatus {
                name: node.name.clone(),
                kind: node.kind.kind().into(),
                state: State::Stale,
                key: None,
                reasons: vec![StaleReason::UpstreamStale { stage: stale_input }],
                summary: Vec::new(),
            });
            continue;
        };
        let mut reasons = reasons_against_lock(&lock, dag, idx, &planned);
        let (state, record) = match project.lookup(&planned.key)? {
            Lookup::Hit(record) if reasons.is_empty() => (State::UpToDate, Some(record)),
            Lookup::Hit(record) => (State::Cached, Some(record)),
            other => {
                // What is wrong with the stored result matters more than why the key moved: put it first.
                let mut why = broken_reasons(&other);
                if why.is_empty() && reasons.is_empty() {
                    why.push(StaleReason::OutputsMissing {
                        key: planned.key.clone(),
                    });
                }
                why.append(&mut reasons);
                reasons = why;
                (State::Stale, None)
            }
        };
        let summary = record
            .as_ref()
            .and_then(|r| load_manifest(project.blobs(), &r.manifest))
            .map(|m| m.summary)
            .unwrap_or_default();
        if let Some(record) = record {
            upstream.insert(node.name.clone(), record.outputs);
        }
        out.push(StageStatus {
            name: node.name.clone(),
            kind: node.kind.kind().into(),
            state,
            key: Some(planned.key),
            reasons,
            summary,
        });
    }
    Ok(out)
}

/// Why a stored result cannot be used, one reason per bad object (empty for a plain miss).
fn broken_reasons(lookup: &Lookup) -> Vec<StaleReason> {
    match lookup {
        Lookup::Broken { bad, .. } => bad
            .iter()
            .map(|b| StaleReason::OutputBroken {
                name: if b.name == "manifest" {
                    "manifest".to_string()
                } else {
                    format!("output `{}`", b.name)
                },
                digest: b.digest.clone(),
                corrupt: b.state == ObjectState::Corrupt,
            })
            .collect(),
        Lookup::Unreadable { reason } => vec![StaleReason::RecordUnreadable {
            reason: reason.clone(),
        }],
        Lookup::Hit(_) | Lookup::Miss => Vec::new(),
    }
}

/// Move what a broken lookup found corrupt out of the way, so that the stage's re-run publishes good bytes
/// and nothing reads the bad ones meanwhile.
fn set_aside(
    blobs: &dyn BlobStore,
    actions: &dyn ActionCache,
    key: &str,
    lookup: &Lookup,
) -> Result<(), StoreError> {
    match lookup {
        Lookup::Broken { bad, .. } => {
            for b in bad.iter().filter(|b| b.state == ObjectState::Corrupt) {
                if let Some(to) = blobs.quarantine_blob(&b.digest)? {
                    tracing::warn!(digest = %b.digest, to = %to, "corrupt object moved aside");
                }
            }
            Ok(())
        }
        Lookup::Unreadable { .. } => actions.quarantine_action(key).map(|_| ()),
        Lookup::Hit(_) | Lookup::Miss => Ok(()),
    }
}

#[derive(Clone, Default)]
pub struct RunOptions {
    pub until: Option<String>,
    pub force: Vec<String>,
    pub jobs: usize,
    /// Set (by Ctrl-C) to stop: no stage starts after it, running ones stop at their next safe point, and
    /// the store and lock stay consistent (checkpoints are kept for the next run to resume from).
    pub cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Where stages' progress events go; none: dropped.
    pub on_progress: Option<crate::stage::ProgressSink>,
}

/// Why a stage did not publish.
enum Stop {
    Failed(String),
    Cancelled,
}

impl From<String> for Stop {
    fn from(message: String) -> Stop {
        Stop::Failed(message)
    }
}

/// How one stage ended in a run.
#[derive(Debug, Clone)]
pub enum Outcome {
    Ran {
        reasons: Vec<StaleReason>,
        key: Digest,
        seconds: f64,
    },
    Cached {
        reasons: Vec<StaleReason>,
        key: Digest,
    },
    Failed {
        error: String,
    },
    Skipped {
        failed_upstream: String,
    },
    /// Stopped by a cancelled run (Ctrl-C), or never started because of it.
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct StageResult {
    pub name: String,
    pub outcome: Outcome,
    pub summary: Vec<String>,
}

impl StageResult {
    /// The line `run` prints: `features: ran (params.n_mels changed 128 → 64) 3fa2c1d0`.
    pub fn line(&self) -> String {
        let n = &self.name;
        match &self.outcome {
            Outcome::Ran {
                reasons,
                key,
                seconds,
            } => {
                format!(
                    "{n}: ran ({}) {} in {seconds:.1} s",
                    crate::reason::sentence(reasons),
                    short(key)
                )
            }
            Outcome::Cached { reasons, key } if reasons.is_empty() => {
                format!("{n}: cached (up to date) {}", short(key))
            }
            Outcome::Cached { reasons, key } => format!(
                "{n}: cached ({}; result restored from the store) {}",
                crate::reason::sentence(reasons),
                short(key)
            ),
            Outcome::Failed { error } => format!("{n}: FAILED: {error}"),
            Outcome::Cancelled => format!("{n}: cancelled (run again to resume)"),
            Outcome::Skipped { failed_upstream } => {
                format!("{n}: skipped (upstream `{failed_upstream}` failed)")
            }
        }
    }

    pub fn failed(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::Failed { .. } | Outcome::Skipped { .. } | Outcome::Cancelled
        )
    }
}

enum Slot {
    Pending,
    Running,
    Done(ActionRecord),
    Broken,
}

struct Job<'f> {
    idx: usize,
    planned: Planned,
    reasons: Vec<StaleReason>,
    forced: bool,
    files: &'f [ResolvedFile],
}

/// Run every stale stage (of `--until`'s ancestors, when given), calling `report` as each stage ends.
/// `--until` and `--force` take a stage, a family member or a family (all its members).
pub fn run(
    project: &Project,
    pipeline: &Pipeline,
    dag: &Dag,
    options: &RunOptions,
    mut report: impl FnMut(&StageResult),
) -> Result<Vec<StageResult>, EngineError> {
    let jobs = options.jobs.max(1);
    let cancelled = || options.cancel.load(std::sync::atomic::Ordering::Relaxed);
    let _project_lock = project.lock(true, "run")?;
    let files = resolve_param_files(project, pipeline, dag)?;
    let selected: BTreeSet<usize> = match &options.until {
        Some(name) => dag
            .select(name)
            .ok_or_else(|| unknown_stage(dag, name))?
            .into_iter()
            .flat_map(|idx| dag.ancestors_and_self(idx))
            .collect(),
        None => (0..dag.nodes.len()).collect(),
    };
    let mut forced_stages = BTreeSet::new();
    for name in &options.force {
        forced_stages.extend(dag.select(name).ok_or_else(|| unknown_stage(dag, name))?);
    }
    let dataset = if selected
        .iter()
        .any(|&i| dag.nodes[i].inputs.iter().any(|x| x == DATASET))
    {
        Some(project.hash_dataset(&pipeline.dataset)?)
    } else {
        None
    };
    // Reasons are told against the lock as it was before this run touched it: recording the new dataset
    // drops the entries computed from the old one.
    let lock = LockFile::load(&project.lock_path)?;
    if let Some(view) = &dataset {
        let bytes = view.files.iter().map(|f| f.size).sum();
        let entry = DatasetEntry {
            root: pipeline.dataset.root_as_written.clone(),
            digest: view.digest.clone(),
            files: view.files.len(),
            bytes,
        };
        project.update_lock(|lock| lock.dataset = Some(entry))?;
    }
    let multi = indicatif::MultiProgress::new();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .build()
        .map_err(|e| EngineError::Other(format!("cannot start {jobs} worker threads: {e}")))?;

    let mut slots: Vec<Slot> = (0..dag.nodes.len()).map(|_| Slot::Pending).collect();
    let mut results = Vec::new();
    let mut running = 0usize;
    let (tx, rx) = mpsc::channel::<(usize, Result<(ActionRecord, Outcome, Vec<String>), Stop>)>();

    std::thread::scope(|scope| -> Result<(), EngineError> {
        loop {
            // Settle every pending stage that can be settled without running: failures propagate, and
            // stages whose result is in the store are cached. Then launch what must run, up to `jobs`.
            let mut progressed = true;
            while progressed {
                progressed = false;
                for &idx in &dag.order {
                    if !selected.contains(&idx) || !matches!(slots[idx], Slot::Pending) {
                        continue;
                    }
                    let node = &dag.nodes[idx];
                    let deps: Vec<usize> =
                        node.inputs.iter().filter_map(|i| dag.index(i)).collect();
                    let ready = deps.iter().all(|&d| matches!(slots[d], Slot::Done(_)));
                    let broken_dep = deps.iter().find(|&&d| matches!(slots[d], Slot::Broken));
                    // After Ctrl-C nothing starts (a cached result is not even looked up); a failure
                    // upstream skips the stage.
                    let stop = match broken_dep {
                        _ if cancelled() && (ready || broken_dep.is_some()) => {
                            Some(Outcome::Cancelled)
                        }
                        Some(&bad) => Some(Outcome::Skipped {
                            failed_upstream: dag.nodes[bad].name.clone(),
                        }),
                        None => None,
                    };
                    if let Some(outcome) = stop {
                        let result = StageResult {
                            name: node.name.clone(),
                            outcome,
                            summary: Vec::new(),
                        };
                        report(&result);
                        results.push(result);
                        slots[idx] = Slot::Broken;
                        progressed = true;
                        continue;
                    }
                    if !deps.iter().all(|&d| matches!(slots[d], Slot::Done(_))) {
                        continue;
                    }
                    let mut upstream: BTreeMap<String, BTreeMap<String, Digest>> = deps
                        .iter()
                        .filter_map(|&d| match &slots[d] {
                            Slot::Done(r) => Some((dag.nodes[d].name.clone(), r.outputs.clone())),
                            _ => None,
                        })
                        .collect();
                    if let Some(view) = &dataset {
                        upstream.insert(
                            DATASET.into(),
                            BTreeMap::from([(DATASET.to_string(), view.digest.clone())]),
                        );
                    }
                    let Some(planned) = plan_stage(dag, idx, &upstream, &files[idx]) else {
                        continue;
                    };
                    let forced = forced_stages.contains(&idx);
                    let mut reasons = reasons_against_lock(&lock, dag, idx, &planned);
                    let lookup = project.lookup(&planned.key)?;
                    if let (Lookup::Hit(record), false) = (&lookup, forced) {
                        let summary = load_manifest(project.blobs(), &record.manifest)
                            .map(|m| m.summary)
                            .unwrap_or_default();
                        finish(project, dag, idx, &planned, record)?;
                        let result = StageResult {
                            name: node.name.clone(),
                            outcome: Outcome::Cached {
                                reasons,
                                key: planned.key.clone(),
                            },
                            summary,
                        };
                        report(&result);
                        results.push(result);
                        slots[idx] = Slot::Done(record.clone());
                        progressed = true;
                        continue;
                    }
                    // A stored result that fails its digest is never used: set it aside and recompute.
                    let mut broken = broken_reasons(&lookup);
                    if !broken.is_empty() {
                        set_aside(project.blobs(), project.actions(), &planned.key, &lookup)?;
                        broken.append(&mut reasons);
                        reasons = broken;
                    }
                    if running >= jobs {
                        continue;
                    }
                    if forced {
                        reasons.insert(0, StaleReason::Forced);
                    } else if reasons.is_empty() {
                        reasons.push(StaleReason::OutputsMissing {
                            key: planned.key.clone(),
                        });
                    }
                    slots[idx] = Slot::Running;
                    running += 1;
                    progressed = true;
                    let job = Job {
                        idx,
                        planned,
                        reasons,
                        forced,
                        files: &files[idx],
                    };
                    let tx = tx.clone();
                    let (multi, pool, upstream_records) =
                        (&multi, &pool, collect_records(&slots, dag, idx));
                    let dataset = dataset.as_ref();
                    let dataset_root = pipeline.dataset.root_as_written.as_str();
                    scope.spawn(move || {
                        // A panic in a stage is that stage's failure: caught here, or the scheduler would
                        // wait forever for a report that never comes.
                        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            pool.install(|| {
                                execute(
                                    project,
                                    dag,
                                    &job,
                                    upstream_records,
                                    dataset,
                                    dataset_root,
                                    jobs,
                                    multi,
                                    options,
                                )
                            })
                        }))
                        .unwrap_or_else(|panic| {
                            Err(Stop::Failed(panic_message(
                                &dag.nodes[job.idx].name,
                                &panic,
                            )))
                        });
                        let _ = tx.send((job.idx, result));
                    });
                }
            }
            if running == 0 {
                break;
            }
            let (idx, result) = rx.recv().map_err(|_| {
                EngineError::Other("a stage worker stopped without reporting".into())
            })?;
            running -= 1;
            let name = dag.nodes[idx].name.clone();
            match result {
                Ok((record, outcome, summary)) => {
                    let result = StageResult {
                        name,
                        outcome,
                        summary,
                    };
                    report(&result);
                    results.push(result);
                    slots[idx] = Slot::Done(record);
                }
                Err(stop) => {
                    let result = StageResult {
                        name: name.clone(),
                        outcome: match stop {
                            Stop::Failed(error) => Outcome::Failed { error },
                            Stop::Cancelled => Outcome::Cancelled,
                        },
                        summary: Vec::new(),
                    };
                    report(&result);
                    results.push(result);
                    slots[idx] = Slot::Broken;
                }
            }
        }
        Ok(())
    })?;
    let names: BTreeSet<String> = dag.nodes.iter().map(|n| n.name.clone()).collect();
    project.update_lock(|lock| lock.stages.retain(|name, _| names.contains(name)))?;
    Ok(results)
}

fn panic_message(stage: &str, panic: &Box<dyn std::any::Any + Send>) -> String {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string());
    format!("stage `{stage}` panicked: {what} (a bug in the stage: please report it)")
}

pub fn unknown_stage(dag: &Dag, name: &str) -> EngineError {
    EngineError::UnknownStage(
        name.to_string(),
        crate::dag::suggestion(name, dag.selectable_names()),
    )
}

/// Upstream records of stage `idx`, by stage name (only finished ones exist by the time it launches).
fn collect_records(slots: &[Slot], dag: &Dag, idx: usize) -> BTreeMap<String, ActionRecord> {
    dag.nodes[idx]
        .inputs
        .iter()
        .filter_map(|name| {
            let d = dag.index(name)?;
            match &slots[d] {
                Slot::Done(r) => Some((name.clone(), r.clone())),
                _ => None,
            }
        })
        .collect()
}

/// Record a stage's result in pipeline.lock.
fn finish(
    project: &Project,
    dag: &Dag,
    idx: usize,
    planned: &Planned,
    record: &ActionRecord,
) -> Result<(), EngineError> {
    let node = &dag.nodes[idx];
    let entry = StageEntry {
        kind: node.kind.kind().to_string(),
        key: planned.key.clone(),
        engine_version: ENGINE_VERSION,
        code: planned.code.clone(),
        params: node.params.clone(),
        params_digest: hashing::params_digest(&node.params),
        inputs: planned
            .inputs
            .iter()
            .map(|i| (i.stage.clone(), i.artifacts.clone()))
            .collect(),
        outputs: record.outputs.clone(),
        manifest: record.manifest.clone(),
        files: planned.files.clone(),
    };
    project.update_lock(|lock| {
        lock.stages.insert(node.name.clone(), entry);
    })?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
/// Run one stage under its key's lock and publish its outputs, manifest and action record, in that order.
fn execute(
    project: &Project,
    dag: &Dag,
    job: &Job,
    upstream: BTreeMap<String, ActionRecord>,
    dataset: Option<&DatasetView>,
    dataset_root: &str,
    jobs: usize,
    multi: &indicatif::MultiProgress,
    options: &RunOptions,
) -> Result<(ActionRecord, Outcome, Vec<String>), Stop> {
    let node = &dag.nodes[job.idx];
    let planned = &job.planned;
    let store = &project.store;
    let blobs = project.blobs();
    let lock = store
        .lock_key(&planned.key, || {
            eprintln!(
                "{}: waiting for another genrelab process running the same stage",
                node.name
            )
        })
        .map_err(|e| e.to_string())?;
    let previous = project.lookup(&planned.key).map_err(|e| e.to_string())?;
    if let (Lookup::Hit(record), false) = (&previous, job.forced) {
        // Another process finished this key while we waited for its lock.
        finish(project, dag, job.idx, planned, record).map_err(|e| e.to_string())?;
        let summary = load_manifest(blobs, &record.manifest)
            .map(|m| m.summary)
            .unwrap_or_default();
        return Ok((
            record.clone(),
            Outcome::Cached {
                reasons: job.reasons.clone(),
                key: planned.key.clone(),
            },
            summary,
        ));
    }
    set_aside(blobs, project.actions(), &planned.key, &previous).map_err(|e| e.to_string())?;

    let mut inputs: BTreeMap<String, Vec<InputArtifact>> = BTreeMap::new();
    for (artifact, providers) in &node.sources {
        for provider in providers {
            if provider == DATASET {
                continue;
            }
            let digest = upstream
                .get(provider)
                .and_then(|r| r.outputs.get(artifact))
                .ok_or_else(|| format!("input `{artifact}` from `{provider}` is not available"))?;
            // Checked again right before use: a stage must never compute on bytes its key does not name.
            let folder = upstream
                .get(provider)
                .is_some_and(|r| r.folders.contains(artifact));
            let bad = if folder {
                blobs.tree_problems(artifact, digest)
            } else {
                blobs.state(digest).map(|state| {
                    (state != ObjectState::Intact)
                        .then(|| crate::store::BadObject {
                            name: artifact.clone(),
                            digest: digest.clone(),
                            state,
                        })
                        .into_iter()
                        .collect()
                })
            }
            .map_err(|e| e.to_string())?;
            if let Some(first) = bad.first() {
                let moved = blobs
                    .quarantine_blob(&first.digest)
                    .map_err(|e| e.to_string())?;
                return Err(Stop::Failed(format!(
                    "input `{}` from `{provider}` ({}) is {} in the store{}; run again to recompute it",
                    first.name,
                    short(&first.digest),
                    if first.state == ObjectState::Missing { "missing" } else { "corrupt" },
                    moved
                        .map(|to| format!(" (moved to {to})"))
                        .unwrap_or_default()
                )));
            }
            let path = if folder {
                blobs.materialize_tree(digest)
            } else {
                blobs.materialize(digest)
            }
            .map_err(|e| e.to_string())?;
            inputs
                .entry(artifact.clone())
                .or_default()
                .push(InputArtifact {
                    stage: provider.clone(),
                    path,
                    digest: digest.clone(),
                });
        }
    }
    // Files named by params reach the stage as stored copies of exactly the bytes that entered the key.
    let mut param_files = BTreeMap::new();
    let mut file_infos = BTreeMap::new();
    for file in job.files {
        let digest = blobs.put_bytes(&file.bytes).map_err(|e| e.to_string())?;
        let path = blobs.materialize(&digest).map_err(|e| e.to_string())?;
        param_files.insert(file.param.clone(), path);
        file_infos.insert(
            file.param.clone(),
            ParamFileInfo {
                path: file.written.clone(),
                digest,
                bytes: file.bytes.len() as u64,
            },
        );
    }
    let wants_dataset = node.inputs.iter().any(|i| i == DATASET);
    let outputs: Vec<&'static str> = node.kind.outputs().to_vec();
    for declared in outputs.iter().filter(|o| is_folder_output(o)) {
        let dir = lock.scratch.join(output_name(declared));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let exec = node.exec.resolve(jobs).map_err(|errors| {
        errors
            .iter()
            .map(|(key, problem)| format!("exec.{key}: {problem}"))
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    let ctx = StageContext::new(
        node.name.clone(),
        planned.seed,
        jobs,
        inputs,
        if wants_dataset {
            dataset.cloned()
        } else {
            None
        },
        lock.scratch.clone(),
        outputs.clone(),
    )
    .with_param_files(param_files)
    .with_exec(exec.clone())
    .with_checkpoint_dir(lock.checkpoint.clone())
    .with_cancel(options.cancel.clone())
    .with_progress(multi.clone());
    let ctx = match &options.on_progress {
        Some(sink) => ctx.with_events(sink.clone()),
        None => ctx,
    };

    let started = Instant::now();
    tracing::info!(stage = %node.name, key = %short(&planned.key), "running");
    let run_stage = || {
        node.kind.run(&node.params, &ctx).map_err(|e| match e {
            crate::stage::StageError::Cancelled => Stop::Cancelled,
            e => Stop::Failed(format!("stage `{}` ({}): {e}", node.name, node.kind.kind())),
        })
    };
    // A stage whose `exec.threads` differs from `-j` gets a pool of its own size: its rayon work must see
    // the budget it was given, whatever else runs beside it.
    let report = if exec.threads == jobs {
        run_stage()?
    } else {
        rayon::ThreadPoolBuilder::new()
            .num_threads(exec.threads)
            .build()
            .map_err(|e| format!("cannot start {} worker threads: {e}", exec.threads))?
            .install(run_stage)?
    };
    let seconds = started.elapsed().as_secs_f64();

    let mut published = BTreeMap::new();
    let mut folders = std::collections::BTreeSet::new();
    for declared in &outputs {
        let name = output_name(declared);
        let path = lock.scratch.join(name);
        let folder = is_folder_output(declared);
        if (folder && !path.is_dir()) || (!folder && !path.is_file()) {
            return Err(Stop::Failed(format!(
                "stage `{}` finished without writing its output `{name}`{}",
                node.name,
                if folder { " (a folder)" } else { "" }
            )));
        }
        let (digest, bytes) = if folder {
            folders.insert(name.to_string());
            blobs.put_tree(&path)
        } else {
            blobs.put_file(&path)
        }
        .map_err(|e| e.to_string())?;
        published.insert(
            name.to_string(),
            OutputInfo {
                digest,
                bytes,
                folder,
            },
        );
    }
    let manifest_inputs = node
        .inputs
        .iter()
        .map(|input| {
            let artifacts = planned
                .inputs
                .iter()
                .find(|k| &k.stage == input)
                .map(|k| k.artifacts.clone())
                .unwrap_or_default();
            ManifestInput {
                stage: input.clone(),
                manifest: upstream.get(input).map(|r| r.manifest.clone()),
                artifacts,
                dataset: (input == DATASET).then(|| DatasetInfo {
                    root: dataset_root.to_string(),
                    files: dataset.map(|d| d.files.len()).unwrap_or(0),
                    bytes: dataset
                        .map(|d| d.files.iter().map(|f| f.size).sum())
                        .unwrap_or(0),
                }),
            }
        })
        .collect();
    let manifest = Manifest {
        engine_version: ENGINE_VERSION,
        tool: format!("genrelab {}", env!("CARGO_PKG_VERSION")),
        kind: node.kind.kind().to_string(),
        key: planned.key.clone(),
        code: planned.code.clone(),
        params: node.params.clone(),
        params_digest: hashing::params_digest(&node.params),
        inputs: manifest_inputs,
        outputs: published.clone(),
        files: file_infos,
        lineage: report.lineage,
        summary: report.summary.clone(),
    };
    let manifest_digest = blobs
        .put_bytes(&hashing::canonical_json(&manifest))
        .map_err(|e| e.to_string())?;
    let record = ActionRecord {
        key: planned.key.clone(),
        manifest: manifest_digest,
        outputs: published
            .iter()
            .map(|(k, v)| (k.clone(), v.digest.clone()))
            .collect(),
        folders,
    };
    // Only an intact earlier result can contradict this one; a broken one was set aside and is replaced.
    // A kind of class `tolerance` may legitimately differ in its last bits (a GPU's reduction order): the
    // new result replaces the old one instead of being called nondeterministic.
    let exact = node.kind.determinism() == Determinism::Exact;
    if let Lookup::Hit(old) = previous {
        if exact && old.outputs != record.outputs {
            return Err(Stop::Failed(format!(
                "stage `{}` is not deterministic: key {} produced different outputs than before ({}); \
                 the earlier result is kept",
                node.name,
                short(&planned.key),
                old.outputs
                    .iter()
                    .filter(|(k, v)| record.outputs.get(*k) != Some(v))
                    .map(|(k, v)| format!("{k}: {} → {}", short(v), short(record.outputs.get(k).map(String::as_str).unwrap_or(""))))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    // Last: every blob it names is published.
    project
        .actions()
        .put_action(&record)
        .map_err(|e| e.to_string())?;
    let stats = serde_json::json!({
        "stage": node.name,
        "seconds": seconds,
        "threads": exec.threads,
        "device": exec.device,
        "memory_bytes": exec.memory_bytes,
        "finished_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "host": std::fs::read_to_string("/etc/hostname").unwrap_or_default().trim(),
    });
    store
        .put_run_stats(&planned.key, &stats)
        .map_err(|e| e.to_string())?;
    finish(project, dag, job.idx, planned, &record).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&lock.scratch);
    // Published: the progress saved for a resume is of no more use.
    let _ = std::fs::remove_dir_all(&lock.checkpoint);
    Ok((
        record,
        Outcome::Ran {
            reasons: job.reasons.clone(),
            key: planned.key.clone(),
            seconds,
        },
        report.summary,
    ))
}
