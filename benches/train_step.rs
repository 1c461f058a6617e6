//! One training step (forward, softmax cross-entropy, backward, Adam) of each of the study's networks at
//! width 1 on a batch of 48 128x128 segments, next to this machine's f32 gemm rate, measured in the same run,
//! round by round (a step, then a gemm), so that a load swing moves both.
//!
//! `cargo bench --bench train_step [-- ARCH]` (ARCH: `efficient_vgg`, `res_se`, `unet`, `unet_lean`);
//! `RAYON_NUM_THREADS` sets the thread count. The achieved rate counts 3 x the forward multiply-adds x 2 flops
//! per step (forward, and the two gradients of every conv and dense), so it is an estimate of useful work.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use genrelab::stages::train::classifier::Mode;
use genrelab::stages::train::models::{self, Architecture, ModelSpec};
use genrelab::stages::train::nn::loss::softmax_cross_entropy;
use genrelab::stages::train::optim::Adam;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

const BATCH: usize = 48;
const ROUNDS: usize = 3;

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn main() -> candle_core::Result<()> {
    // The allocator setting `genrelab` makes at start-up, so the bench times what a run does.
    genrelab::tune_allocator();
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let device = Device::Cpu;
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let n = 1024;
    let a = Tensor::from_vec(
        (0..n * n)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect::<Vec<_>>(),
        (n, n),
        &device,
    )?;
    println!(
        "{:<14} {:>10} {:>22} {:>10} {:>9} {:>10} {:>7}",
        "network", "params", "ms/step min/med/max", "samples/s", "GFLOP/s", "gemm GF/s", "share"
    );
    for arch in [
        Architecture::EfficientVgg,
        Architecture::ResSe,
        Architecture::Unet,
        Architecture::UnetLean,
    ] {
        let name = serde_json::to_value(arch)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        let spec = ModelSpec::study(arch);
        let model = models::build(&spec, [1; 32], DType::F32, &device)?;
        let mut adam = Adam::new(model.trainable(), 1e-3)?;
        let cells = spec.n_mels * spec.frames;
        let x = Tensor::from_vec(
            (0..BATCH * cells)
                .map(|_| rng.random_range(-2.0f32..2.0))
                .collect::<Vec<_>>(),
            (BATCH, 1, spec.n_mels, spec.frames),
            &device,
        )?;
        let y = Tensor::from_vec(
            (0..BATCH as u32).map(|i| i % 10).collect::<Vec<_>>(),
            BATCH,
            &device,
        )?;
        let mut dropout = ChaCha20Rng::seed_from_u64(3);
        let mut step = || -> candle_core::Result<f64> {
            let started = Instant::now();
            let logits = model.forward(&x, Mode::Train { rng: &mut dropout })?;
            let loss = softmax_cross_entropy(&logits, &y)?;
            adam.backward_step(&loss)?;
            Ok(started.elapsed().as_secs_f64())
        };
        step()?; // warm-up: first-touch allocations
        let (mut steps, mut gemms) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            steps.push(step()?);
            let started = Instant::now();
            let _ = a.matmul(&a)?;
            gemms.push(2.0 * (n as f64).powi(3) / started.elapsed().as_secs_f64() / 1e9);
        }
        let (lo, med, hi) = stats(steps);
        let (_, gemm, _) = stats(gemms);
        let flops = 3.0 * 2.0 * models::multiply_adds_per_segment(&spec) as f64 * BATCH as f64;
        let rate = flops / med / 1e9;
        println!(
            "{:<14} {:>10} {:>8.0}/{:>5.0}/{:>6.0} {:>10.1} {:>9.1} {:>10.1} {:>6.0}%",
            name,
            models::trainable_parameters(&spec),
            1e3 * lo,
            1e3 * med,
            1e3 * hi,
            BATCH as f64 / med,
            rate,
            gemm,
            100.0 * rate / gemm
        );
    }
    Ok(())
}
