//! Stage `cv`: one fold of a cross-validation over the train and val tracks (test is never declared, so never
//! handed over), in one of two modes, so that the report can put the honest estimate beside the study's.
//!
//! - `grouped` (default): folds of tracks, stratified by class, duplicate-audio groups kept together
//!   ([`folds::grouped_folds`]). Fold `k` is held out, fold `k + 1` drives early stopping and the
//!   learning-rate plateau, the other folds fit the scaler (refitted per fold) and the weights. The held-out
//!   score never comes from rows that chose anything.
//! - `study_replica`: the study's own procedure, for contrast only: folds of segments
//!   ([`folds::segment_folds`]), the scaler fitted once on every segment, and the fold's score taken at the
//!   best epoch on the fold that drove early stopping. One track's segments land in several folds, which is
//!   why this estimate runs high; `fold.json` counts the held-out tracks that also fed training.
//!
//! The network is `train.arch` (the lean U-Net by default), or with `arch: champion` whichever architecture
//! the tournament chose on validation, read from its leaderboard; the fold's own `train` settings (width,
//! epochs) still apply, so a 2-core profile can cross-validate the champion's design at a small width.
//!
//! Every fold of one cross-validation draws its assignment from the same stream (seeded by `seed` and the
//! ids of the rows, not by the member's stage key), so the members of a `foreach: {fold: ...}` family agree.
//!
//! Output `fold/`: `fold.json` ([`FoldResult`]: the parts' tracks and sizes, the scaler's fit set, the
//! history, the best epoch and the held-out evaluation at segment and track level). `cv_summary` aggregates.

pub mod folds;
pub mod summary;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use genrelab_contract::{
    ids_digest, read_json, write_canonical_json, Determinism, Lineage, Need, ParamProblem,
    PartRole, Record, Split, StageContext, StageError, StageKind, StageParams, StageReport,
    TypedStage,
};

use crate::common::scaled_reader::{ScaledFeatures, ScalerStats};
use crate::common::split_tensors::{open_split, FEATURES};
use crate::common::tables::{fit_record, Segment, SegmentTable, SplitTable, TrackTable};
use crate::common::tensors::TensorFile;
use crate::tournament::Leaderboard;
use crate::train::data::LoadedSplit;
use crate::train::fit::{self, EpochRecord, SegmentSet};
use crate::train::metrics::{self, Evaluation};
use crate::train::models::{self, Architecture, ModelSpec};
use crate::train::stage::{candle_device, candle_error, StageHooks};
use folds::{grouped_folds, grouped_role, segment_folds, Role, TrackLabel};

/// The splits a cross-validation draws its folds from: everything but test.
const POOL: [Split; 2] = [Split::Train, Split::Val];

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Grouped,
    StudyReplica,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Grouped => "grouped",
            Mode::StudyReplica => "study_replica",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    pub mode: Mode,
    /// Number of folds (the study: 5).
    pub folds: usize,
    /// Which fold this member holds out, in `0..folds`.
    pub fold: usize,
    /// Seeds the fold assignment; every fold of one cross-validation must share it.
    pub seed: u64,
    /// The scaler refitted on each fold's training part (`cell`, the study's, or `band`).
    pub scaler_mode: crate::scaler::Mode,
    /// The network and its training settings, as the `train` kind takes them (default: the lean U-Net the
    /// study cross-validated).
    pub train: crate::train::stage::Params,
    /// Overrides `train.arch` when set: an architecture name, or `champion` for the architecture the
    /// tournament chose on validation (the stage then needs a `tournament` input).
    pub arch: Option<String>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            mode: Mode::Grouped,
            folds: 5,
            fold: 0,
            seed: 0,
            scaler_mode: crate::scaler::Mode::Cell,
            train: crate::train::stage::Params {
                arch: Architecture::UnetLean,
                ..Default::default()
            },
            arch: None,
        }
    }
}

impl StageParams for Params {
    fn validate(&self) -> Vec<ParamProblem> {
        let mut problems: Vec<ParamProblem> = self
            .train
            .validate()
            .into_iter()
            .map(|p| ParamProblem::at(format!("train.{}", p.key), p.message))
            .collect();
        // Grouped mode needs a held-out, an early-stopping and at least one training fold.
        problems.extend(ParamProblem::unless_within("folds", self.folds, 3..=50, ""));
        if self.fold >= self.folds {
            problems.push(ParamProblem::at(
                "fold",
                format!("{} is not a fold of 0..{}", self.fold, self.folds),
            ));
        }
        if let Some(Err(message)) = self.arch.as_deref().map(ArchChoice::parse) {
            problems.push(ParamProblem::at("arch", message));
        }
        problems
    }
}

/// What `arch` names: a fixed architecture, or whichever one the tournament chose.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ArchChoice {
    Fixed(Architecture),
    Champion,
}

impl ArchChoice {
    const CHAMPION: &'static str = "champion";

    fn parse(name: &str) -> Result<Self, String> {
        if name == Self::CHAMPION {
            return Ok(ArchChoice::Champion);
        }
        serde_json::from_value(serde_json::Value::String(name.to_string()))
            .map(ArchChoice::Fixed)
            .map_err(|_| {
                format!(
                    "`{name}` is neither `{}` nor an architecture (efficient_vgg, res_se, unet, unet_lean)",
                    Self::CHAMPION
                )
            })
    }
}

/// The architecture this fold trains, following the tournament's champion when asked to.
fn architecture(params: &Params, ctx: &StageContext) -> Result<Architecture, StageError> {
    let Some(name) = params.arch.as_deref() else {
        return Ok(params.train.arch);
    };
    match ArchChoice::parse(name).map_err(|m| StageError::bad_input("arch", m))? {
        ArchChoice::Fixed(arch) => Ok(arch),
        ArchChoice::Champion => {
            let tournament = match ctx.inputs(TOURNAMENT) {
                [one] => one,
                others => {
                    return Err(StageError::bad_input(
                        TOURNAMENT,
                        format!(
                            "`arch: champion` follows one tournament's choice; this stage was given {}: list exactly one tournament stage in its inputs",
                            others.len()
                        ),
                    ))
                }
            };
            let board: Leaderboard =
                read_json(&tournament.path.join("leaderboard.json"), TOURNAMENT)?;
            board
                .entries
                .iter()
                .find(|e| e.member == board.champion)
                .map(|e| e.arch)
                .ok_or_else(|| {
                    StageError::bad_input(
                        TOURNAMENT,
                        format!("the champion `{}` has no leaderboard row", board.champion),
                    )
                })
        }
    }
}

const TOURNAMENT: &str = "tournament";

/// One part of the pool: its size and its tracks (sorted ids).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartSummary {
    pub segments: usize,
    pub tracks: Vec<String>,
}

/// `fold.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoldResult {
    pub mode: Mode,
    pub fold: usize,
    pub folds: usize,
    pub spec: ModelSpec,
    pub classes: Vec<String>,
    pub train: PartSummary,
    /// The rows that chose the best epoch: the next fold (grouped) or the held-out fold itself (replica).
    pub early_stopping: PartSummary,
    pub held_out: PartSummary,
    pub scaler_fit: PartSummary,
    /// Held-out tracks with segments in the training part too: 0 when grouped, most of them in the replica.
    pub held_out_tracks_also_trained_on: usize,
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub history: Vec<EpochRecord>,
    /// The held-out part at the best epoch's weights, segment and track level.
    pub score: Evaluation,
}

/// The pool's rows in tensor order (the train split's segments, then val's) and where each lives.
struct Pool<'a> {
    rows: Vec<(Split, usize, &'a Segment)>,
}

impl<'a> Pool<'a> {
    fn new(segments: &'a SegmentTable) -> Self {
        let rows = POOL
            .iter()
            .flat_map(|&split| {
                segments
                    .of_split(split)
                    .enumerate()
                    .map(move |(i, s)| (split, i, s))
            })
            .collect();
        Pool { rows }
    }

    fn part(&self, picked: &[usize]) -> PartSummary {
        let tracks: BTreeSet<&str> = picked
            .iter()
            .map(|&i| self.rows[i].2.track.as_str())
            .collect();
        PartSummary {
            segments: picked.len(),
            tracks: tracks.into_iter().map(str::to_string).collect(),
        }
    }

    /// One `fit` record per split the picked rows come from.
    fn fit_records(&self, what: &str, picked: &[usize]) -> Vec<Record> {
        POOL.iter()
            .filter_map(|&split| {
                let rows: Vec<&Segment> = picked
                    .iter()
                    .map(|&i| self.rows[i])
                    .filter(|r| r.0 == split)
                    .map(|r| r.2)
                    .collect();
                (!rows.is_empty()).then(|| fit_record(what, split, rows.into_iter()))
            })
            .collect()
    }

    fn scored_records(&self, what: &str, picked: &[usize]) -> Vec<Record> {
        POOL.iter()
            .filter_map(|&split| {
                let segments = picked.iter().filter(|&&i| self.rows[i].0 == split).count();
                (segments > 0).then(|| Record::Scored {
                    what: what.to_string(),
                    split,
                    segments,
                })
            })
            .collect()
    }
}

/// Each pool row's fold, identical for every member of one cross-validation.
fn assign_folds(
    params: &Params,
    pool: &Pool<'_>,
    split: &SplitTable,
) -> Result<Vec<usize>, StageError> {
    let mut seed = blake3::Hasher::new();
    seed.update(b"genrelab cv folds");
    seed.update(params.mode.name().as_bytes());
    seed.update(&params.seed.to_le_bytes());
    seed.update(&(params.folds as u64).to_le_bytes());
    seed.update(ids_digest(pool.rows.iter().map(|r| r.2.id.as_str())).as_bytes());
    let mut rng = ChaCha20Rng::from_seed(*seed.finalize().as_bytes());
    match params.mode {
        Mode::StudyReplica => {
            let labels: Vec<u32> = pool.rows.iter().map(|r| r.2.label).collect();
            Ok(segment_folds(&labels, params.folds, &mut rng))
        }
        Mode::Grouped => {
            let mut labels: BTreeMap<&str, u32> = BTreeMap::new();
            for r in &pool.rows {
                labels.insert(&r.2.track, r.2.label);
            }
            let tracks: Vec<TrackLabel> = labels
                .iter()
                .map(|(id, &label)| TrackLabel {
                    id: id.to_string(),
                    label,
                })
                .collect();
            if tracks.len() < params.folds {
                return Err(StageError::Invalid(format!(
                    "{} train and val tracks cannot fill {} folds",
                    tracks.len(),
                    params.folds
                )));
            }
            let fold_of = grouped_folds(&tracks, &split.duplicate_groups, params.folds, &mut rng);
            Ok(pool.rows.iter().map(|r| fold_of[&r.2.track]).collect())
        }
    }
}

/// Rows gathered from the loaded splits into one training or scoring set.
struct Gathered {
    values: Vec<f32>,
    labels: Vec<u32>,
    tracks: Vec<u32>,
}

impl Gathered {
    fn new(
        pool: &Pool<'_>,
        loaded: &BTreeMap<Split, LoadedSplit>,
        track_index: &BTreeMap<&str, u32>,
        picked: &[usize],
    ) -> Self {
        let mut g = Gathered {
            values: Vec::new(),
            labels: Vec::with_capacity(picked.len()),
            tracks: Vec::with_capacity(picked.len()),
        };
        for &i in picked {
            let (split, row, segment) = pool.rows[i];
            let l = &loaded[&split];
            let len = l.n_mels * l.frames;
            g.values
                .extend_from_slice(&l.values[row * len..(row + 1) * len]);
            g.labels.push(l.labels[row]);
            g.tracks.push(track_index[segment.track.as_str()]);
        }
        g
    }

    fn set(&self, n_mels: usize, frames: usize) -> SegmentSet<'_> {
        SegmentSet {
            values: &self.values,
            n_mels,
            frames,
            labels: &self.labels,
            tracks: &self.tracks,
        }
    }
}

fn run(params: &Params, ctx: &StageContext) -> Result<StageReport, StageError> {
    params.check()?;
    let device = candle_device(ctx.exec().device)?;
    let segments: SegmentTable = read_json(ctx.input("segments")?, "segments")?;
    let tracks: TrackTable = read_json(ctx.input("tracks")?, "tracks")?;
    let split: SplitTable = read_json(ctx.input("split")?, "split")?;
    let pool = Pool::new(&segments);
    let fold_of_row = assign_folds(params, &pool, &split)?;
    let role = |i: usize| match params.mode {
        Mode::Grouped => grouped_role(fold_of_row[i], params.fold, params.folds),
        Mode::StudyReplica if fold_of_row[i] == params.fold => Role::HeldOut,
        Mode::StudyReplica => Role::Train,
    };
    let picked =
        |want: Role| -> Vec<usize> { (0..pool.rows.len()).filter(|&i| role(i) == want).collect() };
    let train_rows = picked(Role::Train);
    let held_out_rows = picked(Role::HeldOut);
    let (stop_rows, scaler_rows) = match params.mode {
        Mode::Grouped => (picked(Role::EarlyStopping), train_rows.clone()),
        // The study's leaks, reproduced on purpose: the scaler sees every row, and the fold it is scored on
        // also chooses the epoch.
        Mode::StudyReplica => (held_out_rows.clone(), (0..pool.rows.len()).collect()),
    };
    for (what, rows) in [
        ("training", &train_rows),
        ("early-stopping", &stop_rows),
        ("held-out", &held_out_rows),
    ] {
        if rows.is_empty() {
            return Err(StageError::Invalid(format!(
                "fold {} of {} has an empty {what} part",
                params.fold, params.folds
            )));
        }
    }

    // The fold's own scaler, fitted on its rows only, read from the unscaled features.
    let mut paths = Vec::new();
    for split in POOL {
        paths.push((split, ctx.split_input(FEATURES, split)?));
    }
    let files = paths
        .iter()
        .map(|(_, p)| TensorFile::open(p))
        .collect::<Result<Vec<_>, _>>()?;
    let raw = POOL
        .iter()
        .zip(&files)
        .zip(&paths)
        .map(|((&split, file), (_, path))| {
            open_split(file, path, &split.artifact(FEATURES), &segments, split)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (n_mels, frames) = raw[0].dims();
    let read_row = |k: usize, buf: &mut Vec<f32>| {
        let (split, row, _) = pool.rows[scaler_rows[k]];
        let which = usize::from(split != POOL[0]);
        raw[which].values.row_f32_into(row, buf);
    };
    let fitted = crate::scaler::fit(
        scaler_rows.len(),
        n_mels,
        frames,
        params.scaler_mode,
        &read_row,
        &|_| {},
    )?;
    let stats = ScalerStats {
        shape: fitted.stat_shape(),
        mean: fitted.mean,
        std: fitted.std,
        count: u32::try_from(fitted.count)
            .map_err(|_| StageError::Invalid("too many segments for the scaler's count".into()))?,
    };
    let features = ScaledFeatures::with_stats(stats, &paths)?;
    let mut loaded = BTreeMap::new();
    for split in POOL {
        loaded.insert(split, LoadedSplit::load(&features, &segments, split)?);
    }
    let track_ids: BTreeSet<&str> = pool.rows.iter().map(|r| r.2.track.as_str()).collect();
    let track_index: BTreeMap<&str, u32> = track_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, i as u32))
        .collect();
    let gather = |rows: &[usize]| Gathered::new(&pool, &loaded, &track_index, rows);
    let (train_set, stop_set, held_out_set) = (
        gather(&train_rows),
        gather(&stop_rows),
        gather(&held_out_rows),
    );

    let spec = ModelSpec {
        arch: architecture(params, ctx)?,
        width: params.train.width,
        classes: tracks.classes.len(),
        n_mels,
        frames,
        batch_norm_momentum: params.train.batch_norm_momentum,
    };
    spec.validate().map_err(candle_error("model"))?;
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut ctx.rng("init"), &mut seed);
    let model = models::build(&spec, seed, candle_core::DType::F32, &device)
        .map_err(candle_error("building the model"))?;
    let rng_for = |stream: &str| ctx.rng(&format!("fit/{stream}"));
    let outcome = fit::fit(
        model.as_ref(),
        &train_set.set(n_mels, frames),
        &stop_set.set(n_mels, frames),
        &params.train.settings(),
        &rng_for,
        Some(ctx.checkpoint_dir()?),
        &mut StageHooks { ctx },
    )
    .map_err(|e| match e {
        fit::FitError::Cancelled => StageError::Cancelled,
        e => StageError::Invalid(format!("training fold {}: {e}", params.fold)),
    })?;
    let probs = fit::predict(
        model.as_ref(),
        &held_out_set.set(n_mels, frames),
        params.train.batch_size,
    )
    .map_err(candle_error("held-out fold"))?;
    let score = metrics::evaluate(
        &probs,
        spec.classes,
        &held_out_set.labels,
        &held_out_set.tracks,
    )
    .map_err(|e| StageError::Invalid(format!("held-out metrics: {e}")))?;

    let train_part = pool.part(&train_rows);
    let held_out_part = pool.part(&held_out_rows);
    let trained_on: BTreeSet<&String> = train_part.tracks.iter().collect();
    let shared = held_out_part
        .tracks
        .iter()
        .filter(|t| trained_on.contains(t))
        .count();
    let result = FoldResult {
        mode: params.mode,
        fold: params.fold,
        folds: params.folds,
        spec,
        classes: tracks.classes.clone(),
        train: train_part,
        early_stopping: pool.part(&stop_rows),
        held_out: held_out_part,
        scaler_fit: pool.part(&scaler_rows),
        held_out_tracks_also_trained_on: shared,
        best_epoch: outcome.best_epoch,
        epochs_run: outcome.history.len(),
        history: outcome.history,
        score,
    };
    write_canonical_json(&ctx.output_path("fold")?.join("fold.json"), &result)?;

    let fold = params.fold;
    let mut lineage = Lineage::details(serde_json::json!({
        "mode": params.mode.name(),
        "fold": fold,
        "folds": params.folds,
        "early_stopping_tracks": result.early_stopping.tracks,
        "held_out_tracks": result.held_out.tracks,
    }));
    for record in pool
        .fit_records(&format!("fold {fold} scaler statistics"), &scaler_rows)
        .into_iter()
        .chain(pool.fit_records(&format!("fold {fold} model weights"), &train_rows))
        .chain(pool.scored_records(
            &format!("fold {fold} early stopping (best epoch)"),
            &stop_rows,
        ))
        .chain(pool.scored_records(
            &format!("fold {fold} held-out accuracy, macro F1"),
            &held_out_rows,
        ))
    {
        lineage = lineage.with(record);
    }
    lineage = lineage
        .with(Record::Part {
            what: format!("fold {fold} early stopping (best epoch)"),
            role: PartRole::EarlyStopping,
            tracks: result.early_stopping.tracks.clone(),
        })
        .with(Record::Part {
            what: format!("fold {fold} held-out accuracy, macro F1"),
            role: PartRole::HeldOut,
            tracks: result.held_out.tracks.clone(),
        });
    let summary = format!(
        "{} fold {}/{}: trained on {} tracks ({} segments), held out {} tracks ({} also trained on); best epoch {} of {}; held-out {:.1}% per segment, {:.1}% per track",
        params.mode.name(),
        fold + 1,
        params.folds,
        result.train.tracks.len(),
        result.train.segments,
        result.held_out.tracks.len(),
        result.held_out_tracks_also_trained_on,
        result.best_epoch,
        result.epochs_run,
        100.0 * result.score.segment.accuracy,
        100.0 * result.score.track_mean.accuracy,
    );
    Ok(StageReport {
        lineage,
        summary: vec![summary],
    })
}

const NEEDS: &[Need] = &[
    Need::one("features@train"),
    Need::one("features@val"),
    Need::one("segments"),
    Need::one("tracks"),
    Need::one("split"),
    Need::any(TOURNAMENT),
];

pub fn kind() -> Box<dyn StageKind> {
    Box::new(TypedStage::<Params> {
        kind: "cv",
        about: "one fold of a cross-validation over train+val: grouped by track (default) or the study's replica",
        needs: NEEDS,
        outputs: &["fold/"],
        code_dirs: &["cv", "train", "scaler", "tournament", "common"],
        determinism: Determinism::Exact,
        run,
    })
}
