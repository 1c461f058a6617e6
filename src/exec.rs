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
}
