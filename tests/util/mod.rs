//! Shared helpers for end-to-end tests: a fresh project folder per test and a way to run the binary in it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Project {
    pub dir: tempfile::TempDir,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

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

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().expect("run genrelab"))
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

/// Polls `ready` until it returns `Some`, failing the test (naming `what`) if that takes longer than a generous
/// deadline: a hang fails instead of blocking the suite, and nothing depends on how long a step takes.
pub fn wait_until<T>(what: &str, mut ready: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        if let Some(value) = ready() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
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
    Run::from(Output {
        status,
        stdout,
        stderr,
    })
}
