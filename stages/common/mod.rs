//! Formats shared by several stages: the JSON record tables, the tensor file, and standardised features
//! read through the scaler's statistics.

pub mod scaled_reader;
pub mod split_tensors;
pub mod tables;
pub mod tensors;
