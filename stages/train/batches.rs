//! An epoch's order and its batches: a full shuffle drawn from a ChaCha stream, then rows gathered from the
//! flat, already standardised store into `[batch, 1, n_mels, frames]` tensors.
//!
//! Bounded draws are done here rather than through `rand`'s distributions so that the sequence depends only
//! on the ChaCha stream, not on how a `rand` release happens to map words to ranges.

use candle_core::{Device, Result, Tensor};
use rand_chacha::rand_core::RngCore;
use rand_chacha::ChaCha20Rng;

/// Uniform integer in `[0, bound)` by Lemire's multiply-and-reject method (unbiased); 0 when `bound` is 0.
pub fn uniform_below(rng: &mut ChaCha20Rng, bound: u64) -> u64 {
    if bound == 0 {
        return 0;
    }
    let mut wide = u128::from(rng.next_u64()) * u128::from(bound);
    if (wide as u64) < bound {
        let threshold = bound.wrapping_neg() % bound;
        while (wide as u64) < threshold {
            wide = u128::from(rng.next_u64()) * u128::from(bound);
        }
    }
    (wide >> 64) as u64
}

/// A uniformly random permutation of `0..n` (Fisher–Yates from the last position down).
pub fn shuffled_order(n: usize, rng: &mut ChaCha20Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = uniform_below(rng, i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// Consecutive batches of `batch_size` positions of `order`; the last one holds the remainder.
pub fn batches(order: &[usize], batch_size: usize) -> std::slice::Chunks<'_, usize> {
    order.chunks(batch_size.max(1))
}

/// Copies the rows `indices` (each `row_len` values long) of `values` into `out`, replacing its contents.
pub fn gather_rows(
    values: &[f32],
    row_len: usize,
    indices: &[usize],
    out: &mut Vec<f32>,
) -> Result<()> {
    out.clear();
    out.reserve(indices.len() * row_len);
    for &i in indices {
        let row = i
            .checked_mul(row_len)
            .and_then(|start| values.get(start..start.checked_add(row_len)?))
            .ok_or_else(|| candle_core::Error::Msg(format!("row {i} lies outside the store")))?;
        out.extend_from_slice(row);
    }
    Ok(())
}

/// The gathered rows as the `[batch, 1, n_mels, frames]` input every network takes.
pub fn batch_tensor(rows: Vec<f32>, n_mels: usize, frames: usize) -> Result<Tensor> {
    let per = n_mels * frames;
    if per == 0 || !rows.len().is_multiple_of(per) {
        candle_core::bail!(
            "{} values do not make whole {n_mels}x{frames} segments",
            rows.len()
        );
    }
    let batch = rows.len() / per;
    Tensor::from_vec(rows, (batch, 1, n_mels, frames), &Device::Cpu)
}

/// The labels of `indices` as the U32 tensor the loss takes.
pub fn label_tensor(labels: &[u32], indices: &[usize]) -> Result<Tensor> {
    let picked = indices
        .iter()
        .map(|&i| {
            labels
                .get(i)
                .copied()
                .ok_or_else(|| candle_core::Error::Msg(format!("label {i} lies outside the store")))
        })
        .collect::<Result<Vec<u32>>>()?;
    let n = picked.len();
    Tensor::from_vec(picked, n, &Device::Cpu)
}

#[cfg(test)]
#[path = "batches_tests.rs"]
mod tests;
