//! Stage `cv_summary`: every fold of the `cv` family side by side, per mode: each fold's held-out scores and
//! their mean and standard deviation, and the replica's gap over the grouped estimate.
//!
//! The standard deviation is the population one (ddof 0), as `numpy.std` over scikit-learn's fold scores
//! gives it, which is how the study reported 0.9044 +/- 0.0068.
//!
//! Output `cv/`: `cv.json` ([`CvSummary`]), the `cv_folds` table (one row per fold, modes in the summary's
//! order, then fold order) and the `cv` table (per mode, the fold count and each score's mean and population
//! std, aggregated by polars from `cv_folds`), each as `.parquet` and `.csv`.

use std::collections::BTreeMap;

use polars::prelude::{Column, DataFrame, DataType};
use serde::{Deserialize, Serialize};

use genrelab_contract::{
    read_json, write_canonical_json, Determinism, Lineage, Need, StageContext, StageError,
    StageKind, StageParams, StageReport, TypedStage,
};

use super::{FoldResult, Mode};
use crate::common::frames::{frame, polars_error, write_table};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {}

impl StageParams for Params {}

/// One fold's held-out scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoldRow {
    pub member: String,
    pub fold: usize,
    pub best_epoch: usize,
    pub held_out_tracks: usize,
    pub held_out_tracks_also_trained_on: usize,
    pub segment_accuracy: f64,
    pub segment_macro_f1: f64,
    pub track_accuracy: f64,
    pub track_macro_f1: f64,
}

/// Mean and population standard deviation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeanStd {
    pub mean: f64,
    pub std: f64,
}

impl MeanStd {
    pub fn of(values: &[f64]) -> Option<MeanStd> {
        if values.is_empty() {
            return None;
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        Some(MeanStd {
            mean,
            std: var.sqrt(),
        })
    }
}

/// One mode's folds, in fold order, and their aggregates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModeSummary {
    pub mode: Mode,
    pub arch: crate::train::models::Architecture,
    pub width: f64,
    pub folds: Vec<FoldRow>,
    pub segment_accuracy: MeanStd,
    pub segment_macro_f1: MeanStd,
    pub track_accuracy: MeanStd,
    pub track_macro_f1: MeanStd,
}

/// `cv.json`: each mode present, grouped first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CvSummary {
    pub modes: Vec<ModeSummary>,
    /// Replica mean minus grouped mean, segment accuracy, when both modes ran.
    pub replica_gap_segment_accuracy: Option<f64>,
}

/// Groups fold results by mode and aggregates them; every mode must have each of its folds exactly once.
pub fn summarize(folds: &[(String, FoldResult)]) -> Result<CvSummary, StageError> {
    let mut by_mode: BTreeMap<&'static str, Vec<&(String, FoldResult)>> = BTreeMap::new();
    for f in folds {
        by_mode.entry(f.1.mode.name()).or_default().push(f);
    }
    let mut modes = Vec::new();
    for mode in [Mode::Grouped, Mode::StudyReplica] {
        let Some(mut members) = by_mode.remove(mode.name()) else {
            continue;
        };
        members.sort_by_key(|f| f.1.fold);
        let first = &members[0].1;
        let expected: Vec<usize> = (0..first.folds).collect();
        let got: Vec<usize> = members.iter().map(|f| f.1.fold).collect();
        if got != expected {
            return Err(StageError::bad_input(
                "fold",
                format!(
                    "{} cross-validation needs folds {expected:?} once each, got {got:?}",
                    mode.name()
                ),
            ));
        }
        if let Some(other) = members
            .iter()
            .find(|f| f.1.folds != first.folds || f.1.spec != first.spec)
        {
            return Err(StageError::bad_input(
                "fold",
                format!(
                    "`{}` was run with other folds or another network than `{}`",
                    other.0, members[0].0
                ),
            ));
        }
        let rows: Vec<FoldRow> = members
            .iter()
            .map(|(member, f)| FoldRow {
                member: member.clone(),
                fold: f.fold,
                best_epoch: f.best_epoch,
                held_out_tracks: f.held_out.tracks.len(),
                held_out_tracks_also_trained_on: f.held_out_tracks_also_trained_on,
                segment_accuracy: f.score.segment.accuracy,
                segment_macro_f1: f.score.segment.macro_f1,
                track_accuracy: f.score.track_mean.accuracy,
                track_macro_f1: f.score.track_mean.macro_f1,
            })
            .collect();
        let agg = |get: fn(&FoldRow) -> f64| {
            MeanStd::of(&rows.iter().map(get).collect::<Vec<_>>())
                .ok_or_else(|| StageError::Invalid("no folds".into()))
        };
        modes.push(ModeSummary {
            mode,
            arch: first.spec.arch,
            width: first.spec.width,
            segment_accuracy: agg(|r| r.segment_accuracy)?,
            segment_macro_f1: agg(|r| r.segment_macro_f1)?,
            track_accuracy: agg(|r| r.track_accuracy)?,
            track_macro_f1: agg(|r| r.track_macro_f1)?,
            folds: rows,
        });
    }
    let mean_of = |m: Mode| {
        modes
            .iter()
            .find(|s| s.mode == m)
            .map(|s| s.segment_accuracy.mean)
    };
    let replica_gap_segment_accuracy = match (mean_of(Mode::Grouped), mean_of(Mode::StudyReplica)) {
        (Some(g), Some(r)) => Some(r - g),
        _ => None,
    };
    Ok(CvSummary {
        modes,
        replica_gap_segment_accuracy,
    })
}

/// The scores every fold row carries and the `cv` table aggregates, in column order.
pub const SCORES: [&str; 4] = [
    "segment_accuracy",
    "segment_macro_f1",
    "track_accuracy",
    "track_macro_f1",
];

/// `cv_folds`: every fold of every mode, modes in the summary's order (grouped first), then fold order.
pub fn folds_frame(summary: &CvSummary) -> Result<DataFrame, StageError> {
    let rows: Vec<(&'static str, &FoldRow)> = summary
        .modes
        .iter()
        .flat_map(|m| m.folds.iter().map(move |r| (m.mode.name(), r)))
        .collect();
    let counts = |name: &str, get: fn(&FoldRow) -> usize| {
        Column::new(
            name.into(),
            rows.iter()
                .map(|(_, r)| get(r) as u64)
                .collect::<Vec<u64>>(),
        )
    };
    let scores: [fn(&FoldRow) -> f64; 4] = [
        |r| r.segment_accuracy,
        |r| r.segment_macro_f1,
        |r| r.track_accuracy,
        |r| r.track_macro_f1,
    ];
    let mut columns = vec![
        Column::new(
            "mode".into(),
            rows.iter().map(|(m, _)| *m).collect::<Vec<_>>(),
        ),
        counts("fold", |r| r.fold),
        Column::new(
            "member".into(),
            rows.iter()
                .map(|(_, r)| r.member.as_str())
                .collect::<Vec<_>>(),
        ),
        counts("best_epoch", |r| r.best_epoch),
        counts("held_out_tracks", |r| r.held_out_tracks),
        counts("held_out_tracks_also_trained_on", |r| {
            r.held_out_tracks_also_trained_on
        }),
    ];
    for (name, get) in SCORES.into_iter().zip(scores) {
        columns.push(Column::new(
            name.into(),
            rows.iter().map(|(_, r)| get(r)).collect::<Vec<f64>>(),
        ));
    }
    frame("cv_folds", columns)
}

/// `cv`: per mode, in the order the modes first appear in `folds`, the number of folds and each score's
/// mean and population standard deviation (`<score>_mean`, `<score>_std`), aggregated by polars.
// The eager group-by aggregations are deprecated in favour of the lazy engine, which is far heavier to
// compile for four means; they are kept in polars and tested here against [`MeanStd`].
#[allow(deprecated)]
pub fn aggregate_frame(folds: &DataFrame) -> Result<DataFrame, StageError> {
    let err = polars_error("cv");
    let groups = || folds.group_by_stable(["mode"]).map_err(&err);
    let counted = groups()?.select(["fold"]).count().map_err(&err)?;
    let means = groups()?.select(SCORES).mean().map_err(&err)?;
    let stds = groups()?.select(SCORES).std(0).map_err(&err)?;
    // Each aggregate frame is the key column, then one column per selected score in selection order.
    let column = |df: &DataFrame, at: usize, name: String| {
        df.columns()
            .get(at)
            .map(|c| c.clone().with_name(name.into()))
            .ok_or_else(|| StageError::Invalid(format!("table `cv`: no column {at}")))
    };
    let mut columns = vec![
        column(&means, 0, "mode".into())?,
        column(&counted, 1, "folds".into())?
            .cast(&DataType::UInt64)
            .map_err(&err)?,
    ];
    for (i, name) in SCORES.into_iter().enumerate() {
        columns.push(column(&means, 1 + i, format!("{name}_mean"))?);
        columns.push(column(&stds, 1 + i, format!("{name}_std"))?);
    }
    frame("cv", columns)
}

fn run(_: &Params, ctx: &StageContext) -> Result<StageReport, StageError> {
    let inputs = ctx.inputs("fold");
    if inputs.is_empty() {
        return Err(StageError::bad_input(
            "fold",
            "no cross-validation fold among the inputs",
        ));
    }
    let mut folds = Vec::new();
    for input in inputs {
        let result: FoldResult = read_json(&input.path.join("fold.json"), "fold")?;
        folds.push((input.stage.clone(), result));
    }
    let summary = summarize(&folds)?;
    let dir = ctx.output_path("cv")?;
    write_canonical_json(&dir.join("cv.json"), &summary)?;
    let mut folds_table = folds_frame(&summary)?;
    write_table(&dir, "cv", &mut aggregate_frame(&folds_table)?)?;
    write_table(&dir, "cv_folds", &mut folds_table)?;

    let pct = |m: &MeanStd| format!("{:.1}% +/- {:.1}", 100.0 * m.mean, 100.0 * m.std);
    let mut lines: Vec<String> = summary
        .modes
        .iter()
        .map(|m| {
            format!(
                "{} {}-fold ({:?} width {}): {} per segment, {} per track, macro F1 {:.3}",
                m.mode.name(),
                m.folds.len(),
                m.arch,
                m.width,
                pct(&m.segment_accuracy),
                pct(&m.track_accuracy),
                m.segment_macro_f1.mean
            )
        })
        .collect();
    if let Some(gap) = summary.replica_gap_segment_accuracy {
        lines.push(format!(
            "the study's replica reads {:.1} points {} the grouped estimate on the same tracks",
            100.0 * gap.abs(),
            if gap >= 0.0 { "above" } else { "below" }
        ));
    }
    Ok(StageReport {
        lineage: Lineage::default(),
        summary: lines,
    })
}

const NEEDS: &[Need] = &[Need::many("fold")];

pub fn kind() -> Box<dyn StageKind> {
    Box::new(TypedStage::<Params> {
        kind: "cv_summary",
        about: "every fold of the cv family per mode: held-out scores, mean +/- std, and the replica's gap",
        needs: NEEDS,
        outputs: &["cv/"],
        code_dirs: &["cv", "train", "common"],
        determinism: Determinism::Exact,
        run,
    })
}
