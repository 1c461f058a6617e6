//! Fault injection, end to end: damaged store files, a damaged or missing pipeline.lock, commands racing
//! each other in one project, SIGKILLs at random points and a full disk. Each test drives the binary on the
//! toy stages (built with `--features toy-stages`) in its own temp folder, and waits for events by polling
//! under a deadline, never by sleeping.
//!
//! The damage is described by two small tables, [`Artifact`] (what is hit) and [`Fault`] (how), so a new
//! kind of store file or of damage is one new row, plus the checks that are specific to it.

mod util;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use util::{signal_file, Project, Run, ToyPipeline};

/// Time one test may take, end to end (each test needs a few seconds on an idle machine).
const LIMIT: Duration = Duration::from_secs(90);

/// How long the stages made slow in these tests pause mid-write.
const SLOW_MS: u64 = 1500;

/// The stage whose artifacts get damaged; `tail` reads its output.
const DAMAGED: &str = "join";

fn deadline() -> Instant {
    Instant::now() + LIMIT
}

fn run_ok(p: &Project, args: &[&str]) -> Run {
    let run = p.spawn(args).wait(deadline());
    assert_eq!(run.code, 0, "genrelab {}: {}", args.join(" "), run.all());
    run
}

fn verify_ok(p: &Project) {
    run_ok(p, &["verify"]);
}

/// The lock file a lone, fresh project writes for `toy`: what every project with that config must end
/// up with, whatever happened to it on the way.
fn lone_lock(toy: &ToyPipeline) -> String {
    let alone = Project::toy(toy);
    run_ok(&alone, &["run"]);
    let lock = alone.lock();
    assert!(!lock.is_empty(), "the lone run wrote no pipeline.lock");
    lock
}

/// The store files a fault can hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Artifact {
    /// A stage's output object (`artifacts/objects/..`).
    Output,
    /// A stage's manifest object.
    Manifest,
    /// A stage's action record, `artifacts/actions/<key>.json`.
    ActionRecord,
    /// `artifacts/statcache.json` (the stage is ignored).
    StatCache,
    /// `pipeline.lock` (the stage is ignored).
    LockFile,
}

impl Artifact {
    fn path(self, p: &Project, stage: &str) -> PathBuf {
        let field = |f: &[&str]| {
            p.lock_field(stage, f)
                .unwrap_or_else(|| panic!("no {f:?} for `{stage}` in pipeline.lock:\n{}", p.lock()))
        };
        let path = match self {
            Artifact::Output => p.object_path(&field(&["outputs", "data"])),
            Artifact::Manifest => p.object_path(&field(&["manifest"])),
            Artifact::ActionRecord => p.action_path(&field(&["key"])),
            Artifact::StatCache => p.path().join("artifacts/statcache.json"),
            Artifact::LockFile => p.lock_path(),
        };
        assert!(
            path.is_file(),
            "{self:?}: {} does not exist",
            path.display()
        );
        path
    }
}

/// The kinds of damage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// One bit flipped mid-file: the bytes no longer hash to the object's name.
    FlipByte,
    /// The file no longer parses: its first byte flipped (`{` becomes `z`), or for pipeline.lock an
    /// unclosed `[` after `stages:`.
    Unparsable,
    /// The file is gone.
    Missing,
}

/// Inflict `fault` on `artifact` of `stage`; returns the file's path and its bytes now (empty if removed).
fn inflict(p: &Project, artifact: Artifact, stage: &str, fault: Fault) -> (PathBuf, Vec<u8>) {
    let path = artifact.path(p, stage);
    let bytes = match fault {
        Fault::FlipByte => {
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) as usize;
            util::flip_byte(&path, len / 2)
        }
        Fault::Unparsable if artifact == Artifact::LockFile => {
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.contains("\nstages:\n"), "{text}");
            let bad = text.replacen("\nstages:\n", "\nstages: [\n", 1);
            assert!(serde_yaml::from_str::<serde_yaml::Value>(&bad).is_err());
            std::fs::write(&path, &bad).unwrap();
            bad.into_bytes()
        }
        Fault::Unparsable => {
            let bad = util::flip_byte(&path, 0);
            assert!(serde_json::from_slice::<serde_json::Value>(&bad).is_err());
            bad
        }
        Fault::Missing => {
            std::fs::remove_file(&path).unwrap();
            Vec::new()
        }
    };
    (path, bytes)
}

// ---------------------------------------------------------------------------------------------------------
// A flipped byte in a stage's output or manifest object. Each check runs once per object kind.

/// One test module per check, with one test per object kind: `<check>::output`, `<check>::manifest`.
macro_rules! for_each_object_kind {
    ($($check:ident),* $(,)?) => {
        $(mod $check {
            #[test]
            fn output() {
                super::$check(super::Artifact::Output)
            }
            #[test]
            fn manifest() {
                super::$check(super::Artifact::Manifest)
            }
        })*
    };
}

for_each_object_kind!(
    status_calls_a_corrupt_object_corrupt,
    run_reruns_only_the_stage_with_a_corrupt_object_and_keeps_the_bad_file_aside,
    a_stage_never_runs_on_a_corrupt_input,
    force_replaces_a_corrupt_stored_result,
);

fn status_calls_a_corrupt_object_corrupt(kind: Artifact) {
    let p = Project::toy(&ToyPipeline::new());
    run_ok(&p, &["run"]);
    inflict(&p, kind, DAMAGED, Fault::FlipByte);
    let status = p.spawn(&["status"]).wait(deadline());
    assert_eq!(
        status.code,
        1,
        "{kind:?} of `{DAMAGED}` corrupt: {}",
        status.all()
    );
    let line = status.status_line(DAMAGED);
    assert!(line.contains("corrupt"), "{kind:?}: {line}");
}

fn run_reruns_only_the_stage_with_a_corrupt_object_and_keeps_the_bad_file_aside(kind: Artifact) {
    let p = Project::toy(&ToyPipeline::new());
    run_ok(&p, &["run"]);
    let lock = p.lock();
    let (path, damaged) = inflict(&p, kind, DAMAGED, Fault::FlipByte);
    let run = run_ok(&p, &["run"]);
    // The stage's inputs are sound and it is deterministic, so its outputs come out the same and nothing
    // downstream needs to run.
    assert_eq!(run.ran(), vec![DAMAGED], "{kind:?}: {}", run.all());
    let aside = p.files_under("artifacts/corrupt");
    assert!(
        aside
            .iter()
            .any(|f| std::fs::read(f).ok().as_deref() == Some(&damaged[..])),
        "{kind:?}: the damaged {} is not kept under artifacts/corrupt/ (holds {aside:?})",
        path.display()
    );
    assert_eq!(
        p.objects_failing_their_hash(),
        Vec::<String>::new(),
        "{kind:?}"
    );
    util::assert_same_lock(&p.lock(), &lock, &format!("{kind:?}: after the repair"));
    verify_ok(&p);
}

fn a_stage_never_runs_on_a_corrupt_input(kind: Artifact) {
    let p = Project::toy(&ToyPipeline::new());
    run_ok(&p, &["run"]);
    inflict(&p, kind, DAMAGED, Fault::FlipByte);
    // A new salt on `tail` makes it run again, on `join`'s (damaged) result.
    let toy = ToyPipeline::new().set("tail", "salt", "t2");
    p.write_config(&toy.render());
    let run = run_ok(&p, &["run"]);
    util::assert_same_lock(
        &p.lock(),
        &lone_lock(&toy),
        &format!(
            "{kind:?}: not the lock a clean project writes (a stage computed on a corrupt input?)\n{}",
            run.all()
        ),
    );
    assert_eq!(
        p.objects_failing_their_hash(),
        Vec::<String>::new(),
        "{kind:?}"
    );
    verify_ok(&p);
}

fn force_replaces_a_corrupt_stored_result(kind: Artifact) {
    let p = Project::toy(&ToyPipeline::new());
    run_ok(&p, &["run"]);
    let lock = p.lock();
    inflict(&p, kind, DAMAGED, Fault::FlipByte);
    let forced = run_ok(&p, &["run", "--force", DAMAGED]);
    assert!(
        forced.line(DAMAGED).contains("ran ("),
        "{kind:?}: {}",
        forced.all()
    );
    assert_eq!(
        p.objects_failing_their_hash(),
        Vec::<String>::new(),
        "{kind:?}: --force left the corrupt object in place\n{}",
        forced.all()
    );
    util::assert_same_lock(&p.lock(), &lock, &format!("{kind:?}: after --force"));
    verify_ok(&p);
}

// ---------------------------------------------------------------------------------------------------------
// Damaged records: action record, stat cache, pipeline.lock.

#[test]
fn status_calls_a_stage_with_an_unparsable_action_record_stale() {
    let p = Project::toy(&ToyPipeline::new());
    run_ok(&p, &["run"]);
    inflict(&p, Artifact::ActionRecord, DAMAGED, Fault::Unparsable);
    // An unreadable record is as good as none: the stage must run again, so status says stale (exit 1).
    let status = p.spawn(&["status"]).wait(deadline());
    assert_eq!(status.code, 1, "{}", status.all());
    let line = status.status_line(DAMAGED);
    assert!(line.contains("stale"), "{line}");
}

#[test]
fn run_treats_an_unparsable_action_record_as_a_miss_and_rewrites_it() {
    let p = Project::toy(&ToyPipeline::new());
    run_ok(&p, &["run"]);
    let lock = p.lock();
    let path = Artifact::ActionRecord.path(&p, DAMAGED);
    let good = std::fs::read(&path).unwrap();
    inflict(&p, Artifact::ActionRecord, DAMAGED, Fault::Unparsable);
    let run = run_ok(&p, &["run"]);
    assert_eq!(run.ran(), vec![DAMAGED], "{}", run.all());
    assert_eq!(
        std::fs::read(&path).unwrap(),
        good,
        "the action record is rewritten as it was"
    );
    util::assert_same_lock(&p.lock(), &lock, "after an unparsable action record");
    verify_ok(&p);
}

#[test]
fn a_garbage_stat_cache_is_harmless() {
    let p = Project::toy(&ToyPipeline::new());
    run_ok(&p, &["run"]);
    let lock = p.lock();
    inflict(&p, Artifact::StatCache, "", Fault::Unparsable);
    let run = run_ok(&p, &["run"]);
    assert_eq!(run.ran(), Vec::<String>::new(), "{}", run.all());
    util::assert_same_lock(&p.lock(), &lock, "after a garbage stat cache");
    run_ok(&p, &["status"]);
}

#[test]
fn an_unparsable_lock_file_stops_run_status_and_verify_and_is_left_untouched() {
    let p = Project::toy(&ToyPipeline::new());
    run_ok(&p, &["run"]);
    let (path, damaged) = inflict(&p, Artifact::LockFile, "", Fault::Unparsable);
    for command in ["run", "status", "verify"] {
        let run = p.spawn(&[command]).wait(deadline());
        assert_eq!(run.code, 2, "{command}: {}", run.all());
        assert!(
            run.stderr.contains("pipeline.lock"),
            "{command}: {}",
            run.all()
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            damaged,
            "{command} changed pipeline.lock"
        );
    }
}

#[test]
fn verify_without_a_lock_file_says_it_is_missing() {
    let p = Project::toy(&ToyPipeline::new());
    run_ok(&p, &["run"]);
    inflict(&p, Artifact::LockFile, "", Fault::Missing);
    let verify = p.spawn(&["verify"]).wait(deadline());
    assert_eq!(verify.code, 1, "{}", verify.all());
    let text = verify.all();
    assert!(
        text.contains("pipeline.lock") && text.contains("is missing"),
        "{text}"
    );
}

#[test]
fn gc_without_a_lock_file_removes_nothing() {
    let p = Project::toy(&ToyPipeline::new());
    run_ok(&p, &["run"]);
    let objects = p.objects();
    let actions = p.files_under("artifacts/actions");
    inflict(&p, Artifact::LockFile, "", Fault::Missing);
    let gc = p.spawn(&["gc"]).wait(deadline());
    assert_eq!(
        p.objects().len(),
        objects.len(),
        "gc removed objects with no lock to say what is live\n{}",
        gc.all()
    );
    assert_eq!(p.files_under("artifacts/actions"), actions);
    assert_eq!(gc.code, 2, "{}", gc.all());
    assert!(gc.stderr.contains("pipeline.lock"), "{}", gc.all());
}

// ---------------------------------------------------------------------------------------------------------
// Commands racing each other in one project.

#[test]
fn gc_waits_for_a_run_in_progress_and_removes_nothing_it_publishes() {
    let p = Project::toy(&ToyPipeline::new().slow("tail", SLOW_MS));
    let deadline = deadline();
    let mut run = p.spawn(&["run", "-j", "2"]);
    util::wait_for("`tail` to be mid-write", deadline, || {
        signal_file(&p, "tail").is_file() || run.exited()
    });
    assert!(!run.exited(), "the run ended before `tail` started");
    let mut gc = p.spawn(&["gc"]);
    // gc needs the project lock, which the run holds until it ends (after writing `tail` to the lock).
    let mut tail_locked_when_gc_ended = None;
    util::wait_for("gc and the run to end", deadline, || {
        if tail_locked_when_gc_ended.is_none() && gc.exited() {
            tail_locked_when_gc_ended = Some(p.lock_field("tail", &["key"]).is_some());
        }
        gc.exited() & run.exited()
    });
    let (run, gc) = (run.wait(deadline), gc.wait(deadline));
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(gc.code, 0, "{}", gc.all());
    assert_eq!(
        tail_locked_when_gc_ended,
        Some(true),
        "gc ended while the run was still inside `tail`: it did not wait\n{}",
        gc.all()
    );
    assert!(gc.stderr.contains("waiting"), "{}", gc.all());
    verify_ok(&p);
    run_ok(&p, &["status"]);
    assert_eq!(p.broken_action_records(), Vec::<String>::new());
}

#[test]
fn a_run_with_another_config_waits_for_the_first_and_the_lock_is_one_plan() {
    let config_a = ToyPipeline::new().slow("join", SLOW_MS);
    let config_b = config_a.clone().set("a", "salt", "a2");
    let p = Project::toy(&config_a);
    let deadline = deadline();
    let mut first = p.spawn(&["run", "-j", "2"]);
    util::wait_for("`join` of the first run to be mid-write", deadline, || {
        signal_file(&p, "join").is_file() || first.exited()
    });
    assert!(!first.exited(), "the first run ended before `join` started");
    p.write_config(&config_b.render());
    let mut second = p.spawn(&["run", "-j", "2"]);
    // While the first run is alive, the second must not have recorded anything of its own. (Once the first
    // has ended, the second legitimately records `a` with salt a2 and drops `join` and `tail`, computed from
    // the old `a`, until it has recomputed them.) The first run's liveness is read before the lock, so a
    // lock read while it was alive is never blamed on a write made after it ended.
    let mut overtaken = None;
    util::wait_for("both runs to end", deadline, || {
        let first_alive = !first.exited();
        let salt = p.lock_field("a", &["params", "salt"]);
        if overtaken.is_none() && first_alive && salt.as_deref() == Some("a2") {
            overtaken = Some(p.lock());
        }
        first.exited() & second.exited()
    });
    let (first, second) = (first.wait(deadline), second.wait(deadline));
    assert_eq!(first.code, 0, "first run: {}", first.all());
    assert_eq!(second.code, 0, "second run: {}", second.all());
    if let Some(lock) = overtaken {
        panic!(
            "the second run recorded config B's `a` while the first was still running: \
             it did not wait. The lock at that moment, against config B's:\n{}",
            util::lock_diff(&lock, &lone_lock(&config_b))
        );
    }
    assert!(second.stderr.contains("waiting"), "{}", second.all());
    verify_ok(&p);
    util::assert_same_lock(&p.lock(), &lone_lock(&config_b), "after both runs");
}

#[test]
fn verify_calls_a_lock_mixing_two_configs_inconsistent() {
    let p = Project::toy(&ToyPipeline::new());
    run_ok(&p, &["run"]);
    let lock_a = p.lock_yaml();
    p.write_config(&ToyPipeline::new().set("a", "salt", "a2").render());
    run_ok(&p, &["run"]);
    // Every object both entries name is in the store and sound; only the plan is mixed: `tail`'s recorded
    // input is not the output the lock gives for `join`.
    let mut mixed = p.lock_yaml();
    mixed["stages"]["tail"] = lock_a["stages"]["tail"].clone();
    assert_ne!(mixed, p.lock_yaml(), "config B changed `tail`'s entry");
    std::fs::write(p.lock_path(), serde_yaml::to_string(&mixed).unwrap()).unwrap();
    let verify = p.spawn(&["verify"]).wait(deadline());
    assert_eq!(verify.code, 1, "{}", verify.all());
    assert!(verify.stdout.contains("inconsistent"), "{}", verify.all());
}

#[test]
fn verify_during_a_run_waits_for_it_or_sees_a_consistent_lock() {
    let p = Project::toy(&ToyPipeline::new());
    run_ok(&p, &["run"]);
    // The run in progress replaces `a`, then (slowly) `join` and `tail`: mid-way, a lock written stage by
    // stage mixes the two configs.
    p.write_config(
        &ToyPipeline::new()
            .set("a", "salt", "a2")
            .slow("join", SLOW_MS)
            .render(),
    );
    let deadline = deadline();
    let mut run = p.spawn(&["run", "-j", "2"]);
    util::wait_for("`join` to be mid-write", deadline, || {
        signal_file(&p, "join").is_file() || run.exited()
    });
    assert!(!run.exited(), "the run ended before `join` started");
    let verify = p.spawn(&["verify"]).wait(deadline);
    assert_eq!(verify.code, 0, "verify during the run: {}", verify.all());
    let run = run.wait(deadline);
    assert_eq!(run.code, 0, "{}", run.all());
    verify_ok(&p);
}

// ---------------------------------------------------------------------------------------------------------
// Kills at random points.

#[test]
fn random_sigkills_never_leave_a_bad_store_and_a_final_run_matches_a_fresh_project() {
    const ITERATIONS: u64 = 8;
    const SEED: u64 = 20_240_611;
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(SEED);
    let p = Project::toy(&ToyPipeline::new());
    let mut toy = ToyPipeline::new();
    let mut kills = Vec::new();
    for i in 0..ITERATIONS {
        // A new salt on `a` each time, so `a`, `join` and `tail` (all slow) run again in every iteration.
        // A kill between `a` and `join` then must not leave a lock whose `join` was computed from the
        // previous `a`: verify would call that inconsistent, and it must pass after every kill.
        toy = ToyPipeline::new().set("a", "salt", &format!("a{i}"));
        for stage in ["a", "b", "join", "tail"] {
            toy = toy.set(stage, "sleep_ms", "250");
        }
        p.write_config(&toy.render());
        let delay = Duration::from_millis(rng.random_range(0..1200));
        let mut run = p.spawn(&["run", "-j", "2"]);
        // Not waiting for an event: the kill point itself is what is drawn, and any point must be safe.
        std::thread::sleep(delay);
        let finished = run.exited();
        let killed = run.kill();
        kills.push(format!(
            "iteration {i}: kill after {delay:?} ({})",
            if finished {
                format!("had ended with {}", killed.code)
            } else {
                "killed mid-run".into()
            }
        ));
        let context = kills.join("\n");
        // A kill before the run wrote pipeline.lock leaves none: verify then says so (exit 1, "is
        // missing"); with a lock, whatever it names must be there and sound.
        let verify = p.spawn(&["verify"]).wait(deadline());
        let lock_missing = !p.lock_path().exists();
        assert!(
            verify.code == 0
                || (lock_missing && verify.code == 1 && verify.all().contains("is missing")),
            "{context}\n{}",
            verify.all()
        );
        assert_eq!(
            p.objects_failing_their_hash(),
            Vec::<String>::new(),
            "{context}"
        );
        assert_eq!(p.broken_action_records(), Vec::<String>::new(), "{context}");
    }
    println!("{}", kills.join("\n"));
    let last = run_ok(&p, &["run", "-j", "2"]);
    util::assert_same_lock(
        &p.lock(),
        &lone_lock(&toy),
        &format!("{}\n{}", kills.join("\n"), last.all()),
    );
    verify_ok(&p);
}

// ---------------------------------------------------------------------------------------------------------
// A full disk.

#[test]
fn a_full_disk_fails_the_run_cleanly_and_a_rerun_with_room_completes() {
    let disk = match util::Tmpfs::mount(256) {
        Ok(disk) => disk,
        Err(why) => {
            println!("skipped: cannot mount tmpfs ({why})");
            return;
        }
    };
    // `blob` writes 1 MB onto a 256 KiB file system.
    let toy = ToyPipeline::new().stage(
        "blob",
        "toy_source",
        &[],
        &[("value", "xyz"), ("size", "1000000")],
    );
    // Declared after `disk`, so dropped (its folder removed) before the file system is unmounted.
    let p = Project::new_in(disk.path(), &toy.render());
    p.add_toy_dataset();
    let full = p.spawn(&["run", "-j", "1"]).wait(deadline());
    assert_eq!(full.code, 2, "{}", full.all());
    assert!(full.all().contains("No space left"), "{}", full.all());
    disk.resize(16 * 1024);
    assert_eq!(p.objects_failing_their_hash(), Vec::<String>::new());
    assert_eq!(p.broken_action_records(), Vec::<String>::new());
    verify_ok(&p);
    run_ok(&p, &["run"]);
    util::assert_same_lock(&p.lock(), &lone_lock(&toy), "after the full disk");
    verify_ok(&p);
}
