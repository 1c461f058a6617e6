//! End-to-end regressions of the command line: concurrent corpus generation, `status --json` in every
//! state, and error messages that used to mislead.

mod util;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use util::{finish, wait_until, Project};

/// A synthetic corpus in `data/synthetic` read by one stage (`ingest`, whose summary counts what it saw).
fn synth_config(tracks_per_genre: u32) -> String {
    format!(
        "dataset:\n  root: data/synthetic\n  synthetic:\n    tracks_per_genre: {tracks_per_genre}\n    seed: 7\n\
         stages:\n  - name: ingest\n    kind: ingest\n    inputs: [dataset]\n"
    )
}

/// Temp folders of corpus generators, left beside the corpus root.
fn temp_folders(p: &Project) -> Vec<PathBuf> {
    std::fs::read_dir(p.path().join("data"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|path| {
            path.file_name().is_some_and(|n| {
                n.to_string_lossy()
                    .starts_with(".synthetic.genrelab-synth-tmp")
            })
        })
        .collect()
}

fn wav_files(dir: &Path) -> usize {
    let mut count = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "wav") {
                count += 1;
            }
        }
    }
    count
}

fn marker(p: &Project) -> serde_json::Value {
    let text = std::fs::read_to_string(p.path().join("data/synthetic/.genrelab-synth.json"))
        .expect("marker");
    serde_json::from_str(&text).expect("marker is JSON")
}

fn json(run: &util::Run) -> serde_json::Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}\n{}", run.stdout, run.stderr))
}

#[test]
fn concurrent_synth_and_run_on_a_fresh_project_all_see_the_full_corpus() {
    let p = Project::new(&synth_config(2));
    let children: Vec<_> = ["synth", "run", "synth", "run"]
        .iter()
        .map(|cmd| {
            p.command(&[cmd, "-j", "1"][..if *cmd == "run" { 3 } else { 1 }])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn genrelab")
        })
        .collect();
    let runs: Vec<util::Run> = children.into_iter().map(finish).collect();
    for run in &runs {
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    }
    for run in runs.iter().filter(|r| r.stdout.contains("ingest:")) {
        assert!(
            run.line("ingest").contains("ran (") || run.line("ingest").contains("cached ("),
            "{}",
            run.stdout
        );
        assert!(
            run.stdout.contains("20 tracks in 10 classes"),
            "{}",
            run.stdout
        );
    }
    let generated = runs
        .iter()
        .filter(|r| r.stdout.contains("generated the synthetic corpus"))
        .count();
    assert_eq!(generated, 1, "exactly one process generates");
    // Whoever found the corpus being generated said that it waited, then found it finished.
    for run in runs.iter().filter(|r| r.stderr.contains("waiting")) {
        assert!(
            run.stderr.contains("waiting for another genrelab process"),
            "{}",
            run.stderr
        );
    }
    assert_eq!(wav_files(&p.path().join("data/synthetic")), 20);
    assert!(temp_folders(&p).is_empty(), "{:?}", temp_folders(&p));
    let files = marker(&p)["files"]
        .as_object()
        .cloned()
        .expect("marker lists files");
    assert_eq!(files.len(), 20);
    let blues = &files["genres_original/blues/blues.00000.wav"];
    let bytes = std::fs::read(
        p.path()
            .join("data/synthetic/genres_original/blues/blues.00000.wav"),
    )
    .unwrap();
    assert_eq!(blues["size"], bytes.len() as u64);
    assert_eq!(blues["blake3"], blake3::hash(&bytes).to_hex().as_str());
}

#[test]
fn a_killed_generator_leaves_nothing_that_looks_valid_and_the_next_one_cleans_up() {
    let p = Project::new(&synth_config(40));
    let mut child = p
        .command(&["synth"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn genrelab");
    // Kill it once it has written a track into its temp folder.
    wait_until("a track in the generator's temp folder", || {
        temp_folders(&p)
            .iter()
            .any(|t| wav_files(t) > 0)
            .then_some(())
    });
    child.kill().expect("kill");
    child.wait().expect("reap");
    let root = p.path().join("data/synthetic");
    if root.exists() {
        // Only a finished corpus may ever appear under the root.
        assert_eq!(wav_files(&root), 400);
    } else {
        let status = p.run(&["status", "--json"]);
        assert_eq!(status.code, 1, "{}", status.stderr);
        assert_eq!(json(&status)["dataset"]["state"], "not_generated");
    }
    // The next generator (other settings, so it generates) removes what the killed one left.
    p.write_config(&synth_config(1));
    if root.exists() {
        std::fs::remove_dir_all(&root).unwrap();
    }
    let next = p.run(&["synth"]);
    assert_eq!(next.code, 0, "{}", next.stderr);
    assert!(temp_folders(&p).is_empty(), "{:?}", temp_folders(&p));
    assert_eq!(wav_files(&root), 10);
}

#[test]
fn a_corpus_that_no_longer_matches_its_marker_is_refused_naming_the_files() {
    let p = Project::new(&synth_config(1));
    assert_eq!(p.run(&["synth"]).code, 0);
    let genres = p.path().join("data/synthetic/genres_original");
    std::fs::remove_file(genres.join("jazz/jazz.00000.wav")).unwrap();
    let mut blues = std::fs::read(genres.join("blues/blues.00000.wav")).unwrap();
    blues.extend_from_slice(b"tail");
    std::fs::write(genres.join("blues/blues.00000.wav"), blues).unwrap();
    std::fs::write(genres.join("rock/extra.wav"), b"RIFF").unwrap();
    let run = p.run(&["run"]);
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    for needle in [
        "missing: genres_original/jazz/jazz.00000.wav",
        "extra: genres_original/rock/extra.wav",
        "resized: genres_original/blues/blues.00000.wav",
    ] {
        assert!(run.stderr.contains(needle), "{needle} in:\n{}", run.stderr);
    }
    assert!(!run.stdout.contains("ingest:"), "{}", run.stdout);
}

#[test]
fn status_json_before_the_corpus_exists_lists_every_stage_as_stale() {
    let p = Project::new(&synth_config(1));
    let status = p.run(&["status", "--json"]);
    assert_eq!(status.code, 1, "{}", status.stderr);
    let value = json(&status);
    assert_eq!(value["state"], "stale");
    assert_eq!(value["dataset"]["state"], "not_generated");
    assert_eq!(value["dataset"]["root"], "data/synthetic");
    let stages = value["stages"].as_array().expect("stages");
    assert_eq!(stages.len(), 1);
    assert_eq!(stages[0]["stage"], "ingest");
    assert_eq!(stages[0]["state"], "stale");
    assert_eq!(stages[0]["key"], serde_json::Value::Null);
    let reason = stages[0]["reasons"][0].as_str().unwrap_or_default();
    assert!(reason.contains("not generated yet"), "{reason}");
    // Once generated and run, the same command reports everything up to date.
    assert_eq!(p.run(&["run"]).code, 0);
    let status = p.run(&["status", "--json"]);
    assert_eq!(status.code, 0, "{}", status.stdout);
    let value = json(&status);
    assert_eq!(value["state"], "up_to_date");
    assert_eq!(value["dataset"]["state"], "ready");
    assert_eq!(value["stages"][0]["state"], "up_to_date");
    assert_eq!(
        value["stages"][0]["reasons"],
        serde_json::Value::Array(vec![])
    );
}

#[test]
fn status_json_on_a_broken_config_prints_an_error_object() {
    let p = Project::new("dataset:\n  root: data\nstages:\n  - name: a\n    kind: no_such_kind\n");
    let status = p.run(&["status", "--json"]);
    assert_eq!(status.code, 2);
    let value = json(&status);
    let error = &value["error"];
    assert_eq!(error["kind"], "config");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("unknown stage kind"),
        "{value}"
    );
    let first = &error["errors"][0];
    assert_eq!(first["file"], "pipeline.yaml");
    assert_eq!(
        (first["line"].as_u64(), first["column"].as_u64()),
        (Some(5), Some(5))
    );
    assert!(first["message"]
        .as_str()
        .unwrap_or_default()
        .contains("no_such_kind"));

    // A file-level error has no position.
    let missing = p.run(&["--config", "nowhere.yaml", "status", "--json"]);
    assert_eq!(missing.code, 2);
    let value = json(&missing);
    assert_eq!(value["error"]["kind"], "config");
    assert_eq!(value["error"]["errors"][0]["line"], serde_json::Value::Null);
    assert_eq!(value["error"]["errors"][0]["file"], "nowhere.yaml");

    // A dataset root that is not there is an error too, still as JSON.
    let p = Project::new(
        "dataset:\n  root: nowhere\nstages:\n  - name: ingest\n    kind: ingest\n    inputs: [dataset]\n",
    );
    let status = p.run(&["status", "--json"]);
    assert_eq!(status.code, 2);
    assert!(
        json(&status)["error"]["message"].is_string(),
        "{}",
        status.stdout
    );
}

#[test]
fn status_help_documents_the_json_shape() {
    let p = Project::new(&synth_config(1));
    let help = p.run(&["status", "--help"]);
    assert_eq!(help.code, 0);
    for needle in [
        "\"stages\"",
        "\"dataset\"",
        "\"error\"",
        "\"errors\"",
        "not_generated",
        "up_to_date",
    ] {
        assert!(
            help.stdout.contains(needle),
            "{needle} in:\n{}",
            help.stdout
        );
    }
}

#[test]
fn a_hand_edited_lock_key_is_called_that_not_an_engine_change() {
    let p = Project::new(&synth_config(1));
    assert_eq!(p.run(&["run"]).code, 0);
    let lock = p.lock();
    let key_line = lock
        .lines()
        .find(|l| l.trim_start().starts_with("key: "))
        .expect("a key line")
        .to_string();
    let edited = key_line.replace("key: ", "key: 00");
    std::fs::write(
        p.path().join("pipeline.lock"),
        lock.replace(&key_line, &edited[..key_line.len()]),
    )
    .unwrap();
    let status = p.run(&["status"]);
    assert_eq!(status.code, 1, "{}", status.stdout);
    assert!(
        !status.stdout.contains("engine format version"),
        "{}",
        status.stdout
    );
    assert!(
        status
            .stdout
            .contains("does not match its recorded components (hand-edited or corrupt lock)"),
        "{}",
        status.stdout
    );
}

const SCALER: &str = "dataset:\n  root: data\nstages:\n  - name: ingest\n    kind: ingest\n    inputs: [dataset]\n  - name: split\n    kind: split\n    inputs: [ingest]\n  - name: slice\n    kind: slice\n    inputs: [ingest, split]\n  - name: features\n    kind: features\n    inputs: [dataset, ingest, slice]\n    params:\n      ref: !foo 1\n  - name: scaler\n    kind: scaler\n    inputs: [features, slice]\n    params:\n      mode: [a]\n";

#[test]
fn ill_typed_enum_params_name_the_param_and_list_the_valid_values() {
    let p = Project::new(SCALER);
    let dag = p.run(&["dag"]);
    assert_eq!(dag.code, 2);
    assert!(!dag.stderr.contains("Value::Tagged"), "{}", dag.stderr);
    assert!(!dag.stderr.contains("untagged enum"), "{}", dag.stderr);
    assert!(
        dag.stderr.contains(
            "pipeline.yaml:17:7: stage `features` (features): params: ref: must be `max` or a positive number, got a tagged value `!foo 1`"
        ),
        "{}",
        dag.stderr
    );
    assert!(
        dag.stderr.contains(
            "pipeline.yaml:22:7: stage `scaler` (scaler): params: mode: expected `cell` or `band`, got a list `[a]`"
        ),
        "{}",
        dag.stderr
    );
}

#[test]
fn dataset_synthetic_errors_point_at_the_offending_key() {
    let base = "dataset:\n  root: data/synthetic\n  synthetic:\n    seed: 7\n    KEY\nstages:\n  - name: ingest\n    kind: ingest\n    inputs: [dataset]\n";
    let cases = [
        ("tracks_per_genre: -1", "pipeline.yaml:5:5: dataset.synthetic.tracks_per_genre: "),
        (
            "trakcs_per_genre: 3",
            "pipeline.yaml:5:5: dataset.synthetic: unknown field `trakcs_per_genre`",
        ),
        (
            "tracks_per_genre: 0",
            "pipeline.yaml:5:5: dataset.synthetic.tracks_per_genre: must be from 1 to 10000, got 0",
        ),
        (
            "tracks_per_genre: 20000",
            "pipeline.yaml:5:5: dataset.synthetic.tracks_per_genre: must be from 1 to 10000, got 20000",
        ),
        (
            "duplicates: 200",
            "pipeline.yaml:5:5: dataset.synthetic.duplicates: must be at most half of the 300 tracks",
        ),
    ];
    for (key, wanted) in cases {
        let p = Project::new(&base.replace("KEY", key));
        for args in [&["run"][..], &["synth"], &["status"]] {
            let out = p.run(args);
            assert_eq!(out.code, 2, "{args:?} {key}: {}", out.stdout);
            assert!(
                out.stderr.contains(wanted),
                "{args:?} {key}: {}",
                out.stderr
            );
        }
        assert!(!p.path().join("data/synthetic").exists());
    }
    let p = Project::new(&base.replace("KEY", "trakcs_per_genre: 3"));
    assert!(
        p.run(&["run"])
            .stderr
            .contains("(did you mean `tracks_per_genre`?)"),
        "did-you-mean hint"
    );
}

#[test]
fn file_level_errors_have_no_fake_position() {
    let p = Project::new(&synth_config(1));
    let out = p.run(&["--config", "nowhere.yaml", "status"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("nowhere.yaml: cannot read: "),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(":0:0"), "{}", out.stderr);
}
