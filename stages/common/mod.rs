//! Formats shared by several stages: the JSON record tables, the result tables written as Parquet and CSV,
//! the tensor file, and standardised features read through the scaler's statistics.

pub mod frames;
pub mod scaled_reader;
pub mod split_tensors;
pub mod tables;
pub mod tensors;

/// `1 track`, `0 tracks`, `5 tracks`: a count with its noun, for summaries.
pub fn count(n: usize, singular: &str, plural: &str) -> String {
    format!("{n} {}", if n == 1 { singular } else { plural })
}
