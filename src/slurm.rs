//! Slurm's command-line clients as typed calls: submit a batch job, read job states, cancel jobs.
//!
//! Only `sbatch`, `squeue`, `scontrol` and `scancel` are used (no accounting database: `sacct` needs
//! slurmdbd, which a small cluster often lacks). Arguments are passed as separate words, never through a
//! shell; the job's own command line is quoted word by word for `sbatch --wrap`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::exec::JobResources;

#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    #[error("cannot run `{command}` (is Slurm installed and SLURM_CONF set?): {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("`{command}` printed `{output}`, not {expected}")]
    Unexpected {
        command: String,
        output: String,
        expected: &'static str,
    },
}

pub type JobId = u64;

/// A job's state as Slurm names it (`squeue -o %T`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    Pending,
    Running,
    /// Ended with exit code 0.
    Completed,
    /// Ended any other way: FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, ... (Slurm's word).
    Ended(String),
    /// Still in the queue in some transitional state (CONFIGURING, COMPLETING, SUSPENDED, ...).
    Other(String),
}

impl JobState {
    fn parse(word: &str) -> JobState {
        match word {
            "PENDING" => JobState::Pending,
            "RUNNING" => JobState::Running,
            "COMPLETED" => JobState::Completed,
            "FAILED" | "CANCELLED" | "TIMEOUT" | "OUT_OF_MEMORY" | "NODE_FAIL" | "BOOT_FAIL"
            | "DEADLINE" | "PREEMPTED" => JobState::Ended(word.to_string()),
            other => JobState::Other(other.to_string()),
        }
    }

    pub fn finished(&self) -> bool {
        matches!(self, JobState::Completed | JobState::Ended(_))
    }

    pub fn word(&self) -> &str {
        match self {
            JobState::Pending => "PENDING",
            JobState::Running => "RUNNING",
            JobState::Completed => "COMPLETED",
            JobState::Ended(w) | JobState::Other(w) => w,
        }
    }
}

/// One job to submit.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub name: String,
    /// The command the job runs, word by word.
    pub command: Vec<String>,
    pub workdir: PathBuf,
    /// Where the job's stdout and stderr go (`%j` is the job id).
    pub log: PathBuf,
    pub resources: JobResources,
    /// Jobs that must complete successfully first.
    pub after_ok: Vec<JobId>,
}

fn run(program: &str, args: &[String]) -> Result<String, SlurmError> {
    let command = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| SlurmError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(SlurmError::Failed {
            command,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A word quoted for a POSIX shell: `sbatch --wrap` hands its text to `sh -c`.
pub fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The `sbatch` arguments for `spec` (without the program name).
pub fn sbatch_args(spec: &JobSpec) -> Vec<String> {
    let r = &spec.resources;
    let mut args = vec![
        "--parsable".to_string(),
        format!("--job-name={}", spec.name),
        format!("--chdir={}", spec.workdir.display()),
        format!("--output={}", spec.log.display()),
        "--nodes=1".to_string(),
        "--ntasks=1".to_string(),
        format!("--cpus-per-task={}", r.cpus.max(1)),
        // The job runs what the driver would have run here: same environment (remote settings, AWS keys).
        "--export=ALL".to_string(),
    ];
    if let Some(mib) = r.memory_mib {
        args.push(format!("--mem={mib}M"));
    }
    if let Some(time) = &r.time {
        args.push(format!("--time={time}"));
    }
    if let Some(gres) = &r.gres {
        args.push(format!("--gres={gres}"));
    }
    if let Some(partition) = &r.partition {
        args.push(format!("--partition={partition}"));
    }
    if !spec.after_ok.is_empty() {
        let ids: Vec<String> = spec.after_ok.iter().map(JobId::to_string).collect();
        args.push(format!("--dependency=afterok:{}", ids.join(":")));
        // A job whose dependency failed is cancelled rather than left waiting forever.
        args.push("--kill-on-invalid-dep=yes".to_string());
    }
    let command: Vec<String> = spec.command.iter().map(|w| shell_quote(w)).collect();
    args.push(format!("--wrap=exec {}", command.join(" ")));
    args
}

/// Submit `spec`; its job id.
pub fn submit(spec: &JobSpec) -> Result<JobId, SlurmError> {
    let args = sbatch_args(spec);
    let out = run("sbatch", &args)?;
    // `--parsable` prints `ID` or `ID;CLUSTER`.
    let first = out.trim().split(';').next().unwrap_or_default();
    first.parse().map_err(|_| SlurmError::Unexpected {
        command: "sbatch".into(),
        output: out.trim().to_string(),
        expected: "a job id",
    })
}

/// The states of `ids` that the queue still knows (finished jobs stay for `MinJobAge` seconds).
pub fn states(ids: &[JobId]) -> Result<BTreeMap<JobId, JobState>, SlurmError> {
    if ids.is_empty() {
        return Ok(BTreeMap::new());
    }
    let list: Vec<String> = ids.iter().map(JobId::to_string).collect();
    let args = vec![
        "--noheader".to_string(),
        "--states=all".to_string(),
        format!("--jobs={}", list.join(",")),
        "--format=%i %T".to_string(),
    ];
    // squeue fails outright when every listed job has left the queue ("Invalid job id specified").
    let out = match run("squeue", &args) {
        Ok(out) => out,
        Err(SlurmError::Failed { stderr, .. }) if stderr.contains("Invalid job id") => {
            String::new()
        }
        Err(e) => return Err(e),
    };
    Ok(parse_states(&out))
}

fn parse_states(out: &str) -> BTreeMap<JobId, JobState> {
    out.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let id = words.next()?.parse().ok()?;
            Some((id, JobState::parse(words.next()?)))
        })
        .collect()
}

/// Jobs in the queue named `name` that have not finished, oldest first: a killed driver's jobs to adopt.
pub fn live_jobs_named(name: &str) -> Result<Vec<(JobId, JobState)>, SlurmError> {
    let args = vec![
        "--noheader".to_string(),
        format!("--name={name}"),
        "--format=%i %T".to_string(),
    ];
    let mut jobs: Vec<(JobId, JobState)> = parse_states(&run("squeue", &args)?)
        .into_iter()
        .filter(|(_, state)| !state.finished())
        .collect();
    jobs.sort_by_key(|(id, _)| *id);
    Ok(jobs)
}

/// Cancel `ids` (already finished ones are ignored by Slurm).
pub fn cancel(ids: &[JobId]) -> Result<(), SlurmError> {
    if ids.is_empty() {
        return Ok(());
    }
    match run(
        "scancel",
        &ids.iter().map(JobId::to_string).collect::<Vec<_>>(),
    ) {
        // A job that ended between the last look at the queue and now: nothing left to cancel.
        Err(SlurmError::Failed { stderr, .. })
            if stderr.lines().all(|l| {
                l.contains("already completing or completed") || l.contains("Invalid job id")
            }) =>
        {
            Ok(())
        }
        other => other.map(|_| ()),
    }
}

/// The exit code Slurm recorded for a finished job (`scontrol show job`), when it still knows the job.
pub fn exit_code(id: JobId) -> Option<String> {
    let out = run("scontrol", &["show".into(), "job".into(), id.to_string()]).ok()?;
    out.split_whitespace()
        .find_map(|w| w.strip_prefix("ExitCode="))
        .map(str::to_string)
}

/// The last `lines` lines of a job's log, for a failure message.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jobs_command_is_quoted_word_by_word() {
        let spec = JobSpec {
            name: "gl-x-train[fold=0]".into(),
            command: vec![
                "/opt/gl bin/genrelab".into(),
                "it's".into(),
                "$(rm -rf /)".into(),
            ],
            workdir: "/p".into(),
            log: "/p/log-%j".into(),
            resources: JobResources {
                cpus: 4,
                memory_mib: Some(2048),
                time: Some("1:00:00".into()),
                gres: Some("gpu:1".into()),
                partition: None,
            },
            after_ok: vec![11, 12],
        };
        let args = sbatch_args(&spec);
        assert!(args.contains(&"--cpus-per-task=4".to_string()));
        assert!(args.contains(&"--mem=2048M".to_string()));
        assert!(args.contains(&"--gres=gpu:1".to_string()));
        assert!(args.contains(&"--dependency=afterok:11:12".to_string()));
        let wrap = args.last().unwrap();
        assert_eq!(
            wrap,
            r"--wrap=exec '/opt/gl bin/genrelab' 'it'\''s' '$(rm -rf /)'"
        );
        // What sh makes of it is the three words again.
        let words = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf '%s\\n' {}",
                wrap.trim_start_matches("--wrap=exec ")
            ))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(words.stdout).unwrap(),
            "/opt/gl bin/genrelab\nit's\n$(rm -rf /)\n"
        );
    }

    #[test]
    fn queue_states_parse() {
        let states = parse_states("12 COMPLETED\n13 PENDING\n14 FAILED\n15 COMPLETING\nbad line\n");
        assert_eq!(states[&12], JobState::Completed);
        assert_eq!(states[&13], JobState::Pending);
        assert_eq!(states[&14], JobState::Ended("FAILED".into()));
        assert_eq!(states[&15], JobState::Other("COMPLETING".into()));
        assert!(!states[&15].finished());
        assert_eq!(states.len(), 4);
    }
}
