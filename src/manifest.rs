//! The manifest: the lineage record every stage run publishes next to its outputs, content-addressed.
//!
//! A manifest names the action (kind, key, code, params), the exact inputs it consumed (each with the
//! digest of the manifest that produced it, so lineage is walked through immutable records, not through a
//! lock file that may have moved on), its outputs, and the stage's record-level lineage (which tracks,
//! segments and splits). Nothing wall-clock goes in: run times and hosts live in `artifacts/runs/`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hashing::Digest;
use crate::stage::Split;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub engine_version: u32,
    pub tool: String,
    pub kind: String,
    pub key: Digest,
    pub code: BTreeMap<String, Digest>,
    pub params: serde_json::Value,
    pub params_digest: Digest,
    /// In declared order.
    pub inputs: Vec<ManifestInput>,
    pub outputs: BTreeMap<String, OutputInfo>,
    /// Files named by params (dotted param path -> the file as written and the bytes read).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, ParamFileInfo>,
    /// Every per-split input artifact (`features@test`) the engine handed the stage, by split. Written by
    /// the engine from the stage's declared needs, never by the stage: `audit` reads who saw test here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub split_reads: BTreeMap<Split, Vec<SplitRead>>,
    /// The stage's own typed records ([`crate::stage::Lineage`]), checked against `split_reads`.
    pub lineage: serde_json::Value,
    pub summary: Vec<String>,
}

/// One per-split artifact a stage was handed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitRead {
    pub stage: String,
    pub artifact: String,
    pub digest: Digest,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestInput {
    pub stage: String,
    /// The producing run's manifest; `None` for the raw dataset.
    pub manifest: Option<Digest>,
    pub artifacts: BTreeMap<String, Digest>,
    /// For the raw dataset: its root as written in pipeline.yaml and its file count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub root: String,
    pub files: usize,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputInfo {
    pub digest: Digest,
    /// For a folder, the total of its files.
    pub bytes: u64,
    /// A folder output: `digest` names its tree object.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub folder: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamFileInfo {
    /// As written in pipeline.yaml.
    pub path: String,
    pub digest: Digest,
    pub bytes: u64,
}
