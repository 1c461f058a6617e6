use polars::prelude::AnyValue;

use super::*;

fn record(epoch: usize) -> fit::EpochRecord {
    let e = epoch as f64;
    fit::EpochRecord {
        epoch,
        learning_rate: 1e-3 / e,
        train_loss: 2.0 / e,
        train_accuracy: 0.1 * e,
        val_loss: 2.5 / e,
        val_accuracy: 0.09 * e,
        val_track_accuracy: 0.095 * e,
    }
}

#[test]
fn the_history_table_has_one_row_per_epoch_in_order() {
    let history: Vec<fit::EpochRecord> = (1..=4).map(record).collect();
    let df = history_frame(&history).unwrap();
    assert_eq!(
        crate::common::frames::column_names(&df),
        [
            "epoch",
            "learning_rate",
            "train_loss",
            "train_accuracy",
            "val_loss",
            "val_accuracy",
            "val_track_accuracy"
        ]
    );
    assert_eq!(df.height(), 4);
    for (i, r) in history.iter().enumerate() {
        let row = df.get_row(i).unwrap().0;
        assert_eq!(row[0], AnyValue::UInt64(r.epoch as u64));
        let floats = [
            r.learning_rate,
            r.train_loss,
            r.train_accuracy,
            r.val_loss,
            r.val_accuracy,
            r.val_track_accuracy,
        ];
        for (got, want) in row[1..].iter().zip(floats) {
            assert_eq!(*got, AnyValue::Float64(want));
        }
    }
}

#[test]
fn the_history_csv_keeps_the_hand_written_header_and_round_trips_every_float() {
    let history: Vec<fit::EpochRecord> = (1..=3).map(record).collect();
    let csv = crate::common::frames::csv_bytes(&mut history_frame(&history).unwrap()).unwrap();
    let csv = String::from_utf8(csv).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "epoch,learning_rate,train_loss,train_accuracy,val_loss,val_accuracy,val_track_accuracy"
    );
    assert_eq!(lines.len(), 4);
    for (line, r) in lines[1..].iter().zip(&history) {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(fields[0], r.epoch.to_string());
        let floats: Vec<f64> = fields[1..].iter().map(|f| f.parse().unwrap()).collect();
        assert_eq!(
            floats,
            [
                r.learning_rate,
                r.train_loss,
                r.train_accuracy,
                r.val_loss,
                r.val_accuracy,
                r.val_track_accuracy
            ]
        );
    }
}
