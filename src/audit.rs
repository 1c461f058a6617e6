//! `genrelab audit`: the leakage invariants, proven from what the store already holds (never by re-running
//! anything). The invariants themselves live in the `audit` stage kind's core
//! (`genrelab_stages::audit::core`); this is the command's side: it builds from pipeline.lock the same
//! [`Ancestry`](crate::stage::Ancestry) the engine hands an `audit` stage, so the command and the stage's
//! artifact come from one implementation of each check.

use std::collections::BTreeSet;

use crate::engine::{ancestry, EngineError, Project};
use crate::hashing::Digest;
use crate::lock::LockFile;
use crate::manifest::Manifest;
use crate::stages::audit::{self as checks, TableSet, AUDIT_KIND};

pub use crate::stages::audit::{AuditReport, Check};

/// Audit the ancestry of stage `target` (by name, as pipeline.lock records it), or every stage in the lock.
pub fn audit(project: &Project, target: Option<&str>) -> Result<AuditReport, EngineError> {
    match target {
        Some(t) => audit_stages(project, Some(&[t.to_string()]), Some(t)),
        None => audit_stages(project, None, None),
    }
}

/// Audit the ancestry of `stages` (every stage in the lock for `None`); `label` names them in the report.
/// An `audit` stage among them stands for what it audits (its inputs), so `genrelab audit <that stage>`
/// prints what its artifact holds.
pub fn audit_stages(
    project: &Project,
    stages: Option<&[String]>,
    label: Option<&str>,
) -> Result<AuditReport, EngineError> {
    let lock = LockFile::load(&project.lock_path)?;
    if lock.stages.is_empty() {
        return Err(EngineError::Other(format!(
            "{} records no stage: there is nothing to audit (`genrelab run` writes it)",
            project.lock_path.display()
        )));
    }
    let roots: Vec<(String, Digest)> = match stages {
        None => lock
            .stages
            .iter()
            .map(|(name, e)| (name.clone(), e.manifest.clone()))
            .collect(),
        Some(names) => {
            let mut roots = Vec::new();
            for name in names {
                let entry = lock.stages.get(name).ok_or_else(|| {
                    EngineError::UnknownStage(
                        name.clone(),
                        format!(" in {}", project.lock_path.display()),
                    )
                })?;
                if entry.kind == AUDIT_KIND {
                    roots.extend(audited_by(project, name, &entry.manifest)?);
                } else {
                    roots.push((name.clone(), entry.manifest.clone()));
                }
            }
            roots
        }
    };
    // The stages named on the command line answer for their own leaks, replica or not.
    let explicit: BTreeSet<Digest> = match stages {
        Some(_) => roots.iter().map(|(_, d)| d.clone()).collect(),
        None => BTreeSet::new(),
    };
    let ancestry = ancestry::build(project, roots)?;
    let tables = TableSet::load(&ancestry).map_err(|e| EngineError::Other(e.to_string()))?;
    Ok(checks::audit(&ancestry, &tables, &explicit, label))
}

/// The runs an `audit` stage's run audited: its inputs, as its manifest records them.
fn audited_by(
    project: &Project,
    name: &str,
    manifest: &str,
) -> Result<Vec<(String, Digest)>, EngineError> {
    let bytes = project.blobs().read(manifest)?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| EngineError::Other(format!("{name}: manifest not readable: {e}")))?;
    Ok(manifest
        .inputs
        .into_iter()
        .filter_map(|i| Some((i.stage, i.manifest?)))
        .collect())
}
