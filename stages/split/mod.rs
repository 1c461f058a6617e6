//! Stage `split` (not yet implemented).

use crate::stage::{StageContext, StageError, StageKind, StageReport, TypedStage};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {}

fn run(_params: &Params, _ctx: &StageContext) -> Result<StageReport, StageError> {
    Err(StageError::Invalid(
        "stage `split` is not implemented yet".into(),
    ))
}

pub fn kind() -> Box<dyn StageKind> {
    Box::new(TypedStage::<Params> {
        kind: "split",
        about: "not implemented yet",
        needs: &[],
        outputs: &["split"],
        code_dirs: &["split"],
        run,
    })
}
