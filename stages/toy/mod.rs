//! Toy stage kinds that exercise the engine without audio: a source, a dataset scanner and a mapper that
//! can be slowed down or made to fail; and leaky kinds that the audit must catch. Built only with the
//! `toy-stages` feature (the tests and `make bench`).

mod leaks;
mod splits;

use std::io::Write;
use std::time::Duration;

use rand::RngCore;
use serde::{Deserialize, Serialize};

use genrelab_contract::{
    Determinism, Lineage, Need, StageContext, StageError, StageKind, StageParams, StageReport,
    TypedStage,
};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceParams {
    /// Text repeated into the output.
    pub value: String,
    /// Output size in bytes.
    pub size: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MapParams {
    /// Mixed into the output, so that changing it changes the result.
    pub salt: String,
    /// Pause after writing half the output (lets tests kill a run mid-write).
    pub sleep_ms: u64,
    /// Fail instead of producing output.
    pub fail: bool,
    /// A file to create once half the output is written, just before the pause. Relative paths are
    /// relative to the working directory (the project folder when run by `genrelab`). Lets a test wait for
    /// this very stage to be mid-write instead of guessing from scratch files. Left out of the canonical
    /// params when empty, so pipelines without it keep their keys' params unchanged.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub signal: String,
    /// Panic instead of producing output (a stage's bug must fail that stage, not hang the run).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub panic: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScanParams {}

impl StageParams for SourceParams {}
impl StageParams for MapParams {}
impl StageParams for ScanParams {}
impl StageParams for TreeParams {}

fn source(params: &SourceParams, ctx: &StageContext) -> Result<StageReport, StageError> {
    let path = ctx.output_path("data")?;
    let bytes: Vec<u8> = params.value.bytes().cycle().take(params.size).collect();
    std::fs::write(&path, bytes).map_err(|e| StageError::io(&path, e))?;
    Ok(StageReport {
        lineage: Lineage::details(serde_json::json!({"size": params.size})),
        summary: vec![format!("wrote {} bytes", params.size)],
    })
}

fn scan(_params: &ScanParams, ctx: &StageContext) -> Result<StageReport, StageError> {
    let dataset = ctx.dataset()?;
    let listing: Vec<String> = dataset
        .files
        .iter()
        .map(|f| format!("{} {}", f.rel_path, f.digest))
        .collect();
    let path = ctx.output_path("data")?;
    std::fs::write(&path, listing.join("\n")).map_err(|e| StageError::io(&path, e))?;
    Ok(StageReport {
        lineage: Lineage::details(serde_json::json!({"files": dataset.files.len()})),
        summary: vec![format!("listed {} files", dataset.files.len())],
    })
}

fn map(params: &MapParams, ctx: &StageContext) -> Result<StageReport, StageError> {
    if params.panic {
        panic!("panicking as configured (panic: true)");
    }
    if params.fail {
        return Err(StageError::Invalid(
            "failing as configured (fail: true)".into(),
        ));
    }
    let mut hasher = blake3::Hasher::new();
    for input in ctx.inputs("data") {
        let bytes = std::fs::read(&input.path).map_err(|e| StageError::io(&input.path, e))?;
        hasher.update(&bytes);
    }
    hasher.update(params.salt.as_bytes());
    let mut noise = [0u8; 16];
    ctx.rng("noise").fill_bytes(&mut noise);
    let digest = hasher.finalize();
    let path = ctx.output_path("data")?;
    let mut file = std::fs::File::create(&path).map_err(|e| StageError::io(&path, e))?;
    let body = format!(
        "{}\n{}\n",
        digest.to_hex(),
        noise.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let (first, second) = body.split_at(body.len() / 2);
    file.write_all(first.as_bytes())
        .and_then(|()| file.flush())
        .map_err(|e| StageError::io(&path, e))?;
    if !params.signal.is_empty() {
        std::fs::File::create(&params.signal).map_err(|e| StageError::io(&params.signal, e))?;
    }
    std::thread::sleep(Duration::from_millis(params.sleep_ms));
    file.write_all(second.as_bytes())
        .map_err(|e| StageError::io(&path, e))?;
    Ok(StageReport {
        lineage: Lineage::details(
            serde_json::json!({"inputs": ctx.inputs("data").iter().map(|i| i.stage.clone()).collect::<Vec<_>>()}),
        ),
        summary: Vec::new(),
    })
}

/// Writes its input's digest plus bytes that differ on every run (the clock): a stand-in for a GPU stage whose
/// last bits depend on reduction order, declared `tolerance` so that the engine compares it by its class.
fn jitter(_params: &ScanParams, ctx: &StageContext) -> Result<StageReport, StageError> {
    let path = ctx.output_path("data")?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::fs::write(&path, format!("{nanos} {}\n", ctx.exec().threads))
        .map_err(|e| StageError::io(&path, e))?;
    Ok(StageReport::default())
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TreeParams {
    /// Relative path -> content of each file of the folder output.
    pub files: std::collections::BTreeMap<String, String>,
}

/// A folder output: the files named in its params, folders created as needed.
fn tree(params: &TreeParams, ctx: &StageContext) -> Result<StageReport, StageError> {
    let root = ctx.output_path("tree")?;
    for (rel, content) in &params.files {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StageError::io(parent, e))?;
        }
        std::fs::write(&path, content).map_err(|e| StageError::io(&path, e))?;
    }
    Ok(StageReport::default())
}

/// Lists a folder input (relative paths and contents, sorted) into a file.
fn tree_list(_params: &ScanParams, ctx: &StageContext) -> Result<StageReport, StageError> {
    fn walk(
        base: &std::path::Path,
        dir: &std::path::Path,
        out: &mut Vec<String>,
    ) -> Result<(), StageError> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| StageError::io(dir, e))?
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(base, &path, out)?;
            } else {
                let text = std::fs::read_to_string(&path).map_err(|e| StageError::io(&path, e))?;
                let rel = path
                    .strip_prefix(base)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                out.push(format!("{rel}={text}"));
            }
        }
        Ok(())
    }
    let mut lines = Vec::new();
    walk(ctx.input("tree")?, ctx.input("tree")?, &mut lines)?;
    let path = ctx.output_path("data")?;
    std::fs::write(&path, lines.join("\n")).map_err(|e| StageError::io(&path, e))?;
    Ok(StageReport::default())
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CountParams {
    pub steps: u64,
    pub sleep_ms: u64,
}

impl StageParams for CountParams {}

/// A long stage in miniature: `steps` steps folding a running value, each saved to the checkpoint folder
/// (temp file + rename) and reported as a progress event; it stops at a safe point when cancelled and
/// resumes from its checkpoint. With `GENRELAB_TOY_SIGNAL_DIR` set (outside the key), it creates
/// `<dir>/<stage>.step-<n>` after saving step `n`, so a test can kill it at a known point.
fn count(params: &CountParams, ctx: &StageContext) -> Result<StageReport, StageError> {
    let state = ctx.checkpoint_dir()?.join("state");
    let (mut step, mut value) = match std::fs::read_to_string(&state) {
        Ok(text) => {
            let mut parts = text.split_whitespace().map(str::parse::<u64>);
            match (parts.next(), parts.next()) {
                (Some(Ok(step)), Some(Ok(value))) => (step, value),
                _ => {
                    return Err(StageError::bad_file(
                        &state,
                        "not a checkpoint of this stage",
                    ))
                }
            }
        }
        Err(_) => (0, 17),
    };
    if step > 0 {
        // Told as progress, not in the summary: the manifest must not depend on where a run was killed.
        ctx.report_progress(&genrelab_contract::ProgressEvent {
            unit: "resumed at step",
            done: step,
            total: Some(params.steps),
            values: Default::default(),
        });
    }
    let signal_dir = std::env::var_os("GENRELAB_TOY_SIGNAL_DIR");
    while step < params.steps {
        ctx.stop_if_cancelled()?;
        std::thread::sleep(Duration::from_millis(params.sleep_ms));
        value = value.wrapping_mul(6364136223846793005).wrapping_add(step);
        step += 1;
        let tmp = state.with_extension("tmp");
        std::fs::write(&tmp, format!("{step} {value}")).map_err(|e| StageError::io(&tmp, e))?;
        std::fs::rename(&tmp, &state).map_err(|e| StageError::io(&state, e))?;
        ctx.report_progress(&genrelab_contract::ProgressEvent {
            unit: "step",
            done: step,
            total: Some(params.steps),
            values: [("loss", 1.0 / (step as f64 + 1.0))].into(),
        });
        if let Some(dir) = &signal_dir {
            let mark = std::path::Path::new(dir).join(format!("{}.step-{step}", ctx.stage_name()));
            std::fs::write(&mark, b"").map_err(|e| StageError::io(&mark, e))?;
        }
    }
    let path = ctx.output_path("data")?;
    std::fs::write(&path, format!("{value}\n")).map_err(|e| StageError::io(&path, e))?;
    Ok(StageReport {
        lineage: Lineage::default(),
        summary: vec![format!("{} steps", params.steps)],
    })
}

const SCAN_NEEDS: &[Need] = &[Need::one("dataset")];
const TREE_NEEDS: &[Need] = &[Need::one("tree")];
const MAP_NEEDS: &[Need] = &[Need::many("data")];

pub fn kinds() -> Vec<Box<dyn StageKind>> {
    let mut kinds: Vec<Box<dyn StageKind>> = vec![
        Box::new(TypedStage::<SourceParams> {
            kind: "toy_source",
            about: "writes `size` bytes of `value` (engine tests)",
            needs: &[],
            outputs: &["data"],
            code_dirs: &["toy"],
            determinism: Determinism::Exact,
            run: source,
        }),
        Box::new(TypedStage::<ScanParams> {
            kind: "toy_scan",
            about: "lists the dataset's files and digests (engine tests, benchmarks)",
            needs: SCAN_NEEDS,
            outputs: &["data"],
            code_dirs: &["toy"],
            determinism: Determinism::Exact,
            run: scan,
        }),
        Box::new(TypedStage::<MapParams> {
            kind: "toy_map",
            about: "hashes its inputs with a salt; can sleep mid-write (after creating `signal`) or fail (engine tests)",
            needs: MAP_NEEDS,
            outputs: &["data"],
            code_dirs: &["toy"],
            determinism: Determinism::Exact,
            run: map,
        }),
        Box::new(TypedStage::<CountParams> {
            kind: "toy_count",
            about: "a long stage in miniature: checkpoints, progress events, cancellation (engine tests)",
            needs: &[],
            outputs: &["data"],
            code_dirs: &["toy"],
            determinism: Determinism::Exact,
            run: count,
        }),
        Box::new(TypedStage::<TreeParams> {
            kind: "toy_tree",
            about: "writes the files named in its params as a folder output (engine tests)",
            needs: &[],
            outputs: &["tree/"],
            code_dirs: &["toy"],
            determinism: Determinism::Exact,
            run: tree,
        }),
        Box::new(TypedStage::<ScanParams> {
            kind: "toy_tree_list",
            about: "lists a folder input's files and contents (engine tests)",
            needs: TREE_NEEDS,
            outputs: &["data"],
            code_dirs: &["toy"],
            determinism: Determinism::Exact,
            run: tree_list,
        }),
        Box::new(TypedStage::<ScanParams> {
            kind: "toy_jitter",
            about: "writes the clock: differs on every run, declared `tolerance` (engine tests)",
            needs: &[],
            outputs: &["data"],
            code_dirs: &["toy"],
            determinism: Determinism::Tolerance,
            run: jitter,
        }),
    ];
    kinds.extend(splits::kinds());
    kinds.extend(leaks::kinds());
    kinds
}
