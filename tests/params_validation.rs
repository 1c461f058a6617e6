//! Params every run would reject are rejected by `dag`, `status` and `run` before anything runs: each
//! problem of each stage at once, located at its key's line and column in pipeline.yaml.

mod util;

use util::Project;

/// Bad params in four stages. The dataset root does not exist: a command that got as far as hashing the
/// dataset (or generating one) would say so instead of naming the params.
const PIPELINE: &str = "\
dataset:
  root: no-such-folder
stages:
  - name: ingest
    kind: ingest
    inputs: [dataset]
  - name: split
    kind: split
    inputs: [ingest]
    params:
      train: 1.5
      val: 0.2
      test: 0.2
  - name: split_short
    kind: split
    inputs: [ingest]
    params:
      train: 0.6
      val: 0.2
      test: 0.1
  - name: slice
    kind: slice
    inputs: [ingest, split]
    params:
      segments_per_track: 10
      segment_samples: 0
  - name: features
    kind: features
    inputs: [dataset, ingest, slice]
    params:
      n_mels: 0
      n_fft: 2048
      hop_length: 0
";

/// Every error, in file order, as `pipeline.yaml:LINE:COLUMN: message`.
const EXPECTED: [&str; 6] = [
    "pipeline.yaml:10:5: stage `split` (split): params: train + val + test = 1.5 + 0.2 + 0.2 = 1.9, must be 1",
    "pipeline.yaml:11:7: stage `split` (split): params: train: 1.5 is not a fraction; each of train, val, test must lie in [0, 1]",
    "pipeline.yaml:17:5: stage `split_short` (split): params: train + val + test = 0.6 + 0.2 + 0.1 = 0.9, must be 1",
    "pipeline.yaml:26:7: stage `slice` (slice): params: segment_samples: 0 is outside the limit 1..=134217728 (the longest track decoding accepts)",
    "pipeline.yaml:31:7: stage `features` (features): params: n_mels: 0 is outside the limit 1..=2048",
    "pipeline.yaml:33:7: stage `features` (features): params: hop_length: 0 is outside the limit 1..=134217728",
];

fn project() -> Project {
    let p = Project::new(PIPELINE);
    std::fs::remove_dir(p.path().join("data")).expect("remove the unused data folder");
    p
}

/// The located errors a command printed, without the leading `error: `.
fn errors(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .filter(|l| l.starts_with("pipeline.yaml:"))
        .collect()
}

#[test]
fn dag_status_and_run_reject_every_bad_param_before_running_anything() {
    let p = project();
    for command in [&["dag"][..], &["status"], &["run"]] {
        let out = p.run(command);
        assert_eq!(out.code, 2, "{command:?}\n{}", out.all());
        assert_eq!(errors(&out.stderr), EXPECTED, "{command:?}\n{}", out.all());
        assert!(!out.stderr.contains("no-such-folder"), "{}", out.all());
        assert!(out.ran().is_empty(), "{}", out.all());
    }
    assert!(!p.path().join("artifacts/objects").exists());
    assert!(!p.lock_path().exists());
}

#[test]
fn status_json_lists_each_param_problem_with_its_position() {
    let p = project();
    let out = p.run(&["status", "--json"]);
    assert_eq!(out.code, 2, "{}", out.all());
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON on stdout");
    let located: Vec<String> = json["error"]["errors"]
        .as_array()
        .expect("an errors list")
        .iter()
        .map(|e| {
            format!(
                "{}:{}:{}: {}",
                e["file"].as_str().unwrap_or_default(),
                e["line"],
                e["column"],
                e["message"].as_str().unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(located, EXPECTED);
    assert_eq!(json["error"]["kind"], "config");
}

#[test]
fn fixing_the_params_lets_the_pipeline_plan() {
    let p = project();
    let fixed = PIPELINE
        .replace("train: 1.5", "train: 0.6")
        .replace("test: 0.1", "test: 0.2")
        .replace("segment_samples: 0", "segment_samples: 4096")
        .replace("n_mels: 0", "n_mels: 32")
        .replace("hop_length: 0", "hop_length: 256");
    p.write_config(&fixed);
    let out = p.run(&["dag"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("features (features)"), "{}", out.all());
}
#[test]
fn ill_typed_enum_params_name_the_param_and_list_the_valid_values() {
    let registry = genrelab::stages::registry();
    let kind = |name: &str| {
        registry
            .iter()
            .find(|k| k.kind() == name)
            .expect("registered kind")
    };
    let message = |name: &str, yaml: &str| {
        let raw: serde_yaml::Value = serde_yaml::from_str(yaml).expect("yaml");
        kind(name)
            .canonical_params(&raw)
            .expect_err("ill-typed")
            .message
    };
    assert_eq!(
        message("scaler", "mode: [a]"),
        "mode: expected `cell` or `band`, got a list `[a]`"
    );
    assert_eq!(
        message("scaler", "mode: {a: 1}"),
        "mode: expected `cell` or `band`, got a mapping `{a: 1}`"
    );
    assert_eq!(
        message("features", "ref: !foo 1"),
        "ref: must be `max` or a positive number, got a tagged value `!foo 1`"
    );
    assert_eq!(
        message("features", "pad_mode: [x, 2]"),
        "pad_mode: expected `constant` or `reflect`, got a list `[x, 2]`"
    );
}

#[test]
fn every_kind_accepts_its_defaults_and_reports_every_problem_of_bad_params() {
    let registry = genrelab::stages::registry();
    for kind in &registry {
        let defaults = kind
            .canonical_params(&serde_yaml::Value::Null)
            .expect("defaults deserialize");
        assert_eq!(kind.validate_params(&defaults), [], "{}", kind.kind());
    }
    let slice = registry
        .iter()
        .find(|k| k.kind() == "slice")
        .expect("registered kind");
    let raw: serde_yaml::Value =
        serde_yaml::from_str("segments_per_track: 0\nsegment_samples: 0").expect("yaml");
    let params = slice.canonical_params(&raw).expect("well-typed");
    let problems: Vec<String> = slice
        .validate_params(&params)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        problems,
        [
            "segments_per_track: 0 is outside the limit 1..=65536",
            "segment_samples: 0 is outside the limit 1..=134217728 (the longest track decoding accepts)",
        ]
    );
}

/// Both shipped profiles plan as written: every stage's params validate and every input resolves, including
/// the study profile's transfer chain and report, which no test runs (they need real corpora).
#[test]
fn both_shipped_pipelines_plan() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in ["pipeline.yaml", "pipeline.study.yaml"] {
        let text = std::fs::read_to_string(root.join(file)).expect("shipped pipeline");
        let p = Project::new(&text);
        let dag = p.run(&["dag"]);
        assert_eq!(dag.code, 0, "{file}: {}", dag.all());
        for stage in ["tournament", "cv_summary", "transfer", "report"] {
            assert!(
                dag.stdout
                    .lines()
                    .any(|l| l.starts_with(&format!("{stage} ("))),
                "{file} has no `{stage}`: {}",
                dag.stdout
            );
        }
        let report = dag
            .stdout
            .lines()
            .find(|l| l.starts_with("report ("))
            .unwrap_or_default();
        assert!(report.contains("transfer"), "{file}: {report}");
    }
}
