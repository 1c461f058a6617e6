//! Standardised features, computed as they are read: the `features` artifact plus the `scaler` artifact's
//! fitted statistics give `(x - mean) / std` per value. Every stage that wants scaled log-mel reads through
//! here, so there is no scaled copy of the features in the store (on real GTZAN one is about 650 MB, and
//! cross-validation would store five).
//!
//! Invariants:
//! - A value is `((x as f64 - mean) / std) as f32`: the subtraction and division in f64, one rounding to f32.
//!   These are the exact bits the scaler's former `scaled` output held, so models trained through this reader
//!   see what the baseline always saw.
//! - Each value depends on its own input and its cell's statistics only; parallel work splits rows and
//!   collects them in order, so the output is the same whatever the thread count.
//! - Rows are decoded a batch at a time ([`BATCH_ROWS`]) through the features file's memory map: memory is
//!   bounded by one batch, not by the file.
//! - The features split is checked against the segment table ([`open_split`]) and the statistics against
//!   the features' shape; a malformed statistic (non-finite, or a std that is not positive) is an error, since
//!   it would turn every value it touches into garbage silently.
//!
//! The `scaler` artifact: tensors `mean` and `std` (F64, `[n_mels, frames]` for one pair per cell or
//! `[n_mels]` for one pair per mel band) and `count` (U32 `[1]`, the train segments fitted on).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::split_tensors::{open_split, SplitTensor, FEATURES};
use super::tables::SegmentTable;
use super::tensors::{Dtype, Tensor, TensorFile, TensorSpec, TensorWriter};
use genrelab_contract::{Split, StageContext, StageError};

/// Rows decoded and scaled at once: enough to keep workers busy, 4 MiB of f32 at 128 x 128.
pub const BATCH_ROWS: usize = 64;

/// The `scaler` artifact's statistics as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalerStats {
    /// `[n_mels, frames]` (per cell) or `[n_mels]` (per mel band).
    pub shape: Vec<usize>,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// Train segments the statistics were fitted on.
    pub count: u32,
}

impl ScalerStats {
    /// Writes the `scaler` artifact: the one writer of this format, for the scaler stage and every test.
    pub fn write(&self, path: &Path) -> Result<(), StageError> {
        let mut out = TensorWriter::create(
            path,
            vec![
                TensorSpec::new("mean", Dtype::F64, self.shape.clone()),
                TensorSpec::new("std", Dtype::F64, self.shape.clone()),
                TensorSpec::new("count", Dtype::U32, vec![1]),
            ],
        )?;
        out.write_f64(&self.mean)?;
        out.write_f64(&self.std)?;
        out.write_u32(&[self.count])?;
        out.finish()
    }

    /// Reads and checks a `scaler` artifact.
    pub fn read(path: &Path) -> Result<Self, StageError> {
        let file = TensorFile::open(path)?;
        let mean = file.tensor("mean")?;
        let std = file.tensor("std")?;
        let count = file.tensor("count")?;
        let stat_ok = |t: &Tensor| {
            t.dtype == Dtype::F64 && matches!(t.shape.len(), 1 | 2) && !t.shape.contains(&0)
        };
        if !stat_ok(&mean) || !stat_ok(&std) || mean.shape != std.shape {
            return Err(StageError::bad_file(
                path,
                format!(
                    "tensors `mean` and `std` must both be F64 [n_mels, frames] or [n_mels], found {:?} {:?} and {:?} {:?}",
                    mean.dtype, mean.shape, std.dtype, std.shape
                ),
            ));
        }
        if count.dtype != Dtype::U32 || count.shape != [1] {
            return Err(StageError::bad_file(
                path,
                format!(
                    "tensor `count` must be U32 [1], found {:?} {:?}",
                    count.dtype, count.shape
                ),
            ));
        }
        let stats = ScalerStats {
            shape: mean.shape.clone(),
            mean: mean.to_f64(),
            std: std.to_f64(),
            count: count.to_u32()[0],
        };
        if let Some(k) = stats.mean.iter().position(|m| !m.is_finite()) {
            return Err(StageError::bad_file(
                path,
                format!("mean {k} is {}, not a finite number", stats.mean[k]),
            ));
        }
        // The scaler stores 1 for a constant cell, so anything not finite and positive is damage, not data.
        if let Some(k) = stats.std.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(StageError::bad_file(
                path,
                format!("std {k} is {}, not a positive number", stats.std[k]),
            ));
        }
        Ok(stats)
    }

    /// Mean and std for every cell of an `n_mels x frames` segment (mel-major), so the hot loop indexes one
    /// way whatever the scaler's mode. `None` if the statistics were fitted on another shape.
    fn per_cell(&self, n_mels: usize, frames: usize) -> Option<(Vec<f64>, Vec<f64>)> {
        match self.shape.as_slice() {
            [m, f] if (*m, *f) == (n_mels, frames) => Some((self.mean.clone(), self.std.clone())),
            [m] if *m == n_mels => {
                let spread = |v: &[f64]| {
                    v.iter()
                        .flat_map(|&x| std::iter::repeat_n(x, frames))
                        .collect()
                };
                Some((spread(&self.mean), spread(&self.std)))
            }
            _ => None,
        }
    }
}

/// The per-split `features@<split>` artifacts read through fitted scaler statistics.
pub struct ScaledFeatures {
    /// Only the splits given to [`ScaledFeatures::open`]: asking for another is an error, never a read.
    files: BTreeMap<Split, (TensorFile, PathBuf)>,
    stats: ScalerStats,
}

impl ScaledFeatures {
    /// Opens the `scaler` artifact at `scaler` and each given split's features file.
    pub fn open(scaler: &Path, splits: &[(Split, &Path)]) -> Result<Self, StageError> {
        Self::with_stats(ScalerStats::read(scaler)?, splits)
    }

    /// Each given split's features file read through statistics fitted in memory (a cross-validation fold's
    /// own scaler), never written as an artifact.
    pub fn with_stats(stats: ScalerStats, splits: &[(Split, &Path)]) -> Result<Self, StageError> {
        let mut files = BTreeMap::new();
        for &(split, path) in splits {
            files.insert(split, (TensorFile::open(path)?, path.to_path_buf()));
        }
        Ok(ScaledFeatures { files, stats })
    }

    /// The scaler and the given splits' features among a stage's inputs (`scaler`, `features@<split>`).
    pub fn from_inputs(ctx: &StageContext, splits: &[Split]) -> Result<Self, StageError> {
        let paths = splits
            .iter()
            .map(|&split| Ok((split, ctx.split_input(FEATURES, split)?)))
            .collect::<Result<Vec<_>, StageError>>()?;
        Self::open(ctx.input("scaler")?, &paths)
    }

    /// One split, checked against the segment table; nothing is decoded until rows are asked for, so a
    /// split that is never opened is never read.
    pub fn split(
        &self,
        segments: &SegmentTable,
        split: Split,
    ) -> Result<ScaledSplit<'_>, StageError> {
        let (file, path) = self.files.get(&split).ok_or_else(|| {
            StageError::Invalid(format!(
                "features of split `{split}` were not opened (opened: {})",
                self.files
                    .keys()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let SplitTensor { values, labels } =
            open_split(file, path, &split.artifact(FEATURES), segments, split)?;
        let (n_mels, frames) = (values.shape[1], values.shape[2]);
        let (mean, std) = self.stats.per_cell(n_mels, frames).ok_or_else(|| {
            StageError::bad_input(
                "scaler",
                format!(
                    "statistics of shape {:?} do not fit the features' {split} segments of {n_mels} x {frames}",
                    self.stats.shape
                ),
            )
        })?;
        Ok(ScaledSplit {
            values,
            labels,
            n_mels,
            frames,
            mean,
            std,
        })
    }
}

/// One split's standardised rows, in segment-table order.
pub struct ScaledSplit<'a> {
    values: Tensor<'a>,
    labels: Vec<u32>,
    n_mels: usize,
    frames: usize,
    mean: Vec<f64>,
    std: Vec<f64>,
}

impl ScaledSplit<'_> {
    pub fn rows(&self) -> usize {
        self.values.rows()
    }

    /// Values per row: `n_mels * frames`.
    pub fn row_len(&self) -> usize {
        self.n_mels * self.frames
    }

    /// `(n_mels, frames)` of one segment.
    pub fn dims(&self) -> (usize, usize) {
        (self.n_mels, self.frames)
    }

    /// One label per row, checked against the segment table.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// Row `i` standardised into `out` (resized to fit); `raw` is scratch space for the unscaled row.
    /// Panics if `i >= self.rows()`, as slice indexing does.
    pub fn row_into(&self, i: usize, raw: &mut Vec<f32>, out: &mut Vec<f32>) {
        self.values.row_f32_into(i, raw);
        out.clear();
        out.extend(
            raw.iter()
                .zip(self.mean.iter().zip(&self.std))
                .map(|(&x, (&m, &s))| ((f64::from(x) - m) / s) as f32),
        );
    }

    /// Rows `start..start + len` (clamped to the split), decoded and scaled in parallel, in row order.
    pub fn batch(&self, start: usize, len: usize) -> ScaledBatch {
        let end = start.saturating_add(len).min(self.rows());
        let start = start.min(end);
        let row_len = self.row_len();
        let mut values = vec![0.0f32; (end - start) * row_len];
        values
            .par_chunks_exact_mut(row_len)
            .enumerate()
            .for_each_init(
                || (Vec::new(), Vec::new()),
                |(raw, row), (k, slot)| {
                    self.row_into(start + k, raw, row);
                    slot.copy_from_slice(row);
                },
            );
        ScaledBatch {
            start,
            row_len,
            values,
        }
    }

    /// Every row in order, [`BATCH_ROWS`] at a time.
    pub fn batches(&self) -> impl Iterator<Item = ScaledBatch> + '_ {
        (0..self.rows())
            .step_by(BATCH_ROWS)
            .map(|start| self.batch(start, BATCH_ROWS))
    }

    /// `f` of every standardised row, in row order; rows are held one batch at a time.
    pub fn map_rows<T, F>(&self, f: F) -> Vec<T>
    where
        T: Send,
        F: Fn(&[f32]) -> T + Sync,
    {
        let mut out = Vec::with_capacity(self.rows());
        for batch in self.batches() {
            let mapped: Vec<T> = batch
                .values
                .par_chunks_exact(batch.row_len)
                .map(&f)
                .collect();
            out.extend(mapped);
        }
        out
    }
}

/// Consecutive standardised rows of one split.
pub struct ScaledBatch {
    /// Index of the first row within the split.
    pub start: usize,
    row_len: usize,
    values: Vec<f32>,
}

impl ScaledBatch {
    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.values.len() / self.row_len
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The rows back to back, row-major.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// Row `k` of the batch (row `start + k` of the split).
    pub fn row(&self, k: usize) -> &[f32] {
        &self.values[k * self.row_len..(k + 1) * self.row_len]
    }
}
