//! Planning: every stage's key from its code, params, files and inputs, and why it is stale against the lock.
//! `status` and `run` plan with the same functions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::config::{is_dataset_input, ConfigErrors, Pipeline};
use crate::dag::Dag;
use crate::hashing::{self, Digest, KeyInput, StageKeyInputs, ENGINE_VERSION};
use crate::lock::LockFile;
use crate::manifest::Manifest;
use crate::reason::{diff, recorded_input_order, StaleReason};
use crate::stage::DATASET;
use crate::store::{Lookup, ObjectState};

use super::*;

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
pub(super) const MAX_PARAM_FILE_BYTES: u64 = 16 << 20;

/// Read every file the stages' params name (see [`crate::stage::ParamFile`]): resolved against the dataset
/// root, confined to the project and dataset folders after resolving links, bounded in size. All problems
/// are reported together, located at the stage in pipeline.yaml; file contents never appear in a message.
pub fn resolve_param_files(
    project: &Project,
    pipeline: &Pipeline,
    dag: &Dag,
) -> Result<Vec<Vec<ResolvedFile>>, EngineError> {
    let canonical = |p: &Path| std::fs::canonicalize(p).ok();
    let allowed: Vec<PathBuf> = std::iter::once(canonical(&project.dir))
        .chain(pipeline.datasets.values().map(|d| canonical(&d.root)))
        .flatten()
        .collect();
    let base = pipeline.param_file_root();
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
            let joined = base.join(&declared.path);
            let Some(real) = canonical(&joined) else {
                fail(format!(
                    "{} does not exist (paths are relative to the {})",
                    joined.display(),
                    pipeline.param_file_root_as_written()
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

pub(super) fn file_digests(files: &[ResolvedFile]) -> BTreeMap<String, Digest> {
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
    /// Stale locally, but the remote cache holds a result for the key: `run` will pull it, not compute it.
    Remote,
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
pub(super) struct Planned {
    pub(super) key: Digest,
    pub(super) code: BTreeMap<String, Digest>,
    pub(super) inputs: Vec<KeyInput>,
    pub(super) files: BTreeMap<String, Digest>,
    pub(super) seed: [u8; 32],
}

pub(super) fn plan_stage(
    dag: &Dag,
    idx: usize,
    upstream: &BTreeMap<String, BTreeMap<String, Digest>>,
    manifests: &BTreeMap<String, Digest>,
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
    // A kind that reads its ancestry computes on lineage records, which no output digest covers: its key
    // names the manifests of its inputs, and through them (each names its own inputs') every ancestor's.
    let key = if node.kind.wants_ancestry() {
        let mut upstream_manifests = Vec::new();
        for input in node.inputs.iter().filter(|i| !is_dataset_input(i)) {
            upstream_manifests.push((input.clone(), manifests.get(input)?.clone()));
        }
        hashing::key_with_ancestry(&key_inputs.key(), &upstream_manifests)
    } else {
        key_inputs.key()
    };
    Some(Planned {
        key,
        seed: key_inputs.seed_material(),
        code,
        inputs,
        files,
    })
}

pub(super) fn reasons_against_lock(
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

/// A dataset as an upstream: one artifact, `dataset`, its digest (the same for named datasets, whose
/// input name tells them apart in keys).
pub(super) fn dataset_outputs(view: &crate::stage::DatasetView) -> BTreeMap<String, Digest> {
    BTreeMap::from([(DATASET.to_string(), view.digest.clone())])
}

pub(super) fn load_manifest(blobs: &dyn BlobStore, digest: &str) -> Option<Manifest> {
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
    let mut manifests: BTreeMap<String, Digest> = BTreeMap::new();
    for (input, hashed) in project.hash_datasets(pipeline, dag.dataset_inputs())? {
        upstream.insert(input, dataset_outputs(&hashed.view));
    }
    let mut out = Vec::new();
    for &idx in &dag.order {
        let node = &dag.nodes[idx];
        let Some(planned) = plan_stage(dag, idx, &upstream, &manifests, &files[idx]) else {
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
                match project.remote_peek(&planned.key) {
                    // Its outputs plan the stages below, as `run` will see them after pulling.
                    Some(remote) => (State::Remote, Some(remote)),
                    None => (State::Stale, None),
                }
            }
        };
        let summary = record
            .as_ref()
            .filter(|_| state != State::Remote)
            .and_then(|r| load_manifest(project.blobs(), &r.manifest))
            .map(|m| m.summary)
            .unwrap_or_default();
        if let Some(record) = record {
            manifests.insert(node.name.clone(), record.manifest);
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
pub(super) fn broken_reasons(lookup: &Lookup) -> Vec<StaleReason> {
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
