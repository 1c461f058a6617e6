//! Folder outputs (a model is a folder of files): stored as a tree of (relative path, file digest), verified,
//! collected and materialised like a file.

mod util;

use util::Project;

const PIPELINE: &str = "\
dataset:
  root: data
stages:
  - name: model
    kind: toy_tree
    params:
      files:
        weights.bin: W1
        metrics/epochs.csv: \"epoch,loss\"
  - name: list
    kind: toy_tree_list
    inputs: [model]
";

fn output(p: &Project, stage: &str, name: &str) -> String {
    let digest = p
        .lock_field(stage, &["outputs", name])
        .expect("output in the lock");
    std::fs::read_to_string(p.object_path(&digest)).unwrap()
}

fn tree_files(p: &Project) -> Vec<(String, String)> {
    let digest = p.lock_field("model", &["outputs", "tree"]).unwrap();
    let tree: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.object_path(&digest)).unwrap()).unwrap();
    tree["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_folder_output_round_trips_and_is_deterministic() {
    let p = Project::new(PIPELINE);
    let first = p.run(&["run"]);
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    // The consumer sees the folder, files at their relative paths.
    assert_eq!(
        output(&p, "list", "data"),
        "metrics/epochs.csv=epoch,loss\nweights.bin=W1"
    );
    let files = tree_files(&p);
    assert_eq!(
        files
            .iter()
            .map(|(path, _)| path.as_str())
            .collect::<Vec<_>>(),
        ["metrics/epochs.csv", "weights.bin"]
    );
    let verify = p.run(&["verify"]);
    assert_eq!(verify.code, 0, "{}", verify.stdout);
    // Two trees, their two files and two manifests.
    assert!(
        verify.stdout.contains("verify: 6 artifacts match"),
        "{}",
        verify.stdout
    );
    assert!(p.run(&["run"]).ran().is_empty());
    let fresh = Project::new(PIPELINE);
    assert_eq!(fresh.run(&["run", "-j", "1"]).code, 0);
    assert_eq!(fresh.lock(), p.lock());
}

#[test]
fn a_corrupt_file_inside_a_folder_output_is_found_and_repaired() {
    let p = Project::new(PIPELINE);
    assert_eq!(p.run(&["run"]).code, 0);
    let (_, weights) = tree_files(&p)
        .into_iter()
        .find(|(path, _)| path == "weights.bin")
        .unwrap();
    std::fs::write(p.object_path(&weights), "W2").unwrap();
    let verify = p.run(&["verify"]);
    assert_eq!(verify.code, 1, "{}", verify.stdout);
    assert!(
        verify.stdout.contains("output `tree` file `weights.bin`"),
        "{}",
        verify.stdout
    );
    let status = p.run(&["status"]);
    assert_eq!(status.code, 1);
    assert!(
        status.stdout.contains("tree/weights.bin") && status.stdout.contains("corrupt"),
        "{}",
        status.stdout
    );
    // A stage that must re-run downstream never reads the bad file: the producer is recomputed first.
    let again = p.run(&["run"]);
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    assert_eq!(again.ran(), vec!["model"]);
    assert_eq!(p.run(&["verify"]).code, 0);
    p.write_config(&PIPELINE.replace(
        "    inputs: [model]\n",
        "    inputs: [model]\n    params: {}\n",
    ));
    let forced = p.run(&["run", "--force", "list"]);
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    assert_eq!(
        output(&p, "list", "data"),
        "metrics/epochs.csv=epoch,loss\nweights.bin=W1"
    );
}

#[test]
fn gc_keeps_the_files_of_live_folders_and_removes_the_rest() {
    let p = Project::new(PIPELINE);
    assert_eq!(p.run(&["run"]).code, 0);
    let old_files = tree_files(&p);
    p.write_config(&PIPELINE.replace("weights.bin: W1", "weights.bin: W9"));
    assert_eq!(p.run(&["run"]).code, 0);
    let new_files = tree_files(&p);
    let gc = p.run(&["gc"]);
    assert_eq!(gc.code, 0, "{}", gc.stderr);
    for (path, digest) in &new_files {
        assert!(
            p.object_path(digest).is_file(),
            "gc removed live file {path}"
        );
    }
    let (_, old_weights) = old_files
        .iter()
        .find(|(path, _)| path == "weights.bin")
        .unwrap();
    assert!(
        !p.object_path(old_weights).exists(),
        "gc kept the old weights"
    );
    // The unchanged file is shared by both trees and stays.
    let (_, csv) = new_files
        .iter()
        .find(|(path, _)| path == "metrics/epochs.csv")
        .unwrap();
    assert!(old_files.iter().any(|(_, d)| d == csv));
    assert_eq!(p.run(&["verify"]).code, 0);
    assert_eq!(
        output(&p, "list", "data"),
        "metrics/epochs.csv=epoch,loss\nweights.bin=W9"
    );
}
