//! Run settings (`exec:`) never enter a key, reach the stage, and are recorded in run stats; a stage kind's
//! determinism class decides how a re-run is compared with a stored result.

mod util;

use util::Project;

const PIPELINE: &str = "\
dataset:
  root: data
stages:
  - name: src
    kind: toy_source
    params:
      value: abc
      size: 100
  - name: a
    kind: toy_map
    inputs: [src]
    params:
      salt: a
";

fn run_stats(p: &Project) -> Vec<serde_json::Value> {
    let mut stats: Vec<serde_json::Value> = std::fs::read_dir(p.path().join("artifacts/runs"))
        .unwrap()
        .flatten()
        .map(|e| serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap())
        .collect();
    stats.sort_by_key(|s| s["stage"].as_str().unwrap_or_default().to_string());
    stats
}

#[test]
fn changing_threads_device_or_memory_reruns_nothing_and_is_recorded() {
    let p = Project::new(PIPELINE);
    let first = p.run(&["run", "-j", "1"]);
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    let lock = p.lock();
    for exec in [
        "exec:\n  threads: 2\n",
        "exec:\n  device: cpu\n  memory: 2GiB\n",
        "exec:\n  threads: 1\n",
    ] {
        p.write_config(&format!("{exec}{PIPELINE}"));
        let status = p.run(&["status"]);
        assert_eq!(status.code, 0, "{exec}: {}", status.stdout);
        let again = p.run(&["run"]);
        assert_eq!(again.code, 0, "{}", again.stderr);
        assert!(again.ran().is_empty(), "{exec}: {}", again.stdout);
        assert_eq!(p.lock(), lock, "{exec}");
    }
    // A per-stage block overrides the global one; a forced re-run records what it ran with.
    p.write_config(&format!(
        "exec:\n  threads: 1\n  memory: 1GiB\n{}",
        PIPELINE.replace(
            "      salt: a\n",
            "      salt: a\n    exec:\n      threads: 3\n"
        )
    ));
    let forced = p.run(&["run", "--force", "a", "--force", "src"]);
    assert_eq!(forced.code, 0, "{}{}", forced.stdout, forced.stderr);
    assert_eq!(p.lock(), lock);
    let stats = run_stats(&p);
    let by_stage = |name: &str| stats.iter().find(|s| s["stage"] == name).unwrap().clone();
    assert_eq!(by_stage("a")["threads"], 3);
    assert_eq!(by_stage("src")["threads"], 1);
    assert_eq!(by_stage("a")["device"], "cpu");
    assert_eq!(by_stage("a")["memory_bytes"], 1u64 << 30);
}

#[test]
fn bad_run_settings_are_located_and_cuda_is_refused_on_this_build() {
    let p = Project::new(PIPELINE);
    p.write_config(&PIPELINE.replace(
        "      salt: a\n",
        "      salt: a\n    exec:\n      device: cuda:0\n      threads: 0\n",
    ));
    for command in [&["dag"][..], &["run"]] {
        let out = p.run(command);
        assert_eq!(out.code, 2, "{}", out.stdout);
        assert!(
            out.stderr.contains("pipeline.yaml:15:")
                && out
                    .stderr
                    .contains("exec.device: `cuda:0` needs a genrelab built with a CUDA backend")
                && out.stderr.contains("pipeline.yaml:16:")
                && out.stderr.contains("exec.threads: must be at least 1"),
            "{}",
            out.stderr
        );
    }
    p.write_config(&format!("exec:\n  memory: lots\n{PIPELINE}"));
    let out = p.run(&["dag"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("exec.memory"), "{}", out.stderr);
}

#[test]
fn a_tolerance_class_stage_is_compared_by_its_class() {
    let p = Project::new(&format!(
        "{PIPELINE}  - name: gpu\n    kind: toy_jitter\n  - name: after\n    kind: toy_map\n    inputs: [gpu]\n"
    ));
    assert_eq!(p.run(&["run"]).code, 0);
    // Its output differs on every run: --force replaces it instead of calling the stage nondeterministic.
    let forced = p.run(&["run", "--force", "gpu"]);
    assert_eq!(forced.code, 0, "{}{}", forced.stdout, forced.stderr);
    assert!(forced.line("gpu").contains(": ran ("), "{}", forced.stdout);
    assert!(
        forced.line("after").contains(": ran ("),
        "{}",
        forced.stdout
    );
    // verify --rerun reports the difference as the class allows, and still fails an exact stage that differs.
    let rerun = p.run(&["verify", "--rerun"]);
    assert_eq!(rerun.code, 0, "{}", rerun.stdout);
    assert!(
        rerun.stdout.contains(
            "gpu: output `data` differs bit for bit, as its stage kind's `tolerance` class allows"
        ),
        "{}",
        rerun.stdout
    );
    assert!(
        rerun
            .stdout
            .contains("after: computed from `gpu`, whose output differs as its class allows"),
        "{}",
        rerun.stdout
    );
    // (That an exact stage that differs still fails is pinned by
    // engine::verify_rerun_recomputes_every_stage_and_catches_an_output_that_does_not_reproduce.)
}
