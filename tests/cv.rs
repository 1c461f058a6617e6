//! The `cv` family end to end on a tiny synthetic corpus, grouped and as the study's replica: no track in two
//! grouped folds, each fold's scaler fitted on exactly its training rows, the replica really sharing tracks
//! between training and held-out rows, test never handed over, and `cv_summary` aggregating what the folds
//! wrote.

mod util;

use std::collections::BTreeSet;

use util::Project;

const STAGES: &str = "
  - name: cv
    kind: cv
    inputs: [features, slice, split, ingest]
    foreach:
      mode: [grouped, study_replica]
      fold: [0, 1, 2]
    params:
      folds: 3
      train: {arch: efficient_vgg, width: 0.25, batch_size: 16, max_epochs: 1, augment: false}
  - name: cv_summary
    kind: cv_summary
    inputs: [cv]
";

fn tracks(v: &serde_json::Value) -> BTreeSet<String> {
    v["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn grouped_folds_never_share_a_track_and_the_replica_does() {
    let p = Project::new(&(util::tiny_data_path(6, 3) + STAGES));
    let run = p.run(&["run"]);
    assert_eq!(run.code, 0, "{}", run.all());

    let mut held_out_union = BTreeSet::new();
    for k in 0..3 {
        let member = format!("cv[fold={k},mode=grouped]");
        let fold = p.output_json(&member, "fold", "fold.json");
        let (train, stop, held) = (
            tracks(&fold["train"]),
            tracks(&fold["early_stopping"]),
            tracks(&fold["held_out"]),
        );
        assert!(
            train.is_disjoint(&held),
            "{member}: a track trains and is scored"
        );
        assert!(
            stop.is_disjoint(&held),
            "{member}: a track stops and is scored"
        );
        assert!(train.is_disjoint(&stop), "{member}");
        assert_eq!(fold["held_out_tracks_also_trained_on"], 0);
        // The fold's own scaler is fitted on exactly its training rows.
        assert_eq!(fold["scaler_fit"], fold["train"], "{member}");
        assert!(
            held_out_union.is_disjoint(&held),
            "a track in two held-out folds"
        );
        held_out_union.extend(held);

        // The lineage's fit records name the same tracks as fold.json, and only train and val were handed over.
        let lineage: serde_json::Value =
            serde_json::from_str(&p.run(&["lineage", &member, "--json"]).stdout).unwrap();
        let reads: Vec<&String> = lineage["split_reads"].as_object().unwrap().keys().collect();
        assert_eq!(reads, ["train", "val"], "{member}");
        let mut fitted = BTreeSet::new();
        for r in lineage["lineage"]["records"].as_array().unwrap() {
            if r["record"] == "fit" && r["what"].as_str().unwrap().contains("scaler") {
                fitted.extend(tracks(r));
            }
        }
        assert_eq!(fitted, tracks(&fold["train"]), "{member}");
        // The typed part records name the same held-out and early-stopping tracks as fold.json.
        let part = |role: &str| -> BTreeSet<String> {
            let records = lineage["lineage"]["records"].as_array().unwrap();
            let found: Vec<&serde_json::Value> = records
                .iter()
                .filter(|r| r["record"] == "part" && r["role"] == role)
                .collect();
            assert_eq!(found.len(), 1, "{member}: one {role} part");
            tracks(found[0])
        };
        assert_eq!(part("held_out"), tracks(&fold["held_out"]), "{member}");
        assert_eq!(
            part("early_stopping"),
            tracks(&fold["early_stopping"]),
            "{member}"
        );
    }
    // Every train and val track is held out exactly once.
    let split: serde_json::Value =
        serde_json::from_slice(&p.object(&p.lock_field("split", &["outputs", "split"]).unwrap()))
            .unwrap();
    let pool: BTreeSet<String> = ["train", "val"]
        .iter()
        .flat_map(|s| split[*s].as_array().unwrap().iter())
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    assert_eq!(held_out_union, pool);

    let replica = p.output_json("cv[fold=0,mode=study_replica]", "fold", "fold.json");
    assert!(
        replica["held_out_tracks_also_trained_on"].as_u64().unwrap() > 0,
        "the replica's folds should share tracks: {}",
        replica["held_out_tracks_also_trained_on"]
    );
    assert_eq!(replica["early_stopping"], replica["held_out"]);
    assert_eq!(
        tracks(&replica["scaler_fit"]),
        pool,
        "the replica's scaler sees every train and val track"
    );

    let summary = p.output_json("cv_summary", "cv", "cv.json");
    let grouped = &summary["modes"][0];
    assert_eq!(grouped["mode"], "grouped");
    let accs: Vec<f64> = grouped["folds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["segment_accuracy"].as_f64().unwrap())
        .collect();
    let mean = accs.iter().sum::<f64>() / 3.0;
    assert!((grouped["segment_accuracy"]["mean"].as_f64().unwrap() - mean).abs() < 1e-12);
    // The `cv` table, aggregated by polars from `cv_folds`, agrees with `cv.json`.
    let table = String::from_utf8(p.output_file("cv_summary", "cv", "cv.csv")).unwrap();
    let header: Vec<&str> = table.lines().next().unwrap().split(',').collect();
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("grouped,"))
        .unwrap()
        .split(',')
        .collect();
    let at = |name: &str| -> f64 {
        row[header.iter().position(|h| *h == name).unwrap()]
            .parse()
            .unwrap()
    };
    assert_eq!(at("folds"), 3.0);
    for stat in ["mean", "std"] {
        let json = grouped["segment_accuracy"][stat].as_f64().unwrap();
        assert!((at(&format!("segment_accuracy_{stat}")) - json).abs() < 1e-12);
    }
    let folds = String::from_utf8(p.output_file("cv_summary", "cv", "cv_folds.csv")).unwrap();
    assert_eq!(folds.lines().count(), 1 + 6, "{folds}");
    assert!(!p.output_file("cv_summary", "cv", "cv.parquet").is_empty());
    assert!(run.stdout.contains("grouped 3-fold"), "{}", run.all());
    assert!(run.stdout.contains("study_replica 3-fold"), "{}", run.all());
}

#[test]
fn arch_champion_cross_validates_the_architecture_the_tournament_chose() {
    let stages = "
  - {name: scaler, kind: scaler, inputs: [features, slice]}
  - name: train
    kind: train
    inputs: [features, scaler, slice, ingest]
    foreach: {arch: [efficient_vgg, unet_lean]}
    params: {width: 0.25, batch_size: 16, max_epochs: 1}
  - {name: tournament, kind: tournament, inputs: [train, features, scaler, slice, ingest]}
  - name: cv
    kind: cv
    inputs: [features, slice, split, ingest, tournament]
    params:
      folds: 3
      arch: champion
      train: {arch: res_se, width: 0.25, batch_size: 16, max_epochs: 1}
";
    let p = Project::new(&(util::tiny_data_path(6, 3) + stages));
    let run = p.run(&["run"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let board = p.output_json("tournament", "tournament", "leaderboard.json");
    let champion = board["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["member"] == board["champion"])
        .expect("the champion has a row");
    let fold = p.output_json("cv", "fold", "fold.json");
    assert_eq!(fold["spec"]["arch"], champion["arch"], "{board}");
    assert_ne!(
        fold["spec"]["arch"], "res_se",
        "`arch` overrides train.arch"
    );

    // Without a tournament to follow, the fold says what is missing instead of guessing.
    let lonely = Project::new(
        &(util::tiny_data_path(6, 3)
            + "
  - name: cv
    kind: cv
    inputs: [features, slice, split, ingest]
    params: {folds: 3, arch: champion, train: {width: 0.25, batch_size: 16, max_epochs: 1}}
"),
    );
    let failed = lonely.run(&["run"]);
    assert_ne!(failed.code, 0, "{}", failed.all());
    assert!(
        failed
            .all()
            .contains("`arch: champion` follows one tournament"),
        "{}",
        failed.all()
    );
    // A misspelt architecture is a param error before anything runs.
    let typo = Project::new(
        &(util::tiny_data_path(6, 3)
            + "
  - {name: cv, kind: cv, inputs: [features, slice, split, ingest], params: {folds: 3, arch: champoin}}
"),
    );
    let refused = typo.run(&["run"]);
    assert_ne!(refused.code, 0);
    assert!(
        refused
            .all()
            .contains("`champoin` is neither `champion` nor an architecture"),
        "{}",
        refused.all()
    );
}
