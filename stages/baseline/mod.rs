//! Stage `baseline`: a cheap classifier that measures how hard the corpus is and stays the floor every CNN
//! must clear.
//!
//! Each segment becomes one vector: the mean over frames of its standardised log-mel, one value per mel band,
//! read from `features` through the `scaler`'s statistics ([`ScaledFeatures`]).
//! `nearest_centroid` assigns the class whose train-segment mean vector is closest (Euclidean); a track is
//! classified from the mean of its segments' vectors, and also by majority vote of its segments.
//!
//! Invariants:
//! - Fitted on train, scored on val. The test split is never read (its values are not even decoded): test is
//!   read once, after model selection, by a later stage. The lineage says so.
//! - Every sum is a sequential f64 sum in segment order; parallel work only maps rows independently, so the
//!   output bytes do not depend on the thread count.
//! - Ties (equal distance, equal votes) go to the lowest label.
//!
//! Output `baseline` (canonical JSON): see [`BaselineReport`].

use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::common::scaled_reader::ScaledFeatures;
use crate::common::tables::SegmentTable;
use genrelab_contract::{
    read_json, write_canonical_json, Determinism, Lineage, Need, Record, Split, StageContext,
    StageError, StageKind, StageReport, TypedStage,
};

#[cfg(test)]
mod tests;

/// How segments are classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Nearest class centroid, Euclidean distance: no hyperparameters, so nothing to tune on val.
    #[default]
    NearestCentroid,
}

impl Method {
    fn describe(self) -> &'static str {
        match self {
            Method::NearestCentroid => "nearest centroid",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Default `nearest_centroid`: the simplest classifier that says whether the features separate genres.
    pub method: Method,
}

impl genrelab_contract::StageParams for Params {}

/// The `baseline` artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineReport {
    pub method: Method,
    /// What one segment's vector is.
    pub feature: String,
    /// `1 +` the largest label among train and val segments; rows and columns of `confusion`.
    pub n_classes: usize,
    pub n_mels: usize,
    /// Mean train vector per class; `None` for a class with no train segment (it is never predicted).
    pub centroids: Vec<Option<Vec<f64>>>,
    pub train: TrainScore,
    pub val: ValScore,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainScore {
    pub segments: usize,
    /// Train segments per class.
    pub class_counts: Vec<usize>,
    /// Segment-level accuracy on the data the centroids were fitted on.
    pub accuracy: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValScore {
    pub segments: usize,
    pub tracks: usize,
    pub segment_accuracy: f64,
    /// Each track classified from the mean of its segments' vectors.
    pub track_accuracy: f64,
    /// Each track classified by majority vote of its segments' predictions, ties to the lowest label.
    pub track_vote_accuracy: f64,
    /// Per class, the share of its val segments predicted correctly; `None` when it has no val segment.
    pub per_class_recall: Vec<Option<f64>>,
    /// Val segment counts, rows true class, columns predicted class.
    pub confusion: Vec<Vec<u64>>,
}

/// Mean over frames of one `n_mels x frames` row (mel-major), in f64.
pub fn mean_over_frames(row: &[f32], frames: usize) -> Vec<f64> {
    row.chunks(frames)
        .map(|band| band.iter().map(|&x| f64::from(x)).sum::<f64>() / frames as f64)
        .collect()
}

/// Per class, the mean of its vectors in the given order; `None` for classes without any.
fn fit_centroids(vectors: &[Vec<f64>], labels: &[u32], n_classes: usize) -> Vec<Option<Vec<f64>>> {
    let dim = vectors.first().map_or(0, Vec::len);
    let mut sums = vec![vec![0.0f64; dim]; n_classes];
    let mut counts = vec![0usize; n_classes];
    for (v, &label) in vectors.iter().zip(labels) {
        let k = label as usize;
        counts[k] += 1;
        for (s, x) in sums[k].iter_mut().zip(v) {
            *s += x;
        }
    }
    sums.into_iter()
        .zip(counts)
        .map(|(s, n)| (n > 0).then(|| s.into_iter().map(|x| x / n as f64).collect()))
        .collect()
}

/// The class of the nearest centroid (squared Euclidean distance), ties to the lowest label.
fn nearest(centroids: &[Option<Vec<f64>>], x: &[f64]) -> u32 {
    let mut best: Option<(u32, f64)> = None;
    for (k, c) in centroids.iter().enumerate() {
        let Some(c) = c else { continue };
        let d: f64 = c.iter().zip(x).map(|(a, b)| (a - b) * (a - b)).sum();
        if best.is_none_or(|(_, bd)| d < bd) {
            best = Some((k as u32, d));
        }
    }
    best.map_or(0, |(k, _)| k)
}

/// The most frequent label, ties to the lowest.
fn majority(predictions: &[u32], n_classes: usize) -> u32 {
    let mut votes = vec![0usize; n_classes];
    for &p in predictions {
        votes[p as usize] += 1;
    }
    let mut best = 0;
    for (k, &v) in votes.iter().enumerate() {
        if v > votes[best] {
            best = k;
        }
    }
    best as u32
}

fn share(hits: usize, total: usize) -> f64 {
    hits as f64 / total as f64
}

/// One scored split: segment vectors, labels, and owning track ids, all in segment-table order.
pub struct SplitData {
    pub vectors: Vec<Vec<f64>>,
    pub labels: Vec<u32>,
    pub tracks: Vec<String>,
}

/// Fits on `train`, scores `val`. Errors if either is empty or a val track mixes labels.
pub fn evaluate(
    method: Method,
    n_mels: usize,
    train: &SplitData,
    val: &SplitData,
) -> Result<BaselineReport, StageError> {
    if train.labels.is_empty() || val.labels.is_empty() {
        return Err(StageError::Invalid(format!(
            "the baseline needs train and val segments (train {}, val {})",
            train.labels.len(),
            val.labels.len()
        )));
    }
    let n_classes = 1 + train
        .labels
        .iter()
        .chain(&val.labels)
        .copied()
        .max()
        .unwrap_or(0) as usize;
    let centroids = match method {
        Method::NearestCentroid => fit_centroids(&train.vectors, &train.labels, n_classes),
    };
    let predict = |vectors: &[Vec<f64>]| -> Vec<u32> {
        vectors.par_iter().map(|v| nearest(&centroids, v)).collect()
    };

    let train_pred = predict(&train.vectors);
    let train_hits = train_pred
        .iter()
        .zip(&train.labels)
        .filter(|(p, t)| p == t)
        .count();
    let mut class_counts = vec![0usize; n_classes];
    for &t in &train.labels {
        class_counts[t as usize] += 1;
    }

    let val_pred = predict(&val.vectors);
    let mut confusion = vec![vec![0u64; n_classes]; n_classes];
    for (&p, &t) in val_pred.iter().zip(&val.labels) {
        confusion[t as usize][p as usize] += 1;
    }
    let segment_hits: u64 = (0..n_classes).map(|k| confusion[k][k]).sum();
    let per_class_recall = confusion
        .iter()
        .enumerate()
        .map(|(k, row)| {
            let total: u64 = row.iter().sum();
            (total > 0).then(|| row[k] as f64 / total as f64)
        })
        .collect();

    // Tracks by id; each track's segments stay in segment order.
    let mut by_track: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, track) in val.tracks.iter().enumerate() {
        by_track.entry(track).or_default().push(i);
    }
    let (mut mean_hits, mut vote_hits) = (0usize, 0usize);
    for (track, members) in &by_track {
        let label = val.labels[members[0]];
        if let Some(&other) = members.iter().find(|&&i| val.labels[i] != label) {
            return Err(StageError::Invalid(format!(
                "val track `{track}` has segments labelled {label} and {}",
                val.labels[other]
            )));
        }
        let mut mean = vec![0.0f64; n_mels];
        for &i in members {
            for (m, x) in mean.iter_mut().zip(&val.vectors[i]) {
                *m += x;
            }
        }
        for m in &mut mean {
            *m /= members.len() as f64;
        }
        mean_hits += usize::from(nearest(&centroids, &mean) == label);
        let votes: Vec<u32> = members.iter().map(|&i| val_pred[i]).collect();
        vote_hits += usize::from(majority(&votes, n_classes) == label);
    }

    Ok(BaselineReport {
        method,
        feature: "mean over frames of the scaled log-mel".into(),
        n_classes,
        n_mels,
        centroids,
        train: TrainScore {
            segments: train.labels.len(),
            class_counts,
            accuracy: share(train_hits, train.labels.len()),
        },
        val: ValScore {
            segments: val.labels.len(),
            tracks: by_track.len(),
            segment_accuracy: segment_hits as f64 / val.labels.len() as f64,
            track_accuracy: share(mean_hits, by_track.len()),
            track_vote_accuracy: share(vote_hits, by_track.len()),
            per_class_recall,
            confusion,
        },
    })
}

/// Reads one split's vectors, standardised, checked against the segment table. Returns the data and
/// `n_mels`.
fn read_split(
    features: &ScaledFeatures,
    segments: &SegmentTable,
    split: Split,
) -> Result<(SplitData, usize), StageError> {
    let rows = features.split(segments, split)?;
    let (n_mels, frames) = rows.dims();
    let vectors = rows.map_rows(|row| mean_over_frames(row, frames));
    let tracks = segments.of_split(split).map(|s| s.track.clone()).collect();
    Ok((
        SplitData {
            vectors,
            labels: rows.labels().to_vec(),
            tracks,
        },
        n_mels,
    ))
}

fn run(params: &Params, ctx: &StageContext) -> Result<StageReport, StageError> {
    let segments: SegmentTable = read_json(ctx.input("segments")?, "segments")?;
    // Test rows are not among this kind's needs: the engine never hands them over.
    let features = ScaledFeatures::from_inputs(ctx, &[Split::Train, Split::Val])?;
    // Both splits are checked against the one set of statistics, so they share its mel bands.
    let (train, n_mels) = read_split(&features, &segments, Split::Train)?;
    let (val, _) = read_split(&features, &segments, Split::Val)?;
    let report = evaluate(params.method, n_mels, &train, &val)?;
    write_canonical_json(&ctx.output_path("baseline")?, &report)?;

    let pct = |x: f64| 100.0 * x;
    let summary = format!(
        "baseline ({} on mean log-mel): val {:.1}% per segment, {:.1}% per track (train {:.1}%)",
        params.method.describe(),
        pct(report.val.segment_accuracy),
        pct(report.val.track_accuracy),
        pct(report.train.accuracy),
    );
    Ok(StageReport {
        lineage: Lineage::default()
            .with(segments.fit_record("class centroids", Split::Train))
            .with(Record::Scored {
                what: "accuracy".into(),
                split: Split::Val,
                segments: report.val.segments,
            }),
        summary: vec![summary],
    })
}

const NEEDS: &[Need] = &[
    Need::one("features@train"),
    Need::one("features@val"),
    Need::one("scaler"),
    Need::one("segments"),
];

pub fn kind() -> Box<dyn StageKind> {
    Box::new(TypedStage::<Params> {
        kind: "baseline",
        about: "nearest-centroid floor on mean log-mel: fitted on train, scored on val, test never read",
        needs: NEEDS,
        outputs: &["baseline"],
        code_dirs: &["baseline", "common"],
        determinism: Determinism::Exact,
        run,
    })
}
