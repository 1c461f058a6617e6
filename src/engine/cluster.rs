//! The Slurm executor: every stale stage becomes one batch job running this binary's hidden `job`
//! subcommand on the stage, with `afterok` dependencies mirroring the DAG, so the cluster schedules the whole
//! plan at once. The driver (`run --executor slurm`) only submits, watches and records:
//!
//! - a job publishes into the shared store (the project's `artifacts/` on a shared filesystem, and the
//!   remote cache when one is configured) but never writes pipeline.lock; the driver looks the stage's key
//!   up once the job completes, every blob checked, and records it as a local run would;
//! - a stage whose inputs are still being computed cannot know its key when it is submitted: its job plans
//!   it when it starts, from the upstream results its dependencies published, exactly as a local run does;
//! - a failed job fails its stage; the jobs of its descendants are cancelled (and `kill_invalid_depend`, or
//!   `--kill-on-invalid-dep`, cancels what the driver cannot reach); everything else goes on;
//! - Ctrl-C cancels every job this driver submitted or adopted that has not finished;
//! - a driver killed mid-run leaves its jobs queued: the next driver adopts a live job of the same name
//!   instead of submitting a second one, and publication under the key's lock makes a duplicate harmless.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::Pipeline;
use crate::dag::Dag;
use crate::hashing::short;
use crate::slurm::{self, JobId, JobSpec, JobState};
use crate::store::{ActionRecord, Lookup};

use super::execute::{execute, finish};
use super::plan::*;
use super::schedule::*;
use super::*;

/// How often the queue is read while jobs are in flight.
const POLL: Duration = Duration::from_millis(500);

enum Cell {
    Pending,
    Submitted {
        job: JobId,
        log: PathBuf,
        reasons: Vec<crate::reason::StaleReason>,
    },
    Done(ActionRecord),
    Broken,
}

fn done(cells: &[Cell], idx: usize) -> Option<&ActionRecord> {
    match &cells[idx] {
        Cell::Done(r) => Some(r),
        _ => None,
    }
}

/// The job name of a stage in this project: a killed driver's successor finds its jobs by it.
fn job_name(project: &Project, stage: &str) -> String {
    let dir = std::fs::canonicalize(&project.dir).unwrap_or_else(|_| project.dir.clone());
    let tag = crate::hashing::digest_bytes(dir.to_string_lossy().as_bytes());
    format!("genrelab-{}-{stage}", &tag[..8])
}

/// Run the prepared plan's stale stages as Slurm jobs.
pub(super) fn run(
    project: &Project,
    pipeline: &Pipeline,
    dag: &Dag,
    options: &RunOptions,
    prepared: Prepared,
    mut report: impl FnMut(&StageResult),
) -> Result<Vec<StageResult>, EngineError> {
    let Prepared {
        files,
        selected,
        forced_stages,
        datasets,
        lock,
    } = prepared;
    let say = |stage: &str, line: String| {
        if let Some(sink) = &options.on_job {
            sink(stage, &line);
        }
    };
    let binary = std::env::current_exe()
        .map_err(|e| EngineError::Other(format!("cannot find this binary for the jobs: {e}")))?;
    let config = std::fs::canonicalize(&pipeline.path)
        .map_err(|e| EngineError::Other(format!("{}: {e}", pipeline.path.display())))?;
    let workdir = std::fs::canonicalize(&project.dir)
        .map_err(|e| EngineError::Other(format!("{}: {e}", project.dir.display())))?;
    let logs = project.store.root().join("slurm");
    std::fs::create_dir_all(&logs)
        .map_err(|e| EngineError::Other(format!("{}: {e}", logs.display())))?;
    let logs = std::fs::canonicalize(&logs).unwrap_or(logs);
    let cancelled = || options.cancel.load(std::sync::atomic::Ordering::Relaxed);

    let mut cells: Vec<Cell> = (0..dag.nodes.len()).map(|_| Cell::Pending).collect();
    // The last state told for each job, so that each change is told once.
    let mut told: BTreeMap<JobId, String> = BTreeMap::new();
    let mut results = Vec::new();
    let mut settle = |cells: &mut Vec<Cell>, idx: usize, result: StageResult, cell: Cell| {
        report(&result);
        results.push(result);
        cells[idx] = cell;
    };

    loop {
        // Settle or submit every pending stage whose inputs are settled or submitted, in DAG order so that
        // a job's dependencies always have ids.
        for &idx in &dag.order {
            if !selected.contains(&idx) || !matches!(cells[idx], Cell::Pending) {
                continue;
            }
            let node = &dag.nodes[idx];
            let deps: Vec<usize> = node.inputs.iter().filter_map(|i| dag.index(i)).collect();
            if cancelled() {
                let result = StageResult {
                    name: node.name.clone(),
                    outcome: Outcome::Cancelled,
                    summary: Vec::new(),
                };
                settle(&mut cells, idx, result, Cell::Broken);
                continue;
            }
            if let Some(&bad) = deps.iter().find(|&&d| matches!(cells[d], Cell::Broken)) {
                let result = StageResult {
                    name: node.name.clone(),
                    outcome: Outcome::Skipped {
                        failed_upstream: dag.nodes[bad].name.clone(),
                    },
                    summary: Vec::new(),
                };
                settle(&mut cells, idx, result, Cell::Broken);
                continue;
            }
            if deps.iter().any(|&d| matches!(cells[d], Cell::Pending)) {
                continue;
            }
            let forced = forced_stages.contains(&idx);
            let mut reasons = Vec::new();
            let mut expect_key = None;
            if deps.iter().all(|&d| matches!(cells[d], Cell::Done(_))) {
                let (upstream, manifests) = upstream_of(dag, idx, |d| done(&cells, d), &datasets);
                let Some(planned) = plan_stage(dag, idx, &upstream, &manifests, &files[idx]) else {
                    continue;
                };
                let stale = reasons_against_lock(&lock, dag, idx, &planned);
                match from_store(project, dag, idx, &planned, forced, stale)? {
                    FromStore::Cached(result, record) => {
                        settle(&mut cells, idx, result, Cell::Done(record));
                        continue;
                    }
                    FromStore::Run(stale) => reasons = stale,
                }
                expect_key = Some(planned.key);
            }
            if forced {
                reasons.insert(0, crate::reason::StaleReason::Forced);
            }
            let after_ok: Vec<JobId> = deps
                .iter()
                .filter_map(|&d| match &cells[d] {
                    Cell::Submitted { job, .. } => Some(*job),
                    _ => None,
                })
                .collect();
            let name = job_name(project, &node.name);
            let log = logs.join(format!("{}-%j.log", safe_file_name(&node.name)));
            let adopted = slurm::live_jobs_named(&name)
                .map_err(|e| EngineError::Other(e.to_string()))?
                .into_iter()
                .next();
            let job = match adopted {
                Some((job, state)) => {
                    say(
                        &node.name,
                        format!(
                            "job {job} adopted ({}; left by an earlier run)",
                            state.word()
                        ),
                    );
                    job
                }
                None => {
                    let resources =
                        node.exec
                            .job_resources(options.jobs.max(1))
                            .map_err(|errors| {
                                EngineError::Other(format!(
                                    "stage `{}`: {}",
                                    node.name,
                                    errors
                                        .iter()
                                        .map(|(k, p)| format!("exec.{k}: {p}"))
                                        .collect::<Vec<_>>()
                                        .join("; ")
                                ))
                            })?;
                    let mut command = vec![
                        binary.display().to_string(),
                        "--config".into(),
                        config.display().to_string(),
                        "job".into(),
                        node.name.clone(),
                        "--jobs".into(),
                        resources.cpus.to_string(),
                    ];
                    if let Some(key) = &expect_key {
                        command.extend(["--expect-key".to_string(), key.clone()]);
                    }
                    if forced {
                        command.push("--force".into());
                    }
                    let spec = JobSpec {
                        name,
                        command,
                        workdir: workdir.clone(),
                        log: log.clone(),
                        resources,
                        after_ok: after_ok.clone(),
                    };
                    let job = match slurm::submit(&spec) {
                        Ok(job) => job,
                        Err(e) => {
                            let result = StageResult {
                                name: node.name.clone(),
                                outcome: Outcome::Failed {
                                    error: e.to_string(),
                                },
                                summary: Vec::new(),
                            };
                            settle(&mut cells, idx, result, Cell::Broken);
                            continue;
                        }
                    };
                    say(
                        &node.name,
                        format!(
                            "job {job} submitted{}",
                            if after_ok.is_empty() {
                                String::new()
                            } else {
                                format!(
                                    " (after {})",
                                    after_ok
                                        .iter()
                                        .map(JobId::to_string)
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                )
                            }
                        ),
                    );
                    job
                }
            };
            let log = PathBuf::from(log.to_string_lossy().replace("%j", &job.to_string()));
            cells[idx] = Cell::Submitted { job, log, reasons };
        }

        let in_flight: Vec<(usize, JobId)> = dag
            .order
            .iter()
            .filter_map(|&idx| match &cells[idx] {
                Cell::Submitted { job, .. } => Some((idx, *job)),
                _ => None,
            })
            .collect();
        if in_flight.is_empty() {
            break;
        }
        let ids: Vec<JobId> = in_flight.iter().map(|(_, j)| *j).collect();
        let states = slurm::states(&ids).map_err(|e| EngineError::Other(e.to_string()))?;
        let mut changed = false;
        if cancelled() {
            // Jobs that already finished are recorded below as usual; the others are cancelled.
            let live: Vec<(usize, JobId)> = in_flight
                .iter()
                .copied()
                .filter(|(_, job)| states.get(job).is_some_and(|s| !s.finished()))
                .collect();
            let jobs: Vec<JobId> = live.iter().map(|(_, j)| *j).collect();
            slurm::cancel(&jobs).map_err(|e| EngineError::Other(e.to_string()))?;
            for (idx, job) in live {
                say(&dag.nodes[idx].name, format!("job {job} cancelled"));
                let result = StageResult {
                    name: dag.nodes[idx].name.clone(),
                    outcome: Outcome::Cancelled,
                    summary: Vec::new(),
                };
                settle(&mut cells, idx, result, Cell::Broken);
            }
            changed = true;
        }
        for (idx, job) in in_flight {
            let Cell::Submitted { log, reasons, .. } = &cells[idx] else {
                continue;
            };
            let (log, reasons) = (log.clone(), reasons.clone());
            let node = &dag.nodes[idx];
            // A job that left the queue (past MinJobAge) is judged by what it left in the store.
            let state = states.get(&job).cloned().unwrap_or(JobState::Completed);
            if !state.finished() {
                if told.insert(job, state.word().to_string()).as_deref() != Some(state.word())
                    && state != JobState::Pending
                {
                    say(&node.name, format!("job {job} {}", state.word()));
                }
                continue;
            }
            changed = true;
            let deps: Vec<usize> = node.inputs.iter().filter_map(|i| dag.index(i)).collect();
            let upstream_done = deps.iter().all(|&d| matches!(cells[d], Cell::Done(_)));
            let failure = |why: String| {
                let tail = slurm::log_tail(&log, 8);
                StageResult {
                    name: node.name.clone(),
                    outcome: Outcome::Failed {
                        error: format!(
                            "slurm job {job} {why}; log: {}{}",
                            log.display(),
                            if tail.is_empty() {
                                String::new()
                            } else {
                                format!("\n{tail}")
                            }
                        ),
                    },
                    summary: Vec::new(),
                }
            };
            let outcome = match (&state, upstream_done) {
                (JobState::Completed, true) => {
                    let (upstream, manifests) =
                        upstream_of(dag, idx, |d| done(&cells, d), &datasets);
                    let planned = plan_stage(dag, idx, &upstream, &manifests, &files[idx]);
                    match planned {
                        Some(planned) => match project.lookup_or_pull(&planned.key)?.0 {
                            Lookup::Hit(record) => {
                                finish(project, dag, idx, &planned, &record)?;
                                let summary = load_manifest(project.blobs(), &record.manifest)
                                    .map(|m| m.summary)
                                    .unwrap_or_default();
                                let mut reasons = reasons;
                                if reasons.is_empty() {
                                    reasons = reasons_against_lock(&lock, dag, idx, &planned);
                                }
                                if reasons.is_empty() {
                                    reasons.push(crate::reason::StaleReason::OutputsMissing {
                                        key: planned.key.clone(),
                                    });
                                }
                                say(&node.name, format!("job {job} COMPLETED"));
                                Ok((
                                    StageResult {
                                        name: node.name.clone(),
                                        outcome: Outcome::Ran {
                                            reasons,
                                            seconds: run_seconds(project, &planned.key),
                                            key: planned.key.clone(),
                                        },
                                        summary,
                                    },
                                    record,
                                ))
                            }
                            _ => Err(failure(format!(
                                "finished (or left the queue), but the store holds no intact result \
                                 for key {}",
                                short(&planned.key)
                            ))),
                        },
                        None => Err(failure("completed before its inputs were recorded".into())),
                    }
                }
                (JobState::Completed, false) => {
                    Err(failure("completed, but an input stage failed".into()))
                }
                (ended, _) => {
                    let code = slurm::exit_code(job)
                        .map(|c| format!(", exit code {c}"))
                        .unwrap_or_default();
                    Err(failure(format!("ended {}{code}", ended.word())))
                }
            };
            match outcome {
                Ok((result, record)) => settle(&mut cells, idx, result, Cell::Done(record)),
                Err(result) => {
                    say(&node.name, format!("job {job} {}", state.word()));
                    settle(&mut cells, idx, result, Cell::Broken);
                    // Its descendants' jobs can never run usefully: cancel them and let the next pass
                    // report them skipped.
                    let mut doomed = Vec::new();
                    for d in dag.descendants_and_self(idx) {
                        if let Cell::Submitted { job, .. } = cells[d] {
                            doomed.push(job);
                            cells[d] = Cell::Pending;
                        }
                    }
                    slurm::cancel(&doomed).map_err(|e| EngineError::Other(e.to_string()))?;
                }
            }
        }
        if !changed {
            std::thread::sleep(POLL);
        }
    }
    Ok(results)
}

/// How long the stage's job computed, from the run stats it published.
fn run_seconds(project: &Project, key: &str) -> f64 {
    let path = project
        .store
        .root()
        .join("runs")
        .join(format!("{key}.json"));
    std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["seconds"].as_f64())
        .unwrap_or(0.0)
}

/// A stage name as a log file name: family members' brackets and separators kept readable, nothing else.
fn safe_file_name(stage: &str) -> String {
    stage
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-=,[]".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The hidden `job` subcommand: plan one stage from the results its upstream stages published, run it
/// under its key's lock and publish it (locally, and to the remote cache when configured), leaving
/// pipeline.lock to the driver. Refuses to run when an upstream result is missing or the key is not the
/// one the driver expected.
pub fn run_job(
    project: &Project,
    pipeline: &Pipeline,
    dag: &Dag,
    stage: &str,
    expect_key: Option<&str>,
    forced: bool,
    options: &RunOptions,
) -> Result<StageResult, EngineError> {
    let idx = dag.index(stage).ok_or_else(|| unknown_stage(dag, stage))?;
    let files = resolve_param_files(project, pipeline, dag)?;
    let ancestors = dag.ancestors_and_self(idx);
    let datasets = project.hash_datasets(
        pipeline,
        ancestors
            .iter()
            .flat_map(|&i| dag.nodes[i].inputs.iter())
            .map(String::as_str)
            .filter(|i| crate::config::is_dataset_input(i)),
    )?;
    let mut records: BTreeMap<usize, ActionRecord> = BTreeMap::new();
    let mut planned_here = None;
    for &i in dag.order.iter().filter(|i| ancestors.contains(i)) {
        let (upstream, manifests) = upstream_of(dag, i, |d| records.get(&d), &datasets);
        let planned = plan_stage(dag, i, &upstream, &manifests, &files[i]).ok_or_else(|| {
            EngineError::Other(format!(
                "stage `{}`: an input has no result in the store",
                dag.nodes[i].name
            ))
        })?;
        if i == idx {
            planned_here = Some(planned);
            break;
        }
        match project.lookup_or_pull(&planned.key)?.0 {
            Lookup::Hit(record) => {
                records.insert(i, record);
            }
            _ => {
                return Err(EngineError::Other(format!(
                    "upstream stage `{}` has no intact result for key {} in the store",
                    dag.nodes[i].name,
                    short(&planned.key)
                )))
            }
        }
    }
    let planned =
        planned_here.ok_or_else(|| EngineError::Other(format!("cannot plan `{stage}`")))?;
    if let Some(expected) = expect_key {
        if expected != planned.key {
            return Err(EngineError::Other(format!(
                "stage `{stage}` plans to key {} here, not the {} it was submitted for \
                 (pipeline.yaml, the code or an input changed since): not running it",
                short(&planned.key),
                short(expected)
            )));
        }
    }
    let upstream: BTreeMap<String, ActionRecord> = records
        .iter()
        .filter(|(d, _)| dag.nodes[idx].inputs.contains(&dag.nodes[**d].name))
        .map(|(d, r)| (dag.nodes[*d].name.clone(), r.clone()))
        .collect();
    let job = Job {
        idx,
        planned,
        reasons: Vec::new(),
        forced,
        files: &files[idx],
    };
    let multi = indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden());
    let jobs = options.jobs.max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .build()
        .map_err(|e| EngineError::Other(format!("cannot start {jobs} worker threads: {e}")))?;
    let detached = RunOptions {
        detached: true,
        ..options.clone()
    };
    let outcome = pool.install(|| {
        execute(
            project, dag, &job, upstream, &datasets, jobs, &multi, &detached,
        )
    });
    Ok(match outcome {
        Ok((_, outcome, summary)) => StageResult {
            name: stage.to_string(),
            outcome,
            summary,
        },
        Err(Stop::Failed(error)) => StageResult {
            name: stage.to_string(),
            outcome: Outcome::Failed { error },
            summary: Vec::new(),
        },
        Err(Stop::Cancelled) => StageResult {
            name: stage.to_string(),
            outcome: Outcome::Cancelled,
            summary: Vec::new(),
        },
    })
}
