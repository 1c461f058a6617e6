//! Stage `scaler`: fits log-mel standardisation statistics on the train split only.
//!
//! The study used scikit-learn's `StandardScaler` on each segment's flattened 128 x 128 values: one mean and
//! one standard deviation per (mel, frame) cell, population variance (ddof 0), a zero deviation replaced by 1.
//! `mode: band` pools each mel band over all frames instead.
//!
//! The artifact is the fitted statistics only. Consumers standardise as they read, through
//! [`crate::common::scaled_reader`]: a scaled copy of the features would cost as much store as the
//! features themselves (about 650 MB on real GTZAN), once per refit.
//!
//! Invariants:
//! - Only train segments enter the fit; val and test are only checked for shape and labels, so the
//!   statistics are known to apply to every split. The lineage names the exact fit set (its tracks and a
//!   digest of its segment ids) so the leakage audit can check it.
//! - Every statistic is a sequential f64 sum in segment order (then, for bands, in frame order). Parallel work
//!   splits the *cells*, never the sum over segments, so the output bytes do not depend on the thread count.
//! - The features file is read row by row through its memory map: rows are held a batch at a time.
//!
//! Output `scaler`: tensors `mean` and `std` (F64, shape `[n_mels, frames]` per cell or `[n_mels]` per band)
//! and `count` (U32 `[1]`, the number of train segments fitted on). A stored std is never 0.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::common::scaled_reader::ScalerStats;
use crate::common::split_tensors::{open_split, FEATURES};
use crate::common::tables::SegmentTable;
use crate::common::tensors::TensorFile;
use genrelab_contract::{
    Determinism, Lineage, Need, Record, Split, StageContext, StageError, StageKind, StageReport,
    TypedStage,
};

#[cfg(test)]
mod tests;

/// Rows decoded at once: large enough to keep workers busy, small enough (4 MiB at 128 x 128) to stream.
const BATCH_ROWS: usize = 64;
/// Cells per parallel work item in the accumulation passes (only affects speed, never results).
const CELL_CHUNK: usize = 1024;

/// Which values share one mean and one standard deviation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One pair per (mel, frame) cell: what the study's `StandardScaler` on flattened segments does.
    #[default]
    Cell,
    /// One pair per mel band, pooled over all frames of all train segments (time-shift invariant).
    Band,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Cell => "cell",
            Mode::Band => "band",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Default `cell`, the study's per-(mel, frame) standardisation.
    pub mode: Mode,
}

impl genrelab_contract::StageParams for Params {}

/// Fitted statistics. `mean` and `std` have `n_mels * frames` entries (cell) or `n_mels` (band).
#[derive(Debug, Clone, PartialEq)]
pub struct Fitted {
    pub mode: Mode,
    pub n_mels: usize,
    pub frames: usize,
    /// Train segments the statistics were computed from.
    pub count: usize,
    pub mean: Vec<f64>,
    /// Population standard deviation, a zero replaced by 1 so constant cells map to 0 instead of NaN.
    pub std: Vec<f64>,
}

impl Fitted {
    /// Index into `mean`/`std` for a flat (mel-major) cell index.
    fn stat_index(&self, cell: usize) -> usize {
        match self.mode {
            Mode::Cell => cell,
            Mode::Band => cell / self.frames,
        }
    }

    /// The shape of the `mean`/`std` tensors.
    pub fn stat_shape(&self) -> Vec<usize> {
        match self.mode {
            Mode::Cell => vec![self.n_mels, self.frames],
            Mode::Band => vec![self.n_mels],
        }
    }
}

/// Decodes rows `start..end` (in order) through `read_row`, in parallel.
fn read_batch<R>(read_row: &R, start: usize, end: usize) -> Vec<Vec<f32>>
where
    R: Fn(usize, &mut Vec<f32>) + Sync,
{
    (start..end)
        .into_par_iter()
        .map(|i| {
            let mut row = Vec::new();
            read_row(i, &mut row);
            row
        })
        .collect()
}

/// Adds `term(cell, x)` of every row, in row order, into `acc` (one slot per cell). Workers own disjoint
/// cell ranges, so each slot's sum has the same grouping whatever the thread count.
fn accumulate<R, T>(
    n: usize,
    cells: usize,
    read_row: &R,
    acc: &mut [f64],
    term: T,
    tick: &dyn Fn(u64),
) -> Result<(), StageError>
where
    R: Fn(usize, &mut Vec<f32>) + Sync,
    T: Fn(usize, f32) -> f64 + Sync,
{
    for start in (0..n).step_by(BATCH_ROWS) {
        let end = (start + BATCH_ROWS).min(n);
        let batch = read_batch(read_row, start, end);
        if let Some(k) = batch.iter().position(|r| r.len() != cells) {
            return Err(StageError::Invalid(format!(
                "train row {} has {} values, expected {cells}",
                start + k,
                batch[k].len()
            )));
        }
        acc.par_chunks_mut(CELL_CHUNK)
            .enumerate()
            .for_each(|(chunk, slots)| {
                let offset = chunk * CELL_CHUNK;
                for row in &batch {
                    let values = &row[offset..offset + slots.len()];
                    for (k, (slot, &x)) in slots.iter_mut().zip(values).enumerate() {
                        *slot += term(offset + k, x);
                    }
                }
            });
        tick((end - start) as u64);
    }
    Ok(())
}

/// Fits the scaler on `n` rows of `n_mels * frames` values each, `read_row(i, buf)` filling row `i`.
///
/// Two passes (mean, then mean squared deviation) rather than a one-pass sum of squares: dB values sit far
/// from zero (about -40), where the one-pass formula cancels badly.
pub fn fit<R>(
    n: usize,
    n_mels: usize,
    frames: usize,
    mode: Mode,
    read_row: &R,
    tick: &dyn Fn(u64),
) -> Result<Fitted, StageError>
where
    R: Fn(usize, &mut Vec<f32>) + Sync,
{
    if n == 0 {
        return Err(StageError::Invalid(
            "cannot fit the scaler: the train split has no segments".into(),
        ));
    }
    let cells = n_mels * frames;
    if cells == 0 {
        return Err(StageError::Invalid(format!(
            "cannot fit the scaler on empty segments ({n_mels} mels x {frames} frames)"
        )));
    }
    // Per band, the pooled sum is the frame-ordered sum of the per-cell sums: still a fixed grouping.
    let reduce = |per_cell: &[f64]| -> Vec<f64> {
        match mode {
            Mode::Cell => per_cell.to_vec(),
            Mode::Band => per_cell
                .chunks(frames)
                .map(|band| band.iter().sum())
                .collect(),
        }
    };
    let per_stat = match mode {
        Mode::Cell => n as f64,
        Mode::Band => (n * frames) as f64,
    };

    let mut sums = vec![0.0f64; cells];
    accumulate(n, cells, read_row, &mut sums, |_, x| f64::from(x), tick)?;
    let mean: Vec<f64> = reduce(&sums).into_iter().map(|s| s / per_stat).collect();
    if let Some(k) = mean.iter().position(|m| !m.is_finite()) {
        return Err(StageError::Invalid(format!(
            "train features contain non-finite values ({} {k})",
            match mode {
                Mode::Cell => "cell",
                Mode::Band => "mel band",
            }
        )));
    }

    let partial = Fitted {
        mode,
        n_mels,
        frames,
        count: n,
        mean,
        std: Vec::new(),
    };
    let cell_mean: Vec<f64> = (0..cells)
        .map(|c| partial.mean[partial.stat_index(c)])
        .collect();
    let mut squares = vec![0.0f64; cells];
    accumulate(
        n,
        cells,
        read_row,
        &mut squares,
        |c, x| {
            let d = f64::from(x) - cell_mean[c];
            d * d
        },
        tick,
    )?;
    let std = reduce(&squares)
        .into_iter()
        .map(|s| {
            let sd = (s / per_stat).sqrt();
            // sklearn's `_handle_zeros_in_scale`: a constant feature is left unscaled rather than divided by 0.
            if sd == 0.0 {
                1.0
            } else {
                sd
            }
        })
        .collect();
    Ok(Fitted { std, ..partial })
}

fn run(params: &Params, ctx: &StageContext) -> Result<StageReport, StageError> {
    let features_path = ctx.split_input(FEATURES, Split::Train)?;
    let segments: SegmentTable = genrelab_contract::read_json(ctx.input("segments")?, "segments")?;
    let features = TensorFile::open(features_path)?;
    let train = open_split(
        &features,
        features_path,
        &Split::Train.artifact(FEATURES),
        &segments,
        Split::Train,
    )?;
    let (n_mels, frames) = train.dims();
    let train = train.values;

    let n_train = train.rows();
    let fit_bar = ctx.progress(2 * n_train as u64, "fit");
    let read_train = |i: usize, buf: &mut Vec<f32>| train.row_f32_into(i, buf);
    let fitted = fit(n_train, n_mels, frames, params.mode, &read_train, &|k| {
        fit_bar.inc(k)
    })?;
    fit_bar.finish_and_clear();

    let count = u32::try_from(fitted.count).map_err(|_| {
        StageError::Invalid(format!(
            "{} train segments exceed the U32 count",
            fitted.count
        ))
    })?;
    let stats = ScalerStats {
        shape: fitted.stat_shape(),
        mean: fitted.mean.clone(),
        std: fitted.std.clone(),
        count,
    };
    stats.write(&ctx.output_path("scaler")?)?;

    let fit_set = segments.fit_record("scaler statistics", Split::Train);
    let n_tracks = match &fit_set {
        Record::Fit { tracks, .. } => tracks.len(),
        _ => 0,
    };
    let average = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let summary = format!(
        "scaler (per {}) fitted on {} train segments from {} tracks; mean {:.1} dB, std {:.1} dB on average",
        params.mode.name(),
        fitted.count,
        n_tracks,
        average(&fitted.mean),
        average(&fitted.std),
    );
    Ok(StageReport {
        lineage: Lineage::details(serde_json::json!({ "mode": params.mode.name() })).with(fit_set),
        summary: vec![summary],
    })
}

// Train rows only: the statistics cannot be fitted on what the engine never hands over.
const NEEDS: &[Need] = &[Need::one("features@train"), Need::one("segments")];

pub fn kind() -> Box<dyn StageKind> {
    Box::new(TypedStage::<Params> {
        kind: "scaler",
        about: "fit log-mel standardisation statistics on the train split only (consumers apply them as they read)",
        needs: NEEDS,
        outputs: &["scaler"],
        code_dirs: &["scaler", "common"],
        determinism: Determinism::Exact,
        run,
    })
}
