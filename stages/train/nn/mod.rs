//! Layers with Keras semantics and the kernels under them, each checked against finite differences.

pub mod bn_prelu;
pub mod conv;
pub mod fused;
pub mod layers;
pub mod loss;
pub mod params;
pub mod pool;
pub mod reframe;

#[cfg(test)]
pub(crate) mod gradcheck;
#[cfg(test)]
mod tests;
