//! Stage `ingest`: the raw dataset folder becomes a track table (one decodable track per audio file, with
//! its class, label and audio identity) and a quarantine list (every other file, with the reason).
//!
//! Invariants:
//! - Every entry of the dataset is either a track or quarantined; nothing is dropped silently. Files with a
//!   non-audio extension (the Kaggle copy's PNGs and CSVs, notes next to the audio) are quarantined as "not an
//!   audio file" so a stray file is visible in the artifact, not an error that blocks the run. Entries the
//!   engine could not hash (dangling or looping links, FIFOs, hidden or unreadable files) are quarantined
//!   with their reason; one standing where a track would be counts against its class.
//! - Every track decoded completely at ingest (a truncated file is quarantined here, not found downstream).
//! - What is odd about a file but leaves all of its audio known is a warning on its track, not a quarantine
//!   (listed in the summary, stored in the track's `warnings`): a WAV RIFF size field that disagrees with the
//!   file's length, bytes after the RIFF chunk, a data chunk ending part way into a frame (the partial frame
//!   is dropped). A data chunk declaring more bytes than the file holds is a truncated file: quarantined.
//! - A track shorter than `min_seconds` is quarantined: it cannot fill one segment, so it would enter the
//!   split and then yield nothing (a test track with no segments). The default, 2.97 s, is the study's
//!   segment; a pipeline slicing longer segments should raise it to match.
//! - Classes are the folders directly holding the tracks, sorted; a track's label is its class's index.
//!   A class left without any decodable track is an error: stratified splitting needs data in every class.
//!   So is a dataset of a single class: nothing can be learned, and its accuracy would read 100%.
//! - Output bytes do not depend on the thread count: decoding runs in parallel with ordered collection, and
//!   both tables are sorted (tracks by id, quarantine by path).
//! - At most one decoded track per worker is in memory: each is digested and counted, then dropped.

mod layout;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::audio;
use crate::common::count;
use crate::common::tables::{Quarantine, QuarantinedFile, Track, TrackTable};
use genrelab_contract::{
    write_canonical_json, Determinism, Lineage, Need, ParamProblem, StageContext, StageError,
    StageKind, StageParams, StageReport, TypedStage, UnlistedEntry, UnlistedReason, DATASET,
};

pub use layout::{extension, plan, Candidate, LayoutKind, Plan, SkipKind, Skipped};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Rate every track is decoded (and, where needed, resampled) to. 22050 Hz: the study loads GTZAN with
    /// `librosa.load`'s default rate, which is also GTZAN's native rate, so the study's data is never resampled.
    pub sample_rate: u32,
    /// File extensions treated as audio (case-insensitive, no dot). `wav` and `au`: the Kaggle and the original
    /// GTZAN distributions, the two containers the decoder reads.
    pub extensions: Vec<String>,
    /// Shortest usable track, in seconds: shorter ones are quarantined. Counted in whole samples at
    /// `sample_rate`, rounded down, so the default 2.97 s is 65,488 samples at 22,050 Hz: exactly the study's
    /// segment, `int(22050 * 2.97)`, the least a track needs to give `slice` one segment.
    pub min_seconds: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            sample_rate: 22050,
            extensions: vec!["wav".into(), "au".into()],
            min_seconds: 2.97,
        }
    }
}

/// Largest `min_seconds`: an hour, far beyond any music track, and a bound that keeps the sample count exact.
pub const MAX_MIN_SECONDS: f64 = 3600.0;

/// Non-audio files listed one per summary line up to this many; beyond it they are summarised by extension
/// (the Kaggle GTZAN copy carries a thousand spectrogram PNGs).
const NOT_AUDIO_LINES: usize = 10;

/// What decoding one candidate left behind: its numbers, or why it failed.
type Outcome = Result<Track, QuarantinedFile>;

impl StageParams for Params {
    fn validate(&self) -> Vec<ParamProblem> {
        let rates = audio::MIN_SAMPLE_RATE..=audio::MAX_SAMPLE_RATE;
        let mut problems: Vec<ParamProblem> =
            ParamProblem::unless_within("sample_rate", self.sample_rate, rates, " Hz")
                .into_iter()
                .collect();
        problems.extend(ParamProblem::unless_within(
            "min_seconds",
            self.min_seconds,
            0.0..=MAX_MIN_SECONDS,
            " s",
        ));
        if self.extensions().is_empty() {
            problems.push(ParamProblem::at(
                "extensions",
                "must name at least one file extension",
            ));
        }
        problems
    }
}

impl Params {
    /// The audio extensions, lowercase and without the dot.
    fn extensions(&self) -> Vec<String> {
        self.extensions
            .iter()
            .map(|e| e.trim_start_matches('.').to_ascii_lowercase())
            .filter(|e| !e.is_empty())
            .collect()
    }

    /// `min_seconds` in samples at `sample_rate`, rounded down (see `min_seconds`).
    fn min_samples(&self) -> u64 {
        (self.min_seconds * f64::from(self.sample_rate)).floor() as u64
    }
}

fn run(params: &Params, ctx: &StageContext) -> Result<StageReport, StageError> {
    params.check()?;
    let extensions = params.extensions();
    let dataset = ctx.dataset()?;
    let plan = layout::plan(
        &dataset.files,
        &extensions,
        &dataset.root.display().to_string(),
    )
    .map_err(|reason| StageError::bad_input(DATASET, with_unlisted(reason, &dataset.unlisted)))?;
    let unlisted: Vec<Unlisted> = dataset
        .unlisted
        .iter()
        .map(|u| Unlisted {
            class: layout::class_of(&plan, &u.rel_path, &extensions),
            file: QuarantinedFile {
                path: u.rel_path.clone(),
                file_digest: String::new(),
                reason: unlisted_reason(u),
            },
        })
        .collect();
    one_class_check(&plan, &unlisted, &dataset.root.display().to_string())?;

    let min_samples = params.min_samples();
    let bar = ctx.progress(plan.candidates.len() as u64, "decode");
    let outcomes: Vec<Outcome> = plan
        .candidates
        .par_iter()
        .map(|c| {
            let outcome = decode_one(&dataset.root, c, params.sample_rate, min_samples);
            bar.inc(1);
            outcome
        })
        .collect();
    bar.finish();

    let (table, quarantine) = assemble(&plan, &unlisted, outcomes, params.sample_rate)?;
    write_canonical_json(&ctx.output_path("tracks")?, &table)?;
    write_canonical_json(&ctx.output_path("quarantine")?, &quarantine)?;
    Ok(report(&plan, &table, &quarantine))
}

fn decode_one(root: &Path, c: &Candidate, sample_rate: u32, min_samples: u64) -> Outcome {
    let path = join_rel(root, &c.rel_path);
    match audio::decode_file(&path, sample_rate) {
        Ok(decoded) if (decoded.samples.len() as u64) < min_samples => Err(QuarantinedFile {
            path: c.rel_path.clone(),
            file_digest: c.file_digest.clone(),
            reason: format!(
                "too short: {} ({:.2} s) at {sample_rate} Hz, under min_seconds ({min_samples} samples), \
                 so too short to slice",
                count(decoded.samples.len(), "sample", "samples"),
                decoded.samples.len() as f64 / f64::from(sample_rate)
            ),
        }),
        Ok(decoded) => Ok(Track {
            id: c.id.clone(),
            class: c.class.clone(),
            label: 0, // set once every class is known
            path: c.rel_path.clone(),
            samples: decoded.samples.len() as u64,
            source_rate: decoded.source_rate,
            source_channels: decoded.source_channels,
            file_digest: c.file_digest.clone(),
            audio_digest: audio::audio_digest(&decoded.samples),
            warnings: decoded.warnings,
        }),
        Err(e) => Err(QuarantinedFile {
            path: c.rel_path.clone(),
            file_digest: c.file_digest.clone(),
            reason: e.reason,
        }),
    }
}

/// A dataset whose every track (or entry standing where one would) sits in one class folder is refused
/// before anything is decoded: a classifier of one class learns nothing and scores a meaningless 100%.
fn one_class_check(plan: &Plan, unlisted: &[Unlisted], root: &str) -> Result<(), StageError> {
    let classes: std::collections::BTreeSet<&str> = plan
        .candidates
        .iter()
        .map(|c| c.class.as_str())
        .chain(unlisted.iter().filter_map(|u| u.class.as_deref()))
        .collect();
    match classes.into_iter().collect::<Vec<_>>().as_slice() {
        [one] => {
            let folder = if plan.prefix.is_empty() {
                (*one).to_string()
            } else {
                format!("{}/{one}", plan.prefix)
            };
            Err(StageError::bad_input(
                DATASET,
                format!(
                    "only one class under {root}: `{one}` ({folder}/, {}); classification needs at least \
                     two class folders: point the dataset root at the folder holding all of them",
                    count(plan.candidates.len(), "audio file", "audio files")
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// An entry the engine could not hash, quarantined as is; `class` when it stands where a track would.
#[derive(Debug, Clone)]
pub struct Unlisted {
    pub class: Option<String>,
    pub file: QuarantinedFile,
}

/// The quarantine reason of an unlisted entry. The synthetic generator's own marker is named as such: it is
/// expected in every generated corpus, and "hidden file" would send a user looking for a problem.
fn unlisted_reason(entry: &UnlistedEntry) -> String {
    if entry.rel_path == crate::synth::MARKER && entry.reason == UnlistedReason::HiddenFile {
        "the synthetic generator's marker, not audio".into()
    } else {
        entry.reason.to_string()
    }
}

/// A layout error on a dataset with unlisted entries says so: a folder of dangling links looks empty.
fn with_unlisted(reason: String, unlisted: &[UnlistedEntry]) -> String {
    if unlisted.is_empty() {
        return reason;
    }
    let shown: Vec<String> = unlisted
        .iter()
        .take(NOT_AUDIO_LINES)
        .map(|u| format!("{}: {}", u.rel_path, u.reason))
        .collect();
    let more = unlisted.len().saturating_sub(shown.len());
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!(
        "{reason}; {} entries could not be read as files: {}{more}",
        unlisted.len(),
        shown.join("; ")
    )
}

fn join_rel(root: &Path, rel: &str) -> PathBuf {
    let mut path = root.to_path_buf();
    path.extend(rel.split('/'));
    path
}

/// Labels, sorting and the every-class-has-data check, over the decode outcomes in candidate order.
pub fn assemble(
    plan: &Plan,
    unlisted: &[Unlisted],
    outcomes: Vec<Outcome>,
    sample_rate: u32,
) -> Result<(TrackTable, Quarantine), StageError> {
    let mut per_class: BTreeMap<String, (u64, Vec<String>)> = BTreeMap::new();
    for c in &plan.candidates {
        per_class.entry(c.class.clone()).or_default();
    }
    let mut tracks = Vec::new();
    let mut quarantined: Vec<QuarantinedFile> =
        plan.skipped.iter().map(|s| s.file.clone()).collect();
    // A class whose every track is a dangling link must fail as loudly as one whose every file is corrupt.
    for u in unlisted {
        if let Some(class) = &u.class {
            let entry = per_class.entry(class.clone()).or_default();
            entry.1.push(format!("{}: {}", u.file.path, u.file.reason));
        }
        quarantined.push(u.file.clone());
    }
    for (c, outcome) in plan.candidates.iter().zip(outcomes) {
        let entry = per_class.entry(c.class.clone()).or_default();
        match outcome {
            Ok(track) => {
                entry.0 += 1;
                tracks.push(track);
            }
            Err(q) => {
                entry.1.push(format!("{}: {}", q.path, q.reason));
                quarantined.push(q);
            }
        }
    }
    let empty: Vec<String> = per_class
        .iter()
        .filter(|(_, (ok, _))| *ok == 0)
        .map(|(class, (_, failures))| {
            format!(
                "class `{class}` has no decodable track ({} quarantined: {})",
                failures.len(),
                failures.join("; ")
            )
        })
        .collect();
    if !empty.is_empty() {
        return Err(StageError::bad_input(
            DATASET,
            format!(
                "{}; a class without data cannot be split or learned: fix or remove its folder",
                empty.join("; ")
            ),
        ));
    }
    let classes: Vec<String> = per_class.into_keys().collect();
    for t in &mut tracks {
        t.label = classes.binary_search(&t.class).map_err(|_| {
            StageError::Invalid(format!("ingest: class of {} not among classes", t.id))
        })? as u32;
    }
    tracks.sort_by(|a, b| a.id.cmp(&b.id));
    quarantined.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((
        TrackTable {
            sample_rate,
            classes,
            tracks,
        },
        Quarantine { files: quarantined },
    ))
}

fn report(plan: &Plan, table: &TrackTable, quarantine: &Quarantine) -> StageReport {
    let mut classes: BTreeMap<&str, u64> = BTreeMap::new();
    let mut formats: BTreeMap<(u32, u16), u64> = BTreeMap::new();
    for t in &table.tracks {
        *classes.entry(t.class.as_str()).or_default() += 1;
        *formats
            .entry((t.source_rate, t.source_channels))
            .or_default() += 1;
    }
    let mut lineage = serde_json::json!({
        "tracks": table.tracks.len(),
        "classes": classes,
        "quarantined": quarantine.files.iter().map(|q| q.path.as_str()).collect::<Vec<_>>(),
    });
    let warned: Vec<&Track> = table
        .tracks
        .iter()
        .filter(|t| !t.warnings.is_empty())
        .collect();
    // Only when there is one, so a clean dataset's lineage keeps its bytes.
    if !warned.is_empty() {
        lineage["warned"] =
            serde_json::json!(warned.iter().map(|t| t.path.as_str()).collect::<Vec<_>>());
    }

    let mut summary = vec![format!(
        "{} in {} at {} Hz (layout: {})",
        count(table.tracks.len(), "track", "tracks"),
        count(table.classes.len(), "class", "classes"),
        table.sample_rate,
        plan.kind.name()
    )];
    let formats: Vec<String> = formats
        .iter()
        .map(|((rate, ch), n)| format!("{n} at {rate} Hz/{ch} ch"))
        .collect();
    summary.push(format!("source formats: {}", formats.join(", ")));

    let not_audio: BTreeMap<&str, ()> = plan
        .skipped
        .iter()
        .filter(|s| s.kind == SkipKind::NotAudio)
        .map(|s| (s.file.path.as_str(), ()))
        .collect();
    let grouped = not_audio.len() > NOT_AUDIO_LINES;
    for q in &quarantine.files {
        if grouped && not_audio.contains_key(q.path.as_str()) {
            continue;
        }
        summary.push(format!("quarantined {}: {}", q.path, q.reason));
    }
    if grouped {
        let mut by_ext: BTreeMap<String, u64> = BTreeMap::new();
        for path in not_audio.keys() {
            let ext = extension(path).map_or_else(|| "(none)".to_string(), |e| format!(".{e}"));
            *by_ext.entry(ext).or_default() += 1;
        }
        let counts: Vec<String> = by_ext.iter().map(|(e, n)| format!("{e} {n}")).collect();
        summary.push(format!(
            "quarantined {} non-audio files ({}); listed in the quarantine artifact",
            not_audio.len(),
            counts.join(", ")
        ));
    }
    if quarantine.files.is_empty() {
        summary.push("quarantine: none".into());
    }
    for t in &warned {
        for w in &t.warnings {
            summary.push(format!("warning {}: {w}", t.path));
        }
    }
    StageReport {
        lineage: Lineage::details(lineage),
        summary,
    }
}

const NEEDS: &[Need] = &[Need::one(DATASET)];

pub fn kind() -> Box<dyn StageKind> {
    Box::new(TypedStage::<Params> {
        kind: "ingest",
        about: "decode every audio file of the dataset into a track table; quarantine the rest with reasons",
        needs: NEEDS,
        outputs: &["tracks", "quarantine"],
        code_dirs: &["ingest", "audio", "common"],
        determinism: Determinism::Exact,
        run,
    })
}
