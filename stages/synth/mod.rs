//! The embedded default corpus: a deterministic generator of a GTZAN-shaped dataset, so the pipeline runs
//! end to end without downloading anything.
//!
//! Layout and format follow the Kaggle copy of GTZAN: `<root>/genres_original/<genre>/<genre>.000NN.wav`,
//! ten genres, 22050 Hz mono 16-bit PCM, about 30 s per track with GTZAN's length spread (mostly 661794
//! samples, many 661504, a few shorter than 661500 that give only 9 three-second segments, a few longer up
//! to 675808), and a few exact duplicate tracks (sometimes across genres), as in GTZAN.
//!
//! A second corpus, [`Corpus::Transfer`], has five other classes ([`TRANSFER_CLASSES`]) in the same layout,
//! format and lengths, for evaluating transfer to a dataset the model was not trained on.
//!
//! Invariants:
//! - Output bytes depend only on [`SynthParams`] and [`GENERATOR_VERSION`]: each track has its own ChaCha20
//!   stream derived from (seed, genre, index) (and the corpus, for the transfer one, so its streams never
//!   coincide with GTZAN's), and tracks render in parallel into their own files, so the thread count never
//!   changes a byte.
//! - [`ensure_corpus`] never deletes or overwrites a folder it did not create, and a killed run never leaves
//!   a folder that looks complete: the corpus is built under a lock in a temp folder of the generating
//!   process, checked, fsynced, listed (name, size, blake3) in the marker written last, and renamed into
//!   place. Re-use checks the files' names and sizes against the marker.
//!
//! How hard the task is, measured with `bench/synth-tuning/tune.py` (30 tracks per genre, 128x128 log-mel
//! of 65488-sample segments, ref=max, top_db 80, per-cell standardised; mean +- std over five stratified
//! 60/20/20 track splits; see [`music`] for the musical design):
//!
//! | corpus seed | mean-spectrum nearest centroid (val / test) | temporal proxy, segments | temporal proxy, tracks |
//! |---|---|---|---|
//! | 42 (default) | 0.42 / 0.44 | 0.71 / 0.74 | 0.80 / 0.84 |
//! | 7 | 0.55 / 0.55 | 0.78 / 0.78 | 0.85 / 0.85 |
//!
//! The temporal proxy is a logistic regression on per-segment band statistics plus onset-strength
//! autocorrelation and band-envelope modulation spectra. Timbre alone gets about half the tracks right
//! (rock~metal, disco~pop, hiphop~reggae, blues~country collide); rhythm and time structure add about 30
//! points. Generating 300 tracks takes about 15 s on two cores (release build). The transfer corpus's
//! difficulty has not been measured with the harness yet.

mod dsp;
pub mod music;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use genrelab_contract::ParamError;

pub use music::{GENRES, TRANSFER_CLASSES};

/// Bumped whenever the generator's output bytes change, so an old corpus is never mistaken for a new one.
pub const GENERATOR_VERSION: u32 = 1;

/// The marker file that says a folder holds a complete corpus: with which params, and every file's size and
/// blake3 digest (canonical JSON).
pub const MARKER: &str = ".genrelab-synth.json";

/// Sample rate of every track (GTZAN's).
pub const SAMPLE_RATE: u32 = 22050;

/// Largest accepted `tracks_per_genre`: 100 times GTZAN, about 130 GB of audio.
pub const MAX_TRACKS_PER_GENRE: u32 = 10_000;

/// Which set of classes the corpus holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Corpus {
    /// The ten GTZAN genres.
    #[default]
    Gtzan,
    /// Five other styles, for transfer evaluation.
    Transfer,
}

impl Corpus {
    /// The class folders, in generation order.
    pub fn classes(self) -> &'static [&'static str] {
        match self {
            Corpus::Gtzan => &GENRES,
            Corpus::Transfer => &TRANSFER_CLASSES,
        }
    }

    /// The name the params and the marker use.
    pub fn name(self) -> &'static str {
        match self {
            Corpus::Gtzan => "gtzan",
            Corpus::Transfer => "transfer",
        }
    }

    fn is_gtzan(&self) -> bool {
        *self == Corpus::Gtzan
    }
}

/// What the corpus looks like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SynthParams {
    /// Which classes. Left out of the serialised params when GTZAN, so markers (and anything else hashing
    /// the params) written before the transfer corpus existed stay byte-identical and keep matching.
    #[serde(skip_serializing_if = "Corpus::is_gtzan")]
    pub corpus: Corpus,
    /// Tracks per genre (per class). 30 keeps the default pipeline's training within minutes on two cores;
    /// 100 is the size of GTZAN.
    pub tracks_per_genre: u32,
    /// Seed of every random draw.
    pub seed: u64,
    /// How many tracks are exact copies of another track (about one in a hundred at the default size, like
    /// GTZAN's replicas); a third of them copy a track of another genre. Exercises the split's duplicate
    /// grouping.
    pub duplicates: u32,
}

impl Default for SynthParams {
    fn default() -> Self {
        SynthParams {
            corpus: Corpus::Gtzan,
            tracks_per_genre: 30,
            seed: 42,
            duplicates: 3,
        }
    }
}

impl SynthParams {
    /// The class folders of this corpus, in generation order.
    pub fn classes(&self) -> &'static [&'static str] {
        self.corpus.classes()
    }

    /// Typed params from the `dataset.synthetic` section, bounds checked. The error names the offending key
    /// (so the caller can point at its line) and starts with it, except for unknown keys, whose serde message
    /// already names them.
    pub fn from_yaml(raw: &serde_yaml::Value) -> Result<SynthParams, ParamError> {
        let raw = if raw.is_null() {
            serde_yaml::Value::Mapping(Default::default())
        } else {
            raw.clone()
        };
        let params: SynthParams = serde_path_to_error::deserialize(raw).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            if let Some(field) = inner
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split('`').next())
            {
                ParamError {
                    key: Some(field.to_string()),
                    message: inner.clone(),
                }
            } else if path == "." {
                ParamError {
                    key: None,
                    message: inner,
                }
            } else {
                ParamError {
                    key: Some(path.clone()),
                    message: format!("{path}: {inner}"),
                }
            }
        })?;
        params.check()?;
        Ok(params)
    }

    /// The bounds `plan` relies on.
    fn check(&self) -> Result<(), ParamError> {
        let per = self.tracks_per_genre;
        if !(1..=MAX_TRACKS_PER_GENRE).contains(&per) {
            return Err(ParamError {
                key: Some("tracks_per_genre".into()),
                message: format!(
                    "tracks_per_genre: must be from 1 to {MAX_TRACKS_PER_GENRE}, got {per}"
                ),
            });
        }
        let total = per as usize * self.classes().len();
        // Each copy needs a source of its own that is not itself a copy.
        if self.duplicates as usize * 2 > total {
            return Err(ParamError {
                key: Some("duplicates".into()),
                message: format!(
                    "duplicates: must be at most half of the {total} tracks (each copy needs its own \
                     source), got {}",
                    self.duplicates
                ),
            });
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot write WAV: {reason}")]
    Wav { path: PathBuf, reason: String },
    #[error(
        "{root} holds the synthetic {found} corpus, not the {wanted} one; remove it or point dataset.root \
         elsewhere"
    )]
    OtherCorpus {
        root: PathBuf,
        found: &'static str,
        wanted: &'static str,
    },
    #[error(
        "{root} exists but was not generated by genrelab (no {MARKER}); remove it or point dataset.root elsewhere"
    )]
    Foreign { root: PathBuf },
    #[error(
        "{root} holds a synthetic corpus made with other settings ({found}; wanted {wanted}); remove it or \
         point dataset.root elsewhere"
    )]
    Different {
        root: PathBuf,
        found: String,
        wanted: String,
    },
    #[error(
        "{root} no longer matches the file list in its {MARKER} ({}); remove the folder and genrelab will \
         generate it again",
        listing_problems(.missing, .extra, .resized)
    )]
    Altered {
        root: PathBuf,
        missing: Vec<String>,
        extra: Vec<String>,
        /// (path, size in the marker, size on disk)
        resized: Vec<(String, u64, u64)>,
    },
    #[error("{root}: generated corpus failed its own check: {reason}")]
    Unverified { root: PathBuf, reason: String },
    #[error("synth params: {0}")]
    Params(String),
}

impl SynthError {
    fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SynthError::Io {
            path: path.into(),
            source,
        }
    }
}

/// "missing: a, b; extra: c; resized: d (10 → 12 bytes)", each list cut after a few names.
fn listing_problems(
    missing: &[String],
    extra: &[String],
    resized: &[(String, u64, u64)],
) -> String {
    const SHOWN: usize = 5;
    fn names(items: Vec<String>) -> String {
        let more = items.len().saturating_sub(SHOWN);
        let mut text = items.into_iter().take(SHOWN).collect::<Vec<_>>().join(", ");
        if more > 0 {
            text.push_str(&format!(" and {more} more"));
        }
        text
    }
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("missing: {}", names(missing.to_vec())));
    }
    if !extra.is_empty() {
        parts.push(format!("extra: {}", names(extra.to_vec())));
    }
    if !resized.is_empty() {
        let items = resized
            .iter()
            .map(|(path, old, new)| format!("{path} ({old} → {new} bytes)"))
            .collect();
        parts.push(format!("resized: {}", names(items)));
    }
    parts.join("; ")
}

#[derive(Debug, Clone, PartialEq)]
pub struct SynthOutcome {
    /// `false` when the corpus was already there.
    pub generated: bool,
    pub tracks: usize,
}

/// Size and content digest of one corpus file, as the marker records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileEntry {
    size: u64,
    blake3: String,
}

/// The marker's content: what the corpus bytes depend on, and what they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Marker {
    generator_version: u32,
    params: SynthParams,
    /// Relative `/`-separated path -> entry; absent in markers written before file lists were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    files: Option<BTreeMap<String, FileEntry>>,
}

/// Make sure `root` holds exactly the corpus these params describe; see [`ensure_corpus_with`].
pub fn ensure_corpus(params: &SynthParams, root: &Path) -> Result<SynthOutcome, SynthError> {
    ensure_corpus_with(params, root, || {})
}

/// Make sure `root` holds exactly the corpus these params describe.
///
/// An existing `root` is accepted when its marker records these params (and the generator version) and
/// its files still have the names and sizes the marker lists (a stat per file, no hashing); otherwise the
/// error says what differs and never touches the folder. A missing `root` is generated under an OS lock on
/// `.<root name>.genrelab-synth.lock` beside it: a process that finds the lock taken calls `on_wait`, waits,
/// and then finds the finished corpus. The holder removes temp folders of killed generators, renders into a
/// temp folder of its own, checks and fsyncs it, writes the marker, and renames it into place, so `root`
/// only ever appears complete.
pub fn ensure_corpus_with(
    params: &SynthParams,
    root: &Path,
    on_wait: impl FnOnce(),
) -> Result<SynthOutcome, SynthError> {
    let plan = plan(params)?;
    let done = SynthOutcome {
        generated: false,
        tracks: plan.len(),
    };
    if root.exists() && check_existing(params, root)? {
        return Ok(done);
    }
    let (parent, name) = parent_and_name(root)?;
    std::fs::create_dir_all(&parent).map_err(|e| SynthError::io(&parent, e))?;
    let lock_path = parent.join(format!(".{name}.genrelab-synth.lock"));
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| SynthError::io(&lock_path, e))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            on_wait();
            lock.lock().map_err(|e| SynthError::io(&lock_path, e))?;
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(SynthError::io(&lock_path, e)),
    }
    if root.exists() {
        if !check_existing(params, root)? {
            // A corpus from before markers listed files: record what is there, once, under the lock.
            record_listing(params, &plan, root)?;
        }
        return Ok(done);
    }
    // Holding the lock, no generator is running: any temp folder is a killed run's leftover.
    let prefix = format!(".{name}.genrelab-synth-tmp");
    for entry in std::fs::read_dir(&parent)
        .map_err(|e| SynthError::io(&parent, e))?
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let path = entry.path();
            std::fs::remove_dir_all(&path).map_err(|e| SynthError::io(&path, e))?;
        }
    }
    let tmp = parent.join(format!("{prefix}.{}", std::process::id()));
    let built = generate(params, &plan, &tmp)
        .and_then(|()| record_listing(params, &plan, &tmp))
        .and_then(|()| {
            std::fs::rename(&tmp, root).map_err(|e| SynthError::io(root, e))?;
            sync_dir(&parent);
            Ok(())
        });
    if built.is_err() {
        // Best effort: the next lock holder removes it anyway.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    built?;
    drop(lock);
    Ok(SynthOutcome {
        generated: true,
        tracks: plan.len(),
    })
}

fn parent_and_name(root: &Path) -> Result<(PathBuf, String), SynthError> {
    let name = root
        .file_name()
        .ok_or_else(|| SynthError::Params(format!("{}: not a folder name", root.display())))?
        .to_string_lossy()
        .into_owned();
    let parent = match root.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name))
}

fn read_marker(root: &Path) -> Result<(String, Option<Marker>), SynthError> {
    let path = root.join(MARKER);
    if !path.is_file() {
        return Err(SynthError::Foreign {
            root: root.to_path_buf(),
        });
    }
    let text = std::fs::read_to_string(&path).map_err(|e| SynthError::io(&path, e))?;
    let marker = serde_json::from_str(&text).ok();
    Ok((text, marker))
}

/// `Ok(true)`: `root` is this corpus. `Ok(false)`: it is, but its marker predates file lists.
fn check_existing(params: &SynthParams, root: &Path) -> Result<bool, SynthError> {
    let (text, marker) = read_marker(root)?;
    let wanted = serde_json::json!({"generator_version": GENERATOR_VERSION, "params": params});
    if let Some(found) = marker.as_ref().map(|m| m.params.corpus) {
        if found != params.corpus {
            return Err(SynthError::OtherCorpus {
                root: root.to_path_buf(),
                found: found.name(),
                wanted: params.corpus.name(),
            });
        }
    }
    let Some(marker) =
        marker.filter(|m| m.generator_version == GENERATOR_VERSION && &m.params == params)
    else {
        let found: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let found = match found {
            serde_json::Value::Object(mut map) => {
                map.remove("files");
                serde_json::Value::Object(map).to_string()
            }
            _ => text.trim().chars().take(200).collect(),
        };
        return Err(SynthError::Different {
            root: root.to_path_buf(),
            found,
            wanted: wanted.to_string(),
        });
    };
    let Some(files) = marker.files else {
        return Ok(false);
    };
    let on_disk = sizes_on_disk(root)?;
    let missing: Vec<String> = files
        .keys()
        .filter(|f| !on_disk.contains_key(*f))
        .cloned()
        .collect();
    let extra: Vec<String> = on_disk
        .keys()
        .filter(|f| !files.contains_key(*f))
        .cloned()
        .collect();
    let resized: Vec<(String, u64, u64)> = files
        .iter()
        .filter_map(|(f, entry)| {
            let size = *on_disk.get(f)?;
            (size != entry.size).then(|| (f.clone(), entry.size, size))
        })
        .collect();
    if missing.is_empty() && extra.is_empty() && resized.is_empty() {
        Ok(true)
    } else {
        Err(SynthError::Altered {
            root: root.to_path_buf(),
            missing,
            extra,
            resized,
        })
    }
}

/// Every file under `root` by `/`-separated relative path, with its size; hidden names are skipped, as the
/// dataset hash skips them.
fn sizes_on_disk(root: &Path) -> Result<BTreeMap<String, u64>, SynthError> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| SynthError::io(&dir, e))? {
            let entry = entry.map_err(|e| SynthError::io(&dir, e))?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            let meta = std::fs::metadata(&path).map_err(|e| SynthError::io(&path, e))?;
            if meta.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(root).unwrap_or(&path);
                let rel: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.insert(rel.join("/"), meta.len());
            }
        }
    }
    Ok(out)
}

/// Check that `dir` holds exactly the planned files, hash and fsync each, and write the marker listing them
/// (atomically, as the last file).
fn record_listing(params: &SynthParams, plan: &[TrackPlan], dir: &Path) -> Result<(), SynthError> {
    let on_disk = sizes_on_disk(dir)?;
    let planned: std::collections::BTreeSet<String> =
        plan.iter().map(TrackPlan::rel_path).collect();
    let unverified = |reason: String| SynthError::Unverified {
        root: dir.to_path_buf(),
        reason,
    };
    if let Some(missing) = planned.iter().find(|f| !on_disk.contains_key(*f)) {
        return Err(unverified(format!("{missing} is missing")));
    }
    if let Some(extra) = on_disk.keys().find(|f| !planned.contains(*f)) {
        return Err(unverified(format!("{extra} was not planned")));
    }
    let files: Vec<(String, FileEntry)> = planned
        .par_iter()
        .map(|rel| {
            let path = dir.join(rel);
            let file = std::fs::File::open(&path).map_err(|e| SynthError::io(&path, e))?;
            let mut hasher = blake3::Hasher::new();
            hasher
                .update_reader(&file)
                .map_err(|e| SynthError::io(&path, e))?;
            // A WAV header alone is 44 bytes; anything that short lost its samples.
            let size = on_disk.get(rel).copied().unwrap_or_default();
            if size <= 44 {
                return Err(unverified(format!("{rel} holds no samples ({size} bytes)")));
            }
            file.sync_all().map_err(|e| SynthError::io(&path, e))?;
            let blake3 = hasher.finalize().to_hex().to_string();
            Ok((rel.clone(), FileEntry { size, blake3 }))
        })
        .collect::<Result<_, SynthError>>()?;
    for genre in params.classes() {
        sync_dir(&dir.join("genres_original").join(genre));
    }
    sync_dir(&dir.join("genres_original"));
    let marker = Marker {
        generator_version: GENERATOR_VERSION,
        params: params.clone(),
        files: Some(files.into_iter().collect()),
    };
    let value = serde_json::to_value(&marker).map_err(|e| SynthError::Params(e.to_string()))?;
    let bytes = serde_json::to_vec(&value).map_err(|e| SynthError::Params(e.to_string()))?;
    let path = dir.join(MARKER);
    let tmp = dir.join(format!("{MARKER}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut file, &bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| SynthError::io(&path, e))?;
    sync_dir(dir);
    Ok(())
}

fn sync_dir(dir: &Path) {
    // Best effort: makes renames durable on power loss; a failure here cannot make a corpus look valid.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// One file of the corpus.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackPlan {
    pub genre: &'static str,
    pub index: u32,
    /// The track whose audio this one copies (genre, index), for duplicates.
    pub copy_of: Option<(&'static str, u32)>,
}

impl TrackPlan {
    /// Path relative to the corpus root.
    pub fn rel_path(&self) -> String {
        format!(
            "genres_original/{g}/{g}.{i:05}.wav",
            g = self.genre,
            i = self.index
        )
    }
}

fn stream(corpus: Corpus, seed: u64, purpose: &str, genre: &str, index: u32) -> ChaCha20Rng {
    let mut h = blake3::Hasher::new_derive_key("genrelab synth v1");
    // GTZAN's derivation predates the transfer corpus and must not change. The transfer corpus's input
    // starts with a tag no GTZAN input can start with: theirs are the seed's 8 bytes then the purpose,
    // whose first byte is a letter, where the tag's ninth byte is 0.
    if corpus == Corpus::Transfer {
        h.update(b"transfer\0");
    }
    h.update(&seed.to_le_bytes());
    h.update(purpose.as_bytes());
    h.update(&[0]);
    h.update(genre.as_bytes());
    h.update(&[0]);
    h.update(&index.to_le_bytes());
    ChaCha20Rng::from_seed(*h.finalize().as_bytes())
}

/// Every file of the corpus, in genre then index order, with the duplicates chosen.
pub fn plan(params: &SynthParams) -> Result<Vec<TrackPlan>, SynthError> {
    params.check().map_err(|e| SynthError::Params(e.message))?;
    let per = params.tracks_per_genre;
    let classes = params.classes();
    let total = per as usize * classes.len();
    let mut tracks: Vec<TrackPlan> = classes
        .iter()
        .flat_map(|g| {
            (0..per).map(move |index| TrackPlan {
                genre: g,
                index,
                copy_of: None,
            })
        })
        .collect();
    let mut rng = stream(params.corpus, params.seed, "duplicates", "", 0);
    let mut used = vec![false; total];
    let mut made = 0;
    while made < params.duplicates {
        let copy = rng.random_range(0..total);
        let source = if rng.random_bool(1.0 / 3.0) {
            rng.random_range(0..total)
        } else {
            let g = copy / per as usize;
            g * per as usize + rng.random_range(0..per as usize)
        };
        if copy == source || used[copy] || used[source] {
            continue;
        }
        used[copy] = true;
        used[source] = true;
        tracks[copy].copy_of = Some((tracks[source].genre, tracks[source].index));
        made += 1;
    }
    Ok(tracks)
}

/// GTZAN's length spread (audio-and-gtzan.md §2.2): 64% 661794 samples, 30% 661504, the rest shorter than
/// 661500 (9 segments of 3 s) or a little longer.
fn track_len(rng: &mut ChaCha20Rng, genre: &str, index: u32) -> usize {
    // As in GTZAN, some country and hip-hop tracks are short; keep one of each so small corpora have some
    // (dub and polka play that part in the transfer corpus).
    if index == 1 && matches!(genre, "country" | "hiphop" | "dub" | "polka") {
        return [660000, 661100, 661344, 661408][rng.random_range(0..4)];
    }
    let u = rng.random::<f64>();
    if u < 0.64 {
        661794
    } else if u < 0.94 {
        661504
    } else if u < 0.97 {
        [660000, 661100, 661344, 661408][rng.random_range(0..4)]
    } else {
        [662112, 663300, 666624, 671000, 675808][rng.random_range(0..5)]
    }
}

/// Renders one planned track's samples (a duplicate renders its source, so it is byte-identical).
pub fn render_track(corpus: Corpus, seed: u64, track: &TrackPlan) -> Vec<f32> {
    let (genre, index) = track.copy_of.unwrap_or((track.genre, track.index));
    let mut rng = stream(corpus, seed, "track", genre, index);
    let len = track_len(&mut rng, genre, index);
    music::render(genre, len, &mut rng)
}

fn write_wav(path: &Path, samples: &[f32]) -> Result<(), SynthError> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let wav_err = |e: hound::Error| SynthError::Wav {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut writer = hound::WavWriter::create(path, spec).map_err(wav_err)?;
    {
        let mut w = writer.get_i16_writer(samples.len() as u32);
        for &s in samples {
            w.write_sample((s * 32767.0).round().clamp(-32768.0, 32767.0) as i16);
        }
        w.flush().map_err(wav_err)?;
    }
    writer.finalize().map_err(wav_err)
}

fn generate(params: &SynthParams, plan: &[TrackPlan], dir: &Path) -> Result<(), SynthError> {
    for genre in params.classes() {
        let d = dir.join("genres_original").join(genre);
        std::fs::create_dir_all(&d).map_err(|e| SynthError::io(&d, e))?;
    }
    let bar = indicatif::ProgressBar::new(plan.len() as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{prefix:>12} [{bar:30}] {pos}/{len} tracks {elapsed}/{duration}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix("synth");
    let results: Vec<Result<(), SynthError>> = plan
        .par_iter()
        .map(|track| {
            let samples = render_track(params.corpus, params.seed, track);
            let out = write_wav(&dir.join(track.rel_path()), &samples);
            bar.inc(1);
            out
        })
        .collect();
    bar.finish_and_clear();
    results.into_iter().collect()
}
