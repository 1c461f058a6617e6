//! Fold assignment invariants (grouped: no track or duplicate group in two folds, classes spread evenly;
//! replica: one track's segments in several folds) and the aggregation's arithmetic.

use std::collections::{BTreeMap, BTreeSet};

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::folds::*;
use super::summary::{
    aggregate_frame, folds_frame, summarize, CvSummary, FoldRow, MeanStd, ModeSummary, SCORES,
};
use super::*;

fn corpus(classes: u32, per_class: u32) -> Vec<TrackLabel> {
    (0..classes)
        .flat_map(|c| {
            (0..per_class).map(move |i| TrackLabel {
                id: format!("c{c}.{i:03}"),
                label: c,
            })
        })
        .collect()
}

#[test]
fn grouped_folds_spread_every_class_evenly_and_keep_duplicates_together() {
    let tracks = corpus(4, 24);
    let groups = vec![
        vec![
            "c0.001".to_string(),
            "c0.017".to_string(),
            "c0.020".to_string(),
        ],
        vec!["c2.005".to_string(), "c2.006".to_string()],
        // A group naming a track outside the pool (a test track) constrains nothing.
        vec!["c3.000".to_string(), "test.only".to_string()],
    ];
    let folds = grouped_folds(&tracks, &groups, 5, &mut ChaCha20Rng::seed_from_u64(1));
    assert_eq!(folds.len(), tracks.len());
    assert!(folds.values().all(|&f| f < 5));
    assert_eq!(folds["c0.001"], folds["c0.017"]);
    assert_eq!(folds["c0.001"], folds["c0.020"]);
    assert_eq!(folds["c2.005"], folds["c2.006"]);
    for class in 0..4 {
        let mut per_fold = [0usize; 5];
        for t in tracks.iter().filter(|t| t.label == class) {
            per_fold[folds[&t.id]] += 1;
        }
        let (min, max) = (
            per_fold.iter().min().unwrap(),
            per_fold.iter().max().unwrap(),
        );
        // Units, not tracks, are dealt: a group of three can tip one fold by two.
        assert!(max - min <= 3, "class {class}: {per_fold:?}");
        assert!(*min >= 3, "class {class}: {per_fold:?}");
    }
}

#[test]
fn grouped_folds_depend_on_the_seed_only_not_on_input_order() {
    let tracks = corpus(3, 10);
    let mut reversed = tracks.clone();
    reversed.reverse();
    let a = grouped_folds(&tracks, &[], 5, &mut ChaCha20Rng::seed_from_u64(9));
    let b = grouped_folds(&reversed, &[], 5, &mut ChaCha20Rng::seed_from_u64(9));
    let c = grouped_folds(&tracks, &[], 5, &mut ChaCha20Rng::seed_from_u64(10));
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn segment_folds_stratify_by_label_and_split_tracks_across_folds() {
    // 12 tracks of ten segments, two classes, rows in track order as the pool holds them.
    let labels: Vec<u32> = (0..120).map(|i| (i / 10 % 2) as u32).collect();
    let folds = segment_folds(&labels, 5, &mut ChaCha20Rng::seed_from_u64(2));
    for class in 0..2 {
        let mut per_fold = [0usize; 5];
        for (f, _) in folds.iter().zip(&labels).filter(|(_, &l)| l == class) {
            per_fold[*f] += 1;
        }
        assert_eq!(per_fold, [12; 5], "class {class}");
    }
    let split_tracks = folds
        .chunks(10)
        .filter(|track| track.iter().collect::<BTreeSet<_>>().len() > 1)
        .count();
    assert_eq!(split_tracks, 12, "every track's segments should span folds");
}

#[test]
fn grouped_roles_hold_out_one_fold_and_stop_on_the_next() {
    let roles: Vec<Role> = (0..5).map(|f| grouped_role(f, 4, 5)).collect();
    assert_eq!(
        roles,
        vec![
            Role::EarlyStopping,
            Role::Train,
            Role::Train,
            Role::Train,
            Role::HeldOut
        ]
    );
}

#[test]
fn params_reject_a_fold_outside_the_folds_and_prefix_training_problems() {
    let p = Params {
        fold: 5,
        ..Default::default()
    };
    let keys: Vec<String> = p.validate().into_iter().map(|p| p.key).collect();
    assert_eq!(keys, vec!["fold".to_string()]);
    let mut p = Params::default();
    p.train.width = 0.0;
    p.folds = 2;
    let keys: BTreeSet<String> = p.validate().into_iter().map(|p| p.key).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["train.width".to_string(), "folds".to_string()])
    );
}

#[test]
fn mean_std_is_the_population_one() {
    let m = MeanStd::of(&[0.9, 0.91, 0.89, 0.9]).unwrap();
    assert!((m.mean - 0.9).abs() < 1e-12);
    assert!((m.std - (0.0002f64 / 4.0).sqrt()).abs() < 1e-12);
    assert_eq!(MeanStd::of(&[]), None);
}

fn fold(mode: Mode, k: usize, accuracy: f64) -> (String, FoldResult) {
    let eval = {
        // `right` of ten segments of one track each correct, two classes.
        let right = (accuracy * 10.0).round() as usize;
        let labels: Vec<u32> = (0..10).map(|i| i % 2).collect();
        let tracks: Vec<u32> = (0..10).collect();
        let mut probs = Vec::new();
        for (i, &l) in labels.iter().enumerate() {
            let p = if (i < right) == (l == 0) {
                [0.9, 0.1]
            } else {
                [0.1, 0.9]
            };
            probs.extend(p);
        }
        metrics::evaluate(&probs, 2, &labels, &tracks).unwrap()
    };
    let part = PartSummary {
        segments: 10,
        tracks: vec!["t".into()],
    };
    (
        format!("cv[fold={k},mode={}]", mode.name()),
        FoldResult {
            mode,
            fold: k,
            folds: 3,
            spec: ModelSpec::study(Architecture::UnetLean),
            classes: vec!["a".into(), "b".into()],
            train: part.clone(),
            early_stopping: part.clone(),
            held_out: part.clone(),
            scaler_fit: part,
            held_out_tracks_also_trained_on: 0,
            best_epoch: 1,
            epochs_run: 1,
            history: vec![],
            score: eval,
        },
    )
}

#[test]
fn summary_aggregates_each_mode_and_measures_the_replica_gap() {
    let folds: Vec<_> = [
        fold(Mode::StudyReplica, 2, 0.9),
        fold(Mode::Grouped, 0, 0.6),
        fold(Mode::Grouped, 2, 0.8),
        fold(Mode::Grouped, 1, 0.7),
        fold(Mode::StudyReplica, 0, 0.9),
        fold(Mode::StudyReplica, 1, 0.9),
    ]
    .into();
    let s = summarize(&folds).unwrap();
    assert_eq!(s.modes.len(), 2);
    assert_eq!(s.modes[0].mode, Mode::Grouped);
    let accs: Vec<f64> = s.modes[0]
        .folds
        .iter()
        .map(|r| r.segment_accuracy)
        .collect();
    assert_eq!(accs, vec![0.6, 0.7, 0.8]);
    assert!((s.modes[0].segment_accuracy.mean - 0.7).abs() < 1e-12);
    assert!((s.replica_gap_segment_accuracy.unwrap() - 0.2).abs() < 1e-12);
    let by_member: BTreeMap<&str, f64> = s.modes[1]
        .folds
        .iter()
        .map(|r| (r.member.as_str(), r.segment_accuracy))
        .collect();
    assert_eq!(by_member.len(), 3);
}

#[test]
fn summary_refuses_a_missing_or_repeated_fold() {
    let missing = vec![fold(Mode::Grouped, 0, 0.5), fold(Mode::Grouped, 2, 0.5)];
    assert!(summarize(&missing).is_err());
    let repeated = vec![
        fold(Mode::Grouped, 0, 0.5),
        fold(Mode::Grouped, 1, 0.5),
        fold(Mode::Grouped, 1, 0.5),
        fold(Mode::Grouped, 2, 0.5),
    ];
    assert!(summarize(&repeated).is_err());
}

/// A summary of random scores: each mode present or not, 1 to 10 folds, scores anywhere in [0, 1).
fn random_summary(rng: &mut ChaCha20Rng) -> CvSummary {
    use rand::Rng;
    let mut modes = Vec::new();
    for mode in [Mode::Grouped, Mode::StudyReplica] {
        if modes.is_empty() && mode == Mode::StudyReplica || rng.random_bool(0.8) {
            let k = rng.random_range(1..=10);
            let folds: Vec<FoldRow> = (0..k)
                .map(|fold| FoldRow {
                    member: format!("cv[fold={fold},mode={}]", mode.name()),
                    fold,
                    best_epoch: rng.random_range(1..50),
                    held_out_tracks: rng.random_range(1..100),
                    held_out_tracks_also_trained_on: 0,
                    segment_accuracy: rng.random(),
                    segment_macro_f1: rng.random(),
                    track_accuracy: rng.random(),
                    track_macro_f1: rng.random(),
                })
                .collect();
            let of = |get: fn(&FoldRow) -> f64| {
                MeanStd::of(&folds.iter().map(get).collect::<Vec<_>>()).unwrap()
            };
            modes.push(ModeSummary {
                mode,
                arch: Architecture::Unet,
                width: 1.0,
                segment_accuracy: of(|r| r.segment_accuracy),
                segment_macro_f1: of(|r| r.segment_macro_f1),
                track_accuracy: of(|r| r.track_accuracy),
                track_macro_f1: of(|r| r.track_macro_f1),
                folds,
            });
        }
    }
    CvSummary {
        modes,
        replica_gap_segment_accuracy: None,
    }
}

#[test]
fn the_cv_table_aggregated_by_polars_equals_mean_std() {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    for _ in 0..200 {
        let summary = random_summary(&mut rng);
        let folds = folds_frame(&summary).unwrap();
        assert_eq!(
            folds.height(),
            summary.modes.iter().map(|m| m.folds.len()).sum::<usize>()
        );
        let cv = aggregate_frame(&folds).unwrap();
        assert_eq!(cv.height(), summary.modes.len());
        let mut expected_columns = vec!["mode".to_string(), "folds".to_string()];
        for s in SCORES {
            expected_columns.push(format!("{s}_mean"));
            expected_columns.push(format!("{s}_std"));
        }
        assert_eq!(crate::common::frames::column_names(&cv), expected_columns);
        let f64_at =
            |name: &str, row: usize| cv.column(name).unwrap().f64().unwrap().get(row).unwrap();
        for (row, m) in summary.modes.iter().enumerate() {
            let mode = cv.column("mode").unwrap().str().unwrap().get(row);
            assert_eq!(mode, Some(m.mode.name()));
            let folds = cv.column("folds").unwrap().u64().unwrap().get(row);
            assert_eq!(folds, Some(m.folds.len() as u64));
            for (name, want) in SCORES.into_iter().zip([
                m.segment_accuracy,
                m.segment_macro_f1,
                m.track_accuracy,
                m.track_macro_f1,
            ]) {
                let (mean, std) = (
                    f64_at(&format!("{name}_mean"), row),
                    f64_at(&format!("{name}_std"), row),
                );
                assert!(
                    (mean - want.mean).abs() < 1e-12,
                    "{name} mean {mean} vs {}",
                    want.mean
                );
                assert!(
                    (std - want.std).abs() < 1e-12,
                    "{name} std {std} vs {}",
                    want.std
                );
            }
        }
    }
}

#[test]
fn the_cv_folds_table_lists_grouped_folds_first_in_fold_order() {
    let folds: Vec<_> = [
        fold(Mode::StudyReplica, 1, 0.9),
        fold(Mode::Grouped, 2, 0.8),
        fold(Mode::StudyReplica, 0, 0.8),
        fold(Mode::Grouped, 0, 0.6),
        fold(Mode::StudyReplica, 2, 0.7),
        fold(Mode::Grouped, 1, 0.7),
    ]
    .into();
    let summary = summarize(&folds).unwrap();
    let df = folds_frame(&summary).unwrap();
    let modes: Vec<&str> = df
        .column("mode")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .flatten()
        .collect();
    assert_eq!(
        modes,
        [
            "grouped",
            "grouped",
            "grouped",
            "study_replica",
            "study_replica",
            "study_replica"
        ]
    );
    let order: Vec<u64> = df
        .column("fold")
        .unwrap()
        .u64()
        .unwrap()
        .iter()
        .flatten()
        .collect();
    assert_eq!(order, [0, 1, 2, 0, 1, 2]);
    let accuracy: Vec<f64> = df
        .column("segment_accuracy")
        .unwrap()
        .f64()
        .unwrap()
        .iter()
        .flatten()
        .collect();
    assert_eq!(accuracy, [0.6, 0.7, 0.8, 0.8, 0.9, 0.7]);
}
