//! Stage `slice`: cuts each split track into fixed-length, non-overlapping segments, after the split, so the
//! segments of one track share its split.
//!
//! Segments start at t = 0 and follow back to back; a segment is kept only if it fits entirely inside the
//! track (never padded), so a short track yields fewer segments and is recorded in `short_tracks`.
//! Invariant: segment order is split (train, val, test), then track id, then index; feature tensors follow it.

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::common::count;
use crate::common::tables::{Segment, SegmentTable, ShortTrack, SplitTable, TrackTable, SPLITS};
use genrelab_contract::{
    read_json, write_canonical_json, Determinism, Lineage, Need, ParamProblem, Record, Split,
    StageContext, StageError, StageKind, StageParams, StageReport, TypedStage,
};

/// Params of `slice`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// At most this many segments per track: the study's 10 (a 30 s track in 3 s pieces).
    pub segments_per_track: u32,
    /// Samples per segment. The study's code uses `int(22050 * 2.97)` = 65488, which gives exactly 128 STFT
    /// frames at hop 512; its write-up says 3 s, which is `segment_samples: 66150` (130 frames).
    pub segment_samples: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            segments_per_track: 10,
            segment_samples: 65488,
        }
    }
}

/// Most segments per track: far more than any track of a plausible length holds, and small enough that
/// `index * segment_samples` cannot overflow.
pub const MAX_SEGMENTS_PER_TRACK: u32 = 1 << 16;
/// Longest segment: the longest track audio decoding accepts, so a longer one could never fit.
pub const MAX_SEGMENT_SAMPLES: u64 = crate::audio::MAX_DECODED_SAMPLES;

impl StageParams for Params {
    fn validate(&self) -> Vec<ParamProblem> {
        [
            ParamProblem::unless_within(
                "segments_per_track",
                self.segments_per_track,
                1..=MAX_SEGMENTS_PER_TRACK,
                "",
            ),
            ParamProblem::unless_within(
                "segment_samples",
                self.segment_samples,
                1..=MAX_SEGMENT_SAMPLES,
                " (the longest track decoding accepts)",
            ),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

const NEEDS: &[Need] = &[Need::one("tracks"), Need::one("split")];

pub fn kind() -> Box<dyn StageKind> {
    Box::new(TypedStage::<Params> {
        kind: "slice",
        about: "cut each split track into back-to-back fixed-length segments (never padded)",
        needs: NEEDS,
        outputs: &["segments"],
        code_dirs: &["slice", "common"],
        determinism: Determinism::Exact,
        run,
    })
}

fn run(params: &Params, ctx: &StageContext) -> Result<StageReport, StageError> {
    let tracks: TrackTable = read_json(ctx.input("tracks")?, "tracks")?;
    let split: SplitTable = read_json(ctx.input("split")?, "split")?;
    let table = slice(&tracks, &split, params)?;
    write_canonical_json(&ctx.output_path("segments")?, &table)?;
    Ok(report(&split, &table))
}

/// The segment table for every track named in `split`.
pub fn slice(
    tracks: &TrackTable,
    split: &SplitTable,
    params: &Params,
) -> Result<SegmentTable, StageError> {
    // Guards the division by `segment_samples` below for callers that never went through planning.
    params.check()?;
    let by_id: BTreeMap<&str, _> = tracks.tracks.iter().map(|t| (t.id.as_str(), t)).collect();
    let mut segments = Vec::new();
    let mut short_tracks = Vec::new();
    for name in SPLITS {
        let mut ids: Vec<&String> = split.ids(name).iter().collect();
        ids.sort();
        for id in ids {
            let track = by_id.get(id.as_str()).ok_or_else(|| {
                StageError::bad_input(
                    "split",
                    format!("track `{id}` (in {name}) is not in the tracks table"),
                )
            })?;
            let fit = track.samples / params.segment_samples;
            let n = fit.min(u64::from(params.segments_per_track)) as u32;
            if n < params.segments_per_track {
                short_tracks.push(ShortTrack {
                    track: id.clone(),
                    samples: track.samples,
                    segments: n,
                });
            }
            segments.extend((0..n).map(|index| Segment {
                id: format!("{id}#{index}"),
                track: id.clone(),
                split: name,
                label: track.label,
                index,
                start: u64::from(index) * params.segment_samples,
            }));
        }
    }
    short_tracks.sort_by(|a, b| a.track.cmp(&b.track));
    Ok(SegmentTable {
        sample_rate: tracks.sample_rate,
        segment_samples: params.segment_samples,
        segments_per_track: params.segments_per_track,
        segments,
        short_tracks,
    })
}

fn report(split: &SplitTable, table: &SegmentTable) -> StageReport {
    let per_split: BTreeMap<Split, usize> = SPLITS
        .iter()
        .map(|&s| (s, table.of_split(s).count()))
        .collect();
    let n_tracks: usize = SPLITS.iter().map(|&s| split.ids(s).len()).sum();
    let seconds = table.segment_samples as f64 / f64::from(table.sample_rate.max(1));
    let n_short = table.short_tracks.len();
    let mut summary = vec![format!(
        "sliced {} into {} of {} samples ({seconds:.2} s); {}",
        count(n_tracks, "track", "tracks"),
        count(table.segments.len(), "segment", "segments"),
        table.segment_samples,
        count(n_short, "short track", "short tracks")
    )];
    let empty: Vec<&str> = table
        .short_tracks
        .iter()
        .filter(|s| s.segments == 0)
        .map(|s| s.track.as_str())
        .collect();
    if !empty.is_empty() {
        let shown = empty.iter().take(5).copied().collect::<Vec<_>>().join(", ");
        let more = if empty.len() > 5 {
            format!(" and {} more", empty.len() - 5)
        } else {
            String::new()
        };
        summary.push(format!(
            "{} too short for one segment, not used: {shown}{more}; raise ingest's min_seconds to the \
             segment length ({seconds:.2} s) to keep such tracks out of the split",
            count(empty.len(), "track", "tracks")
        ));
    }
    StageReport {
        lineage: Lineage {
            records: SPLITS
                .iter()
                .map(|&s| Record::Segments {
                    split: s,
                    segments: per_split[&s],
                    tracks: table.of_split(s).filter(|seg| seg.index == 0).count(),
                })
                .collect(),
            details: serde_json::json!({ "short_tracks": n_short }),
        },
        summary,
    }
}
