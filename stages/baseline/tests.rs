//! Tests for the `baseline` stage: known answers on constructed data, tie rules, thread-count independence,
//! and proof that the test split's values never reach the output.
//!
//! The constructed corpora are written as `features` with an identity `scaler` (mean 0, std 1), through which
//! the reader returns every value unchanged, so the known answers are in the values as written. That the
//! baseline's bytes match the former scaled-copy path on fitted statistics is tested in `scaler::tests`.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::*;
use crate::common::scaled_reader::ScalerStats;
use crate::common::split_tensors::write_split;
use crate::common::tables::{Segment, SPLITS};
use genrelab_contract::{local_inputs, StageContext};

/// One segment to write: split, track, label and its `n_mels x frames` values (mel-major).
struct Seg {
    split: Split,
    track: String,
    label: u32,
    values: Vec<f32>,
}

struct Corpus {
    n_mels: usize,
    frames: usize,
    segs: Vec<Seg>,
}

impl Corpus {
    /// The segment table, in the documented order (split, then track, then index).
    fn table(&self) -> SegmentTable {
        let mut segments = Vec::new();
        for split in SPLITS {
            let mut index: BTreeMap<&str, u32> = BTreeMap::new();
            let mut these: Vec<&Seg> = self.segs.iter().filter(|s| s.split == split).collect();
            these.sort_by(|a, b| a.track.cmp(&b.track));
            for s in these {
                let i = index.entry(&s.track).or_default();
                segments.push(Segment {
                    id: format!("{}#{i}", s.track),
                    track: s.track.clone(),
                    split,
                    label: s.label,
                    index: *i,
                    start: 0,
                });
                *i += 1;
            }
        }
        SegmentTable {
            sample_rate: 22050,
            segment_samples: 100,
            segments_per_track: 1,
            segments,
            short_tracks: vec![],
        }
    }

    /// Writes `features@<split>` for every split into `dir`.
    fn write_features(&self, dir: &std::path::Path) {
        for split in SPLITS {
            let mut these: Vec<&Seg> = self.segs.iter().filter(|s| s.split == split).collect();
            these.sort_by(|a, b| a.track.cmp(&b.track));
            let values: Vec<f32> = these.iter().flat_map(|s| s.values.clone()).collect();
            let labels: Vec<u32> = these.iter().map(|s| s.label).collect();
            let path = dir.join(split.artifact("features"));
            write_split(&path, split, (self.n_mels, self.frames), &values, &labels).unwrap();
        }
    }

    /// Mean 0 and std 1 for every cell: `(x - 0) / 1` is `x` exactly.
    fn write_identity_scaler(&self, path: &std::path::Path) {
        let cells = self.n_mels * self.frames;
        let stats = ScalerStats {
            shape: vec![self.n_mels, self.frames],
            mean: vec![0.0; cells],
            std: vec![1.0; cells],
            count: 1,
        };
        stats.write(path).unwrap();
    }

    /// Runs the stage with `threads` workers; returns the report and the artifact bytes.
    fn run(&self, threads: usize) -> Result<(StageReport, Vec<u8>), StageError> {
        let dir = tempfile::tempdir().unwrap();
        let scaler = dir.path().join("scaler");
        let segments = dir.path().join("segments");
        self.write_features(dir.path());
        self.write_identity_scaler(&scaler);
        write_canonical_json(&segments, &self.table()).unwrap();
        let inputs = local_inputs([
            // What the kind declares: train and val, never test.
            ("features@train", dir.path().join("features@train")),
            ("features@val", dir.path().join("features@val")),
            ("scaler", scaler),
            ("segments", segments),
        ]);
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let ctx = StageContext::new(
            "baseline",
            [0; 32],
            threads,
            inputs,
            None,
            out.clone(),
            vec!["baseline"],
        );
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let report = pool.install(|| run(&Params::default(), &ctx))?;
        Ok((report, std::fs::read(out.join("baseline")).unwrap()))
    }
}

/// A 2 x 2 segment whose mean-over-frames vector is `(a, 0)`; frames differ so averaging matters.
fn seg(split: Split, track: &str, label: u32, a: f32) -> Seg {
    Seg {
        split,
        track: track.into(),
        label,
        values: vec![a - 1.0, a + 1.0, -0.5, 0.5],
    }
}

/// Train centroids at 0 (class 0) and 10 (class 1); val holds a misfit in each class.
fn known_confusion() -> Corpus {
    Corpus {
        n_mels: 2,
        frames: 2,
        segs: vec![
            seg(Split::Train, "c0/t0", 0, -1.0),
            seg(Split::Train, "c0/t0", 0, 1.0),
            seg(Split::Train, "c1/t1", 1, 9.0),
            seg(Split::Train, "c1/t1", 1, 11.0),
            // Track v0: predictions 0, 0, 1; mean 3 -> class 0; vote 0.
            seg(Split::Val, "c0/v0", 0, 0.0),
            seg(Split::Val, "c0/v0", 0, 0.0),
            seg(Split::Val, "c0/v0", 0, 9.0),
            // Track v1: predictions 1, 0 (a tie, so the vote says 0: wrong); mean 5.5 -> class 1.
            seg(Split::Val, "c1/v1", 1, 10.0),
            seg(Split::Val, "c1/v1", 1, 1.0),
            seg(Split::Test, "c0/x0", 0, 0.0),
        ],
    }
}

#[test]
fn constructed_case_gives_the_known_confusion() {
    let (report, bytes) = known_confusion().run(1).unwrap();
    let b: BaselineReport = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(b.n_classes, 2);
    assert_eq!(b.n_mels, 2);
    assert_eq!(
        b.centroids,
        vec![Some(vec![0.0, 0.0]), Some(vec![10.0, 0.0])]
    );
    assert_eq!(b.train.accuracy, 1.0);
    assert_eq!(b.train.class_counts, vec![2, 2]);
    assert_eq!(b.val.segments, 5);
    assert_eq!(b.val.tracks, 2);
    assert_eq!(b.val.confusion, vec![vec![2, 1], vec![1, 1]]);
    assert_eq!(b.val.segment_accuracy, 0.6);
    assert_eq!(b.val.per_class_recall, vec![Some(2.0 / 3.0), Some(0.5)]);
    assert_eq!(b.val.track_accuracy, 1.0);
    assert_eq!(b.val.track_vote_accuracy, 0.5);
    assert_eq!(
        report.summary,
        vec!["baseline (nearest centroid on mean log-mel): val 60.0% per segment, 100.0% per track (train 100.0%)"]
    );
    let table = known_confusion().table();
    assert_eq!(
        report.lineage.records,
        [
            table.fit_record("class centroids", Split::Train),
            Record::Scored {
                what: "accuracy".into(),
                split: Split::Val,
                segments: 5,
            },
        ]
    );
    match &report.lineage.records[0] {
        Record::Fit {
            tracks, segments, ..
        } => assert_eq!(
            (tracks.as_slice(), *segments),
            (&["c0/t0".to_string(), "c1/t1".into()][..], 4)
        ),
        other => panic!("{other:?}"),
    }
}

/// Three classes, 8 mels x 5 frames; class `k` raises band `k` by `gap` over uniform noise in [-1, 1).
fn separated(seed: u64, tracks_per_class: usize, gap: f32) -> Corpus {
    let (n_mels, frames) = (8, 5);
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut segs = Vec::new();
    for split in SPLITS {
        for label in 0..3u32 {
            for t in 0..tracks_per_class {
                for _ in 0..3 {
                    let values = (0..n_mels * frames)
                        .map(|k| {
                            let centre = if k / frames == label as usize {
                                gap
                            } else {
                                0.0
                            };
                            centre + rng.random::<f32>() * 2.0 - 1.0
                        })
                        .collect();
                    segs.push(Seg {
                        split,
                        track: format!("g{label}/{split}.{t:02}"),
                        label,
                        values,
                    });
                }
            }
        }
    }
    Corpus {
        n_mels,
        frames,
        segs,
    }
}

#[test]
fn well_separated_classes_score_perfectly() {
    let (_, bytes) = separated(1, 4, 6.0).run(2).unwrap();
    let b: BaselineReport = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(b.n_classes, 3);
    assert_eq!(b.train.accuracy, 1.0);
    assert_eq!(b.val.segment_accuracy, 1.0);
    assert_eq!(b.val.track_accuracy, 1.0);
    assert_eq!(b.val.track_vote_accuracy, 1.0);
    assert_eq!(b.val.tracks, 12);
    assert_eq!(
        b.val.confusion,
        vec![vec![12, 0, 0], vec![0, 12, 0], vec![0, 0, 12]]
    );
    assert_eq!(b.val.per_class_recall, vec![Some(1.0); 3]);
}

#[test]
fn output_is_byte_identical_across_thread_counts() {
    // Overlapping classes so that predictions are not all trivially right.
    let corpus = separated(2, 10, 0.3);
    let (r1, one) = corpus.run(1).unwrap();
    let (r4, four) = corpus.run(4).unwrap();
    assert_eq!(one, four);
    assert_eq!(r1.summary, r4.summary);
    let b: BaselineReport = serde_json::from_slice(&one).unwrap();
    let acc = b.val.segment_accuracy;
    assert!(acc > 0.0 && acc < 1.0, "{acc}");
}

#[test]
fn test_split_values_never_reach_the_output() {
    let corpus = separated(3, 3, 6.0);
    let (r1, before) = corpus.run(1).unwrap();
    let mut changed = separated(3, 3, 6.0);
    for s in changed.segs.iter_mut().filter(|s| s.split == Split::Test) {
        s.values.iter_mut().for_each(|v| *v = f32::NAN);
        s.label = (s.label + 1) % 3;
    }
    let (r2, after) = changed.run(1).unwrap();
    assert_eq!(before, after);
    assert_eq!(r1.lineage, r2.lineage);
    // The same change on val does change the output, so the comparison above can fail.
    let mut val_changed = separated(3, 3, 6.0);
    for s in val_changed
        .segs
        .iter_mut()
        .filter(|s| s.split == Split::Val)
    {
        s.values.iter_mut().for_each(|v| *v = -*v);
    }
    assert_ne!(before, val_changed.run(1).unwrap().1);
}

#[test]
fn equal_distances_and_tied_votes_go_to_the_lowest_label() {
    let centroids = vec![None, Some(vec![0.0]), Some(vec![2.0]), Some(vec![2.0])];
    assert_eq!(nearest(&centroids, &[1.0]), 1);
    assert_eq!(nearest(&centroids, &[3.0]), 2);
    assert_eq!(majority(&[3, 1, 3, 1, 0], 4), 1);
    assert_eq!(majority(&[2, 2, 0], 3), 2);
}

#[test]
fn mean_over_frames_averages_each_band() {
    assert_eq!(
        mean_over_frames(&[1.0, 2.0, 3.0, -6.0, 0.0, 0.0], 3),
        vec![2.0, -2.0]
    );
}

#[test]
fn val_rows_must_match_the_segment_table() {
    let corpus = known_confusion();
    let dir = tempfile::tempdir().unwrap();
    let scaler = dir.path().join("scaler");
    corpus.write_features(dir.path());
    corpus.write_identity_scaler(&scaler);
    let mut table = corpus.table();
    table.segments.retain(|s| s.id != "c1/v1#1");
    let val = dir.path().join("features@val");
    let file = ScaledFeatures::open(&scaler, &[(Split::Val, &val)]).unwrap();
    let err = match read_split(&file, &table, Split::Val) {
        Ok(_) => panic!("a row count mismatch was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("tensor `val` has 5 rows but the segment table lists 4 val segments"),
        "{err}"
    );
}

#[test]
fn a_val_track_with_mixed_labels_is_an_error() {
    let mut corpus = known_confusion();
    corpus.segs[5].label = 1;
    let err = corpus.run(1).unwrap_err().to_string();
    assert!(
        err.contains("val track `c0/v0` has segments labelled 0 and 1"),
        "{err}"
    );
}

#[test]
fn params_default_to_nearest_centroid() {
    let stage = kind();
    let canon = |yaml: &str| stage.canonical_params(&serde_yaml::from_str(yaml).unwrap());
    assert_eq!(
        canon("null").unwrap(),
        serde_json::json!({"method": "nearest_centroid"})
    );
    assert!(canon("method: knn").is_err());
    assert!(canon("methd: nearest_centroid").is_err());
}
