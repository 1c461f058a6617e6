//! What the user typed, as clap structs: flags only, validated without I/O. `main.rs` resolves them into a
//! loaded pipeline and an opened store, then dispatches.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::dag::DagFormat;

#[derive(Debug, Parser)]
#[command(
    name = "genrelab",
    version,
    about = "Reproduce a leak-free music-genre-classification study as a DAG of content-hashed stages",
    long_about = "genrelab runs the stages declared in pipeline.yaml (ingest -> split -> slice -> features -> \
scaler -> ...), caching every output in artifacts/ by content. A stage re-runs only when its code, its params \
or the content of its inputs change; pipeline.lock records what each stage produced so that anyone can verify \
the results bit for bit.\n\nExit status: 0 success; 1 a check found a problem (stale stages for `status`, \
bad artifacts for `verify`, a failed invariant for `audit`); 2 an error (bad configuration, a failed stage, \
unreadable files); 130 a run cancelled with Ctrl-C."
)]
pub struct Cli {
    /// The pipeline file; its folder holds pipeline.lock and artifacts/.
    #[arg(
        long,
        short = 'c',
        global = true,
        default_value = "pipeline.yaml",
        value_name = "FILE"
    )]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every stale stage, in parallel where the DAG allows; print for each stage `ran` or `cached` and why.
    ///
    /// A stage runs when its key (code, params, input content) is not in the store. A failing stage stops its
    /// descendants only; the others finish. When pipeline.yaml sets `dataset.synthetic`, the embedded
    /// synthetic corpus is generated into `dataset.root` first if it is not there yet.
    ///
    /// Ctrl-C stops starting stages and lets running ones stop at their next safe point (exit 130, the store
    /// and pipeline.lock consistent); a second Ctrl-C stops at once. Long stages keep a checkpoint per key and
    /// resume from it on the next run. Progress events (step, loss, ...) are printed to stderr. Run settings
    /// (`exec:` in pipeline.yaml: threads, device, memory) never change a key.
    Run {
        /// Run only this stage and what it depends on. A family name (an entry with `foreach:`) means all
        /// its members; one member is named in full, e.g. 'train[fold=0,salt=x]' (quoted for the shell).
        #[arg(long, value_name = "STAGE")]
        until: Option<String>,
        /// Re-run this stage even if cached (repeatable; a family name forces all its members); its outputs
        /// must come out bit-identical to an intact stored result (for a kind of class `exact`), or the run
        /// reports the stage as nondeterministic. A stored result that fails its digest is replaced.
        #[arg(long, value_name = "STAGE")]
        force: Vec<String>,
        /// Worker threads shared by all stages (independent stages run side by side). Results never depend
        /// on it. Default: the number of CPUs.
        #[arg(short = 'j', long, value_name = "N")]
        jobs: Option<usize>,
        /// Ignore the remote cache (`remote:` in pipeline.yaml, GENRELAB_REMOTE): neither look stages up in
        /// it nor upload to it.
        #[arg(long)]
        offline: bool,
        /// Where stale stages run: here, or one Slurm job per stage with `afterok` dependencies (default:
        /// `exec.executor` in pipeline.yaml, else local). The driver needs the Slurm clients (`sbatch`,
        /// `squeue`, `scancel`, `scontrol`) and a folder the nodes share; per-stage `exec:` sets the jobs'
        /// `threads` (cpus), `memory`, `time`, `gres` and `partition`.
        #[arg(long, value_enum, value_name = "EXECUTOR")]
        executor: Option<crate::exec::Executor>,
    },
    /// Upload the results pipeline.lock records to the remote cache (blobs first, each record last).
    ///
    /// Results already there are left alone. Exit status: 0 done; 1 some stage had no intact local result
    /// to upload (named); 2 an error (no remote configured, a read-only remote, the remote unreachable).
    Push,
    /// Download from the remote cache the results pipeline.lock records that the local store lacks,
    /// verifying every blob's digest before it is stored.
    ///
    /// Exit status: 0 done; 1 some result was missing or unusable remotely (named); 2 an error.
    Pull,
    /// Run one stage as a cluster job (used by `run --executor slurm`; not for direct use).
    #[command(hide = true)]
    Job {
        stage: String,
        /// Refuse to run unless the stage plans to this key.
        #[arg(long, value_name = "KEY")]
        expect_key: Option<String>,
        #[arg(long)]
        force: bool,
        #[arg(short = 'j', long, value_name = "N")]
        jobs: Option<usize>,
    },
    /// Show which stages are up to date or stale, and why, without running anything. Exits 1 if any is stale.
    ///
    /// Exit status: 0 every stage is up to date; 1 some stage is stale; 2 an error (nothing could be planned).
    ///
    /// With --json, stdout is always one JSON object. When the stages can be planned:
    ///
    ///   {"state": "up_to_date" | "stale",
    ///    "dataset": {"root": "<dataset.root as written>", "state": "ready" | "not_generated"},
    ///    "datasets": {"<name>": {"root": ..., "state": ...}, ...},   (only with `datasets:`)
    ///    "stages": [{"stage": "<name>", "kind": "<kind>",
    ///                "state": "up_to_date" | "cached" | "remote" | "stale",
    ///                "key": "<hex digest>" | null,
    ///                "reasons": ["<why it is stale>", ...],
    ///                "summary": ["<line>", ...]}, ...]}
    ///
    /// "cached" means stale against pipeline.lock, with the result already in the store; "remote", stale
    /// here with a result in the remote cache (`remote:` in pipeline.yaml or GENRELAB_REMOTE), which
    /// `run` pulls instead of computing. While the synthetic
    /// corpus is not generated (or one of the named ones), its "state" is "not_generated" and every stage is
    /// stale with that reason
    /// and a null key. When nothing can be planned (exit 2):
    ///
    ///   {"error": {"kind": "config" | "dataset" | "other",
    ///              "message": "<the whole error, as printed on stderr>",
    ///              "errors": [{"file": "<path>", "line": <n> | null, "column": <n> | null,
    ///                          "message": "<text>"}, ...]}}
    ///
    /// "errors" lists each located pipeline.yaml problem for kind "config" (line and column are null for a
    /// problem with the whole file, such as an unreadable one) and is empty otherwise.
    #[command(verbatim_doc_comment)]
    Status {
        /// Machine-readable output: one JSON object on stdout, even on errors (see above).
        #[arg(long)]
        json: bool,
        /// Do not ask the remote cache which stale stages it holds.
        #[arg(long)]
        offline: bool,
        /// Show only these stages (a family name shows all its members); the exit status is about them.
        #[arg(value_name = "STAGE")]
        stages: Vec<String>,
    },
    /// Print the stage graph.
    Dag {
        #[arg(long, value_enum, default_value_t = DagFormat::Text)]
        format: DagFormat,
    },
    /// Show the upstream tree of a stage's artifacts (or of an artifact, by digest): params, digests, lineage.
    Lineage {
        /// A stage name, or an artifact or manifest digest (a unique prefix of 6+ hex characters will do).
        /// A family name shows the tree of each member in turn (an array with --json).
        target: String,
        /// Machine-readable output, with the full record-level lineage.
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every artifact pipeline.lock names; exit 1 and name each missing or corrupt one.
    Verify {
        /// Also re-run every stage from scratch in a throw-away store and check each output comes out
        /// bit-identical to what pipeline.lock records (catches nondeterminism, not just corruption).
        #[arg(long)]
        rerun: bool,
        /// Worker threads for `--rerun` (default: the number of CPUs).
        #[arg(short = 'j', long, value_name = "N")]
        jobs: Option<usize>,
    },
    /// Prove the leakage invariants from the store's records; exit 1 and name the culprits if any fails.
    ///
    /// Nothing is re-run. audit reads the manifests pipeline.lock names (and the manifests
    /// they name, however stale the lock), each stage's typed lineage records, the splits the
    /// engine recorded handing each stage (`split_reads`: written by the engine, so a stage
    /// cannot hide what it was given), and the data path's tables: `tracks` (ingest, with each
    /// track's decoded-audio digest), `split` and `segments`. Each invariant prints as
    /// `holds  <invariant>` or `FAILS  <invariant>: <stage>: <tracks, segments, artifacts>`:
    ///
    ///   1. no track, and no audio (by digest, whatever its name), is in two of train, val and
    ///      test (every corpus's split table, checked against its track table);
    ///   2. every segment is in its track's split; every scaler's fit set is exactly its
    ///      training segments (the digest of their ids); each CV fold's scaler is fitted on the
    ///      fold's training rows;
    ///   3. every model's weights are fitted on training segments only; every choice (early
    ///      stopping, learning-rate schedule, champion) is made on val; test is handed only to
    ///      the tournament (and a transfer stage, for its own corpus), each test artifact to one
    ///      stage, which scores it once, after its choice;
    ///   4. CV folds are grouped by track and duplicate audio (no held-out track trains its
    ///      fold), and each fold is scored on tracks that did not drive its early stopping;
    ///   5. a transfer corpus shares no audio with the corpus its model was trained on.
    ///
    /// Stages that reproduce the study's leaks on purpose (a cv `study_replica` fold, a
    /// tournament with `selection: test`) fail when audited by name; in the whole lock or in
    /// another stage's ancestry their failures are listed beside the invariant, not counted.
    ///
    /// Exit status: 0 every invariant holds; 1 some invariant fails; 2 an error (no lock, an
    /// unknown stage, a manifest or table missing from the store or damaged).
    #[command(verbatim_doc_comment)]
    Audit {
        /// Audit only this stage's ancestry (a family name: all its members'); default: every stage in
        /// pipeline.lock.
        #[arg(value_name = "STAGE")]
        stage: Option<String>,
        /// Machine-readable output: the same checks, each with every culprit, as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Remove store objects that no pipeline.lock entry reaches (never one it references).
    Gc {
        /// List what would be removed, with sizes, and remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Copy a stage's output out of the store into a folder (e.g. the report, to open in a browser), from
    /// what pipeline.lock records; prints each file's path. Files already there with other content are
    /// replaced; nothing else in the folder is touched.
    Export {
        /// The stage whose output to copy.
        stage: String,
        /// Which output, when the stage has several (default: its only one).
        #[arg(long)]
        output: Option<String>,
        /// Destination folder (created if missing).
        #[arg(long, value_name = "DIR")]
        to: std::path::PathBuf,
    },
    /// Time inference of every model the tournament ranked (ms per segment at batch 1 and 32, median of
    /// repeated passes) and print the efficiency table: parameters, multiply-adds, latency, test accuracy.
    /// Latency is measured on this machine now and never cached; the rest is read from the locked artifacts.
    Efficiency {
        /// Timed passes per batch size (after one untimed warm-up pass).
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..=10000))]
        repeats: u32,
        /// Also write the table, with min and max of every batch size, as CSV to FILE.
        #[arg(long, value_name = "FILE")]
        csv: Option<std::path::PathBuf>,
    },
    /// Generate the embedded synthetic GTZAN-shaped corpus into `dataset.root` (as `run` does on demand).
    Synth,
    /// List the stage kinds this build knows, with what each needs and produces.
    Kinds,
}
