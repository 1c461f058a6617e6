//! Stage `train`: one of the study's CNNs fitted on the train split, early-stopped on val, as a model folder.
//!
//! Inputs: `features@train` and `features@val` (never test: the kind does not declare it, so the engine
//! never hands it over), the `scaler` statistics they are read through, `segments` and `tracks` (class
//! names). Output `model/`: `weights.safetensors` (the best epoch's weights and batch-norm statistics),
//! `optimizer.safetensors` (Adam's state after the last epoch), `history.parquet`/`.csv` (one row per
//! epoch), `curve.svg` (that history drawn, the best epoch marked), `model.json` (the spec, parameter and
//! multiply-add counts, the settings, the best epoch and the validation scores at segment and track level),
//! and the same validation scores as tables: `metrics.parquet`/`.csv` (accuracy and macro F1, then
//! per-class precision, recall, F1 and support, per level) and `confusion.parquet`/`.csv`.
//!
//! Invariants: initialisation, shuffling, SpecAugment and dropout are drawn from ChaCha streams derived from
//! the stage key, and every reduction's order is fixed, so the folder's bytes do not depend on the thread
//! count; a killed run resumes from its last completed epoch (the checkpoint folder) and ends with the bytes
//! of an uninterrupted one.

use std::collections::BTreeMap;
use std::path::Path;

use polars::prelude::{Column, DataFrame};
use serde::{Deserialize, Serialize};

use genrelab_contract::{
    read_json, write_canonical_json, Determinism, Device, Lineage, Need, ParamProblem,
    ProgressEvent, Record, Split, StageContext, StageError, StageKind, StageParams, StageReport,
    TypedStage,
};

use super::data::LoadedSplit;
use super::fit::{self, EpochProgress, FitHooks, FitNote, FitSettings};
use super::metrics::{self, Evaluation};
use super::models::{self, Architecture, ModelSpec};
use crate::charts::{self, EpochScores};
use crate::common::frames::{frame, write_table};
use crate::common::scaled_reader::ScaledFeatures;
use crate::common::tables::{SegmentTable, TrackTable};

/// Params: the network and the study's training settings (its values are the defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    pub arch: Architecture,
    /// Multiplies every layer's filters and hidden units; 1 is the study's network.
    pub width: f64,
    /// SpecAugment (one frequency and one time mask per example) on the training batches.
    pub augment: bool,
    pub batch_size: usize,
    pub max_epochs: usize,
    /// Epochs without a better validation accuracy before training stops (the best epoch is restored).
    pub patience: usize,
    pub learning_rate: f64,
    /// The learning rate is multiplied by this when validation loss has not improved for
    /// `plateau_patience` epochs.
    pub plateau_factor: f64,
    pub plateau_patience: usize,
    /// Widest SpecAugment mask, in bins or frames.
    pub mask_max_width: usize,
    /// Batch norm's running-statistics momentum (Keras: 0.99). A short run needs a smaller one: at 0.99 the
    /// running statistics that validation uses move only 1% of the way per step.
    pub batch_norm_momentum: f64,
}

impl Default for Params {
    fn default() -> Self {
        let study = FitSettings::default();
        Params {
            arch: Architecture::Unet,
            width: 1.0,
            augment: true,
            batch_size: study.batch_size,
            max_epochs: study.max_epochs,
            patience: study.patience,
            learning_rate: study.learning_rate,
            plateau_factor: study.plateau_factor,
            plateau_patience: study.plateau_patience,
            mask_max_width: study.mask_max_width,
            batch_norm_momentum: super::nn::layers::BN_MOMENTUM,
        }
    }
}

impl StageParams for Params {
    fn validate(&self) -> Vec<ParamProblem> {
        let mut problems: Vec<ParamProblem> = [
            ParamProblem::unless_within("batch_size", self.batch_size, 1..=4096, ""),
            ParamProblem::unless_within("max_epochs", self.max_epochs, 1..=100_000, ""),
            ParamProblem::unless_within("patience", self.patience, 0..=100_000, ""),
            ParamProblem::unless_within("plateau_patience", self.plateau_patience, 0..=100_000, ""),
            ParamProblem::unless_within("mask_max_width", self.mask_max_width, 1..=4096, ""),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !(self.width.is_finite() && self.width > 0.0 && self.width <= 16.0) {
            problems.push(ParamProblem::at(
                "width",
                format!("{} is not a multiplier in (0, 16]", self.width),
            ));
        }
        if !(self.learning_rate.is_finite()
            && self.learning_rate > 0.0
            && self.learning_rate <= 1.0)
        {
            problems.push(ParamProblem::at(
                "learning_rate",
                format!("{} is not a rate in (0, 1]", self.learning_rate),
            ));
        }
        if !(self.batch_norm_momentum >= 0.0 && self.batch_norm_momentum < 1.0) {
            problems.push(ParamProblem::at(
                "batch_norm_momentum",
                format!("{} is not a momentum in [0, 1)", self.batch_norm_momentum),
            ));
        }
        if !(self.plateau_factor > 0.0 && self.plateau_factor < 1.0) {
            problems.push(ParamProblem::at(
                "plateau_factor",
                format!("{} is not a factor in (0, 1)", self.plateau_factor),
            ));
        }
        problems
    }
}

impl Params {
    pub fn settings(&self) -> FitSettings {
        FitSettings {
            batch_size: self.batch_size,
            max_epochs: self.max_epochs,
            patience: self.patience,
            learning_rate: self.learning_rate,
            plateau_factor: self.plateau_factor,
            plateau_patience: self.plateau_patience,
            augment: self.augment,
            mask_max_width: self.mask_max_width,
        }
    }
}

/// `model.json`: what the folder holds and how well it did on validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub spec: ModelSpec,
    pub classes: Vec<String>,
    pub trainable_parameters: usize,
    pub running_statistics: usize,
    pub multiply_adds_per_segment: u64,
    pub params: Params,
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub stopped_early: bool,
    /// At the best epoch's weights, in evaluation mode.
    pub val: Evaluation,
}

/// The one place a run setting's device becomes a candle device. CUDA is refused when the run is planned;
/// this is the seam where candle's CUDA backend would be switched on behind a cargo feature.
pub fn candle_device(device: Device) -> Result<candle_core::Device, StageError> {
    match device {
        Device::Cpu => Ok(candle_core::Device::Cpu),
        Device::Cuda(n) => Err(StageError::Invalid(format!(
            "device cuda:{n}: this build has no CUDA backend"
        ))),
    }
}

pub fn candle_error(context: &str) -> impl Fn(candle_core::Error) -> StageError + '_ {
    move |e| StageError::Invalid(format!("{context}: {e}"))
}

/// Training progress as the engine's progress events, and cancellation from the engine: for every kind
/// that trains through [`fit::fit`].
pub struct StageHooks<'a> {
    pub ctx: &'a StageContext,
}

impl FitHooks for StageHooks<'_> {
    fn cancelled(&self) -> bool {
        self.ctx.cancelled()
    }
    fn epoch_done(&mut self, p: &EpochProgress) {
        self.ctx.report_progress(&ProgressEvent {
            unit: "epoch",
            done: p.epoch as u64,
            total: Some(p.total as u64),
            values: BTreeMap::from([
                ("loss", p.train_loss),
                ("val_acc", p.val_accuracy),
                ("val_track_acc", p.val_track_accuracy),
                ("lr", p.learning_rate),
                ("samples/s", p.samples_per_second),
            ]),
        });
    }
    fn note(&mut self, note: &FitNote) {
        tracing::info!(stage = %self.ctx.stage_name(), "{note:?}");
    }
}

fn run(params: &Params, ctx: &StageContext) -> Result<StageReport, StageError> {
    params.check()?;
    let device = candle_device(ctx.exec().device)?;
    let segments: SegmentTable = read_json(ctx.input("segments")?, "segments")?;
    let tracks: TrackTable = read_json(ctx.input("tracks")?, "tracks")?;
    let features = ScaledFeatures::from_inputs(ctx, &[Split::Train, Split::Val])?;
    let train = LoadedSplit::load(&features, &segments, Split::Train)?;
    let val = LoadedSplit::load(&features, &segments, Split::Val)?;
    let spec = ModelSpec {
        arch: params.arch,
        width: params.width,
        classes: tracks.classes.len(),
        n_mels: train.n_mels,
        frames: train.frames,
        batch_norm_momentum: params.batch_norm_momentum,
    };
    spec.validate().map_err(candle_error("model"))?;
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut ctx.rng("init"), &mut seed);
    let model = models::build(&spec, seed, candle_core::DType::F32, &device)
        .map_err(candle_error("building the model"))?;

    let checkpoint = ctx.checkpoint_dir()?;
    let rng_for = |stream: &str| ctx.rng(&format!("fit/{stream}"));
    let outcome = fit::fit(
        model.as_ref(),
        &train.as_set(),
        &val.as_set(),
        &params.settings(),
        &rng_for,
        Some(checkpoint),
        &mut StageHooks { ctx },
    )
    .map_err(|e| match e {
        fit::FitError::Cancelled => StageError::Cancelled,
        e => StageError::Invalid(format!("training: {e}")),
    })?;

    let dir = ctx.output_path("model")?;
    fit::save_state(model.as_ref(), &dir.join("weights.safetensors"))
        .map_err(candle_error("saving weights"))?;
    copy_optimizer_state(checkpoint, &dir.join("optimizer.safetensors"))?;
    write_table(&dir, "history", &mut history_frame(&outcome.history)?)?;
    write_curve(
        &dir.join("curve.svg"),
        &model_title(params),
        &outcome.history,
        outcome.best_epoch,
    )?;
    let probs = fit::predict(model.as_ref(), &val.as_set(), params.batch_size)
        .map_err(candle_error("validation"))?;
    let val_scores = metrics::evaluate(&probs, spec.classes, &val.labels, &val.tracks)
        .map_err(|e| StageError::Invalid(format!("validation metrics: {e}")))?;
    let card = ModelCard {
        trainable_parameters: models::trainable_parameters(&spec),
        running_statistics: models::running_statistics(&spec),
        multiply_adds_per_segment: models::multiply_adds_per_segment(&spec),
        spec,
        classes: tracks.classes.clone(),
        params: params.clone(),
        best_epoch: outcome.best_epoch,
        epochs_run: outcome.history.len(),
        stopped_early: outcome.stopped_early,
        val: val_scores,
    };
    write_canonical_json(&dir.join("model.json"), &card)?;
    write_table(
        &dir,
        "metrics",
        &mut metrics::metrics_frame("metrics", &card.val, &card.classes)?,
    )?;
    write_table(
        &dir,
        "confusion",
        &mut metrics::confusion_frame("confusion", &card.val, &card.classes)?,
    )?;

    let summary = format!(
        "{:?} width {} ({} parameters){}: best epoch {} of {}, val {:.1}% per segment, {:.1}% per track",
        card.spec.arch,
        params.width,
        card.trainable_parameters,
        if params.augment { " with SpecAugment" } else { "" },
        card.best_epoch,
        card.epochs_run,
        100.0 * card.val.segment.accuracy,
        100.0 * card.val.track_mean.accuracy,
    );
    let lineage = Lineage::default()
        .with(segments.fit_record("model weights", Split::Train))
        .with(Record::Selected {
            what: "best epoch (early stopping, learning-rate plateau)".into(),
            by: Split::Val,
            chosen: format!("epoch {}", card.best_epoch),
        })
        .with(Record::Scored {
            what: "accuracy, macro F1".into(),
            split: Split::Val,
            segments: val.labels.len(),
        });
    Ok(StageReport {
        lineage,
        summary: vec![summary],
    })
}

/// The optimizer state the fit saved with its last completed epoch.
fn copy_optimizer_state(checkpoint: &Path, to: &Path) -> Result<(), StageError> {
    let entries = std::fs::read_dir(checkpoint).map_err(|e| StageError::io(checkpoint, e))?;
    let mut found: Vec<std::path::PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("epoch-") && n.ends_with(".optimizer.safetensors"))
        })
        .collect();
    found.sort();
    let last = found.pop().ok_or_else(|| {
        StageError::Invalid(format!(
            "{}: training finished without an optimizer checkpoint",
            checkpoint.display()
        ))
    })?;
    std::fs::copy(&last, to).map_err(|e| StageError::io(&last, e))?;
    Ok(())
}

/// One row per epoch, in epoch order.
pub fn history_frame(history: &[fit::EpochRecord]) -> Result<DataFrame, StageError> {
    let col = |name: &str, get: fn(&fit::EpochRecord) -> f64| {
        Column::new(name.into(), history.iter().map(get).collect::<Vec<f64>>())
    };
    frame(
        "history",
        vec![
            Column::new(
                "epoch".into(),
                history.iter().map(|r| r.epoch as u64).collect::<Vec<u64>>(),
            ),
            col("learning_rate", |r| r.learning_rate),
            col("train_loss", |r| r.train_loss),
            col("train_accuracy", |r| r.train_accuracy),
            col("val_loss", |r| r.val_loss),
            col("val_accuracy", |r| r.val_accuracy),
            col("val_track_accuracy", |r| r.val_track_accuracy),
        ],
    )
}

/// The network as the summary names it; from the params alone, since the stage's name in a pipeline does
/// not enter its key and so must not enter its outputs.
fn model_title(params: &Params) -> String {
    format!(
        "{:?} width {}{}",
        params.arch,
        params.width,
        if params.augment {
            " with SpecAugment"
        } else {
            ""
        }
    )
}

fn write_curve(
    path: &Path,
    title: &str,
    history: &[fit::EpochRecord],
    best_epoch: usize,
) -> Result<(), StageError> {
    let epochs: Vec<EpochScores> = history
        .iter()
        .map(|r| EpochScores {
            epoch: r.epoch,
            train_loss: r.train_loss,
            train_accuracy: r.train_accuracy,
            val_loss: r.val_loss,
            val_accuracy: r.val_accuracy,
            val_track_accuracy: r.val_track_accuracy,
        })
        .collect();
    let svg = charts::training_curve(title, &epochs, best_epoch)
        .map_err(|e| StageError::Invalid(format!("training curve: {e}")))?;
    std::fs::write(path, svg).map_err(|e| StageError::io(path, e))
}

const NEEDS: &[Need] = &[
    Need::one("features@train"),
    Need::one("features@val"),
    Need::one("scaler"),
    Need::one("segments"),
    Need::one("tracks"),
];

pub fn kind() -> Box<dyn StageKind> {
    Box::new(TypedStage::<Params> {
        kind: "train",
        about: "train one of the study's CNNs on train, early-stopped on val (never reads test); a model folder",
        needs: NEEDS,
        outputs: &["model/"],
        code_dirs: &["train", "charts", "common"],
        determinism: Determinism::Exact,
        run,
    })
}

#[cfg(test)]
#[path = "stage_tests.rs"]
mod tests;
