//! A stage's ancestry: every stage upstream of it, as the engine recorded each run (its manifest), for the
//! few kinds that check how results were made rather than compute on them (the leakage audit).
//!
//! Everything here comes from the engine's records, not from a stage's claim: the input edges name the
//! artifact and the manifest of the run that produced it, the per-split reads are what the engine handed
//! the stage. A stage reads an ancestor's output only through [`Ancestry::read`], which serves the bytes
//! of that output's digest and nothing else (the engine checks them against it).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::{Lineage, Split, StageError};

/// One input of an ancestor, as its manifest records it.
#[derive(Debug, Clone, PartialEq)]
pub struct AncestorInput {
    /// The upstream stage's name (as the consuming stage listed it).
    pub stage: String,
    /// The manifest of the run that produced the artifacts; `None` for the raw dataset.
    pub manifest: Option<String>,
    /// Artifact name -> digest, only the artifacts the ancestor's kind needs.
    pub artifacts: BTreeMap<String, String>,
}

/// One per-split artifact the engine handed an ancestor (`features@test` of stage `features`).
#[derive(Debug, Clone, PartialEq)]
pub struct HandedSplit {
    pub stage: String,
    pub artifact: String,
    pub digest: String,
}

/// One ancestor's run, from its manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Ancestor {
    pub name: String,
    pub kind: String,
    /// The manifest's digest: identifies this run.
    pub manifest: String,
    /// Canonical params.
    pub params: serde_json::Value,
    /// The stage's own typed records.
    pub lineage: Lineage,
    /// Output name -> digest.
    pub outputs: BTreeMap<String, String>,
    /// In declared order.
    pub inputs: Vec<AncestorInput>,
    /// What the engine handed the stage, by split.
    pub split_reads: BTreeMap<Split, Vec<HandedSplit>>,
}

impl Ancestor {
    /// The digest of input artifact `artifact` and the manifest of the run that produced it.
    pub fn input(&self, artifact: &str) -> Option<(&str, Option<&str>)> {
        self.inputs.iter().find_map(|i| {
            i.artifacts
                .get(artifact)
                .map(|d| (d.as_str(), i.manifest.as_deref()))
        })
    }

    pub fn output(&self, artifact: &str) -> Option<&str> {
        self.outputs.get(artifact).map(String::as_str)
    }
}

/// Reads a stored object by digest; the engine's side checks the bytes against the digest.
pub trait ArtifactSource: Send + Sync {
    fn read(&self, digest: &str) -> Result<Vec<u8>, StageError>;
}

/// Every stage upstream of some roots (a stage's inputs), by manifest digest.
#[derive(Clone)]
pub struct Ancestry {
    roots: Vec<(String, String)>,
    stages: BTreeMap<String, Ancestor>,
    source: Arc<dyn ArtifactSource>,
}

impl std::fmt::Debug for Ancestry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ancestry")
            .field("roots", &self.roots)
            .field("stages", &self.stages.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Ancestry {
    /// `roots` are (stage name, manifest digest) in the order listed; `stages` holds every ancestor reachable
    /// from them by manifest digest, the roots included.
    pub fn new(
        roots: Vec<(String, String)>,
        stages: BTreeMap<String, Ancestor>,
        source: Arc<dyn ArtifactSource>,
    ) -> Self {
        Ancestry {
            roots,
            stages,
            source,
        }
    }

    /// The stages whose ancestry this is: (name, manifest digest).
    pub fn roots(&self) -> &[(String, String)] {
        &self.roots
    }

    /// Every ancestor by manifest digest.
    pub fn stages(&self) -> &BTreeMap<String, Ancestor> {
        &self.stages
    }

    pub fn get(&self, manifest: &str) -> Option<&Ancestor> {
        self.stages.get(manifest)
    }

    /// The manifests of every ancestor of `manifest` (not itself).
    pub fn upstream_of(&self, manifest: &str) -> BTreeSet<&str> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![manifest];
        while let Some(d) = todo.pop() {
            if let Some(stage) = self.stages.get(d) {
                for m in stage.inputs.iter().filter_map(|i| i.manifest.as_deref()) {
                    if seen.insert(m) {
                        todo.push(m);
                    }
                }
            }
        }
        seen
    }

    /// The bytes of an ancestor's output or input artifact `digest`; any other digest is refused, so what
    /// a stage reads is always something its ancestry names.
    pub fn read(&self, digest: &str) -> Result<Vec<u8>, StageError> {
        let named = self.stages.values().any(|s| {
            s.outputs.values().any(|d| d == digest)
                || s.inputs
                    .iter()
                    .any(|i| i.artifacts.values().any(|d| d == digest))
        });
        if !named {
            return Err(StageError::Invalid(format!(
                "artifact {} is not among the ancestry's artifacts",
                digest.get(..12).unwrap_or(digest)
            )));
        }
        self.source.read(digest)
    }

    /// [`Self::read`] as JSON; `what` names the artifact in errors.
    pub fn read_json<T: DeserializeOwned>(
        &self,
        digest: &str,
        what: &str,
    ) -> Result<T, StageError> {
        let bytes = self.read(digest)?;
        serde_json::from_slice(&bytes).map_err(|e| {
            StageError::bad_input(
                what,
                format!("{}: not readable: {e}", digest.get(..12).unwrap_or(digest)),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(BTreeMap<String, Vec<u8>>);

    impl ArtifactSource for Fixed {
        fn read(&self, digest: &str) -> Result<Vec<u8>, StageError> {
            self.0
                .get(digest)
                .cloned()
                .ok_or_else(|| StageError::Invalid(format!("{digest} missing")))
        }
    }

    fn stage(name: &str, manifest: &str, input: Option<&str>, output: &str) -> Ancestor {
        Ancestor {
            name: name.into(),
            kind: "k".into(),
            manifest: manifest.into(),
            params: serde_json::Value::Null,
            lineage: Lineage::default(),
            outputs: [("data".to_string(), output.to_string())].into(),
            inputs: input
                .map(|m| AncestorInput {
                    stage: "up".into(),
                    manifest: Some(m.into()),
                    artifacts: BTreeMap::new(),
                })
                .into_iter()
                .collect(),
            split_reads: BTreeMap::new(),
        }
    }

    #[test]
    fn only_artifacts_the_ancestry_names_are_read() {
        let stages: BTreeMap<String, Ancestor> = [
            ("m1".to_string(), stage("a", "m1", None, "d1")),
            ("m2".to_string(), stage("b", "m2", Some("m1"), "d2")),
        ]
        .into();
        let source = Fixed(
            [
                ("d1".to_string(), b"1".to_vec()),
                ("secret".to_string(), b"s".to_vec()),
            ]
            .into(),
        );
        let ancestry = Ancestry::new(vec![("b".into(), "m2".into())], stages, Arc::new(source));
        assert_eq!(ancestry.read("d1").unwrap(), b"1");
        assert!(ancestry.read("secret").is_err());
        assert_eq!(ancestry.upstream_of("m2"), BTreeSet::from(["m1"]));
        assert!(ancestry.upstream_of("m1").is_empty());
        assert_eq!(ancestry.read_json::<u32>("d1", "data").unwrap(), 1);
    }
}
