//! The `audit` stage end to end (built with `--features toy-stages`): its artifact is what
//! `genrelab audit <the stage> --json` prints on the same run, a planted leak upstream makes it say which
//! invariant fails and name the culprit, and a change to an ancestor's lineage alone (its output bytes
//! unchanged) re-runs it.
#![cfg(feature = "toy-stages")]

mod util;

use util::Project;

const DATA: &str = "
datasets:
  gtzan:
    root: data/tiny
    synthetic: {tracks_per_genre: 4, seed: 3, duplicates: 2}
stages:
  - {name: ingest, kind: ingest, inputs: ['dataset:gtzan']}
  - {name: split, kind: split, inputs: [ingest]}
  - {name: slice, kind: slice, inputs: [ingest, split], params: {segments_per_track: 2}}
  - name: features
    kind: features
    inputs: ['dataset:gtzan', ingest, slice]
    params: {n_mels: 32, hop_length: 2048}
";

const STUDY: &str = "
  - {name: scaler, kind: scaler, inputs: [features, slice]}
  - name: train
    kind: train
    inputs: [features, scaler, slice, ingest]
    params: {arch: unet_lean, width: 0.25, batch_size: 16, max_epochs: 1}
  - {name: tournament, kind: tournament, inputs: [train, features, scaler, slice, ingest]}
  - name: cv
    kind: cv
    inputs: [features, slice, split, ingest]
    foreach:
      mode: [grouped, study_replica]
      fold: [0, 1, 2]
    params:
      folds: 3
      train: {arch: unet_lean, width: 0.25, batch_size: 16, max_epochs: 1, augment: false}
  - {name: cv_summary, kind: cv_summary, inputs: [cv]}
  - {name: audit, kind: audit, inputs: [tournament, cv_summary]}
";

/// A scaler that records a fit on every split's rows (`lie: true`: on train, with every track); its output
/// bytes are the same either way, only its lineage differs.
const LEAKY: &str = "
  - {name: scaler, kind: toy_leaky_scaler, inputs: [features, slice], params: {lie: LIE}}
  - {name: audit, kind: audit, inputs: [scaler]}
";

fn run(p: &Project) -> util::Run {
    let run = p.run(&["run", "-j", "2"]);
    assert_eq!(run.code, 0, "{}", run.all());
    run
}

/// The audit stage's artifact, parsed.
fn artifact(p: &Project) -> (String, serde_json::Value) {
    let digest = p.lock_field("audit", &["outputs", "audit"]).unwrap();
    let bytes = p.object(&digest);
    (digest, serde_json::from_slice(&bytes).unwrap())
}

fn check<'v>(report: &'v serde_json::Value, id: &str) -> &'v serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id} in {report}"))
}

#[test]
fn the_audit_artifact_is_what_the_command_prints() {
    let p = Project::new(&(DATA.to_string() + STUDY));
    run(&p);
    let (_, stage) = artifact(&p);
    let command = p.run(&["audit", "audit", "--json"]);
    assert_eq!(command.code, 0, "{}", command.all());
    let printed: serde_json::Value = serde_json::from_str(&command.stdout).unwrap();
    assert_eq!(stage, printed);

    assert_eq!(stage["target"], "audit");
    assert_eq!(stage["holds"], true);
    assert_eq!(
        stage["verdict"].as_str().unwrap().split(';').next(),
        Some("all 11 invariants hold")
    );
    assert_eq!(stage["checks"].as_array().unwrap().len(), 11);
    // The study's replica folds sit behind cv_summary: listed as leaky on purpose, not counted.
    let replicas: Vec<&str> = stage["replica_stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(replicas.len(), 3, "{replicas:?}");
    assert!(
        replicas.iter().all(|s| s.contains("study_replica")),
        "{replicas:?}"
    );
    let stages: Vec<&str> = stage["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(
        stages.contains(&"tournament") && stages.contains(&"ingest"),
        "{stages:?}"
    );
    assert!(!stages.contains(&"audit"), "{stages:?}");
    assert_eq!(check(&stage, "cv-grouped")["checked"], 6);

    // The audit reads manifests only: a second run keeps it cached.
    let again = run(&p);
    assert!(again.ran().is_empty(), "{}", again.all());
}

#[test]
fn a_planted_leak_makes_the_artifact_fail_naming_the_culprit() {
    let p = Project::new(&(DATA.to_string() + &LEAKY.replace("LIE", "false")));
    let first = run(&p);
    assert!(
        first.ran().contains(&"audit".to_string()),
        "{}",
        first.all()
    );
    let (_, report) = artifact(&p);
    assert_eq!(report["holds"], false);
    let scaler = check(&report, "scaler-fit");
    assert_eq!(scaler["holds"], false);
    let failures: Vec<&str> = scaler["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(
        failures
            .iter()
            .any(|f| f.starts_with("scaler: scaler statistics fitted on test rows")),
        "{failures:?}"
    );
    // `run` prints the verdict under the stage's line.
    let verdict = format!("leakage audit: {}", report["verdict"].as_str().unwrap());
    assert!(first.stdout.contains(&verdict), "{}", first.all());
    // The command on the same run agrees, and exits 1 on the failure.
    let command = p.run(&["audit", "audit", "--json"]);
    assert_eq!(command.code, 1, "{}", command.all());
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&command.stdout).unwrap(),
        report
    );
}

#[test]
fn a_change_to_an_ancestors_lineage_alone_reruns_the_audit() {
    let p = Project::new(&(DATA.to_string() + &LEAKY.replace("LIE", "false")));
    run(&p);
    let scaler_before = p.lock_field("scaler", &["outputs", "scaler"]).unwrap();
    let (digest_before, told) = artifact(&p);

    p.write_config(&(DATA.to_string() + &LEAKY.replace("LIE", "true")));
    let second = run(&p);
    assert_eq!(
        second.ran(),
        ["audit".to_string(), "scaler".to_string()],
        "{}",
        second.all()
    );
    // The scaler's bytes did not move; only its lineage did, and the audit saw it.
    assert_eq!(
        p.lock_field("scaler", &["outputs", "scaler"]).unwrap(),
        scaler_before
    );
    let (digest_after, lied) = artifact(&p);
    assert_ne!(digest_after, digest_before);
    assert_eq!(lied["holds"], false);
    let failures = check(&lied, "scaler-fit")["failures"].to_string();
    assert!(
        failures.contains("scaler: scaler statistics fitted on tracks outside train"),
        "{failures}"
    );
    assert_ne!(told, lied);
}
