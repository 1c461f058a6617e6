//! The tournament's choice is made on validation scores alone (ties broken by track accuracy, then input
//! order), and the ablation pairs each architecture's runs without and with SpecAugment.

use super::*;
use crate::train::models::ModelSpec;

/// Validation scores from predictions: `right` of four segments (two tracks of two) correct.
fn evaluation(right: usize) -> Evaluation {
    let labels = [0u32, 0, 1, 1];
    let tracks = [0u32, 0, 1, 1];
    let mut probs = Vec::new();
    for (i, &label) in labels.iter().enumerate() {
        let predicted = if i < right { label } else { 1 - label };
        probs.extend(if predicted == 0 {
            [0.9, 0.1]
        } else {
            [0.1, 0.9]
        });
    }
    metrics::evaluate(&probs, 2, &labels, &tracks).unwrap()
}

fn card(arch: Architecture, augment: bool, right: usize) -> ModelCard {
    let spec = ModelSpec::study(arch);
    ModelCard {
        classes: vec!["a".into(), "b".into()],
        trainable_parameters: 1,
        running_statistics: 0,
        multiply_adds_per_segment: 1,
        params: crate::train::stage::Params {
            arch,
            augment,
            ..Default::default()
        },
        best_epoch: 1,
        epochs_run: 1,
        stopped_early: false,
        val: evaluation(right),
        spec,
    }
}

#[test]
fn the_champion_is_the_best_on_val_then_the_first_listed() {
    let cards = [
        card(Architecture::EfficientVgg, false, 2),
        card(Architecture::Unet, false, 4),
        card(Architecture::ResSe, false, 4),
        card(Architecture::Unet, true, 3),
    ];
    let mut order: Vec<(usize, &ModelCard)> = cards.iter().enumerate().collect();
    order.sort_by(val_order);
    let ranked: Vec<usize> = order.iter().map(|(i, _)| *i).collect();
    // Two tie at 100% on val: the one listed first wins; then 75%, then 50%.
    assert_eq!(ranked, [1, 2, 3, 0]);
}

fn entry(arch: Architecture, augment: bool, test: f64) -> Entry {
    Entry {
        member: format!("train[arch={},augment={augment}]", arch_name(arch)),
        arch,
        width: 0.25,
        augment,
        trainable_parameters: 10,
        multiply_adds_per_segment: 100,
        best_epoch: 3,
        val_segment_accuracy: 0.5,
        val_track_accuracy: 0.5,
        test_segment_accuracy: test,
        test_segment_macro_f1: test,
        test_track_accuracy: test,
        test_track_vote_accuracy: test,
    }
}

#[test]
fn the_ablation_pairs_runs_without_and_with_augmentation() {
    let board = Leaderboard {
        champion: "x".into(),
        entries: vec![
            entry(Architecture::Unet, true, 0.75),
            entry(Architecture::EfficientVgg, false, 0.5),
            entry(Architecture::Unet, false, 0.625),
        ],
    };
    let csv = crate::common::frames::csv_bytes(&mut ablation_frame(&board).unwrap()).unwrap();
    assert_eq!(
        String::from_utf8(csv).unwrap(),
        "model,test_segment_without,test_segment_with,difference\n\
         efficient_vgg x0.25,0.5,,\n\
         unet x0.25,0.625,0.75,0.125\n"
    );
    let lines = leaderboard_lines(&board);
    assert_eq!(lines.len(), 1 + 3 + 1, "{lines:?}");
    assert_eq!(
        lines[4],
        "ablation unet x0.25: test 62.5% without SpecAugment, 75.0% with (+12.5 points)"
    );
}

#[test]
fn confusion_lines_put_each_actual_class_on_its_own_row() {
    let classes = vec!["classical".to_string(), "rock".to_string()];
    let lines = confusion_lines("t", &classes, &[vec![5, 1], vec![0, 7]]);
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0], "t");
    assert!(lines[1].contains("classi") && lines[1].contains("rock"));
    let cells = |l: &str| l.split_whitespace().skip(1).collect::<Vec<_>>().join(",");
    assert!(lines[2].starts_with("classi"));
    assert_eq!(cells(&lines[2]), "5,1");
    assert_eq!(cells(&lines[3]), "0,7");
}

#[test]
fn the_leaderboard_table_ranks_every_member_and_flags_the_champion() {
    use polars::prelude::AnyValue;
    let board = Leaderboard {
        champion: entry(Architecture::EfficientVgg, false, 0.5).member,
        entries: vec![
            entry(Architecture::Unet, true, 0.75),
            entry(Architecture::EfficientVgg, false, 0.5),
        ],
    };
    let df = leaderboard_frame(&board).unwrap();
    assert_eq!(df.shape(), (2, 15));
    let names = crate::common::frames::column_names(&df);
    assert_eq!(names[..3], ["rank", "member", "arch"]);
    assert_eq!(names[14], "champion");
    let rank = df.column("rank").unwrap().u64().unwrap();
    assert_eq!(rank.iter().flatten().collect::<Vec<_>>(), [1, 2]);
    let champion = df.column("champion").unwrap().bool().unwrap();
    assert_eq!(champion.iter().flatten().collect::<Vec<_>>(), [false, true]);
    let row = df.get_row(0).unwrap().0;
    assert_eq!(row[1], AnyValue::String(&board.entries[0].member));
    assert_eq!(row[2], AnyValue::String("unet"));
    assert_eq!(row[3], AnyValue::Float64(0.25));
    assert_eq!(row[4], AnyValue::Boolean(true));
    assert_eq!(row[10], AnyValue::Float64(0.75));
    // The JSON leaderboard and the table agree on every member's test accuracy.
    let test = df.column("test_segment_accuracy").unwrap().f64().unwrap();
    let from_json: Vec<f64> = board
        .entries
        .iter()
        .map(|e| e.test_segment_accuracy)
        .collect();
    assert_eq!(test.iter().flatten().collect::<Vec<_>>(), from_json);
}
