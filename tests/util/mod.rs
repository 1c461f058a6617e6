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
