//! Run settings: how a stage is executed, never what it computes. A global `exec:` block in pipeline.yaml and a
//! per-stage one (which overrides it key by key) choose threads, the device and a memory hint.
//!
//! None of it enters a key: results must not depend on it (a stage of determinism class `exact` gives the
//! same bytes on 1 thread or 8), and a lab moving training to a GPU node must not re-run the data path. What
//! was used is recorded in the run stats (`artifacts/runs/<key>.json`), beside the time and host.
//!
//! The device is chosen here, in one place, and handed to the stage through its context; this build has the
//! CPU backend only, so `cuda:N` is refused at plan time with a message saying so.

use serde::Deserialize;

use crate::stage::{Device, ExecSettings};

/// The `exec:` block as written (every key optional, so a stage's block overrides only what it names).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// Worker threads for this stage (default: `run -j`, which defaults to the CPU count).
    #[serde(default)]
    pub threads: Option<usize>,
    /// `cpu` (default) or `cuda:N`.
    #[serde(default)]
    pub device: Option<String>,
    /// A hint of the memory the stage may use, e.g. `4GiB`, `512MiB`, `2GB` or a byte count.
    #[serde(default)]
    pub memory: Option<serde_yaml::Value>,
    /// Where stale stages run: `local` (default) or `slurm` (one job per stage; `run --executor` overrides).
    /// Read from the global block only.
    #[serde(default)]
    pub executor: Option<Executor>,
    /// A Slurm time limit for the stage's job (`sbatch --time`), e.g. `2:00:00` or `1-12:00:00`.
    #[serde(default)]
    pub time: Option<String>,
    /// Generic resources for the stage's job (`sbatch --gres`), e.g. `gpu:1`.
    #[serde(default)]
    pub gres: Option<String>,
    /// The Slurm partition for the stage's job (`sbatch --partition`); default: the cluster's.
    #[serde(default)]
    pub partition: Option<String>,
}

/// Where stale stages run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Executor {
    /// In this process, on this machine.
    #[default]
    Local,
    /// One Slurm batch job per stage, with `afterok` dependencies mirroring the DAG.
    Slurm,
}

/// What a stage's Slurm job asks for: `sbatch` options, every value checked so that none can be read as
/// another option or reach a shell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobResources {
    pub cpus: usize,
    pub memory_mib: Option<u64>,
    pub time: Option<String>,
    pub gres: Option<String>,
    pub partition: Option<String>,
}

/// Largest thread count accepted: beyond it a typo (`threads: 10000`) would only start idle threads.
const MAX_THREADS: usize = 1024;

impl ExecConfig {
    /// This block's keys over `base`'s.
    pub fn over(&self, base: &ExecConfig) -> ExecConfig {
        ExecConfig {
            threads: self.threads.or(base.threads),
            device: self.device.clone().or_else(|| base.device.clone()),
            memory: self.memory.clone().or_else(|| base.memory.clone()),
            executor: self.executor.or(base.executor),
            time: self.time.clone().or_else(|| base.time.clone()),
            gres: self.gres.clone().or_else(|| base.gres.clone()),
            partition: self.partition.clone().or_else(|| base.partition.clone()),
        }
    }

    /// The Slurm job a stage with these settings asks for; errors name the key, every one at once.
    pub fn job_resources(
        &self,
        default_threads: usize,
    ) -> Result<JobResources, Vec<(&'static str, String)>> {
        let settings = self.resolve(default_threads);
        let mut errors = settings.as_ref().err().cloned().unwrap_or_default();
        let time = self.time.as_deref().map(str::trim);
        if let Some(time) = time {
            // Slurm's forms: minutes, M:S, H:M:S, D-H, D-H:M, D-H:M:S.
            let ok = !time.is_empty()
                && time
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == ':' || c == '-')
                && time.chars().next().is_some_and(|c| c.is_ascii_digit());
            if !ok {
                errors.push((
                    "time",
                    format!("`{time}` is not a Slurm time limit such as 2:00:00 or 1-12:00:00"),
                ));
            }
        }
        let word = |key: &'static str, value: &Option<String>, errors: &mut Vec<_>| {
            let value = value.as_deref().map(str::trim)?;
            let ok = !value.is_empty()
                && !value.starts_with('-')
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.:,=/+-".contains(c));
            if !ok {
                errors.push((
                    key,
                    format!("`{value}` is not a Slurm {key} (letters, digits and _.:,=/+- only)"),
                ));
            }
            Some(value.to_string())
        };
        let gres = word("gres", &self.gres, &mut errors);
        let partition = word("partition", &self.partition, &mut errors);
        match settings {
            Ok(settings) if errors.is_empty() => Ok(JobResources {
                cpus: settings.threads,
                memory_mib: settings.memory_bytes.map(|b| b.div_ceil(1 << 20)),
                time: time.map(str::to_string),
                gres,
                partition,
            }),
            _ => Err(errors),
        }
    }

    /// The settings a stage runs with; errors name the key (`threads`, `device`, `memory`) and the problem,
    /// every one at once.
    pub fn resolve(
        &self,
        default_threads: usize,
    ) -> Result<ExecSettings, Vec<(&'static str, String)>> {
        let threads = match self.threads {
            Some(0) => Err(("threads", "must be at least 1".to_string())),
            Some(n) if n > MAX_THREADS => {
                Err(("threads", format!("{n} is more than {MAX_THREADS}")))
            }
            Some(n) => Ok(n),
            None => Ok(default_threads.max(1)),
        };
        let device = self.device();
        let memory_bytes = match &self.memory {
            None => Ok(None),
            Some(value) => parse_bytes(value).map(Some).map_err(|e| ("memory", e)),
        };
        match (threads, device, memory_bytes) {
            (Ok(threads), Ok(device), Ok(memory_bytes)) => Ok(ExecSettings {
                threads,
                device,
                memory_bytes,
            }),
            (t, d, m) => Err([t.err(), d.err(), m.err()].into_iter().flatten().collect()),
        }
    }

    fn device(&self) -> Result<Device, (&'static str, String)> {
        match self.device.as_deref() {
            None | Some("cpu") => Ok(Device::Cpu),
            Some(other) => {
                let Some(index) = other
                    .strip_prefix("cuda:")
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    return Err((
                        "device",
                        format!("`{other}` is not a device; use `cpu` or `cuda:N`"),
                    ));
                };
                // The candle CUDA backend will arrive behind a cargo feature; until then every CUDA device
                // is refused here, at plan time, rather than failing inside a stage.
                Err((
                    "device",
                    format!(
                        "`cuda:{index}` needs a genrelab built with a CUDA backend; this build has the CPU \
                         backend only (use `device: cpu`)"
                    ),
                ))
            }
        }
    }
}

/// `4GiB`, `512 MiB`, `2GB`, `1000000` (bytes).
fn parse_bytes(value: &serde_yaml::Value) -> Result<u64, String> {
    if let Some(n) = value.as_u64() {
        return Ok(n);
    }
    let text = value
        .as_str()
        .ok_or_else(|| format!("`{value:?}` is not a size such as 4GiB"))?
        .trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size such as 4GiB"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}` (use B, KB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    let bytes = number * scale;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("`{text}` is not a usable size"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> ExecConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn a_stage_block_overrides_the_global_one_key_by_key() {
        let global = cfg("threads: 2\nmemory: 1GiB\n");
        let stage = cfg("threads: 1\n");
        let merged = stage.over(&global).resolve(8).unwrap();
        assert_eq!(merged.threads, 1);
        assert_eq!(merged.memory_bytes, Some(1 << 30));
        assert_eq!(merged.device, Device::Cpu);
        assert_eq!(ExecConfig::default().resolve(8).unwrap().threads, 8);
    }

    #[test]
    fn bad_settings_name_their_key() {
        let keys = |yaml: &str| -> Vec<&str> {
            cfg(yaml)
                .resolve(1)
                .unwrap_err()
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(keys("threads: 0"), ["threads"]);
        assert_eq!(keys("device: gpu"), ["device"]);
        assert_eq!(
            keys("threads: 0\ndevice: gpu\nmemory: 4 parsecs"),
            ["threads", "device", "memory"]
        );
        let errors = cfg("device: cuda:0").resolve(1).unwrap_err();
        assert!(errors[0].1.contains("CPU backend only"), "{errors:?}");
        assert_eq!(
            cfg("memory: 512MiB").resolve(1).unwrap().memory_bytes,
            Some(512 << 20)
        );
        assert_eq!(
            cfg("memory: 2GB").resolve(1).unwrap().memory_bytes,
            Some(2_000_000_000)
        );
        assert_eq!(
            cfg("memory: 1000").resolve(1).unwrap().memory_bytes,
            Some(1000)
        );
    }

    #[test]
    fn slurm_resources_are_checked_so_that_none_reads_as_another_option() {
        let job = cfg("threads: 4\nmemory: 1GiB\ntime: '1-12:00:00'\ngres: gpu:1\npartition: gpu")
            .job_resources(2)
            .unwrap();
        assert_eq!(
            job,
            JobResources {
                cpus: 4,
                memory_mib: Some(1024),
                time: Some("1-12:00:00".into()),
                gres: Some("gpu:1".into()),
                partition: Some("gpu".into()),
            }
        );
        assert_eq!(ExecConfig::default().job_resources(3).unwrap().cpus, 3);
        // A byte count rounds up to whole MiB: never less memory than asked for.
        assert_eq!(
            cfg("memory: 1000").job_resources(1).unwrap().memory_mib,
            Some(1)
        );
        let keys = |yaml: &str| -> Vec<&str> {
            cfg(yaml)
                .job_resources(1)
                .unwrap_err()
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(keys("time: 'two hours'"), ["time"]);
        assert_eq!(keys("time: '-1'"), ["time"]);
        assert_eq!(keys("gres: '--wrap=rm'"), ["gres"]);
        assert_eq!(keys("partition: 'a b'"), ["partition"]);
        assert_eq!(keys("threads: 0\ngres: 'x;y'"), ["threads", "gres"]);
    }
}
