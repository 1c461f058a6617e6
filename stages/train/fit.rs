//! The study's Keras training loop: Adam on softmax cross-entropy over shuffled batches, optional
//! SpecAugment, early stopping on validation accuracy with the best weights restored, and the learning
//! rate cut on a validation-loss plateau — resumable after every epoch from an on-disk checkpoint.
//!
//! Everything random comes from `rng_for(name)`, one stream per purpose and epoch
//! (`shuffle/epoch-N`, `augment/epoch-N`, `dropout/epoch-N`, epochs counted from 1), so an epoch can be
//! replayed from its number alone and a checkpoint needs no generator state. The outcome holds no timing:
//! it is a function of the inputs, and throughput goes to [`FitHooks::epoch_done`] only.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Tensor, Var};
use rand_chacha::rand_core::RngCore;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use super::augment::SpecAugment;
use super::batches::{batch_tensor, batches, gather_rows, label_tensor, shuffled_order};
use super::classifier::{Classifier, Mode};
use super::metrics::{self, argmax, MetricsError};
use super::nn::loss::softmax_cross_entropy;
use super::optim::Adam;
use super::schedule::{EarlyStopping, ReduceLrOnPlateau};

/// Standardised segments with their labels and the track each belongs to.
#[derive(Clone, Copy, Debug)]
pub struct SegmentSet<'a> {
    /// `len * n_mels * frames` values, segment-major, each segment mel-major.
    pub values: &'a [f32],
    pub n_mels: usize,
    pub frames: usize,
    pub labels: &'a [u32],
    pub tracks: &'a [u32],
}

impl SegmentSet<'_> {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn check(&self, what: &str) -> Result<(), FitError> {
        let cells = self.n_mels * self.frames;
        if cells == 0 {
            return Err(FitError::Invalid(format!(
                "{what}: segments of {}x{} cells",
                self.n_mels, self.frames
            )));
        }
        if self.tracks.len() != self.labels.len() || self.values.len() != self.labels.len() * cells
        {
            return Err(FitError::Invalid(format!(
                "{what}: {} values, {} labels and {} track indices do not describe the same segments",
                self.values.len(),
                self.labels.len(),
                self.tracks.len()
            )));
        }
        if self.is_empty() {
            return Err(FitError::Invalid(format!("{what}: no segments")));
        }
        Ok(())
    }
}

/// The study's training settings; [`Default`] is its tournament configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FitSettings {
    pub batch_size: usize,
    pub max_epochs: usize,
    /// Early-stopping patience on validation accuracy.
    pub patience: usize,
    pub learning_rate: f64,
    pub plateau_factor: f64,
    /// Epochs of flat validation loss before the learning rate is cut.
    pub plateau_patience: usize,
    /// SpecAugment on the training batches.
    pub augment: bool,
    pub mask_max_width: usize,
}

impl Default for FitSettings {
    fn default() -> Self {
        Self {
            batch_size: 48,
            max_epochs: 120,
            patience: 25,
            learning_rate: 1e-3,
            plateau_factor: 0.2,
            plateau_patience: 8,
            augment: true,
            mask_max_width: super::augment::DEFAULT_MAX_WIDTH,
        }
    }
}

impl FitSettings {
    fn check(&self) -> Result<(), FitError> {
        let bad = |m: &str| Err(FitError::Invalid(format!("fit settings: {m}")));
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1");
        }
        if self.max_epochs == 0 {
            return bad("max_epochs must be at least 1");
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad("learning_rate must be a positive number");
        }
        // Keras refuses factors of 1 or more.
        if !(self.plateau_factor > 0.0 && self.plateau_factor < 1.0) {
            return bad("plateau_factor must lie in (0, 1)");
        }
        Ok(())
    }
}

/// One epoch as Keras' history logs it. `learning_rate` is the rate the epoch trained with; the train
/// figures are running means over the epoch's batches (training mode), the validation figures come from
/// a pass in evaluation mode after the epoch. Track accuracy predicts each track from the mean of its
/// segments' probabilities.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub learning_rate: f64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub val_track_accuracy: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FitOutcome {
    pub history: Vec<EpochRecord>,
    /// The epoch whose weights the model holds on return (1-based).
    pub best_epoch: usize,
    pub best_val_accuracy: f64,
    pub stopped_early: bool,
}

/// Progress after an epoch, for display only (it carries wall-clock throughput).
#[derive(Clone, Debug)]
pub struct EpochProgress {
    pub epoch: usize,
    pub total: usize,
    pub learning_rate: f64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub val_track_accuracy: f64,
    pub samples_per_second: f64,
}

/// What happened to an existing checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub enum FitNote {
    /// Training continues after this completed epoch.
    Resumed { epoch: usize },
    /// The checkpoint could not be used (corrupt, or from other inputs or settings); training starts fresh
    /// and overwrites it.
    CheckpointIgnored { reason: String },
}

pub trait FitHooks {
    /// Asked before every batch (training and validation); `true` ends the fit with
    /// [`FitError::Cancelled`], keeping the last completed epoch's checkpoint as it is.
    fn cancelled(&self) -> bool {
        false
    }
    fn epoch_done(&mut self, _progress: &EpochProgress) {}
    fn note(&mut self, _note: &FitNote) {}
}

/// Hooks that never cancel and ignore progress.
pub struct NoHooks;
impl FitHooks for NoHooks {}

#[derive(Debug, thiserror::Error)]
pub enum FitError {
    #[error("training was cancelled")]
    Cancelled,
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("checkpoint {path}: {source}")]
    Checkpoint {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Keras holds the learning rate in a float32 variable, so every rate it trains with, including each
/// plateau cut (computed in f64 from the stored value), is rounded to f32.
fn keras_rate(rate: f64) -> f64 {
    f64::from(rate as f32)
}

/// Trains `model` on `train`, selecting on `val`, and leaves it holding the best epoch's state.
/// With `checkpoint_dir`, the state after every epoch is written there and a later call with the same
/// inputs continues from it, ending bit-identical to an uninterrupted run. The directory belongs to this
/// fit: it holds `checkpoint.json` (epoch, schedule states, history, and the hashes of the tensor files)
/// and `epoch-NNNN.{model,best,optimizer}.safetensors` of the last completed epoch; older epochs' files
/// are removed. A checkpoint made from other data, settings, streams or initial weights, or a damaged
/// one, is reported through [`FitHooks::note`] and training starts afresh.
pub fn fit(
    model: &dyn Classifier,
    train: &SegmentSet<'_>,
    val: &SegmentSet<'_>,
    settings: &FitSettings,
    rng_for: &dyn Fn(&str) -> ChaCha20Rng,
    checkpoint_dir: Option<&Path>,
    hooks: &mut dyn FitHooks,
) -> Result<FitOutcome, FitError> {
    settings.check()?;
    train.check("training set")?;
    val.check("validation set")?;
    if (train.n_mels, train.frames) != (val.n_mels, val.frames) {
        return Err(FitError::Invalid(
            "training and validation segments differ in shape".into(),
        ));
    }
    let state = named_vars(model.state(), "state")?;
    let trainable = named_vars(model.trainable(), "trainable")?;
    let mut adam = Adam::new(trainable, keras_rate(settings.learning_rate))?;
    let mut run = RunState {
        epochs_done: 0,
        early: EarlyStopping::new(settings.patience),
        plateau: ReduceLrOnPlateau::new(settings.plateau_factor, settings.plateau_patience),
        history: Vec::new(),
        best: None,
    };

    let checkpoint = match checkpoint_dir {
        Some(dir) => Some(Checkpoint {
            dir: dir.to_path_buf(),
            fingerprint: fingerprint(settings, train, val, rng_for, &state)?,
        }),
        None => None,
    };
    if let Some(ck) = &checkpoint {
        match ck.read(&state, settings)? {
            Found::Nothing => {}
            Found::Unusable(reason) => hooks.note(&FitNote::CheckpointIgnored { reason }),
            Found::Usable(saved) => {
                // Adam validates everything before it changes anything, so a refusal still leaves a
                // clean fresh start.
                match adam.load_state_tensors(&saved.optimizer) {
                    Err(e) => hooks.note(&FitNote::CheckpointIgnored {
                        reason: format!("optimizer state: {e}"),
                    }),
                    Ok(()) => {
                        set_state(&state, &saved.model)?;
                        run = RunState {
                            epochs_done: saved.meta.epoch,
                            early: saved.meta.early_stopping,
                            plateau: saved.meta.plateau,
                            history: saved.meta.history,
                            best: Some(saved.best),
                        };
                        hooks.note(&FitNote::Resumed {
                            epoch: run.epochs_done,
                        });
                    }
                }
            }
        }
    }

    let augment = SpecAugment {
        enabled: settings.augment,
        max_freq_width: settings.mask_max_width,
        max_time_width: settings.mask_max_width,
    };
    let (n_mels, frames) = (train.n_mels, train.frames);
    let cells = n_mels * frames;
    let mut classes = None::<usize>;

    while run.epochs_done < settings.max_epochs && !run.early.stopped {
        let epoch = run.epochs_done + 1;
        let learning_rate = adam.learning_rate();
        let order = shuffled_order(train.len(), &mut rng_for(&format!("shuffle/epoch-{epoch}")));
        let mut augment_rng = rng_for(&format!("augment/epoch-{epoch}"));
        let mut dropout_rng = rng_for(&format!("dropout/epoch-{epoch}"));
        let started = Instant::now();
        let (mut loss_sum, mut correct) = (0.0f64, 0u64);
        let mut rows = Vec::new();
        for indices in batches(&order, settings.batch_size) {
            if hooks.cancelled() {
                return Err(FitError::Cancelled);
            }
            gather_rows(train.values, cells, indices, &mut rows)?;
            augment.apply(&mut rows, n_mels, frames, &mut augment_rng)?;
            let x = batch_tensor(std::mem::take(&mut rows), n_mels, frames)?;
            let y = label_tensor(train.labels, indices)?;
            let logits = model.forward(
                &x,
                Mode::Train {
                    rng: &mut dropout_rng,
                },
            )?;
            let c = logit_classes(&logits, indices.len())?;
            if classes.is_none() {
                check_labels(train, c, "training set")?;
                check_labels(val, c, "validation set")?;
                classes = Some(c);
            }
            let loss = softmax_cross_entropy(&logits, &y)?;
            let batch_loss = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            let predicted = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            correct += indices
                .iter()
                .zip(&predicted)
                .filter(|(&i, row)| argmax(row) == train.labels[i])
                .count() as u64;
            adam.backward_step(&loss)?;
            loss_sum += batch_loss * indices.len() as f64;
        }
        let train_seconds = started.elapsed().as_secs_f64();

        let (probs, c, val_loss_sum) =
            eval_pass(model, val, settings.batch_size, true, &|| hooks.cancelled())?;
        let scores = metrics::evaluate(&probs, c, val.labels, val.tracks)?;
        let record = EpochRecord {
            epoch,
            learning_rate,
            train_loss: loss_sum / train.len() as f64,
            train_accuracy: correct as f64 / train.len() as f64,
            val_loss: val_loss_sum / val.len() as f64,
            val_accuracy: scores.segment.accuracy,
            val_track_accuracy: scores.track_mean.accuracy,
        };

        let step = run.early.update(epoch, record.val_accuracy, epoch == 1);
        if step.new_best {
            run.best = Some(snapshot(&state)?);
        }
        if let Some(rate) = run.plateau.update(record.val_loss, learning_rate) {
            adam.set_learning_rate(keras_rate(rate));
        }
        run.epochs_done = epoch;
        run.history.push(record.clone());
        if let Some(ck) = &checkpoint {
            ck.write(&state, &run, &adam)?;
        }
        hooks.epoch_done(&EpochProgress {
            epoch,
            total: settings.max_epochs,
            learning_rate,
            train_loss: record.train_loss,
            train_accuracy: record.train_accuracy,
            val_loss: record.val_loss,
            val_accuracy: record.val_accuracy,
            val_track_accuracy: record.val_track_accuracy,
            samples_per_second: if train_seconds > 0.0 {
                train.len() as f64 / train_seconds
            } else {
                0.0
            },
        });
    }

    if let Some(best) = &run.best {
        set_state(&state, best)?;
    }
    let best_epoch = run.early.best_epoch.unwrap_or(run.epochs_done);
    let best_val_accuracy = run
        .history
        .iter()
        .find(|r| r.epoch == best_epoch)
        .map_or(f64::NAN, |r| r.val_accuracy);
    Ok(FitOutcome {
        history: run.history,
        best_epoch,
        best_val_accuracy,
        stopped_early: run.early.stopped,
    })
}

/// Softmax probabilities `[set.len(), classes]` (row-major) in evaluation mode.
pub fn predict(
    model: &dyn Classifier,
    set: &SegmentSet<'_>,
    batch_size: usize,
) -> candle_core::Result<Vec<f32>> {
    let as_candle = |e: FitError| match e {
        FitError::Candle(e) => e,
        other => candle_core::Error::Msg(other.to_string()),
    };
    set.check("prediction set").map_err(as_candle)?;
    Ok(eval_pass(model, set, batch_size.max(1), false, &|| false)
        .map_err(as_candle)?
        .0)
}

/// Writes the model's state (weights and running statistics) as safetensors: sorted names, no
/// metadata, so equal states give equal bytes. The file is replaced atomically.
pub fn save_state(model: &dyn Classifier, path: &Path) -> candle_core::Result<()> {
    let state = model
        .state()
        .into_iter()
        .map(|(name, var)| (name, var.as_tensor().detach()))
        .collect();
    write_tensors(path, state)
}

/// Loads a file written by [`save_state`] into the model. Names, shapes and dtypes must match exactly;
/// on a mismatch nothing is changed.
pub fn load_state(model: &dyn Classifier, path: &Path) -> candle_core::Result<()> {
    let state =
        named_vars(model.state(), "state").map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let tensors = candle_core::safetensors::load(path, &candle_core::Device::Cpu)?;
    let values = match_state(&state, tensors).map_err(candle_core::Error::Msg)?;
    set_state(&state, &values)
}

/// Restores from `path` only the state whose names `keep` accepts (a network whose head differs from the
/// saved one keeps its own head); every kept name must be in the file with the same shape.
pub fn load_state_where(
    model: &dyn Classifier,
    path: &Path,
    keep: &dyn Fn(&str) -> bool,
) -> candle_core::Result<usize> {
    let state: Vec<(String, Var)> = named_vars(model.state(), "state")
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?
        .into_iter()
        .filter(|(name, _)| keep(name))
        .collect();
    let mut tensors = candle_core::safetensors::load(path, &candle_core::Device::Cpu)?;
    tensors.retain(|name, _| keep(name));
    let values = match_state(&state, tensors).map_err(candle_core::Error::Msg)?;
    set_state(&state, &values)?;
    Ok(state.len())
}

fn named_vars(mut vars: Vec<(String, Var)>, what: &str) -> Result<Vec<(String, Var)>, FitError> {
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    if vars.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(FitError::Invalid(format!(
            "the model's {what} repeats a name"
        )));
    }
    Ok(vars)
}

fn logit_classes(logits: &Tensor, batch: usize) -> Result<usize, FitError> {
    match logits.dims() {
        &[b, c] if b == batch && c > 0 => Ok(c),
        dims => Err(FitError::Invalid(format!(
            "the model returned logits of shape {dims:?} for a batch of {batch}"
        ))),
    }
}

fn check_labels(set: &SegmentSet<'_>, classes: usize, what: &str) -> Result<(), FitError> {
    match set.labels.iter().find(|&&l| l as usize >= classes) {
        Some(l) => Err(FitError::Invalid(format!(
            "{what}: label {l} but the model has {classes} classes"
        ))),
        None => Ok(()),
    }
}

/// Probabilities, class count and (when asked) the summed loss over `set`, in order, evaluation mode.
/// `cancelled` is asked before every batch.
fn eval_pass(
    model: &dyn Classifier,
    set: &SegmentSet<'_>,
    batch_size: usize,
    with_loss: bool,
    cancelled: &dyn Fn() -> bool,
) -> Result<(Vec<f32>, usize, f64), FitError> {
    let cells = set.n_mels * set.frames;
    let order: Vec<usize> = (0..set.len()).collect();
    let mut probs = Vec::new();
    let mut classes = 0;
    let mut loss_sum = 0.0;
    let mut rows = Vec::new();
    for indices in batches(&order, batch_size) {
        if cancelled() {
            return Err(FitError::Cancelled);
        }
        gather_rows(set.values, cells, indices, &mut rows)?;
        let x = batch_tensor(std::mem::take(&mut rows), set.n_mels, set.frames)?;
        let logits = model.forward(&x, Mode::Eval)?.to_dtype(DType::F32)?;
        classes = logit_classes(&logits, indices.len())?;
        if with_loss {
            check_labels(set, classes, "evaluation set")?;
            let y = label_tensor(set.labels, indices)?;
            let loss = softmax_cross_entropy(&logits, &y)?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            loss_sum += loss * indices.len() as f64;
        }
        probs.extend(
            candle_nn::ops::softmax_last_dim(&logits)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        );
    }
    Ok((probs, classes, loss_sum))
}

/// Deep copies of the state's current values (a `Var::set` writes in place, so a plain clone would follow
/// later updates).
fn snapshot(state: &[(String, Var)]) -> candle_core::Result<Vec<Tensor>> {
    state
        .iter()
        .map(|(_, v)| Ok(v.as_tensor().copy()?.detach()))
        .collect()
}

fn set_state(state: &[(String, Var)], values: &[Tensor]) -> candle_core::Result<()> {
    if state.len() != values.len() {
        candle_core::bail!(
            "{} state values for {} variables",
            values.len(),
            state.len()
        );
    }
    for ((_, var), value) in state.iter().zip(values) {
        var.set(value)?;
    }
    Ok(())
}

/// Checks a loaded file against the state (same names, shapes and dtypes) and orders it like the state.
fn match_state(
    state: &[(String, Var)],
    mut tensors: HashMap<String, Tensor>,
) -> Result<Vec<Tensor>, String> {
    let expected: BTreeSet<&str> = state.iter().map(|(n, _)| n.as_str()).collect();
    let given: BTreeSet<&str> = tensors.keys().map(String::as_str).collect();
    if expected != given {
        return Err("the tensor names do not match the model".into());
    }
    let mut out = Vec::with_capacity(state.len());
    for (name, var) in state {
        let t = tensors
            .remove(name)
            .ok_or_else(|| format!("{name} is missing"))?;
        if t.dims() != var.dims() || t.dtype() != var.dtype() {
            return Err(format!(
                "{name} is {:?} {:?}, the model's is {:?} {:?}",
                t.dtype(),
                t.dims(),
                var.dtype(),
                var.dims()
            ));
        }
        out.push(t);
    }
    Ok(out)
}

/// Little-endian bytes of a CPU tensor, for hashing.
fn tensor_bytes(t: &Tensor) -> candle_core::Result<Vec<u8>> {
    let t = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => t
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::F64 => t
            .to_vec1::<f64>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::U32 => t
            .to_vec1::<u32>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::I64 => t
            .to_vec1::<i64>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::U8 => t.to_vec1::<u8>()?,
        dt => candle_core::bail!("cannot hash a {dt:?} tensor"),
    })
}

fn hash_f32s(h: &mut blake3::Hasher, xs: &[f32]) {
    let mut buf = Vec::with_capacity(4 * 4096);
    for chunk in xs.chunks(4096) {
        buf.clear();
        buf.extend(chunk.iter().flat_map(|x| x.to_le_bytes()));
        h.update(&buf);
    }
}

fn hash_u32s(h: &mut blake3::Hasher, xs: &[u32]) {
    let bytes: Vec<u8> = xs.iter().flat_map(|x| x.to_le_bytes()).collect();
    h.update(&bytes);
}

/// Identifies everything a checkpoint's continuation depends on: the settings, both data sets, the
/// random streams (through a draw from a dedicated one) and the model's layout and initial values.
fn fingerprint(
    settings: &FitSettings,
    train: &SegmentSet<'_>,
    val: &SegmentSet<'_>,
    rng_for: &dyn Fn(&str) -> ChaCha20Rng,
    state: &[(String, Var)],
) -> Result<String, FitError> {
    let mut h = blake3::Hasher::new();
    h.update(b"genrelab fit checkpoint v1\n");
    let settings_json =
        serde_json::to_vec(settings).map_err(|e| FitError::Invalid(e.to_string()))?;
    h.update(&(settings_json.len() as u64).to_le_bytes());
    h.update(&settings_json);
    for set in [train, val] {
        for n in [set.n_mels, set.frames, set.len()] {
            h.update(&(n as u64).to_le_bytes());
        }
        hash_f32s(&mut h, set.values);
        hash_u32s(&mut h, set.labels);
        hash_u32s(&mut h, set.tracks);
    }
    h.update(&rng_for("checkpoint/fingerprint").next_u64().to_le_bytes());
    for (name, var) in state {
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(format!("{:?}{:?}", var.dtype(), var.dims()).as_bytes());
        h.update(&tensor_bytes(var.as_tensor())?);
    }
    Ok(h.finalize().to_hex().to_string())
}

struct RunState {
    epochs_done: usize,
    early: EarlyStopping,
    plateau: ReduceLrOnPlateau,
    history: Vec<EpochRecord>,
    /// The best epoch's state, in the order of the sorted state names.
    best: Option<Vec<Tensor>>,
}

const CHECKPOINT_FORMAT: u32 = 1;
const CHECKPOINT_JSON: &str = "checkpoint.json";
const ROLES: [&str; 3] = ["model", "best", "optimizer"];

/// The checkpoint's index. It is written last and names the tensor files of its epoch with their hashes,
/// so a crash between files leaves the previous, complete checkpoint in force.
#[derive(Serialize, Deserialize)]
struct CheckpointMeta {
    format: u32,
    fingerprint: String,
    epoch: usize,
    early_stopping: EarlyStopping,
    plateau: ReduceLrOnPlateau,
    history: Vec<EpochRecord>,
    files: Vec<CheckpointFile>,
}

#[derive(Serialize, Deserialize)]
struct CheckpointFile {
    role: String,
    file: String,
    blake3: String,
}

struct Saved {
    meta: CheckpointMeta,
    model: Vec<Tensor>,
    best: Vec<Tensor>,
    optimizer: HashMap<String, Tensor>,
}

enum Found {
    Nothing,
    Unusable(String),
    Usable(Box<Saved>),
}

struct Checkpoint {
    dir: PathBuf,
    fingerprint: String,
}

impl Checkpoint {
    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> FitError {
        let path = path.to_path_buf();
        move |source| FitError::Checkpoint { path, source }
    }

    fn read(&self, state: &[(String, Var)], settings: &FitSettings) -> Result<Found, FitError> {
        let index = self.dir.join(CHECKPOINT_JSON);
        let text = match fs::read(&index) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Nothing),
            Err(e) => return Err(self.io(&index)(e)),
        };
        Ok(match self.parse(&text, state, settings) {
            Ok(saved) => Found::Usable(Box::new(saved)),
            Err(reason) => Found::Unusable(reason),
        })
    }

    fn parse(
        &self,
        text: &[u8],
        state: &[(String, Var)],
        settings: &FitSettings,
    ) -> Result<Saved, String> {
        let meta: CheckpointMeta =
            serde_json::from_slice(text).map_err(|e| format!("unreadable index: {e}"))?;
        if meta.format != CHECKPOINT_FORMAT {
            return Err(format!("format {} is not {CHECKPOINT_FORMAT}", meta.format));
        }
        if meta.fingerprint != self.fingerprint {
            return Err("it was made from other data, settings, seed or initial model".into());
        }
        if meta.epoch == 0 || meta.epoch > settings.max_epochs || meta.history.len() != meta.epoch {
            return Err(format!("epoch {} does not fit its history", meta.epoch));
        }
        let mut loaded = HashMap::new();
        for role in ROLES {
            let entry = meta
                .files
                .iter()
                .find(|f| f.role == role)
                .ok_or_else(|| format!("no {role} file listed"))?;
            if entry.file.contains(['/', '\\']) || entry.file.starts_with('.') {
                return Err(format!(
                    "{role} file name {:?} is not a plain name",
                    entry.file
                ));
            }
            let bytes =
                fs::read(self.dir.join(&entry.file)).map_err(|e| format!("{}: {e}", entry.file))?;
            if blake3::hash(&bytes).to_hex().as_str() != entry.blake3 {
                return Err(format!("{} does not match its recorded hash", entry.file));
            }
            let tensors = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu)
                .map_err(|e| format!("{}: {e}", entry.file))?;
            loaded.insert(role, tensors);
        }
        let mut take = |role| loaded.remove(role).unwrap_or_default();
        let model = match_state(state, take("model")).map_err(|e| format!("model state: {e}"))?;
        let best = match_state(state, take("best")).map_err(|e| format!("best state: {e}"))?;
        let optimizer = take("optimizer");
        Ok(Saved {
            meta,
            model,
            best,
            optimizer,
        })
    }

    fn write(&self, state: &[(String, Var)], run: &RunState, adam: &Adam) -> Result<(), FitError> {
        fs::create_dir_all(&self.dir).map_err(self.io(&self.dir))?;
        let Some(best) = &run.best else {
            return Err(FitError::Invalid("no best state to checkpoint".into()));
        };
        let names = || state.iter().map(|(n, _)| n.clone());
        let current: Vec<(String, Tensor)> = state
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect();
        let parts: [(&str, Vec<(String, Tensor)>); 3] = [
            ("model", current),
            ("best", names().zip(best.iter().cloned()).collect()),
            ("optimizer", adam.state_tensors()?),
        ];
        let mut files = Vec::with_capacity(3);
        for (role, tensors) in parts {
            let file = format!("epoch-{:04}.{role}.safetensors", run.epochs_done);
            let path = self.dir.join(&file);
            write_tensors(&path, tensors)?;
            let bytes = fs::read(&path).map_err(self.io(&path))?;
            files.push(CheckpointFile {
                role: role.to_string(),
                file,
                blake3: blake3::hash(&bytes).to_hex().to_string(),
            });
        }
        let meta = CheckpointMeta {
            format: CHECKPOINT_FORMAT,
            fingerprint: self.fingerprint.clone(),
            epoch: run.epochs_done,
            early_stopping: run.early.clone(),
            plateau: run.plateau.clone(),
            history: run.history.clone(),
            files,
        };
        let json =
            serde_json::to_vec_pretty(&meta).map_err(|e| FitError::Invalid(e.to_string()))?;
        let index = self.dir.join(CHECKPOINT_JSON);
        write_atomic(&index, |tmp| fs::write(tmp, &json)).map_err(self.io(&index))?;
        self.remove_stale(
            &meta
                .files
                .iter()
                .map(|f| f.file.as_str())
                .collect::<Vec<_>>(),
        )
    }

    /// Drops tensor files of earlier epochs, once the index no longer names them.
    fn remove_stale(&self, keep: &[&str]) -> Result<(), FitError> {
        let entries = fs::read_dir(&self.dir).map_err(self.io(&self.dir))?;
        for entry in entries {
            let entry = entry.map_err(self.io(&self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = name.starts_with("epoch-") && name.ends_with(".safetensors");
            if ours && !keep.contains(&name.as_str()) {
                fs::remove_file(entry.path()).map_err(self.io(&entry.path()))?;
            }
        }
        Ok(())
    }
}

fn write_tensors(path: &Path, tensors: Vec<(String, Tensor)>) -> candle_core::Result<()> {
    let n = tensors.len();
    let map: HashMap<String, Tensor> = tensors.into_iter().collect();
    if map.len() != n {
        candle_core::bail!("tensor names repeat, cannot write {}", path.display());
    }
    let mut failure = None;
    write_atomic(path, |tmp| {
        candle_core::safetensors::save(&map, tmp).map_err(|e| {
            failure = Some(e);
            std::io::Error::other("safetensors write failed")
        })
    })
    .map_err(|e| failure.take().unwrap_or_else(|| candle_core::Error::Io(e)))
}

/// Writes through a temporary file in the same directory, flushes it to disk, renames it over `path`
/// and flushes the directory, so readers see the old file or the new one, never a torn one.
fn write_atomic(
    path: &Path,
    write: impl FnOnce(&Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} names no file", path.display())))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let result = write(&tmp).and_then(|()| {
        let mut f = fs::OpenOptions::new().append(true).open(&tmp)?;
        f.flush()?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
#[path = "fit_tests.rs"]
mod tests;
