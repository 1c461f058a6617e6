//! Long stages: a checkpoint folder per key survives a kill and the resumed run ends with the bytes of an
//! uninterrupted one; Ctrl-C stops at a safe point with exit 130 and a consistent store; progress events
//! print one line each when not on a terminal.

mod util;

use std::time::{Duration, Instant};

use util::Project;

const PIPELINE: &str = "\
dataset:
  root: data
stages:
  - name: count
    kind: toy_count
    params:
      steps: 40
      sleep_ms: 25
  - name: after
    kind: toy_map
    inputs: [count]
";

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(120)
}

fn lone_lock() -> String {
    let p = Project::new(PIPELINE);
    let run = p.run(&["run"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("40 steps"), "{}", run.stdout);
    p.lock()
}

fn checkpoint_files(p: &Project) -> usize {
    std::fs::read_dir(p.path().join("artifacts/checkpoints"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("state").is_file())
        .count()
}

#[test]
fn a_killed_stage_resumes_from_its_checkpoint_and_ends_with_the_same_bytes() {
    let p = Project::new(PIPELINE);
    let signals = tempfile::tempdir().unwrap();
    let mut run = p.spawn_env(&["run"], &[("GENRELAB_TOY_SIGNAL_DIR", signals.path())]);
    util::wait_for("step 10 to be saved", deadline(), || {
        signals.path().join("count.step-10").exists() || run.exited()
    });
    assert!(!run.exited(), "the run ended before step 10");
    run.kill();
    assert_eq!(
        checkpoint_files(&p),
        1,
        "the checkpoint did not survive the kill"
    );
    let resumed = p.run(&["run"]);
    assert_eq!(resumed.code, 0, "{}{}", resumed.stdout, resumed.stderr);
    let line = resumed
        .stderr
        .lines()
        .find(|l| l.starts_with("count: resumed at step "))
        .unwrap_or_else(|| panic!("no resume in:\n{}", resumed.stderr));
    let at: u64 = line
        .trim_start_matches("count: resumed at step ")
        .split('/')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(at >= 10, "{line}");
    assert_eq!(
        p.lock(),
        lone_lock(),
        "a resumed run must end with an uninterrupted run's bytes"
    );
    assert_eq!(
        checkpoint_files(&p),
        0,
        "a published key's checkpoint is removed"
    );
    assert_eq!(p.run(&["verify"]).code, 0);
}

#[test]
fn ctrl_c_stops_at_a_safe_point_with_exit_130_and_a_consistent_store() {
    let p = Project::new(PIPELINE);
    let signals = tempfile::tempdir().unwrap();
    let mut run = p.spawn_env(&["run"], &[("GENRELAB_TOY_SIGNAL_DIR", signals.path())]);
    util::wait_for("step 5 to be saved", deadline(), || {
        signals.path().join("count.step-5").exists() || run.exited()
    });
    assert!(!run.exited(), "the run ended before step 5");
    run.interrupt();
    let stopped = run.wait(deadline());
    assert_eq!(stopped.code, 130, "{}", stopped.all());
    assert!(
        stopped.stdout.contains("count: cancelled"),
        "{}",
        stopped.all()
    );
    assert!(
        stopped.stdout.contains("after: cancelled"),
        "{}",
        stopped.all()
    );
    assert!(
        stopped.stdout.contains("`genrelab run` resumes"),
        "{}",
        stopped.all()
    );
    // Nothing half-done is recorded; the checkpoint is kept for the resume.
    assert!(!p.lock().contains("count:"), "{}", p.lock());
    assert!(p.objects_failing_their_hash().is_empty());
    assert_eq!(checkpoint_files(&p), 1);
    let resumed = p.run(&["run"]);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert!(
        resumed.stderr.contains("count: resumed at step "),
        "{}",
        resumed.stderr
    );
    assert_eq!(p.lock(), lone_lock());
}

#[test]
fn progress_events_print_one_line_each_off_a_terminal() {
    let p = Project::new(
        &PIPELINE
            .replace("steps: 40", "steps: 3")
            .replace("sleep_ms: 25", "sleep_ms: 0"),
    );
    let run = p.run(&["run"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("count: step "))
        .collect();
    assert_eq!(
        lines,
        [
            "count: step 1/3 loss=0.5000",
            "count: step 2/3 loss=0.3333",
            "count: step 3/3 loss=0.2500"
        ],
        "{}",
        run.stderr
    );
}
