//! End-to-end tests of the engine, driving the binary on toy stages (built with `--features toy-stages`).

mod util;

use std::time::{Duration, Instant};

use util::Project;

/// A diamond with a tail: src -> a, b -> join -> tail, plus a dataset scanner feeding b.
const PIPELINE: &str = "\
# a toy pipeline
dataset:
  root: data
stages:
  - name: src
    kind: toy_source
    params:
      value: abc
      size: 100
  - name: scan
    kind: toy_scan
    inputs: [dataset]
  - name: a
    kind: toy_map
    inputs: [src]
    params:
      salt: a
  - name: b
    kind: toy_map
    inputs: [src, scan]
    params:
      salt: b
  - name: join
    kind: toy_map
    inputs: [a, b]
  - name: tail
    kind: toy_map
    inputs: [join]
    params:
      salt: t
";

fn project() -> Project {
    let p = Project::new(PIPELINE);
    std::fs::create_dir_all(p.path().join("data/x")).unwrap();
    std::fs::write(p.path().join("data/x/one.bin"), b"one").unwrap();
    p
}

#[test]
fn a_no_op_rerun_runs_nothing_and_status_is_clean() {
    let p = project();
    let first = p.run(&["run"]);
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    assert_eq!(first.ran(), vec!["a", "b", "join", "scan", "src", "tail"]);
    // Beside pipeline.yaml, a run leaves only what users commit (pipeline.lock) and the store.
    let mut top: Vec<String> = std::fs::read_dir(p.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(
        top,
        vec!["artifacts", "data", "pipeline.lock", "pipeline.yaml"]
    );
    assert!(first.line("src").contains("ran (never run)"));
    let lock = p.lock();
    let second = p.run(&["run"]);
    assert_eq!(second.code, 0);
    assert!(second.ran().is_empty(), "{}", second.stdout);
    assert!(second.line("tail").contains("cached (up to date)"));
    assert_eq!(p.lock(), lock);
    let status = p.run(&["status"]);
    assert_eq!(status.code, 0, "{}", status.stdout);
    assert_eq!(status.stdout.matches("up to date").count(), 6);
}

#[test]
fn editing_one_param_reruns_that_stage_and_its_descendants_only() {
    let p = project();
    assert_eq!(p.run(&["run"]).code, 0);
    p.write_config(&p.config().replace("salt: b", "salt: B"));
    let status = p.run(&["status"]);
    assert_eq!(status.code, 1, "stale stages make status exit 1");
    assert!(
        status.stdout.contains(r#"params.salt changed "b" → "B""#),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("upstream `b` is stale"),
        "{}",
        status.stdout
    );
    let run = p.run(&["run"]);
    assert_eq!(run.ran(), vec!["b", "join", "tail"]);
    assert!(
        run.line("b")
            .contains(r#"ran (params.salt changed "b" → "B")"#),
        "{}",
        run.line("b")
    );
    assert!(
        run.line("join")
            .contains("ran (input `data` from `b` changed"),
        "{}",
        run.line("join")
    );
    assert!(run.line("a").contains("cached (up to date)"));
    // Back to the old value: every result is already in the store.
    p.write_config(&p.config().replace("salt: B", "salt: b"));
    let back = p.run(&["run"]);
    assert!(back.ran().is_empty(), "{}", back.stdout);
    assert!(
        back.line("b").contains("result restored from the store"),
        "{}",
        back.line("b")
    );
}

#[test]
fn comments_whitespace_and_key_order_change_nothing() {
    let p = project();
    assert_eq!(p.run(&["run"]).code, 0);
    let lock = p.lock();
    let edited = p
        .config()
        .replace(
            "# a toy pipeline",
            "# a toy pipeline, now with a longer comment",
        )
        .replace(
            "      value: abc\n      size: 100\n",
            "      size:   100   # bytes\n      value: \"abc\"\n",
        )
        .replace("inputs: [a, b]", "inputs:\n      - a\n      - b");
    assert_ne!(edited, p.config());
    p.write_config(&edited);
    let run = p.run(&["run"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.ran().is_empty(), "{}", run.stdout);
    assert_eq!(p.lock(), lock);
}

#[test]
fn a_changed_raw_input_reruns_the_stages_that_read_the_dataset() {
    let p = project();
    assert_eq!(p.run(&["run"]).code, 0);
    std::fs::write(p.path().join("data/x/one.bin"), b"two").unwrap();
    let run = p.run(&["run"]);
    assert_eq!(run.ran(), vec!["b", "join", "scan", "tail"]);
    assert!(
        run.line("scan").contains("input `dataset` changed"),
        "{}",
        run.line("scan")
    );
}

#[test]
fn thread_count_never_changes_the_lock_file() {
    let one = project();
    let four = project();
    assert_eq!(one.run(&["run", "-j", "1"]).code, 0);
    assert_eq!(four.run(&["run", "-j", "4"]).code, 0);
    assert_eq!(one.lock(), four.lock());
    assert!(!one.lock().is_empty());
}

#[test]
fn verify_catches_a_flipped_byte_and_names_the_artifact() {
    let p = project();
    assert_eq!(p.run(&["run"]).code, 0);
    let ok = p.run(&["verify"]);
    assert_eq!(ok.code, 0, "{}", ok.stdout);
    let lock: serde_yaml::Value = serde_yaml::from_str(&p.lock()).unwrap();
    let digest = lock["stages"]["join"]["outputs"]["data"]
        .as_str()
        .expect("join's output digest")
        .to_string();
    let path = p
        .path()
        .join("artifacts/objects")
        .join(&digest[..2])
        .join(&digest);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let bad = p.run(&["verify"]);
    assert_eq!(bad.code, 1);
    assert!(
        bad.stdout
            .contains(&format!("join: output `data` {}: corrupt", &digest[..8])),
        "{}",
        bad.stdout
    );
}

#[test]
fn verify_rerun_recomputes_every_stage_and_catches_an_output_that_does_not_reproduce() {
    let p = project();
    assert_eq!(p.run(&["run"]).code, 0);
    let ok = p.run(&["verify", "--rerun"]);
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);
    assert!(
        ok.stdout.contains("compared 6 outputs with pipeline.lock"),
        "{}",
        ok.stdout
    );
    // A lock that claims an output the stage does not produce (as a nondeterministic stage would leave).
    let lock = p.lock();
    let lock_yaml: serde_yaml::Value = serde_yaml::from_str(&lock).unwrap();
    let real = lock_yaml["stages"]["src"]["outputs"]["data"]
        .as_str()
        .unwrap()
        .to_string();
    let fake = "f".repeat(64);
    std::fs::write(p.path().join("pipeline.lock"), lock.replace(&real, &fake)).unwrap();
    let bad = p.run(&["verify", "--rerun"]);
    assert_eq!(bad.code, 1);
    let expected = format!(
        "src: output `data` ffffffff: re-running gives {} instead",
        &real[..8]
    );
    assert!(bad.stdout.contains(&expected), "{}", bad.stdout);
    // The scratch store is gone; the real store is untouched.
    let tmp: Vec<_> = std::fs::read_dir(p.path().join("artifacts/tmp"))
        .unwrap()
        .flatten()
        .collect();
    assert!(tmp
        .iter()
        .all(|e| !e.file_name().to_string_lossy().starts_with("verify-rerun")));
}

#[test]
fn a_cycle_is_printed_as_a_path() {
    let p = project();
    p.write_config(&p.config().replace("inputs: [src]\n", "inputs: [tail]\n"));
    let run = p.run(&["run"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("cycle: a -> join -> tail -> a"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("pipeline.yaml:"), "{}", run.stderr);
}

#[test]
fn a_param_typo_names_file_line_key_and_suggests_the_fix() {
    let p = project();
    p.write_config(&p.config().replace("salt: t", "slat: t"));
    let run = p.run(&["status"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .contains("pipeline.yaml:30:7: stage `tail` (toy_map): params: unknown field `slat`"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("did you mean `salt`?"),
        "{}",
        run.stderr
    );
}

#[test]
fn ill_typed_params_unknown_kinds_missing_inputs_and_duplicates_are_all_reported() {
    let p = project();
    let bad = p
        .config()
        .replace("size: 100", "size: lots")
        .replace("kind: toy_scan", "kind: toy_scna")
        .replace("inputs: [a, b]", "inputs: [a, bb]")
        .replace("  - name: tail", "  - name: join");
    p.write_config(&bad);
    let run = p.run(&["status"]);
    assert_eq!(run.code, 2);
    let err = &run.stderr;
    assert!(
        err.contains("params: size: invalid type: string \"lots\""),
        "{err}"
    );
    assert!(
        err.contains("unknown stage kind `toy_scna` (did you mean `toy_scan`?)"),
        "{err}"
    );
    assert!(
        err.contains("input `bb` is not a stage in this pipeline (did you mean `b`?)"),
        "{err}"
    );
    assert!(err.contains("duplicate stage name `join`"), "{err}");
    let lines: Vec<usize> = err
        .lines()
        .filter_map(|l| l.split(':').nth(1)?.parse().ok())
        .collect();
    assert!(
        lines.windows(2).all(|w| w[0] <= w[1]),
        "errors sorted by line: {err}"
    );
}

#[test]
fn a_failing_stage_stops_only_its_descendants() {
    let p = project();
    p.write_config(
        &p.config()
            .replace("salt: a\n", "salt: a\n      fail: true\n"),
    );
    let run = p.run(&["run"]);
    assert_eq!(run.code, 2);
    assert!(
        run.line("a")
            .contains("FAILED: stage `a` (toy_map): failing as configured"),
        "{}",
        run.stdout
    );
    assert!(run.line("join").contains("skipped (upstream `a` failed)"));
    assert!(run
        .line("tail")
        .contains("skipped (upstream `join` failed)"));
    assert_eq!(run.ran(), vec!["b", "scan", "src"]);
}

#[test]
fn until_runs_only_a_stage_and_its_ancestors_and_force_reruns_deterministically() {
    let p = project();
    let run = p.run(&["run", "--until", "a"]);
    assert_eq!(run.ran(), vec!["a", "src"]);
    let forced = p.run(&["run", "--force", "a", "--until", "a"]);
    assert!(
        forced.line("a").contains("ran (forced with --force"),
        "{}",
        forced.stdout
    );
    let typo = p.run(&["run", "--until", "jion"]);
    assert_eq!(typo.code, 2);
    assert!(
        typo.stderr
            .contains("unknown stage `jion` (did you mean `join`?)"),
        "{}",
        typo.stderr
    );
}

#[test]
fn sigkill_mid_stage_leaves_a_consistent_store_and_the_next_run_redoes_only_what_is_missing() {
    let p = project();
    p.write_config(&p.config().replace(
        "salt: t\n",
        "salt: t\n      sleep_ms: 20000\n      signal: tail-is-writing\n",
    ));
    let child = p.spawn(&["run", "-j", "2"]);
    // Wait until `tail` itself has written half of its output (it creates its signal file then, and only
    // then starts sleeping): every other stage has finished by that time. Then kill the run.
    util::wait_for(
        "`tail` to be mid-write",
        Instant::now() + Duration::from_secs(60),
        || p.path().join("tail-is-writing").is_file(),
    );
    child.kill();
    // The store holds only complete, verifiable artifacts; the lock names the stages that finished.
    let verify = p.run(&["verify"]);
    assert_eq!(verify.code, 0, "{}", verify.stdout);
    assert!(!p.lock().contains("\n  tail:"), "{}", p.lock());
    p.write_config(
        &p.config()
            .replace("      sleep_ms: 20000\n      signal: tail-is-writing\n", ""),
    );
    let rerun = p.run(&["run"]);
    assert_eq!(rerun.code, 0, "{}{}", rerun.stdout, rerun.stderr);
    assert_eq!(rerun.ran(), vec!["tail"]);
    assert_eq!(p.run(&["verify"]).code, 0);
}

#[test]
fn concurrent_runs_in_one_project_do_not_corrupt_anything() {
    let slow = |p: &Project| {
        p.write_config(
            &p.config()
                .replace("salt: a\n", "salt: a\n      sleep_ms: 800\n"),
        )
    };
    let p = project();
    slow(&p);
    let spawned: Vec<_> = (0..3)
        .map(|_| {
            p.command(&["run", "-j", "2"])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<String> = spawned
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect();
    // Exactly one process ran the slow stage; the others waited for its lock and took its result.
    let ran_a = outputs.iter().filter(|o| o.contains("a: ran (")).count();
    assert_eq!(ran_a, 1, "{outputs:#?}");
    assert_eq!(p.run(&["verify"]).code, 0);
    assert_eq!(p.run(&["status"]).code, 0);
    // And the lock file is the one a lone run writes.
    let alone = project();
    slow(&alone);
    assert_eq!(alone.run(&["run"]).code, 0);
    assert_eq!(p.lock(), alone.lock());
}

fn field_of(p: &Project, stage: &str, field: &str) -> String {
    p.lock()
        .lines()
        .skip_while(|l| *l != format!("  {stage}:"))
        .find_map(|l| {
            l.trim()
                .strip_prefix(&format!("{field}: "))
                .map(str::to_string)
        })
        .unwrap_or_default()
}

#[test]
fn gc_removes_only_unreferenced_objects_and_lineage_walks_manifests() {
    let p = project();
    assert_eq!(p.run(&["run"]).code, 0);
    p.write_config(&p.config().replace("salt: t", "salt: u"));
    assert_eq!(p.run(&["run"]).code, 0);
    let before = p.objects().len();
    let dry = p.run(&["gc", "--dry-run"]);
    assert!(
        dry.stdout.contains("gc: would remove 2 objects"),
        "{}",
        dry.stdout
    );
    assert_eq!(p.objects().len(), before);
    let gc = p.run(&["gc"]);
    assert_eq!(gc.code, 0);
    assert_eq!(p.objects().len(), before - 2);
    assert_eq!(
        p.run(&["verify"]).code,
        0,
        "gc never removes what the lock references"
    );
    let lineage = p.run(&["lineage", "tail"]);
    assert_eq!(lineage.code, 0, "{}", lineage.stderr);
    for stage in [
        "tail (toy_map)",
        "join (toy_map)",
        "a (toy_map)",
        "b (toy_map)",
        "src (toy_source)",
        "scan (toy_scan)",
        "dataset data",
    ] {
        assert!(
            lineage.stdout.contains(stage),
            "{stage} missing in:\n{}",
            lineage.stdout
        );
    }
    let json = p.run(&["lineage", "tail", "--json"]);
    let tree: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(tree["params"]["salt"], "u");
    let digest = field_of(&p, "join", "key");
    let by_digest = p.run(&["lineage", &field_of(&p, "join", "manifest")[..10]]);
    assert!(
        by_digest.stdout.starts_with("join (toy_map) key ")
            && by_digest.stdout.contains(&digest[..8]),
        "{}",
        by_digest.stdout
    );
}

#[test]
fn dag_renders_text_dot_and_mermaid() {
    let p = project();
    let text = p.run(&["dag"]);
    assert!(
        text.stdout.contains("join (toy_map) <- a, b"),
        "{}",
        text.stdout
    );
    let dot = p.run(&["dag", "--format", "dot"]);
    assert!(dot.stdout.contains("\"a\" -> \"join\";"), "{}", dot.stdout);
    let mermaid = p.run(&["dag", "--format", "mermaid"]);
    assert!(
        mermaid.stdout.contains("dataset --> scan"),
        "{}",
        mermaid.stdout
    );
}

#[test]
fn lineage_prints_a_shared_ancestor_once_and_marks_repeats() {
    let p = project();
    assert_eq!(p.run(&["run"]).code, 0);
    // `src` feeds both `a` and `b`, which both feed `join`.
    let lineage = p.run(&["lineage", "tail"]);
    assert_eq!(lineage.code, 0, "{}", lineage.stderr);
    let full = lineage
        .stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("src (toy_source) key "))
        .count();
    let repeats = lineage
        .stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("src (toy_source) manifest ") && l.ends_with("(*)"))
        .count();
    assert_eq!((full, repeats), (1, 1), "{}", lineage.stdout);
    assert!(
        lineage.stdout.ends_with("(*) printed in full above\n"),
        "{}",
        lineage.stdout
    );
}

#[test]
fn a_panicking_stage_fails_alone_and_the_run_ends() {
    let p = project();
    p.write_config(
        &p.config()
            .replace("salt: a\n", "salt: a\n      panic: true\n"),
    );
    // util's run kills the command past its limit, so a hang fails here instead of blocking the suite.
    let run = p.run(&["run", "-j", "2"]);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(
        run.line("a")
            .contains("stage `a` panicked: panicking as configured"),
        "{}",
        run.stdout
    );
    assert!(
        run.line("join").contains("skipped (upstream `a` failed)"),
        "{}",
        run.stdout
    );
    assert!(run.line("b").contains(": ran ("), "{}", run.stdout);
    assert_eq!(p.run(&["verify"]).code, 0);
}

#[test]
fn a_no_op_run_does_not_rewrite_the_lock_file() {
    use std::os::unix::fs::MetadataExt;
    let p = project();
    assert_eq!(p.run(&["run"]).code, 0);
    let stat = || {
        let m = std::fs::metadata(p.path().join("pipeline.lock")).unwrap();
        (m.ino(), m.mtime(), m.mtime_nsec())
    };
    let before = stat();
    let again = p.run(&["run"]);
    assert_eq!(again.code, 0);
    assert!(again.ran().is_empty(), "{}", again.stdout);
    assert_eq!(
        stat(),
        before,
        "a run that changed nothing replaced pipeline.lock"
    );
}
