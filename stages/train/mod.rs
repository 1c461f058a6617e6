//! Training the study's CNNs with candle on the CPU, bit-identically: the networks (`models`), the layers and
//! kernels they are built from (`nn`), and the loop that fits them (`fit`, with its optimizer, augmentation,
//! schedule and metrics). Every random draw comes from a ChaCha stream the caller hands in; nothing here uses
//! candle's unseeded RNG.

pub mod augment;
pub mod batches;
pub mod classifier;
pub mod data;
pub mod fit;
pub mod latency;
pub mod metrics;
pub mod models;
pub mod nn;
pub mod optim;
pub mod schedule;
pub mod stage;

pub use stage::kind;
