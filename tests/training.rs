//! The `train` kind end to end on a tiny synthetic corpus (5 tracks per genre, 32 x 32 log-mels): its model
//! folder has the same bytes whatever the thread count, and a run killed mid-training resumes from its last
//! completed epoch and ends with the bytes of an uninterrupted run. Then the tournament reads test once.

mod util;

use std::time::{Duration, Instant};

use util::Project;

const STAGES: &str = "
  - name: scaler
    kind: scaler
    inputs: [features, slice]
  - name: train
    kind: train
    inputs: [features, scaler, slice, ingest]
    exec: {threads: THREADS}
    params: {arch: efficient_vgg, width: 0.5, batch_size: 16, max_epochs: EPOCHS, augment: true}
  - name: tournament
    kind: tournament
    inputs: [train, features, scaler, slice, ingest]
";

fn pipeline(threads: usize, epochs: usize) -> String {
    (util::tiny_data_path(5, 4) + STAGES)
        .replace("THREADS", &threads.to_string())
        .replace("EPOCHS", &epochs.to_string())
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(600)
}

fn model_digest(p: &Project) -> String {
    p.lock_field("train", &["outputs", "model"])
        .unwrap_or_else(|| panic!("no model in the lock:\n{}", p.lock()))
}

#[test]
fn the_model_folder_has_the_same_bytes_on_one_and_two_threads() {
    let p = Project::new(&pipeline(1, 2));
    let first = p.run(&["run"]);
    assert_eq!(first.code, 0, "{}", first.all());
    let one = model_digest(&p);
    // A changed thread count is a run setting, outside the key: nothing re-runs unless forced, and a forced
    // re-run of an `exact` kind that gave other bytes would fail.
    p.write_config(&pipeline(2, 2));
    let cached = p.run(&["run"]);
    assert_eq!(cached.code, 0, "{}", cached.all());
    assert!(cached.ran().is_empty(), "{}", cached.all());
    let forced = p.run(&["run", "--force", "train"]);
    assert_eq!(forced.code, 0, "{}", forced.all());
    assert!(
        forced.ran().contains(&"train".to_string()),
        "{}",
        forced.all()
    );
    assert_eq!(model_digest(&p), one);
    let files: Vec<String> = p
        .files_under(&format!("artifacts/trees/{one}"))
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    for name in [
        "confusion.csv",
        "confusion.parquet",
        "curve.svg",
        "history.csv",
        "history.parquet",
        "metrics.csv",
        "metrics.parquet",
        "model.json",
        "optimizer.safetensors",
        "weights.safetensors",
    ] {
        assert!(files.iter().any(|f| f == name), "{name} not in {files:?}");
    }
}

#[test]
fn a_training_killed_mid_run_resumes_and_ends_with_the_uninterrupted_bytes() {
    // Ten epochs, killed once the second is saved: the eight left take long enough to be interrupted.
    let uninterrupted = Project::new(&pipeline(2, 10));
    let run = uninterrupted.run(&["run"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let expected = model_digest(&uninterrupted);

    let p = Project::new(&pipeline(2, 10));
    let mut background = p.spawn(&["run"]);
    util::wait_for("epoch 2's checkpoint", deadline(), || {
        background.exited()
            || p.files_under("artifacts/checkpoints")
                .iter()
                .any(|f| f.to_string_lossy().contains("epoch-0002"))
    });
    assert!(
        !background.exited(),
        "the run ended before epoch 2 was saved"
    );
    background.kill();
    let resumed = p.run(&["run"]);
    assert_eq!(resumed.code, 0, "{}", resumed.all());
    assert!(
        !resumed.all().contains("train: epoch 1/10"),
        "epoch 1 was trained again:\n{}",
        resumed.all()
    );
    assert_eq!(model_digest(&p), expected);
}

#[test]
fn only_the_tournament_is_handed_test_rows_and_it_chooses_on_val() {
    let p = Project::new(&pipeline(2, 1));
    let early = p.run(&["efficiency"]);
    assert_eq!(early.code, 2, "{}", early.all());
    assert!(
        early.stderr.contains("no `tournament` stage has run yet"),
        "{}",
        early.all()
    );
    let run = p.run(&["run"]);
    assert_eq!(run.code, 0, "{}", run.all());
    for (stage, splits) in [
        ("scaler", serde_json::json!(["train"])),
        ("train", serde_json::json!(["train", "val"])),
        ("tournament", serde_json::json!(["test"])),
    ] {
        let tree: serde_json::Value =
            serde_json::from_str(&p.run(&["lineage", stage, "--json"]).stdout).unwrap();
        let read: Vec<&String> = tree["split_reads"]
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        assert_eq!(serde_json::json!(read), splits, "{stage}");
    }
    let tree: serde_json::Value =
        serde_json::from_str(&p.run(&["lineage", "tournament", "--json"]).stdout).unwrap();
    let records = tree["lineage"]["records"].as_array().unwrap();
    assert_eq!(records[0]["record"], "selected");
    assert_eq!(records[0]["by"], "val");
    assert_eq!(records[1]["record"], "scored");
    assert_eq!(records[1]["split"], "test");
    assert!(
        run.stdout.contains("champion (chosen on val): train"),
        "{}",
        run.all()
    );
}

#[test]
fn efficiency_times_every_ranked_model_at_batch_1_and_32() {
    let p = Project::new(&pipeline(2, 1));
    let run = p.run(&["run"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let eff = p.run(&["efficiency", "--repeats", "3", "--csv", "efficiency.csv"]);
    assert_eq!(eff.code, 0, "{}", eff.all());
    let board: serde_json::Value = {
        let digest = p
            .lock_field("tournament", &["outputs", "tournament"])
            .unwrap();
        let path = p
            .path()
            .join("artifacts/trees")
            .join(digest)
            .join("leaderboard.json");
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let entry = &board["entries"][0];
    let csv = std::fs::read_to_string(p.path().join("efficiency.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 2, "{csv}");
    for (row, batch) in rows.iter().zip(["1", "32"]) {
        assert_eq!(row[0], "\"train\"");
        assert_eq!(row[1], entry["trainable_parameters"].to_string());
        assert_eq!(row[2], entry["multiply_adds_per_segment"].to_string());
        assert_eq!(row[3], batch);
        let (median, min, max): (f64, f64, f64) = (
            row[4].parse().unwrap(),
            row[5].parse().unwrap(),
            row[6].parse().unwrap(),
        );
        assert!(min > 0.0 && min <= median && median <= max, "{csv}");
        assert_eq!(row[7], "3");
    }
    assert!(eff.stdout.contains("ms/seg b1"), "{}", eff.all());
}
