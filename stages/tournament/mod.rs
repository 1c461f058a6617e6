//! Stage `tournament`: the champion among the trained models, chosen on validation alone, then every model
//! scored on test once, after the choice.
//!
//! Inputs: every `model/` folder of the `train` family (many), `features@test` through the `scaler`,
//! `segments` and `tracks`. Output `tournament/`: `leaderboard.json` and the `leaderboard` table (every
//! member in rank order, val and test, segment and track level, parameters and multiply-adds), the
//! `ablation` table (each architecture's test accuracy with and without SpecAugment, and the difference),
//! `champion.json` (the champion's full test evaluation: per-class scores and the confusion matrix) and the
//! same evaluation as the `champion_metrics` and `champion_confusion` tables. Each table is written as
//! `<name>.parquet` and `<name>.csv`.
//!
//! The order is the point: the champion is fixed from the model cards' validation scores before a single
//! test row is decoded, and the lineage records both the selection (by val) and the one read of test.
//! `selection: test` reproduces the study's choice on test scores, recorded as such, so that
//! `genrelab audit` can show it failing; it is never the default.

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use polars::prelude::{Column, DataFrame};
use serde::{Deserialize, Serialize};

use genrelab_contract::{
    read_json, write_canonical_json, Determinism, Lineage, Need, Record, Split, StageContext,
    StageError, StageKind, StageParams, StageReport, TypedStage,
};

use crate::common::frames::{frame, write_table};
use crate::common::scaled_reader::ScaledFeatures;
use crate::common::tables::{SegmentTable, TrackTable};
use crate::train::data::LoadedSplit;
use crate::train::fit;
use crate::train::metrics::{self, Evaluation};
use crate::train::models::{self, Architecture};
use crate::train::stage::{candle_device, candle_error, ModelCard};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// The split the champion is chosen on. `val` is the design; `test` reproduces the study's selection on
    /// test scores, only to show that `genrelab audit` catches it. Left out of the canonical params at its
    /// default, so the honest tournament keeps its key.
    #[serde(skip_serializing_if = "Selection::is_val")]
    pub selection: Selection,
}

impl StageParams for Params {}

/// What the champion is chosen on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Selection {
    #[default]
    Val,
    /// The study's leak: the champion is the model that scores best on test.
    Test,
}

impl Selection {
    fn is_val(&self) -> bool {
        *self == Selection::Val
    }

    fn split(self) -> Split {
        match self {
            Selection::Val => Split::Val,
            Selection::Test => Split::Test,
        }
    }
}

/// One member's row of the leaderboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub member: String,
    pub arch: Architecture,
    pub width: f64,
    pub augment: bool,
    pub trainable_parameters: usize,
    pub multiply_adds_per_segment: u64,
    pub best_epoch: usize,
    pub val_segment_accuracy: f64,
    pub val_track_accuracy: f64,
    pub test_segment_accuracy: f64,
    pub test_segment_macro_f1: f64,
    pub test_track_accuracy: f64,
    pub test_track_vote_accuracy: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Leaderboard {
    /// Chosen on validation: highest val segment accuracy, then val track accuracy, then input order.
    pub champion: String,
    /// Sorted by the same rule as the choice.
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Champion {
    pub member: String,
    pub classes: Vec<String>,
    pub test: Evaluation,
}

/// The replica's rule: highest test segment accuracy, then test track accuracy, then the validation order.
fn test_order(a: &(Entry, Evaluation), b: &(Entry, Evaluation)) -> std::cmp::Ordering {
    let key = |e: &Entry| (e.test_segment_accuracy, e.test_track_accuracy);
    key(&b.0)
        .partial_cmp(&key(&a.0))
        .unwrap_or(std::cmp::Ordering::Equal)
}

/// The rule the champion is chosen by, on validation scores only.
fn val_order(a: &(usize, &ModelCard), b: &(usize, &ModelCard)) -> std::cmp::Ordering {
    let key = |c: &ModelCard| (c.val.segment.accuracy, c.val.track_mean.accuracy);
    key(b.1)
        .partial_cmp(&key(a.1))
        .unwrap_or(std::cmp::Ordering::Equal)
        .then(a.0.cmp(&b.0))
}

fn run(params: &Params, ctx: &StageContext) -> Result<StageReport, StageError> {
    let device = candle_device(ctx.exec().device)?;
    let models = ctx.inputs("model");
    if models.is_empty() {
        return Err(StageError::bad_input(
            "model",
            "no trained model among the inputs",
        ));
    }
    let mut cards = Vec::new();
    for input in models {
        let card: ModelCard = read_json(&input.path.join("model.json"), "model")?;
        cards.push(card);
    }
    // Selection first, from validation alone: test is not open yet.
    let mut order: Vec<(usize, &ModelCard)> = cards.iter().enumerate().collect();
    order.sort_by(val_order);
    let val_champion = models[order[0].0].stage.clone();

    let segments: SegmentTable = read_json(ctx.input("segments")?, "segments")?;
    let tracks: TrackTable = read_json(ctx.input("tracks")?, "tracks")?;
    let features = ScaledFeatures::from_inputs(ctx, &[Split::Test])?;
    let test = LoadedSplit::load(&features, &segments, Split::Test)?;
    let mut entries = Vec::new();
    let mut evaluations = Vec::new();
    for &(i, card) in &order {
        ctx.stop_if_cancelled()?;
        let input = &models[i];
        if card.classes != tracks.classes {
            return Err(StageError::bad_input(
                "model",
                format!(
                    "`{}` was trained on other classes than the track table's",
                    input.stage
                ),
            ));
        }
        let model = models::build(&card.spec, [0; 32], candle_core::DType::F32, &device)
            .map_err(candle_error("building the model"))?;
        fit::load_state(model.as_ref(), &input.path.join("weights.safetensors"))
            .map_err(candle_error(&input.stage))?;
        let probs = fit::predict(model.as_ref(), &test.as_set(), card.params.batch_size)
            .map_err(candle_error("test"))?;
        let eval = metrics::evaluate(&probs, card.spec.classes, &test.labels, &test.tracks)
            .map_err(|e| StageError::Invalid(format!("test metrics: {e}")))?;
        entries.push(Entry {
            member: input.stage.clone(),
            arch: card.spec.arch,
            width: card.spec.width,
            augment: card.params.augment,
            trainable_parameters: card.trainable_parameters,
            multiply_adds_per_segment: card.multiply_adds_per_segment,
            best_epoch: card.best_epoch,
            val_segment_accuracy: card.val.segment.accuracy,
            val_track_accuracy: card.val.track_mean.accuracy,
            test_segment_accuracy: eval.segment.accuracy,
            test_segment_macro_f1: eval.segment.macro_f1,
            test_track_accuracy: eval.track_mean.accuracy,
            test_track_vote_accuracy: eval.track_vote.accuracy,
        });
        evaluations.push(eval);
    }
    let champion = match params.selection {
        Selection::Val => val_champion,
        Selection::Test => {
            let mut ranked: Vec<(Entry, Evaluation)> =
                entries.into_iter().zip(evaluations).collect();
            ranked.sort_by(test_order);
            (entries, evaluations) = ranked.into_iter().unzip();
            entries[0].member.clone()
        }
    };
    let champion_eval = entries
        .iter()
        .position(|e| e.member == champion)
        .map(|i| evaluations[i].clone());
    let board = Leaderboard {
        champion: champion.clone(),
        entries,
    };
    let dir = ctx.output_path("tournament")?;
    write_canonical_json(&dir.join("leaderboard.json"), &board)?;
    write_table(&dir, "leaderboard", &mut leaderboard_frame(&board)?)?;
    write_table(&dir, "ablation", &mut ablation_frame(&board)?)?;
    let test_eval = champion_eval
        .ok_or_else(|| StageError::Invalid("the champion was not evaluated".into()))?;
    let champion_file = Champion {
        member: champion.clone(),
        classes: tracks.classes.clone(),
        test: test_eval.clone(),
    };
    write_canonical_json(&dir.join("champion.json"), &champion_file)?;
    write_table(
        &dir,
        "champion_metrics",
        &mut metrics::metrics_frame("champion_metrics", &test_eval, &tracks.classes)?,
    )?;
    write_table(
        &dir,
        "champion_confusion",
        &mut metrics::confusion_frame("champion_confusion", &test_eval, &tracks.classes)?,
    )?;

    let mut summary = vec![format!(
        "champion (chosen on {}): {champion}; test {:.1}% per segment, {:.1}% per track",
        params.selection.split(),
        100.0 * test_eval.segment.accuracy,
        100.0 * test_eval.track_mean.accuracy
    )];
    summary.extend(leaderboard_lines(&board));
    summary.extend(confusion_lines(
        "champion's test confusion, segments (rows actual, columns predicted)",
        &tracks.classes,
        &test_eval.segment.confusion,
    ));
    let selected = Record::Selected {
        what: "champion".into(),
        by: params.selection.split(),
        chosen: champion,
    };
    // In the order things happened: on val the choice comes first, on test the scores it was made from.
    let lineage = match params.selection {
        Selection::Val => Lineage::default().with(selected).with(Record::Scored {
            what: "accuracy, macro F1 (every member, after the selection)".into(),
            split: Split::Test,
            segments: test.labels.len(),
        }),
        Selection::Test => Lineage::default()
            .with(Record::Scored {
                what: "accuracy, macro F1 (every member, to choose the champion)".into(),
                split: Split::Test,
                segments: test.labels.len(),
            })
            .with(selected),
    };
    Ok(StageReport { lineage, summary })
}

fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

/// Every member in leaderboard order (`rank` 1 first), the champion flagged.
fn leaderboard_frame(board: &Leaderboard) -> Result<DataFrame, StageError> {
    let e = &board.entries;
    let floats = |name: &str, get: fn(&Entry) -> f64| {
        Column::new(name.into(), e.iter().map(get).collect::<Vec<f64>>())
    };
    let counts = |name: &str, get: fn(&Entry) -> u64| {
        Column::new(name.into(), e.iter().map(get).collect::<Vec<u64>>())
    };
    frame(
        "leaderboard",
        vec![
            Column::new("rank".into(), (1..=e.len() as u64).collect::<Vec<u64>>()),
            Column::new(
                "member".into(),
                e.iter().map(|e| e.member.as_str()).collect::<Vec<_>>(),
            ),
            Column::new(
                "arch".into(),
                e.iter().map(|e| arch_name(e.arch)).collect::<Vec<_>>(),
            ),
            floats("width", |e| e.width),
            Column::new(
                "augment".into(),
                e.iter().map(|e| e.augment).collect::<Vec<bool>>(),
            ),
            counts("trainable_parameters", |e| e.trainable_parameters as u64),
            counts("multiply_adds_per_segment", |e| e.multiply_adds_per_segment),
            counts("best_epoch", |e| e.best_epoch as u64),
            floats("val_segment_accuracy", |e| e.val_segment_accuracy),
            floats("val_track_accuracy", |e| e.val_track_accuracy),
            floats("test_segment_accuracy", |e| e.test_segment_accuracy),
            floats("test_segment_macro_f1", |e| e.test_segment_macro_f1),
            floats("test_track_accuracy", |e| e.test_track_accuracy),
            floats("test_track_vote_accuracy", |e| e.test_track_vote_accuracy),
            Column::new(
                "champion".into(),
                e.iter()
                    .map(|e| e.member == board.champion)
                    .collect::<Vec<bool>>(),
            ),
        ],
    )
}

fn arch_name(arch: Architecture) -> String {
    serde_json::to_value(arch)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Per architecture (and width): test accuracy without and with SpecAugment, and the difference.
fn ablation(board: &Leaderboard) -> BTreeMap<String, (Option<&Entry>, Option<&Entry>)> {
    let mut rows: BTreeMap<String, (Option<&Entry>, Option<&Entry>)> = BTreeMap::new();
    for e in &board.entries {
        let slot = rows
            .entry(format!("{} x{}", arch_name(e.arch), e.width))
            .or_default();
        if e.augment {
            slot.1 = Some(e);
        } else {
            slot.0 = Some(e);
        }
    }
    rows
}

/// One row per architecture and width, sorted by that name; a side that did not run is null.
fn ablation_frame(board: &Leaderboard) -> Result<DataFrame, StageError> {
    let (mut model, mut without, mut with, mut difference) = (vec![], vec![], vec![], vec![]);
    for (name, (a, b)) in ablation(board) {
        let (a, b) = (
            a.map(|e| e.test_segment_accuracy),
            b.map(|e| e.test_segment_accuracy),
        );
        model.push(name);
        without.push(a);
        with.push(b);
        difference.push(a.zip(b).map(|(a, b)| b - a));
    }
    frame(
        "ablation",
        vec![
            Column::new("model".into(), model),
            Column::new("test_segment_without".into(), without),
            Column::new("test_segment_with".into(), with),
            Column::new("difference".into(), difference),
        ],
    )
}

/// The leaderboard and the ablation as aligned lines for `run` to print.
fn leaderboard_lines(board: &Leaderboard) -> Vec<String> {
    let mut lines = vec![format!(
        "{:<44} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "member", "params", "MACs/seg", "val seg", "val trk", "test seg", "test trk"
    )];
    for e in &board.entries {
        lines.push(format!(
            "{:<44} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9}",
            e.member,
            e.trainable_parameters,
            e.multiply_adds_per_segment,
            pct(e.val_segment_accuracy),
            pct(e.val_track_accuracy),
            pct(e.test_segment_accuracy),
            pct(e.test_track_accuracy),
        ));
    }
    for (model, (without, with)) in ablation(board) {
        if let (Some(a), Some(b)) = (without, with) {
            lines.push(format!(
                "ablation {model}: test {}% without SpecAugment, {}% with ({:+.1} points)",
                pct(a.test_segment_accuracy),
                pct(b.test_segment_accuracy),
                100.0 * (b.test_segment_accuracy - a.test_segment_accuracy)
            ));
        }
    }
    lines
}

/// A confusion matrix as aligned lines, class names abbreviated to fit the columns.
fn confusion_lines(title: &str, classes: &[String], confusion: &[Vec<u64>]) -> Vec<String> {
    let short = |c: &String| c.chars().take(6).collect::<String>();
    let mut header = format!("{:<10}", "");
    for c in classes {
        let _ = write!(header, " {:>6}", short(c));
    }
    let mut lines = vec![title.to_string(), header];
    for (class, row) in classes.iter().zip(confusion) {
        let mut line = format!("{:<10}", short(class));
        for n in row {
            let _ = write!(line, " {n:>6}");
        }
        lines.push(line);
    }
    lines
}

const NEEDS: &[Need] = &[
    Need::many("model"),
    Need::one("features@test"),
    Need::one("scaler"),
    Need::one("segments"),
    Need::one("tracks"),
];

pub fn kind() -> Box<dyn StageKind> {
    Box::new(TypedStage::<Params> {
        kind: "tournament",
        about: "choose the champion among trained models on val alone, then score every one on test once",
        needs: NEEDS,
        outputs: &["tournament/"],
        code_dirs: &["tournament", "train", "common"],
        determinism: Determinism::Exact,
        run,
    })
}
