//! Stage `features`: a 128-band log-mel spectrogram per segment, as the study computed it with librosa 0.11
//! (`melspectrogram(sr=22050, n_mels=128, hop_length=512)` then `power_to_db(ref=np.max, top_db=80)`).
//!
//! Input: the raw dataset, the `tracks` table (to find and verify each track's audio) and the `segments` table
//! (which samples of which track make each segment, and its split). Outputs `features@train`, `features@val`
//! and `features@test`: one safetensors file per split, holding tensor `<split>` (F32,
//! `[segments, n_mels, frames]`, layout segment x mel x frame, little-endian) and `<split>_labels` (U32,
//! `[segments]`), rows in the segment table's order. One file per split is what lets the engine hand a
//! consumer the splits it declares and no others: a trainer never holds a path to test rows.
//!
//! Invariants: each track is decoded once and checked against its ingest-time length and audio digest (a
//! changed file is an error, never silently new features); each segment's values depend only on its samples
//! and the params, so the output bytes do not depend on the thread count; tracks are processed in bounded
//! chunks and streamed out, so memory stays a few chunks of audio whatever the corpus size.

pub mod mel;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::audio;
use crate::common::tables::{Segment, SegmentTable, Track, TrackTable, SPLITS};

use crate::common::split_tensors::FEATURES;
use crate::common::tensors::{Dtype, TensorSpec, TensorWriter};
use genrelab_contract::{
    read_json, Determinism, Lineage, Need, ParamProblem, Record, Split, StageContext, StageError,
    StageKind, StageParams, StageReport, TypedStage,
};

pub use mel::{MelError, MelExtractor};

/// How the signal is extended by `n_fft / 2` samples at each end when frames are centred.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PadMode {
    /// Zeros: librosa's default since 0.9.0, which the study ran.
    Constant,
    /// Mirror about the edge sample (numpy `reflect`): librosa's default before 0.9.0.
    Reflect,
}

/// The dB reference power: `max` (each segment's own maximum, librosa `ref=np.max`) or a fixed power.
/// Written as `ref: max` or `ref: 1.0` in YAML; canonical JSON is `"max"` or the number.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RefRepr", into = "RefRepr")]
pub enum Reference {
    Max,
    Value(f64),
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum RefRepr {
    Name(String),
    Value(f64),
}

impl TryFrom<RefRepr> for Reference {
    type Error = String;
    fn try_from(repr: RefRepr) -> Result<Self, String> {
        match repr {
            RefRepr::Name(name) if name == "max" => Ok(Reference::Max),
            RefRepr::Name(name) => Err(format!(
                "ref must be `max` or a positive number, got `{name}`"
            )),
            RefRepr::Value(v) if v.is_finite() && v > 0.0 => Ok(Reference::Value(v)),
            RefRepr::Value(v) => Err(format!("ref must be `max` or a positive number, got {v}")),
        }
    }
}

impl Reference {
    /// The fixed reference power, `None` for `max`.
    pub fn value(self) -> Option<f64> {
        match self {
            Reference::Max => None,
            Reference::Value(v) => Some(v),
        }
    }
}

impl From<Reference> for RefRepr {
    fn from(reference: Reference) -> Self {
        match reference {
            Reference::Max => RefRepr::Name("max".into()),
            Reference::Value(v) => RefRepr::Value(v),
        }
    }
}

/// Log-mel params; the defaults are the study's (librosa 0.11 defaults plus `n_mels=128, hop_length=512`,
/// `ref=np.max`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Mel bands: the study's 128 (rows of each 128 x 128 input image).
    pub n_mels: usize,
    /// FFT length and window length: librosa's default 2048 (93 ms at 22,050 Hz).
    pub n_fft: usize,
    /// Samples between frames: the study's 512 (so 65,488 samples give 128 frames).
    pub hop_length: usize,
    /// Lowest filter edge in Hz: librosa's default 0.
    pub fmin: f64,
    /// Highest filter edge in Hz; null means the Nyquist frequency, librosa's default.
    pub fmax: Option<f64>,
    /// Exponent on the STFT magnitude: 2 (power), librosa's default.
    pub power: f64,
    /// Centre frame `t` on sample `t * hop_length`, padding both ends: librosa's default.
    pub center: bool,
    /// Padding when centred: zeros, librosa's default since 0.9.0 (the version the study ran).
    pub pad_mode: PadMode,
    /// dB reference: the study used `ref=np.max`, so every segment's loudest cell is 0 dB.
    #[serde(rename = "ref")]
    pub reference: Reference,
    /// Floor on power before the log: librosa's default 1e-10 (-100 dB).
    pub amin: f64,
    /// Clip at this many dB below the segment's maximum; null disables. librosa's default 80.
    pub top_db: Option<f64>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            n_mels: 128,
            n_fft: 2048,
            hop_length: 512,
            fmin: 0.0,
            fmax: None,
            power: 2.0,
            center: true,
            pad_mode: PadMode::Constant,
            reference: Reference::Max,
            amin: 1e-10,
            top_db: Some(80.0),
        }
    }
}

/// Longest FFT: 65,536 samples (3 s at 22,050 Hz), 32x librosa's default; the window and FFT plan are
/// allocated from it.
pub const MAX_N_FFT: usize = 1 << 16;
/// Most mel bands: 16x the study's 128, and a filter bank row each.
pub const MAX_N_MELS: usize = 2048;
/// Longest hop: the longest segment slicing accepts (one frame per segment beyond that).
pub const MAX_HOP_LENGTH: usize = 1 << 27;
/// Most f32 cells one track's segments may take (1 GiB): the buffer a worker holds per track.
pub const MAX_TRACK_CELLS: usize = 1 << 28;

impl StageParams for Params {
    /// Values that only make sense with the sample rate (`fmax` against the Nyquist frequency, mel bands
    /// too narrow for an FFT bin) are checked when the front end is built, once ingest has fixed the rate.
    fn validate(&self) -> Vec<ParamProblem> {
        let mut problems: Vec<ParamProblem> = [
            ParamProblem::unless_within("n_fft", self.n_fft, 2..=MAX_N_FFT, ""),
            ParamProblem::unless_within("n_mels", self.n_mels, 1..=MAX_N_MELS, ""),
            ParamProblem::unless_within("hop_length", self.hop_length, 1..=MAX_HOP_LENGTH, ""),
        ]
        .into_iter()
        .flatten()
        .collect();
        // An FFT bin strictly between 0 Hz and Nyquist (the filters' outer edges are never inside a
        // triangle) lies between two adjacent mel points, so it serves at most two bands: more bands than
        // twice those bins leave one empty at any sample rate.
        let most_bands = 2 * (self.n_fft.saturating_sub(1) / 2);
        if problems.is_empty() && self.n_mels > most_bands {
            problems.push(ParamProblem::at(
                "n_mels",
                format!(
                    "{} bands cannot each cover an FFT bin with n_fft {}: at most {most_bands}; raise \
                     n_fft or lower n_mels",
                    self.n_mels, self.n_fft
                ),
            ));
        }
        let fmin_ok = self.fmin.is_finite() && self.fmin >= 0.0;
        if !fmin_ok {
            problems.push(ParamProblem::at(
                "fmin",
                format!("must be a frequency >= 0 Hz, got {}", self.fmin),
            ));
        }
        if let Some(fmax) = self.fmax {
            if !(fmax.is_finite() && fmax > 0.0) {
                problems.push(ParamProblem::at(
                    "fmax",
                    format!("must be a positive frequency or null, got {fmax}"),
                ));
            } else if fmin_ok && fmax <= self.fmin {
                problems.push(ParamProblem::at(
                    "fmax",
                    format!("{fmax} must be above fmin ({})", self.fmin),
                ));
            }
        }
        let positive = [
            ("power", self.power),
            ("amin", self.amin),
            ("ref", self.reference.value().unwrap_or(1.0)),
        ];
        for (key, value) in positive {
            if !(value.is_finite() && value > 0.0) {
                problems.push(ParamProblem::at(
                    key,
                    format!("must be a positive number, got {value}"),
                ));
            }
        }
        if let Some(top_db) = self.top_db {
            if !(top_db.is_finite() && top_db >= 0.0) {
                problems.push(ParamProblem::at(
                    "top_db",
                    format!("must be >= 0 or null, got {top_db}"),
                ));
            }
        }
        problems
    }
}

/// The consecutive segments of one track within one split.
struct TrackJob<'a> {
    track: &'a Track,
    segments: Vec<&'a Segment>,
}

fn run(params: &Params, ctx: &StageContext) -> Result<StageReport, StageError> {
    let dataset = ctx.dataset()?;
    let tracks: TrackTable = read_json(ctx.input("tracks")?, "tracks")?;
    let table: SegmentTable = read_json(ctx.input("segments")?, "segments")?;
    if table.sample_rate != tracks.sample_rate {
        return Err(StageError::bad_input(
            "segments",
            format!(
                "sample rate {} differs from the track table's {}",
                table.sample_rate, tracks.sample_rate
            ),
        ));
    }
    let segment_samples = usize::try_from(table.segment_samples)
        .map_err(|_| StageError::bad_input("segments", "segment_samples does not fit in memory"))?;
    let extractor = MelExtractor::new(params, tracks.sample_rate)
        .map_err(|e| StageError::Invalid(e.to_string()))?;
    let frames = extractor
        .frames(segment_samples)
        .map_err(|e| StageError::bad_input("segments", e.to_string()))?;
    let n_mels = extractor.n_mels();
    // A short hop on long segments can ask for more than memory holds: say which params, before allocating.
    let per_track = n_mels
        .checked_mul(frames)
        .and_then(|cells| cells.checked_mul(table.segments_per_track as usize));
    let per_segment = match per_track {
        Some(cells) if cells <= MAX_TRACK_CELLS => n_mels * frames,
        _ => {
            return Err(StageError::Invalid(format!(
            "features: n_mels {n_mels} x {frames} frames (segment_samples {} / hop_length {}) x \
                 segments_per_track {} exceeds the limit of {MAX_TRACK_CELLS} values per track",
            table.segment_samples, params.hop_length, table.segments_per_track
        )))
        }
    };

    let by_id: BTreeMap<&str, &Track> = tracks.tracks.iter().map(|t| (t.id.as_str(), t)).collect();
    let mut plan: Vec<(Split, Vec<TrackJob>)> = Vec::new();
    for split in SPLITS {
        let mut jobs: Vec<TrackJob> = Vec::new();
        for seg in table.of_split(split) {
            let track = by_id.get(seg.track.as_str()).copied().ok_or_else(|| {
                StageError::bad_input(
                    "segments",
                    format!(
                        "segment `{}` names track `{}`, absent from the track table",
                        seg.id, seg.track
                    ),
                )
            })?;
            if seg.label != track.label {
                return Err(StageError::bad_input(
                    "segments",
                    format!(
                        "segment `{}` has label {}, its track `{}` has {}",
                        seg.id, seg.label, track.id, track.label
                    ),
                ));
            }
            if seg
                .start
                .checked_add(table.segment_samples)
                .is_none_or(|end| end > track.samples)
            {
                return Err(StageError::bad_input(
                    "segments",
                    format!(
                        "segment `{}` ends past its track's {} samples",
                        seg.id, track.samples
                    ),
                ));
            }
            match jobs.last_mut() {
                Some(job) if job.track.id == track.id => job.segments.push(seg),
                _ => jobs.push(TrackJob {
                    track,
                    segments: vec![seg],
                }),
            }
        }
        plan.push((split, jobs));
    }

    let n_jobs: usize = plan.iter().map(|(_, jobs)| jobs.len()).sum();
    let bar = ctx.progress(n_jobs as u64, "mel");
    // Enough tracks per chunk to keep every thread busy, few enough to bound memory.
    let chunk = 3 * ctx.threads().max(1);
    let mut total = 0usize;
    let mut records = Vec::new();
    for (split, jobs) in &plan {
        let n: usize = jobs.iter().map(|j| j.segments.len()).sum();
        let distinct: BTreeSet<&str> = jobs.iter().map(|j| j.track.id.as_str()).collect();
        let specs = vec![
            TensorSpec::new(split.name(), Dtype::F32, vec![n, n_mels, frames]),
            TensorSpec::new(format!("{split}_labels"), Dtype::U32, vec![n]),
        ];
        let mut writer = TensorWriter::create(&ctx.output_path(&split.artifact(FEATURES))?, specs)?;
        for batch in jobs.chunks(chunk) {
            let results: Vec<Result<Vec<f32>, StageError>> = batch
                .par_iter()
                .map(|job| {
                    track_features(
                        job,
                        dataset,
                        &tracks,
                        segment_samples,
                        &extractor,
                        per_segment,
                    )
                })
                .collect();
            for values in results {
                writer.write_f32(&values?)?;
                bar.inc(1);
            }
        }
        let labels: Vec<u32> = jobs
            .iter()
            .flat_map(|j| j.segments.iter().map(|s| s.label))
            .collect();
        total += labels.len();
        writer.write_u32(&labels)?;
        writer.finish()?;
        records.push(Record::Segments {
            split: *split,
            segments: n,
            tracks: distinct.len(),
        });
    }
    bar.finish_and_clear();

    let ref_text = match params.reference {
        Reference::Max => "ref max".to_string(),
        Reference::Value(v) => format!("ref {v}"),
    };
    let top_text = match params.top_db {
        Some(t) => format!("top_db {t}"),
        None => "no top_db".to_string(),
    };
    Ok(StageReport {
        lineage: Lineage {
            records,
            details: serde_json::json!({
                "shape": [n_mels, frames],
                "layout": "segment x mel x frame, f32 little-endian",
            }),
        },
        summary: vec![format!(
            "{total} segments -> {n_mels}x{frames} log-mel ({ref_text}, {top_text})"
        )],
    })
}

/// Decode one track, check it is the audio ingest saw, and compute its segments' log-mels in order.
fn track_features(
    job: &TrackJob,
    dataset: &genrelab_contract::DatasetView,
    tracks: &TrackTable,
    segment_samples: usize,
    extractor: &MelExtractor,
    per_segment: usize,
) -> Result<Vec<f32>, StageError> {
    let path = dataset.root.join(&job.track.path);
    let decoded = audio::decode_file(&path, tracks.sample_rate)
        .map_err(|e| StageError::bad_file(e.path, e.reason))?;
    let samples = decoded.samples;
    if samples.len() as u64 != job.track.samples {
        return Err(StageError::bad_file(
            &path,
            format!(
                "changed since ingest: decodes to {} samples, the track table says {}",
                samples.len(),
                job.track.samples
            ),
        ));
    }
    if audio::audio_digest(&samples) != job.track.audio_digest {
        return Err(StageError::bad_file(
            &path,
            "changed since ingest: decoded audio differs from the track table's audio digest",
        ));
    }
    let mut out = vec![0f32; per_segment * job.segments.len()];
    for (seg, dst) in job.segments.iter().zip(out.chunks_exact_mut(per_segment)) {
        // Bounds were checked against the track table, and the length against the decoded audio.
        let segment = usize::try_from(seg.start)
            .ok()
            .and_then(|start| samples.get(start..start.checked_add(segment_samples)?));
        let segment = segment.ok_or_else(|| {
            StageError::bad_input(
                "segments",
                format!("segment `{}` lies outside its track", seg.id),
            )
        })?;
        extractor
            .log_mel(segment, dst)
            .map_err(|e| StageError::bad_file(&path, format!("segment `{}`: {e}", seg.id)))?;
    }
    Ok(out)
}

const NEEDS: &[Need] = &[
    Need::one("dataset"),
    Need::one("tracks"),
    Need::one("segments"),
];

pub fn kind() -> Box<dyn StageKind> {
    Box::new(TypedStage::<Params> {
        kind: "features",
        about:
            "log-mel spectrogram per segment, matching librosa 0.11 (melspectrogram + power_to_db)",
        needs: NEEDS,
        outputs: &["features@train", "features@val", "features@test"],
        code_dirs: &["features", "audio", "common"],
        determinism: Determinism::Exact,
        run,
    })
}
