//! Formats shared by several stages: the JSON record tables and the tensor file.

pub mod split_tensors;
pub mod tables;
pub mod tensors;
