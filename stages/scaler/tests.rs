//! Tests for the `scaler` stage: exactness against a naive reference, zero-variance cells, thread-count
//! independence, the fit set recorded in lineage, and input cross-checks.
//!
//! Also the contract between the scaler and every consumer: the reader in `common::scaled_reader` gives, bit
//! for bit, the values of the scaled copy the scaler used to store (its writer is kept here as the
//! reference), whatever the thread count, and the baseline's output is unchanged by reading through it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::*;
use crate::common::scaled_reader::{ScaledFeatures, ScalerStats, BATCH_ROWS as READ_ROWS};
use crate::common::split_tensors::write_split;
use crate::common::tables::SPLITS;
use crate::common::tables::{Segment, SegmentTable};
use genrelab_contract::{local_inputs, write_canonical_json, StageContext};

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
                    split: *split,
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
fn random_values(table: &SegmentTable, seed: u64) -> BTreeMap<Split, Vec<f32>> {
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

/// Writes `features@<split>` for every split into `dir`.
fn write_features(dir: &Path, table: &SegmentTable, values: &BTreeMap<Split, Vec<f32>>) {
    for split in SPLITS {
        let labels: Vec<u32> = table.of_split(split).map(|s| s.label).collect();
        let path = dir.join(split.artifact("features"));
        write_split(&path, split, (MELS, FRAMES), &values[&split], &labels).unwrap();
    }
}

/// A reader over every split's features in `dir` through the statistics at `scaler`.
fn open_all(dir: &Path, scaler: &Path) -> ScaledFeatures {
    let paths: Vec<(Split, PathBuf)> = SPLITS
        .iter()
        .map(|&s| (s, dir.join(s.artifact("features"))))
        .collect();
    let splits: Vec<(Split, &Path)> = paths.iter().map(|(s, p)| (*s, p.as_path())).collect();
    ScaledFeatures::open(scaler, &splits).unwrap()
}

struct Fixture {
    dir: tempfile::TempDir,
    /// The segments the features tensors were computed for.
    table: SegmentTable,
    /// The segment table handed to the stage (normally equal to `table`).
    listed: SegmentTable,
    values: BTreeMap<Split, Vec<f32>>,
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
        let segments = self.dir.path().join("segments");
        write_features(self.dir.path(), &self.table, &self.values);
        write_canonical_json(&segments, &self.listed).unwrap();
        let out_dir = self.dir.path().join(out);
        std::fs::create_dir_all(&out_dir).unwrap();
        // What the kind declares: train rows only.
        let train = self.dir.path().join("features@train");
        let inputs = local_inputs([("features@train", train), ("segments", segments)]);
        let ctx = StageContext::new(
            "scaler",
            [0; 32],
            threads,
            inputs,
            None,
            out_dir.clone(),
            vec!["scaler"],
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
    let train = &fx.values[&Split::Train];
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
    let train = &fx.values[&Split::Train];
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
    for split in [Split::Train, Split::Val] {
        for row in fx.values.get_mut(&split).unwrap().chunks_mut(cells) {
            row[5] = -37.3;
        }
    }
    let fitted = fit_values(&fx.values[&Split::Train], Mode::Cell);
    assert_eq!(fitted.mean[5], f64::from(-37.3f32));
    assert_eq!(fitted.std[5], 1.0);
    assert!(fitted
        .std
        .iter()
        .enumerate()
        .all(|(c, &s)| c == 5 || s != 1.0));

    let (_, out) = fx.run(&Params::default(), 1, "out").unwrap();
    let reader = open_all(fx.dir.path(), &out.join("scaler"));
    let val = read_all(&reader, &fx.listed, Split::Val);
    assert!(val.chunks(cells).all(|row| row[5] == 0.0));
}

#[test]
fn scaled_values_use_train_statistics_on_every_split() {
    let fx = Fixture::new([12, 3, 4], 2, 4);
    let (report, out) = fx.run(&Params::default(), 2, "out").unwrap();
    let fitted = fit_values(&fx.values[&Split::Train], Mode::Cell);

    let stats = TensorFile::open(&out.join("scaler")).unwrap();
    let mean = stats.tensor("mean").unwrap();
    assert_eq!(mean.shape, vec![MELS, FRAMES]);
    assert_eq!(mean.to_f64(), fitted.mean);
    assert_eq!(stats.tensor("std").unwrap().to_f64(), fitted.std);
    assert_eq!(stats.tensor("count").unwrap().to_u32(), vec![24]);

    let reader = open_all(fx.dir.path(), &out.join("scaler"));
    let cells = MELS * FRAMES;
    for split in SPLITS {
        let rows = reader.split(&fx.listed, split).unwrap();
        let input = &fx.values[&split];
        assert_eq!(rows.rows(), input.len() / cells);
        assert_eq!(rows.dims(), (MELS, FRAMES));
        for (k, (&y, &x)) in read_all(&reader, &fx.listed, split)
            .iter()
            .zip(input)
            .enumerate()
        {
            let c = k % cells;
            let expected = ((f64::from(x) - fitted.mean[c]) / fitted.std[c]) as f32;
            assert_eq!(y, expected, "{split} value {k}");
        }
        let labels: Vec<u32> = fx.table.of_split(split).map(|s| s.label).collect();
        assert_eq!(rows.labels(), labels);
    }
    // Standardised train data: each cell has mean 0 and population std 1.
    let train = read_all(&reader, &fx.listed, Split::Train);
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
        let a = std::fs::read(one.join("scaler")).unwrap();
        let b = std::fs::read(four.join("scaler")).unwrap();
        assert!(!a.is_empty());
        assert_eq!(a, b, "scaler differs between 1 and 4 threads ({mode:?})");
        assert_eq!(
            std::fs::read_dir(&one).unwrap().count(),
            1,
            "only `scaler` is written"
        );
        assert_eq!(r1.lineage, r4.lineage);
        assert_eq!(r1.summary, r4.summary);
    }
}

#[test]
fn lineage_names_the_exact_fit_set() {
    let fx = Fixture::new([3, 2, 1], 2, 6);
    let (report, _) = fx.run(&Params { mode: Mode::Band }, 1, "out").unwrap();
    let lineage = &report.lineage;
    assert_eq!(lineage.details["mode"], "band");
    let ids = [
        "c0/train.000#0",
        "c0/train.000#1",
        "c1/train.001#0",
        "c1/train.001#1",
        "c2/train.002#0",
        "c2/train.002#1",
    ];
    // The scaler applies its statistics to nothing itself: its one record is the fit.
    assert_eq!(
        lineage.records,
        [Record::Fit {
            what: "scaler statistics".into(),
            split: Split::Train,
            tracks: vec![
                "c0/train.000".into(),
                "c1/train.001".into(),
                "c2/train.002".into()
            ],
            segments: 6,
            segment_ids_digest: genrelab_contract::ids_digest(ids),
        }]
    );
    assert!(report.summary[0].contains("(per band)"));
}

#[test]
fn val_and_test_values_do_not_change_the_fit() {
    let fx = Fixture::new([5, 2, 2], 2, 7);
    let (_, a) = fx.run(&Params::default(), 1, "a").unwrap();
    let mut other = Fixture::new([5, 2, 2], 2, 8);
    other
        .values
        .insert(Split::Train, fx.values[&Split::Train].clone());
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
    // The features keep the original labels; the table handed to the stage says otherwise.
    let seg = fx
        .listed
        .segments
        .iter_mut()
        .find(|s| s.split == Split::Train)
        .unwrap();
    seg.label = 2;
    let id = seg.id.clone();
    let err = fx
        .run(&Params::default(), 1, "out")
        .unwrap_err()
        .to_string();
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

/// Every standardised value of `split`, row after row, read batch by batch.
fn read_all(reader: &ScaledFeatures, table: &SegmentTable, split: Split) -> Vec<f32> {
    let rows = reader.split(table, split).unwrap();
    let mut out = Vec::new();
    for batch in rows.batches() {
        assert_eq!(batch.start * rows.row_len(), out.len(), "batches in order");
        assert!(!batch.is_empty() && batch.len() <= READ_ROWS);
        let by_row: Vec<f32> = (0..batch.len())
            .flat_map(|k| batch.row(k).to_vec())
            .collect();
        assert_eq!(bits(&by_row), bits(batch.values()));
        out.extend_from_slice(batch.values());
    }
    assert_eq!(out.len(), rows.rows() * rows.row_len());
    out
}

/// The statistics a `scaler` artifact holds, as the fit returned them.
fn stored_fit(path: &Path) -> Fitted {
    let stats = ScalerStats::read(path).unwrap();
    Fitted {
        mode: if stats.shape.len() == 2 {
            Mode::Cell
        } else {
            Mode::Band
        },
        n_mels: MELS,
        frames: FRAMES,
        count: stats.count as usize,
        mean: stats.mean,
        std: stats.std,
    }
}

/// The scaler's former `scaled` output, written exactly as the stage wrote it before consumers read through
/// `scaled_reader`: the features file's layout, values `(x - mean) / std` in f64 rounded once to f32. The
/// reference the reader must match bit for bit.
fn write_scaled_copy(features: &Path, fitted: &Fitted, out: &Path) {
    std::fs::create_dir_all(out).unwrap();
    let cells = fitted.n_mels * fitted.frames;
    let (mean, std): (Vec<f64>, Vec<f64>) = (0..cells)
        .map(|c| {
            let k = fitted.stat_index(c);
            (fitted.mean[k], fitted.std[k])
        })
        .unzip();
    let mut row = Vec::new();
    for split in SPLITS {
        let name = split.artifact("features");
        let file = TensorFile::open(&features.join(&name)).unwrap();
        let t = file.tensor(split.name()).unwrap();
        let mut scaled = Vec::new();
        for i in 0..t.rows() {
            t.row_f32_into(i, &mut row);
            scaled.extend(
                row.iter()
                    .zip(mean.iter().zip(&std))
                    .map(|(&x, (&m, &s))| ((f64::from(x) - m) / s) as f32),
            );
        }
        let labels = file.tensor(&format!("{split}_labels")).unwrap().to_u32();
        let dims = (fitted.n_mels, fitted.frames);
        write_split(&out.join(&name), split, dims, &scaled, &labels).unwrap();
    }
}

/// A `scaler` artifact with the given statistics.
fn write_stats(path: &Path, shape: Vec<usize>, mean: &[f64], std: &[f64]) {
    let stats = ScalerStats {
        shape,
        mean: mean.to_vec(),
        std: std.to_vec(),
        count: 1,
    };
    stats.write(path).unwrap();
}

/// One split's stored values in a per-split features folder.
fn stored(dir: &Path, split: Split) -> (Vec<f32>, Vec<u32>) {
    let file = TensorFile::open(&dir.join(split.artifact("features"))).unwrap();
    let values = file.tensor(split.name()).unwrap().to_f32();
    (
        values,
        file.tensor(&format!("{split}_labels")).unwrap().to_u32(),
    )
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn the_reader_gives_exactly_the_former_scaled_copy_on_every_split() {
    // 80, 70 and 66 rows: every split crosses a batch boundary.
    let fx = Fixture::new([40, 35, 33], 2, 13);
    let features = fx.dir.path();
    for mode in [Mode::Cell, Mode::Band] {
        let (_, out) = fx.run(&Params { mode }, 2, mode.name()).unwrap();
        let fitted = stored_fit(&out.join("scaler"));
        assert_eq!(fitted, fit_values(&fx.values[&Split::Train], mode));
        let copy_path = out.join("scaled-copy");
        write_scaled_copy(features, &fitted, &copy_path);

        let reader = open_all(features, &out.join("scaler"));
        for split in SPLITS {
            let (expected, labels) = stored(&copy_path, split);
            let streamed = read_all(&reader, &fx.listed, split);
            assert_eq!(bits(&streamed), bits(&expected), "{split} ({mode:?})");

            // Random access and the row map give the same bits as the stream.
            let rows = reader.split(&fx.listed, split).unwrap();
            let (mut raw, mut row) = (Vec::new(), Vec::new());
            for i in (0..rows.rows()).rev() {
                rows.row_into(i, &mut raw, &mut row);
                let want = &expected[i * rows.row_len()..(i + 1) * rows.row_len()];
                assert_eq!(bits(&row), bits(want), "{split} row {i} ({mode:?})");
            }
            let mapped: Vec<f32> = rows.map_rows(<[f32]>::to_vec).concat();
            assert_eq!(
                bits(&mapped),
                bits(&expected),
                "{split} map_rows ({mode:?})"
            );
            assert_eq!(rows.labels(), labels);
        }
    }
}

#[test]
fn the_reader_is_byte_identical_across_thread_counts() {
    let fx = Fixture::new([70, 40, 5], 2, 14);
    for mode in [Mode::Cell, Mode::Band] {
        let (_, out) = fx.run(&Params { mode }, 1, mode.name()).unwrap();
        let read_with = |threads: usize| -> Vec<u8> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let reader = open_all(fx.dir.path(), &out.join("scaler"));
                let mut bytes = Vec::new();
                for split in SPLITS {
                    for v in read_all(&reader, &fx.listed, split) {
                        bytes.extend_from_slice(&v.to_le_bytes());
                    }
                    let rows = reader.split(&fx.listed, split).unwrap();
                    for sum in rows.map_rows(|r| r.iter().map(|&x| f64::from(x)).sum::<f64>()) {
                        bytes.extend_from_slice(&sum.to_le_bytes());
                    }
                }
                bytes
            })
        };
        let one = read_with(1);
        assert!(!one.is_empty());
        assert_eq!(one, read_with(4), "{mode:?}");
    }
}

/// Runs the `baseline` stage kind on the given inputs; returns its summary, lineage and output bytes.
fn run_baseline(
    dir: &Path,
    features: &Path,
    scaler: PathBuf,
    segments: PathBuf,
) -> (Vec<String>, genrelab_contract::Lineage, Vec<u8>) {
    let stage = crate::baseline::kind();
    let params = stage.canonical_params(&serde_yaml::Value::Null).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let inputs = local_inputs([
        ("features@train", features.join("features@train")),
        ("features@val", features.join("features@val")),
        ("scaler", scaler),
        ("segments", segments),
    ]);
    let ctx = StageContext::new(
        "baseline",
        [0; 32],
        2,
        inputs,
        None,
        dir.to_path_buf(),
        vec!["baseline"],
    );
    let report = stage.run(&params, &ctx).unwrap();
    let bytes = std::fs::read(dir.join("baseline")).unwrap();
    (report.summary, report.lineage, bytes)
}

#[test]
fn the_baseline_reads_the_same_values_as_from_the_former_scaled_copy() {
    let fx = Fixture::new([40, 12, 6], 3, 15);
    let (_, out) = fx.run(&Params::default(), 2, "out").unwrap();
    let features = fx.dir.path();
    let segments = fx.dir.path().join("segments");
    let copy = out.join("scaled-copy");
    write_scaled_copy(features, &stored_fit(&out.join("scaler")), &copy);
    // The former path: the baseline read the scaled copy as it was. An identity scaler (mean 0, std 1) hands
    // the copy's values through unchanged, which the first assertion checks.
    let identity = out.join("identity");
    let cells = MELS * FRAMES;
    write_stats(
        &identity,
        vec![MELS, FRAMES],
        &vec![0.0; cells],
        &vec![1.0; cells],
    );
    let through = open_all(&copy, &identity);
    for split in SPLITS {
        let (values, _) = stored(&copy, split);
        assert_eq!(bits(&read_all(&through, &fx.listed, split)), bits(&values));
    }

    let former = run_baseline(&out.join("former"), &copy, identity, segments.clone());
    let now = run_baseline(&out.join("now"), features, out.join("scaler"), segments);
    assert_eq!(now.2, former.2, "baseline bytes differ");
    assert_eq!(now.1, former.1);
    assert_eq!(now.0, former.0);
}

#[test]
fn the_reader_refuses_statistics_that_do_not_fit_or_are_damaged() {
    let fx = Fixture::new([3, 2, 1], 1, 16);
    let (_, out) = fx.run(&Params::default(), 1, "out").unwrap();
    let stats = out.join("odd");
    let cells = MELS * FRAMES;

    write_stats(
        &stats,
        vec![MELS, FRAMES + 1],
        &vec![0.0; cells + MELS],
        &vec![1.0; cells + MELS],
    );
    let reader = open_all(fx.dir.path(), &stats);
    let err = match reader.split(&fx.listed, Split::Val) {
        Ok(_) => panic!("statistics of another shape were accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("statistics of shape [4, 4] do not fit the features' val segments of 4 x 3"),
        "{err}"
    );

    let mut std = vec![1.0; cells];
    std[3] = 0.0;
    write_stats(&stats, vec![MELS, FRAMES], &vec![0.0; cells], &std);
    let err = ScaledFeatures::open(&stats, &[]).err().unwrap().to_string();
    assert!(err.contains("std 3 is 0, not a positive number"), "{err}");

    let mut mean = vec![0.0; cells];
    mean[7] = f64::NAN;
    write_stats(&stats, vec![MELS, FRAMES], &mean, &vec![1.0; cells]);
    let err = ScaledFeatures::open(&stats, &[]).err().unwrap().to_string();
    assert!(err.contains("mean 7 is NaN, not a finite number"), "{err}");
}
