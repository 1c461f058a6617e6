//! Frozen-embedding classifiers: k nearest neighbours by cosine similarity, and a linear probe (multinomial
//! logistic regression) trained full-batch with Adam. Both return class probabilities per row, so the same
//! metrics score them as a network.
//!
//! Deterministic by construction: no random draw (the probe starts at zero), full-batch steps, and every sum
//! in a fixed order.

use candle_core::{DType, Device, Tensor, Var};

use crate::train::nn::loss::softmax_cross_entropy;
use crate::train::optim::Adam;

/// Row-major embeddings: `rows x dim`.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    pub values: Vec<f32>,
    pub dim: usize,
}

impl Embeddings {
    pub fn rows(&self) -> usize {
        self.values.len().checked_div(self.dim).unwrap_or(0)
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }

    /// Each row scaled to unit length (a zero row stays zero), in f64.
    fn unit_rows(&self) -> Vec<Vec<f64>> {
        (0..self.rows())
            .map(|i| {
                let row: Vec<f64> = self.row(i).iter().map(|&v| f64::from(v)).collect();
                let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
                if norm > 0.0 {
                    row.iter().map(|v| v / norm).collect()
                } else {
                    row
                }
            })
            .collect()
    }
}

/// For every query row, the vote shares of its `k` most cosine-similar train rows (ties between equally
/// similar train rows go to the lower index), as `[queries x classes]` probabilities. A tie in votes is
/// broken by the metrics' argmax (lowest class), the same on every machine.
pub fn knn(
    train: &Embeddings,
    labels: &[u32],
    classes: usize,
    queries: &Embeddings,
    k: usize,
) -> Result<Vec<f32>, String> {
    if train.dim != queries.dim || train.rows() != labels.len() || train.rows() == 0 || k == 0 {
        return Err(format!(
            "k-NN needs train rows with labels ({} rows, {} labels, dim {}) and queries of the same dim ({}), k >= 1",
            train.rows(),
            labels.len(),
            train.dim,
            queries.dim
        ));
    }
    if let Some(l) = labels.iter().find(|&&l| l as usize >= classes) {
        return Err(format!("label {l} but only {classes} classes"));
    }
    let k = k.min(train.rows());
    let reference = train.unit_rows();
    let mut out = Vec::with_capacity(queries.rows() * classes);
    for q in queries.unit_rows() {
        let mut scored: Vec<(f64, usize)> = reference
            .iter()
            .enumerate()
            .map(|(i, r)| (r.iter().zip(&q).map(|(a, b)| a * b).sum::<f64>(), i))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut votes = vec![0f32; classes];
        for &(_, i) in &scored[..k] {
            votes[labels[i] as usize] += 1.0 / k as f32;
        }
        out.extend(votes);
    }
    Ok(out)
}

/// A linear probe fitted on `train` for `steps` full-batch Adam steps at `learning_rate`, starting from
/// zero weights; returns the probabilities it gives `queries`.
pub fn linear_probe(
    train: &Embeddings,
    labels: &[u32],
    classes: usize,
    queries: &Embeddings,
    steps: usize,
    learning_rate: f64,
) -> candle_core::Result<Vec<f32>> {
    if train.dim != queries.dim || train.rows() != labels.len() || train.rows() == 0 {
        candle_core::bail!(
            "the linear probe needs labelled train rows and queries of the same dim"
        );
    }
    let device = Device::Cpu;
    let x = Tensor::from_vec(train.values.clone(), (train.rows(), train.dim), &device)?;
    let y = Tensor::from_vec(labels.to_vec(), train.rows(), &device)?;
    let w = Var::zeros((train.dim, classes), DType::F32, &device)?;
    let b = Var::zeros(classes, DType::F32, &device)?;
    let mut adam = Adam::new(
        vec![("b".to_string(), b.clone()), ("w".to_string(), w.clone())],
        learning_rate,
    )?;
    for _ in 0..steps {
        let logits = x.matmul(w.as_tensor())?.broadcast_add(b.as_tensor())?;
        adam.backward_step(&softmax_cross_entropy(&logits, &y)?)?;
    }
    let q = Tensor::from_vec(
        queries.values.clone(),
        (queries.rows(), queries.dim),
        &device,
    )?;
    let probs =
        candle_nn::ops::softmax_last_dim(&q.matmul(w.as_tensor())?.broadcast_add(b.as_tensor())?)?;
    probs.flatten_all()?.to_vec1::<f32>()
}
