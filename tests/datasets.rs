//! Named datasets (`datasets:` in pipeline.yaml), end to end on toy stages (built with `--features
//! toy-stages`): each is hashed and locked on its own, stages list them as `dataset:NAME`, and mistakes are
//! located errors. The unnamed `dataset:` form is covered, unchanged, by every other test file.

mod util;

use util::Project;

/// Two named datasets, each scanned by its own stage (block and flow style lists), and a join of both.
const PIPELINE: &str = "\
datasets:
  gtzan:
    root: data/gtzan
  transfer:
    root: data/transfer
stages:
  - name: scan_gtzan
    kind: toy_scan
    inputs:
      - dataset:gtzan
  - name: scan_transfer
    kind: toy_scan
    inputs: [dataset:transfer]
  - name: join
    kind: toy_map
    inputs: [scan_gtzan, scan_transfer]
";

fn project() -> Project {
    let p = Project::new(PIPELINE);
    for (dataset, file, bytes) in [
        ("gtzan", "blues/one.bin", b"one"),
        ("transfer", "jazz/two.bin", b"two"),
    ] {
        let path = p.path().join("data").join(dataset).join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    p
}

#[test]
fn each_named_dataset_is_locked_and_an_edit_reruns_only_its_scanner() {
    let p = project();
    let first = p.run(&["run"]);
    assert_eq!(first.code, 0, "{}", first.all());
    assert_eq!(first.ran(), vec!["join", "scan_gtzan", "scan_transfer"]);

    let lock = p.lock_yaml();
    assert!(lock.get("dataset").is_none(), "{}", p.lock());
    for (name, root) in [("gtzan", "data/gtzan"), ("transfer", "data/transfer")] {
        let entry = &lock["datasets"][name];
        assert_eq!(entry["root"].as_str(), Some(root), "{}", p.lock());
        assert_eq!(entry["files"].as_u64(), Some(1), "{}", p.lock());
        assert_eq!(entry["bytes"].as_u64(), Some(3), "{}", p.lock());
    }
    let gtzan_digest = lock["datasets"]["gtzan"]["digest"].as_str().unwrap();
    assert_eq!(
        p.lock_field("scan_gtzan", &["inputs", "dataset:gtzan", "dataset"])
            .as_deref(),
        Some(gtzan_digest)
    );
    let verify = p.run(&["verify"]);
    assert_eq!(verify.code, 0, "{}", verify.all());

    let lineage = p.run(&["lineage", "scan_transfer"]);
    assert_eq!(lineage.code, 0, "{}", lineage.all());
    assert!(
        lineage.stdout.contains("dataset transfer data/transfer "),
        "{}",
        lineage.all()
    );

    // Same bytes under another name: only the transfer dataset's digest moves.
    std::fs::write(p.path().join("data/transfer/jazz/two.bin"), b"TWO").unwrap();
    let status = p.run(&["status"]);
    assert_eq!(status.code, 1, "{}", status.all());
    assert!(
        status.status_line("scan_gtzan").contains("up to date"),
        "{}",
        status.all()
    );
    assert!(
        status.status_line("scan_transfer").contains("stale"),
        "{}",
        status.all()
    );
    let second = p.run(&["run"]);
    assert_eq!(second.code, 0, "{}", second.all());
    assert_eq!(second.ran(), vec!["join", "scan_transfer"]);
    let lock2 = p.lock_yaml();
    assert_eq!(lock2["datasets"]["gtzan"], lock["datasets"]["gtzan"]);
    assert_ne!(
        lock2["datasets"]["transfer"]["digest"],
        lock["datasets"]["transfer"]["digest"]
    );
    let verify = p.run(&["verify"]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    let again = p.run(&["run"]);
    assert!(again.ran().is_empty(), "{}", again.all());
}

#[test]
fn the_status_json_names_every_dataset() {
    let p = project();
    let status = p.run(&["status", "--json"]);
    let value: serde_json::Value =
        serde_json::from_str(&status.stdout).unwrap_or_else(|_| panic!("{}", status.all()));
    assert!(value.get("dataset").is_none(), "{}", status.all());
    assert_eq!(value["datasets"]["gtzan"]["root"], "data/gtzan");
    assert_eq!(value["datasets"]["transfer"]["state"], "ready");
}

#[test]
fn an_unknown_dataset_name_is_located_with_a_suggestion() {
    let p = project();
    p.write_config(&PIPELINE.replace("[dataset:transfer]", "[dataset:transfr]"));
    let run = p.run(&["run"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(
        run.stderr.contains(
            "pipeline.yaml:13:14: stage `scan_transfer`: input `dataset:transfr` is not a dataset in \
             this pipeline (did you mean `dataset:transfer`?)"
        ),
        "{}",
        run.all()
    );
    // The unnamed `dataset` is not declared either when only named ones are.
    p.write_config(&PIPELINE.replace("[dataset:transfer]", "[dataset]"));
    let run = p.run(&["status"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(
        run.stderr.contains(
            "pipeline.yaml:13:14: stage `scan_transfer`: input `dataset` is not a dataset"
        ),
        "{}",
        run.all()
    );
}

#[test]
fn both_dataset_and_datasets_is_a_located_error() {
    let p = project();
    p.write_config(&format!("dataset:\n  root: data\n{PIPELINE}"));
    let run = p.run(&["status"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(
        run.stderr
            .contains("pipeline.yaml:3:1: both `dataset:` and `datasets:` are set"),
        "{}",
        run.all()
    );
}

#[test]
fn malformed_datasets_sections_are_located() {
    let p = project();
    p.write_config(&PIPELINE.replace("    root: data/transfer\n", "    rot: data/transfer\n"));
    let run = p.run(&["status"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(
        run.stderr
            .contains("pipeline.yaml:5:5: datasets.transfer: unknown field `rot`"),
        "{}",
        run.all()
    );
    p.write_config(&PIPELINE.replace("  transfer:\n", "  trans.fer:\n"));
    let run = p.run(&["status"]);
    assert!(
        run.stderr
            .contains("pipeline.yaml:4:3: datasets: name `trans.fer`"),
        "{}",
        run.all()
    );
}

#[test]
fn a_stage_taking_one_dataset_cannot_list_two() {
    let p = project();
    p.write_config(&PIPELINE.replace("[dataset:transfer]", "[dataset:transfer, dataset:gtzan]"));
    let run = p.run(&["status"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(
        run.stderr.contains(
            "needs artifact `dataset`, but several inputs provide it (dataset:transfer, dataset:gtzan)"
        ),
        "{}",
        run.all()
    );
}

#[test]
fn the_dataset_prefix_is_reserved_in_stage_names() {
    let p = project();
    p.write_config(&PIPELINE.replace("name: join", "name: dataset:join"));
    let run = p.run(&["status"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(
        run.stderr
            .contains("the prefix `dataset:` is reserved for named datasets"),
        "{}",
        run.all()
    );
}

#[test]
fn each_synthetic_named_dataset_is_generated_into_its_root() {
    let p = Project::new(
        "datasets:\n  a:\n    root: data/a\n    synthetic:\n      tracks_per_genre: 1\n      seed: 1\n      duplicates: 0\n  b:\n    root: data/b\n    synthetic:\n      tracks_per_genre: 1\n      seed: 2\n      duplicates: 0\nstages:\n  - name: scan_a\n    kind: toy_scan\n    inputs: [dataset:a]\n  - name: scan_b\n    kind: toy_scan\n    inputs: [dataset:b]\n",
    );
    let status = p.run(&["status", "--json"]);
    assert_eq!(status.code, 1, "{}", status.all());
    let value: serde_json::Value =
        serde_json::from_str(&status.stdout).unwrap_or_else(|_| panic!("{}", status.all()));
    assert_eq!(value["datasets"]["a"]["state"], "not_generated");
    let run = p.run(&["run"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stdout
            .contains("datasets.a: generated the synthetic corpus"),
        "{}",
        run.all()
    );
    assert!(
        run.stdout
            .contains("datasets.b: generated the synthetic corpus"),
        "{}",
        run.all()
    );
    let lock = p.lock_yaml();
    assert_ne!(
        lock["datasets"]["a"]["digest"], lock["datasets"]["b"]["digest"],
        "different seeds make different corpora"
    );
    // A bad synthetic param is located under its dataset.
    p.write_config(&p.config().replace("seed: 2", "sed: 2"));
    let run = p.run(&["status"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(
        run.stderr
            .contains("pipeline.yaml:12:7: datasets.b.synthetic: unknown field `sed`"),
        "{}",
        run.all()
    );
}

#[test]
fn a_stage_reads_several_datasets_each_by_its_name() {
    let p = project();
    p.write_config(&format!(
        "{PIPELINE}  - name: both
    kind: toy_datasets
    inputs: [dataset:gtzan, dataset:transfer]
"
    ));
    let run = p.run(&["run"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let lock = p.lock_yaml();
    let digest = |name: &str| {
        lock["datasets"][name]["digest"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let output = lock["stages"]["both"]["outputs"]["data"].as_str().unwrap();
    let listing = std::fs::read_to_string(p.object_path(output)).unwrap();
    assert_eq!(
        listing,
        format!(
            "gtzan 1 {}\ntransfer 1 {}",
            digest("gtzan"),
            digest("transfer")
        )
    );
}
