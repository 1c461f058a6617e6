//! The `genrelab` binary: resolves flags into a loaded pipeline and an opened store, dispatches, and alone
//! decides exit codes (0 ok, 1 a check found a problem, 2 an error).

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Parser;

use genrelab::cli::{Cli, Command};
use genrelab::config::{ConfigErrors, DatasetConfig, Pipeline};
use genrelab::dag::{unknown_field_hint, Dag};
use genrelab::engine::{self, Project, RunOptions, State};
use genrelab::hashing::short;
use genrelab::inspect;
use genrelab::reason::StaleReason;
use genrelab::stage::StageKind;
use genrelab::stages;
use genrelab::stages::synth::SynthParams;

fn main() -> ExitCode {
    // `genrelab status | head` should end quietly when head has read enough, as other Unix tools do,
    // instead of panicking on the closed pipe.
    // SAFETY: called first in main, before any other thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    genrelab::tune_allocator();
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
    Ok(Pipeline::load(config)?)
}

fn build<'r>(pipeline: &Pipeline, registry: &'r [Box<dyn StageKind>]) -> anyhow::Result<Dag<'r>> {
    Ok(Dag::build(pipeline, registry)?)
}

/// The typed `synthetic` section of every dataset that has one, with errors pointed at the offending key.
fn synth_params(pipeline: &Pipeline) -> Result<Vec<(&DatasetConfig, SynthParams)>, ConfigErrors> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for dataset in pipeline.datasets.values() {
        let Some(raw) = &dataset.synthetic else {
            continue;
        };
        match SynthParams::from_yaml(raw) {
            Ok(params) => out.push((dataset, params)),
            Err(e) => {
                let label = dataset.label();
                let mut section = dataset.section();
                section.push("synthetic");
                let message = match &e.key {
                    Some(key) if e.message.starts_with(&format!("{key}:")) => {
                        format!("{label}.synthetic.{}", e.message)
                    }
                    _ => format!(
                        "{label}.synthetic: {}{}",
                        e.message,
                        unknown_field_hint(&e.message)
                    ),
                };
                if let Some(key) = &e.key {
                    section.push(key);
                }
                errors.push(pipeline.locator().key_error(&section, message));
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Generate the synthetic corpora pipeline.yaml asks for that are not there yet.
fn prepare_dataset(pipeline: &Pipeline) -> anyhow::Result<()> {
    for (dataset, params) in synth_params(pipeline)? {
        let root = &dataset.root;
        let label = dataset.label();
        let outcome = stages::synth::ensure_corpus_with(&params, root, || {
            eprintln!(
                "{label}: waiting for another genrelab process generating the synthetic corpus in {}",
                root.display()
            )
        })
        .with_context(|| format!("preparing the synthetic corpus in {}", root.display()))?;
        if outcome.generated {
            println!(
                "{label}: generated the synthetic corpus ({}) in {}",
                plural(outcome.tracks, "track"),
                root.display()
            );
        }
    }
    Ok(())
}

/// "1 track", "20 tracks".
fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("{n} {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `status`: every stage's state, as text or JSON. Exit 0 when all are up to date, 1 when any is stale.
fn status(
    config: &Path,
    registry: &[Box<dyn StageKind>],
    json: bool,
    offline: bool,
    only: &[String],
) -> anyhow::Result<ExitCode> {
    let pipeline = load(config)?;
    let dag = build(&pipeline, registry)?;
    let mut shown = std::collections::BTreeSet::new();
    for name in only {
        let selected = dag
            .select(name)
            .ok_or_else(|| engine::unknown_stage(&dag, name))?;
        shown.extend(selected.into_iter().map(|i| dag.nodes[i].name.clone()));
    }
    // A synthetic corpus not generated yet has no digest, so no key can be computed: every stage waits
    // for it (named after the first such corpus).
    let not_generated: Vec<&DatasetConfig> = synth_params(&pipeline)?
        .into_iter()
        .map(|(dataset, _)| dataset)
        .filter(|d| !d.root.exists())
        .collect();
    let project = Project::open(config)?.with_remote(remote(&pipeline, offline)?);
    let statuses = if let Some(missing) = not_generated.first() {
        dag.order
            .iter()
            .map(|&i| engine::StageStatus {
                name: dag.nodes[i].name.clone(),
                kind: dag.nodes[i].kind.kind().into(),
                state: State::Stale,
                key: None,
                reasons: vec![StaleReason::DatasetNotGenerated {
                    root: missing.root.display().to_string(),
                }],
                summary: Vec::new(),
            })
            .collect()
    } else {
        engine::status(&project, &pipeline, &dag)?
    };
    // Every stage is planned (a stage's state depends on its ancestors'); only the named ones are shown.
    let statuses: Vec<engine::StageStatus> = statuses
        .into_iter()
        .filter(|s| shown.is_empty() || shown.contains(&s.name))
        .collect();
    let stale = statuses.iter().any(|s| s.state != State::UpToDate);
    if json {
        let rows: Vec<serde_json::Value> = statuses
            .iter()
            .map(|s| {
                serde_json::json!({
                    "stage": s.name,
                    "kind": s.kind,
                    "state": match s.state { State::UpToDate => "up_to_date", State::Cached => "cached", State::Remote => "remote", State::Stale => "stale" },
                    "key": s.key,
                    "reasons": s.reasons.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "summary": s.summary,
                })
            })
            .collect();
        let state = |d: &DatasetConfig| {
            let missing = not_generated.iter().any(|m| m.input() == d.input());
            serde_json::json!({
                "root": d.root_as_written,
                "state": if missing { "not_generated" } else { "ready" },
            })
        };
        let mut value = serde_json::json!({
            "state": if stale { "stale" } else { "up_to_date" },
        });
        // The unnamed dataset keeps its `dataset` object; named ones are under `datasets`, by name.
        if let Some(d) = pipeline.dataset() {
            value["dataset"] = state(d);
        }
        let named: serde_json::Map<String, serde_json::Value> = pipeline
            .datasets
            .values()
            .filter_map(|d| Some((d.name.clone()?, state(d))))
            .collect();
        if !named.is_empty() {
            value["datasets"] = named.into();
        }
        value["stages"] = serde_json::Value::Array(rows);
        println!("{}", serde_json::to_string_pretty(&value)?);
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
                State::Remote => (
                    "stale",
                    format!(
                        "{} (result in the remote cache: run pulls it)",
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
    Ok(if stale {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The error object `status --json` prints instead of rows (its shape is documented in `status --help`).
fn error_json(err: &anyhow::Error) -> serde_json::Value {
    let config = err.downcast_ref::<ConfigErrors>();
    let kind = if config.is_some() {
        "config"
    } else if err.downcast_ref::<stages::synth::SynthError>().is_some()
        || matches!(
            err.downcast_ref::<engine::EngineError>(),
            Some(engine::EngineError::RawInput(_))
        )
    {
        "dataset"
    } else {
        "other"
    };
    let errors: Vec<serde_json::Value> = config
        .map(|c| c.0.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let (line, column) = if e.has_position() {
                (Some(e.line), Some(e.column))
            } else {
                (None, None)
            };
            serde_json::json!({
                "file": e.file.display().to_string(),
                "line": line,
                "column": column,
                "message": e.message,
            })
        })
        .collect();
    serde_json::json!({
        "error": {
            "kind": kind,
            "message": format!("{err:#}"),
            "errors": errors,
        }
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let registry = stages::registry();
    if let Command::Kinds = cli.command {
        for kind in &registry {
            let needs: Vec<String> = kind
                .needs()
                .iter()
                .map(|n| match (n.many, n.optional) {
                    (true, true) => format!("any {}", n.artifact),
                    (true, false) => format!("many {}", n.artifact),
                    _ => n.artifact.to_string(),
                })
                .collect();
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
    if let Command::Status {
        json,
        offline,
        stages,
    } = &cli.command
    {
        let json = *json;
        return match status(&cli.config, &registry, json, *offline, stages) {
            Err(err) if json => {
                // Scripts read stdout: it stays JSON even when nothing could be planned.
                println!("{:#}", error_json(&err));
                eprintln!("error: {err:#}");
                Ok(ExitCode::from(2))
            }
            other => other,
        };
    }
    let pipeline = load(&cli.config)?;
    let dag = build(&pipeline, &registry)?;
    synth_params(&pipeline)?;
    let project = Project::open(&cli.config)?;
    match cli.command {
        Command::Kinds | Command::Status { .. } => unreachable!("handled above"),
        Command::Synth => {
            let synthetic = synth_params(&pipeline)?;
            if synthetic.is_empty() {
                bail!(
                    "{}: dataset.synthetic is not set, so there is no corpus to generate",
                    cli.config.display()
                );
            }
            prepare_dataset(&pipeline)?;
            for (dataset, _) in synthetic {
                println!("{}: {} is ready", dataset.label(), dataset.root.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dag { format } => {
            print!("{}", dag.render(format));
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            until,
            force,
            jobs,
            offline,
            executor,
        } => {
            let project = project.with_remote(remote(&pipeline, offline)?);
            let executor = executor.or(pipeline.exec.executor).unwrap_or_default();
            prepare_dataset(&pipeline)?;
            let cancel = Arc::new(AtomicBool::new(false));
            {
                let cancel = cancel.clone();
                // First Ctrl-C: stop starting stages, let running ones reach a safe point. Second: leave now
                // (every write is atomic, so even that leaves a consistent store).
                ctrlc::set_handler(move || {
                    if cancel.swap(true, Ordering::SeqCst) {
                        std::process::exit(130);
                    }
                    eprintln!(
                        "run: stopping at the next safe point (Ctrl-C again to stop at once)"
                    );
                })
                .context("installing the Ctrl-C handler")?;
            }
            let on_terminal = std::io::stderr().is_terminal();
            let on_progress: genrelab::stage::ProgressSink =
                Arc::new(move |stage: &str, event: &genrelab::stage::ProgressEvent| {
                    // One line per event either way: a terminal shows them above the progress bars.
                    if on_terminal {
                        eprint!("\r\x1b[2K{stage}: {event}\n");
                    } else {
                        eprintln!("{stage}: {event}");
                    }
                });
            let on_job: engine::JobSink = Arc::new(|stage: &str, line: &str| {
                println!("slurm: {stage}: {line}");
            });
            let options = RunOptions {
                until,
                force,
                jobs: jobs_or_cpus(jobs)?,
                cancel: cancel.clone(),
                on_progress: Some(on_progress),
                executor,
                on_job: Some(on_job),
                detached: false,
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
            let cancelled = count(|o| matches!(o, engine::Outcome::Cancelled));
            println!(
                "{} stages: {ran} ran, {cached} cached, {failed} failed, {skipped} skipped{}",
                results.len(),
                if cancelled > 0 {
                    format!(", {cancelled} cancelled")
                } else {
                    String::new()
                }
            );
            if cancelled > 0 || cancel.load(Ordering::SeqCst) {
                println!("run cancelled: the store and pipeline.lock are consistent; `genrelab run` resumes");
                return Ok(ExitCode::from(130));
            }
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
        Command::Push | Command::Pull => {
            let push = matches!(cli.command, Command::Push);
            let Some(remote) = remote(&pipeline, false)? else {
                bail!(
                    "no remote cache is configured: set `remote: s3://BUCKET/PREFIX` in {} or GENRELAB_REMOTE",
                    cli.config.display()
                );
            };
            let lock = genrelab::lock::LockFile::load(&project.lock_path)?;
            let entries: Vec<(String, String)> = lock
                .stages
                .iter()
                .map(|(name, entry)| (name.clone(), entry.key.clone()))
                .collect();
            let report = if push {
                genrelab::remote::push(&remote, &entries, project.blobs(), project.actions())?
            } else {
                let _guard = project.lock(false, "pull")?;
                genrelab::remote::pull(&remote, &entries, project.blobs(), project.actions())?
            };
            for (stage, problem) in &report.problems {
                println!("{stage}: {problem}");
            }
            let mb = report.traffic.bytes as f64 / 1e6;
            println!(
                "{} {}: {} {}, {} already there, {} with problems; {} blobs, {mb:.1} MB in {:.1} s ({:.1} MB/s)",
                if push { "push to" } else { "pull from" },
                remote.url(),
                plural(report.moved, "result"),
                if push { "uploaded" } else { "downloaded" },
                report.present,
                report.problems.len(),
                report.traffic.blobs,
                report.seconds,
                mb / report.seconds.max(1e-9),
            );
            Ok(if report.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Job {
            stage,
            expect_key,
            force,
            jobs,
        } => {
            let project = project.with_remote(remote(&pipeline, false)?);
            let cancel = Arc::new(AtomicBool::new(false));
            {
                // scancel sends SIGTERM: stop at the next safe point, keeping the checkpoint.
                let cancel = cancel.clone();
                ctrlc::set_handler(move || cancel.store(true, Ordering::SeqCst))
                    .context("installing the termination handler")?;
            }
            let options = RunOptions {
                jobs: jobs_or_cpus(jobs)?,
                cancel,
                on_progress: Some(Arc::new(
                    |stage: &str, event: &genrelab::stage::ProgressEvent| {
                        eprintln!("{stage}: {event}");
                    },
                )),
                ..Default::default()
            };
            let result = engine::run_job(
                &project,
                &pipeline,
                &dag,
                &stage,
                expect_key.as_deref(),
                force,
                &options,
            )?;
            println!("{}", result.line());
            for line in &result.summary {
                println!("    {line}");
            }
            Ok(match result.outcome {
                engine::Outcome::Ran { .. } | engine::Outcome::Cached { .. } => ExitCode::SUCCESS,
                engine::Outcome::Cancelled => ExitCode::from(130),
                _ => ExitCode::from(2),
            })
        }
        Command::Lineage { target, json } => {
            let Some(members) = dag.families.get(&target) else {
                let tree = inspect::lineage(&project, &target)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&tree)?);
                } else {
                    print!("{}", inspect::render_lineage(&tree));
                }
                return Ok(ExitCode::SUCCESS);
            };
            let trees = members
                .iter()
                .map(|m| inspect::lineage(&project, m))
                .collect::<Result<Vec<_>, _>>()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&trees)?);
            } else {
                let texts: Vec<String> = trees.iter().map(inspect::render_lineage).collect();
                print!("{}", texts.join("\n"));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { rerun, jobs } => {
            let (checked, mut problems) = inspect::verify(&project)?;
            let mut rerun_compared = None;
            if rerun {
                prepare_dataset(&pipeline)?;
                let report = inspect::verify_rerun(&project, &pipeline, &dag, jobs_or_cpus(jobs)?)?;
                rerun_compared = Some(report.compared);
                problems.extend(report.problems);
                for note in &report.differ_within_class {
                    println!("{note}");
                }
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
        Command::Audit { stage, json } => {
            let _shared = project.lock(false, "audit")?;
            let report = match &stage {
                Some(name) => match dag.families.get(name) {
                    Some(members) => {
                        genrelab::audit::audit_stages(&project, Some(members), Some(name))?
                    }
                    None => genrelab::audit::audit(&project, Some(name))?,
                },
                None => genrelab::audit::audit(&project, None)?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            Ok(if report.holds {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Export { stage, output, to } => {
            let _shared = project.lock(false, "export")?;
            for path in inspect::export(&project, &stage, output.as_deref(), &to)? {
                println!("{}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Efficiency { repeats, csv } => {
            let _shared = project.lock(false, "efficiency")?;
            let repeats = repeats as usize;
            let device = tournament_device(&pipeline)?;
            let rows = genrelab::efficiency::measure(&project, device, repeats, |member| {
                eprintln!("efficiency: timing {member}");
            })?;
            print!(
                "{}",
                genrelab::efficiency::render(&rows, repeats, rayon::current_num_threads())
            );
            if let Some(path) = csv {
                genrelab::store::write_atomic(&path, genrelab::efficiency::csv(&rows).as_bytes())
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("efficiency: wrote {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
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

/// The remote cache pipeline.yaml or the environment names, connected; none when `offline`.
fn remote(pipeline: &Pipeline, offline: bool) -> anyhow::Result<Option<genrelab::remote::Remote>> {
    if offline {
        return Ok(None);
    }
    let settings = genrelab::remote::RemoteSettings::resolve(pipeline.remote.as_ref(), |k| {
        std::env::var(k).ok()
    });
    Ok(match settings {
        Some(settings) => Some(genrelab::remote::Remote::connect(&settings)?),
        None => None,
    })
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

/// The device the tournament stage runs on (its `exec:` block over the global one): timing the models
/// anywhere else would not describe the pipeline's own inference.
fn tournament_device(pipeline: &Pipeline) -> anyhow::Result<genrelab::stage::Device> {
    let exec = pipeline
        .stages
        .iter()
        .find(|s| s.kind == "tournament")
        .map(|s| s.exec.clone())
        .unwrap_or_else(|| pipeline.exec.clone());
    let settings = exec.resolve(1).map_err(|errors| {
        let reasons: Vec<String> = errors
            .iter()
            .map(|(k, e)| format!("exec.{k}: {e}"))
            .collect();
        anyhow::anyhow!("{}: {}", pipeline.path.display(), reasons.join("; "))
    })?;
    Ok(settings.device)
}
