//! Softmax cross-entropy over logits, the loss every network here is trained with.

use candle_core::{Result, Tensor};

/// Mean over the batch of `-log softmax(logits)[label]`; `logits` [batch, classes], `labels` U32 [batch].
pub fn softmax_cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    candle_nn::loss::cross_entropy(logits, labels)
}
