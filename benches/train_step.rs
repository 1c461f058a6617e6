//! One training step (forward, softmax cross-entropy, backward, Adam) of each of the study's networks at
//! width 1 on a batch of 48 128x128 segments, three ways, round by round so that a load swing moves all three:
//! the network as trained (convolutions on the stages' im2col + gemm kernels), the same network with every
//! convolution on candle's own `Tensor::conv2d` and its autograd backward (pooling stays the stages' own, as
//! candle's pooling backward is wrong), and a 1024^3 f32 gemm, this machine's reference rate.
//!
//! `cargo bench --bench train_step [-- ARCH]` (ARCH: `efficient_vgg`, `res_se`, `unet`, `unet_lean`; a
//! substring selects every network containing it). `ROUNDS=N` sets the timed rounds (default 3; the stock
//! steps take seconds to tens of seconds each at width 1); each network first runs one untimed step of either
//! kind. `RAYON_NUM_THREADS` sets the thread count. `PROFILE_STEPS=N` runs N steps of our network only and
//! prints no table: a clean process to attach a sampling profiler to (`perf record`).
//!
//! The first table is the whole step: min/median/max ms of each kind, samples/s, and the stock/ours ratio of
//! the medians. Its GFLOP/s counts 3 x the forward multiply-adds x 2 flops per step (forward, and the two
//! gradients of every conv and dense), an estimate of useful work, shown as a share of the gemm rate.
//! The second table looks inside our step through the conv ops' opt-in profile counters: the time spent in
//! the conv kernels (forward, input gradient, kernel gradient; the first layer's input gradient is skipped,
//! since nothing needs it) and the flops they did, from the geometry, as GFLOP/s per kind and together, the
//! share of the gemm rate that is, and the share of step time the convs take. Medians over rounds, each round's
//! rate paired with that round's gemm. Last, one line per target: stock/ours >= 3 and conv-layer rate >= 40%
//! of the gemm rate, each for every network run.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use genrelab::stages::train::classifier::{Classifier, Mode};
use genrelab::stages::train::models::{self, Architecture, ConvKernel, ModelSpec};
use genrelab::stages::train::nn::conv::profile::{self, OpTotals, Totals};
use genrelab::stages::train::nn::loss::softmax_cross_entropy;
use genrelab::stages::train::optim::Adam;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

const BATCH: usize = 48;
const DEFAULT_ROUNDS: usize = 3;
/// Our step against the stock step: at least this many times faster.
const TARGET_SPEEDUP: f64 = 3.0;
/// The conv layers' achieved rate as a share of the gemm rate: at least this.
const TARGET_CONV_SHARE: f64 = 0.40;
const GEMM_N: usize = 1024;

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn median(v: &[f64]) -> f64 {
    stats(v).1
}

/// A network, its optimizer and its dropout stream: one training step at a time.
struct Trainer {
    model: Box<dyn Classifier>,
    adam: Adam,
    dropout: ChaCha20Rng,
}

impl Trainer {
    fn new(spec: &ModelSpec, kernel: ConvKernel) -> candle_core::Result<Self> {
        let model = models::build_with(spec, [1; 32], DType::F32, &Device::Cpu, kernel)?;
        let adam = Adam::new(model.trainable(), 1e-3)?;
        Ok(Self {
            model,
            adam,
            dropout: ChaCha20Rng::seed_from_u64(3),
        })
    }

    /// Seconds for one step.
    fn step(&mut self, x: &Tensor, y: &Tensor) -> candle_core::Result<f64> {
        let started = Instant::now();
        let logits = self.model.forward(
            x,
            Mode::Train {
                rng: &mut self.dropout,
            },
        )?;
        let loss = softmax_cross_entropy(&logits, y)?;
        self.adam.backward_step(&loss)?;
        Ok(started.elapsed().as_secs_f64())
    }
}

struct Measured {
    name: String,
    params: usize,
    /// 3 x forward multiply-adds x 2 over the batch.
    estimated_flops: f64,
    ours: Vec<f64>,
    stock: Vec<f64>,
    gemm: Vec<f64>,
    convs: Vec<Totals>,
}

impl Measured {
    fn speedup(&self) -> f64 {
        median(&self.stock) / median(&self.ours)
    }

    /// Median over rounds of `f(round's conv totals, round's step seconds, round's gemm GFLOP/s)`.
    fn per_round(&self, f: impl Fn(&Totals, f64, f64) -> f64) -> f64 {
        let v: Vec<f64> = self
            .convs
            .iter()
            .zip(&self.ours)
            .zip(&self.gemm)
            .map(|((c, &s), &g)| f(c, s, g))
            .collect();
        median(&v)
    }

    fn conv_share_of_gemm(&self) -> f64 {
        self.per_round(|c, _, g| c.all().gflops() / g)
    }
}

/// A positive count from the environment variable `name`, if it is set.
fn count_from_env(name: &str) -> Result<Option<usize>, String> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(format!("{name} must be a positive integer, got {v:?}")),
        },
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The allocator setting `genrelab` makes at start-up, so the bench times what a run does.
    genrelab::tune_allocator();
    let rounds = count_from_env("ROUNDS")?.unwrap_or(DEFAULT_ROUNDS);
    let profile_steps = count_from_env("PROFILE_STEPS")?;
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let device = Device::Cpu;
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let a = Tensor::from_vec(
        (0..GEMM_N * GEMM_N)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect::<Vec<_>>(),
        (GEMM_N, GEMM_N),
        &device,
    )?;
    let gemm = || -> candle_core::Result<f64> {
        let started = Instant::now();
        let _ = a.matmul(&a)?;
        Ok(2.0 * (GEMM_N as f64).powi(3) / started.elapsed().as_secs_f64() / 1e9)
    };
    println!(
        "train_step: batch {BATCH}, 128x128, width 1, f32; {rounds} timed rounds (ROUNDS) of our step, \
         the stock step and a {GEMM_N}^3 gemm; {} threads",
        rayon::current_num_threads()
    );

    let mut measured = Vec::new();
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
        let mut ours = Trainer::new(&spec, ConvKernel::Im2colGemm)?;
        if let Some(steps) = profile_steps {
            // Only our step, so that a sampling profiler attached to the process sees nothing else.
            let started = Instant::now();
            for _ in 0..steps {
                ours.step(&x, &y)?;
            }
            eprintln!(
                "  {name}: {steps} steps of ours only in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            continue;
        }
        let mut stock = Trainer::new(&spec, ConvKernel::CandleStock)?;
        let started = Instant::now();
        // Warm-up: first-touch allocations.
        ours.step(&x, &y)?;
        stock.step(&x, &y)?;
        let mut m = Measured {
            name,
            params: models::trainable_parameters(&spec),
            estimated_flops: 3.0
                * 2.0
                * models::multiply_adds_per_segment(&spec) as f64
                * BATCH as f64,
            ours: Vec::new(),
            stock: Vec::new(),
            gemm: Vec::new(),
            convs: Vec::new(),
        };
        for _ in 0..rounds {
            profile::take();
            profile::set_enabled(true);
            let seconds = ours.step(&x, &y);
            profile::set_enabled(false);
            m.ours.push(seconds?);
            m.convs.push(profile::take());
            m.stock.push(stock.step(&x, &y)?);
            m.gemm.push(gemm()?);
        }
        eprintln!(
            "  {}: warm-up and {rounds} rounds in {:.0} s",
            m.name,
            started.elapsed().as_secs_f64()
        );
        measured.push(m);
    }
    if profile_steps.is_some() {
        // Nothing was measured against stock: no table, and no target line that would read as met.
        return Ok(());
    }

    println!();
    println!("Whole step (forward, loss, backward, Adam): ours vs the same network on candle's stock conv");
    println!(
        "{:<14} {:>10} {:>20} {:>9} {:>8} {:>8} {:>6} {:>23} {:>9} {:>10}",
        "network",
        "params",
        "ours ms min/med/max",
        "samples/s",
        "GFLOP/s",
        "gemm GF",
        "%gemm",
        "stock ms min/med/max",
        "samples/s",
        "stock/ours"
    );
    for m in &measured {
        let (lo, med, hi) = stats(&m.ours);
        let (slo, smed, shi) = stats(&m.stock);
        let gemm = median(&m.gemm);
        let rate = m.estimated_flops / med / 1e9;
        println!(
            "{:<14} {:>10} {:>6.0}/{:>6.0}/{:>6.0} {:>9.1} {:>8.1} {:>8.1} {:>5.0}% {:>7.0}/{:>7.0}/{:>7.0} {:>9.2} {:>9.1}x",
            m.name,
            m.params,
            1e3 * lo,
            1e3 * med,
            1e3 * hi,
            BATCH as f64 / med,
            rate,
            gemm,
            100.0 * rate / gemm,
            1e3 * slo,
            1e3 * smed,
            1e3 * shi,
            BATCH as f64 / smed,
            m.speedup()
        );
    }

    println!();
    println!(
        "Conv ops inside our step (forward, input gradient, kernel gradient), medians over rounds"
    );
    println!(
        "{:<14} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6}",
        "network",
        "convs",
        "GFLOP",
        "ms",
        "fwd GF/s",
        "dX GF/s",
        "dW GF/s",
        "conv GF/s",
        "%gemm",
        "%step"
    );
    for m in &measured {
        let rate = |op: fn(&Totals) -> OpTotals| m.per_round(|c, _, _| op(c).gflops());
        println!(
            "{:<14} {:>6} {:>8.1} {:>8.0} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>5.0}% {:>5.0}%",
            m.name,
            m.per_round(|c, _, _| c.all().calls as f64),
            m.per_round(|c, _, _| c.all().flops as f64 / 1e9),
            m.per_round(|c, _, _| 1e3 * c.all().seconds()),
            rate(|c| c.forward),
            rate(|c| c.grad_input),
            rate(|c| c.grad_kernel),
            rate(|c| c.all()),
            100.0 * m.conv_share_of_gemm(),
            100.0 * m.per_round(|c, s, _| c.all().seconds() / s),
        );
    }

    println!();
    let verdict = |ok: bool| if ok { "met" } else { "NOT MET" };
    let speedups: Vec<String> = measured
        .iter()
        .map(|m| {
            let s = m.speedup();
            format!("{} {s:.1}x {}", m.name, verdict(s >= TARGET_SPEEDUP))
        })
        .collect();
    let all_fast = measured.iter().all(|m| m.speedup() >= TARGET_SPEEDUP);
    println!(
        "target ours >= {TARGET_SPEEDUP}x faster than stock per step: {} ({})",
        verdict(all_fast),
        speedups.join(", ")
    );
    let shares: Vec<String> = measured
        .iter()
        .map(|m| {
            let s = m.conv_share_of_gemm();
            format!(
                "{} {:.0}% {}",
                m.name,
                100.0 * s,
                verdict(s >= TARGET_CONV_SHARE)
            )
        })
        .collect();
    let all_share = measured
        .iter()
        .all(|m| m.conv_share_of_gemm() >= TARGET_CONV_SHARE);
    println!(
        "target conv layers >= {:.0}% of the gemm rate: {} ({})",
        100.0 * TARGET_CONV_SHARE,
        verdict(all_share),
        shares.join(", ")
    );
    Ok(())
}
