//! Batch norm followed by an activation (PReLU or ReLU), and optionally by a 2 x 2 max pool, as one CPU op.
//!
//! Chained as separate ops, every stage writes an activation-sized tensor forward and reads it back in the
//! backward pass; fused, the forward pass reads the input twice (statistics, then output) and writes only the
//! final (possibly pooled) output, and the backward pass reads input and output gradient twice and writes the
//! input gradient once. The intermediate values are recomputed from the input, rounded to the tensor's dtype
//! exactly where the chain of separate fused ops rounds them, so that the forward output matches that chain
//! bit for bit.
//!
//! The statistics are those of [`super::fused`] (f64 sums of per-plane partials added in batch order), so
//! results do not depend on the rayon thread count. Pooling follows Keras "valid" (odd trailing rows and
//! columns are dropped) and sends a window's gradient to its first maximal element in scan order, as
//! TensorFlow does.

use std::mem::MaybeUninit;
use std::sync::{Arc, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fused::{batch_stats, check_bn, check_dtypes, min_planes, operand, Real, Saved};

/// The activation between the batch norm and the (optional) pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Relu,
    /// One slope per channel.
    PRelu,
}

/// Where a batch norm's statistics come from.
pub enum Statistics<'a> {
    /// Training: the batch's mean and biased variance, returned for the running averages.
    Batch,
    /// Evaluation: the running mean and variance [c], constants.
    Running { mean: &'a Tensor, var: &'a Tensor },
}

/// `act(batch_norm(x))`, max-pooled 2 x 2 when `pool`: `x` [b, c, h, w], `gamma`, `beta` [c]; the activation
/// is PReLU with slopes `alpha` [c] when given, ReLU otherwise. Differentiable in `x`, `gamma`, `beta` and `alpha`. Returns the
/// output and, in training, the batch mean and biased variance as detached [c] tensors.
pub fn batch_norm_act(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    alpha: Option<&Tensor>,
    pool: bool,
    stats: Statistics<'_>,
    eps: f64,
) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
    let act = if alpha.is_some() {
        Activation::PRelu
    } else {
        Activation::Relu
    };
    let (b, c, hw) = check_bn(x, gamma, beta)?;
    let (_, _, h, w) = x.dims4()?;
    if pool && (h < 2 || w < 2) {
        bail!("max pool 2x2 needs at least 2 x 2 inputs, got {h} x {w}");
    }
    let mut params = vec![gamma.contiguous()?, beta.contiguous()?];
    if act == Activation::PRelu {
        let Some(alpha) = alpha else {
            bail!("batch norm -> prelu: no slopes");
        };
        if alpha.dims() != [c] {
            bail!("prelu: slopes of shape {:?} for {c} channels", alpha.dims());
        }
        check_dtypes("batch norm -> prelu", x, &[alpha])?;
        params.push(alpha.contiguous()?);
    }
    // One operand for all parameters: candle's custom ops take at most three, and the concatenation's backward
    // hands each parameter its slice of the gradient.
    let params = Tensor::cat(&params, 0)?;
    let saved = Arc::new(OnceLock::new());
    let stats = match stats {
        Statistics::Batch => Stats::Batch(saved.clone()),
        Statistics::Running { mean, var } => {
            let to_f64 = |t: &Tensor| -> Result<Vec<f64>> {
                if t.dims() != [c] {
                    bail!(
                        "batch norm: statistics of shape {:?} for {c} channels",
                        t.dims()
                    );
                }
                t.detach().to_dtype(DType::F64)?.to_vec1()
            };
            let mean = to_f64(mean)?;
            let var = to_f64(var)?;
            let invstd = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
            Stats::Fixed(Saved { mean, var, invstd })
        }
    };
    let op = BnActOp {
        geom: Geom { b, c, h, w, pool },
        hw,
        eps,
        act,
        stats,
    };
    let y = x.contiguous()?.apply_op2(&params, op)?;
    let batch = match saved.get() {
        Some(s) => {
            let stat = |v: &[f64]| Tensor::from_slice(v, v.len(), x.device())?.to_dtype(x.dtype());
            Some((stat(&s.mean)?, stat(&s.var)?))
        }
        None => None,
    };
    Ok((y, batch))
}

/// Training-mode batch norm followed by PReLU; also returns the batch mean and biased variance.
pub fn batch_norm_prelu_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    alpha: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (y, stats) = batch_norm_act(x, gamma, beta, Some(alpha), false, Statistics::Batch, eps)?;
    let Some((mean, var)) = stats else {
        bail!("batch norm -> prelu: the forward pass left no statistics");
    };
    Ok((y, mean, var))
}

enum Stats {
    Batch(Arc<OnceLock<Saved>>),
    Fixed(Saved),
}

/// The shape of the op's input and whether it pools.
#[derive(Clone, Copy)]
pub(super) struct Geom {
    pub(super) b: usize,
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) pool: bool,
}

impl Geom {
    pub(super) fn out_hw(&self) -> (usize, usize) {
        if self.pool {
            (self.h / 2, self.w / 2)
        } else {
            (self.h, self.w)
        }
    }

    fn out_dims(&self) -> [usize; 4] {
        let (oh, ow) = self.out_hw();
        [self.b, self.c, oh, ow]
    }
}

/// The index (within a window's four, in scan order (0,0), (0,1), (1,0), (1,1)) of the first maximal value.
#[inline(always)]
pub(super) fn first_max(v: [f64; 4]) -> usize {
    let mut best = 0;
    for k in 1..4 {
        // Strictly greater: a tie keeps the earlier element.
        if v[k] > v[best] {
            best = k;
        }
    }
    best
}

/// Offsets within a plane of row width `w` of window (oy, ox)'s four elements, in scan order.
#[inline(always)]
pub(super) fn window(w: usize, oy: usize, ox: usize) -> [usize; 4] {
    let i = 2 * oy * w + 2 * ox;
    [i, i + 1, i + w, i + w + 1]
}

/// A new buffer of `planes` planes of `plane` elements each, every element written by `fill(plane index,
/// plane)`, which must write all of its plane; returns the buffer and `fill`'s per-plane results in order.
pub(super) fn fill_planes<T: Real, R: Send>(
    planes: usize,
    plane: usize,
    min_len: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<T>]) -> R + Sync,
) -> (Vec<T>, Vec<R>) {
    let len = planes * plane;
    let mut out: Vec<T> = Vec::with_capacity(len);
    let results = if len == 0 {
        Vec::new()
    } else {
        out.spare_capacity_mut()[..len]
            .par_chunks_mut(plane)
            .enumerate()
            .with_min_len(min_len)
            .map(|(i, o)| fill(i, o))
            .collect()
    };
    // SAFETY: every caller's `fill` writes each element of the plane it is given (each one loops over its
    // whole plane, or over every pooling window of a pooled plane, which tile it), and the planes tile
    // `out[..len]`.
    unsafe { out.set_len(len) };
    (out, results)
}

struct BnActOp {
    geom: Geom,
    hw: usize,
    eps: f64,
    act: Activation,
    stats: Stats,
}

/// A channel's constants: normalisation `z = (v - mean) * scale + beta` and the PReLU slope.
#[derive(Clone, Copy)]
struct Channel {
    mean: f64,
    scale: f64,
    beta: f64,
    alpha: f64,
}

impl BnActOp {
    fn saved(&self) -> Result<&Saved> {
        match &self.stats {
            Stats::Fixed(s) => Ok(s),
            Stats::Batch(s) => match s.get() {
                Some(s) => Ok(s),
                None => bail!("batch norm: backward before forward"),
            },
        }
    }

    fn channels(&self, saved: &Saved, params: &[f64]) -> Vec<Channel> {
        let c = self.geom.c;
        (0..c)
            .map(|ch| Channel {
                mean: saved.mean[ch],
                scale: params[ch] * saved.invstd[ch],
                beta: params[c + ch],
                alpha: if self.act == Activation::PRelu {
                    params[2 * c + ch]
                } else {
                    0.0
                },
            })
            .collect()
    }

    fn forward<T: Real>(&self, x: &[T], params: &[T]) -> Result<Vec<T>> {
        let saved = match &self.stats {
            Stats::Fixed(s) => s,
            Stats::Batch(cell) => {
                let s = batch_stats(x, (self.geom.b, self.geom.c, self.hw), self.eps);
                // A repeated forward of the same op (never done by candle) would find the first result.
                let _ = cell.set(s);
                self.saved()?
            }
        };
        let params: Vec<f64> = params.iter().map(|v| v.f64()).collect();
        let chans = self.channels(saved, &params);
        let g = self.geom;
        let (oh, ow) = g.out_hw();
        let act = self.act;
        let (y, _) = fill_planes::<T, ()>(g.b * g.c, oh * ow, min_planes(self.hw), |i, o| {
            let k = chans[i % g.c];
            let xp = &x[i * self.hw..(i + 1) * self.hw];
            let f = |v: T| activate::<T>(act, k, normalise::<T>(k, v.f64()));
            if g.pool {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let idx = window(g.w, oy, ox);
                        let a = idx.map(|j| f(xp[j]));
                        o[oy * ow + ox].write(T::of(a[first_max(a)]));
                    }
                }
            } else {
                for (o, v) in o.iter_mut().zip(xp) {
                    o.write(T::of(f(*v)));
                }
            }
        });
        Ok(y)
    }
}

/// The batch norm's output as the separate batch-norm op stores it: rounded to the dtype.
#[inline(always)]
fn normalise<T: Real>(k: Channel, v: f64) -> f64 {
    T::of((v - k.mean) * k.scale + k.beta).f64()
}

/// The activation of a normalised value, as the separate ops compute it (a zero slope gives +0, never -0).
#[inline(always)]
fn activate<T: Real>(act: Activation, k: Channel, z: f64) -> f64 {
    if z > 0.0 {
        z
    } else {
        match act {
            Activation::Relu => 0.0,
            Activation::PRelu => T::of(0.0 + k.alpha * z).f64(),
        }
    }
}

/// The gradient with respect to the normalised value `z` and the slope's share, given the activation's output
/// gradient `g`. As candle's relu and the PReLU op: the gradient passes where `z >= 0`.
#[inline(always)]
fn activation_grad(act: Activation, k: Channel, z: f64, g: f64) -> (f64, f64) {
    if z >= 0.0 {
        (g, 0.0)
    } else {
        match act {
            Activation::Relu => (0.0, 0.0),
            Activation::PRelu => (k.alpha * g, g * z),
        }
    }
}

impl CustomOp2 for BnActOp {
    fn name(&self) -> &'static str {
        "batch-norm-activation"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.geom;
        let xd = [g.b, g.c, g.h, g.w];
        let np = [l2.dims().first().copied().unwrap_or(0)];
        if np[0] != self.n_params() {
            bail!("batch norm -> activation: {} parameters", np[0]);
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(p)) => CpuStorage::F32(self.forward(
                operand(x, l1, &xd, "batch norm input")?,
                operand(p, l2, &np, "batch norm parameters")?,
            )?),
            (CpuStorage::F64(x), CpuStorage::F64(p)) => CpuStorage::F64(self.forward(
                operand(x, l1, &xd, "batch norm input")?,
                operand(p, l2, &np, "batch norm parameters")?,
            )?),
            (a, b) => bail!(
                "batch norm -> activation: needs f32 or f64 operands of one dtype, got {:?} and {:?}",
                a.dtype(),
                b.dtype()
            ),
        };
        Ok((out, Shape::from(g.out_dims().to_vec())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let saved = self.saved()?;
        let p: Vec<f64> = params.detach().to_dtype(DType::F64)?.to_vec1()?;
        let grad_op = BnActGrad {
            op: self,
            chans: self.channels(saved, &p),
            invstd: &saved.invstd,
            sums: OnceLock::new(),
        };
        let dx = x.apply_op2_no_bwd(&grad.contiguous()?, &grad_op)?;
        let Some(sums) = grad_op.sums.get() else {
            bail!("batch norm -> activation backward left no sums");
        };
        let c = self.geom.c;
        // Parameter gradients in the concatenation's order: gamma (sum(dz * xhat)), beta (sum(dz)), alpha.
        let mut dp = Vec::with_capacity(self.n_params());
        dp.extend((0..c).map(|ch| sums[ch][1] * saved.invstd[ch]));
        dp.extend((0..c).map(|ch| sums[ch][0]));
        if self.act == Activation::PRelu {
            dp.extend((0..c).map(|ch| sums[ch][2]));
        }
        let dp = Tensor::from_vec(dp, self.n_params(), x.device())?.to_dtype(x.dtype())?;
        Ok((Some(dx), Some(dp)))
    }
}

impl BnActOp {
    fn n_params(&self) -> usize {
        match self.act {
            Activation::Relu => 2 * self.geom.c,
            Activation::PRelu => 3 * self.geom.c,
        }
    }
}

/// The backward pass over (x, dy): the input gradient as output; per-channel sums of `dz`, `dz * (x - mean)`
/// and the slope's gradient left in `sums`, where `dz` is the gradient reaching the batch norm's output.
struct BnActGrad<'a> {
    op: &'a BnActOp,
    chans: Vec<Channel>,
    invstd: &'a [f64],
    sums: OnceLock<Vec<[f64; 3]>>,
}

impl BnActGrad<'_> {
    /// Fills `dz` (one plane) from the plane's input and output gradient; returns the slope's share.
    fn plane_dz<T: Real>(&self, k: Channel, xp: &[T], gp: &[T], dz: &mut [f64]) -> f64 {
        let g = self.op.geom;
        let act = self.op.act;
        let mut dalpha = 0.0;
        if g.pool {
            dz.fill(0.0);
            let (oh, ow) = g.out_hw();
            for oy in 0..oh {
                for ox in 0..ow {
                    let idx = window(g.w, oy, ox);
                    let z = idx.map(|j| normalise::<T>(k, xp[j].f64()));
                    let a = z.map(|z| activate::<T>(act, k, z));
                    let m = first_max(a);
                    let (d, da) = activation_grad(act, k, z[m], gp[oy * ow + ox].f64());
                    dz[idx[m]] = d;
                    dalpha += da;
                }
            }
        } else {
            for ((d, v), gv) in dz.iter_mut().zip(xp).zip(gp) {
                let z = normalise::<T>(k, v.f64());
                let (dd, da) = activation_grad(act, k, z, gv.f64());
                *d = dd;
                dalpha += da;
            }
        }
        dalpha
    }

    fn run<T: Real>(&self, x: &[T], dy: &[T]) -> Result<Vec<T>> {
        let g = self.op.geom;
        let hw = self.op.hw;
        let (oh, ow) = g.out_hw();
        let ohw = oh * ow;
        let planes = g.b * g.c;
        if x.len() != planes * hw || dy.len() != planes * ohw {
            bail!("batch norm -> activation backward: operand sizes");
        }
        let min = min_planes(hw);
        let partials: Vec<[f64; 3]> = (0..planes)
            .into_par_iter()
            .with_min_len(min)
            .map_init(
                || vec![0.0; hw],
                |dz, i| {
                    let k = self.chans[i % g.c];
                    let xp = &x[i * hw..(i + 1) * hw];
                    let da = self.plane_dz(k, xp, &dy[i * ohw..(i + 1) * ohw], dz);
                    let (mut s0, mut s1) = (0.0, 0.0);
                    for (d, v) in dz.iter().zip(xp) {
                        s0 += d;
                        s1 += d * (v.f64() - k.mean);
                    }
                    [s0, s1, da]
                },
            )
            .collect();
        let mut sums = vec![[0.0; 3]; g.c];
        for (i, p) in partials.iter().enumerate() {
            let o = &mut sums[i % g.c];
            for j in 0..3 {
                o[j] += p[j];
            }
        }
        let n = (g.b * hw) as f64;
        let train = matches!(self.op.stats, Stats::Batch(_));
        // dx = gamma * invstd / n * (n * dz - sum(dz) - xhat * sum(dz * xhat)) in training, where the
        // statistics depend on x; gamma * invstd * dz in evaluation, where they are constants.
        let coef: Vec<[f64; 3]> = (0..g.c)
            .map(|ch| {
                let kk = self.chans[ch].scale;
                if train {
                    let [s_dz, s_dzc, _] = sums[ch];
                    let is2 = self.invstd[ch] * self.invstd[ch];
                    [kk, -kk * is2 * s_dzc / n, -kk * s_dz / n]
                } else {
                    [kk, 0.0, 0.0]
                }
            })
            .collect();
        let _ = self.sums.set(sums);
        let (dx, _) = fill_planes::<T, ()>(planes, hw, min, |i, o| {
            let k = self.chans[i % g.c];
            let [a, b, c0] = coef[i % g.c];
            let xp = &x[i * hw..(i + 1) * hw];
            let mut dz = vec![0.0; hw];
            self.plane_dz(k, xp, &dy[i * ohw..(i + 1) * ohw], &mut dz);
            for ((o, v), d) in o.iter_mut().zip(xp).zip(&dz) {
                o.write(T::of(a * d + (b * (v.f64() - k.mean) + c0)));
            }
        });
        Ok(dx)
    }
}

impl CustomOp2 for BnActGrad<'_> {
    fn name(&self) -> &'static str {
        "batch-norm-activation-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.op.geom;
        let xd = [g.b, g.c, g.h, g.w];
        let od = g.out_dims();
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(d)) => CpuStorage::F32(self.run(
                operand(x, l1, &xd, "batch norm input")?,
                operand(d, l2, &od, "output gradient")?,
            )?),
            (CpuStorage::F64(x), CpuStorage::F64(d)) => CpuStorage::F64(self.run(
                operand(x, l1, &xd, "batch norm input")?,
                operand(d, l2, &od, "output gradient")?,
            )?),
            (a, b) => bail!(
                "batch norm -> activation backward: needs f32 or f64 operands of one dtype, got {:?} and {:?}",
                a.dtype(),
                b.dtype()
            ),
        };
        Ok((out, Shape::from(xd.to_vec())))
    }
}

#[cfg(test)]
#[path = "bn_prelu_tests.rs"]
mod tests;
