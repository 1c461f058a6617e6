//! Tests for the `scaler` stage: exactness against a naive reference, zero-variance cells, thread-count
//! independence, the fit set recorded in lineage, and input cross-checks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::*;
use crate::stage::{local_inputs, write_canonical_json, StageContext};
use crate::stages::common::tables::{Segment, SegmentTable};

const MELS: usize = 4;
const FRAMES: usize = 3;

/// A segment table with `tracks[split]` tracks of `per_track` segments each; labels cycle over 3 classes.
fn table(tracks: [usize; 3], per_track: u32) -> SegmentTable {
    let mut segments = Vec::new();
    for (split, &n) in SPLITS.iter().zip(&tracks) {
        for t in 0..n {
            let label = (t % 3) as u32;
            let track = format!("c{label}/{split}.{t:03}");
            for index in 0..per_track {
                segments.push(Segment {
                    id: format!("{track}#{index}"),
                    track: track.clone(),
                    split: split.to_string(),
                    label,
                    index,
                    start: u64::from(index) * 100,
                });
            }
        }
    }
    SegmentTable {
        sample_rate: 22050,
        segment_samples: 100,
        segments_per_track: per_track,
        segments,
        short_tracks: vec![],
    }
}

/// Random dB-like values (around -40, spread 12) for every segment of every split, in table order.
fn random_values(table: &SegmentTable, seed: u64) -> BTreeMap<&'static str, Vec<f32>> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    SPLITS
        .iter()
        .map(|&split| {
            let n = table.of_split(split).count() * MELS * FRAMES;
            let v = (0..n)
                .map(|_| -40.0 + 12.0 * (rng.random::<f32>() * 2.0 - 1.0))
                .collect();
            (split, v)
        })
        .collect()
}

fn write_features(path: &Path, table: &SegmentTable, values: &BTreeMap<&str, Vec<f32>>) {
    let mut specs = Vec::new();
    for split in SPLITS {
        let n = values[split].len() / (MELS * FRAMES);
        specs.push(TensorSpec::new(split, Dtype::F32, vec![n, MELS, FRAMES]));
        specs.push(TensorSpec::new(
            format!("{split}_labels"),
            Dtype::U32,
            vec![n],
        ));
    }
    let mut w = TensorWriter::create(path, specs).unwrap();
    for split in SPLITS {
        w.write_f32(&values[split]).unwrap();
        let labels: Vec<u32> = table.of_split(split).map(|s| s.label).collect();
        w.write_u32(&labels).unwrap();
    }
    w.finish().unwrap();
}

struct Fixture {
    dir: tempfile::TempDir,
    /// The segments the features tensors were computed for.
    table: SegmentTable,
    /// The segment table handed to the stage (normally equal to `table`).
    listed: SegmentTable,
    values: BTreeMap<&'static str, Vec<f32>>,
}

impl Fixture {
    fn new(tracks: [usize; 3], per_track: u32, seed: u64) -> Self {
        let table = table(tracks, per_track);
        let values = random_values(&table, seed);
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            listed: table.clone(),
            table,
            values,
        }
    }

    /// Writes the inputs, runs the stage with `threads` rayon workers in a fresh output folder `out`.
    fn run(
        &self,
        params: &Params,
        threads: usize,
        out: &str,
    ) -> Result<(StageReport, PathBuf), StageError> {
        let features = self.dir.path().join("features");
        let segments = self.dir.path().join("segments");
        write_features(&features, &self.table, &self.values);
        write_canonical_json(&segments, &self.listed).unwrap();
        let out_dir = self.dir.path().join(out);
        std::fs::create_dir_all(&out_dir).unwrap();
        let inputs = local_inputs([("features", features), ("segments", segments)]);
        let ctx = StageContext::new(
            "scaler",
            [0; 32],
            threads,
            inputs,
            None,
            out_dir.clone(),
            vec!["scaler", "scaled"],
        );
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| run(params, &ctx)).map(|r| (r, out_dir))
    }
}

/// Textbook two-pass statistics per cell, one cell at a time.
fn naive_cell(values: &[f32], n: usize, cells: usize) -> (Vec<f64>, Vec<f64>) {
    let mut mean = vec![0.0; cells];
    let mut std = vec![0.0; cells];
    for c in 0..cells {
        let mut s = 0.0f64;
        for i in 0..n {
            s += f64::from(values[i * cells + c]);
        }
        let m = s / n as f64;
        let mut q = 0.0f64;
        for i in 0..n {
            let d = f64::from(values[i * cells + c]) - m;
            q += d * d;
        }
        mean[c] = m;
        std[c] = (q / n as f64).sqrt();
    }
    (mean, std)
}

fn fit_values(values: &[f32], mode: Mode) -> Fitted {
    let cells = MELS * FRAMES;
    let n = values.len() / cells;
    let read = |i: usize, buf: &mut Vec<f32>| {
        buf.clear();
        buf.extend_from_slice(&values[i * cells..(i + 1) * cells]);
    };
    fit(n, MELS, FRAMES, mode, &read, &|_| {}).unwrap()
}

#[test]
fn cell_fit_matches_a_naive_two_pass_reference_exactly() {
    // 150 rows spans several batches, so batch boundaries are exercised.
    let fx = Fixture::new([50, 2, 2], 3, 1);
    let train = &fx.values["train"];
    let fitted = fit_values(train, Mode::Cell);
    let (mean, std) = naive_cell(train, 150, MELS * FRAMES);
    assert_eq!(fitted.count, 150);
    // Same summation order as the reference, so equality is exact, not approximate.
    assert_eq!(fitted.mean, mean);
    assert_eq!(fitted.std, std);
    assert!(fitted.mean.iter().all(|m| (m + 40.0).abs() < 2.0));
    assert!(fitted
        .std
        .iter()
        .all(|s| (s - 12.0 / 3f64.sqrt()).abs() < 1.0));
}

#[test]
fn wide_segments_split_over_many_workers_fit_identically() {
    // 40 x 70 cells span several parallel cell chunks; 1 and 4 threads must agree with the reference bit for bit.
    let (mels, frames, n) = (40, 70, 90);
    let mut rng = ChaCha20Rng::seed_from_u64(12);
    let values: Vec<f32> = (0..n * mels * frames)
        .map(|_| -80.0 * rng.random::<f32>())
        .collect();
    let cells = mels * frames;
    let read = |i: usize, buf: &mut Vec<f32>| {
        buf.clear();
        buf.extend_from_slice(&values[i * cells..(i + 1) * cells]);
    };
    let fit_with = |threads: usize, mode: Mode| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| fit(n, mels, frames, mode, &read, &|_| {}).unwrap())
    };
    let one = fit_with(1, Mode::Cell);
    assert_eq!(one, fit_with(4, Mode::Cell));
    let (mean, std) = naive_cell(&values, n, cells);
    assert_eq!(one.mean, mean);
    assert_eq!(one.std, std);
    assert_eq!(fit_with(1, Mode::Band), fit_with(4, Mode::Band));
}

#[test]
fn band_fit_pools_all_frames_of_a_mel_band() {
    let fx = Fixture::new([20, 1, 1], 2, 2);
    let train = &fx.values["train"];
    let fitted = fit_values(train, Mode::Band);
    assert_eq!(fitted.stat_shape(), vec![MELS]);
    let n = train.len() / (MELS * FRAMES);
    for m in 0..MELS {
        let band: Vec<f64> = (0..n)
            .flat_map(|i| (0..FRAMES).map(move |f| (i * MELS + m) * FRAMES + f))
            .map(|k| f64::from(train[k]))
            .collect();
        let mean = band.iter().sum::<f64>() / band.len() as f64;
        let var = band.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / band.len() as f64;
        assert!((fitted.mean[m] - mean).abs() < 1e-12, "band {m} mean");
        assert!((fitted.std[m] - var.sqrt()).abs() < 1e-12, "band {m} std");
    }
}

#[test]
fn zero_variance_cells_get_unit_std_and_scale_to_zero() {
    let mut fx = Fixture::new([4, 1, 1], 2, 3);
    let cells = MELS * FRAMES;
    // Cell 5 constant at an awkward value across all train rows; every val row too.
    for split in ["train", "val"] {
        for row in fx.values.get_mut(split).unwrap().chunks_mut(cells) {
            row[5] = -37.3;
        }
    }
    let fitted = fit_values(&fx.values["train"], Mode::Cell);
    assert_eq!(fitted.mean[5], f64::from(-37.3f32));
    assert_eq!(fitted.std[5], 1.0);
    assert!(fitted
        .std
        .iter()
        .enumerate()
        .all(|(c, &s)| c == 5 || s != 1.0));

    let (_, out) = fx.run(&Params::default(), 1, "out").unwrap();
    let scaled = TensorFile::open(&out.join("scaled")).unwrap();
    let val = scaled.tensor("val").unwrap().to_f32();
    assert!(val.chunks(cells).all(|row| row[5] == 0.0));
}

#[test]
fn scaled_values_use_train_statistics_on_every_split() {
    let fx = Fixture::new([12, 3, 4], 2, 4);
    let (report, out) = fx.run(&Params::default(), 2, "out").unwrap();
    let fitted = fit_values(&fx.values["train"], Mode::Cell);

    let stats = TensorFile::open(&out.join("scaler")).unwrap();
    let mean = stats.tensor("mean").unwrap();
    assert_eq!(mean.shape, vec![MELS, FRAMES]);
    assert_eq!(mean.to_f64(), fitted.mean);
    assert_eq!(stats.tensor("std").unwrap().to_f64(), fitted.std);
    assert_eq!(stats.tensor("count").unwrap().to_u32(), vec![24]);

    let scaled = TensorFile::open(&out.join("scaled")).unwrap();
    let cells = MELS * FRAMES;
    for split in SPLITS {
        let t = scaled.tensor(split).unwrap();
        let input = &fx.values[split];
        assert_eq!(t.shape, vec![input.len() / cells, MELS, FRAMES]);
        for (k, (&y, &x)) in t.to_f32().iter().zip(input).enumerate() {
            let c = k % cells;
            let expected = ((f64::from(x) - fitted.mean[c]) / fitted.std[c]) as f32;
            assert_eq!(y, expected, "{split} value {k}");
        }
        let labels: Vec<u32> = fx.table.of_split(split).map(|s| s.label).collect();
        assert_eq!(
            scaled.tensor(&format!("{split}_labels")).unwrap().to_u32(),
            labels
        );
    }
    // Standardised train data: each cell has mean 0 and population std 1.
    let train = scaled.tensor("train").unwrap().to_f32();
    for c in 0..cells {
        let col: Vec<f64> = train.chunks(cells).map(|r| f64::from(r[c])).collect();
        let m = col.iter().sum::<f64>() / col.len() as f64;
        let v = col.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / col.len() as f64;
        assert!(
            m.abs() < 1e-5 && (v - 1.0).abs() < 1e-5,
            "cell {c}: mean {m}, var {v}"
        );
    }
    assert!(report.summary[0]
        .starts_with("scaler (per cell) fitted on 24 train segments from 12 tracks; mean -"));
}

#[test]
fn outputs_are_byte_identical_across_thread_counts() {
    // Several batches and, at 1 thread versus 4, different work splits.
    let fx = Fixture::new([70, 5, 5], 2, 5);
    for mode in [Mode::Cell, Mode::Band] {
        let params = Params { mode };
        let (r1, one) = fx.run(&params, 1, &format!("one-{}", mode.name())).unwrap();
        let (r4, four) = fx
            .run(&params, 4, &format!("four-{}", mode.name()))
            .unwrap();
        for name in ["scaler", "scaled"] {
            let a = std::fs::read(one.join(name)).unwrap();
            let b = std::fs::read(four.join(name)).unwrap();
            assert!(!a.is_empty());
            assert_eq!(a, b, "{name} differs between 1 and 4 threads ({mode:?})");
        }
        assert_eq!(r1.lineage, r4.lineage);
        assert_eq!(r1.summary, r4.summary);
    }
}

#[test]
fn lineage_names_the_exact_fit_set() {
    let fx = Fixture::new([3, 2, 1], 2, 6);
    let (report, _) = fx.run(&Params { mode: Mode::Band }, 1, "out").unwrap();
    let lineage = &report.lineage;
    assert_eq!(lineage["mode"], "band");
    assert_eq!(lineage["fit_set"]["split"], "train");
    assert_eq!(lineage["fit_set"]["segments"], 6);
    assert_eq!(
        lineage["fit_set"]["tracks"],
        serde_json::json!(["c0/train.000", "c1/train.001", "c2/train.002"])
    );
    let ids = "c0/train.000#0\nc0/train.000#1\nc1/train.001#0\nc1/train.001#1\nc2/train.002#0\nc2/train.002#1";
    assert_eq!(
        lineage["fit_set"]["segment_ids_digest"],
        blake3::hash(ids.as_bytes()).to_hex().to_string()
    );
    assert_eq!(
        lineage["applied_to"],
        serde_json::json!({"train": 6, "val": 4, "test": 2})
    );
    assert!(report.summary[0].contains("(per band)"));
}

#[test]
fn val_and_test_values_do_not_change_the_fit() {
    let fx = Fixture::new([5, 2, 2], 2, 7);
    let (_, a) = fx.run(&Params::default(), 1, "a").unwrap();
    let mut other = Fixture::new([5, 2, 2], 2, 8);
    other.values.insert("train", fx.values["train"].clone());
    let (_, b) = other.run(&Params::default(), 1, "b").unwrap();
    assert_eq!(
        std::fs::read(a.join("scaler")).unwrap(),
        std::fs::read(b.join("scaler")).unwrap()
    );
}

#[test]
fn train_row_count_must_match_the_segment_table() {
    let mut fx = Fixture::new([4, 1, 1], 2, 9);
    // The table lists one train segment fewer than the features hold.
    fx.listed.segments.remove(0);
    let err = fx
        .run(&Params::default(), 1, "out")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tensor `train` has 8 rows but the segment table lists 7 train segments"),
        "{err}"
    );
}

#[test]
fn labels_must_match_the_segment_table() {
    let mut fx = Fixture::new([4, 2, 1], 2, 10);
    let seg = fx
        .table
        .segments
        .iter_mut()
        .find(|s| s.split == "val")
        .unwrap();
    seg.label = 2;
    let id = seg.id.clone();
    // Tensors written with the original labels, checked against the altered table.
    let features = fx.dir.path().join("features");
    write_features(&features, &table([4, 2, 1], 2), &fx.values);
    let file = TensorFile::open(&features).unwrap();
    let err = match check_features(&file, &features, &fx.table) {
        Ok(_) => panic!("mismatched labels were accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(&format!("segment `{id}` label 0, the segment table 2")),
        "{err}"
    );
}

#[test]
fn empty_train_split_is_an_error() {
    let fx = Fixture::new([0, 1, 1], 1, 11);
    let err = fx
        .run(&Params::default(), 1, "out")
        .unwrap_err()
        .to_string();
    assert!(err.contains("train split has no segments"), "{err}");
}

#[test]
fn params_default_to_cell_and_reject_unknown_keys() {
    let stage = kind();
    let canon = |yaml: &str| stage.canonical_params(&serde_yaml::from_str(yaml).unwrap());
    assert_eq!(canon("null").unwrap(), serde_json::json!({"mode": "cell"}));
    assert_eq!(
        canon("mode: band").unwrap(),
        serde_json::json!({"mode": "band"})
    );
    assert!(canon("mode: global").is_err());
    assert_eq!(
        canon("mdoe: band").unwrap_err().key.as_deref(),
        Some("mdoe")
    );
}
