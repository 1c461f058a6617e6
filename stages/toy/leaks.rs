//! Leaky stage kinds that the real stages refuse to be: a split that puts a track (or one audio under two
//! names) in two parts, a scaler fitted on every segment, and a trainer that early-stops on test. They exist
//! so that `genrelab audit` can be shown to catch each leak, including when the stage's own lineage lies
//! about it: what the engine handed over is recorded by the engine, not by these stages.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use genrelab_contract::{
    ids_digest, read_json, write_canonical_json, Determinism, Lineage, Need, Record, Split,
    StageContext, StageError, StageKind, StageParams, StageReport, TypedStage,
};

use crate::common::tables::{SegmentTable, SplitTable, TrackTable, SPLITS};

/// Which leak `toy_leaky_split` plants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitLeak {
    /// The first train track is listed in test as well.
    #[default]
    TrackInTwoSplits,
    /// The first group of tracks with identical audio is spread over train and test.
    DuplicatesApart,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeakySplitParams {
    pub leak: SplitLeak,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeakyFitParams {
    /// Record the honest split of what was read (`false`) or claim train alone (`true`).
    pub lie: bool,
}

impl StageParams for LeakySplitParams {}
impl StageParams for LeakyFitParams {}

/// Tracks in id order, dealt 3:1:1 over train, val and test, then the leak planted.
fn leaky_split(params: &LeakySplitParams, ctx: &StageContext) -> Result<StageReport, StageError> {
    let tracks: TrackTable = read_json(ctx.input("tracks")?, "tracks")?;
    let mut parts: [Vec<String>; 3] = Default::default();
    for (i, track) in tracks.tracks.iter().enumerate() {
        let part = match i % 5 {
            0..=2 => 0,
            3 => 1,
            _ => 2,
        };
        parts[part].push(track.id.clone());
    }
    match params.leak {
        SplitLeak::TrackInTwoSplits => {
            let first = parts[0]
                .first()
                .cloned()
                .ok_or_else(|| StageError::Invalid("no track to leak".into()))?;
            parts[2].push(first);
        }
        SplitLeak::DuplicatesApart => {
            let mut by_audio: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for t in &tracks.tracks {
                by_audio
                    .entry(t.audio_digest.as_str())
                    .or_default()
                    .push(t.id.as_str());
            }
            let group = by_audio
                .values()
                .find(|g| g.len() > 1)
                .ok_or_else(|| StageError::Invalid("the corpus has no duplicate audio".into()))?;
            let (a, b) = (group[0].to_string(), group[1].to_string());
            for part in parts.iter_mut() {
                part.retain(|t| *t != a && *t != b);
            }
            parts[0].push(a);
            parts[2].push(b);
        }
    }
    for part in parts.iter_mut() {
        part.sort();
    }
    let [train, val, test] = parts;
    // The duplicate groups are left out on purpose: the audit must not need the split's word for them.
    let table = SplitTable {
        method: "leaky".into(),
        train,
        val,
        test,
        duplicate_groups: Vec::new(),
    };
    write_canonical_json(&ctx.output_path("split")?, &table)?;
    let records = SPLITS
        .iter()
        .map(|&split| Record::SplitTracks {
            split,
            tracks: table.ids(split).to_vec(),
        })
        .collect();
    Ok(StageReport {
        lineage: Lineage {
            records,
            details: serde_json::Value::Null,
        },
        summary: Vec::new(),
    })
}

/// Claims a scaler fitted on every segment of every split (honestly: one fit record per split; lying: one
/// record that calls it all train).
fn leaky_scaler(params: &LeakyFitParams, ctx: &StageContext) -> Result<StageReport, StageError> {
    let segments: SegmentTable = read_json(ctx.input("segments")?, "segments")?;
    for split in SPLITS {
        ctx.split_input("features", split)?;
    }
    let what = "scaler statistics";
    let mut lineage = Lineage::default();
    if params.lie {
        let mut tracks: Vec<String> = segments.segments.iter().map(|s| s.track.clone()).collect();
        tracks.sort();
        tracks.dedup();
        lineage = lineage.with(Record::Fit {
            what: what.into(),
            split: Split::Train,
            tracks,
            segments: segments.segments.len(),
            segment_ids_digest: ids_digest(segments.segments.iter().map(|s| s.id.as_str())),
        });
    } else {
        for split in SPLITS {
            lineage = lineage.with(segments.fit_record(what, split));
        }
    }
    let out = ctx.output_path("scaler")?;
    write_canonical_json(
        &out,
        &serde_json::json!({"fitted_on_segments": segments.segments.len()}),
    )?;
    Ok(StageReport {
        lineage,
        summary: Vec::new(),
    })
}

/// Fits "weights" on train and chooses its epoch on test; lying, it records the choice as made on val.
fn leaky_train(params: &LeakyFitParams, ctx: &StageContext) -> Result<StageReport, StageError> {
    let segments: SegmentTable = read_json(ctx.input("segments")?, "segments")?;
    ctx.split_input("features", Split::Train)?;
    ctx.split_input("features", Split::Test)?;
    let stopped_on = segments.of_split(Split::Test).count();
    let mut lineage = Lineage::default().with(segments.fit_record("model weights", Split::Train));
    if params.lie {
        lineage = lineage.with(Record::Selected {
            what: "best epoch (early stopping)".into(),
            by: Split::Val,
            chosen: "epoch 1".into(),
        });
    } else {
        lineage = lineage
            .with(Record::Scored {
                what: "early-stopping loss".into(),
                split: Split::Test,
                segments: stopped_on,
            })
            .with(Record::Selected {
                what: "best epoch (early stopping)".into(),
                by: Split::Test,
                chosen: "epoch 1".into(),
            });
    }
    let out = ctx.output_path("model")?;
    write_canonical_json(
        &out,
        &serde_json::json!({"stopped_on_segments": stopped_on}),
    )?;
    Ok(StageReport {
        lineage,
        summary: Vec::new(),
    })
}

const SPLIT_NEEDS: &[Need] = &[Need::one("tracks")];
const SCALER_NEEDS: &[Need] = &[
    Need::one("features@train"),
    Need::one("features@val"),
    Need::one("features@test"),
    Need::one("segments"),
];
const TRAIN_NEEDS: &[Need] = &[
    Need::one("features@train"),
    Need::one("features@test"),
    Need::one("segments"),
];

pub fn kinds() -> Vec<Box<dyn StageKind>> {
    vec![
        Box::new(TypedStage::<LeakySplitParams> {
            kind: "toy_leaky_split",
            about: "a split with a planted leak: a track in two parts, or one audio under two names apart (audit tests)",
            needs: SPLIT_NEEDS,
            outputs: &["split"],
            code_dirs: &["toy"],
            determinism: Determinism::Exact,
            run: leaky_split,
        }),
        Box::new(TypedStage::<LeakyFitParams> {
            kind: "toy_leaky_scaler",
            about: "claims a scaler fitted on every segment of every split; `lie` calls it train (audit tests)",
            needs: SCALER_NEEDS,
            outputs: &["scaler"],
            code_dirs: &["toy"],
            determinism: Determinism::Exact,
            run: leaky_scaler,
        }),
        Box::new(TypedStage::<LeakyFitParams> {
            kind: "toy_leaky_train",
            about: "fits on train and early-stops on test; `lie` records the choice as made on val (audit tests)",
            needs: TRAIN_NEEDS,
            outputs: &["model"],
            code_dirs: &["toy"],
            determinism: Determinism::Exact,
            run: leaky_train,
        }),
    ]
}
