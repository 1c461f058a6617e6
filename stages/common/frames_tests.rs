use std::io::Cursor;
use std::path::PathBuf;
use std::process::Command;

use polars::prelude::{Column, DataFrame, ParquetReader, SerReader};

use super::*;

/// Set by the thread-count test for the child it spawns: the folder the child writes its table into.
const CHILD_OUT: &str = "GENRELAB_FRAMES_CHILD_OUT";

/// Every column type the stages write: text, counts, floats, flags, and nulls in text, counts and floats.
fn sample(rows: usize) -> DataFrame {
    let r = rows as u64;
    frame(
        "sample",
        vec![
            Column::new(
                "name".into(),
                (0..r)
                    .map(|i| format!("member-{i:05}, \"quoted\""))
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "class".into(),
                (0..r)
                    .map(|i| (i % 7 != 0).then(|| format!("class{}", i % 5)))
                    .collect::<Vec<_>>(),
            ),
            Column::new("count".into(), (0..r).map(|i| i * i).collect::<Vec<u64>>()),
            Column::new(
                "epoch".into(),
                (0..r)
                    .map(|i| (i % 3 != 0).then_some(i))
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "score".into(),
                (0..r)
                    .map(|i| (i as f64 + 0.1) / 3.0 - 1e-7 * i as f64)
                    .collect::<Vec<f64>>(),
            ),
            Column::new(
                "gap".into(),
                (0..r)
                    .map(|i| (i % 4 != 0).then_some(1.0 / (i as f64 + 1.0)))
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "flag".into(),
                (0..r).map(|i| i % 2 == 0).collect::<Vec<bool>>(),
            ),
        ],
    )
    .unwrap()
}

fn read_parquet(bytes: &[u8]) -> DataFrame {
    ParquetReader::new(Cursor::new(bytes.to_vec()))
        .finish()
        .unwrap()
}

fn assert_same_frame(back: &DataFrame, df: &DataFrame) {
    assert_eq!(back.schema(), df.schema());
    assert!(back.equals_missing(df), "{back:?}\n!=\n{df:?}");
}

#[test]
fn the_same_frame_written_twice_gives_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut df = sample(500);
    write_table(dir.path(), "first", &mut df).unwrap();
    write_table(dir.path(), "second", &mut sample(500)).unwrap();
    for ext in ["parquet", "csv"] {
        let first = std::fs::read(dir.path().join(format!("first.{ext}"))).unwrap();
        let second = std::fs::read(dir.path().join(format!("second.{ext}"))).unwrap();
        assert!(!first.is_empty());
        assert_eq!(first, second, "{ext}");
    }
    assert_eq!(
        std::fs::read(dir.path().join("first.parquet")).unwrap(),
        parquet_bytes(&mut df).unwrap()
    );
    // Only the two tables per stem: no temporary file is left behind.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["first.csv", "first.parquet", "second.csv", "second.parquet"]
    );
}

#[test]
fn parquet_reads_back_as_the_frame_written() {
    let df = sample(300);
    let back = read_parquet(&parquet_bytes(&mut df.clone()).unwrap());
    assert_same_frame(&back, &df);
}

#[test]
fn a_one_row_and_an_empty_frame_are_written_and_read_back() {
    for rows in [0, 1] {
        let df = sample(rows);
        let back = read_parquet(&parquet_bytes(&mut df.clone()).unwrap());
        assert_same_frame(&back, &df);
        let csv = String::from_utf8(csv_bytes(&mut df.clone()).unwrap()).unwrap();
        assert_eq!(csv.lines().count(), rows + 1, "{csv}");
    }
}

#[test]
fn csv_has_a_header_shortest_floats_empty_nulls_and_quotes_where_needed() {
    let mut df = frame(
        "t",
        vec![
            Column::new("member".into(), ["a,b", "c"]),
            Column::new("best_epoch".into(), [Some(3u64), None]),
            Column::new("accuracy".into(), [0.1 + 0.2, 0.5]),
        ],
    )
    .unwrap();
    let csv = String::from_utf8(csv_bytes(&mut df).unwrap()).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("member,best_epoch,accuracy"));
    assert_eq!(
        lines.next(),
        Some(format!("\"a,b\",3,{}", 0.1 + 0.2).as_str())
    );
    assert_eq!(lines.next(), Some("c,,0.5"));
    assert_eq!(lines.next(), None);
    assert!(csv.ends_with('\n') && !csv.contains('\r'));
}

#[test]
fn frames_of_unequal_columns_are_refused_with_the_table_named() {
    let err = frame(
        "leaderboard",
        vec![
            Column::new("a".into(), [1u64, 2]),
            Column::new("b".into(), [1u64]),
        ],
    )
    .unwrap_err();
    assert!(err.to_string().contains("leaderboard"), "{err}");
}

/// Pinned so that a polars upgrade that changes the encoder's bytes fails here, before it silently changes
/// every table's digest. Update it together with `pipeline.lock` when such an upgrade is intended.
const SMALL_PARQUET_BLAKE3: &str =
    "c00ddfe1ebdee6e212db8adfde7ef7f970e8cb01f7d50a86ce03425244a19431";

#[test]
fn a_small_fixed_frame_has_the_pinned_parquet_digest() {
    let bytes = parquet_bytes(&mut sample(4)).unwrap();
    assert_eq!(blake3::hash(&bytes).to_hex().as_str(), SMALL_PARQUET_BLAKE3);
}

/// Run alone, writes into a scratch folder; spawned by the thread-count test, into the folder it names.
#[test]
fn child_writes_the_sample_table() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = std::env::var_os(CHILD_OUT)
        .map(PathBuf::from)
        .unwrap_or_else(|| scratch.path().to_path_buf());
    let mut df = sample(20_000);
    write_table(&dir, "sample", &mut df).unwrap();
    let back = read_parquet(&std::fs::read(dir.join("sample.parquet")).unwrap());
    assert_same_frame(&back, &df);
}

#[test]
fn the_bytes_do_not_depend_on_the_polars_thread_count() {
    // polars sizes its thread pool from POLARS_MAX_THREADS once per process, so each count needs its own.
    let exe = std::env::current_exe().unwrap();
    let mut written = Vec::new();
    for threads in ["1", "2"] {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(&exe)
            .args([
                "--exact",
                "common::frames::tests::child_writes_the_sample_table",
                "--test-threads",
                "1",
            ])
            .env(CHILD_OUT, dir.path())
            .env("POLARS_MAX_THREADS", threads)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The files exist only if the filter found the child test and it ran.
        let parquet = std::fs::read(dir.path().join("sample.parquet")).unwrap();
        let csv = std::fs::read(dir.path().join("sample.csv")).unwrap();
        written.push((parquet, csv));
    }
    assert!(
        written[0] == written[1],
        "bytes differ between 1 and 2 threads"
    );
    let mut df = sample(20_000);
    assert!(written[0].0 == parquet_bytes(&mut df).unwrap());
    assert!(written[0].1 == csv_bytes(&mut df).unwrap());
}
