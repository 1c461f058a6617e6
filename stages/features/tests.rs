//! Agreement with librosa 0.11 (numbers from the reference script's output, librosa_reference.txt), params
//! parsing, and the stage end to end on a tiny corpus written here.

use std::path::Path;

use super::mel::{hann_periodic, hz_to_mel, mel_frequencies, mel_to_hz};
use super::*;
use crate::common::tables::{Segment, SegmentTable, Track, TrackTable};
use crate::common::tensors::TensorFile;
use genrelab_contract::{local_inputs, write_canonical_json, DatasetView};

const SR: u32 = 22050;
const N: usize = 66150;
/// Tolerance per dB cell (the reference notes' recommendation; an f64 recipe lands near 1e-5).
const DB_TOL: f64 = 1e-3;
/// Relative tolerance on powers, equivalent to 1e-3 dB.
const POWER_REL_TOL: f64 = 2.3e-4;

fn close(actual: f64, expected: f64, tol: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= tol,
        "{what}: got {actual}, expected {expected} (tolerance {tol})"
    );
}

fn close_rel(actual: f64, expected: f64, rel: f64, what: &str) {
    let tol = rel * expected.abs();
    close(actual, expected, tol, what);
}

/// The reference script's signal A in f64: a 440 Hz sine plus a 100 -> 8000 Hz linear chirp over 3 s.
fn signal_a_f64() -> Vec<f64> {
    let two_pi = 2.0 * std::f64::consts::PI;
    (0..N)
        .map(|n| {
            let t = n as f64 / f64::from(SR);
            0.5 * (two_pi * 440.0 * t).sin()
                + 0.25 * (two_pi * (100.0 * t + (8000.0 - 100.0) / (2.0 * 3.0) * t * t)).sin()
        })
        .collect()
}

fn signal_a() -> Vec<f32> {
    signal_a_f64().into_iter().map(|v| v as f32).collect()
}

/// Signal A as 16-bit PCM: `round(y * 32767)` (no sample sits on a rounding tie).
fn signal_a_pcm16() -> Vec<i16> {
    signal_a_f64()
        .into_iter()
        .map(|v| (v * 32767.0).round() as i16)
        .collect()
}

/// The reference script's signal B: a 1 kHz sine plus white noise from a u32 LCG.
fn signal_b() -> Vec<f32> {
    let two_pi = 2.0 * std::f64::consts::PI;
    let mut s: u32 = 12345;
    (0..N)
        .map(|n| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = 2.0 * (f64::from(s) / 4_294_967_296.0) - 1.0;
            let t = n as f64 / f64::from(SR);
            (0.3 * (two_pi * 1000.0 * t).sin() + 0.1 * noise) as f32
        })
        .collect()
}

fn params_ref_one() -> Params {
    Params {
        reference: Reference::Value(1.0),
        ..Params::default()
    }
}

fn extractor(params: &Params) -> MelExtractor {
    MelExtractor::new(params, SR).expect("valid params")
}

fn log_mel(params: &Params, signal: &[f32]) -> Vec<f32> {
    let ex = extractor(params);
    let mut out = vec![0f32; ex.output_len(signal.len()).unwrap()];
    ex.log_mel(signal, &mut out).unwrap();
    out
}

/// Cell `(m, t)` of a mel x frame spectrogram with `frames` frames.
fn cell(values: &[f32], frames: usize, m: usize, t: usize) -> f64 {
    f64::from(values[m * frames + t])
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    sum / n as f64
}

// ---------------------------------------------------------------------------------------------- front end

#[test]
fn window_is_periodic_hann() {
    let w = hann_periodic(2048);
    let expected = [
        (0, 0.0),
        (1, 2.353095212e-06),
        (512, 0.5),
        (1024, 1.0),
        (1536, 0.5),
        (2047, 2.353095212e-06),
    ];
    for (i, v) in expected {
        close(w[i], v, 1e-15, &format!("w[{i}]"));
    }
    assert_eq!(extractor(&Params::default()).window(), &w[..]);
}

#[test]
fn frame_counts_match_librosa() {
    let centred = extractor(&Params::default());
    let uncentred = extractor(&Params {
        center: false,
        ..Params::default()
    });
    for (len, c, u) in [
        (66150, 130, 126),
        (661500, 1292, 1288),
        (661794, 1293, 1289),
        (660000, 1290, 1286),
        (655000, 1280, 1276),
        (2048, 5, 1),
        (4096, 9, 5),
    ] {
        assert_eq!(centred.frames(len).unwrap(), c, "center=True, L={len}");
        assert_eq!(uncentred.frames(len).unwrap(), u, "center=False, L={len}");
    }
    // The study's 2.97 s segments.
    assert_eq!(centred.frames(65_488).unwrap(), 128);
    assert!(uncentred.frames(2047).is_err());
    assert!(centred.frames(0).is_err());
}

#[test]
fn slaney_mel_scale_matches_librosa() {
    for (hz, mel) in [
        (0.0, 0.0),
        (440.0, 6.6),
        (1000.0, 15.0),
        (4000.0, 35.163760314617),
        (11025.0, 49.910594480159),
    ] {
        close(hz_to_mel(hz), mel, 1e-11, &format!("hz_to_mel({hz})"));
        close(
            mel_to_hz(hz_to_mel(hz)),
            hz,
            1e-9,
            &format!("round trip {hz}"),
        );
    }
    let mel_f = mel_frequencies(130, 0.0, 11025.0);
    assert_eq!(mel_f.len(), 130);
    let expected = [
        (0, 0.0),
        (1, 25.793588879),
        (2, 51.587177757),
        (3, 77.380766636),
        (4, 103.174355515),
        (5, 128.967944393),
        (14, 361.110244301),
        (15, 386.90383318),
        (16, 412.697422058),
        (17, 438.491010937),
        (125, 9912.178141232),
        (126, 10179.383431794),
        (127, 10453.791848276),
        (128, 10735.597567311),
        (129, 11025.0),
    ];
    for (i, v) in expected {
        close(mel_f[i], v, 1e-8, &format!("mel_f[{i}]"));
    }
}

#[test]
fn filter_bank_matches_librosa() {
    let ex = extractor(&Params::default());
    let fb = ex.filters();
    assert_eq!(fb.len(), 128);
    // (row, first bin, last bin, row sum, row max)
    for (m, first, last, sum, max) in [
        (0, 1, 4, 0.0903458819, 0.0323657058),
        (1, 3, 7, 0.0933738791, 0.0353937037),
        (2, 5, 9, 0.0937215011, 0.0357413255),
        (10, 24, 28, 0.0910411233, 0.0330609456),
        (40, 96, 101, 0.0908653784, 0.0295276381),
        (64, 182, 191, 0.0928004857, 0.0172788315),
        (100, 474, 499, 0.0929145045, 0.00705624465),
        (127, 971, 1023, 0.0928692422, 0.00348525052),
    ] {
        let row = &fb[m];
        assert_eq!(
            (row.first_bin, row.last_bin()),
            (first, last),
            "row {m} support"
        );
        assert!(
            row.weights.iter().all(|&w| w > 0.0),
            "row {m} has an interior zero"
        );
        let row_sum: f64 = row.weights.iter().map(|&w| f64::from(w)).sum();
        close_rel(row_sum, sum, 1e-7, &format!("row {m} sum"));
        let row_max = row.weights.iter().copied().fold(0f32, f32::max);
        close_rel(f64::from(row_max), max, 1e-7, &format!("row {m} max"));
    }
    let dense = |m: usize, k: usize| -> f64 {
        let row = &fb[m];
        k.checked_sub(row.first_bin)
            .and_then(|j| row.weights.get(j))
            .map_or(0.0, |&w| f64::from(w))
    };
    let weights = |m: usize, ks: std::ops::Range<usize>, expected: &[f64]| {
        assert_eq!(ks.len(), expected.len());
        for (k, &e) in ks.zip(expected) {
            close(dense(m, k), e, 1e-6 * e.max(1e-3), &format!("fb[{m},{k}]"));
        }
    };
    weights(0, 0..4, &[0.0, 0.016182853, 0.032365706, 0.028990088]);
    weights(
        1,
        5..13,
        &[
            0.035393704,
            0.019210853,
            0.003027999,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
        ],
    );
    weights(
        64,
        182..192,
        &[
            0.001080764,
            0.004899887,
            0.00871901,
            0.012538133,
            0.016357256,
            0.017278831,
            0.01355996,
            0.009841087,
            0.006122215,
            0.002403342,
        ],
    );
    weights(
        127,
        1000..1024,
        &[
            0.003126247,
            0.002995987,
            0.002865727,
            0.002735466,
            0.002605206,
            0.002474946,
            0.002344685,
            0.002214425,
            0.002084165,
            0.001953905,
            0.001823644,
            0.001693384,
            0.001563124,
            0.001432863,
            0.001302603,
            0.001172343,
            0.001042082,
            0.000911822,
            0.000781562,
            0.000651301,
            0.000521041,
            0.000390781,
            0.000260521,
            0.00013026,
        ],
    );
    // The Nyquist bin is in no row; no row is empty.
    assert!(fb
        .iter()
        .all(|row| row.last_bin() < 1024 && !row.weights.is_empty()));
    let total: f64 = fb
        .iter()
        .flat_map(|row| row.weights.iter().map(|&w| f64::from(w)))
        .sum();
    close_rel(total, 11.8866813, 1e-7, "sum of all weights");
}

#[test]
fn impulse_gives_window_squared_times_row_sums() {
    let ex = extractor(&Params::default());
    let mut delta = vec![0f32; N];
    delta[64 * 512] = 1.0;
    let frames = ex.frames(N).unwrap();
    let mel = ex.mel_power(&delta).unwrap();
    let w = ex.window();
    for t in 62..=66usize {
        // Frame t holds the impulse at window index 1024 + (64 - t) * 512.
        let idx = 1024 + (64 - t as i64) * 512;
        let w2 = usize::try_from(idx)
            .ok()
            .and_then(|i| w.get(i))
            .map_or(0.0, |v| v * v);
        for (m, row) in ex.filters().iter().enumerate() {
            let row_sum: f64 = row.weights.iter().map(|&v| f64::from(v)).sum();
            close(
                mel[m * frames + t],
                w2 * row_sum,
                1e-12,
                &format!("mel[{m},{t}]"),
            );
        }
    }
    assert!(
        mel[64 * frames + 64] > 0.09,
        "the impulse frame is not empty"
    );
}

#[test]
fn signal_a_power_and_mel_power_match_librosa() {
    let y = signal_a();
    for (i, v) in [
        (0, 0.0),
        (1, 0.06965234),
        (2, 0.13832578),
        (3, 0.2050483),
        (1000, 0.10921694338321686),
    ] {
        close(f64::from(y[i]), v, 1e-8, &format!("y32[{i}]"));
    }
    let ex = extractor(&Params::default());
    let frames = ex.frames(N).unwrap();
    assert_eq!(frames, 130);
    let power = ex.power_spectrogram(&y).unwrap();
    assert_eq!(power.len(), 1025 * frames);
    let p = |k: usize, t: usize| power[k * frames + t];
    for (k, t, v) in [
        (41, 64, 64058.6172),
        (42, 64, 10587.7412),
        (0, 0, 162.692657),
        (100, 10, 2.34606546e-06),
    ] {
        close_rel(p(k, t), v, 1e-6, &format!("P[{k},{t}]"));
    }
    // The 440 Hz sine dominates every frame at bin 41.
    for t in [0, 32, 64, 96, 129] {
        let argmax = (0..1025)
            .max_by(|&a, &b| p(a, t).total_cmp(&p(b, t)))
            .unwrap();
        assert_eq!(argmax, 41, "frame {t}");
    }

    let mel = ex.mel_power(&y).unwrap();
    let m = |b: usize, t: usize| mel[b * frames + t];
    for (b, t, v) in [
        (0, 0, 16.5176773),
        (10, 0, 2.89161849),
        (20, 64, 0.000180402654),
        (21, 64, 4.32806119e-05),
        (40, 10, 3.39148215e-07),
        (60, 100, 1.80178598e-11),
        (100, 129, 0.000814488681),
        (127, 64, 1.17463141e-14),
        (127, 129, 0.00746953394),
    ] {
        close_rel(m(b, t), v, POWER_REL_TOL, &format!("M[{b},{t}]"));
    }
    close_rel(mel.iter().sum(), 538768.026, 1e-6, "mel power sum");
    let (argmax, max) = mel
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap();
    assert_eq!((argmax / frames, argmax % frames), (16, 6));
    close_rel(*max, 3907.51514, 1e-6, "mel max");
}

#[test]
fn signal_a_db_matches_librosa() {
    let y = signal_a();
    let db = log_mel(&params_ref_one(), &y);
    assert_eq!(db.len(), 128 * 130);
    let max = db.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let min = db.iter().copied().fold(f32::INFINITY, f32::min);
    close(f64::from(max), 35.919006, DB_TOL, "max dB");
    close(f64::from(min), -44.080994, DB_TOL, "min dB");
    close(
        mean(db.iter().map(|&v| f64::from(v))),
        -38.688325,
        DB_TOL,
        "mean dB",
    );
    for (m, t, v) in [
        (0, 0, 12.179490),
        (10, 0, 4.611410),
        (20, 64, -37.437572),
        (21, 64, -43.637066),
        (40, 10, -44.080994),
        (60, 100, -44.080994),
        (100, 129, -30.891151),
        (127, 64, -44.080994),
        (127, 129, -21.267067),
    ] {
        close(cell(&db, 130, m, t), v, DB_TOL, &format!("dB[{m},{t}]"));
    }
    let clamped = db.iter().filter(|&&v| v <= max - 80.0 + 1e-4).count();
    assert_eq!(clamped, 14084, "cells clamped at max - 80 dB");

    let db_max = log_mel(&Params::default(), &y);
    for (m, t, v) in [
        (0, 0, -23.739517),
        (10, 0, -31.307596),
        (20, 64, -73.356583),
        (21, 64, -79.556076),
    ] {
        close(
            cell(&db_max, 130, m, t),
            v,
            DB_TOL,
            &format!("dBmax[{m},{t}]"),
        );
    }
    close(
        mean(db_max.iter().map(|&v| f64::from(v))),
        -74.607331,
        DB_TOL,
        "mean dBmax",
    );
    assert_eq!(
        db_max.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        0.0
    );
    assert_eq!(db_max.iter().copied().fold(f32::INFINITY, f32::min), -80.0);
}

#[test]
fn signal_b_db_matches_librosa() {
    let y = signal_b();
    for (i, v) in [
        (0, -0.09591946),
        (1, -0.012357096),
        (2, 0.17049639),
        (3, 0.25332355),
    ] {
        close(f64::from(y[i]), v, 1e-8, &format!("yB[{i}]"));
    }
    close(
        y.iter().map(|&v| f64::from(v)).sum(),
        -8.82802098838,
        1e-9,
        "sum(yB)",
    );

    let ex = extractor(&Params::default());
    close_rel(
        ex.mel_power(&y).unwrap().iter().sum(),
        177637.857,
        1e-6,
        "mel power sum",
    );

    let db = log_mel(&params_ref_one(), &y);
    let db_max = log_mel(&Params::default(), &y);
    let values = || db.iter().map(|&v| f64::from(v));
    close(values().fold(f64::MIN, f64::max), 29.946388, DB_TOL, "max");
    close(values().fold(f64::MAX, f64::min), -20.412918, DB_TOL, "min");
    let mu = mean(values());
    close(mu, -6.113851, DB_TOL, "mean");
    close(
        mean(values().map(|v| (v - mu).powi(2))).sqrt(),
        5.241256,
        DB_TOL,
        "std",
    );
    // Sums over 16,640 cells: per-cell errors are ~1e-6 dB and of both signs.
    close(values().sum(), -101734.4785, 0.05, "sum(dB)");
    close(
        values().map(|v| v * v).sum(),
        1079102.8704,
        0.5,
        "sum(dB^2)",
    );
    for (m, t, v, vmax) in [
        (0, 0, -5.969685, -35.916073),
        (10, 0, -5.555699, -35.502087),
        (20, 64, -8.378950, -38.325340),
        (21, 64, -2.063988, -32.010376),
        (40, 10, -14.642570, -44.588959),
        (60, 100, -7.326464, -37.272854),
        (100, 129, -6.827008, -36.773396),
        (127, 64, -7.191282, -37.137669),
        (127, 129, -7.913064, -37.859451),
    ] {
        close(cell(&db, 130, m, t), v, DB_TOL, &format!("dBB[{m},{t}]"));
        close(
            cell(&db_max, 130, m, t),
            vmax,
            DB_TOL,
            &format!("dBB ref=max [{m},{t}]"),
        );
    }
    let frame_mean = |db: &[f32], t: usize| mean((0..128).map(|m| cell(db, 130, m, t)));
    for (t, v) in [
        (0, -6.87401),
        (1, -5.76927),
        (2, -6.41309),
        (64, -6.27957),
        (127, -6.35316),
        (128, -5.44716),
        (129, -5.5663),
    ] {
        close(frame_mean(&db, t), v, 1e-4, &format!("frame {t} mean"));
    }
    for (m, v) in [
        (0, -7.21084),
        (1, -7.137),
        (15, -8.55457),
        (30, -7.5562),
        (64, -6.91859),
        (100, -6.59133),
        (127, -6.35995),
    ] {
        close(
            mean((0..130).map(|t| cell(&db, 130, m, t))),
            v,
            1e-4,
            &format!("band {m} mean"),
        );
    }

    let reflect = log_mel(
        &Params {
            pad_mode: PadMode::Reflect,
            ..params_ref_one()
        },
        &y,
    );
    for (t, v) in [
        (0, -2.97332),
        (1, -4.45693),
        (2, -6.41309),
        (128, -4.69872),
        (129, -2.66798),
    ] {
        close(
            frame_mean(&reflect, t),
            v,
            1e-4,
            &format!("reflect frame {t} mean"),
        );
    }
}

#[test]
fn reflect_padding_changes_only_the_edge_frames() {
    let y = signal_a();
    let constant = log_mel(&params_ref_one(), &y);
    let reflect = log_mel(
        &Params {
            pad_mode: PadMode::Reflect,
            ..params_ref_one()
        },
        &y,
    );
    let differing: Vec<usize> = (0..130)
        .filter(|&t| (0..128).any(|m| cell(&constant, 130, m, t) != cell(&reflect, 130, m, t)))
        .collect();
    assert_eq!(differing, vec![0, 1, 128, 129]);
    close(
        cell(&reflect, 130, 20, 0),
        13.959467,
        DB_TOL,
        "reflect dB[20,0]",
    );
    close(
        cell(&constant, 130, 20, 0),
        7.938900,
        DB_TOL,
        "constant dB[20,0]",
    );
}

#[test]
fn ref_max_is_ref_one_shifted_by_the_segment_max_then_clipped() {
    for y in [signal_a(), signal_b()] {
        let raw = log_mel(
            &Params {
                top_db: None,
                ..params_ref_one()
            },
            &y,
        );
        let db_max = log_mel(&Params::default(), &y);
        let top = raw.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for (r, m) in raw.iter().zip(&db_max) {
            let expected = (f64::from(*r) - f64::from(top)).max(-80.0);
            close(f64::from(*m), expected, 1e-4, "ref=max cell");
            assert!((-80.0..=0.0).contains(m));
        }
    }
}

#[test]
fn study_segment_length_gives_128_by_128() {
    let y = signal_b();
    let ex = extractor(&Params::default());
    assert_eq!(ex.output_len(65_488).unwrap(), 128 * 128);
    let mut out = vec![0f32; 128 * 128];
    ex.log_mel(&y[..65_488], &mut out).unwrap();
    assert!(out.iter().all(|v| (-80.0..=0.0).contains(v)));
    assert!(out.contains(&0.0));
    // A wrongly sized buffer is an error, not a panic.
    assert!(ex.log_mel(&y[..65_488], &mut out[1..]).is_err());
    assert!(ex.log_mel(&y, &mut out).is_err());
}

// ---------------------------------------------------------------------------------------------- params

fn canonical(yaml: &str) -> Result<serde_json::Value, String> {
    let raw: serde_yaml::Value = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
    kind().canonical_params(&raw).map_err(|e| e.message)
}

#[test]
fn params_parse_ref_forms_and_canonical_json_is_stable() {
    let defaults = canonical("").unwrap();
    assert_eq!(
        serde_json::to_string(&defaults).unwrap(),
        r#"{"amin":1e-10,"center":true,"fmax":null,"fmin":0.0,"hop_length":512,"n_fft":2048,"n_mels":128,"pad_mode":"constant","power":2.0,"ref":"max","top_db":80.0}"#
    );
    assert_eq!(canonical("ref: max").unwrap(), defaults);
    for yaml in ["ref: 1.0", "ref: 1"] {
        let value = canonical(yaml).unwrap();
        assert_eq!(value["ref"], serde_json::json!(1.0), "{yaml}");
        let typed: Params = serde_json::from_value(value).unwrap();
        assert_eq!(typed.reference, Reference::Value(1.0));
    }
    // Canonical form is a fixed point.
    let custom = canonical("ref: 2.5\ntop_db: null\npad_mode: reflect\nfmax: 8000").unwrap();
    let again = canonical(&serde_json::to_string(&custom).unwrap()).unwrap();
    assert_eq!(custom, again);
    let typed: Params = serde_json::from_value(custom).unwrap();
    assert_eq!(typed.top_db, None);
    assert_eq!(typed.pad_mode, PadMode::Reflect);
    assert_eq!(typed.fmax, Some(8000.0));

    assert!(canonical("n_mel: 64").unwrap_err().contains("n_mel"));
    assert!(canonical("ref: mean").is_err());
    assert!(canonical("ref: -1").is_err());
    assert!(canonical("pad_mode: edge").is_err());
}

#[test]
fn invalid_params_are_errors() {
    let bad = [
        // Mel bands narrower than an FFT bin leave some filters empty.
        Params {
            n_fft: 256,
            ..Params::default()
        },
        Params {
            fmax: Some(20000.0),
            ..Params::default()
        },
        Params {
            hop_length: 0,
            ..Params::default()
        },
        Params {
            amin: 0.0,
            ..Params::default()
        },
        Params {
            top_db: Some(-1.0),
            ..Params::default()
        },
    ];
    for params in bad {
        assert!(MelExtractor::new(&params, SR).is_err(), "{params:?}");
    }
}

// ---------------------------------------------------------------------------------------------- stage

fn write_wav(path: &Path, samples: &[i16]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: SR,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for &s in samples {
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
}

fn lcg_pcm(seed: u32, len: usize) -> Vec<i16> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((s >> 16) as i16) / 4
        })
        .collect()
}

/// A corpus of five tracks in two classes, 66,150-sample segments, split 2 / 1 / 2 tracks.
struct Corpus {
    dir: tempfile::TempDir,
    tracks: TrackTable,
    segments: SegmentTable,
}

fn corpus() -> Corpus {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    // (id, label, samples, split, segment count)
    let specs: [(&str, u32, Vec<i16>, Split, u32); 5] = [
        ("a/a.00", 0, lcg_pcm(1, 2 * N + 100), Split::Train, 2),
        ("b/b.00", 1, lcg_pcm(2, N), Split::Train, 1),
        ("a/a.01", 0, lcg_pcm(3, 3 * N), Split::Val, 3),
        ("a/a.02", 0, signal_a_pcm16(), Split::Test, 1),
        ("b/b.01", 1, lcg_pcm(4, 2 * N - 1), Split::Test, 1),
    ];
    let mut tracks = Vec::new();
    let mut segments = Vec::new();
    for (id, label, pcm, split, count) in &specs {
        let rel = format!("{id}.wav");
        let path = root.join(&rel);
        write_wav(&path, pcm);
        let decoded = audio::decode_file(&path, SR).unwrap();
        tracks.push(Track {
            id: id.to_string(),
            class: id.split('/').next().unwrap().to_string(),
            label: *label,
            path: rel,
            samples: decoded.samples.len() as u64,
            source_rate: SR,
            source_channels: 1,
            file_digest: blake3::hash(&std::fs::read(&path).unwrap())
                .to_hex()
                .to_string(),
            audio_digest: audio::audio_digest(&decoded.samples),
            warnings: vec![],
        });
        for index in 0..*count {
            segments.push(Segment {
                id: format!("{id}#{index}"),
                track: id.to_string(),
                split: *split,
                label: *label,
                index,
                start: u64::from(index) * N as u64,
            });
        }
    }
    tracks.sort_by(|a, b| a.id.cmp(&b.id));
    segments.sort_by(|a, b| (a.split, &a.track, a.index).cmp(&(b.split, &b.track, b.index)));
    Corpus {
        dir,
        tracks: TrackTable {
            sample_rate: SR,
            classes: vec!["a".into(), "b".into()],
            tracks,
        },
        segments: SegmentTable {
            sample_rate: SR,
            segment_samples: N as u64,
            segments_per_track: 3,
            segments,
            short_tracks: vec![],
        },
    }
}

/// Run the stage on the corpus with `threads` workers; returns the report and the output file's path.
fn run_stage(
    corpus: &Corpus,
    params: &Params,
    threads: usize,
    out: &str,
) -> Result<(StageReport, std::path::PathBuf), StageError> {
    let base = corpus.dir.path();
    let tracks_path = base.join("tracks.json");
    let segments_path = base.join("segments.json");
    write_canonical_json(&tracks_path, &corpus.tracks).unwrap();
    write_canonical_json(&segments_path, &corpus.segments).unwrap();
    let out_dir = base.join(out);
    std::fs::create_dir_all(&out_dir).unwrap();
    let inputs = local_inputs([("tracks", tracks_path), ("segments", segments_path)]);
    let dataset = DatasetView {
        root: base.join("data"),
        files: vec![],
        unlisted: vec![],
        digest: String::new(),
    };
    let ctx = StageContext::new(
        "features",
        [0; 32],
        threads,
        inputs,
        Some(dataset),
        out_dir.clone(),
        vec!["features@train", "features@val", "features@test"],
    );
    let params = serde_json::to_value(params).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let report = pool.install(|| kind().run(&params, &ctx))?;
    Ok((report, out_dir))
}

#[test]
fn stage_writes_split_tensors_in_segment_order_and_is_thread_independent() {
    let corpus = corpus();
    let (report, dir) = run_stage(&corpus, &Params::default(), 1, "one").unwrap();
    let (report4, dir4) = run_stage(&corpus, &Params::default(), 4, "four").unwrap();
    let file_of = |dir: &std::path::Path, split: Split| dir.join(split.artifact("features"));
    for split in SPLITS {
        let bytes = std::fs::read(file_of(&dir, split)).unwrap();
        assert_eq!(
            bytes,
            std::fs::read(file_of(&dir4, split)).unwrap(),
            "1 vs 4 threads"
        );
        // One split per file: a consumer handed this file holds no other split's rows.
        let names = TensorFile::open(&file_of(&dir, split)).unwrap().names();
        assert_eq!(names, vec![split.to_string(), format!("{split}_labels")]);
    }
    assert_eq!(report.lineage, report4.lineage);

    let ex = extractor(&Params::default());
    let mut expected_cell = vec![0f32; 128 * 130];
    for split in SPLITS {
        let segs: Vec<&Segment> = corpus.segments.of_split(split).collect();
        let file = TensorFile::open(&file_of(&dir, split)).unwrap();
        let features = file.tensor(split.name()).unwrap();
        assert_eq!(features.shape, vec![segs.len(), 128, 130], "{split}");
        let labels = file.tensor(&format!("{split}_labels")).unwrap().to_u32();
        assert_eq!(
            labels,
            segs.iter().map(|s| s.label).collect::<Vec<_>>(),
            "{split}"
        );
        // Each row is the pure extractor's output on that segment's samples.
        let mut row = Vec::new();
        for (i, seg) in segs.iter().enumerate() {
            let track = corpus
                .tracks
                .tracks
                .iter()
                .find(|t| t.id == seg.track)
                .unwrap();
            let audio = audio::decode_file(&corpus.dir.path().join("data").join(&track.path), SR)
                .unwrap()
                .samples;
            let start = seg.start as usize;
            ex.log_mel(&audio[start..start + N], &mut expected_cell)
                .unwrap();
            features.row_f32_into(i, &mut row);
            assert_eq!(row, expected_cell, "{}", seg.id);
        }
    }
    assert_eq!(
        report.lineage.details["shape"],
        serde_json::json!([128, 130])
    );
    let segments = |split, segments, tracks| Record::Segments {
        split,
        segments,
        tracks,
    };
    assert_eq!(
        report.lineage.records,
        [
            segments(Split::Train, 3, 2),
            segments(Split::Val, 3, 1),
            segments(Split::Test, 2, 2),
        ]
    );
    assert_eq!(
        report.summary,
        vec!["8 segments -> 128x130 log-mel (ref max, top_db 80)".to_string()]
    );

    // The 16-bit WAV of signal A (first test row) against librosa.load + melspectrogram + power_to_db(ref=max):
    // librosa's ref=1.0 values minus its maximum, 35.918755 dB.
    let test_file = TensorFile::open(&file_of(&dir, Split::Test)).unwrap();
    let test = test_file.tensor("test").unwrap();
    let mut row = Vec::new();
    test.row_f32_into(0, &mut row);
    for (m, t, v) in [
        (0, 0, 12.179208),
        (10, 0, 4.611198),
        (20, 64, -37.433731),
        (21, 64, -43.652134),
        (100, 129, -30.896099),
        (127, 129, -21.268845),
    ] {
        close(
            cell(&row, 130, m, t),
            v - 35.918755,
            DB_TOL,
            &format!("dB16[{m},{t}]"),
        );
    }
    close(
        mean(row.iter().map(|&v| f64::from(v))),
        -38.688553 - 35.918755,
        DB_TOL,
        "dB16 mean",
    );
}

#[test]
fn pcm16_signal_matches_the_reference_quantisation() {
    let q = signal_a_pcm16();
    assert_eq!(&q[..6], &[0, 2282, 4533, 6719, 8810, 10778]);
    assert_eq!(q[1000], 3579);
    assert_eq!(q.iter().map(|&v| i64::from(v)).sum::<i64>(), 284210);
}

#[test]
fn stage_rejects_audio_changed_since_ingest() {
    let corpus = corpus();
    let path = corpus.dir.path().join("data/b/b.00.wav");
    let mut pcm = lcg_pcm(2, N);
    pcm[10] = pcm[10].wrapping_add(1);
    write_wav(&path, &pcm);
    let err = run_stage(&corpus, &Params::default(), 2, "out")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("b.00.wav") && err.contains("changed since ingest"),
        "{err}"
    );

    write_wav(&path, &lcg_pcm(2, N + 1));
    let err = run_stage(&corpus, &Params::default(), 2, "out")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("b.00.wav") && err.contains("changed since ingest"),
        "{err}"
    );
}

#[test]
fn stage_rejects_segments_past_the_track_end() {
    let mut corpus = corpus();
    corpus.segments.segments[0].start = 2 * N as u64;
    let err = run_stage(&corpus, &Params::default(), 1, "out")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("a/a.00#0") && err.contains("ends past"),
        "{err}"
    );
}

#[test]
fn absurd_sizes_are_rejected_naming_the_param_and_the_limit() {
    for (params, text) in [
        (
            Params {
                n_fft: 1_000_000_000,
                ..Params::default()
            },
            "n_fft: 1000000000 is outside the limit 2..=65536",
        ),
        (
            Params {
                n_mels: 1_000_000_000,
                ..Params::default()
            },
            "n_mels: 1000000000 is outside the limit 1..=2048",
        ),
        (
            Params {
                hop_length: 0,
                ..Params::default()
            },
            "hop_length: 0 is outside the limit 1..=134217728",
        ),
    ] {
        let problems: Vec<String> = params.validate().iter().map(|p| p.to_string()).collect();
        assert_eq!(problems, [text]);
        let err = MelExtractor::new(&params, SR).unwrap_err().to_string();
        assert_eq!(err, format!("invalid feature params: {text}"));
    }
    assert_eq!(Params::default().validate(), []);
}

#[test]
fn every_param_problem_is_reported_at_once() {
    let params = Params {
        n_mels: 0,
        hop_length: 0,
        fmin: -1.0,
        fmax: Some(f64::INFINITY),
        power: 0.0,
        amin: f64::NAN,
        reference: Reference::Value(-2.0),
        top_db: Some(-1.0),
        ..Params::default()
    };
    let keys: Vec<String> = params.validate().into_iter().map(|p| p.key).collect();
    assert_eq!(
        keys,
        [
            "n_mels",
            "hop_length",
            "fmin",
            "fmax",
            "power",
            "amin",
            "ref",
            "top_db"
        ]
    );
}

#[test]
fn relations_between_params_are_checked_without_a_sample_rate() {
    let problems = |params: Params| -> Vec<String> {
        params.validate().iter().map(|p| p.to_string()).collect()
    };
    // 32 bins strictly between 0 Hz and Nyquist serve at most 62 bands.
    let too_many = Params {
        n_fft: 64,
        n_mels: 63,
        ..Params::default()
    };
    assert_eq!(
        problems(too_many),
        ["n_mels: 63 bands cannot each cover an FFT bin with n_fft 64: at most 62; raise n_fft or lower n_mels"]
    );
    let fewer = Params {
        n_fft: 64,
        n_mels: 20,
        ..Params::default()
    };
    assert_eq!(problems(fewer), Vec::<String>::new());
    let inverted = Params {
        fmin: 4000.0,
        fmax: Some(2000.0),
        ..Params::default()
    };
    assert_eq!(problems(inverted), ["fmax: 2000 must be above fmin (4000)"]);
    // fmax above Nyquist needs the sample rate: left to the front end, which still rejects it.
    let high = Params {
        fmax: Some(20000.0),
        ..Params::default()
    };
    assert_eq!(problems(high.clone()), Vec::<String>::new());
    let err = MelExtractor::new(&high, SR).unwrap_err().to_string();
    assert!(err.contains("fmax must lie in"), "{err}");
}

#[test]
fn the_band_limit_never_rejects_a_bank_that_builds() {
    // The plan-time bound is a necessary condition: every bank it rejects fails to build at any rate.
    for n_fft in [8usize, 16, 33, 64] {
        for n_mels in 1..=2 * n_fft {
            let params = Params {
                n_fft,
                n_mels,
                ..Params::default()
            };
            if !params.validate().is_empty() {
                for sr in [8000u32, 22050, 44100] {
                    let nyquist = f64::from(sr) / 2.0;
                    for (fmin, fmax) in [(0.0, nyquist), (100.0, nyquist / 2.0)] {
                        assert!(
                            super::mel::mel_filter_bank(sr, n_fft, n_mels, fmin, fmax).is_err(),
                            "n_fft {n_fft} n_mels {n_mels} sr {sr} fmin {fmin} fmax {fmax}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn a_segment_too_long_to_pad_is_reported_as_too_long() {
    let e = extractor(&Params::default())
        .frames(usize::MAX)
        .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("too long"), "{text}");
    assert!(!text.contains("shorter than n_fft"), "{text}");
}
