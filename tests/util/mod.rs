//! Shared helpers for end-to-end tests: a fresh project folder per test, ways to run the binary in it (to
//! completion or in the background, always under a deadline) and polling for events.

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
    loop {
        if done() {
            return;
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

    pub fn lock(&self) -> String {
        std::fs::read_to_string(self.path().join("pipeline.lock")).unwrap_or_default()
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
}
