//! End-to-end tests of the audio data path (ingest -> split -> slice -> features -> scaler -> baseline),
//! driving the binary on small corpora written here: a real-GTZAN-layout folder with the faults GTZAN has,
//! and the embedded synthetic default.

mod util;

use std::f32::consts::PI;
use std::path::Path;

use util::Project;

const STAGES: &str = "
stages:
  - name: ingest
    kind: ingest
    inputs: [dataset]
  - name: split
    kind: split
    inputs: [ingest]
  - name: slice
    kind: slice
    inputs: [ingest, split]
  - name: features
    kind: features
    inputs: [dataset, ingest, slice]
    params:
      n_mels: 128
  - name: scaler
    kind: scaler
    inputs: [features, slice]
  - name: baseline
    kind: baseline
    inputs: [features, scaler, slice]
";

const CLASSES: [&str; 3] = ["blues", "jazz", "metal"];

/// A tone per class with a per-track detune: separable, so the baseline has something to find.
fn tone(class: usize, track: usize, seconds: f32, rate: u32) -> Vec<f32> {
    let f = 220.0 * (1.0 + class as f32) + 3.0 * track as f32;
    (0..(seconds * rate as f32) as usize)
        .map(|i| 0.3 * (2.0 * PI * f * i as f32 / rate as f32).sin())
        .collect()
}

fn write_wav(path: &Path, samples: &[f32], rate: u32, channels: u16) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for s in samples {
        for _ in 0..channels {
            w.write_sample((s * 32767.0) as i16).unwrap();
        }
    }
    w.finalize().unwrap();
}

fn write_au(path: &Path, samples: &[f32], rate: u32) {
    let mut bytes = Vec::new();
    for v in [0x2e73_6e64u32, 24, (samples.len() * 2) as u32, 3, rate, 1] {
        bytes.extend_from_slice(&v.to_be_bytes());
    }
    for s in samples {
        bytes.extend_from_slice(&((s * 32767.0) as i16).to_be_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

/// `genres_original/<class>/<class>.000NN.wav`, 5 tracks of 6 s per class, plus GTZAN's faults: a file that
/// is not a WAV at all, a truncated WAV, a stereo 44.1 kHz WAV and a Sun .au file.
fn real_layout_corpus(p: &Project) {
    let root = p.path().join("data/genres_original");
    for (c, class) in CLASSES.iter().enumerate() {
        for t in 0..5 {
            let path = root.join(class).join(format!("{class}.{t:05}.wav"));
            write_wav(&path, &tone(c, t, 6.0, 22050), 22050, 1);
        }
    }
    std::fs::write(
        root.join("jazz/jazz.00054.wav"),
        b"this is not a RIFF file at all",
    )
    .unwrap();
    let truncated = root.join("blues/blues.00099.wav");
    write_wav(&truncated, &tone(0, 9, 6.0, 22050), 22050, 1);
    let bytes = std::fs::read(&truncated).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    write_wav(
        &root.join("metal/metal.00077.wav"),
        &tone(2, 7, 6.0, 44100),
        44100,
        2,
    );
    write_au(
        &root.join("jazz/jazz.00088.au"),
        &tone(1, 8, 6.0, 22050),
        22050,
    );
}

fn real_project() -> Project {
    let p = Project::new(&format!("dataset:\n  root: data\n{STAGES}"));
    real_layout_corpus(&p);
    p
}

fn lock(p: &Project) -> serde_yaml::Value {
    serde_yaml::from_str(&p.lock()).unwrap()
}

#[test]
fn a_real_layout_corpus_with_gtzan_faults_runs_end_to_end_and_quarantines_what_does_not_decode() {
    let p = real_project();
    let run = p.run(&["run", "-j", "2"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    // The two broken files are quarantined by name, with a reason, and printed.
    assert!(
        run.stdout
            .contains("quarantined genres_original/jazz/jazz.00054.wav"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("quarantined genres_original/blues/blues.00099.wav"),
        "{}",
        run.stdout
    );
    // 15 + stereo 44.1 kHz + .au = 17 tracks.
    assert!(
        run.stdout.contains("17 tracks in 3 classes"),
        "{}",
        run.stdout
    );
    let quarantine = p.run(&["lineage", "ingest", "--json"]);
    assert!(
        quarantine.stdout.contains("jazz.00054.wav"),
        "{}",
        quarantine.stdout
    );
    assert!(
        run.stdout.contains("baseline (nearest centroid"),
        "{}",
        run.stdout
    );
    let status = p.run(&["status"]);
    assert_eq!(status.code, 0, "{}", status.stdout);
    assert!(
        status
            .stdout
            .contains("quarantined genres_original/jazz/jazz.00054.wav"),
        "{}",
        status.stdout
    );
    assert_eq!(p.run(&["verify"]).code, 0);
}

#[test]
fn rerunning_from_scratch_changes_no_digest_whatever_the_thread_count() {
    let a = real_project();
    let b = real_project();
    assert_eq!(a.run(&["run", "-j", "1"]).code, 0);
    assert_eq!(b.run(&["run", "-j", "3"]).code, 0);
    assert_eq!(a.lock(), b.lock());
    let forced = a.run(&[
        "run", "--force", "features", "--force", "scaler", "--force", "ingest",
    ]);
    assert_eq!(
        forced.code, 0,
        "forced re-runs must reproduce their outputs bit for bit:\n{}",
        forced.stdout
    );
    assert_eq!(a.lock(), b.lock());
}

#[test]
fn changing_n_mels_reruns_features_and_what_reads_them_only() {
    let p = real_project();
    assert_eq!(p.run(&["run"]).code, 0);
    p.write_config(&p.config().replace("n_mels: 128", "n_mels: 64"));
    let run = p.run(&["run"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    // baseline reads the features and the scaler's statistics, so it is a descendant too.
    assert_eq!(run.ran(), vec!["baseline", "features", "scaler"]);
    assert!(
        run.line("features")
            .contains("params.n_mels changed 128 → 64"),
        "{}",
        run.line("features")
    );
    for cached in ["ingest", "split", "slice"] {
        assert!(
            run.line(cached).contains("cached (up to date)"),
            "{}",
            run.line(cached)
        );
    }
}

#[test]
fn the_scaler_records_exactly_the_train_tracks_it_was_fitted_on() {
    let p = real_project();
    assert_eq!(p.run(&["run"]).code, 0);
    let tree: serde_json::Value =
        serde_json::from_str(&p.run(&["lineage", "scaler", "--json"]).stdout).unwrap();
    let fit = &tree["lineage"]["records"][0];
    assert_eq!(fit["record"], "fit");
    assert_eq!(fit["split"], "train");
    let fit_tracks: Vec<String> = serde_json::from_value(fit["tracks"].clone()).unwrap();
    // What the engine handed the scaler, recorded by the engine: train rows and nothing else.
    assert_eq!(
        tree["split_reads"],
        serde_json::json!({"train": ["features.features@train"]})
    );
    let baseline: serde_json::Value =
        serde_json::from_str(&p.run(&["lineage", "baseline", "--json"]).stdout).unwrap();
    assert_eq!(
        baseline["split_reads"],
        serde_json::json!({"train": ["features.features@train"], "val": ["features.features@val"]})
    );
    let split_digest = lock(&p)["stages"]["split"]["outputs"]["split"]
        .as_str()
        .unwrap()
        .to_string();
    let split_path = p
        .path()
        .join("artifacts/objects")
        .join(&split_digest[..2])
        .join(&split_digest);
    let split: serde_json::Value =
        serde_json::from_slice(&std::fs::read(split_path).unwrap()).unwrap();
    let train: Vec<String> = serde_json::from_value(split["train"].clone()).unwrap();
    assert_eq!(fit_tracks, train);
    for other in ["val", "test"] {
        let ids: Vec<String> = serde_json::from_value(split[other].clone()).unwrap();
        assert!(
            ids.iter().all(|id| !fit_tracks.contains(id)),
            "{other} track in the scaler's fit set"
        );
    }
}

#[test]
fn bad_dataset_roots_give_clear_errors() {
    let p = Project::new(&format!("dataset:\n  root: nowhere\n{STAGES}"));
    let run = p.run(&["run"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("nowhere does not exist"),
        "{}",
        run.stderr
    );
    let empty = Project::new(&format!("dataset:\n  root: data\n{STAGES}"));
    let run = empty.run(&["run"]);
    assert_eq!(run.code, 2);
    assert!(
        run.line("ingest")
            .contains("FAILED: stage `ingest` (ingest)"),
        "{}",
        run.stdout
    );
    assert!(run.line("baseline").contains("skipped"), "{}", run.stdout);
}

#[test]
fn the_synthetic_default_is_generated_once_and_is_deterministic() {
    let config = format!("dataset:\n  root: data/synthetic\n  synthetic:\n    tracks_per_genre: 5\n    seed: 7\n{STAGES}");
    let a = Project::new(&config);
    let b = Project::new(&config);
    let run = a.run(&["run", "-j", "2"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("generated the synthetic corpus (50 tracks)"),
        "{}",
        run.stdout
    );
    // 60/20/20 of 50 tracks, give or take the duplicate groups the generator plants (kept in one split).
    let line = run
        .stdout
        .lines()
        .find(|l| l.contains("split (random, 60/20/20): train "))
        .expect("split summary");
    let counts: Vec<i64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|t| t.parse().ok())
        .skip(3)
        .take(3)
        .collect();
    assert_eq!(counts.iter().sum::<i64>(), 50, "{line}");
    assert!(
        (counts[0] - 30).abs() <= 2 && (counts[1] - 10).abs() <= 2,
        "{line}"
    );
    assert_eq!(b.run(&["run", "-j", "1"]).code, 0);
    assert_eq!(a.lock(), b.lock(), "same config, same corpus, same digests");
    let again = a.run(&["run"]);
    assert!(!again.stdout.contains("generated"), "{}", again.stdout);
    assert!(again.ran().is_empty(), "{}", again.stdout);
}

#[test]
fn a_one_sample_track_is_quarantined_so_every_split_track_yields_segments() {
    let p = real_project();
    write_wav(
        &p.path().join("data/genres_original/metal/metal.00050.wav"),
        &[0.25],
        22050,
        1,
    );
    let run = p.run(&["run", "--until", "slice"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("quarantined genres_original/metal/metal.00050.wav: too short: 1 sample"),
        "{}",
        run.stdout
    );
    // It never reaches the split: 17 tracks split, 17 sliced, none of them without a segment.
    assert!(
        run.stdout.contains("17 tracks in 3 classes"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("sliced 17 tracks into"),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains("too short for one segment"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_wav_whose_riff_size_lies_is_ingested_with_a_warning_in_the_summary() {
    let p = real_project();
    let path = p.path().join("data/genres_original/blues/blues.00003.wav");
    let mut bytes = std::fs::read(&path).unwrap();
    let riff = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
    bytes[4..8].copy_from_slice(&(riff + 1000).to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let run = p.run(&["run", "--until", "ingest"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("warning genres_original/blues/blues.00003.wav: RIFF size field declares"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("17 tracks in 3 classes"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_one_class_dataset_is_refused_naming_the_root_and_the_class() {
    let p = Project::new(&format!("dataset:\n  root: data\n{STAGES}"));
    for t in 0..3 {
        write_wav(
            &p.path()
                .join(format!("data/genres_original/blues/blues.{t:05}.wav")),
            &tone(0, t, 4.0, 22050),
            22050,
            1,
        );
    }
    let run = p.run(&["run"]);
    assert_ne!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let text = format!("{}\n{}", run.stdout, run.stderr);
    assert!(
        text.contains("only one class under") && text.contains("`blues` (genres_original/blues/"),
        "{text}"
    );
    assert!(!text.contains("val 100.0%"), "{text}");
}
