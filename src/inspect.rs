//! Reading the store back: `lineage` (the upstream tree of an artifact), `verify` (re-hash against
//! pipeline.lock) and `gc` (remove what no lock entry reaches).
//!
//! Lineage walks manifests, which are immutable and name the manifests of their inputs; it never trusts the
//! lock for anything upstream of the starting point.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::engine::{EngineError, Project};
use crate::hashing::{short, Digest};
use crate::lock::LockFile;
use crate::manifest::Manifest;
use crate::stage::Determinism;
use crate::store::{Lookup, ObjectState};

#[derive(Debug, Clone, Serialize)]
pub struct LineageNode {
    pub stage: String,
    pub kind: String,
    pub key: Digest,
    pub manifest: Digest,
    pub params: serde_json::Value,
    pub outputs: BTreeMap<String, Digest>,
    /// The splits the engine handed this stage, each with the artifacts it read them from.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub split_reads: BTreeMap<crate::stage::Split, Vec<String>>,
    pub lineage: serde_json::Value,
    pub inputs: Vec<LineageInput>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum LineageInput {
    Stage(Box<LineageNode>),
    Dataset {
        /// The dataset's name under `datasets:`; absent for the unnamed `dataset:`.
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        dataset: String,
        digest: Digest,
        files: usize,
        bytes: u64,
    },
    Missing {
        stage: String,
        manifest: Option<Digest>,
        missing: bool,
    },
}

fn load_manifest(project: &Project, digest: &str) -> Result<Manifest, EngineError> {
    let bytes = project.blobs().read(digest)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| EngineError::Other(format!("manifest {}: not valid: {e}", short(digest))))
}

fn node(project: &Project, stage: &str, manifest_digest: &str) -> Result<LineageNode, EngineError> {
    let m = load_manifest(project, manifest_digest)?;
    let mut inputs = Vec::new();
    for input in &m.inputs {
        let child = match (&input.manifest, &input.dataset) {
            (_, Some(ds)) => LineageInput::Dataset {
                name: input
                    .stage
                    .strip_prefix(crate::config::DATASET_PREFIX)
                    .map(str::to_string),
                dataset: ds.root.clone(),
                digest: input.artifacts.values().next().cloned().unwrap_or_default(),
                files: ds.files,
                bytes: ds.bytes,
            },
            (Some(d), None) if project.blobs().contains(d) => {
                LineageInput::Stage(Box::new(node(project, &input.stage, d)?))
            }
            (d, None) => LineageInput::Missing {
                stage: input.stage.clone(),
                manifest: d.clone(),
                missing: true,
            },
        };
        inputs.push(child);
    }
    Ok(LineageNode {
        stage: stage.to_string(),
        kind: m.kind,
        key: m.key,
        manifest: manifest_digest.to_string(),
        params: m.params,
        outputs: m.outputs.into_iter().map(|(k, v)| (k, v.digest)).collect(),
        split_reads: m
            .split_reads
            .into_iter()
            .map(|(split, reads)| {
                let names = reads
                    .into_iter()
                    .map(|r| format!("{}.{}", r.stage, r.artifact))
                    .collect();
                (split, names)
            })
            .collect(),
        lineage: m.lineage,
        inputs,
    })
}

/// The lineage tree of a stage (by name) or of an artifact (by digest or a unique prefix of 6+ characters).
pub fn lineage(project: &Project, target: &str) -> Result<LineageNode, EngineError> {
    let lock = LockFile::load(&project.lock_path)?;
    if let Some(entry) = lock.stages.get(target) {
        return node(project, target, &entry.manifest);
    }
    let is_hex = target.len() >= 6 && target.bytes().all(|b| b.is_ascii_hexdigit());
    if is_hex {
        let hits: Vec<(&String, &Digest)> = lock
            .stages
            .iter()
            .filter(|(_, e)| {
                e.manifest.starts_with(target) || e.outputs.values().any(|d| d.starts_with(target))
            })
            .map(|(name, e)| (name, &e.manifest))
            .collect();
        match hits.as_slice() {
            [(name, manifest)] => return node(project, name, manifest),
            [] => {}
            many => {
                return Err(EngineError::Other(format!(
                    "digest prefix `{target}` is ambiguous: {}",
                    many.iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        }
    }
    Err(EngineError::Other(format!(
        "`{target}` is neither a stage in pipeline.lock nor the digest of an artifact it records (run `genrelab run` first?)"
    )))
}

/// The tree as indented text, params and digests on each line. A stage reached again through another path
/// (ingest feeds split, slice and features) is printed once in full and then as `name (*)`, as `cargo tree`
/// does, so shared ancestors do not repeat.
pub fn render_lineage(root: &LineageNode) -> String {
    fn walk(n: &LineageNode, depth: usize, seen: &mut BTreeSet<Digest>, out: &mut String) {
        let pad = "  ".repeat(depth);
        if !seen.insert(n.manifest.clone()) {
            out.push_str(&format!(
                "{pad}{} ({}) manifest {} (*)\n",
                n.stage,
                n.kind,
                short(&n.manifest)
            ));
            return;
        }
        let outputs: Vec<String> = n
            .outputs
            .iter()
            .map(|(k, v)| format!("{k} {}", short(v)))
            .collect();
        out.push_str(&format!(
            "{pad}{} ({}) key {} manifest {} -> {}\n",
            n.stage,
            n.kind,
            short(&n.key),
            short(&n.manifest),
            outputs.join(", ")
        ));
        out.push_str(&format!("{pad}  params {}\n", n.params));
        if !n.split_reads.is_empty() {
            let splits: Vec<&str> = n.split_reads.keys().map(|s| s.name()).collect();
            out.push_str(&format!("{pad}  reads splits {}\n", splits.join(", ")));
        }
        if !n.lineage.is_null() {
            let mut text = n.lineage.to_string();
            if text.len() > 300 {
                let cut = (0..=300)
                    .rev()
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap_or(0);
                text.truncate(cut);
                text.push_str("… (--json for all)");
            }
            out.push_str(&format!("{pad}  lineage {text}\n"));
        }
        for input in &n.inputs {
            match input {
                LineageInput::Stage(child) => walk(child, depth + 1, seen, out),
                LineageInput::Dataset {
                    name,
                    dataset,
                    digest,
                    files,
                    bytes,
                } => out.push_str(&format!(
                    "{pad}  dataset {}{dataset} {} ({files} files, {:.1} MB)\n",
                    name.as_deref().map(|n| format!("{n} ")).unwrap_or_default(),
                    short(digest),
                    *bytes as f64 / 1e6
                )),
                LineageInput::Missing {
                    stage, manifest, ..
                } => out.push_str(&format!(
                    "{pad}  {stage}: manifest {} is not in the store (collected?)\n",
                    manifest.as_deref().map(short).unwrap_or("?")
                )),
            }
        }
    }
    let mut out = String::new();
    walk(root, 0, &mut BTreeSet::new(), &mut out);
    if out.contains(" (*)\n") {
        out.push_str("(*) printed in full above\n");
    }
    out
}

/// One problem `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyProblem {
    pub stage: String,
    pub artifact: String,
    pub digest: Digest,
    pub problem: String,
}

impl std::fmt::Display for VerifyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} {}: {}",
            self.stage,
            self.artifact,
            short(&self.digest),
            self.problem
        )
    }
}

/// Re-hash every object pipeline.lock names, and check that its entries agree with each other. Returns the
/// number of objects checked and the problems. A missing lock is a problem, not an empty success: there is
/// nothing to verify against.
pub fn verify(project: &Project) -> Result<(usize, Vec<VerifyProblem>), EngineError> {
    let _shared = project.lock(false, "verify")?;
    if !project.lock_path.exists() {
        return Ok((
            0,
            vec![VerifyProblem {
                stage: "pipeline.lock".into(),
                artifact: "file".into(),
                digest: String::new(),
                problem: format!(
                    "{} is missing: there is nothing to verify against (`genrelab run` writes it)",
                    project.lock_path.display()
                ),
            }],
        ));
    }
    let lock = LockFile::load(&project.lock_path)?;
    let mut checked = 0;
    let mut problems = Vec::new();
    for found in lock.inconsistencies() {
        problems.push(VerifyProblem {
            stage: found.stage,
            artifact: "entry".into(),
            digest: String::new(),
            problem: format!(
                "inconsistent with the lock's other entries: {}",
                found.reason
            ),
        });
    }
    for (stage, entry) in &lock.stages {
        // A folder output is its tree object plus every file the tree names; the manifest says which
        // outputs are folders (an unreadable manifest is reported below, and its folders as plain objects).
        let folders: BTreeSet<String> = load_manifest(project, &entry.manifest)
            .map(|m| {
                m.outputs
                    .into_iter()
                    .filter(|(_, o)| o.folder)
                    .map(|(k, _)| k)
                    .collect()
            })
            .unwrap_or_default();
        let mut objects: Vec<(String, Digest)> = Vec::new();
        for (name, digest) in &entry.outputs {
            objects.push((format!("output `{name}`"), digest.clone()));
            if folders.contains(name) && project.blobs().verify(digest)? == ObjectState::Intact {
                if let Ok(tree) = project.blobs().read_tree(digest) {
                    objects.extend(
                        tree.files
                            .into_iter()
                            .map(|f| (format!("output `{name}` file `{}`", f.path), f.digest)),
                    );
                }
            }
        }
        objects.push(("manifest".to_string(), entry.manifest.clone()));
        for (artifact, digest) in objects {
            checked += 1;
            let problem = match project.blobs().verify(&digest)? {
                ObjectState::Missing => Some("missing from the store".to_string()),
                ObjectState::Corrupt => {
                    Some("corrupt: its bytes no longer hash to its name".to_string())
                }
                ObjectState::Intact => None,
            };
            if let Some(problem) = problem {
                problems.push(VerifyProblem {
                    stage: stage.clone(),
                    artifact,
                    digest,
                    problem,
                });
            }
        }
        if project.blobs().verify(&entry.manifest)? == ObjectState::Intact {
            if let Ok(m) = load_manifest(project, &entry.manifest) {
                let recorded: BTreeMap<String, Digest> =
                    m.outputs.into_iter().map(|(k, v)| (k, v.digest)).collect();
                if m.key != entry.key || recorded != entry.outputs {
                    problems.push(VerifyProblem {
                        stage: stage.clone(),
                        artifact: "manifest".into(),
                        digest: entry.manifest.clone(),
                        problem: "disagrees with pipeline.lock on the key or the outputs".into(),
                    });
                }
            }
        }
    }
    Ok((checked, problems))
}

/// Re-run every stage of the pipeline in a scratch store (nothing cached, nothing shared with `artifacts/`)
/// and compare each output digest with pipeline.lock. Stages whose key no longer matches the lock (the
/// pipeline or the code changed since it was written) cannot be compared and are reported as such.
pub fn verify_rerun(
    project: &Project,
    pipeline: &crate::config::Pipeline,
    dag: &crate::dag::Dag,
    jobs: usize,
) -> Result<RerunReport, EngineError> {
    let lock = LockFile::load(&project.lock_path)?;
    let scratch = project
        .store
        .root()
        .join("tmp")
        .join(format!("verify-rerun-{}", std::process::id()));
    let scratch_project = Project::new(
        project.dir.clone(),
        scratch.join("pipeline.lock"),
        crate::store::LocalStore::open(&scratch.join("artifacts"))?,
    );
    let options = crate::engine::RunOptions {
        jobs,
        ..Default::default()
    };
    let results = crate::engine::run(&scratch_project, pipeline, dag, &options, |_| {});
    let rerun_lock = LockFile::load(&scratch_project.lock_path);
    let _ = std::fs::remove_dir_all(&scratch);
    let results = results?;
    let rerun_lock = rerun_lock?;
    let mut problems = Vec::new();
    for result in results.iter().filter(|r| r.failed()) {
        problems.push(VerifyProblem {
            stage: result.name.clone(),
            artifact: "stage".into(),
            digest: String::new(),
            problem: format!("did not re-run: {}", result.line()),
        });
    }
    let mut compared = 0;
    let mut differ_within_class = Vec::new();
    // Stages whose re-run legitimately differs (a `tolerance` class output, or anything computed from one):
    // their descendants get other keys, which is no sign of a stale lock.
    let mut tolerated: BTreeSet<String> = BTreeSet::new();
    for &idx in &dag.order {
        let node = &dag.nodes[idx];
        let stage = &node.name;
        let (Some(entry), Some(again)) = (lock.stages.get(stage), rerun_lock.stages.get(stage))
        else {
            continue;
        };
        let from_tolerated = entry.inputs.keys().find(|input| tolerated.contains(*input));
        if again.key != entry.key {
            if let Some(input) = from_tolerated {
                differ_within_class.push(format!(
                    "{stage}: computed from `{input}`, whose output differs as its class allows"
                ));
                tolerated.insert(stage.clone());
                continue;
            }
            problems.push(VerifyProblem {
                stage: stage.clone(),
                artifact: "key".into(),
                digest: entry.key.clone(),
                problem: format!(
                    "pipeline.lock is out of date (the key is now {}): run `genrelab run` first",
                    short(&again.key)
                ),
            });
            continue;
        }
        let tolerant = node.kind.determinism() == Determinism::Tolerance;
        for (name, digest) in &entry.outputs {
            compared += 1;
            let now = again.outputs.get(name).cloned().unwrap_or_default();
            if &now != digest && tolerant {
                differ_within_class.push(format!(
                    "{stage}: output `{name}` differs bit for bit, as its stage kind's `tolerance` class allows"
                ));
                tolerated.insert(stage.clone());
            } else if &now != digest {
                problems.push(VerifyProblem {
                    stage: stage.clone(),
                    artifact: format!("output `{name}`"),
                    digest: digest.clone(),
                    problem: format!("re-running gives {} instead: not reproducible", short(&now)),
                });
            }
        }
    }
    Ok(RerunReport {
        compared,
        problems,
        differ_within_class,
    })
}

/// What `verify --rerun` found.
pub struct RerunReport {
    /// Outputs compared with pipeline.lock.
    pub compared: usize,
    pub problems: Vec<VerifyProblem>,
    /// Outputs of `tolerance`-class stages that differ bit for bit, as their kind allows.
    pub differ_within_class: Vec<String>,
}

pub struct GcReport {
    pub removed: Vec<(Digest, u64)>,
    pub kept: usize,
    pub actions_removed: usize,
}

/// Remove every object that no lock entry reaches (outputs, manifests, and the manifests those name,
/// transitively, so lineage stays walkable), then the action records left pointing at nothing.
pub fn gc(project: &Project, dry_run: bool) -> Result<GcReport, EngineError> {
    // Exclusive: a run publishes objects before its lock entries name them, so gc must never see that gap.
    let _exclusive = project.lock(true, "gc")?;
    if !project.lock_path.exists() {
        return Err(EngineError::Other(format!(
            "{} is missing, so nothing tells gc which objects are in use; it removes nothing \
             (`genrelab run` writes the lock)",
            project.lock_path.display()
        )));
    }
    let lock = LockFile::load(&project.lock_path)?;
    let mut live: BTreeSet<Digest> = BTreeSet::new();
    let mut todo: Vec<Digest> = Vec::new();
    for entry in lock.stages.values() {
        live.extend(entry.outputs.values().cloned());
        todo.push(entry.manifest.clone());
    }
    while let Some(digest) = todo.pop() {
        if !live.insert(digest.clone()) {
            continue;
        }
        if let Ok(m) = load_manifest(project, &digest) {
            for output in m.outputs.values() {
                live.insert(output.digest.clone());
                if output.folder {
                    if let Ok(tree) = project.blobs().read_tree(&output.digest) {
                        live.extend(tree.files.into_iter().map(|f| f.digest));
                    }
                }
            }
            live.extend(m.files.values().map(|f| f.digest.clone()));
            todo.extend(m.inputs.iter().filter_map(|i| i.manifest.clone()));
        }
    }
    let all = project.blobs().list_blobs()?;
    let (removed, kept): (Vec<_>, Vec<_>) = all.into_iter().partition(|(d, _)| !live.contains(d));
    let mut actions_removed = 0;
    if !dry_run {
        for (digest, _) in &removed {
            project.blobs().remove_blob(digest)?;
        }
        // Materialised folders are local by nature.
        project.store.remove_materialized_trees_except(&live)?;
        for key in project.actions().action_keys()? {
            if !matches!(project.lookup(&key)?, Lookup::Hit(_)) {
                project.actions().remove_action(&key)?;
                actions_removed += 1;
            }
        }
    }
    Ok(GcReport {
        removed,
        kept: kept.len(),
        actions_removed,
    })
}

/// Copies stage `stage`'s output (`output`, or its only one) as pipeline.lock records it into folder `to`,
/// every file checked against its digest on the way; returns the paths written. A folder output keeps its
/// layout; a file output is written under its output name.
pub fn export(
    project: &Project,
    stage: &str,
    output: Option<&str>,
    to: &std::path::Path,
) -> Result<Vec<std::path::PathBuf>, EngineError> {
    let lock = LockFile::load(&project.lock_path)?;
    let entry = lock.stages.get(stage).ok_or_else(|| {
        EngineError::UnknownStage(
            stage.to_string(),
            format!(" in {}", project.lock_path.display()),
        )
    })?;
    let (name, digest) = match output {
        Some(name) => entry.outputs.get_key_value(name).ok_or_else(|| {
            EngineError::Other(format!(
                "stage `{stage}` has no output `{name}` (it has: {})",
                entry.outputs.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?,
        None => match entry.outputs.iter().collect::<Vec<_>>().as_slice() {
            [one] => *one,
            many => {
                return Err(EngineError::Other(format!(
                    "stage `{stage}` has {} outputs; name one with --output ({})",
                    many.len(),
                    entry.outputs.keys().cloned().collect::<Vec<_>>().join(", ")
                )))
            }
        },
    };
    let bytes = project.blobs().read(digest)?;
    let files: Vec<(String, Digest)> = match serde_json::from_slice::<crate::cas::Tree>(&bytes) {
        Ok(tree) => tree.files.into_iter().map(|f| (f.path, f.digest)).collect(),
        Err(_) => vec![(name.clone(), digest.clone())],
    };
    let mut written = Vec::new();
    for (path, digest) in files {
        let bytes = project.blobs().read(&digest)?;
        if crate::hashing::digest_bytes(&bytes) != digest {
            return Err(EngineError::Other(format!(
                "{stage}: `{path}` in the store no longer matches its digest {}; `genrelab verify` names what is damaged",
                short(&digest)
            )));
        }
        // A tree is checked by digest, but its paths still come from a file: never write outside `to`.
        let relative = std::path::Path::new(&path);
        if !relative
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
        {
            return Err(EngineError::Other(format!(
                "{stage}: refusing to export `{path}`: not a plain relative path"
            )));
        }
        let dest = to.join(relative);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                EngineError::Other(format!("{}: cannot create: {e}", parent.display()))
            })?;
        }
        crate::store::write_atomic(&dest, &bytes)?;
        written.push(dest);
    }
    Ok(written)
}
