//! The contract between the engine and the science: what a stage kind declares, and what it is given to run.
//!
//! A stage kind is registered by name. It declares the artifacts it needs (by artifact name, found among the
//! outputs of the upstream stages listed under `inputs:` in `pipeline.yaml`), the artifacts it produces, its
//! typed params, and the `stages/` folders its code lives in (their build-time digest is its code fingerprint).
//!
//! A stage never learns where the store is: it gets read-only paths to its inputs, a scratch directory for its
//! outputs, a thread budget, and RNGs seeded from what it computes on. It returns lineage records (which tracks,
//! segments, splits it consumed and produced) and a few summary lines; the engine hashes and publishes the rest.
//!
//! Invariants every stage keeps:
//! - Same params and same input bytes give the same output bytes, whatever `threads` is.
//! - Only declared outputs are written, each as one file at `ctx.output_path(name)`.
//! - Randomness comes from `ctx.rng(stream)` only.

mod ancestry;
mod lineage;
mod split;

pub use ancestry::{Ancestor, AncestorInput, Ancestry, ArtifactSource, HandedSplit};
pub use lineage::{ids_digest, Lineage, PartRole, Record};
pub use split::{split_of, Split, UnknownSplit, SPLIT_SEPARATOR};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The pseudo-stage that stands for the raw dataset folder; stages list it under `inputs:` like any stage.
pub const DATASET: &str = "dataset";

/// One artifact a stage kind needs from its inputs.
#[derive(Debug, Clone, Copy)]
pub struct Need {
    /// Artifact name, e.g. `tracks` or `features`.
    pub artifact: &'static str,
    /// `true` when several inputs may each provide one (e.g. the tournament takes one `model` per trainer).
    pub many: bool,
    /// `true` when no input providing it is fine too (the report shows transfer results if there are any).
    pub optional: bool,
}

impl Need {
    pub const fn one(artifact: &'static str) -> Self {
        Need {
            artifact,
            many: false,
            optional: false,
        }
    }
    pub const fn many(artifact: &'static str) -> Self {
        Need {
            artifact,
            many: true,
            optional: false,
        }
    }
    /// Any number of inputs, none included, may each provide one.
    pub const fn any(artifact: &'static str) -> Self {
        Need {
            artifact,
            many: true,
            optional: true,
        }
    }
}

/// An output declared with a trailing `/` (`model/`) is a folder: the stage fills it with files, and the engine
/// stores it as a tree of (relative path, file digest) whose own digest is the output's.
pub fn output_name(declared: &'static str) -> &'static str {
    declared.strip_suffix('/').unwrap_or(declared)
}

/// Whether a declared output is a folder (see [`output_name`]).
pub fn is_folder_output(declared: &str) -> bool {
    declared.ends_with('/')
}

/// Failure inside a stage. Each variant names what a user needs to find the cause.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("input artifact `{artifact}`: {reason}")]
    BadInput { artifact: String, reason: String },
    #[error("{0}")]
    Invalid(String),
    /// The run was asked to stop (Ctrl-C) and the stage stopped at a safe point; its checkpoint is kept.
    #[error("cancelled")]
    Cancelled,
}

impl StageError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StageError::Io {
            path: path.into(),
            source,
        }
    }
    pub fn bad_file(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        StageError::BadFile {
            path: path.into(),
            reason: reason.into(),
        }
    }
    pub fn bad_input(artifact: impl Into<String>, reason: impl Into<String>) -> Self {
        StageError::BadInput {
            artifact: artifact.into(),
            reason: reason.into(),
        }
    }
}

/// Params that do not deserialize (unknown key, wrong type); the engine adds the file, line and column.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ParamError {
    /// The offending key, when serde names one (used to find its line in pipeline.yaml).
    pub key: Option<String>,
    pub message: String,
}

/// One problem [`StageParams::validate`] found, at the param it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamProblem {
    /// Dotted param path (`n_mels`, `lists.train`); empty for a relation between several params that no
    /// single one is to blame for (the message names them all).
    pub key: String,
    pub message: String,
}

impl ParamProblem {
    pub fn at(key: impl Into<String>, message: impl Into<String>) -> Self {
        ParamProblem {
            key: key.into(),
            message: message.into(),
        }
    }

    /// A problem of the params as a whole.
    pub fn whole(message: impl Into<String>) -> Self {
        Self::at("", message)
    }

    /// `key`'s `value` when it lies outside `limit`, naming the limit (and the unit, if any, e.g. " Hz").
    pub fn unless_within<T>(
        key: &str,
        value: T,
        limit: std::ops::RangeInclusive<T>,
        unit: &str,
    ) -> Option<Self>
    where
        T: PartialOrd + std::fmt::Display,
    {
        (!limit.contains(&value)).then(|| {
            Self::at(
                key,
                format!(
                    "{value} is outside the limit {}..={}{unit}",
                    limit.start(),
                    limit.end()
                ),
            )
        })
    }
}

impl std::fmt::Display for ParamProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// A stage kind's typed params. `validate` is what lets `dag`, `status` and `run` reject an unusable value
/// before any stage runs: a bad `hop_length` would otherwise surface only after every upstream stage had
/// spent its time.
pub trait StageParams: DeserializeOwned + Serialize + Send + Sync + 'static {
    /// Every problem the params alone can show: ranges, and relations between params. Facts that depend on
    /// upstream data (the sample rate ingest decoded to) are left to the run. Empty when the params are
    /// usable.
    fn validate(&self) -> Vec<ParamProblem> {
        Vec::new()
    }

    /// [`Self::validate`] as a stage error, for stage code that can also be reached without the engine's
    /// planning (unit tests, library callers) and must not compute from an unusable value.
    fn check(&self) -> Result<(), StageError> {
        let problems = self.validate();
        if problems.is_empty() {
            return Ok(());
        }
        let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
        Err(StageError::Invalid(format!("params: {}", all.join("; "))))
    }

    /// Files these params name that the stage reads (split's `lists:`); see [`ParamFile`].
    fn files(&self) -> Vec<ParamFile> {
        Vec::new()
    }
}

/// What a finished stage hands back besides its output files.
#[derive(Debug, Default)]
pub struct StageReport {
    /// Record-level lineage (identities consumed and produced; see [`Lineage`]). Must be canonical: maps are
    /// BTreeMaps, lists are in a defined order. Stored in the artifact manifest, hashed with it.
    pub lineage: Lineage,
    /// A few human lines (`run` and `status` print them): quarantine, split sizes, accuracy. Hashed into the
    /// manifest like the lineage, so a function of the inputs only: how a run went (resumed, how fast) is
    /// told through [`StageContext::report_progress`] instead.
    pub summary: Vec<String>,
}

/// One file among the dataset's raw inputs, hashed by content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFile {
    /// Path relative to the dataset root, `/`-separated.
    pub rel_path: String,
    pub size: u64,
    /// blake3 of the file bytes, lowercase hex.
    pub digest: String,
}

/// Why an entry under the dataset root was not hashed as a file. Its `Display` text is part of the dataset
/// digest, so it names only what the entry is (never a size or time that could change on its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnlistedReason {
    /// A file whose name starts with `.` (never followed, never read).
    HiddenFile,
    /// A folder whose name starts with `.` (not descended into).
    HiddenFolder,
    /// A symlink whose target does not exist.
    Dangling { target: String },
    /// A symlink leading back to a folder that contains it (listed under `first`).
    Loop { first: String },
    /// A symlink (or folder) leading to a folder already listed under `first`, elsewhere: listed once.
    Repeat { first: String },
    /// A symlink whose target lies outside the dataset root, and the config does not allow following it.
    OutsideRoot { target: String },
    /// A symlink to another symlink: links are followed at most once.
    LinkToLink { target: String },
    /// Neither file, folder nor symlink: FIFO, socket, device. Never opened (a FIFO would block).
    Special { kind: &'static str },
    /// Listing or reading it failed; the OS error.
    Unreadable { error: String },
}

impl std::fmt::Display for UnlistedReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnlistedReason::HiddenFile => write!(f, "hidden file"),
            UnlistedReason::HiddenFolder => write!(f, "hidden folder (not read)"),
            UnlistedReason::Dangling { target } => write!(f, "dangling symlink to {target}"),
            UnlistedReason::Loop { first } => {
                let first = if first.is_empty() { "." } else { first };
                write!(f, "symlink loop: reaches folder `{first}` again")
            }
            UnlistedReason::Repeat { first } => write!(
                f,
                "second path to folder `{first}`, already listed there"
            ),
            UnlistedReason::OutsideRoot { target } => write!(
                f,
                "symlink to {target}, outside the dataset root (set dataset.follow_external_symlinks to follow it)"
            ),
            UnlistedReason::LinkToLink { target } => write!(
                f,
                "symlink to a symlink ({target}); links are followed at most once"
            ),
            UnlistedReason::Special { kind } => write!(f, "special file ({kind}), not read"),
            UnlistedReason::Unreadable { error } => write!(f, "unreadable: {error}"),
        }
    }
}

/// An entry under the dataset root that is not among its files, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnlistedEntry {
    /// Path relative to the dataset root, `/`-separated.
    pub rel_path: String,
    pub reason: UnlistedReason,
}

/// The raw dataset folder as the engine saw and hashed it.
#[derive(Debug, Clone)]
pub struct DatasetView {
    pub root: PathBuf,
    /// Sorted by `rel_path`.
    pub files: Vec<RawFile>,
    /// Every other entry found under the root, sorted by `rel_path`: nothing is left out silently.
    pub unlisted: Vec<UnlistedEntry>,
    pub digest: String,
}

/// One input artifact handed to a stage.
#[derive(Debug, Clone)]
pub struct InputArtifact {
    /// The upstream stage that produced it.
    pub stage: String,
    pub path: PathBuf,
    pub digest: String,
}

/// Inputs for running a stage outside the engine (its unit tests): one file per needed artifact name.
pub fn local_inputs<'a>(
    files: impl IntoIterator<Item = (&'a str, PathBuf)>,
) -> BTreeMap<String, Vec<InputArtifact>> {
    files
        .into_iter()
        .map(|(artifact, path)| {
            let input = InputArtifact {
                stage: "local".into(),
                path,
                digest: String::new(),
            };
            (artifact.to_string(), vec![input])
        })
        .collect()
}

/// A file a stage reads because one of its params names it (split's `lists:`). The engine resolves it against
/// the dataset root, refuses it outside the project and dataset folders, hashes its bytes into the stage's
/// key, and hands the stage a stored copy of exactly the bytes it hashed ([`StageContext::param_file`]), so
/// an edit to the file re-runs the stage and the stage can never read other bytes than its key covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamFile {
    /// Where the path sits in the params, dotted: `lists.train`.
    pub param: String,
    /// The path as written in pipeline.yaml.
    pub path: String,
}

/// Where a stage computes. Chosen by the run settings (`exec.device`), never part of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(into = "String")]
pub enum Device {
    Cpu,
    Cuda(u32),
}

impl From<Device> for String {
    fn from(device: Device) -> String {
        match device {
            Device::Cpu => "cpu".into(),
            Device::Cuda(n) => format!("cuda:{n}"),
        }
    }
}

/// How a stage is run (threads, device, a memory hint): outside its key, recorded in its run stats.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExecSettings {
    pub threads: usize,
    pub device: Device,
    pub memory_bytes: Option<u64>,
}

impl Default for ExecSettings {
    fn default() -> Self {
        ExecSettings {
            threads: 1,
            device: Device::Cpu,
            memory_bytes: None,
        }
    }
}

/// What a stage kind promises about its output bytes, and so how a re-run is compared with a stored result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Determinism {
    /// Same key, same bytes, on any thread count: a re-run that differs is a bug (`verify --rerun` fails).
    Exact,
    /// Same key, equal within the kind's tolerance (a GPU's reduction order): a re-run that differs is
    /// reported, not called corrupt or nondeterministic.
    Tolerance,
}

/// One step of a long stage, as numbers `run` can draw (epoch, loss, accuracy, samples/s, ...).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProgressEvent {
    /// What is counted: `epoch`, `step`, `fold`.
    pub unit: &'static str,
    pub done: u64,
    pub total: Option<u64>,
    /// Named measurements at this step, printed in name order.
    pub values: BTreeMap<&'static str, f64>,
}

impl std::fmt::Display for ProgressEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.unit, self.done)?;
        if let Some(total) = self.total {
            write!(f, "/{total}")?;
        }
        for (name, value) in &self.values {
            write!(f, " {name}={value:.4}")?;
        }
        Ok(())
    }
}

/// Where a stage's progress events go: the engine draws them (a terminal) or prints one line each.
pub type ProgressSink = std::sync::Arc<dyn Fn(&str, &ProgressEvent) + Send + Sync>;

/// Progress reporting for long loops; hidden when stderr is not a terminal.
pub type Progress = indicatif::ProgressBar;

/// Everything a stage is given to run.
pub struct StageContext {
    stage_name: String,
    seed_material: [u8; 32],
    threads: usize,
    inputs: BTreeMap<String, Vec<InputArtifact>>,
    dataset: Option<DatasetView>,
    named_datasets: BTreeMap<String, DatasetView>,
    out_dir: PathBuf,
    outputs: Vec<&'static str>,
    files: BTreeMap<String, PathBuf>,
    exec: ExecSettings,
    checkpoint: Option<PathBuf>,
    cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
    events: Option<ProgressSink>,
    progress: indicatif::MultiProgress,
    ancestry: Option<Ancestry>,
}

impl StageContext {
    /// Built by the engine (and by stage unit tests, which pass their own temp dirs and files).
    pub fn new(
        stage_name: impl Into<String>,
        seed_material: [u8; 32],
        threads: usize,
        inputs: BTreeMap<String, Vec<InputArtifact>>,
        dataset: Option<DatasetView>,
        out_dir: PathBuf,
        outputs: Vec<&'static str>,
    ) -> Self {
        StageContext {
            stage_name: stage_name.into(),
            seed_material,
            threads: threads.max(1),
            inputs,
            dataset,
            named_datasets: BTreeMap::new(),
            out_dir,
            outputs,
            files: BTreeMap::new(),
            exec: ExecSettings {
                threads: threads.max(1),
                ..ExecSettings::default()
            },
            checkpoint: None,
            cancel: Default::default(),
            events: None,
            progress: indicatif::MultiProgress::with_draw_target(
                indicatif::ProgressDrawTarget::hidden(),
            ),
            ancestry: None,
        }
    }

    /// Every stage upstream of this one, for a kind that [`StageKind::wants_ancestry`].
    pub fn with_ancestry(mut self, ancestry: Ancestry) -> Self {
        self.ancestry = Some(ancestry);
        self
    }

    /// The ancestry the engine built for this stage (only for kinds that ask for it).
    pub fn ancestry(&self) -> Result<&Ancestry, StageError> {
        self.ancestry.as_ref().ok_or_else(|| {
            StageError::Invalid(format!(
                "stage `{}` was given no ancestry (its kind must ask for it)",
                self.stage_name
            ))
        })
    }

    pub fn with_progress(mut self, progress: indicatif::MultiProgress) -> Self {
        self.progress = progress;
        self
    }

    /// The run settings (threads, device, memory hint) this stage runs with; `threads` overrides the one
    /// given to [`StageContext::new`].
    pub fn with_exec(mut self, exec: ExecSettings) -> Self {
        self.threads = exec.threads.max(1);
        self.exec = exec;
        self
    }

    /// A folder that survives a kill, for a long stage to save progress in and resume from.
    pub fn with_checkpoint_dir(mut self, dir: PathBuf) -> Self {
        self.checkpoint = Some(dir);
        self
    }

    /// The flag the engine sets when the run is asked to stop.
    pub fn with_cancel(mut self, flag: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.cancel = flag;
        self
    }

    pub fn with_events(mut self, sink: ProgressSink) -> Self {
        self.events = Some(sink);
        self
    }

    /// This key's checkpoint folder: empty on a first run, holding what the stage saved there when an
    /// earlier run of the same key was killed or cancelled. Whatever is saved must make the resumed run end
    /// with the bytes of an uninterrupted one (save RNG state with the weights, not only the weights).
    pub fn checkpoint_dir(&self) -> Result<&Path, StageError> {
        self.checkpoint
            .as_deref()
            .ok_or_else(|| StageError::Invalid("this stage was given no checkpoint folder".into()))
    }

    /// Whether the run was asked to stop; a long stage checks it at safe points.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `Err(Cancelled)` once the run was asked to stop: `ctx.stop_if_cancelled()?` at a safe point.
    pub fn stop_if_cancelled(&self) -> Result<(), StageError> {
        if self.cancelled() {
            Err(StageError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Report one step of progress (drawn on a terminal, one line each otherwise).
    pub fn report_progress(&self, event: &ProgressEvent) {
        if let Some(sink) = &self.events {
            sink(&self.stage_name, event);
        }
    }

    /// Where to compute and how much memory to plan for; never part of the key.
    pub fn exec(&self) -> &ExecSettings {
        &self.exec
    }

    /// The files this stage's params name ([`ParamFile`]), by dotted param path.
    pub fn with_param_files(mut self, files: BTreeMap<String, PathBuf>) -> Self {
        self.files = files;
        self
    }

    /// The bytes the file named by param `param` had when the engine hashed it into this stage's key.
    pub fn param_file(&self, param: &str) -> Result<&Path, StageError> {
        self.files.get(param).map(PathBuf::as_path).ok_or_else(|| {
            StageError::Invalid(format!(
                "params.{param}: the engine did not provide this file (the stage kind must declare it)"
            ))
        })
    }

    pub fn stage_name(&self) -> &str {
        &self.stage_name
    }

    /// Worker threads this stage may use (rayon work already runs inside a pool of this size).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The path of the single artifact named `artifact` among the inputs.
    pub fn input(&self, artifact: &str) -> Result<&Path, StageError> {
        match self.inputs.get(artifact).map(Vec::as_slice) {
            Some([one]) => Ok(&one.path),
            Some([]) | None if split_of(artifact).is_ok_and(|s| s.is_some()) => {
                Err(StageError::bad_input(
                    artifact,
                    "this stage kind does not declare it among its needs, and a stage is handed only \
                     the splits it declares",
                ))
            }
            Some([]) | None => Err(StageError::bad_input(
                artifact,
                "no input stage provides it",
            )),
            Some(many) => Err(StageError::bad_input(
                artifact,
                format!("{} input stages provide it, expected one", many.len()),
            )),
        }
    }

    /// The single artifact holding `split`'s rows of `base` (`features@train`), declared in the kind's needs.
    pub fn split_input(&self, base: &str, split: Split) -> Result<&Path, StageError> {
        self.input(&split.artifact(base))
    }

    /// Every input artifact named `artifact`, in the order the inputs are listed in pipeline.yaml.
    pub fn inputs(&self, artifact: &str) -> &[InputArtifact] {
        self.inputs.get(artifact).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every dataset the stage lists among its inputs, by the name it is listed under (`dataset` for the
    /// single unnamed one): for kinds that read several (`Need::many(DATASET)`).
    pub fn with_datasets(mut self, datasets: BTreeMap<String, DatasetView>) -> Self {
        if self.dataset.is_none() && datasets.len() == 1 {
            self.dataset = datasets.values().next().cloned();
        }
        self.named_datasets = datasets;
        self
    }

    /// The dataset listed among the inputs as `name` (`dataset:transfer`, or `dataset`).
    pub fn dataset_named(&self, name: &str) -> Result<&DatasetView, StageError> {
        self.named_datasets.get(name).ok_or_else(|| {
            let listed: Vec<&str> = self.named_datasets.keys().map(String::as_str).collect();
            StageError::bad_input(
                name,
                format!(
                    "this stage does not list that dataset among its inputs (it lists: {})",
                    if listed.is_empty() {
                        "none".to_string()
                    } else {
                        listed.join(", ")
                    }
                ),
            )
        })
    }

    /// The names of the datasets this stage lists, sorted.
    pub fn dataset_names(&self) -> Vec<&str> {
        self.named_datasets.keys().map(String::as_str).collect()
    }

    /// The raw dataset, for stages that list one dataset among their inputs.
    pub fn dataset(&self) -> Result<&DatasetView, StageError> {
        self.dataset.as_ref().ok_or_else(|| {
            if self.named_datasets.len() > 1 {
                return StageError::bad_input(
                    DATASET,
                    "this stage lists several datasets: name the one to read with `dataset_named`",
                );
            }
            StageError::bad_input(DATASET, "this stage does not list `dataset` as an input")
        })
    }

    /// Where to write the declared output `artifact`: one file, or for a folder output (declared as
    /// `artifact/`) a folder that already exists and that the stage fills.
    pub fn output_path(&self, artifact: &str) -> Result<PathBuf, StageError> {
        if self.outputs.iter().any(|o| output_name(o) == artifact) {
            Ok(self.out_dir.join(artifact))
        } else {
            Err(StageError::Invalid(format!(
                "stage `{}` wrote undeclared output `{artifact}` (declared: {})",
                self.stage_name,
                self.outputs.join(", ")
            )))
        }
    }

    /// A deterministic RNG for one named purpose. Seeded from the stage's kind, params and input digests
    /// (not its code fingerprint: a comment edit re-runs a stage but must not re-draw its split).
    pub fn rng(&self, stream: &str) -> ChaCha20Rng {
        let mut hasher = blake3::Hasher::new_derive_key("genrelab stage rng v1");
        hasher.update(&self.seed_material);
        hasher.update(stream.as_bytes());
        ChaCha20Rng::from_seed(*hasher.finalize().as_bytes())
    }

    /// A progress bar for `len` units of work, labelled with the stage name.
    pub fn progress(&self, len: u64, what: &str) -> Progress {
        let bar = self.progress.add(indicatif::ProgressBar::new(len));
        let style = indicatif::ProgressStyle::with_template(
            "{prefix:>12} {msg:<10} [{bar:30}] {pos}/{len} {elapsed}/{duration}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style.progress_chars("=> "));
        bar.set_prefix(self.stage_name.clone());
        bar.set_message(what.to_string());
        bar
    }
}

/// A stage kind as the engine sees it. Implemented once, generically, by [`TypedStage`].
pub trait StageKind: Send + Sync {
    fn kind(&self) -> &'static str;
    /// One line for `--help`-style listings.
    fn about(&self) -> &'static str;
    fn needs(&self) -> &'static [Need];
    fn outputs(&self) -> &'static [&'static str];
    /// `stages/` folders whose sources make up this kind's code fingerprint.
    fn code_dirs(&self) -> &'static [&'static str];
    /// How equal a re-run's outputs must be to a stored result's; see [`Determinism`].
    fn determinism(&self) -> Determinism {
        Determinism::Exact
    }
    /// Whether the engine hands the stage its [`Ancestry`] (every upstream run's manifest and lineage). The
    /// stage's key then covers its ancestors' manifests, which its input digests alone do not: a lineage
    /// record can change while every output byte stays the same.
    fn wants_ancestry(&self) -> bool {
        false
    }
    /// Files named by the (canonical) params that the stage reads; see [`ParamFile`].
    fn param_files(&self, _params: &serde_json::Value) -> Vec<ParamFile> {
        Vec::new()
    }
    /// Validate params (YAML) and return their canonical JSON form, defaults filled in.
    fn canonical_params(&self, raw: &serde_yaml::Value) -> Result<serde_json::Value, ParamError>;
    /// Every problem [`StageParams::validate`] finds in canonical params (as returned by
    /// `canonical_params`).
    fn validate_params(&self, params: &serde_json::Value) -> Vec<ParamProblem>;
    /// Run on canonical params (as returned by `canonical_params`).
    fn run(
        &self,
        params: &serde_json::Value,
        ctx: &StageContext,
    ) -> Result<StageReport, StageError>;
}

/// The usual way to define a stage kind: a typed params struct and a function.
pub struct TypedStage<P> {
    pub kind: &'static str,
    pub about: &'static str,
    pub needs: &'static [Need],
    pub outputs: &'static [&'static str],
    pub code_dirs: &'static [&'static str],
    /// Every kind states it: `Exact` unless its results depend on a device's reduction order.
    pub determinism: Determinism,
    pub run: fn(&P, &StageContext) -> Result<StageReport, StageError>,
}

impl<P: StageParams> StageKind for TypedStage<P> {
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn about(&self) -> &'static str {
        self.about
    }
    fn needs(&self) -> &'static [Need] {
        self.needs
    }
    fn outputs(&self) -> &'static [&'static str] {
        self.outputs
    }
    fn code_dirs(&self) -> &'static [&'static str] {
        self.code_dirs
    }
    fn determinism(&self) -> Determinism {
        self.determinism
    }
    fn param_files(&self, params: &serde_json::Value) -> Vec<ParamFile> {
        serde_json::from_value::<P>(params.clone())
            .map(|typed| typed.files())
            .unwrap_or_default()
    }
    fn canonical_params(&self, raw: &serde_yaml::Value) -> Result<serde_json::Value, ParamError> {
        // A missing `params:` means "all defaults"; the params struct must be `#[serde(default)]`.
        let raw = if raw.is_null() {
            serde_yaml::Value::Mapping(Default::default())
        } else {
            raw.clone()
        };
        let typed: P = serde_path_to_error::deserialize(raw.clone()).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            let message = if path == "." || inner.starts_with("unknown field") {
                inner
            } else if is_enum_shape_error(&inner) {
                enum_message::<P>(&raw, &path).unwrap_or_else(|| format!("{path}: {inner}"))
            } else {
                format!("{path}: {inner}")
            };
            ParamError {
                key: offending_key(&message),
                message,
            }
        })?;
        serde_json::to_value(&typed).map_err(|e| ParamError {
            key: None,
            message: e.to_string(),
        })
    }
    fn validate_params(&self, params: &serde_json::Value) -> Vec<ParamProblem> {
        match serde_json::from_value::<P>(params.clone()) {
            Ok(typed) => typed.validate(),
            Err(e) => vec![ParamProblem::whole(e.to_string())],
        }
    }
    fn run(
        &self,
        params: &serde_json::Value,
        ctx: &StageContext,
    ) -> Result<StageReport, StageError> {
        let typed: P = serde_json::from_value(params.clone())
            .map_err(|e| StageError::Invalid(format!("params: {e}")))?;
        (self.run)(&typed, ctx)
    }
}

/// serde names the offending key in backticks ("unknown field `n_mel`", "missing field `x`", or
/// "n_mels: invalid type: ..."); pull it out so the engine can point at its line.
fn offending_key(message: &str) -> Option<String> {
    if let Some(rest) = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("missing field `"))
    {
        return rest.split('`').next().map(str::to_string);
    }
    let (path, _) = message.split_once(": ")?;
    let leaf = path.rsplit('.').next()?;
    let leaf = leaf.split('[').next()?;
    (!leaf.is_empty() && !leaf.contains(' ')).then(|| leaf.to_string())
}

/// serde_yaml's messages for a value of the wrong shape for an enum (a list, a mapping or a `!tag`), which
/// describe the deserializer's internals instead of the param.
fn is_enum_shape_error(message: &str) -> bool {
    message.contains("expected a Value::Tagged enum")
        || message.contains("do not support enum input")
        || message.contains("did not match any variant of untagged enum")
}

/// "mode: expected `cell` or `band`, got a list `[a]`": the valid values are what serde lists when the
/// same param is given a name that no variant has, so probe with one.
fn enum_message<P: DeserializeOwned>(raw: &serde_yaml::Value, path: &str) -> Option<String> {
    const PROBE: &str = "\u{1}";
    let mut probe = raw.clone();
    let mut slot = &mut probe;
    for part in path.split('.') {
        slot = slot.as_mapping_mut()?.get_mut(part)?;
    }
    let given = std::mem::replace(slot, serde_yaml::Value::String(PROBE.into()));
    let err = serde_path_to_error::deserialize::<_, P>(probe).err()?;
    let inner = err.into_inner().to_string();
    let valid = if let Some(rest) = inner.strip_prefix(&format!("unknown variant `{PROBE}`, ")) {
        rest.to_string()
    } else {
        // A hand-written check ("ref must be `max` or a positive number, got `…`"): keep what it asks for.
        let asks = inner.split(", got ").next()?;
        let leaf = path.rsplit('.').next().unwrap_or(path);
        asks.strip_prefix(leaf)
            .unwrap_or(asks)
            .trim_start()
            .to_string()
    };
    Some(format!("{path}: {valid}, got {}", describe(&given)))
}

/// A YAML value as a user would have written it, in flow style, with what kind of value it is.
fn describe(value: &serde_yaml::Value) -> String {
    use serde_yaml::Value;
    fn flow(value: &Value) -> String {
        match value {
            Value::Null => "null".into(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            Value::Sequence(items) => {
                format!(
                    "[{}]",
                    items.iter().map(flow).collect::<Vec<_>>().join(", ")
                )
            }
            Value::Mapping(map) => format!(
                "{{{}}}",
                map.iter()
                    .map(|(k, v)| format!("{}: {}", flow(k), flow(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Value::Tagged(tagged) => format!("{} {}", tagged.tag, flow(&tagged.value)),
        }
    }
    let what = match value {
        Value::Tagged(_) => "a tagged value ",
        Value::Sequence(_) => "a list ",
        Value::Mapping(_) => "a mapping ",
        _ => "",
    };
    format!("{what}`{}`", flow(value))
}

/// Write `value` as canonical JSON (sorted keys, no whitespace, shortest round-trip floats): the byte form of
/// every JSON artifact, so equal content always hashes equal.
pub fn write_canonical_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StageError> {
    let value = serde_json::to_value(value).map_err(|e| StageError::Invalid(e.to_string()))?;
    let bytes = serde_json::to_vec(&value).map_err(|e| StageError::Invalid(e.to_string()))?;
    std::fs::write(path, bytes).map_err(|e| StageError::io(path, e))
}

/// Read a JSON artifact written by [`write_canonical_json`].
pub fn read_json<T: DeserializeOwned>(path: &Path, artifact: &str) -> Result<T, StageError> {
    let bytes = std::fs::read(path).map_err(|e| StageError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| StageError::bad_input(artifact, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offending_key_is_found_in_serde_messages() {
        assert_eq!(
            offending_key("unknown field `n_mel`, expected one of `n_mels`"),
            Some("n_mel".into())
        );
        assert_eq!(
            offending_key("n_mels: invalid type: string \"x\", expected u32"),
            Some("n_mels".into())
        );
        assert_eq!(offending_key("invalid type: sequence"), None);
    }

    #[test]
    fn a_problem_reads_as_its_key_then_what_is_wrong() {
        assert_eq!(
            ParamProblem::unless_within("rate", 5u32, 10..=20, " Hz")
                .map(|p| p.to_string())
                .as_deref(),
            Some("rate: 5 is outside the limit 10..=20 Hz")
        );
        assert_eq!(
            ParamProblem::unless_within("rate", 10u32, 10..=20, ""),
            None
        );
        assert_eq!(
            ParamProblem::whole("a + b must be 1").to_string(),
            "a + b must be 1"
        );
        let err = ParamProblem::at("n", "bad");
        assert_eq!(err.to_string(), "n: bad");
    }

    #[test]
    fn rng_streams_are_distinct_and_repeatable() {
        use rand::RngCore;
        let ctx =
            |seed| StageContext::new("s", seed, 1, BTreeMap::new(), None, PathBuf::new(), vec![]);
        let a = ctx([1; 32]).rng("split").next_u64();
        assert_eq!(a, ctx([1; 32]).rng("split").next_u64());
        assert_ne!(a, ctx([1; 32]).rng("other").next_u64());
        assert_ne!(a, ctx([2; 32]).rng("split").next_u64());
    }
}
