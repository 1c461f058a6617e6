//! Record-level lineage: what a stage says it did with which rows, in typed records that `audit` proves
//! invariants from (a scaler fitted on train tracks only, a model selected on val, test scored once).
//!
//! A record is the stage's own statement, so the engine checks each against what it handed the stage: a
//! record about split `s` is accepted only if the stage was given an `…@s` artifact (see [`crate::Split`]).
//! What the engine handed over is recorded beside the lineage by the engine itself, not by the stage.

use serde::{Deserialize, Serialize};

use crate::Split;

/// A stage's lineage: typed records, and details for people.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lineage {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<Record>,
    /// Counts, shapes, names for a person reading `genrelab lineage`; `audit` never reads them.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

impl Lineage {
    pub fn details(details: serde_json::Value) -> Self {
        Lineage {
            records: Vec::new(),
            details,
        }
    }

    pub fn with(mut self, record: Record) -> Self {
        self.records.push(record);
        self
    }
}

/// One statement about rows of one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    /// The split's assignment: these tracks (sorted ids) went to `split`.
    SplitTracks { split: Split, tracks: Vec<String> },
    /// Segments cut from `split`'s tracks.
    Segments {
        split: Split,
        segments: usize,
        tracks: usize,
    },
    /// `what` (scaler statistics, model weights) was fitted on exactly these rows: the tracks (sorted ids)
    /// and a blake3 of the segment ids in row order.
    Fit {
        what: String,
        split: Split,
        tracks: Vec<String>,
        segments: usize,
        segment_ids_digest: String,
    },
    /// A score (`what`: accuracy, loss) was computed on `segments` rows of `split`.
    Scored {
        what: String,
        split: Split,
        segments: usize,
    },
    /// A choice (early stopping's best epoch, the tournament's champion) was made by scores on `by`. The
    /// scores may come from upstream artifacts (the tournament ranks model cards' val scores), so this record
    /// requires no read of `by` itself; the [`Record::Scored`] records that produced them do.
    Selected {
        what: String,
        by: Split,
        chosen: String,
    },
    /// The tracks (sorted ids) of one part of the stage's rows that is not a whole split: a CV fold's
    /// held-out rows, and the rows that drove its early stopping. Their rows are counted by the
    /// [`Record::Scored`] records of the same `what`; `audit` checks the parts against the fold's fit sets.
    Part {
        what: String,
        role: PartRole,
        tracks: Vec<String>,
    },
}

/// What a [`Record::Part`]'s rows were used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartRole {
    /// Chose the best epoch and drove the learning-rate schedule.
    EarlyStopping,
    /// Gave the score that is reported.
    HeldOut,
}

impl Record {
    /// The split whose rows the stage must have been handed for this record to be true; `None` for
    /// records that describe the stage's own outputs (the split it made, the segments it cut).
    pub fn requires(&self) -> Option<Split> {
        match self {
            Record::SplitTracks { .. }
            | Record::Segments { .. }
            | Record::Selected { .. }
            | Record::Part { .. } => None,
            Record::Fit { split, .. } | Record::Scored { split, .. } => Some(*split),
        }
    }
}

/// blake3 over ids in order, each length-prefixed: the digest a [`Record::Fit`] names its rows by.
pub fn ids_digest<'a>(ids: impl IntoIterator<Item = &'a str>) -> String {
    let mut hasher = blake3::Hasher::new();
    for id in ids {
        hasher.update(&(id.len() as u64).to_le_bytes());
        hasher.update(id.as_bytes());
    }
    hasher.finalize().to_hex().to_string()
}
