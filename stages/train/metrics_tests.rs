use super::*;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn segment_scores_by_hand_with_zero_division() {
    // Class 2 is never predicted (precision 0/0 -> 0), class 3 never occurs (left out of the macro mean).
    let actual = [0, 0, 0, 1, 1, 2];
    let predicted = [0, 1, 0, 1, 1, 1];
    let s = scores(&actual, &predicted, 4).unwrap();
    assert_eq!(
        s.confusion,
        vec![
            vec![2, 1, 0, 0],
            vec![0, 2, 0, 0],
            vec![0, 1, 0, 0],
            vec![0, 0, 0, 0]
        ]
    );
    assert_eq!((s.count, s.correct), (6, 4));
    assert!(close(s.accuracy, 4.0 / 6.0));
    let c = &s.per_class;
    assert!(close(c[0].precision, 1.0) && close(c[0].recall, 2.0 / 3.0) && close(c[0].f1, 0.8));
    assert!(close(c[1].precision, 0.5) && close(c[1].recall, 1.0) && close(c[1].f1, 2.0 / 3.0));
    assert_eq!(
        (c[2].precision, c[2].recall, c[2].f1, c[2].support),
        (0.0, 0.0, 0.0, 1)
    );
    assert_eq!(
        (c[3].precision, c[3].recall, c[3].f1, c[3].support),
        (0.0, 0.0, 0.0, 0)
    );
    // scikit-learn: f1_score(actual, predicted, average="macro") = (0.8 + 2/3 + 0) / 3.
    assert!(close(s.macro_f1, (0.8 + 2.0 / 3.0) / 3.0), "{}", s.macro_f1);
}

#[test]
fn argmax_takes_the_lowest_index_on_ties_and_skips_nan() {
    assert_eq!(argmax(&[0.25f32, 0.5, 0.5]), 1);
    assert_eq!(argmax(&[0.5f32, 0.5]), 0);
    assert_eq!(argmax(&[f32::NAN, 0.1, 0.3]), 2);
    assert_eq!(argmax(&[0.2f32, f32::NAN, 0.1]), 0);
}

/// Nine segments of four tracks, interleaved; values are dyadic so every tie is exact.
fn tracks_case() -> (Vec<f32>, Vec<u32>, Vec<u32>) {
    let rows: [(u32, u32, [f32; 3]); 9] = [
        (7, 1, [0.5, 0.375, 0.125]),  // -> 0
        (3, 0, [0.25, 0.5, 0.25]),    // -> 1
        (5, 2, [0.5, 0.5, 0.0]),      // -> 0 (tie, lowest index)
        (9, 2, [0.75, 0.0, 0.25]),    // -> 0
        (3, 0, [0.25, 0.5, 0.25]),    // -> 1
        (7, 1, [0.125, 0.75, 0.125]), // -> 1
        (5, 2, [0.0, 0.5, 0.5]),      // -> 1 (tie, lowest index)
        (3, 0, [1.0, 0.0, 0.0]),      // -> 0
        (9, 2, [0.25, 0.0, 0.75]),    // -> 2
    ];
    let probs = rows.iter().flat_map(|r| r.2).collect();
    let labels = rows.iter().map(|r| r.1).collect();
    let tracks = rows.iter().map(|r| r.0).collect();
    (probs, labels, tracks)
}

#[test]
fn track_aggregation_by_mean_and_by_vote_with_tie_breaks() {
    let (probs, labels, tracks) = tracks_case();
    let t = track_predictions(&probs, 3, &labels, &tracks).unwrap();
    assert_eq!(t.tracks, vec![3, 5, 7, 9]);
    assert_eq!(t.labels, vec![0, 2, 1, 2]);
    // Track 3: votes 1,1,0 -> 1; mean [0.5, 1/3, 1/6] -> 0.
    // Track 5: votes tie 0/1, means [0.25, 0.5, 0.25] -> 1 both ways.
    // Track 7: votes tie 0/1, means [0.3125, 0.5625, 0.125] -> 1 both ways.
    // Track 9: votes tie 0/2 and means tie [0.5, 0, 0.5] -> lowest index 0 both ways.
    assert_eq!(t.by_mean, vec![0, 1, 1, 0]);
    assert_eq!(t.by_vote, vec![1, 1, 1, 0]);

    let e = evaluate(&probs, 3, &labels, &tracks).unwrap();
    assert_eq!((e.segment.count, e.segment.correct), (9, 3));
    assert!(close(e.segment.accuracy, 1.0 / 3.0));
    assert_eq!((e.track_mean.count, e.track_mean.correct), (4, 2));
    assert_eq!((e.track_vote.count, e.track_vote.correct), (4, 1));
    assert_eq!(
        e.track_vote.confusion,
        vec![vec![0, 1, 0], vec![0, 1, 0], vec![1, 1, 0]]
    );
    let c = &e.track_vote.per_class;
    assert!(close(c[1].precision, 1.0 / 3.0) && close(c[1].recall, 1.0) && close(c[1].f1, 0.5));
    assert_eq!((c[2].precision, c[2].f1, c[2].support), (0.0, 0.0, 2));
    assert!(close(e.track_vote.macro_f1, 0.5 / 3.0));
}

#[test]
fn bad_inputs_are_errors() {
    let (probs, labels, tracks) = tracks_case();
    let mut mixed = labels.clone();
    mixed[4] = 2;
    assert!(matches!(
        evaluate(&probs, 3, &mixed, &tracks),
        Err(MetricsError::MixedTrackLabels {
            track: 3,
            first: 0,
            other: 2
        })
    ));
    let mut big = labels.clone();
    big[0] = 3;
    assert!(matches!(
        evaluate(&probs, 3, &big, &tracks),
        Err(MetricsError::LabelOutOfRange { label: 3, .. })
    ));
    assert!(matches!(
        evaluate(&probs[1..], 3, &labels, &tracks),
        Err(MetricsError::Shape { .. })
    ));
    assert!(matches!(
        evaluate(&probs, 3, &labels, &tracks[1..]),
        Err(MetricsError::Lengths { .. })
    ));
    assert!(scores(&[0, 1], &[0], 2).is_err());
}

#[test]
fn empty_input_scores_zero_and_serialises_in_field_order() {
    let s = scores(&[], &[], 2).unwrap();
    assert_eq!((s.accuracy, s.macro_f1), (0.0, 0.0));
    let one = scores(&[1], &[1], 2).unwrap();
    assert_eq!(
        serde_json::to_string(&one).unwrap(),
        concat!(
            r#"{"count":1,"correct":1,"accuracy":1.0,"macro_f1":1.0,"per_class":["#,
            r#"{"precision":0.0,"recall":0.0,"f1":0.0,"support":0},"#,
            r#"{"precision":1.0,"recall":1.0,"f1":1.0,"support":1}],"confusion":[[0,0],[0,1]]}"#
        )
    );
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|c| format!("class{c}")).collect()
}

#[test]
fn the_metrics_table_holds_every_score_in_level_then_class_order() {
    use polars::prelude::AnyValue;
    let (probs, labels, tracks) = tracks_case();
    let e = evaluate(&probs, 3, &labels, &tracks).unwrap();
    let classes = names(3);
    let df = metrics_frame("metrics", &e, &classes).unwrap();
    assert_eq!(
        crate::common::frames::column_names(&df),
        ["level", "class", "metric", "value"]
    );
    // Per level: accuracy, macro F1, then four rows per class.
    assert_eq!(df.height(), 3 * (2 + 4 * 3));
    let mut row = 0;
    for (level, scores) in e.levels() {
        let mut expect = vec![
            (None, "accuracy", scores.accuracy),
            (None, "macro_f1", scores.macro_f1),
        ];
        for (c, s) in classes.iter().zip(&scores.per_class) {
            expect.push((Some(c.as_str()), "precision", s.precision));
            expect.push((Some(c.as_str()), "recall", s.recall));
            expect.push((Some(c.as_str()), "f1", s.f1));
            expect.push((Some(c.as_str()), "support", s.support as f64));
        }
        for (class, metric, value) in expect {
            let got = df.get_row(row).unwrap().0;
            assert_eq!(got[0], AnyValue::String(level), "row {row}");
            match class {
                Some(c) => assert_eq!(got[1], AnyValue::String(c), "row {row}"),
                None => assert_eq!(got[1], AnyValue::Null, "row {row}"),
            }
            assert_eq!(got[2], AnyValue::String(metric), "row {row}");
            assert_eq!(got[3], AnyValue::Float64(value), "row {row}");
            row += 1;
        }
    }
}

#[test]
fn the_confusion_table_is_every_cell_by_level_actual_predicted() {
    use polars::prelude::AnyValue;
    let (probs, labels, tracks) = tracks_case();
    let e = evaluate(&probs, 3, &labels, &tracks).unwrap();
    let classes = names(3);
    let df = confusion_frame("confusion", &e, &classes).unwrap();
    assert_eq!(
        crate::common::frames::column_names(&df),
        ["level", "actual", "predicted", "count"]
    );
    assert_eq!(df.height(), 3 * 9);
    for (l, (level, scores)) in e.levels().into_iter().enumerate() {
        for (a, (actual, cells)) in classes.iter().zip(&scores.confusion).enumerate() {
            for (p, (predicted, &n)) in classes.iter().zip(cells).enumerate() {
                let got = df.get_row(l * 9 + a * 3 + p).unwrap().0;
                assert_eq!(got[0], AnyValue::String(level));
                assert_eq!(got[1], AnyValue::String(actual));
                assert_eq!(got[2], AnyValue::String(predicted));
                assert_eq!(got[3], AnyValue::UInt64(n));
            }
        }
    }
    let total: u64 = df
        .column("count")
        .unwrap()
        .u64()
        .unwrap()
        .iter()
        .flatten()
        .sum();
    assert_eq!(total, e.levels().iter().map(|(_, s)| s.count).sum::<u64>());
}

#[test]
fn score_tables_refuse_class_names_that_do_not_match_the_scores() {
    let (probs, labels, tracks) = tracks_case();
    let e = evaluate(&probs, 3, &labels, &tracks).unwrap();
    for classes in [names(2), names(4)] {
        assert!(metrics_frame("metrics", &e, &classes).is_err());
        assert!(confusion_frame("confusion", &e, &classes).is_err());
    }
}
