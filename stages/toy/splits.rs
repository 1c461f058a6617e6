//! Toy kinds for splits by declaration and for stages reading several datasets: a source of per-split
//! artifacts, a reader that declares train and val only (and can be told to reach for test, or to claim a
//! split it was never handed), and a scanner of every dataset it lists.

use serde::{Deserialize, Serialize};

use genrelab_contract::{
    Determinism, Lineage, Need, Record, Split, StageContext, StageError, StageKind, StageParams,
    StageReport, TypedStage, DATASET,
};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitSourceParams {}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitReaderParams {
    /// An input artifact to open besides the declared ones (`rows@test`): what a leaky stage would do.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub peek: String,
    /// A split to record a score on, whether or not it was handed over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim: Option<Split>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatasetsParams {}

impl StageParams for SplitSourceParams {}
impl StageParams for SplitReaderParams {}
impl StageParams for DatasetsParams {}

fn split_source(_: &SplitSourceParams, ctx: &StageContext) -> Result<StageReport, StageError> {
    for split in Split::ALL {
        let path = ctx.output_path(&split.artifact("rows"))?;
        std::fs::write(&path, format!("{split} rows\n")).map_err(|e| StageError::io(&path, e))?;
    }
    Ok(StageReport::default())
}

fn split_reader(params: &SplitReaderParams, ctx: &StageContext) -> Result<StageReport, StageError> {
    let mut seen = String::new();
    for split in [Split::Train, Split::Val] {
        let path = ctx.split_input("rows", split)?;
        seen.push_str(&std::fs::read_to_string(path).map_err(|e| StageError::io(path, e))?);
    }
    if !params.peek.is_empty() {
        let path = ctx.input(&params.peek)?;
        seen.push_str(&std::fs::read_to_string(path).map_err(|e| StageError::io(path, e))?);
    }
    let out = ctx.output_path("seen")?;
    std::fs::write(&out, &seen).map_err(|e| StageError::io(&out, e))?;
    let mut lineage = Lineage::default().with(Record::Selected {
        what: "nothing".into(),
        by: Split::Val,
        chosen: "none".into(),
    });
    if let Some(split) = params.claim {
        lineage = lineage.with(Record::Scored {
            what: "accuracy".into(),
            split,
            segments: 1,
        });
    }
    Ok(StageReport {
        lineage,
        summary: Vec::new(),
    })
}

fn datasets(_: &DatasetsParams, ctx: &StageContext) -> Result<StageReport, StageError> {
    let mut lines = Vec::new();
    for name in ctx.dataset_names() {
        let view = ctx.dataset_named(name)?;
        lines.push(format!("{name} {} {}", view.files.len(), view.digest));
    }
    let out = ctx.output_path("data")?;
    std::fs::write(&out, lines.join("\n")).map_err(|e| StageError::io(&out, e))?;
    Ok(StageReport::default())
}

const READER_NEEDS: &[Need] = &[Need::one("rows@train"), Need::one("rows@val")];
const DATASETS_NEEDS: &[Need] = &[Need::many(DATASET)];

pub fn kinds() -> Vec<Box<dyn StageKind>> {
    vec![
        Box::new(TypedStage::<SplitSourceParams> {
            kind: "toy_split_source",
            about: "writes `rows@train`, `rows@val` and `rows@test` (engine tests)",
            needs: &[],
            outputs: &["rows@train", "rows@val", "rows@test"],
            code_dirs: &["toy"],
            determinism: Determinism::Exact,
            run: split_source,
        }),
        Box::new(TypedStage::<SplitReaderParams> {
            kind: "toy_split_reader",
            about: "reads `rows@train` and `rows@val` only; `peek` reaches for another, `claim` records a score on a split (engine tests)",
            needs: READER_NEEDS,
            outputs: &["seen"],
            code_dirs: &["toy"],
            determinism: Determinism::Exact,
            run: split_reader,
        }),
        Box::new(TypedStage::<DatasetsParams> {
            kind: "toy_datasets",
            about: "lists every dataset it reads, by name, with its file count and digest (engine tests)",
            needs: DATASETS_NEEDS,
            outputs: &["data"],
            code_dirs: &["toy"],
            determinism: Determinism::Exact,
            run: datasets,
        }),
    ]
}
