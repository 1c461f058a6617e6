//! The science: one folder per stage kind, each a pure function over typed inputs, testable without the
//! engine. `registry()` is the only place the engine learns which kinds exist.

pub mod audio;
pub mod audit;
pub mod baseline;
pub mod charts;
pub mod common;
pub mod cv;
pub mod features;
pub mod ingest;
pub mod report;
pub mod scaler;
pub mod slice;
pub mod split;
pub mod synth;
pub mod tournament;
#[cfg(feature = "toy-stages")]
pub mod toy;
pub mod train;
pub mod transfer;

use genrelab_contract::StageKind;

/// Every stage kind this build knows, by kind name.
pub fn registry() -> Vec<Box<dyn StageKind>> {
    #[allow(unused_mut)]
    let mut kinds: Vec<Box<dyn StageKind>> = vec![
        ingest::kind(),
        split::kind(),
        slice::kind(),
        features::kind(),
        scaler::kind(),
        baseline::kind(),
        train::kind(),
        tournament::kind(),
        cv::kind(),
        cv::summary::kind(),
        transfer::kind(),
        audit::kind(),
        report::kind(),
    ];
    #[cfg(feature = "toy-stages")]
    kinds.extend(toy::kinds());
    kinds
}
