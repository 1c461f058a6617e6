//! The `genrelab` binary: resolves flags into a loaded pipeline and an opened store, dispatches, and alone
//! decides exit codes (0 ok, 1 a check found a problem, 2 an error).

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;

use genrelab::cli::{Cli, Command};
use genrelab::config::Pipeline;
use genrelab::dag::Dag;
use genrelab::engine::{self, Project, RunOptions, State};
use genrelab::hashing::short;
use genrelab::inspect;
use genrelab::stage::StageKind;
use genrelab::stages;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn load(config: &Path) -> anyhow::Result<Pipeline> {
    Pipeline::load(config).map_err(|e| anyhow::anyhow!("{e}"))
}

fn build<'r>(pipeline: &Pipeline, registry: &'r [Box<dyn StageKind>]) -> anyhow::Result<Dag<'r>> {
    Dag::build(pipeline, registry).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Generate the synthetic corpus when pipeline.yaml asks for one and it is not there yet.
fn prepare_dataset(pipeline: &Pipeline) -> anyhow::Result<()> {
    let Some(raw) = &pipeline.dataset.synthetic else {
        return Ok(());
    };
    let params: stages::synth::SynthParams = serde_yaml::from_value(raw.clone()).map_err(|e| {
        let at = pipeline.locator().error("", 0, None, String::new());
        anyhow::anyhow!("{}: dataset.synthetic: {e}", at.file.display())
    })?;
    let outcome =
        stages::synth::ensure_corpus(&params, &pipeline.dataset.root).with_context(|| {
            format!(
                "preparing the synthetic corpus in {}",
                pipeline.dataset.root.display()
            )
        })?;
    if outcome.generated {
        println!(
            "dataset: generated the synthetic corpus ({} tracks) in {}",
            outcome.tracks,
            pipeline.dataset.root.display()
        );
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let registry = stages::registry();
    if let Command::Kinds = cli.command {
        for kind in &registry {
            let needs: Vec<&str> = kind.needs().iter().map(|n| n.artifact).collect();
            println!("{:<10} {}", kind.kind(), kind.about());
            println!(
                "{:<10} needs: {}; produces: {}",
                "",
                needs.join(", "),
                kind.outputs().join(", ")
            );
            if let Ok(params) = kind.canonical_params(&serde_yaml::Value::Null) {
                println!("{:<10} default params: {params}", "");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let pipeline = load(&cli.config)?;
    let dag = build(&pipeline, &registry)?;
    let project = Project::open(&cli.config)?;
    match cli.command {
        Command::Kinds => unreachable!("handled above"),
        Command::Synth => {
            if pipeline.dataset.synthetic.is_none() {
                bail!(
                    "{}: dataset.synthetic is not set, so there is no corpus to generate",
                    cli.config.display()
                );
            }
            prepare_dataset(&pipeline)?;
            println!("dataset: {} is ready", pipeline.dataset.root.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Dag { format } => {
            print!("{}", dag.render(format));
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { until, force, jobs } => {
            prepare_dataset(&pipeline)?;
            let options = RunOptions {
                until,
                force,
                jobs: jobs_or_cpus(jobs)?,
            };
            let results = engine::run(&project, &pipeline, &dag, &options, |result| {
                println!("{}", result.line());
                for line in &result.summary {
                    println!("    {line}");
                }
            })?;
            let count =
                |f: fn(&engine::Outcome) -> bool| results.iter().filter(|r| f(&r.outcome)).count();
            let ran = count(|o| matches!(o, engine::Outcome::Ran { .. }));
            let cached = count(|o| matches!(o, engine::Outcome::Cached { .. }));
            let failed = count(|o| matches!(o, engine::Outcome::Failed { .. }));
            let skipped = count(|o| matches!(o, engine::Outcome::Skipped { .. }));
            println!(
                "{} stages: {ran} ran, {cached} cached, {failed} failed, {skipped} skipped",
                results.len()
            );
            let not_built: Vec<&str> = registry_gaps(&registry);
            if !not_built.is_empty() {
                println!(
                    "not built yet (no stage kind exists for them): {}",
                    not_built.join(", ")
                );
            }
            Ok(if failed + skipped > 0 {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Status { json } => {
            if pipeline.dataset.synthetic.is_some() && !pipeline.dataset.root.exists() {
                println!(
                    "dataset: the synthetic corpus is not generated yet in {} (`genrelab run` or `genrelab synth` makes it); every stage is stale",
                    pipeline.dataset.root.display()
                );
                return Ok(ExitCode::from(1));
            }
            let statuses = engine::status(&project, &pipeline, &dag)?;
            if json {
                let rows: Vec<serde_json::Value> = statuses
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "stage": s.name,
                            "kind": s.kind,
                            "state": match s.state { State::UpToDate => "up_to_date", State::Cached => "cached", State::Stale => "stale" },
                            "key": s.key,
                            "reasons": s.reasons.iter().map(ToString::to_string).collect::<Vec<_>>(),
                            "summary": s.summary,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let width = statuses.iter().map(|s| s.name.len()).max().unwrap_or(0);
                for s in &statuses {
                    let key = s.key.as_deref().map(short).unwrap_or("--------");
                    let (state, why) = match s.state {
                        State::UpToDate => ("up to date", String::new()),
                        State::Cached => (
                            "stale",
                            format!(
                                "{} (result already in the store)",
                                genrelab::reason::sentence(&s.reasons)
                            ),
                        ),
                        State::Stale => ("stale", genrelab::reason::sentence(&s.reasons)),
                    };
                    println!("{:<width$}  {key}  {state:<10}  {why}", s.name);
                    for line in &s.summary {
                        println!("{:<width$}    {line}", "");
                    }
                }
            }
            let stale = statuses.iter().any(|s| s.state != State::UpToDate);
            Ok(if stale {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Lineage { target, json } => {
            let tree = inspect::lineage(&project, &target)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tree)?);
            } else {
                print!("{}", inspect::render_lineage(&tree));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { rerun, jobs } => {
            let (checked, mut problems) = inspect::verify(&project)?;
            let mut rerun_compared = None;
            if rerun {
                prepare_dataset(&pipeline)?;
                let (compared, more) =
                    inspect::verify_rerun(&project, &pipeline, &dag, jobs_or_cpus(jobs)?)?;
                rerun_compared = Some(compared);
                problems.extend(more);
            }
            for p in &problems {
                println!("{p}");
            }
            if let Some(compared) = rerun_compared {
                println!("verify --rerun: re-ran every stage in a scratch store; compared {compared} outputs with pipeline.lock");
            }
            if problems.is_empty() {
                println!("verify: {checked} artifacts match pipeline.lock");
                Ok(ExitCode::SUCCESS)
            } else {
                println!(
                    "verify: {} problems ({checked} artifacts re-hashed)",
                    problems.len()
                );
                Ok(ExitCode::from(1))
            }
        }
        Command::Gc { dry_run } => {
            let report = inspect::gc(&project, dry_run)?;
            let bytes: u64 = report.removed.iter().map(|(_, b)| b).sum();
            for (digest, size) in &report.removed {
                println!(
                    "{} {digest} {size} bytes",
                    if dry_run { "would remove" } else { "removed" }
                );
            }
            println!(
                "gc: {} {} objects ({:.1} MB), kept {}{}",
                if dry_run { "would remove" } else { "removed" },
                report.removed.len(),
                bytes as f64 / 1e6,
                report.kept,
                if dry_run {
                    String::new()
                } else {
                    format!(", dropped {} stale action records", report.actions_removed)
                }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn jobs_or_cpus(jobs: Option<usize>) -> anyhow::Result<usize> {
    let jobs = jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    if jobs == 0 {
        bail!("-j must be at least 1");
    }
    Ok(jobs)
}

/// Stages of the study's DAG that no registered kind implements yet; `run` says so instead of faking them.
fn registry_gaps(registry: &[Box<dyn StageKind>]) -> Vec<&'static str> {
    ["train", "tournament", "cv", "transfer", "report"]
        .into_iter()
        .filter(|k| !registry.iter().any(|r| r.kind() == *k))
        .collect()
}
