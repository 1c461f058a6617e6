//! What the training loop needs from a network, so that the loop, the optimizer and the metrics never know
//! which architecture they drive.

use candle_core::{Result, Tensor, Var};
use rand_chacha::ChaCha20Rng;

/// How a forward pass runs.
pub enum Mode<'a> {
    /// Batch statistics (and their running update), dropout masks drawn from `rng`.
    Train { rng: &'a mut ChaCha20Rng },
    /// Running statistics, no dropout: validation, test and inference.
    Eval,
}

/// A network that maps a batch of log-mel segments `[batch, 1, n_mels, frames]` (f32) to logits
/// `[batch, classes]` (softmax is applied by the loss and by the metrics, not here).
pub trait Classifier: Send {
    fn forward(&self, x: &Tensor, mode: Mode<'_>) -> Result<Tensor>;
    /// What the classification head reads, in evaluation mode: `[batch, features]`. Transfer evaluation
    /// probes these frozen embeddings (a linear probe, k nearest neighbours).
    fn embed(&self, _x: &Tensor) -> Result<Tensor> {
        candle_core::bail!("this network exposes no embedding")
    }
    /// What the optimizer updates, sorted by name.
    fn trainable(&self) -> Vec<(String, Var)>;
    /// Everything that makes up the model's weights file (trainable values and batch-norm running
    /// statistics), sorted by name: saving and restoring these restores the network exactly.
    fn state(&self) -> Vec<(String, Var)>;
}
