//! candle's CPU conv2d and its backward against `stages::train::nn::conv`, on the conv shapes of a
//! network over 128x128 inputs, next to the gemm rate of this machine measured in the same run.
//!
//! `cargo bench --bench conv [-- FILTER]` runs the convs whose name contains FILTER (e.g. `"s2"`);
//! `RAYON_NUM_THREADS` sets the thread count of both implementations.
//!
//! Columns: candle's and our times; the ratio of their medians; our rate, also as a share of the
//! 1024^3 gemm rate (`%peak`) and of "gemm-only", the same per-item gemms as our op on fixed
//! operands without im2col or tiling, spread over the pool (`%gemm`, above 100 where our L2-sized
//! tiles beat one big gemm per item).

use candle_core::{DType, Device, Result, Tensor};
use gemm::Parallelism;
use genrelab::stages::train::nn::conv::{conv2d, conv2d_grad_input, conv2d_grad_kernel};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;
use std::time::Instant;

const BATCH: usize = 48;
const RUNS: usize = 5;

/// (c_in, c_out, input height = width, stride) of each 3x3 conv with padding 1.
const LAYERS: &[(usize, usize, usize, usize)] = &[
    (1, 16, 128, 1),
    (16, 32, 64, 1),
    (32, 64, 32, 1),
    (32, 64, 64, 2),
    (64, 128, 32, 1),
    (128, 256, 16, 1),
];

const K: usize = 3;
const PAD: usize = 1;

fn random(shape: &[usize], rng: &mut ChaCha20Rng) -> Result<Tensor> {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

fn secs(f: &mut dyn FnMut() -> Result<Tensor>) -> Result<f64> {
    let t = Instant::now();
    let out = f()?;
    let s = t.elapsed().as_secs_f64();
    drop(out);
    Ok(s)
}

struct Stats {
    min: f64,
    med: f64,
    max: f64,
}

fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(f64::total_cmp);
    Stats {
        min: v[0],
        med: v[v.len() / 2],
        max: v[v.len() - 1],
    }
}

/// Alternates the two implementations run by run after one warm-up call of each.
fn compare(
    stock: &mut dyn FnMut() -> Result<Tensor>,
    ours: &mut dyn FnMut() -> Result<Tensor>,
) -> Result<(Stats, Stats)> {
    let (a, b) = (stock()?, ours()?);
    let err = (a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f64>()?;
    let scale = b
        .to_dtype(DType::F64)?
        .abs()?
        .max_all()?
        .to_scalar::<f64>()?;
    assert!(
        err <= 1e-4 * scale,
        "implementations disagree: {err} vs scale {scale}"
    );
    drop((a, b));
    let (mut ts, mut to) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        ts.push(secs(stock)?);
        to.push(secs(ours)?);
    }
    Ok((stats(ts), stats(to)))
}

/// A gemm shape: (m, n, k) and the (row, column) strides of lhs and rhs; dst is row-major.
type GemmShape = ((usize, usize, usize), (usize, usize), (usize, usize));

/// Seconds for `reps` products, each gemm using the whole pool, or the products spread over the
/// pool one single-threaded gemm each.
fn gemm_secs(((m, n, k), (lrs, lcs), (rrs, rcs)): GemmShape, reps: usize, per_item: bool) -> f64 {
    let lhs = vec![0.5f32; m * k];
    let rhs = vec![0.25f32; k * n];
    let mut dst = vec![0f32; reps * m * n];
    let run = |d: &mut [f32], par: Parallelism| unsafe {
        gemm::gemm(
            m,
            n,
            k,
            d.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            lcs as isize,
            lrs as isize,
            rhs.as_ptr(),
            rcs as isize,
            rrs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    };
    let t = Instant::now();
    if per_item {
        dst.par_chunks_mut(m * n)
            .for_each(|d| run(d, Parallelism::None));
    } else {
        let threads = Parallelism::Rayon(rayon::current_num_threads());
        dst.chunks_mut(m * n).for_each(|d| run(d, threads));
    }
    t.elapsed().as_secs_f64()
}

fn gemm_gflops(shape: GemmShape, reps: usize, per_item: bool) -> f64 {
    let _ = gemm_secs(shape, reps, per_item);
    let best = (0..RUNS)
        .map(|_| gemm_secs(shape, reps, per_item))
        .fold(f64::INFINITY, f64::min);
    let (m, n, k) = shape.0;
    2.0 * (m * n * k * reps) as f64 / best / 1e9
}

fn main() -> Result<()> {
    let threads = rayon::current_num_threads();
    let t0 = Instant::now();
    let peak = gemm_gflops(((1024, 1024, 1024), (1024, 1), (1024, 1)), 1, false);
    println!(
        "threads: rayon {threads}, candle matmul {}; batch {BATCH}; {RUNS} runs each, alternating; ms min/median/max",
        candle_core::utils::get_num_threads()
    );
    println!("f32 gemm 1024^3 (gemm 0.19.0, same build): {peak:.1} GFLOP/s\n");
    println!(
        "{:<22} {:<5} {:>22} {:>22} {:>7} {:>8} {:>6} {:>9} {:>6}",
        "conv", "op", "candle ms", "ours ms", "speedup", "GFLOP/s", "%peak", "gemm-only", "%gemm"
    );
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let (mut total_stock, mut total_ours, mut total_flop) = (0.0, 0.0, 0.0);
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_default();
    for &(c_in, c_out, hw, s) in LAYERS {
        let name = format!("{c_in}->{c_out} @{hw}x{hw} s{s}");
        if !name.contains(&filter) {
            continue;
        }
        let x = random(&[BATCH, c_in, hw, hw], &mut rng)?;
        let k = random(&[c_out, c_in, K, K], &mut rng)?;
        let out_hw = (hw + 2 * PAD - K) / s + 1;
        let grad = random(&[BATCH, c_out, out_hw, out_hw], &mut rng)?;
        let ckk = c_in * K * K;
        let ohw = out_hw * out_hw;
        let flop = 2.0 * (BATCH * c_out * ohw * ckk) as f64;
        let out_padding = hw - ((out_hw - 1) * s + K - 2 * PAD);
        // The gemm of each op per batch item, with the operand layouts the conv uses.
        let shapes: [GemmShape; 3] = [
            ((c_out, ohw, ckk), (ckk, 1), (ohw, 1)),
            ((ckk, ohw, c_out), (1, ckk), (ohw, 1)),
            ((c_out, ckk, ohw), (ohw, 1), (1, ohw)),
        ];
        let results = [
            compare(&mut || x.conv2d(&k, PAD, s, 1, 1), &mut || {
                conv2d(&x, &k, s, PAD)
            })?,
            compare(
                &mut || grad.conv_transpose2d(&k, PAD, out_padding, s, 1),
                &mut || conv2d_grad_input(&grad, &k, (hw, hw), s, PAD),
            )?,
            compare(
                // What candle's backprop does for the kernel gradient.
                &mut || {
                    let g = x
                        .transpose(0, 1)?
                        .conv2d(&grad.transpose(0, 1)?, PAD, 1, s, 1)?
                        .transpose(0, 1)?;
                    let (_, _, h, w) = g.dims4()?;
                    if h != K || w != K {
                        g.narrow(2, 0, K)?.narrow(3, 0, K)
                    } else {
                        Ok(g)
                    }
                },
                &mut || conv2d_grad_kernel(&x, &grad, (K, K), s, PAD),
            )?,
        ];
        for ((op, (st, ou)), shape) in ["fwd", "dx", "dw"].iter().zip(results).zip(shapes) {
            let gemm_only = gemm_gflops(shape, BATCH, true);
            let gf = flop / ou.med / 1e9;
            println!(
                "{:<22} {:<5} {:>6.1} {:>6.1} {:>7.1} {:>6.1} {:>6.1} {:>7.1} {:>7.2}x {:>8.1} {:>5.0}% {:>9.1} {:>5.0}%",
                name,
                op,
                st.min * 1e3,
                st.med * 1e3,
                st.max * 1e3,
                ou.min * 1e3,
                ou.med * 1e3,
                ou.max * 1e3,
                st.med / ou.med,
                gf,
                100.0 * gf / peak,
                gemm_only,
                100.0 * gf / gemm_only
            );
            total_stock += st.med;
            total_ours += ou.med;
            total_flop += flop;
        }
    }
    let gf = total_flop / total_ours / 1e9;
    let peak_end = gemm_gflops(((1024, 1024, 1024), (1024, 1), (1024, 1)), 1, false);
    println!("\nf32 gemm 1024^3 again at the end: {peak_end:.1} GFLOP/s (the load on the machine shows in the difference)");
    println!(
        "all convs, fwd+dx+dw medians: candle {:.0} ms, ours {:.0} ms, speedup {:.2}x, ours {:.1} GFLOP/s = {:.0}% of the 1024^3 gemm",
        total_stock * 1e3,
        total_ours * 1e3,
        total_stock / total_ours,
        gf,
        100.0 * gf / peak
    );
    println!("bench time {:.0} s", t0.elapsed().as_secs_f64());
    Ok(())
}
