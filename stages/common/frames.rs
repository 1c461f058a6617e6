//! Result tables as polars data frames, written twice: `<stem>.parquet` for tools and `<stem>.csv` for people.
//!
//! Both forms are artifacts and so must be canonical bytes: the same frame gives the same bytes on any
//! machine and under any `POLARS_MAX_THREADS`. Parquet is written uncompressed (no codec version can shift
//! the bytes), in one row group, with the statistics spelled out here rather than taken from polars'
//! defaults, and serially; CSV is written by one thread with floats in their shortest round-trip form.
//! A polars upgrade that changes the encoder's bytes is caught by the pinned digest in the tests.

use std::io::Cursor;
use std::path::Path;

use polars::prelude::{
    Column, CsvWriter, DataFrame, ParquetCompression, ParquetWriter, PolarsError, SerWriter,
    StatisticsOptions,
};

use genrelab_contract::StageError;

/// A polars failure as the stage's error, naming the table it happened in.
pub fn polars_error(table: &str) -> impl Fn(PolarsError) -> StageError + '_ {
    move |e| StageError::Invalid(format!("table `{table}`: {e}"))
}

/// A frame of equally long columns, in the order given (the column order of every written form).
pub fn frame(table: &str, columns: Vec<Column>) -> Result<DataFrame, StageError> {
    DataFrame::new_infer_height(columns).map_err(polars_error(table))
}

/// The frame's column names in order.
pub fn column_names(df: &DataFrame) -> Vec<String> {
    df.get_column_names()
        .into_iter()
        .map(|n| n.to_string())
        .collect()
}

/// Statistics fixed here so a change of polars' defaults cannot change the bytes unnoticed.
const STATISTICS: StatisticsOptions = StatisticsOptions {
    min_value: true,
    max_value: true,
    distinct_count: false,
    null_count: true,
    binary_statistics_truncate_length: None,
};

/// The frame as canonical Parquet bytes.
pub fn parquet_bytes(df: &mut DataFrame) -> Result<Vec<u8>, StageError> {
    let mut out = Vec::new();
    ParquetWriter::new(Cursor::new(&mut out))
        .with_compression(ParquetCompression::Uncompressed)
        .with_statistics(STATISTICS)
        // One row group whatever the height, so the layout never depends on a size heuristic.
        .with_row_group_size(Some(df.height().max(1)))
        .with_data_page_size(None)
        .set_parallel(false)
        .finish(df)
        .map_err(polars_error("parquet"))?;
    Ok(out)
}

/// The frame as canonical CSV bytes: a header, `,`-separated, `\n`-terminated, nulls empty.
pub fn csv_bytes(df: &mut DataFrame) -> Result<Vec<u8>, StageError> {
    let mut out = Vec::new();
    CsvWriter::new(&mut out)
        .include_header(true)
        .with_separator(b',')
        .with_line_terminator("\n".into())
        .with_float_scientific(None)
        .with_float_precision(None)
        .n_threads(1)
        .finish(df)
        .map_err(polars_error("csv"))?;
    Ok(out)
}

/// Writes `<dir>/<stem>.parquet` and `<dir>/<stem>.csv`, each through a temporary file renamed into place,
/// so a reader never sees half a table.
pub fn write_table(dir: &Path, stem: &str, df: &mut DataFrame) -> Result<(), StageError> {
    let parquet = parquet_bytes(df)?;
    let csv = csv_bytes(df)?;
    write_atomic(&dir.join(format!("{stem}.parquet")), &parquet)?;
    write_atomic(&dir.join(format!("{stem}.csv")), &csv)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StageError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).map_err(|e| StageError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| StageError::io(path, e))
}

#[cfg(test)]
#[path = "frames_tests.rs"]
mod tests;
