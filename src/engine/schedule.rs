//! Scheduling: settle what is cached, launch what must run (up to `-j`, in DAG order), propagate failures
//! and cancellation to descendants only.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;

use crate::config::is_dataset_input;
use crate::config::Pipeline;
use crate::dag::Dag;
use crate::hashing::{short, Digest};
use crate::lock::LockFile;
use crate::reason::StaleReason;
use crate::store::{ActionRecord, Lookup};

use super::execute::{execute, finish, set_aside};
use super::plan::*;
use super::*;

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
    /// Where stale stages run.
    pub executor: crate::exec::Executor,
    /// Where the Slurm executor's job lines go (stage, `slurm job 12 submitted (after 11)`); none: dropped.
    pub on_job: Option<JobSink>,
    /// Running as a cluster job: publish to the store, leave pipeline.lock to the driver.
    pub detached: bool,
}

pub type JobSink = std::sync::Arc<dyn Fn(&str, &str) + Send + Sync>;

/// Why a stage did not publish.
pub(super) enum Stop {
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
        /// The result came from the remote cache in this run.
        pulled: bool,
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
            Outcome::Cached {
                reasons,
                key,
                pulled: false,
            } if reasons.is_empty() => {
                format!("{n}: cached (up to date) {}", short(key))
            }
            Outcome::Cached {
                reasons,
                key,
                pulled,
            } => format!(
                "{n}: cached ({}; result {}) {}",
                crate::reason::sentence(reasons),
                if *pulled {
                    "pulled from the remote cache"
                } else {
                    "restored from the store"
                },
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

pub(super) enum Slot {
    Pending,
    Running,
    Done(ActionRecord),
    Broken,
}

pub(super) struct Job<'f> {
    pub(super) idx: usize,
    pub(super) planned: Planned,
    pub(super) reasons: Vec<StaleReason>,
    pub(super) forced: bool,
    pub(super) files: &'f [ResolvedFile],
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
    let prepared = prepare(project, pipeline, dag, options)?;
    if options.executor == crate::exec::Executor::Slurm {
        let results = super::cluster::run(project, pipeline, dag, options, prepared, report)?;
        forget_removed_stages(project, dag)?;
        return Ok(results);
    }
    let Prepared {
        files,
        selected,
        forced_stages,
        datasets,
        lock,
    } = prepared;
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
                    let (upstream, manifests) = upstream_of(
                        dag,
                        idx,
                        |d| match &slots[d] {
                            Slot::Done(r) => Some(r),
                            _ => None,
                        },
                        &datasets,
                    );
                    let Some(planned) = plan_stage(dag, idx, &upstream, &manifests, &files[idx])
                    else {
                        continue;
                    };
                    let forced = forced_stages.contains(&idx);
                    let reasons = reasons_against_lock(&lock, dag, idx, &planned);
                    let mut reasons =
                        match from_store(project, dag, idx, &planned, forced, reasons)? {
                            FromStore::Cached(result, record) => {
                                report(&result);
                                results.push(result);
                                slots[idx] = Slot::Done(record);
                                progressed = true;
                                continue;
                            }
                            FromStore::Run(reasons) => reasons,
                        };
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
                    let datasets = &datasets;
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
                                    datasets,
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
    forget_removed_stages(project, dag)?;
    Ok(results)
}

/// Drop pipeline.lock's entries for stages pipeline.yaml no longer has.
fn forget_removed_stages(project: &Project, dag: &Dag) -> Result<(), EngineError> {
    let names: BTreeSet<String> = dag.nodes.iter().map(|n| n.name.clone()).collect();
    project.update_lock(|lock| lock.stages.retain(|name, _| names.contains(name)))?;
    Ok(())
}

/// What the store (or the remote cache) holds for a planned stage.
pub(super) enum FromStore {
    /// A usable result, recorded in pipeline.lock: the stage's line and its record.
    Cached(StageResult, ActionRecord),
    /// The stage must run, for these reasons (what was wrong with a stored result first).
    Run(Vec<StaleReason>),
}

/// Look a planned stage's key up, pulling from the remote unless forced; record a hit in pipeline.lock. A
/// stored result that fails its digest is never used: it is set aside, to be recomputed.
pub(super) fn from_store(
    project: &Project,
    dag: &Dag,
    idx: usize,
    planned: &Planned,
    forced: bool,
    mut reasons: Vec<StaleReason>,
) -> Result<FromStore, EngineError> {
    let (lookup, pulled) = if forced {
        (project.lookup(&planned.key)?, false)
    } else {
        project.lookup_or_pull(&planned.key)?
    };
    if let (Lookup::Hit(record), false) = (&lookup, forced) {
        let summary = load_manifest(project.blobs(), &record.manifest)
            .map(|m| m.summary)
            .unwrap_or_default();
        finish(project, dag, idx, planned, record)?;
        let result = StageResult {
            name: dag.nodes[idx].name.clone(),
            outcome: Outcome::Cached {
                reasons,
                key: planned.key.clone(),
                pulled,
            },
            summary,
        };
        return Ok(FromStore::Cached(result, record.clone()));
    }
    let mut broken = broken_reasons(&lookup);
    if !broken.is_empty() {
        set_aside(project.blobs(), project.actions(), &planned.key, &lookup)?;
        broken.append(&mut reasons);
        reasons = broken;
    }
    Ok(FromStore::Run(reasons))
}

/// What every executor settles before its first stage: files named by params, the stages selected by
/// `--until` and forced by `--force`, the datasets hashed and recorded, the lock as it was before.
pub(super) struct Prepared {
    pub(super) files: Vec<Vec<ResolvedFile>>,
    pub(super) selected: BTreeSet<usize>,
    pub(super) forced_stages: BTreeSet<usize>,
    pub(super) datasets: BTreeMap<String, HashedDataset>,
    pub(super) lock: LockFile,
}

pub(super) fn prepare(
    project: &Project,
    pipeline: &Pipeline,
    dag: &Dag,
    options: &RunOptions,
) -> Result<Prepared, EngineError> {
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
    let datasets = project.hash_datasets(
        pipeline,
        selected
            .iter()
            .flat_map(|&i| dag.nodes[i].inputs.iter())
            .map(String::as_str)
            .filter(|i| is_dataset_input(i)),
    )?;
    // Reasons are told against the lock as it was before this run touched it: recording the new datasets
    // drops the entries computed from the old ones.
    let lock = LockFile::load(&project.lock_path)?;
    if !datasets.is_empty() {
        project.update_lock(|lock| {
            for hashed in datasets.values() {
                match &hashed.name {
                    None => lock.dataset = Some(hashed.lock_entry()),
                    Some(name) => {
                        lock.datasets.insert(name.clone(), hashed.lock_entry());
                    }
                }
            }
        })?;
    }
    Ok(Prepared {
        files,
        selected,
        forced_stages,
        datasets,
        lock,
    })
}

/// The output digests and manifests of stage `idx`'s inputs, by input name, from the finished upstream
/// records `done` gives (and every dataset); what [`plan_stage`] keys a stage from.
pub(super) fn upstream_of<'a>(
    dag: &Dag,
    idx: usize,
    done: impl Fn(usize) -> Option<&'a ActionRecord>,
    datasets: &BTreeMap<String, HashedDataset>,
) -> (
    BTreeMap<String, BTreeMap<String, Digest>>,
    BTreeMap<String, Digest>,
) {
    let mut outputs = BTreeMap::new();
    let mut manifests = BTreeMap::new();
    for d in dag.nodes[idx].inputs.iter().filter_map(|i| dag.index(i)) {
        if let Some(record) = done(d) {
            outputs.insert(dag.nodes[d].name.clone(), record.outputs.clone());
            manifests.insert(dag.nodes[d].name.clone(), record.manifest.clone());
        }
    }
    for (input, hashed) in datasets {
        outputs.insert(input.clone(), dataset_outputs(&hashed.view));
    }
    (outputs, manifests)
}

pub(super) fn panic_message(stage: &str, panic: &Box<dyn std::any::Any + Send>) -> String {
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
pub(super) fn collect_records(
    slots: &[Slot],
    dag: &Dag,
    idx: usize,
) -> BTreeMap<String, ActionRecord> {
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
