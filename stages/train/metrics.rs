//! Scores from softmax probabilities, per segment and per track, with scikit-learn's conventions:
//! precision, recall and F1 of a class with an empty denominator are 0 (its default `zero_division`
//! behaviour, which warns and uses 0), and the macro average runs over the classes that occur among the
//! actual or predicted labels (its default `labels`). Confusion rows are actual classes, columns predicted.
//!
//! Ties are broken deterministically: an argmax takes the lowest class index among equal maxima (as
//! numpy's does); a track's majority vote takes, among the classes with the most votes, the one with the
//! highest mean probability over the track's segments, then the lowest class index.

use std::collections::BTreeMap;

use polars::prelude::{Column, DataFrame};
use serde::{Deserialize, Serialize};

use genrelab_contract::StageError;

use crate::common::frames::frame;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("{values} probabilities do not make {segments} rows of {classes} classes")]
    Shape {
        values: usize,
        segments: usize,
        classes: usize,
    },
    #[error("{labels} labels but {tracks} track indices")]
    Lengths { labels: usize, tracks: usize },
    #[error("{actual} actual labels but {predicted} predictions")]
    Predictions { actual: usize, predicted: usize },
    #[error("label {label} is not below the class count {classes}")]
    LabelOutOfRange { label: u32, classes: usize },
    #[error("track {track} has segments labelled {first} and {other}")]
    MixedTrackLabels { track: u32, first: u32, other: u32 },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// How many items actually belong to the class.
    pub support: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub count: u64,
    pub correct: u64,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub per_class: Vec<ClassScores>,
    /// `confusion[actual][predicted]`.
    pub confusion: Vec<Vec<u64>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub segment: Scores,
    /// Each track predicted from the mean of its segments' probabilities.
    pub track_mean: Scores,
    /// Each track predicted by a majority vote of its segments' predictions.
    pub track_vote: Scores,
}

/// Per-track labels and predictions, tracks in ascending index order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrackPredictions {
    pub tracks: Vec<u32>,
    pub labels: Vec<u32>,
    pub by_mean: Vec<u32>,
    pub by_vote: Vec<u32>,
}

/// Index of the largest value, the lowest index among equals; NaN never wins.
pub fn argmax<T: Copy + PartialOrd>(row: &[T]) -> u32 {
    let mut best = 0;
    for (i, x) in row.iter().enumerate() {
        if *x > row[best] || row[best].partial_cmp(&row[best]).is_none() {
            best = i;
        }
    }
    best as u32
}

/// Scores for `predicted` against `actual`, both class indices below `classes`.
pub fn scores(actual: &[u32], predicted: &[u32], classes: usize) -> Result<Scores, MetricsError> {
    if actual.len() != predicted.len() {
        return Err(MetricsError::Predictions {
            actual: actual.len(),
            predicted: predicted.len(),
        });
    }
    let mut confusion = vec![vec![0u64; classes]; classes];
    for (&a, &p) in actual.iter().zip(predicted) {
        for label in [a, p] {
            if label as usize >= classes {
                return Err(MetricsError::LabelOutOfRange { label, classes });
            }
        }
        confusion[a as usize][p as usize] += 1;
    }
    let ratio = |num: u64, den: u64| {
        if den == 0 {
            0.0
        } else {
            num as f64 / den as f64
        }
    };
    let mut per_class = Vec::with_capacity(classes);
    let mut f1_sum = 0.0;
    let mut present = 0usize;
    for c in 0..classes {
        let tp = confusion[c][c];
        let support: u64 = confusion[c].iter().sum();
        let predicted_as: u64 = confusion.iter().map(|row| row[c]).sum();
        let (fp, fn_) = (predicted_as - tp, support - tp);
        let f1 = ratio(2 * tp, 2 * tp + fp + fn_);
        if support + predicted_as > 0 {
            f1_sum += f1;
            present += 1;
        }
        per_class.push(ClassScores {
            precision: ratio(tp, predicted_as),
            recall: ratio(tp, support),
            f1,
            support,
        });
    }
    let correct: u64 = (0..classes).map(|c| confusion[c][c]).sum();
    let count = actual.len() as u64;
    Ok(Scores {
        count,
        correct,
        accuracy: ratio(correct, count),
        macro_f1: if present == 0 {
            0.0
        } else {
            f1_sum / present as f64
        },
        per_class,
        confusion,
    })
}

fn check(
    probs: &[f32],
    classes: usize,
    labels: &[u32],
    tracks: &[u32],
) -> Result<(), MetricsError> {
    if labels.len() != tracks.len() {
        return Err(MetricsError::Lengths {
            labels: labels.len(),
            tracks: tracks.len(),
        });
    }
    if classes == 0 || probs.len() != labels.len() * classes {
        return Err(MetricsError::Shape {
            values: probs.len(),
            segments: labels.len(),
            classes,
        });
    }
    match labels.iter().find(|&&l| l as usize >= classes) {
        Some(&label) => Err(MetricsError::LabelOutOfRange { label, classes }),
        None => Ok(()),
    }
}

/// The argmax of every row of `probs` (`[n, classes]` row-major).
pub fn segment_predictions(probs: &[f32], classes: usize) -> Vec<u32> {
    probs.chunks_exact(classes.max(1)).map(argmax).collect()
}

/// Aggregates segments into tracks. Every segment of a track must carry the same label.
pub fn track_predictions(
    probs: &[f32],
    classes: usize,
    labels: &[u32],
    tracks: &[u32],
) -> Result<TrackPredictions, MetricsError> {
    check(probs, classes, labels, tracks)?;
    struct Acc {
        label: u32,
        sum: Vec<f64>,
        votes: Vec<u64>,
        count: u64,
    }
    let mut by_track: BTreeMap<u32, Acc> = BTreeMap::new();
    for (i, row) in probs.chunks_exact(classes).enumerate() {
        let (track, label) = (tracks[i], labels[i]);
        let acc = by_track.entry(track).or_insert_with(|| Acc {
            label,
            sum: vec![0.0; classes],
            votes: vec![0; classes],
            count: 0,
        });
        if acc.label != label {
            return Err(MetricsError::MixedTrackLabels {
                track,
                first: acc.label,
                other: label,
            });
        }
        for (s, &p) in acc.sum.iter_mut().zip(row) {
            *s += f64::from(p);
        }
        acc.count += 1;
        acc.votes[argmax(row) as usize] += 1;
    }
    let mut out = TrackPredictions {
        tracks: Vec::with_capacity(by_track.len()),
        labels: Vec::with_capacity(by_track.len()),
        by_mean: Vec::with_capacity(by_track.len()),
        by_vote: Vec::with_capacity(by_track.len()),
    };
    for (track, acc) in by_track {
        let mean: Vec<f64> = acc.sum.iter().map(|s| s / acc.count as f64).collect();
        let most = acc.votes.iter().copied().max().unwrap_or(0);
        let mut vote = None::<usize>;
        for c in (0..classes).filter(|&c| acc.votes[c] == most) {
            if vote.is_none_or(|v| mean[c] > mean[v]) {
                vote = Some(c);
            }
        }
        out.tracks.push(track);
        out.labels.push(acc.label);
        out.by_mean.push(argmax(&mean));
        out.by_vote.push(vote.unwrap_or(0) as u32);
    }
    Ok(out)
}

/// Segment-level and both track-level scores. `probs` is `[n, classes]` row-major (softmax outputs).
pub fn evaluate(
    probs: &[f32],
    classes: usize,
    labels: &[u32],
    tracks: &[u32],
) -> Result<Evaluation, MetricsError> {
    let per_track = track_predictions(probs, classes, labels, tracks)?;
    Ok(Evaluation {
        segment: scores(labels, &segment_predictions(probs, classes), classes)?,
        track_mean: scores(&per_track.labels, &per_track.by_mean, classes)?,
        track_vote: scores(&per_track.labels, &per_track.by_vote, classes)?,
    })
}

impl Evaluation {
    /// The three levels in their table order, each with its name.
    pub fn levels(&self) -> [(&'static str, &Scores); 3] {
        [
            ("segment", &self.segment),
            ("track_mean", &self.track_mean),
            ("track_vote", &self.track_vote),
        ]
    }
}

/// An evaluation as a long table `level, class, metric, value`: per level, first the rows over all classes
/// (`accuracy`, `macro_f1`, `class` null), then each class in class-index order with its `precision`,
/// `recall`, `f1` and `support`. Levels in the order of [`Evaluation::levels`].
pub fn metrics_frame(
    table: &str,
    eval: &Evaluation,
    classes: &[String],
) -> Result<DataFrame, StageError> {
    let (mut level, mut class, mut metric, mut value) = (vec![], vec![], vec![], vec![]);
    for (name, scores) in eval.levels() {
        check_classes(table, scores, classes)?;
        let mut push = |c: Option<&str>, m: &'static str, v: f64| {
            level.push(name);
            class.push(c.map(str::to_string));
            metric.push(m);
            value.push(v);
        };
        push(None, "accuracy", scores.accuracy);
        push(None, "macro_f1", scores.macro_f1);
        for (c, s) in classes.iter().zip(&scores.per_class) {
            push(Some(c.as_str()), "precision", s.precision);
            push(Some(c.as_str()), "recall", s.recall);
            push(Some(c.as_str()), "f1", s.f1);
            push(Some(c.as_str()), "support", s.support as f64);
        }
    }
    frame(
        table,
        vec![
            Column::new("level".into(), level),
            Column::new("class".into(), class),
            Column::new("metric".into(), metric),
            Column::new("value".into(), value),
        ],
    )
}

/// Every cell of each level's confusion matrix (zeros too) as `level, actual, predicted, count`, by level,
/// then actual class index, then predicted class index.
pub fn confusion_frame(
    table: &str,
    eval: &Evaluation,
    classes: &[String],
) -> Result<DataFrame, StageError> {
    let (mut level, mut actual, mut predicted, mut count) = (vec![], vec![], vec![], vec![]);
    for (name, scores) in eval.levels() {
        check_classes(table, scores, classes)?;
        for (a, row) in classes.iter().zip(&scores.confusion) {
            for (p, &n) in classes.iter().zip(row) {
                level.push(name);
                actual.push(a.as_str());
                predicted.push(p.as_str());
                count.push(n);
            }
        }
    }
    frame(
        table,
        vec![
            Column::new("level".into(), level),
            Column::new("actual".into(), actual),
            Column::new("predicted".into(), predicted),
            Column::new("count".into(), count),
        ],
    )
}

/// Scores and class names must agree, or the table would silently drop or misname classes.
fn check_classes(table: &str, scores: &Scores, classes: &[String]) -> Result<(), StageError> {
    if scores.per_class.len() != classes.len()
        || scores.confusion.len() != classes.len()
        || scores
            .confusion
            .iter()
            .any(|row| row.len() != classes.len())
    {
        return Err(StageError::Invalid(format!(
            "table `{table}`: scores for {} classes but {} class names",
            scores.per_class.len(),
            classes.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
