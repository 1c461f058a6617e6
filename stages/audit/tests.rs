//! The audit's core on hand-made ancestries: check lines, the CV checks from the typed part records (and
//! from the details of folds recorded before them), and replica stages listed rather than counted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use genrelab_contract::{
    Ancestor, AncestorInput, Ancestry, ArtifactSource, Lineage, PartRole, Record, Split, StageError,
};

use super::core::{same_audio, Check};
use super::*;
use crate::common::tables::{Track, TrackTable};

#[test]
fn a_failing_line_names_ten_culprits_then_counts_the_rest() {
    let mut check = Check::new("x", "the invariant");
    check.checked = 1;
    for i in 0..12 {
        check.fail(format!("stage: track {i}"));
    }
    let line = check.line();
    assert!(
        line.starts_with("FAILS  the invariant: stage: track 0; "),
        "{line}"
    );
    assert!(line.contains("track 9"), "{line}");
    assert!(!line.contains("track 10"), "{line}");
    assert!(line.ends_with("track 9 and 2 more"), "{line}");
}

#[test]
fn a_check_with_nothing_to_check_says_so() {
    let mut check = Check::new("x", "the invariant");
    assert_eq!(
        check.line(),
        "holds  the invariant (nothing of the kind among the audited stages)"
    );
    check.checked = 2;
    assert_eq!(check.line(), "holds  the invariant");
}

fn track(id: &str, audio: &str) -> Track {
    Track {
        id: id.into(),
        class: "c".into(),
        label: 0,
        path: format!("{id}.wav"),
        samples: 1,
        source_rate: 1,
        source_channels: 1,
        file_digest: id.into(),
        audio_digest: audio.into(),
        warnings: Vec::new(),
    }
}

fn track_table(tracks: Vec<Track>) -> TrackTable {
    TrackTable {
        sample_rate: 1,
        classes: vec!["c".into()],
        tracks,
    }
}

#[test]
fn duplicate_audio_pairs_are_named_once_each() {
    let table = track_table(vec![track("a", "1"), track("b", "1"), track("c", "2")]);
    let right: BTreeSet<&str> = ["a", "b"].into();
    assert_eq!(
        same_audio(Some(&table), &["a", "b", "c"], &right),
        ["a ~ b"]
    );
    assert!(same_audio(Some(&table), &["c"], &right).is_empty());
}

struct NoFiles;

impl ArtifactSource for NoFiles {
    fn read(&self, digest: &str) -> Result<Vec<u8>, StageError> {
        Err(StageError::Invalid(format!("{digest}: no such object")))
    }
}

fn ids(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// A fold's scaler and weights, both fitted on `tracks`' rows, and its `parts`.
fn fitted(tracks: &[&str], parts: Vec<Record>) -> Vec<Record> {
    let fit = |what: &str| Record::Fit {
        what: what.into(),
        split: Split::Train,
        tracks: ids(tracks),
        segments: tracks.len(),
        segment_ids_digest: "d".into(),
    };
    let mut records = vec![fit("fold 0 scaler statistics"), fit("fold 0 model weights")];
    records.extend(parts);
    records
}

/// A CV fold reading track table `tracks`, with `records` and `details`.
fn fold(name: &str, mode: &str, records: Vec<Record>, details: serde_json::Value) -> Ancestor {
    Ancestor {
        name: name.into(),
        kind: "cv".into(),
        manifest: format!("m-{name}"),
        params: serde_json::json!({ "mode": mode }),
        lineage: Lineage { records, details },
        outputs: BTreeMap::from([("fold".to_string(), format!("o-{name}"))]),
        inputs: vec![AncestorInput {
            stage: "ingest".into(),
            manifest: None,
            artifacts: BTreeMap::from([("tracks".to_string(), "t".to_string())]),
        }],
        split_reads: BTreeMap::new(),
    }
}

fn run(folds: Vec<Ancestor>, explicit: &[&str]) -> AuditReport {
    let stages: BTreeMap<String, Ancestor> =
        folds.into_iter().map(|f| (f.manifest.clone(), f)).collect();
    let ancestry = Ancestry::new(Vec::new(), stages, Arc::new(NoFiles));
    let mut tables = TableSet::default();
    tables.tracks.insert(
        "t".into(),
        track_table(vec![
            track("a", "1"),
            track("b", "2"),
            track("c", "3"),
            track("c2", "3"),
        ]),
    );
    let explicit: BTreeSet<String> = explicit.iter().map(|s| s.to_string()).collect();
    audit(&ancestry, &tables, &explicit, None)
}

fn check<'r>(report: &'r AuditReport, id: &str) -> &'r Check {
    report.checks.iter().find(|c| c.id == id).unwrap()
}

fn part(role: PartRole, tracks: &[&str]) -> Record {
    Record::Part {
        what: "fold 0".into(),
        role,
        tracks: ids(tracks),
    }
}

#[test]
fn cv_checks_read_the_typed_part_records() {
    let honest = fold(
        "cv_ok",
        "grouped",
        fitted(
            &["a"],
            vec![
                part(PartRole::EarlyStopping, &["b"]),
                part(PartRole::HeldOut, &["c"]),
            ],
        ),
        serde_json::Value::Null,
    );
    // Held out `c` while training on its copy `c2` and stopping early on `c` itself.
    let leaky = fold(
        "cv_leaky",
        "grouped",
        fitted(
            &["a", "c2"],
            vec![
                part(PartRole::EarlyStopping, &["c"]),
                part(PartRole::HeldOut, &["c"]),
            ],
        ),
        // The details disagree: the typed records are what the check reads.
        serde_json::json!({"held_out_tracks": ["b"], "early_stopping_tracks": ["a"]}),
    );
    let report = run(vec![honest.clone()], &[]);
    assert!(check(&report, "cv-grouped").holds);
    assert_eq!(check(&report, "cv-grouped").checked, 1);
    assert!(check(&report, "cv-early-stopping").holds);

    let report = run(vec![honest, leaky], &[]);
    let grouped = check(&report, "cv-grouped");
    assert_eq!(grouped.checked, 2);
    assert_eq!(
        grouped.failures,
        ["cv_leaky: held-out tracks with the audio of a training track: c ~ c2"]
    );
    let stopping = check(&report, "cv-early-stopping");
    assert_eq!(
        stopping.failures,
        ["cv_leaky: 1 held-out tracks also drove early stopping: c"]
    );
    assert!(!report.holds);
    assert_eq!(report.verdict, "2 of 11 invariants fail");
    assert_eq!(
        report.headline(),
        "2 of 11 invariants fail: cv-grouped, cv-early-stopping"
    );
}

#[test]
fn a_fold_recorded_before_typed_parts_is_read_from_its_details() {
    let legacy = fold(
        "cv_old",
        "grouped",
        fitted(&["a"], vec![]),
        serde_json::json!({"held_out_tracks": ["b"], "early_stopping_tracks": ["b"]}),
    );
    let silent = fold(
        "cv_silent",
        "grouped",
        fitted(&["a"], vec![]),
        serde_json::Value::Null,
    );
    let report = run(vec![legacy, silent], &[]);
    assert_eq!(
        check(&report, "cv-early-stopping").failures,
        [
            "cv_old: 1 held-out tracks also drove early stopping: b",
            "cv_silent: its lineage names no held-out and early-stopping tracks"
        ]
    );
    assert_eq!(
        check(&report, "cv-grouped").failures,
        ["cv_silent: its lineage names no held-out and early-stopping tracks"]
    );
}

#[test]
fn a_replica_fold_is_listed_unless_audited_by_name() {
    let replica = fold(
        "cv_replica",
        "study_replica",
        fitted(
            &["a", "b"],
            vec![
                part(PartRole::EarlyStopping, &["b"]),
                part(PartRole::HeldOut, &["b"]),
            ],
        ),
        serde_json::Value::Null,
    );
    let report = run(vec![replica.clone()], &[]);
    assert!(report.holds, "{}", report.render());
    assert_eq!(
        report.replica_stages,
        BTreeSet::from(["cv_replica".to_string()])
    );
    assert!(report
        .verdict
        .starts_with("all 11 invariants hold; the study's replica breaks 2"));
    assert_eq!(report.headline(), "all 11 invariants hold");

    let named = run(vec![replica], &["m-cv_replica"]);
    assert!(!named.holds);
    assert!(named.replica_stages.is_empty());
}

#[test]
fn the_report_reads_back_from_its_canonical_json() {
    let report = run(
        vec![fold(
            "cv_silent",
            "grouped",
            fitted(&["a"], vec![]),
            serde_json::Value::Null,
        )],
        &[],
    );
    let bytes = serde_json::to_vec(&serde_json::to_value(&report).unwrap()).unwrap();
    let back: AuditReport = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(back, report);
    assert!(back
        .render()
        .ends_with(&format!("audit: {}\n", report.verdict)));
}
