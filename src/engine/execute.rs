//! Executing one stage: under its key's lock, on verified inputs, publishing outputs, manifest and action
//! record in that order, then the lock entry.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::config::is_dataset_input;
use crate::dag::Dag;
use crate::hashing::{self, short, KeyInput, ENGINE_VERSION};
use crate::lock::StageEntry;
use crate::manifest::{DatasetInfo, Manifest, ManifestInput, OutputInfo, ParamFileInfo, SplitRead};
use crate::stage::{
    is_folder_output, output_name, Determinism, InputArtifact, Lineage, Split, StageContext,
};
use crate::store::{ActionCache, ActionRecord, BlobStore, Lookup, ObjectState, StoreError};

use super::plan::*;
use super::schedule::*;
use super::*;

/// Move what a broken lookup found corrupt out of the way, so that the stage's re-run publishes good bytes
/// and nothing reads the bad ones meanwhile.
pub(super) fn set_aside(
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

/// Record a stage's result in pipeline.lock.
pub(super) fn finish(
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
pub(super) fn execute(
    project: &Project,
    dag: &Dag,
    job: &Job,
    upstream: BTreeMap<String, ActionRecord>,
    datasets: &BTreeMap<String, HashedDataset>,
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
        if !options.detached {
            finish(project, dag, job.idx, planned, record).map_err(|e| e.to_string())?;
        }
        let summary = load_manifest(blobs, &record.manifest)
            .map(|m| m.summary)
            .unwrap_or_default();
        return Ok((
            record.clone(),
            Outcome::Cached {
                reasons: job.reasons.clone(),
                key: planned.key.clone(),
                pulled: false,
            },
            summary,
        ));
    }
    set_aside(blobs, project.actions(), &planned.key, &previous).map_err(|e| e.to_string())?;

    let mut inputs: BTreeMap<String, Vec<InputArtifact>> = BTreeMap::new();
    for (artifact, providers) in &node.sources {
        for provider in providers {
            if is_dataset_input(provider) {
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
    // Every dataset the stage lists, by name (`dataset` for the unnamed one): `ctx.dataset()` is the only
    // one when there is one, `ctx.dataset_named` picks among several.
    let listed: BTreeMap<String, crate::stage::DatasetView> = node
        .inputs
        .iter()
        .filter_map(|i| {
            let view = datasets.get(i)?.view.clone();
            let name = i.strip_prefix(crate::config::DATASET_PREFIX).unwrap_or(i);
            Some((name.to_string(), view))
        })
        .collect();
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
        None,
        lock.scratch.clone(),
        outputs.clone(),
    )
    .with_datasets(listed)
    .with_param_files(param_files)
    .with_exec(exec.clone())
    .with_checkpoint_dir(lock.checkpoint.clone())
    .with_cancel(options.cancel.clone())
    .with_progress(multi.clone());
    let ctx = match &options.on_progress {
        Some(sink) => ctx.with_events(sink.clone()),
        None => ctx,
    };
    let ctx = if node.kind.wants_ancestry() {
        // The runs this stage's key names (plan_stage folds in these same manifests).
        let roots = node
            .inputs
            .iter()
            .filter(|i| !is_dataset_input(i))
            .map(|i| {
                upstream
                    .get(i)
                    .map(|r| (i.clone(), r.manifest.clone()))
                    .ok_or_else(|| {
                        format!("input `{i}` has no finished run to read the ancestry of")
                    })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let ancestry = super::ancestry::build(project, roots).map_err(|e| e.to_string())?;
        ctx.with_ancestry(ancestry)
    } else {
        ctx
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
    let split_reads = split_reads(&planned.inputs);
    if let Some(problem) = unbacked_record(&report.lineage, &split_reads) {
        return Err(Stop::Failed(format!(
            "stage `{}` ({}): {problem}",
            node.name,
            node.kind.kind()
        )));
    }

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
                dataset: datasets.get(input).map(|d| DatasetInfo {
                    root: d.root_as_written.clone(),
                    files: d.view.files.len(),
                    bytes: d.view.files.iter().map(|f| f.size).sum(),
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
        split_reads,
        lineage: serde_json::to_value(&report.lineage).map_err(|e| e.to_string())?,
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
    project.share(&record);
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
    if !options.detached {
        finish(project, dag, job.idx, planned, &record).map_err(|e| e.to_string())?;
    }
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

/// The per-split artifacts (`features@test`) among a stage's inputs, by split: what the engine handed it,
/// recorded by the engine so that "who read test" never rests on a stage's word.
fn split_reads(inputs: &[KeyInput]) -> BTreeMap<Split, Vec<SplitRead>> {
    let mut reads: BTreeMap<Split, Vec<SplitRead>> = BTreeMap::new();
    for input in inputs {
        for (artifact, digest) in &input.artifacts {
            // Names were checked when the registry was loaded; an unknown split cannot reach here.
            if let Ok(Some(split)) = crate::stage::split_of(artifact) {
                reads.entry(split).or_default().push(SplitRead {
                    stage: input.stage.clone(),
                    artifact: artifact.clone(),
                    digest: digest.clone(),
                });
            }
        }
    }
    reads
}

/// A lineage record about a split the stage was never handed (a scaler saying it fitted on train without
/// a `…@train` input): the stage's word disagrees with the engine's, so the run fails.
fn unbacked_record(lineage: &Lineage, reads: &BTreeMap<Split, Vec<SplitRead>>) -> Option<String> {
    lineage.records.iter().find_map(|record| {
        let split = record.requires()?;
        (!reads.contains_key(&split)).then(|| {
            format!(
                "its lineage records {record:?}, but it was handed no `{split}` artifact (it declares \
                 none among its needs)"
            )
        })
    })
}
