//! The synthetic GTZAN-shaped corpus generator (placeholder until the generator lands).

use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SynthParams {
    pub tracks_per_genre: u32,
    pub seed: u64,
}

impl Default for SynthParams {
    fn default() -> Self {
        SynthParams {
            tracks_per_genre: 30,
            seed: 42,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("synthetic corpus generator not available yet")]
pub struct SynthError;

pub struct SynthOutcome {
    pub generated: bool,
    pub tracks: usize,
}

pub fn ensure_corpus(_params: &SynthParams, _root: &Path) -> Result<SynthOutcome, SynthError> {
    Err(SynthError)
}
