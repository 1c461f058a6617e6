//! Stage `audit`: the leakage invariants over the ancestry of its inputs, as one canonical JSON artifact
//! `audit` (the same report `genrelab audit <this stage> --json` prints), so the report can show the
//! audit's verdict beside the numbers it qualifies, by digest like every other number.
//!
//! The stage reads no input artifact's content as data: the engine hands it its [`Ancestry`] (every
//! upstream run's manifest, lineage records and the splits it was handed), and its key covers those
//! manifests, so a lineage change upstream re-runs it even when every output byte stays the same. Its
//! inputs (the stages whose results the report shows) answer for their own leaks; a replica stage further
//! up is listed as leaky on purpose, not counted.
//!
//! A failing invariant does not fail the stage: the artifact says which invariants fail and names the
//! culprits, and the report shows it.
//!
//! [`Ancestry`]: genrelab_contract::Ancestry

pub mod core;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use genrelab_contract::{
    write_canonical_json, Determinism, Lineage, Need, ParamError, ParamProblem, StageContext,
    StageError, StageKind, StageParams, StageReport, TypedStage,
};

pub use self::core::{audit, AuditReport, Check, TableSet, Tables, AUDIT_KIND};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {}

impl StageParams for Params {}

/// The results whose ancestry is audited; any input (a toy pipeline's split) is audited the same way, these
/// only say which artifacts the engine materialises for it.
const NEEDS: &[Need] = &[
    Need::any("tournament"),
    Need::any("cv"),
    Need::any("transfer"),
    Need::any("baseline"),
];

fn run(_: &Params, ctx: &StageContext) -> Result<StageReport, StageError> {
    let ancestry = ctx.ancestry()?;
    let tables = TableSet::load(ancestry)?;
    let explicit: BTreeSet<String> = ancestry.roots().iter().map(|(_, m)| m.clone()).collect();
    let report = audit(ancestry, &tables, &explicit, Some(ctx.stage_name()));
    write_canonical_json(&ctx.output_path("audit")?, &report)?;
    let mut summary = vec![format!("leakage audit: {}", report.verdict)];
    summary.extend(report.failing().map(|c| c.line()));
    Ok(StageReport {
        lineage: Lineage::details(serde_json::json!({
            "audited_stages": report.stages.len(),
            "holds": report.holds,
        })),
        summary,
    })
}

/// [`TypedStage`] with the engine asked for the stage's ancestry.
struct AuditKind(TypedStage<Params>);

impl StageKind for AuditKind {
    fn kind(&self) -> &'static str {
        self.0.kind()
    }
    fn about(&self) -> &'static str {
        self.0.about()
    }
    fn needs(&self) -> &'static [Need] {
        self.0.needs()
    }
    fn outputs(&self) -> &'static [&'static str] {
        self.0.outputs()
    }
    fn code_dirs(&self) -> &'static [&'static str] {
        self.0.code_dirs()
    }
    fn determinism(&self) -> Determinism {
        self.0.determinism()
    }
    fn wants_ancestry(&self) -> bool {
        true
    }
    fn canonical_params(&self, raw: &serde_yaml::Value) -> Result<serde_json::Value, ParamError> {
        self.0.canonical_params(raw)
    }
    fn validate_params(&self, params: &serde_json::Value) -> Vec<ParamProblem> {
        self.0.validate_params(params)
    }
    fn run(
        &self,
        params: &serde_json::Value,
        ctx: &StageContext,
    ) -> Result<StageReport, StageError> {
        self.0.run(params, ctx)
    }
}

pub fn kind() -> Box<dyn StageKind> {
    Box::new(AuditKind(TypedStage::<Params> {
        kind: AUDIT_KIND,
        about: "the leakage invariants over its inputs' ancestry, proven from manifests and lineage records, as one JSON artifact",
        needs: NEEDS,
        outputs: &["audit"],
        // The replica rules read the cv and tournament params; the tables are common's.
        code_dirs: &["audit", "cv", "tournament", "common"],
        determinism: Determinism::Exact,
        run,
    }))
}
