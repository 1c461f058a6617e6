//! Stage `transfer`: the tournament's champion (or a named `train` member) evaluated on a second corpus with
//! other classes, four ways, all scored on that corpus's test split:
//! - `linear_probe`: logistic regression on the frozen network's embeddings (what its head reads);
//! - `knn`: k nearest neighbours by cosine similarity on the same embeddings;
//! - `fine_tune`: every layer trained further from the champion's weights with a new head, early-stopped on
//!   the second corpus's val split;
//! - `scratch`: the same network trained from a random start on the same data: the reference that says
//!   whether the GTZAN weights helped.
//!
//! The second corpus runs through its own ingest -> split -> slice -> features -> scaler chain (the same kinds,
//! another dataset), so its splits are grouped by track as the first corpus's are. Inputs: every `model/`
//! folder and `tournament/` from the first corpus; `features@train/val/test`, `scaler`, `segments`, `tracks`
//! from the second. Output `transfer/`: `transfer.json` ([`TransferResult`]) and the `transfer` table (one
//! row per method in the order above, test scores at segment and track level) as `.parquet` and `.csv`.

pub mod probe;
#[cfg(test)]
mod tests;

use candle_core::{DType, Tensor};
use polars::prelude::{Column, DataFrame};
use serde::{Deserialize, Serialize};

use genrelab_contract::{
    read_json, write_canonical_json, Determinism, InputArtifact, Lineage, Need, ParamProblem,
    Record, Split, StageContext, StageError, StageKind, StageParams, StageReport, TypedStage,
};

use crate::common::frames::{frame, write_table};
use crate::common::scaled_reader::ScaledFeatures;
use crate::common::tables::{SegmentTable, TrackTable};
use crate::tournament::Champion;
use crate::train::classifier::Classifier;
use crate::train::data::LoadedSplit;
use crate::train::fit::{self, FitSettings};
use crate::train::metrics::{self, Evaluation};
use crate::train::models::{self, ModelSpec};
use crate::train::stage::{candle_device, candle_error, ModelCard, StageHooks};
use probe::Embeddings;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// `champion` (the tournament's choice) or the name of one `train` member.
    pub model: String,
    /// Neighbours for `knn`.
    pub k: usize,
    /// Full-batch Adam steps of the linear probe.
    pub probe_steps: usize,
    pub probe_learning_rate: f64,
    /// Fine-tuning and the from-scratch reference: the study's loop with these settings.
    pub batch_size: usize,
    pub max_epochs: usize,
    pub patience: usize,
    pub learning_rate: f64,
}

impl Default for Params {
    fn default() -> Self {
        let study = FitSettings::default();
        Params {
            model: "champion".into(),
            k: 5,
            probe_steps: 300,
            probe_learning_rate: 0.01,
            batch_size: study.batch_size,
            max_epochs: study.max_epochs,
            patience: study.patience,
            learning_rate: study.learning_rate,
        }
    }
}

impl StageParams for Params {
    fn validate(&self) -> Vec<ParamProblem> {
        let mut problems: Vec<ParamProblem> = [
            ParamProblem::unless_within("k", self.k, 1..=1000, ""),
            ParamProblem::unless_within("probe_steps", self.probe_steps, 1..=1_000_000, ""),
            ParamProblem::unless_within("batch_size", self.batch_size, 1..=4096, ""),
            ParamProblem::unless_within("max_epochs", self.max_epochs, 1..=100_000, ""),
            ParamProblem::unless_within("patience", self.patience, 0..=100_000, ""),
        ]
        .into_iter()
        .flatten()
        .collect();
        for (key, rate) in [
            ("probe_learning_rate", self.probe_learning_rate),
            ("learning_rate", self.learning_rate),
        ] {
            if !(rate.is_finite() && rate > 0.0 && rate <= 1.0) {
                problems.push(ParamProblem::at(
                    key,
                    format!("{rate} is not a rate in (0, 1]"),
                ));
            }
        }
        if self.model.is_empty() {
            problems.push(ParamProblem::at(
                "model",
                "name `champion` or a train member",
            ));
        }
        problems
    }
}

/// One method's test scores on the second corpus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodScore {
    pub method: String,
    /// The epoch early stopping kept (fine-tuning and scratch only).
    pub best_epoch: Option<usize>,
    pub test: Evaluation,
}

/// `transfer.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferResult {
    /// The `train` member transferred.
    pub source: String,
    pub source_spec: ModelSpec,
    pub classes: Vec<String>,
    pub train_segments: usize,
    pub test_segments: usize,
    pub embedding_dim: usize,
    pub methods: Vec<MethodScore>,
}

/// The `train` member to transfer: the tournament's champion, or the one named.
fn source<'a>(params: &Params, ctx: &'a StageContext) -> Result<&'a InputArtifact, StageError> {
    let wanted = if params.model == "champion" {
        let tournament = ctx.input("tournament")?;
        let champion: Champion = read_json(&tournament.join("champion.json"), "tournament")?;
        champion.member
    } else {
        params.model.clone()
    };
    ctx.inputs("model")
        .iter()
        .find(|m| m.stage == wanted)
        .ok_or_else(|| {
            StageError::bad_input(
                "model",
                format!("`{wanted}` is not among the models this stage was given"),
            )
        })
}

/// Embeddings of every row of `split`, in eval mode, a batch at a time.
fn embed(
    model: &dyn Classifier,
    split: &LoadedSplit,
    batch: usize,
) -> Result<Embeddings, StageError> {
    let len = split.n_mels * split.frames;
    let rows = split.labels.len();
    let mut values = Vec::new();
    let mut dim = 0;
    let device = candle_core::Device::Cpu;
    for start in (0..rows).step_by(batch.max(1)) {
        let n = batch.min(rows - start);
        let x = Tensor::from_slice(
            &split.values[start * len..(start + n) * len],
            (n, 1, split.n_mels, split.frames),
            &device,
        )
        .and_then(|x| model.embed(&x))
        .and_then(|e| {
            dim = e.dim(1)?;
            e.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
        })
        .map_err(candle_error("embedding"))?;
        values.extend(x);
    }
    Ok(Embeddings { values, dim })
}

fn evaluate(probs: &[f32], classes: usize, split: &LoadedSplit) -> Result<Evaluation, StageError> {
    metrics::evaluate(probs, classes, &split.labels, &split.tracks)
        .map_err(|e| StageError::Invalid(format!("test metrics: {e}")))
}

fn run(params: &Params, ctx: &StageContext) -> Result<StageReport, StageError> {
    params.check()?;
    let device = candle_device(ctx.exec().device)?;
    let source = source(params, ctx)?;
    let card: ModelCard = read_json(&source.path.join("model.json"), "model")?;
    let weights = source.path.join("weights.safetensors");
    let segments: SegmentTable = read_json(ctx.input("segments")?, "segments")?;
    let tracks: TrackTable = read_json(ctx.input("tracks")?, "tracks")?;
    let features = ScaledFeatures::from_inputs(ctx, &[Split::Train, Split::Val, Split::Test])?;
    let train = LoadedSplit::load(&features, &segments, Split::Train)?;
    let val = LoadedSplit::load(&features, &segments, Split::Val)?;
    let test = LoadedSplit::load(&features, &segments, Split::Test)?;
    if (train.n_mels, train.frames) != (card.spec.n_mels, card.spec.frames) {
        return Err(StageError::bad_input(
            "features@train",
            format!(
                "segments of {} x {} do not fit `{}`, trained on {} x {}",
                train.n_mels, train.frames, source.stage, card.spec.n_mels, card.spec.frames
            ),
        ));
    }
    let classes = tracks.classes.len();
    let mut methods = Vec::new();

    // Frozen: the source network exactly as trained.
    let frozen = models::build(&card.spec, [0; 32], DType::F32, &device)
        .map_err(candle_error("building the source model"))?;
    fit::load_state(frozen.as_ref(), &weights).map_err(candle_error(&source.stage))?;
    let train_embedded = embed(frozen.as_ref(), &train, params.batch_size)?;
    let test_embedded = embed(frozen.as_ref(), &test, params.batch_size)?;
    let probs = probe::linear_probe(
        &train_embedded,
        &train.labels,
        classes,
        &test_embedded,
        params.probe_steps,
        params.probe_learning_rate,
    )
    .map_err(candle_error("linear probe"))?;
    methods.push(MethodScore {
        method: "linear_probe".into(),
        best_epoch: None,
        test: evaluate(&probs, classes, &test)?,
    });
    let probs = probe::knn(
        &train_embedded,
        &train.labels,
        classes,
        &test_embedded,
        params.k,
    )
    .map_err(|e| StageError::Invalid(format!("k-NN: {e}")))?;
    methods.push(MethodScore {
        method: format!("knn_{}", params.k),
        best_epoch: None,
        test: evaluate(&probs, classes, &test)?,
    });

    // Trained: the same network with a head for the new classes, from the source weights or from scratch.
    let spec = ModelSpec {
        classes,
        ..card.spec.clone()
    };
    let settings = FitSettings {
        batch_size: params.batch_size,
        max_epochs: params.max_epochs,
        patience: params.patience,
        learning_rate: params.learning_rate,
        augment: false,
        ..FitSettings::default()
    };
    let checkpoint = ctx.checkpoint_dir()?;
    for method in ["fine_tune", "scratch"] {
        ctx.stop_if_cancelled()?;
        let mut seed = [0u8; 32];
        rand::RngCore::fill_bytes(&mut ctx.rng(&format!("{method}/init")), &mut seed);
        let model = models::build(&spec, seed, DType::F32, &device)
            .map_err(candle_error("building the model"))?;
        if method == "fine_tune" {
            // Every tensor but the classification head, which has the new class count.
            fit::load_state_where(model.as_ref(), &weights, &|name| {
                !name.starts_with("logits.")
            })
            .map_err(candle_error(&source.stage))?;
        }
        let dir = checkpoint.join(method);
        std::fs::create_dir_all(&dir).map_err(|e| StageError::io(&dir, e))?;
        let rng_for = |stream: &str| ctx.rng(&format!("{method}/fit/{stream}"));
        let outcome = fit::fit(
            model.as_ref(),
            &train.as_set(),
            &val.as_set(),
            &settings,
            &rng_for,
            Some(&dir),
            &mut StageHooks { ctx },
        )
        .map_err(|e| match e {
            fit::FitError::Cancelled => StageError::Cancelled,
            e => StageError::Invalid(format!("{method}: {e}")),
        })?;
        let probs = fit::predict(model.as_ref(), &test.as_set(), params.batch_size)
            .map_err(candle_error("test"))?;
        methods.push(MethodScore {
            method: method.into(),
            best_epoch: Some(outcome.best_epoch),
            test: evaluate(&probs, classes, &test)?,
        });
    }

    let result = TransferResult {
        source: source.stage.clone(),
        source_spec: card.spec.clone(),
        classes: tracks.classes.clone(),
        train_segments: train.labels.len(),
        test_segments: test.labels.len(),
        embedding_dim: train_embedded.dim,
        methods,
    };
    let dir = ctx.output_path("transfer")?;
    write_canonical_json(&dir.join("transfer.json"), &result)?;
    write_table(&dir, "transfer", &mut results_frame(&result)?)?;

    let mut summary = vec![format!(
        "transfer of {} to {} classes ({} train, {} test segments):",
        result.source, classes, result.train_segments, result.test_segments
    )];
    for m in &result.methods {
        summary.push(format!(
            "  {:<13} test {:.1}% per segment, {:.1}% per track{}",
            m.method,
            100.0 * m.test.segment.accuracy,
            100.0 * m.test.track_mean.accuracy,
            m.best_epoch
                .map(|e| format!(" (best epoch {e})"))
                .unwrap_or_default()
        ));
    }
    let lineage = Lineage::default()
        .with(segments.fit_record(
            "linear probe, k-NN reference set, fine-tuned and scratch weights",
            Split::Train,
        ))
        .with(Record::Selected {
            what: "best epoch of fine-tuning and of scratch".into(),
            by: Split::Val,
            chosen: result
                .methods
                .iter()
                .filter_map(|m| m.best_epoch.map(|e| format!("{} epoch {e}", m.method)))
                .collect::<Vec<_>>()
                .join(", "),
        })
        .with(Record::Scored {
            what: "validation accuracy per epoch (fine-tuning, scratch)".into(),
            split: Split::Val,
            segments: val.labels.len(),
        })
        .with(Record::Scored {
            what: "accuracy, macro F1 of every method".into(),
            split: Split::Test,
            segments: test.labels.len(),
        });
    Ok(StageReport { lineage, summary })
}

/// `transfer`: one row per method, in the order they ran; `best_epoch` is null for the frozen methods.
pub fn results_frame(result: &TransferResult) -> Result<DataFrame, StageError> {
    let m = &result.methods;
    let floats = |name: &str, get: fn(&Evaluation) -> f64| {
        Column::new(
            name.into(),
            m.iter().map(|m| get(&m.test)).collect::<Vec<f64>>(),
        )
    };
    frame(
        "transfer",
        vec![
            Column::new(
                "source".into(),
                m.iter().map(|_| result.source.as_str()).collect::<Vec<_>>(),
            ),
            Column::new(
                "method".into(),
                m.iter().map(|m| m.method.as_str()).collect::<Vec<_>>(),
            ),
            Column::new(
                "best_epoch".into(),
                m.iter()
                    .map(|m| m.best_epoch.map(|e| e as u64))
                    .collect::<Vec<_>>(),
            ),
            floats("test_segment_accuracy", |e| e.segment.accuracy),
            floats("test_segment_macro_f1", |e| e.segment.macro_f1),
            floats("test_track_accuracy", |e| e.track_mean.accuracy),
            floats("test_track_macro_f1", |e| e.track_mean.macro_f1),
            floats("test_track_vote_accuracy", |e| e.track_vote.accuracy),
        ],
    )
}

const NEEDS: &[Need] = &[
    Need::many("model"),
    Need::one("tournament"),
    Need::one("features@train"),
    Need::one("features@val"),
    Need::one("features@test"),
    Need::one("scaler"),
    Need::one("segments"),
    Need::one("tracks"),
];

pub fn kind() -> Box<dyn StageKind> {
    Box::new(TypedStage::<Params> {
        kind: "transfer",
        about: "the champion on a second corpus: linear probe and k-NN on frozen embeddings, fine-tuning, and training from scratch",
        needs: NEEDS,
        outputs: &["transfer/"],
        code_dirs: &["transfer", "tournament", "train", "common"],
        determinism: Determinism::Exact,
        run,
    })
}
