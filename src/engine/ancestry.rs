//! A stage's ancestry from the store: every manifest reachable from some runs through the inputs each
//! names, as the contract's [`Ancestry`]. The engine hands it to a kind that asks for it
//! (`StageKind::wants_ancestry`); `genrelab audit` builds the same from pipeline.lock.
//!
//! Manifests are walked by digest, never through the lock, so an ancestry is what those runs actually
//! consumed however the lock has moved on. Every object read is checked against its digest.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::hashing::{digest_bytes, short, Digest};
use crate::manifest::Manifest;
use crate::stage::{
    Ancestor, AncestorInput, Ancestry, ArtifactSource, HandedSplit, Lineage, StageError,
};
use crate::store::{BlobStore, LocalStore};

use super::{EngineError, Project};

/// Reads stored objects for a stage, each checked against its digest before the stage sees a byte.
struct StoreSource(LocalStore);

impl ArtifactSource for StoreSource {
    fn read(&self, digest: &str) -> Result<Vec<u8>, StageError> {
        read_checked(&self.0, digest).map_err(|e| StageError::Invalid(e.to_string()))
    }
}

fn read_checked(blobs: &dyn BlobStore, digest: &str) -> Result<Vec<u8>, EngineError> {
    let bytes = blobs.read(digest)?;
    if digest_bytes(&bytes) != digest {
        return Err(EngineError::Other(format!(
            "{} no longer matches its digest; `genrelab verify` names what is damaged",
            short(digest)
        )));
    }
    Ok(bytes)
}

/// Every run reachable from `roots` (stage name, manifest digest) through the inputs each manifest names.
pub fn build(project: &Project, roots: Vec<(String, Digest)>) -> Result<Ancestry, EngineError> {
    let blobs = project.blobs();
    let mut stages: BTreeMap<String, Ancestor> = BTreeMap::new();
    let mut todo = roots.clone();
    while let Some((name, digest)) = todo.pop() {
        if stages.contains_key(&digest) {
            continue;
        }
        if !blobs.contains(&digest) {
            return Err(EngineError::Other(format!(
                "{name}: manifest {} is not in the store (collected?); run `genrelab run` first",
                short(&digest)
            )));
        }
        let bytes = read_checked(blobs, &digest)
            .map_err(|e| EngineError::Other(format!("{name}: manifest {e}")))?;
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            EngineError::Other(format!(
                "{name}: manifest {}: not readable: {e}",
                short(&digest)
            ))
        })?;
        let lineage: Lineage = serde_json::from_value(manifest.lineage.clone()).map_err(|e| {
            EngineError::Other(format!("{name}: lineage records not readable: {e}"))
        })?;
        for input in &manifest.inputs {
            if let Some(d) = &input.manifest {
                todo.push((input.stage.clone(), d.clone()));
            }
        }
        stages.insert(digest.clone(), ancestor(name, digest, manifest, lineage));
    }
    let source = StoreSource(LocalStore::open(&project.dir.join("artifacts"))?);
    Ok(Ancestry::new(roots, stages, Arc::new(source)))
}

fn ancestor(name: String, digest: Digest, manifest: Manifest, lineage: Lineage) -> Ancestor {
    Ancestor {
        name,
        kind: manifest.kind,
        manifest: digest,
        params: manifest.params,
        lineage,
        outputs: manifest
            .outputs
            .into_iter()
            .map(|(name, o)| (name, o.digest))
            .collect(),
        inputs: manifest
            .inputs
            .into_iter()
            .map(|i| AncestorInput {
                stage: i.stage,
                manifest: i.manifest,
                artifacts: i.artifacts,
            })
            .collect(),
        split_reads: manifest
            .split_reads
            .into_iter()
            .map(|(split, reads)| {
                let reads = reads
                    .into_iter()
                    .map(|r| HandedSplit {
                        stage: r.stage,
                        artifact: r.artifact,
                        digest: r.digest,
                    })
                    .collect();
                (split, reads)
            })
            .collect(),
    }
}
