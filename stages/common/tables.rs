//! The record types that flow between the data-path stages, serialized as canonical JSON artifacts.
//!
//! These records are the identities the leakage audit reads: which track is in which split, which segment
//! came from which track. Every list is sorted as documented on its field, so equal content gives equal bytes.

use genrelab_contract::{ids_digest, Record, Split};
use serde::{Deserialize, Serialize};

/// The splits in their canonical order.
pub const SPLITS: [Split; 3] = Split::ALL;

/// Output `tracks` of `ingest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackTable {
    /// Rate every track was decoded (and, where needed, resampled) to.
    pub sample_rate: u32,
    /// Class names, sorted; a track's `label` is its class's index here.
    pub classes: Vec<String>,
    /// Decodable tracks, sorted by `id`.
    pub tracks: Vec<Track>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Track {
    /// `<class>/<file stem>`, e.g. `blues/blues.00000`; unique within a dataset.
    pub id: String,
    pub class: String,
    pub label: u32,
    /// Path relative to the dataset root, `/`-separated.
    pub path: String,
    /// Mono samples at `TrackTable::sample_rate`.
    pub samples: u64,
    pub source_rate: u32,
    pub source_channels: u16,
    /// blake3 of the raw file bytes.
    pub file_digest: String,
    /// blake3 of the decoded mono f32 samples (little-endian) at the target rate: two files that decode to
    /// the same audio share it, whatever their container.
    pub audio_digest: String,
    /// What was odd about the file but did not stop it decoding (e.g. a RIFF size field that disagrees with
    /// the file). Written only when there is one, so a clean track's record is the same bytes as before the
    /// field existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Output `quarantine` of `ingest`: files under the dataset root that were not used, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Quarantine {
    /// Sorted by `path`.
    pub files: Vec<QuarantinedFile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuarantinedFile {
    pub path: String,
    pub file_digest: String,
    pub reason: String,
}

/// Output `split` of `split`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitTable {
    /// How the split was made: `random` or `lists`.
    pub method: String,
    /// Track ids per split, each sorted.
    pub train: Vec<String>,
    pub val: Vec<String>,
    pub test: Vec<String>,
    /// Groups of tracks with identical decoded audio (each sorted, groups sorted); a group never spans splits.
    pub duplicate_groups: Vec<Vec<String>>,
}

impl SplitTable {
    pub fn ids(&self, split: Split) -> &[String] {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Test => &self.test,
        }
    }
}

/// Output `segments` of `slice`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentTable {
    pub sample_rate: u32,
    pub segment_samples: u64,
    pub segments_per_track: u32,
    /// Ordered by split (train, val, test), then track id, then index. Feature tensors follow this order.
    pub segments: Vec<Segment>,
    /// Tracks that yielded fewer than `segments_per_track` segments, sorted by track.
    pub short_tracks: Vec<ShortTrack>,
}

impl SegmentTable {
    /// The segments of one split, in tensor order.
    pub fn of_split(&self, split: Split) -> impl Iterator<Item = &Segment> + Clone + '_ {
        self.segments.iter().filter(move |s| s.split == split)
    }

    /// The lineage record of `what` fitted on every segment of `split`, in tensor order.
    pub fn fit_record(&self, what: &str, split: Split) -> Record {
        fit_record(what, split, self.of_split(split))
    }
}

/// The lineage record of `what` fitted on exactly `rows` (all of split `split`), in the order given.
pub fn fit_record<'a>(
    what: &str,
    split: Split,
    rows: impl Iterator<Item = &'a Segment> + Clone,
) -> Record {
    let mut tracks: Vec<String> = rows.clone().map(|s| s.track.clone()).collect();
    tracks.sort_unstable();
    tracks.dedup();
    Record::Fit {
        what: what.to_string(),
        split,
        tracks,
        segments: rows.clone().count(),
        segment_ids_digest: ids_digest(rows.map(|s| s.id.as_str())),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// `<track id>#<index>`.
    pub id: String,
    pub track: String,
    /// Serialized as its name; any other name fails to read, never falls into a default split.
    pub split: Split,
    pub label: u32,
    pub index: u32,
    /// First sample, at the track table's rate.
    pub start: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShortTrack {
    pub track: String,
    pub samples: u64,
    pub segments: u32,
}
