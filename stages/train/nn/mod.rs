//! Layers with Keras semantics and the kernels under them, each checked against finite differences.

pub mod conv;
pub mod loss;
