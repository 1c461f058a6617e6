//! Splits by declaration (built with `--features toy-stages`): a stage is handed the per-split artifacts
//! (`rows@train`) its kind declares and no others, the engine records what it handed over, and a lineage
//! record about a split the stage never received fails the run.

mod util;

use util::Project;

fn project(reader_params: &str) -> Project {
    let p = Project::new(&pipeline(reader_params));
    std::fs::create_dir_all(p.path().join("data")).unwrap();
    p
}

fn pipeline(reader_params: &str) -> String {
    format!(
        "\
dataset:
  root: data
stages:
  - name: rows
    kind: toy_split_source
  - name: reader
    kind: toy_split_reader
    inputs: [rows]
{reader_params}"
    )
}

#[test]
fn a_stage_is_handed_only_the_splits_it_declares_and_the_engine_records_them() {
    let p = project("");
    let run = p.run(&["run"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let tree: serde_json::Value =
        serde_json::from_str(&p.run(&["lineage", "reader", "--json"]).stdout).unwrap();
    assert_eq!(
        tree["split_reads"],
        serde_json::json!({"train": ["rows.rows@train"], "val": ["rows.rows@val"]})
    );
    let inputs = p.lock_yaml()["stages"]["reader"]["inputs"]["rows"].clone();
    let mut handed: Vec<String> = inputs
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    handed.sort();
    assert_eq!(handed, ["rows@train", "rows@val"], "{}", p.lock());
    assert!(p
        .run(&["lineage", "reader"])
        .stdout
        .contains("reads splits train, val"));
}

#[test]
fn a_stage_that_declares_only_train_and_val_cannot_open_test() {
    let p = project("    params:\n      peek: rows@test\n");
    let run = p.run(&["run"]);
    assert_ne!(run.code, 0);
    assert!(
        run.all().contains(
            "input artifact `rows@test`: this stage kind does not declare it among its needs, and a \
             stage is handed only the splits it declares"
        ),
        "{}",
        run.all()
    );
}

#[test]
fn a_record_about_a_split_never_handed_over_fails_the_run() {
    let p = project("    params:\n      claim: test\n");
    let run = p.run(&["run"]);
    assert_ne!(run.code, 0);
    assert!(
        run.all()
            .contains("stage `reader` (toy_split_reader): its lineage records")
            && run.all().contains("but it was handed no `test` artifact"),
        "{}",
        run.all()
    );
    // The same claim about a split it was handed is accepted.
    p.write_config(&pipeline("    params:\n      claim: val\n"));
    let run = p.run(&["run"]);
    assert_eq!(run.code, 0, "{}", run.all());
}

#[test]
fn an_unknown_split_name_is_an_error_not_a_default() {
    let p = project("    params:\n      claim: holdout\n");
    let run = p.run(&["dag"]);
    assert_ne!(run.code, 0);
    assert!(run.all().contains("holdout"), "{}", run.all());
}
