//! The Slurm executor on a one-node cluster started by `scripts/slurm-cluster.sh` (Debian's slurmctld,
//! slurmd and munge): a DAG run as jobs locks the same bytes as a local run; job resources reach sbatch; a
//! failing job fails its stage and skips only its descendants; Ctrl-C cancels the submitted jobs; a killed
//! driver's jobs are adopted by the next one, never submitted twice.

mod util;

use std::process::Command;
use std::time::Instant;

use util::{wait_for, Project, Service, COMMAND_LIMIT};

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
    exec:
      threads: 1
      memory: 200MiB
      time: '0:10:00'
  - name: t
    kind: toy_tree
    params:
      files:
        x/y.txt: hello
  - name: b
    kind: toy_map
    inputs: [a, t]
    params:
      salt: b
";

/// Slurm job ids a run printed for `stage` (`slurm: STAGE: job N submitted ...`).
fn job_ids(stdout: &str, stage: &str) -> Vec<u64> {
    let prefix = format!("slurm: {stage}: job ");
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter(|rest| rest.contains("submitted") || rest.contains("adopted"))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

fn squeue(slurm: &Service, args: &[&str]) -> String {
    let out = Command::new("squeue")
        .env("SLURM_CONF", slurm.var("SLURM_CONF"))
        .args(args)
        .output()
        .expect("squeue");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn job_state(slurm: &Service, id: u64) -> String {
    squeue(
        slurm,
        &[
            "--noheader",
            "--states=all",
            &format!("--jobs={id}"),
            "--format=%T",
        ],
    )
    .trim()
    .to_string()
}

#[test]
fn the_slurm_executor_on_a_one_node_cluster() {
    let Some(slurm) = Service::start("slurm-cluster.sh") else {
        return;
    };
    let env = &slurm.env;

    // The same DAG, locally and as jobs: the same lock, byte for byte.
    let local = Project::new(PIPELINE);
    let run = local.run(&["run"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let cluster = Project::new(PIPELINE);
    let run = cluster.run_with(env, &["run", "--executor", "slurm"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(run.ran(), ["a", "b", "src", "t"], "{}", run.all());
    assert_eq!(cluster.lock(), local.lock());
    assert_eq!(cluster.run(&["verify"]).code, 0);
    // Every stale stage was one job, submitted before its inputs finished, with afterok edges.
    for stage in ["src", "a", "t", "b"] {
        assert_eq!(
            job_ids(&run.stdout, stage).len(),
            1,
            "{stage}: {}",
            run.all()
        );
    }
    let a_job = job_ids(&run.stdout, "a")[0];
    let t_job = job_ids(&run.stdout, "t")[0];
    let b_job = job_ids(&run.stdout, "b")[0];
    assert!(
        run.stdout.contains(&format!(
            "slurm: b: job {b_job} submitted (after {a_job}, {t_job})"
        )),
        "{}",
        run.all()
    );
    // The stage's exec block became the job's resources: 1 cpu, 200 MiB, 10 minutes.
    let resources = squeue(
        &slurm,
        &[
            "--noheader",
            "--states=all",
            &format!("--jobs={a_job}"),
            "--format=%C %m %l",
        ],
    );
    assert_eq!(resources.trim(), "1 200M 10:00", "{resources}");
    // Up to date: nothing is submitted.
    let again = cluster.run_with(env, &["run", "--executor", "slurm"]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert!(!again.stdout.contains("slurm:"), "{}", again.all());
    // exec.executor in pipeline.yaml chooses it too.
    let configured = Project::new(&format!("exec:\n  executor: slurm\n{PIPELINE}"));
    let run = configured.run_with(env, &["run"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(job_ids(&run.stdout, "src").len(), 1, "{}", run.all());
    assert_eq!(configured.lock(), local.lock());

    // A failing job fails its stage and skips its descendants only.
    let failing = format!(
        "{PIPELINE}  - name: bad\n    kind: toy_map\n    inputs: [src]\n    params:\n      salt: bad\n      fail: true\n\
         \x20 - name: below\n    kind: toy_map\n    inputs: [bad]\n    params:\n      salt: below\n"
    );
    let p = Project::new(&failing);
    let run = p.run_with(env, &["run", "--executor", "slurm"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(
        run.line("bad").contains("FAILED: slurm job"),
        "{}",
        run.all()
    );
    assert!(run.line("bad").contains("ended FAILED"), "{}", run.all());
    assert!(
        run.stdout.contains("failing as configured"),
        "the job's log tail: {}",
        run.all()
    );
    assert!(
        run.line("below")
            .contains("skipped (upstream `bad` failed)"),
        "{}",
        run.all()
    );
    assert_eq!(run.ran(), ["a", "b", "src", "t"], "{}", run.all());
    let below_job = job_ids(&run.stdout, "below")[0];
    wait_for(
        "the dependent job to be cancelled",
        Instant::now() + COMMAND_LIMIT,
        || job_state(&slurm, below_job) == "CANCELLED",
    );
    assert!(p.lock_field("bad", &["key"]).is_none());
    assert!(p.lock_field("b", &["key"]).is_some());

    // Ctrl-C cancels the jobs the driver submitted and leaves a consistent lock.
    let signal_dir = tempfile::tempdir().unwrap();
    let signal = signal_dir.path().join("started");
    let slow = PIPELINE.replace(
        "      salt: b\n",
        &format!(
            "      salt: b\n      sleep_ms: 120000\n      signal: {}\n",
            signal.display()
        ),
    );
    let p = Project::new(&slow);
    let mut driver = p.spawn_with(env, &["run", "--executor", "slurm"]);
    wait_for(
        "the slow job to start",
        Instant::now() + COMMAND_LIMIT,
        || signal.exists(),
    );
    driver.interrupt();
    let run = driver.wait(Instant::now() + COMMAND_LIMIT);
    assert_eq!(run.code, 130, "{}", run.all());
    assert!(run.line("b").contains("cancelled"), "{}", run.all());
    let b_job = job_ids(&run.stdout, "b")[0];
    wait_for(
        "the running job to be cancelled",
        Instant::now() + COMMAND_LIMIT,
        || job_state(&slurm, b_job) == "CANCELLED",
    );
    assert!(p.lock_field("b", &["key"]).is_none());
    assert!(p.lock_field("a", &["key"]).is_some());

    // A killed driver's job is adopted by the next driver, not submitted again.
    std::fs::remove_file(&signal).unwrap();
    // The job must still be running when the second driver looks at the queue: 20 s leaves a loaded machine
    // room to reap the killed driver and start the next one (the test then waits for the job to end).
    let short = slow.replace("sleep_ms: 120000", "sleep_ms: 20000");
    let p = Project::new(&short);
    let driver = p.spawn_with(env, &["run", "--executor", "slurm"]);
    wait_for("the job to start", Instant::now() + COMMAND_LIMIT, || {
        signal.exists()
    });
    let killed = driver.kill();
    let first_b = job_ids(&killed.stdout, "b");
    assert_eq!(first_b.len(), 1, "{}", killed.all());
    let run = p.run_with(env, &["run", "--executor", "slurm"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stdout
            .contains(&format!("slurm: b: job {} adopted", first_b[0])),
        "{}",
        run.all()
    );
    assert_eq!(job_ids(&run.stdout, "b"), first_b, "{}", run.all());
    let local = Project::new(&short);
    assert_eq!(local.run(&["run"]).code, 0);
    assert_eq!(p.lock(), local.lock());
}
