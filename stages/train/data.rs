//! One split's standardised segments held in memory for training and evaluation: values read through the
//! scaler's statistics, labels, and each segment's track as an index (for track-level metrics).

use std::collections::BTreeMap;

use genrelab_contract::{Split, StageError};

use super::fit::SegmentSet;
use crate::common::scaled_reader::ScaledFeatures;
use crate::common::tables::SegmentTable;

/// A split's segments in segment-table order.
pub struct LoadedSplit {
    pub split: Split,
    pub values: Vec<f32>,
    pub labels: Vec<u32>,
    /// Index into `track_ids` per segment.
    pub tracks: Vec<u32>,
    /// Distinct track ids, sorted.
    pub track_ids: Vec<String>,
    pub n_mels: usize,
    pub frames: usize,
}

impl LoadedSplit {
    /// Reads `split` through `features` (which must have been opened with it), checked against `segments`.
    pub fn load(
        features: &ScaledFeatures,
        segments: &SegmentTable,
        split: Split,
    ) -> Result<Self, StageError> {
        let rows = features.split(segments, split)?;
        let (n_mels, frames) = rows.dims();
        let mut values = Vec::with_capacity(rows.rows() * rows.row_len());
        for batch in rows.batches() {
            values.extend_from_slice(batch.values());
        }
        let ids: Vec<&str> = segments.of_split(split).map(|s| s.track.as_str()).collect();
        let mut track_ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        track_ids.sort_unstable();
        track_ids.dedup();
        let index: BTreeMap<&str, u32> = track_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i as u32))
            .collect();
        let tracks = ids.iter().map(|id| index[id]).collect();
        Ok(LoadedSplit {
            split,
            values,
            labels: rows.labels().to_vec(),
            tracks,
            track_ids,
            n_mels,
            frames,
        })
    }

    pub fn as_set(&self) -> SegmentSet<'_> {
        SegmentSet {
            values: &self.values,
            n_mels: self.n_mels,
            frames: self.frames,
            labels: &self.labels,
            tracks: &self.tracks,
        }
    }
}
