//! Shared helpers for end-to-end tests: a fresh project folder per test, ways to run the binary in it (to
//! completion or in the background, always under a deadline), polling for events, and store inspection.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long one `genrelab` command may take before a test kills it and fails.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(300);

/// How often polling loops look again.
const POLL: Duration = Duration::from_millis(10);

pub struct Project {
    pub dir: tempfile::TempDir,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The line `run` printed for `stage`.
    pub fn line(&self, stage: &str) -> &str {
        let prefix = format!("{stage}: ");
        self.stdout
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no line for stage {stage} in:\n{}", self.stdout))
    }

    /// The line `status` printed for `stage` (the stage name, then spaces, then the key).
    pub fn status_line(&self, stage: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(stage))
            .unwrap_or_else(|| panic!("no status line for stage {stage} in:\n{}", self.stdout))
    }

    pub fn ran(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .stdout
            .lines()
            .filter(|l| l.contains(": ran ("))
            .map(|l| l.split(':').next().unwrap_or_default().to_string())
            .collect();
        names.sort();
        names
    }

    /// Everything the command printed, for assertion messages and loose matching.
    pub fn all(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Poll `done` until it holds; panic naming `what` at `deadline`. Background children are killed by their
/// own guards as the panic unwinds.
pub fn wait_for(what: &str, deadline: Instant, mut done: impl FnMut() -> bool) {
    poll_until(what, deadline, || done().then_some(()))
}

/// Polls `ready` until it gives a value; panics naming `what` past `deadline`. Every wait of these tests goes
/// through here, so none waits for time to pass instead of for its event.
pub fn poll_until<T>(what: &str, deadline: Instant, mut ready: impl FnMut() -> Option<T>) -> T {
    loop {
        if let Some(value) = ready() {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(POLL);
    }
}

/// A `genrelab` process running in the background, its output going to files. Dropping it kills it.
pub struct Background {
    label: String,
    child: Option<Child>,
    logs: tempfile::TempDir,
    code: Option<i32>,
}

impl Background {
    fn start(mut cmd: Command, label: String) -> Background {
        let logs = tempfile::tempdir().expect("temp dir for logs");
        let out = File::create(logs.path().join("stdout")).expect("stdout log");
        let err = File::create(logs.path().join("stderr")).expect("stderr log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{label}`: {e}"));
        Background {
            label,
            child: Some(child),
            logs,
            code: None,
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Whether the process has ended (reaping it if so), without waiting.
    pub fn exited(&mut self) -> bool {
        if self.code.is_some() {
            return true;
        }
        let child = self.child.as_mut().expect("a started child");
        match child.try_wait().expect("try_wait") {
            Some(status) => {
                self.code = Some(status.code().unwrap_or(-1));
                true
            }
            None => false,
        }
    }

    /// Wait for the process to end; kill it and panic at `deadline`.
    pub fn wait(mut self, deadline: Instant) -> Run {
        let label = self.label.clone();
        loop {
            if self.exited() {
                return self.collect();
            }
            if Instant::now() > deadline {
                self.kill_now();
                let run = self.collect();
                panic!("`{label}` did not finish in time; killed it\n{}", run.all());
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGKILL the process (if it still runs) and reap it; returns what it printed.
    pub fn kill(mut self) -> Run {
        self.kill_now();
        self.collect()
    }

    fn kill_now(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if self.code.is_none() {
                let _ = child.kill();
                let status = child.wait().expect("reap killed child");
                self.code = Some(status.code().unwrap_or(-1));
            }
        }
    }

    fn collect(&mut self) -> Run {
        let read = |name: &str| {
            std::fs::read(self.logs.path().join(name))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        Run {
            code: self.code.unwrap_or(-1),
            stdout: read("stdout"),
            stderr: read("stderr"),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.kill_now();
    }
}

impl Project {
    pub fn new(pipeline: &str) -> Project {
        let dir = tempfile::tempdir().expect("temp dir");
        Project::at(dir, pipeline)
    }

    /// A project in a fresh folder under `parent` (for instance a small file system).
    pub fn new_in(parent: &Path, pipeline: &str) -> Project {
        let dir = tempfile::tempdir_in(parent).expect("temp dir");
        Project::at(dir, pipeline)
    }

    fn at(dir: tempfile::TempDir, pipeline: &str) -> Project {
        std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
        let p = Project { dir };
        p.write_config(pipeline);
        p
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write_config(&self, pipeline: &str) {
        std::fs::write(self.path().join("pipeline.yaml"), pipeline).expect("write pipeline.yaml");
    }

    pub fn config(&self) -> String {
        std::fs::read_to_string(self.path().join("pipeline.yaml")).expect("read pipeline.yaml")
    }

    pub fn lock_path(&self) -> PathBuf {
        self.path().join("pipeline.lock")
    }

    pub fn lock(&self) -> String {
        std::fs::read_to_string(self.lock_path()).unwrap_or_default()
    }

    /// pipeline.lock parsed (panics if it is not valid YAML).
    pub fn lock_yaml(&self) -> serde_yaml::Value {
        serde_yaml::from_str(&self.lock())
            .unwrap_or_else(|e| panic!("pipeline.lock is not YAML: {e}\n{}", self.lock()))
    }

    /// One string field of a stage's entry in pipeline.lock, e.g. `("join", &["outputs", "data"])`;
    /// `None` when the stage (or field) is not there.
    pub fn lock_field(&self, stage: &str, field: &[&str]) -> Option<String> {
        let lock: serde_yaml::Value = serde_yaml::from_str(&self.lock()).ok()?;
        let mut v = lock.get("stages")?.get(stage)?;
        for f in field {
            v = v.get(*f)?;
        }
        v.as_str().map(str::to_string)
    }

    /// A stored object's bytes, by digest.
    pub fn object(&self, digest: &str) -> Vec<u8> {
        let path = self
            .path()
            .join("artifacts/objects")
            .join(&digest[..2])
            .join(digest);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// One file of a stage's folder output, read through its stored tree (a last stage's folder is never
    /// materialised, since nothing downstream reads it).
    pub fn output_file(&self, stage: &str, output: &str, file: &str) -> Vec<u8> {
        let digest = self
            .lock_field(stage, &["outputs", output])
            .unwrap_or_else(|| panic!("{stage} has no {output}:\n{}", self.lock()));
        let tree: serde_json::Value = serde_json::from_slice(&self.object(&digest)).unwrap();
        let entry = tree["files"]
            .as_array()
            .and_then(|files| files.iter().find(|f| f["path"] == file))
            .unwrap_or_else(|| panic!("{stage}: no {file} in {tree}"));
        self.object(entry["digest"].as_str().unwrap())
    }

    /// [`Project::output_file`] parsed as JSON.
    pub fn output_json(&self, stage: &str, output: &str, file: &str) -> serde_json::Value {
        serde_json::from_slice(&self.output_file(stage, output, file)).unwrap()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_genrelab"));
        cmd.current_dir(self.path())
            .args(args)
            .env_remove("RUST_LOG");
        cmd
    }

    /// Run `genrelab ARGS` to completion (killed, and the test failed, after [`COMMAND_LIMIT`]).
    pub fn run(&self, args: &[&str]) -> Run {
        self.spawn(args).wait(Instant::now() + COMMAND_LIMIT)
    }

    /// Start `genrelab ARGS` in the background.
    pub fn spawn(&self, args: &[&str]) -> Background {
        Background::start(self.command(args), format!("genrelab {}", args.join(" ")))
    }

    pub fn objects(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let root = self.path().join("artifacts/objects");
        for shard in std::fs::read_dir(root).into_iter().flatten().flatten() {
            for entry in std::fs::read_dir(shard.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                out.push(entry.path());
            }
        }
        out.sort();
        out
    }

    pub fn object_path(&self, digest: &str) -> PathBuf {
        self.path()
            .join("artifacts/objects")
            .join(&digest[..2])
            .join(digest)
    }

    pub fn action_path(&self, key: &str) -> PathBuf {
        self.path()
            .join("artifacts/actions")
            .join(format!("{key}.json"))
    }

    /// Store objects (files named by a 64-hex digest) whose bytes no longer hash to their name, with what
    /// they hash to. Other files (temp files of an interrupted write) are not objects and are skipped.
    pub fn objects_failing_their_hash(&self) -> Vec<String> {
        self.objects()
            .iter()
            .filter_map(|path| {
                let name = path.file_name()?.to_str()?;
                if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                let bytes = std::fs::read(path).ok()?;
                let actual = blake3::hash(&bytes).to_hex().to_string();
                (actual != name).then(|| format!("{name} hashes to {actual}"))
            })
            .collect()
    }

    /// Action records that do not parse, or that name an object the store does not hold.
    pub fn broken_action_records(&self) -> Vec<String> {
        let dir = self.path().join("artifacts/actions");
        let mut problems = Vec::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let bytes = std::fs::read(entry.path()).unwrap_or_default();
            let Ok(record) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                problems.push(format!("{name}: not JSON"));
                continue;
            };
            let mut named: Vec<String> = record["outputs"]
                .as_object()
                .map(|o| {
                    o.values()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            named.extend(record["manifest"].as_str().map(str::to_string));
            for digest in named {
                if !self.object_path(&digest).is_file() {
                    problems.push(format!("{name}: names missing object {digest}"));
                }
            }
        }
        problems
    }

    /// Every regular file under `rel` (recursively), sorted.
    pub fn files_under(&self, rel: &str) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.is_file() {
                    out.push(path);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.path().join(rel), &mut out);
        out.sort();
        out
    }
}

/// Flip the lowest bit of the byte at `offset` (clamped into the file); returns the damaged bytes.
pub fn flip_byte(path: &Path, offset: usize) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(!bytes.is_empty(), "{} is empty", path.display());
    let at = offset.min(bytes.len() - 1);
    bytes[at] ^= 0x01;
    std::fs::write(path, &bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    bytes
}

/// A small tmpfs mounted on a fresh temp folder, unmounted when dropped. Needs root (or CAP_SYS_ADMIN).
pub struct Tmpfs {
    dir: Option<tempfile::TempDir>,
}

impl Tmpfs {
    /// Mount a tmpfs of `kib` KiB, or say why it cannot be done.
    pub fn mount(kib: u64) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot start mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir: Some(dir) })
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("mounted").path()
    }

    /// Grow (or shrink) the mounted file system in place, keeping its files.
    pub fn resize(&self, kib: u64) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={kib}k")])
            .arg(self.path())
            .output()
            .expect("start mount");
        assert!(
            out.status.success(),
            "remount {} to {kib} KiB failed: {}",
            self.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        let unmounted = Command::new("umount")
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Busy (a killed child still closing files): detach it now, the kernel frees it later.
            let _ = Command::new("umount").arg("-l").arg(dir.path()).status();
        }
        drop(dir);
    }
}

/// A toy pipeline (the `toy-stages` kinds), built in code so each test states only how it differs from the
/// usual one: `src -> a, b -> join -> tail`, where `b` also reads the raw dataset through `scan`.
#[derive(Clone, Debug)]
pub struct ToyPipeline {
    stages: Vec<ToyStage>,
}

#[derive(Clone, Debug)]
struct ToyStage {
    name: String,
    kind: String,
    inputs: Vec<String>,
    params: Vec<(String, String)>,
}

impl ToyPipeline {
    pub fn new() -> ToyPipeline {
        ToyPipeline { stages: Vec::new() }
            .stage(
                "src",
                "toy_source",
                &[],
                &[("value", "abc"), ("size", "100")],
            )
            .stage("scan", "toy_scan", &["dataset"], &[])
            .stage("a", "toy_map", &["src"], &[("salt", "a")])
            .stage("b", "toy_map", &["src", "scan"], &[("salt", "b")])
            .stage("join", "toy_map", &["a", "b"], &[])
            .stage("tail", "toy_map", &["join"], &[("salt", "t")])
    }

    /// Append a stage; params are written as given (`key: value`).
    pub fn stage(
        mut self,
        name: &str,
        kind: &str,
        inputs: &[&str],
        params: &[(&str, &str)],
    ) -> Self {
        self.stages.push(ToyStage {
            name: name.into(),
            kind: kind.into(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        });
        self
    }

    /// Set (or replace) one param of a stage.
    pub fn set(mut self, stage: &str, key: &str, value: &str) -> Self {
        let s = self
            .stages
            .iter_mut()
            .find(|s| s.name == stage)
            .unwrap_or_else(|| panic!("no stage {stage} in the toy pipeline"));
        match s.params.iter_mut().find(|(k, _)| k == key) {
            Some(param) => param.1 = value.into(),
            None => s.params.push((key.into(), value.into())),
        }
        self
    }

    /// Make a `toy_map` stage pause `ms` mid-write, creating [`signal_file`] first.
    pub fn slow(self, stage: &str, ms: u64) -> Self {
        self.set(stage, "sleep_ms", &ms.to_string())
            .set(stage, "signal", &signal_name(stage))
    }

    pub fn render(&self) -> String {
        let mut out = String::from("dataset:\n  root: data\nstages:\n");
        for s in &self.stages {
            out.push_str(&format!("  - name: {}\n    kind: {}\n", s.name, s.kind));
            if !s.inputs.is_empty() {
                out.push_str(&format!("    inputs: [{}]\n", s.inputs.join(", ")));
            }
            if !s.params.is_empty() {
                out.push_str("    params:\n");
                for (k, v) in &s.params {
                    out.push_str(&format!("      {k}: {v}\n"));
                }
            }
        }
        out
    }
}

impl Default for ToyPipeline {
    fn default() -> Self {
        ToyPipeline::new()
    }
}

fn signal_name(stage: &str) -> String {
    format!("{stage}-is-writing")
}

/// The file a [`ToyPipeline::slow`] stage creates in the project folder once it is mid-write.
pub fn signal_file(p: &Project, stage: &str) -> PathBuf {
    p.path().join(signal_name(stage))
}

impl Project {
    /// A project on the toy pipeline `toy`, with a one-file dataset.
    pub fn toy(toy: &ToyPipeline) -> Project {
        let p = Project::new(&toy.render());
        p.add_toy_dataset();
        p
    }

    /// The one-file dataset toy pipelines read (`data/x/one.bin`).
    pub fn add_toy_dataset(&self) {
        std::fs::create_dir_all(self.path().join("data/x")).expect("dataset folder");
        std::fs::write(self.path().join("data/x/one.bin"), b"one").expect("dataset file");
    }
}

/// Where two lock files differ, one line per differing value (`stages.tail.outputs.data: X, expected Y`),
/// a stage present on one side only in one line: short failure messages instead of two whole files.
pub fn lock_diff(actual: &str, expected: &str) -> String {
    fn flatten(
        prefix: &str,
        v: &serde_yaml::Value,
        out: &mut std::collections::BTreeMap<String, String>,
    ) {
        match v {
            serde_yaml::Value::Mapping(m) if !m.is_empty() => {
                for (k, v) in m {
                    let key = k
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("{k:?}"));
                    let path = if prefix.is_empty() {
                        key
                    } else {
                        format!("{prefix}.{key}")
                    };
                    flatten(&path, v, out);
                }
            }
            other => {
                let text = serde_yaml::to_string(other).unwrap_or_default();
                out.insert(prefix.to_string(), text.trim().to_string());
            }
        }
    }
    let parse = |text: &str| -> Result<std::collections::BTreeMap<String, String>, String> {
        let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        let mut out = std::collections::BTreeMap::new();
        flatten("", &value, &mut out);
        Ok(out)
    };
    let (a, e) = match (parse(actual), parse(expected)) {
        (Ok(a), Ok(e)) => (a, e),
        (a, e) => {
            return format!(
                "  not both YAML (actual: {:?}, expected: {:?})",
                a.err(),
                e.err()
            )
        }
    };
    let stage_of = |path: &str| -> Option<String> {
        let mut parts = path.splitn(3, '.');
        (parts.next() == Some("stages")).then(|| parts.next().map(str::to_string))?
    };
    let stages =
        |m: &std::collections::BTreeMap<String, String>| -> std::collections::BTreeSet<String> {
            m.keys().filter_map(|k| stage_of(k)).collect()
        };
    let (sa, se) = (stages(&a), stages(&e));
    let mut out = Vec::new();
    for s in sa.difference(&se) {
        out.push(format!("  stages.{s}: present, expected no entry"));
    }
    for s in se.difference(&sa) {
        out.push(format!("  stages.{s}: no entry, expected one"));
    }
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(e.keys()).collect();
    for key in keys {
        if stage_of(key).is_some_and(|s| !(sa.contains(&s) && se.contains(&s))) {
            continue;
        }
        let (x, y) = (a.get(key), e.get(key));
        if x != y {
            out.push(format!(
                "  {key}: {}, expected {}",
                x.map_or("<none>", String::as_str),
                y.map_or("<none>", String::as_str)
            ));
        }
    }
    if out.is_empty() {
        out.push("  (same values; the bytes differ in layout or comments)".into());
    }
    out.join("\n")
}

/// Assert two lock files are equal byte for byte, printing only the lines that differ.
#[track_caller]
pub fn assert_same_lock(actual: &str, expected: &str, context: &str) {
    if actual != expected {
        panic!(
            "{context}\npipeline.lock differs from the expected one:\n{}",
            lock_diff(actual, expected)
        );
    }
}

/// Polls `ready` until it returns `Some`, failing the test (naming `what`) if that takes longer than a generous
/// deadline: a hang fails instead of blocking the suite, and nothing depends on how long a step takes.
pub fn wait_until<T>(what: &str, ready: impl FnMut() -> Option<T>) -> T {
    poll_until(what, Instant::now() + COMMAND_LIMIT, ready)
}

/// Waits (within a generous deadline, killing it past that) for a spawned command whose stdout and stderr
/// are piped, and collects its output as a [`Run`]. The commands driven here print far less than a pipe holds.
pub fn finish(mut child: std::process::Child) -> Run {
    use std::io::Read;
    let status = wait_until("a genrelab process to exit", || {
        child.try_wait().expect("poll genrelab")
    });
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    if let Some(mut out) = child.stdout.take() {
        out.read_to_end(&mut stdout).expect("read stdout");
    }
    if let Some(mut err) = child.stderr.take() {
        err.read_to_end(&mut stderr).expect("read stderr");
    }
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Address-space cap for bounded runs: a regression to an unbounded allocation fails the test instead of
/// pushing a shared machine into swap or the OOM killer.
pub const MEMORY_LIMIT_KIB: u64 = 4 * 1024 * 1024;

impl Project {
    /// Runs genrelab with `limit` of wall time and [`MEMORY_LIMIT_KIB`] of address space; panics naming the
    /// command if it has not finished in time (after killing it), so "runs forever" fails instead of hanging.
    pub fn run_bounded(&self, args: &[&str], limit: std::time::Duration) -> Run {
        let mut cmd = Command::new("sh");
        cmd.current_dir(self.path())
            .arg("-c")
            .arg(format!(
                "ulimit -v {MEMORY_LIMIT_KIB} && exec \"$0\" \"$@\""
            ))
            .arg(env!("CARGO_BIN_EXE_genrelab"))
            .args(args)
            .env_remove("RUST_LOG");
        run_with_timeout(cmd, &args.join(" "), limit)
    }

    /// The same as [`Project::run_bounded`] as the unprivileged user `nobody` (uid 65534), or `None` with the
    /// reason when this machine cannot switch users (tests run as root, where permissions do not stop reads).
    pub fn run_unprivileged(
        &self,
        args: &[&str],
        limit: std::time::Duration,
    ) -> Result<Run, String> {
        let switch = unprivileged_prefix()?;
        let mut cmd = Command::new(&switch[0]);
        cmd.current_dir(self.path())
            .args(&switch[1..])
            .arg(env!("CARGO_BIN_EXE_genrelab"))
            .args(args)
            .env_remove("RUST_LOG");
        Ok(run_with_timeout(cmd, &args.join(" "), limit))
    }
}

/// A command prefix that runs what follows as uid/gid 65534, checked to work here.
fn unprivileged_prefix() -> Result<Vec<String>, String> {
    let candidates: [&[&str]; 2] = [
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
        &["runuser", "-u", "nobody", "--"],
    ];
    let mut tried = Vec::new();
    for prefix in candidates {
        let probe = Command::new(prefix[0])
            .args(&prefix[1..])
            .args(["sh", "-c", "test \"$(id -u)\" = 65534"])
            .output();
        match probe {
            Ok(out) if out.status.success() => {
                return Ok(prefix.iter().map(|s| s.to_string()).collect())
            }
            Ok(out) => tried.push(format!(
                "{}: {}",
                prefix[0],
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => tried.push(format!("{}: {e}", prefix[0])),
        }
    }
    Err(format!(
        "cannot run as an unprivileged user ({})",
        tried.join("; ")
    ))
}

fn run_with_timeout(mut cmd: Command, what: &str, limit: std::time::Duration) -> Run {
    // Output goes to files, not pipes: a child blocked on a full pipe would look like a hang.
    let out = tempfile::tempfile().expect("stdout file");
    let err = tempfile::tempfile().expect("stderr file");
    cmd.stdout(out.try_clone().expect("clone"))
        .stderr(err.try_clone().expect("clone"));
    let mut child = cmd.spawn().expect("spawn genrelab");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`genrelab {what}` did not finish within {limit:?}; killed");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let read = |mut f: std::fs::File| {
        use std::io::{Read, Seek};
        let mut text = String::new();
        f.rewind().expect("rewind");
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).expect("read output");
        text.push_str(&String::from_utf8_lossy(&bytes));
        text
    };
    Run {
        code: status.code().unwrap_or(-1),
        stdout: read(out),
        stderr: read(err),
    }
}

impl Project {
    /// Like [`Project::spawn`], with extra environment variables (run settings a test needs, never in keys).
    pub fn spawn_env(&self, args: &[&str], env: &[(&str, &Path)]) -> Background {
        let mut cmd = self.command(args);
        for (name, value) in env {
            cmd.env(name, value);
        }
        Background::start(cmd, format!("genrelab {}", args.join(" ")))
    }
}

impl Background {
    /// Send SIGINT (what Ctrl-C sends) to the process.
    pub fn interrupt(&mut self) {
        let pid = self.child.as_ref().expect("a started child").id();
        let status = Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -INT {pid} failed");
    }
}

/// The data path of the training-level tests over a tiny synthetic corpus (32-band log-mels of
/// `segments_per_track` segments per track); stages that consume it follow.
pub fn tiny_data_path(tracks_per_genre: u32, segments_per_track: u32) -> String {
    format!(
        "\
dataset:
  root: data/tiny
  synthetic: {{tracks_per_genre: {tracks_per_genre}, seed: 3, duplicates: 0}}
stages:
  - name: ingest
    kind: ingest
    inputs: [dataset]
  - name: split
    kind: split
    inputs: [ingest]
  - name: slice
    kind: slice
    inputs: [ingest, split]
    params: {{segments_per_track: {segments_per_track}}}
  - name: features
    kind: features
    inputs: [dataset, ingest, slice]
    params: {{n_mels: 32, hop_length: 2048}}
"
    )
}

/// A real service for a test (an S3 server, a Slurm cluster), started and stopped by the project's own
/// script under `scripts/`, its client settings read from the `env` file the script writes.
pub struct Service {
    script: PathBuf,
    dir: tempfile::TempDir,
    pub env: Vec<(String, String)>,
}

impl Service {
    /// Start `scripts/<script> start DIR`. `None` (the test then says it is skipped) when the script reports
    /// that the service is not installed (exit 3) and `GENRELAB_REQUIRE_SERVICES` is unset; CI sets it, so
    /// there a missing service fails the test instead.
    pub fn start(script: &str) -> Option<Service> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scripts")
            .join(script);
        let dir = tempfile::tempdir().expect("service dir");
        let out = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.code() == Some(3) && std::env::var_os("GENRELAB_REQUIRE_SERVICES").is_none() {
            println!("skipped: {}", stderr.trim());
            return None;
        }
        assert!(
            out.status.success(),
            "{} start failed ({}): {stderr}",
            script.display(),
            out.status
        );
        let env_file = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let env = std::fs::read_to_string(&env_file)
            .unwrap_or_else(|e| panic!("{env_file}: {e}"))
            .lines()
            .filter_map(|l| {
                let (k, v) = l.strip_prefix("export ")?.split_once('=')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect();
        Some(Service { script, dir, env })
    }

    pub fn var(&self, name: &str) -> &str {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("the service set no {name}"))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

impl Project {
    /// `genrelab ARGS` with extra environment variables, in the background.
    pub fn spawn_with(&self, env: &[(String, String)], args: &[&str]) -> Background {
        let mut cmd = self.command(args);
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        Background::start(cmd, format!("genrelab {}", args.join(" ")))
    }

    /// `genrelab ARGS` with extra environment variables, to completion.
    pub fn run_with(&self, env: &[(String, String)], args: &[&str]) -> Run {
        self.spawn_with(env, args)
            .wait(Instant::now() + COMMAND_LIMIT)
    }
}
