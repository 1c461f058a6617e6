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

use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fused::{
    batch_stats, check_bn, check_dtypes, min_planes, run_on_pair, Operand, PairKernel, Real, Saved,
};

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
    let (mut best, mut top) = (0, v[0]);
    for (k, &candidate) in v.iter().enumerate().skip(1) {
        // Strictly greater: a tie keeps the earlier element. Written as selects, not branches, because the
        // winner of a window of noisy activations is a coin toss that a branch predictor keeps losing.
        let greater = candidate > top;
        best = if greater { k } else { best };
        top = if greater { candidate } else { top };
    }
    best
}

/// Row `y` of a plane of width `w` normalised (`z`) and activated (`a`), as the separate ops round them.
#[inline(always)]
fn activate_row<T: Real>(
    act: Activation,
    k: Channel,
    xp: &[T],
    (y, w): (usize, usize),
    z: &mut [f64],
    a: &mut [f64],
) {
    let row = &xp[y * w..(y + 1) * w];
    for ((v, z), a) in row.iter().zip(z.iter_mut()).zip(a.iter_mut()) {
        *z = normalise::<T>(k, v.f64());
        *a = activate::<T>(act, k, *z);
    }
}

/// Window `ox`'s four values, in scan order, from its top and bottom rows.
#[inline(always)]
fn window_values(top: &[f64], bottom: &[f64], ox: usize) -> [f64; 4] {
    [
        top[2 * ox],
        top[2 * ox + 1],
        bottom[2 * ox],
        bottom[2 * ox + 1],
    ]
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
                // Row by row into scratch, so that normalising runs over contiguous memory.
                let mut z = vec![0.0; g.w];
                let mut top = vec![0.0; g.w];
                let mut bottom = vec![0.0; g.w];
                for oy in 0..oh {
                    activate_row(act, k, xp, (2 * oy, g.w), &mut z, &mut top);
                    activate_row(act, k, xp, (2 * oy + 1, g.w), &mut z, &mut bottom);
                    for ox in 0..ow {
                        let a = window_values(&top, &bottom, ox);
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

impl PairKernel for BnActOp {
    fn run_pair<T: Real>(&self, x: &[T], params: &[T]) -> Result<Vec<T>> {
        self.forward(x, params)
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
        let out = run_on_pair(
            "batch norm -> activation",
            self,
            Operand::new(s1, l1, &xd, "batch norm input"),
            Operand::new(s2, l2, &np, "batch norm parameters"),
        )?;
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

/// What the backward pass's first sweep learns about one activation (per pooling window when pooled, per
/// element otherwise), so that the second sweep rebuilds the gradient reaching the batch norm without
/// normalising the input again: the winning element's index in the window (bits 0-1) and whether the
/// activation let the gradient through unscaled (bit 2).
type Route = u8;
const PASSED: Route = 4;
const WINNER: Route = 3;

impl BnActGrad<'_> {
    /// The gradient reaching the normalised value from the activation's output gradient `g`, as
    /// [`activation_grad`] gives it, from the route recorded for it.
    #[inline(always)]
    fn routed(&self, k: Channel, route: Route, g: f64) -> f64 {
        if route & PASSED != 0 {
            g
        } else {
            match self.op.act {
                Activation::Relu => 0.0,
                Activation::PRelu => k.alpha * g,
            }
        }
    }

    /// The first sweep over one plane: records each window's (or element's) route in `routes` and returns the
    /// per-plane sums of `dz`, `dz * (x - mean)` and the slope's gradient. Each sum adds its terms in the
    /// plane's row-major order, the order a dense `dz` plane would be summed in; the zeros a dense plane would
    /// hold add nothing, as a running sum that starts at +0 never becomes -0.
    fn plane_sums<T: Real>(
        &self,
        k: Channel,
        xp: &[T],
        gp: &[T],
        routes: &mut [Route],
    ) -> [f64; 3] {
        let g = self.op.geom;
        let act = self.op.act;
        let (mut s0, mut s1, mut dalpha) = (0.0, 0.0, 0.0);
        if g.pool {
            let (oh, ow) = g.out_hw();
            let (mut z_top, mut z_bottom) = (vec![0.0; g.w], vec![0.0; g.w]);
            let (mut top, mut bottom) = (vec![0.0; g.w], vec![0.0; g.w]);
            for oy in 0..oh {
                activate_row(act, k, xp, (2 * oy, g.w), &mut z_top, &mut top);
                activate_row(act, k, xp, (2 * oy + 1, g.w), &mut z_bottom, &mut bottom);
                let row = &mut routes[oy * ow..(oy + 1) * ow];
                for (ox, route) in row.iter_mut().enumerate() {
                    let m = first_max(window_values(&top, &bottom, ox));
                    let zm = window_values(&z_top, &z_bottom, ox)[m];
                    let (_, da) = activation_grad(act, k, zm, gp[oy * ow + ox].f64());
                    dalpha += da;
                    *route = m as Route | if zm >= 0.0 { PASSED } else { 0 };
                }
                // The window's top row comes before its bottom row in the plane.
                for top in [true, false] {
                    for (ox, route) in row.iter().enumerate() {
                        let m = usize::from(route & WINNER);
                        if (m < 2) != top {
                            continue;
                        }
                        let d = self.routed(k, *route, gp[oy * ow + ox].f64());
                        s0 += d;
                        s1 += d * (xp[window(g.w, oy, ox)[m]].f64() - k.mean);
                    }
                }
            }
        } else {
            for ((route, v), gv) in routes.iter_mut().zip(xp).zip(gp) {
                let z = normalise::<T>(k, v.f64());
                let (d, da) = activation_grad(act, k, z, gv.f64());
                *route = if z >= 0.0 { PASSED } else { 0 };
                dalpha += da;
                s0 += d;
                s1 += d * (v.f64() - k.mean);
            }
        }
        [s0, s1, dalpha]
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
        let per_plane = if g.pool { ohw } else { hw };
        let mut routes: Vec<Route> = vec![0; planes * per_plane];
        let partials: Vec<[f64; 3]> = if per_plane == 0 {
            vec![[0.0; 3]; planes]
        } else {
            routes
                .par_chunks_mut(per_plane)
                .enumerate()
                .with_min_len(min)
                .map(|(i, r)| {
                    let k = self.chans[i % g.c];
                    let xp = &x[i * hw..(i + 1) * hw];
                    self.plane_sums(k, xp, &dy[i * ohw..(i + 1) * ohw], r)
                })
                .collect()
        };
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
            let gp = &dy[i * ohw..(i + 1) * ohw];
            let r = &routes[i * per_plane..(i + 1) * per_plane];
            let dx = |d: f64, v: T| T::of(a * d + (b * (v.f64() - k.mean) + c0));
            if g.pool {
                // Every element as if no gradient reached it (a contiguous, branch-free sweep), then each
                // window's winner rewritten with the gradient it routed.
                for (o, v) in o.iter_mut().zip(xp) {
                    o.write(dx(0.0, *v));
                }
                for oy in 0..oh {
                    for ox in 0..ow {
                        let route = r[oy * ow + ox];
                        let j = window(g.w, oy, ox)[usize::from(route & WINNER)];
                        o[j].write(dx(self.routed(k, route, gp[oy * ow + ox].f64()), xp[j]));
                    }
                }
            } else {
                for (((o, v), gv), route) in o.iter_mut().zip(xp).zip(gp).zip(r) {
                    o.write(dx(self.routed(k, *route, gv.f64()), *v));
                }
            }
        });
        Ok(dx)
    }
}

impl PairKernel for BnActGrad<'_> {
    fn run_pair<T: Real>(&self, x: &[T], dy: &[T]) -> Result<Vec<T>> {
        self.run(x, dy)
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
        let out = run_on_pair(
            "batch norm -> activation backward",
            self,
            Operand::new(s1, l1, &xd, "batch norm input"),
            Operand::new(s2, l2, &od, "output gradient"),
        )?;
        Ok((out, Shape::from(xd.to_vec())))
    }
}

#[cfg(test)]
#[path = "bn_prelu_tests.rs"]
mod tests;
