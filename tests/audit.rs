//! `genrelab audit` end to end (built with `--features toy-stages`): the honest tiny pipeline passes, and
//! every planted leak fails it naming its culprit: a track in two splits, one audio under two names across
//! splits, a scaler fitted on every segment, early stopping on test (also when the stage's lineage claims
//! val), a tournament choosing on test, CV folds over segments, and a transfer corpus holding a training
//! track. Each pipeline is a few tracks of 32-band log-mels trained for one epoch.

mod util;

use std::collections::BTreeSet;

use util::{Project, Run};

/// A corpus with two planted duplicate pairs, so every honest pipeline here also keeps copies together.
const DATA: &str = "
datasets:
  gtzan:
    root: data/tiny
    synthetic: {tracks_per_genre: 4, seed: 3, duplicates: 2}
  other:
    root: data/other
    synthetic: {corpus: transfer, tracks_per_genre: 4, seed: 3, duplicates: 0}
stages:
  - {name: ingest, kind: ingest, inputs: ['dataset:gtzan']}
";

const DATA_PATH: &str = "
  - {name: split, kind: split, inputs: [ingest]}
  - {name: slice, kind: slice, inputs: [ingest, split], params: {segments_per_track: 2}}
  - name: features
    kind: features
    inputs: ['dataset:gtzan', ingest, slice]
    params: {n_mels: 32, hop_length: 2048}
  - {name: scaler, kind: scaler, inputs: [features, slice]}
";

const TRAIN: &str = "
  - name: train
    kind: train
    inputs: [features, scaler, slice, ingest]
    params: {arch: unet_lean, width: 0.25, batch_size: 16, max_epochs: 1}
  - {name: tournament, kind: tournament, inputs: [train, features, scaler, slice, ingest]}
";

const CV: &str = "
  - name: cv
    kind: cv
    inputs: [features, slice, split, ingest]
    foreach:
      mode: [grouped, study_replica]
      fold: [0, 1, 2]
    params:
      folds: 3
      train: {arch: unet_lean, width: 0.25, batch_size: 16, max_epochs: 1, augment: false}
";

/// The second corpus through the same data path, and the champion transferred to it; `DATASET` names it.
const TRANSFER: &str = "
  - {name: ingest_other, kind: ingest, inputs: ['dataset:DATASET']}
  - {name: split_other, kind: split, inputs: [ingest_other]}
  - {name: slice_other, kind: slice, inputs: [ingest_other, split_other], params: {segments_per_track: 2}}
  - name: features_other
    kind: features
    inputs: ['dataset:DATASET', ingest_other, slice_other]
    params: {n_mels: 32, hop_length: 2048}
  - {name: scaler_other, kind: scaler, inputs: [features_other, slice_other]}
  - name: transfer
    kind: transfer
    inputs: [train, tournament, features_other, scaler_other, slice_other, ingest_other]
    params: {batch_size: 16, max_epochs: 1, k: 3, probe_steps: 20}
";

fn project(stages: &[&str]) -> Project {
    let p = Project::new(&(DATA.to_string() + &stages.concat()));
    let run = p.run(&["run", "-j", "2"]);
    assert_eq!(run.code, 0, "{}", run.all());
    p
}

fn audit(p: &Project, args: &[&str]) -> Run {
    let mut all = vec!["audit"];
    all.extend_from_slice(args);
    p.run(&all)
}

/// The line of the check whose title starts with `title`.
fn line<'a>(run: &'a Run, title: &str) -> &'a str {
    run.stdout
        .lines()
        .find(|l| l[7.min(l.len())..].starts_with(title))
        .unwrap_or_else(|| panic!("no line for `{title}`:\n{}", run.all()))
}

fn fails(run: &Run, title: &str, culprit: &str) {
    assert_eq!(run.code, 1, "{}", run.all());
    let l = line(run, title);
    assert!(l.starts_with("FAILS  "), "{l}\n{}", run.all());
    assert!(l.contains(culprit), "`{culprit}` not named in: {l}");
}

fn holds(run: &Run, title: &str) {
    let l = line(run, title);
    assert!(l.starts_with("holds  "), "{l}\n{}", run.all());
}

const SPLIT_TRACKS: &str = "no track is in two of";
const SPLIT_AUDIO: &str = "no audio (by content digest)";
const SCALER: &str = "every scaler is fitted";
const WEIGHTS: &str = "every model's weights";
const SELECTED: &str = "early stopping, learning-rate";
const READERS: &str = "test rows are handed only";
const ONCE: &str = "test is scored once";
const CV_GROUPED: &str = "CV folds are grouped";
const CV_STOPPING: &str = "each CV fold is scored";
const TRANSFER_AUDIO: &str = "a transfer corpus shares no audio";

fn tracks_table(p: &Project, stage: &str) -> serde_json::Value {
    let digest = p.lock_field(stage, &["outputs", "tracks"]).unwrap();
    serde_json::from_slice(&p.object(&digest)).unwrap()
}

#[test]
fn the_honest_pipeline_passes_and_json_gives_the_same_checks() {
    let p = project(&[DATA_PATH, TRAIN, &TRANSFER.replace("DATASET", "other")]);
    let run = audit(&p, &[]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stdout.contains("audit: all 11 invariants hold\n"),
        "{}",
        run.all()
    );
    for title in [
        SPLIT_TRACKS,
        SPLIT_AUDIO,
        SCALER,
        WEIGHTS,
        SELECTED,
        READERS,
        ONCE,
        TRANSFER_AUDIO,
    ] {
        let l = line(&run, title);
        assert!(
            l.starts_with("holds  ") && !l.contains("nothing of the kind"),
            "{l}"
        );
    }

    let json = audit(&p, &["--json"]);
    assert_eq!(json.code, 0, "{}", json.all());
    let report: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(report["holds"], true);
    let ids: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "split-tracks",
            "split-audio",
            "segments-in-split",
            "scaler-fit",
            "weights-fit",
            "selected-by-val",
            "test-readers",
            "test-once-after-selection",
            "cv-grouped",
            "cv-early-stopping",
            "transfer-audio"
        ]
    );
    assert!(report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s == "transfer"));
    // Both splits were checked, and the scalers against their own corpora.
    assert_eq!(report["checks"][0]["checked"], 2);
    assert_eq!(report["checks"][3]["checked"], 2);

    // A stage's ancestry alone: the tournament's holds, and does not include the transfer chain.
    let narrow: serde_json::Value =
        serde_json::from_str(&audit(&p, &["tournament", "--json"]).stdout).unwrap();
    assert_eq!(narrow["target"], "tournament");
    assert!(!narrow["stages"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s == "ingest_other"));
    assert_eq!(audit(&p, &["no_such_stage"]).code, 2);
}

#[test]
fn a_track_in_two_splits_is_named() {
    let p = project(&["  - {name: split, kind: toy_leaky_split, inputs: [ingest]}\n"]);
    let first = tracks_table(&p, "ingest")["tracks"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let run = audit(&p, &[]);
    fails(
        &run,
        SPLIT_TRACKS,
        &format!("split: track {first} is in train and test"),
    );
    let json: serde_json::Value = serde_json::from_str(&audit(&p, &["--json"]).stdout).unwrap();
    assert_eq!(json["holds"], false);
    assert_eq!(
        json["checks"][0]["failures"],
        serde_json::json!([format!("split: track {first} is in train and test")])
    );
}

#[test]
fn the_same_audio_under_two_names_in_two_splits_is_named() {
    let p = project(&[
        "  - {name: split, kind: toy_leaky_split, inputs: [ingest], params: {leak: duplicates_apart}}\n",
    ]);
    // The first group of tracks sharing an audio digest, by digest: the one the leaky split tore apart.
    let tracks = tracks_table(&p, "ingest");
    let mut by_audio: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for t in tracks["tracks"].as_array().unwrap() {
        by_audio
            .entry(t["audio_digest"].as_str().unwrap().to_string())
            .or_default()
            .push(t["id"].as_str().unwrap().to_string());
    }
    let group = by_audio.values().find(|g| g.len() > 1).unwrap();
    let run = audit(&p, &[]);
    // Each name is in one split only: the track check cannot see it, the audio check must.
    holds(&run, SPLIT_TRACKS);
    fails(&run, SPLIT_AUDIO, &format!("{} (train)", group[0]));
    fails(&run, SPLIT_AUDIO, &format!("{} (test)", group[1]));
}

#[test]
fn a_scaler_fitted_on_every_segment_is_named_whatever_its_lineage_says() {
    let p = project(&[
        DATA_PATH,
        "  - {name: scaler_all, kind: toy_leaky_scaler, inputs: [features, slice], params: {lie: true}}\n",
        "  - {name: scaler_all_told, kind: toy_leaky_scaler, inputs: [features, slice]}\n",
    ]);
    let split: serde_json::Value =
        serde_json::from_slice(&p.object(&p.lock_field("split", &["outputs", "split"]).unwrap()))
            .unwrap();
    let first_test = split["test"][0].as_str().unwrap();

    // It claims train alone: its fit set is checked against the train segments' ids, and test was handed.
    let run = audit(&p, &["scaler_all"]);
    fails(
        &run,
        SCALER,
        "scaler_all: scaler statistics fitted on tracks outside train",
    );
    fails(&run, SCALER, &format!("{first_test} (test)"));
    fails(
        &run,
        READERS,
        "scaler_all (kind toy_leaky_scaler) was handed features.features@test",
    );

    let told = audit(&p, &["scaler_all_told"]);
    fails(
        &told,
        SCALER,
        "scaler_all_told: scaler statistics fitted on val rows",
    );
    fails(
        &told,
        SCALER,
        "scaler_all_told: scaler statistics fitted on test rows",
    );

    // The honest scaler of the same data path holds.
    let honest = audit(&p, &["scaler"]);
    assert_eq!(honest.code, 0, "{}", honest.all());
}

#[test]
fn early_stopping_on_test_is_caught_even_when_the_lineage_claims_val() {
    let p = project(&[
        DATA_PATH,
        "  - {name: peeker, kind: toy_leaky_train, inputs: [features, slice], params: {lie: true}}\n",
        "  - {name: stopper, kind: toy_leaky_train, inputs: [features, slice]}\n",
    ]);
    // The lie: every record the stage wrote is clean, so only the engine's own record can convict it.
    let lying = audit(&p, &["peeker"]);
    holds(&lying, SELECTED);
    holds(&lying, WEIGHTS);
    fails(
        &lying,
        READERS,
        "peeker (kind toy_leaky_train) was handed features.features@test",
    );
    fails(&lying, ONCE, "peeker: handed features.features@test");

    let honest = audit(&p, &["stopper"]);
    fails(
        &honest,
        SELECTED,
        "stopper: best epoch (early stopping) chosen on test",
    );
    fails(
        &honest,
        READERS,
        "stopper (kind toy_leaky_train) was handed features.features@test",
    );
}

#[test]
fn a_tournament_that_selects_on_test_fails_and_the_honest_one_holds() {
    let p = project(&[
        DATA_PATH,
        TRAIN,
        "  - name: train_b
    kind: train
    inputs: [features, scaler, slice, ingest]
    params: {arch: efficient_vgg, width: 0.25, batch_size: 16, max_epochs: 1}
  - name: tournament_by_test
    kind: tournament
    inputs: [train, train_b, features, scaler, slice, ingest]
    params: {selection: test}
",
    ]);
    let honest = audit(&p, &["tournament"]);
    assert_eq!(honest.code, 0, "{}", honest.all());

    let run = audit(&p, &["tournament_by_test"]);
    fails(
        &run,
        SELECTED,
        "tournament_by_test: champion chosen on test",
    );
    fails(
        &run,
        ONCE,
        "tournament_by_test: champion chosen on test after test was scored",
    );
    // Its leaderboard is ranked by test, and its champion is the test leader.
    let board = p.output_json("tournament_by_test", "tournament", "leaderboard.json");
    assert_eq!(board["champion"], board["entries"][0]["member"]);
    let test = |e: &serde_json::Value| e["test_segment_accuracy"].as_f64().unwrap();
    assert!(test(&board["entries"][0]) >= test(&board["entries"][1]));

    // In the whole lock the replica is shown, not counted; test read twice is its doing.
    let all = audit(&p, &[]);
    assert_eq!(all.code, 0, "{}", all.all());
    assert!(
        line(&all, SELECTED).contains("leaky on purpose: tournament_by_test"),
        "{}",
        all.all()
    );
    assert!(
        line(&all, READERS).contains("leaky on purpose: tournament_by_test"),
        "{}",
        all.all()
    );
}

#[test]
fn cv_folds_over_segments_fail_naming_tracks_in_two_parts() {
    let p = project(&[DATA_PATH, CV]);
    let member = "cv[fold=0,mode=study_replica]";
    let fold = p.output_json(member, "fold", "fold.json");
    let names = |part: &str| -> BTreeSet<String> {
        fold[part]["tracks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect()
    };
    let both: Vec<String> = names("held_out")
        .intersection(&names("train"))
        .cloned()
        .collect();
    assert!(!both.is_empty());

    let run = audit(&p, &[member]);
    fails(
        &run,
        CV_GROUPED,
        &format!(
            "{member}: {} held-out tracks have segments among its training rows too: {}",
            both.len(),
            both[0]
        ),
    );
    fails(&run, CV_STOPPING, &format!("{member}: "));
    fails(&run, SCALER, &format!("{member}: its scaler is fitted on"));

    for k in 0..3 {
        let grouped = audit(&p, &[&format!("cv[fold={k},mode=grouped]")]);
        assert_eq!(grouped.code, 0, "{}", grouped.all());
        holds(&grouped, CV_GROUPED);
    }
    // The family holds the replica's members: it fails; the whole lock shows them as the replica.
    assert_eq!(audit(&p, &["cv"]).code, 1);
    let all = audit(&p, &[]);
    assert_eq!(all.code, 0, "{}", all.all());
    assert!(line(&all, CV_GROUPED).contains(member), "{}", all.all());
    let json: serde_json::Value = serde_json::from_str(&audit(&p, &["--json"]).stdout).unwrap();
    let grouped = &json["checks"][8];
    assert_eq!(grouped["id"], "cv-grouped");
    assert_eq!(grouped["failures"], serde_json::json!([]));
    assert_eq!(grouped["replica_stages"].as_array().unwrap().len(), 3);
}

#[test]
fn a_transfer_corpus_holding_a_training_track_fails_naming_it() {
    // The first corpus's split first, to know which track is a training track.
    let p = project(&[DATA_PATH]);
    let split: serde_json::Value =
        serde_json::from_slice(&p.object(&p.lock_field("split", &["outputs", "split"]).unwrap()))
            .unwrap();
    let stolen = split["train"][0].as_str().unwrap().to_string();
    let tracks = tracks_table(&p, "ingest");
    let path = tracks["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == stolen.as_str())
        .unwrap()["path"]
        .as_str()
        .unwrap()
        .to_string();

    // The second corpus as generated, plus that track's file under a new name in one of its classes.
    let synth = p.run(&["synth"]);
    assert_eq!(synth.code, 0, "{}", synth.all());
    let leaky = p.path().join("data/leaky/genres_original");
    let generated = p.path().join("data/other/genres_original");
    for class in std::fs::read_dir(&generated).unwrap() {
        let class = class.unwrap().path();
        let to = leaky.join(class.file_name().unwrap());
        std::fs::create_dir_all(&to).unwrap();
        for file in std::fs::read_dir(&class).unwrap() {
            let file = file.unwrap().path();
            std::fs::copy(&file, to.join(file.file_name().unwrap())).unwrap();
        }
    }
    let class = std::fs::read_dir(&leaky)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .min()
        .unwrap();
    std::fs::copy(
        p.path().join("data/tiny").join(&path),
        leaky.join(&class).join("borrowed.wav"),
    )
    .unwrap();

    p.write_config(
        &(DATA.replace("stages:", "  leaky:\n    root: data/leaky\nstages:")
            + DATA_PATH
            + TRAIN
            + &TRANSFER.replace("DATASET", "leaky")
            + "  - name: transfer_home
    kind: transfer
    inputs: [train, tournament, features, scaler, slice, ingest]
    params: {batch_size: 16, max_epochs: 1, k: 3, probe_steps: 20}
"),
    );
    let run = p.run(&["run", "-j", "2"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let audit = audit(&p, &["transfer"]);
    fails(
        &audit,
        TRANSFER_AUDIO,
        &format!("transfer: its corpus's track {class}/borrowed has the audio of {stolen}"),
    );
    // Its own split is still grouped by track: the leak is between the corpora.
    holds(&audit, SPLIT_TRACKS);

    // "Transfer" back onto the training corpus reads the test rows the tournament already scored.
    let home = p.run(&["audit", "transfer_home"]);
    fails(
        &home,
        READERS,
        "transfer_home was handed features.features@test, test rows of the corpus train trained on",
    );
    fails(
        &home,
        READERS,
        "features.features@test was handed to 2 stages: tournament, transfer_home",
    );
}
