//! `genrelab efficiency`: the study's efficiency table. Parameters and multiply-adds come from the tournament's
//! leaderboard (counted from layer shapes when each model was trained); inference latency is measured now, on
//! this machine, from the models pipeline.lock names.
//!
//! Latency is wall-clock, so it is printed (and written as CSV on request), never cached: a cached timing
//! would be a number from some other machine and load, presented as this one's.

use std::fmt::Write as _;
use std::path::PathBuf;

use genrelab_contract::Device;
use genrelab_stages::tournament::Leaderboard;
use genrelab_stages::train::latency::{self, Timings};

use crate::engine::{EngineError, Project};
use crate::lock::{LockFile, StageEntry};

/// The batch sizes the study's efficiency table reports: one segment at a time, and a batch of 32.
pub const BATCHES: [usize; 2] = [1, 32];

/// One member's row: what the leaderboard says, and the timings measured at each of [`BATCHES`].
#[derive(Debug, Clone)]
pub struct EfficiencyRow {
    pub member: String,
    pub trainable_parameters: usize,
    pub multiply_adds_per_segment: u64,
    pub test_segment_accuracy: f64,
    pub test_track_accuracy: f64,
    pub timings: Vec<Timings>,
}

/// Where a stage's folder output is materialised, from its pipeline.lock entry.
fn output_folder(
    project: &Project,
    stage: &str,
    entry: &StageEntry,
    output: &str,
) -> Result<PathBuf, EngineError> {
    let digest = entry.outputs.get(output).ok_or_else(|| {
        EngineError::Other(format!(
            "{}: stage `{stage}` has no output `{output}`",
            project.lock_path.display()
        ))
    })?;
    Ok(project.blobs().materialize_tree(digest)?)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T, EngineError> {
    let bytes = std::fs::read(path)
        .map_err(|e| EngineError::Other(format!("{}: cannot read: {e}", path.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| EngineError::Other(format!("{}: not valid: {e}", path.display())))
}

/// Times every member of the locked tournament's leaderboard, in leaderboard order, `repeats` timed passes per
/// batch size. `on_member` hears each member's name before it is timed (progress for a slow machine).
pub fn measure(
    project: &Project,
    device: Device,
    repeats: usize,
    mut on_member: impl FnMut(&str),
) -> Result<Vec<EfficiencyRow>, EngineError> {
    let lock = LockFile::load(&project.lock_path)?;
    let (tournament, entry) = lock
        .stages
        .iter()
        .find(|(_, e)| e.kind == "tournament")
        .ok_or_else(|| {
            EngineError::Other(format!(
                "{}: no `tournament` stage has run yet; `genrelab run` first",
                project.lock_path.display()
            ))
        })?;
    let board: Leaderboard = read_json(
        &output_folder(project, tournament, entry, "tournament")?.join("leaderboard.json"),
    )?;
    let mut rows = Vec::new();
    for member in &board.entries {
        on_member(&member.member);
        let entry = lock.stages.get(&member.member).ok_or_else(|| {
            EngineError::Other(format!(
                "{}: the leaderboard names `{}`, which pipeline.lock does not",
                project.lock_path.display(),
                member.member
            ))
        })?;
        let folder = output_folder(project, &member.member, entry, "model")?;
        let (_, timings) = latency::time_model_folder(&folder, device, &BATCHES, repeats)
            .map_err(|e| EngineError::Other(format!("{}: {e}", member.member)))?;
        rows.push(EfficiencyRow {
            member: member.member.clone(),
            trainable_parameters: member.trainable_parameters,
            multiply_adds_per_segment: member.multiply_adds_per_segment,
            test_segment_accuracy: member.test_segment_accuracy,
            test_track_accuracy: member.test_track_accuracy,
            timings,
        });
    }
    Ok(rows)
}

fn median(t: &Timings) -> f64 {
    t.summary().map(|(_, m, _)| m).unwrap_or(f64::NAN)
}

/// The table for people: medians, with the spread of the batch-1 timings.
pub fn render(rows: &[EfficiencyRow], repeats: usize, threads: usize) -> String {
    let mut out = format!(
        "efficiency (inference latency: median of {repeats} timed passes per batch size, {threads} threads, this machine)\n"
    );
    let _ = writeln!(
        out,
        "{:<44} {:>9} {:>10} {:>20} {:>13} {:>9} {:>9}",
        "member", "params", "MACs/seg", "ms/seg b1 (min-max)", "ms/seg b32", "test seg", "test trk"
    );
    for r in rows {
        let b1 = r.timings.iter().find(|t| t.batch == 1);
        let b32 = r.timings.iter().find(|t| t.batch == 32);
        let spread = b1
            .and_then(Timings::summary)
            .map(|(min, med, max)| format!("{med:.2} ({min:.2}-{max:.2})"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<44} {:>9} {:>10} {:>20} {:>13} {:>9.1} {:>9.1}",
            r.member,
            r.trainable_parameters,
            r.multiply_adds_per_segment,
            spread,
            b32.map(|t| format!("{:.3}", median(t))).unwrap_or_default(),
            100.0 * r.test_segment_accuracy,
            100.0 * r.test_track_accuracy,
        );
    }
    out
}

/// The same table as CSV: one row per member and batch size, every timed pass's median, min and max.
pub fn csv(rows: &[EfficiencyRow]) -> String {
    let mut out = String::from(
        "member,trainable_parameters,multiply_adds_per_segment,batch,ms_per_segment_median,\
         ms_per_segment_min,ms_per_segment_max,repeats,test_segment_accuracy,test_track_accuracy\n",
    );
    for r in rows {
        for t in &r.timings {
            let (min, med, max) = t.summary().unwrap_or((f64::NAN, f64::NAN, f64::NAN));
            let _ = writeln!(
                out,
                "\"{}\",{},{},{},{med},{min},{max},{},{},{}",
                r.member,
                r.trainable_parameters,
                r.multiply_adds_per_segment,
                t.batch,
                t.ms_per_segment.len(),
                r.test_segment_accuracy,
                r.test_track_accuracy
            );
        }
    }
    out
}
