//! Batch normalisation and PReLU as single CPU ops with hand-written backward passes.
//!
//! Built from candle's tensor ops, a training-mode batch norm allocates about eight activation-sized
//! temporaries forward and more backward, and a PReLU three; at the study's sizes that elementwise traffic
//! costs more than the convolutions. Here each layer reads its input once or twice and writes one output,
//! forward and backward.
//!
//! Results are bit-identical for any rayon thread count: every per-channel reduction is a sum of per-plane
//! partials (one plane = one batch item of one channel, summed in a fixed lane order) added in batch order,
//! so the work split only decides which thread computes a partial, never the order of any addition. Sums are
//! accumulated in f64 for both f32 and f64 tensors.

use std::sync::{Arc, Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Whether `x` can take the fused ops: a CPU tensor of f32 or f64. Anything else stays on the composed
/// tensor-op path.
pub fn supports(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// Training-mode batch norm of `x` [b, c, h, w] over the batch and spatial axes: `y = (x - mean) /
/// sqrt(var + eps) * gamma + beta` with the batch mean and biased batch variance, differentiable in `x`,
/// `gamma` and `beta` (the statistics' dependence on `x` included). Also returns those two statistics as
/// detached [c] tensors in `x`'s dtype, for the running averages.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dims = check_bn(x, gamma, beta)?;
    let saved = Arc::new(OnceLock::new());
    let op = BatchNormOp {
        dims,
        eps,
        stats: Stats::Batch(saved.clone()),
    };
    let y = x
        .contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    let Some(s) = saved.get() else {
        bail!("batch norm: the forward pass left no statistics");
    };
    let stat = |v: &[f64]| Tensor::from_slice(v, v.len(), x.device())?.to_dtype(x.dtype());
    Ok((y, stat(&s.mean)?, stat(&s.var)?))
}

/// Evaluation-mode batch norm: as [`batch_norm_train`] but normalising with the given `mean` and `var` [c],
/// which are constants (no gradient reaches them).
pub fn batch_norm_eval(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let dims = check_bn(x, gamma, beta)?;
    let to_f64 = |t: &Tensor| -> Result<Vec<f64>> {
        if t.dims() != [dims.1] {
            bail!(
                "batch norm: statistics of shape {:?} for {} channels",
                t.dims(),
                dims.1
            );
        }
        t.detach().to_dtype(DType::F64)?.to_vec1()
    };
    let mean = to_f64(mean)?;
    let invstd = to_f64(var)?
        .iter()
        .map(|v| 1.0 / (v + eps).sqrt())
        .collect();
    let op = BatchNormOp {
        dims,
        eps,
        stats: Stats::Fixed(Saved {
            mean,
            var: Vec::new(),
            invstd,
        }),
    };
    x.contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)
}

/// PReLU with one slope per channel: `y = relu(x) + alpha * (x - relu(x))` for `x` [b, c, h, w] and `alpha`
/// [c], differentiable in both. As for the composition of candle's ops, the gradient with respect to `x` is
/// `dy` where `x >= 0` and `alpha * dy` elsewhere.
pub fn prelu(x: &Tensor, alpha: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if alpha.dims() != [c] {
        bail!("prelu: slopes of shape {:?} for {c} channels", alpha.dims());
    }
    check_dtypes("prelu", x, &[alpha])?;
    x.contiguous()?.apply_op2(
        &alpha.contiguous()?,
        PReluOp {
            dims: (b, c, h * w),
        },
    )
}

/// `prelu(a + b)` (a residual add and its activation) as one op: `a`, `b` [b, c, h, w] and `alpha` [c],
/// differentiable in all three. The sum is rounded to the dtype before the activation, as the separate add
/// stores it; both addends receive the same gradient.
pub fn prelu_of_sum(a: &Tensor, b: &Tensor, alpha: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = a.dims4()?;
    if b.dims() != a.dims() {
        bail!("prelu of sum: addends {:?} and {:?}", a.dims(), b.dims());
    }
    if alpha.dims() != [c] {
        bail!("prelu: slopes of shape {:?} for {c} channels", alpha.dims());
    }
    check_dtypes("prelu of sum", a, &[b, alpha])?;
    a.contiguous()?.apply_op3(
        &b.contiguous()?,
        &alpha.contiguous()?,
        PReluSumOp {
            dims: (n, c, h * w),
        },
    )
}

struct PReluSumOp {
    dims: (usize, usize, usize),
}

impl PReluSumOp {
    fn forward<T: Real>(&self, a: &[T], b: &[T], alpha: &[T]) -> Result<Vec<T>> {
        let (_, c, hw) = self.dims;
        let alpha = to_f64(alpha);
        let (y, _) = zip_planes::<T, false, _>(a, b, hw, c, |ch| {
            let k = alpha[ch];
            move |u, v| {
                let s = T::of(u + v).f64();
                (if s > 0.0 { s } else { 0.0 + k * s }, 0.0)
            }
        })?;
        Ok(y)
    }

    /// The gradient reaching the sum, and per-channel sums of `dy * s` where `s < 0` (the slopes' gradient).
    fn backward<T: Real>(
        &self,
        a: &[T],
        b: &[T],
        dy: &[T],
        alpha: &[f64],
    ) -> Result<(Vec<T>, Vec<f64>)> {
        let (n, c, hw) = self.dims;
        if a.len() != n * c * hw || b.len() != a.len() || dy.len() != a.len() {
            bail!("prelu of sum backward: operand sizes");
        }
        let (ds, partials) =
            super::bn_prelu::fill_planes::<T, f64>(n * c, hw, min_planes(hw), |i, o| {
                let k = alpha[i % c];
                let span = i * hw..(i + 1) * hw;
                let mut da = 0.0;
                for (o, ((u, v), g)) in o
                    .iter_mut()
                    .zip(a[span.clone()].iter().zip(&b[span.clone()]).zip(&dy[span]))
                {
                    let s = T::of(u.f64() + v.f64()).f64();
                    let g = g.f64();
                    if s < 0.0 {
                        o.write(T::of(k * g));
                        da += g * s;
                    } else {
                        o.write(T::of(g));
                    }
                }
                da
            });
        let mut sums = vec![0.0; c];
        for (i, p) in partials.iter().enumerate() {
            sums[i % c] += p;
        }
        Ok((ds, sums))
    }
}

impl CustomOp3 for PReluSumOp {
    fn name(&self) -> &'static str {
        "prelu-of-sum"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = l1.dims();
        let c = [self.dims.1];
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(a), CpuStorage::F32(b), CpuStorage::F32(k)) => {
                CpuStorage::F32(self.forward(
                    operand(a, l1, dims, "addend")?,
                    operand(b, l2, dims, "addend")?,
                    operand(k, l3, &c, "prelu slopes")?,
                )?)
            }
            (CpuStorage::F64(a), CpuStorage::F64(b), CpuStorage::F64(k)) => {
                CpuStorage::F64(self.forward(
                    operand(a, l1, dims, "addend")?,
                    operand(b, l2, dims, "addend")?,
                    operand(k, l3, &c, "prelu slopes")?,
                )?)
            }
            (a, b, k) => bail!(
                "prelu of sum: needs f32 or f64 operands of one dtype, got {:?}, {:?}, {:?}",
                a.dtype(),
                b.dtype(),
                k.dtype()
            ),
        };
        Ok((out, Shape::from(dims)))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        alpha: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = self.dims.1;
        let op = PReluSumGrad {
            op: PReluSumOp { dims: self.dims },
            alpha: alpha.detach().to_dtype(DType::F64)?.to_vec1()?,
            sums: OnceLock::new(),
        };
        let ds = a.apply_op3_no_bwd(b, &grad.contiguous()?, &op)?;
        let Some(sums) = op.sums.get() else {
            bail!("prelu of sum backward left no sums");
        };
        let dalpha = Tensor::from_slice(sums, c, a.device())?.to_dtype(a.dtype())?;
        Ok((Some(ds.clone()), Some(ds), Some(dalpha)))
    }
}

/// The backward pass over (a, b, dy): the sum's gradient as output, the slopes' gradient left in `sums`.
struct PReluSumGrad {
    op: PReluSumOp,
    alpha: Vec<f64>,
    sums: OnceLock<Vec<f64>>,
}

impl CustomOp3 for PReluSumGrad {
    fn name(&self) -> &'static str {
        "prelu-of-sum-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = l1.dims();
        let (out, sums) = match (s1, s2, s3) {
            (CpuStorage::F32(a), CpuStorage::F32(b), CpuStorage::F32(g)) => {
                let (o, s) = self.op.backward(
                    operand(a, l1, dims, "addend")?,
                    operand(b, l2, dims, "addend")?,
                    operand(g, l3, dims, "output gradient")?,
                    &self.alpha,
                )?;
                (CpuStorage::F32(o), s)
            }
            (CpuStorage::F64(a), CpuStorage::F64(b), CpuStorage::F64(g)) => {
                let (o, s) = self.op.backward(
                    operand(a, l1, dims, "addend")?,
                    operand(b, l2, dims, "addend")?,
                    operand(g, l3, dims, "output gradient")?,
                    &self.alpha,
                )?;
                (CpuStorage::F64(o), s)
            }
            (a, b, g) => bail!(
                "prelu of sum backward: needs f32 or f64 operands of one dtype, got {:?}, {:?}, {:?}",
                a.dtype(),
                b.dtype(),
                g.dtype()
            ),
        };
        let _ = self.sums.set(sums);
        Ok((out, Shape::from(dims)))
    }
}

pub(super) fn check_dtypes(what: &str, x: &Tensor, others: &[&Tensor]) -> Result<()> {
    if !supports(x) {
        bail!(
            "{what}: fused op needs an f32 or f64 CPU tensor, got {:?}",
            x.dtype()
        );
    }
    for t in others {
        if t.dtype() != x.dtype() || !t.device().is_cpu() {
            bail!(
                "{what}: parameter of dtype {:?} for input of dtype {:?}",
                t.dtype(),
                x.dtype()
            );
        }
    }
    Ok(())
}

/// (batch, channels, h * w) of a batch norm's input, checked against its parameters.
pub(super) fn check_bn(x: &Tensor, gamma: &Tensor, beta: &Tensor) -> Result<(usize, usize, usize)> {
    let (b, c, h, w) = x.dims4()?;
    if gamma.dims() != [c] || beta.dims() != [c] {
        bail!(
            "batch norm: gamma {:?} and beta {:?} for {c} channels",
            gamma.dims(),
            beta.dims()
        );
    }
    if b * h * w == 0 {
        bail!("batch norm over an empty {b} x {h} x {w} batch");
    }
    check_dtypes("batch norm", x, &[gamma, beta])?;
    Ok((b, c, h * w))
}

/// The float types the kernels run on; all arithmetic goes through f64.
pub(super) trait Real: Copy + Send + Sync + 'static {
    fn f64(self) -> f64;
    fn of(v: f64) -> Self;
}
impl Real for f32 {
    #[inline(always)]
    fn f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn of(v: f64) -> Self {
        v as f32
    }
}
impl Real for f64 {
    #[inline(always)]
    fn f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn of(v: f64) -> Self {
        v
    }
}

/// Independent accumulators per sum, so that the additions pipeline and vectorise; combined in a fixed
/// pairwise order.
pub(super) const LANES: usize = 8;

#[inline(always)]
pub(super) fn fold(a: [f64; LANES]) -> f64 {
    ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))
}

/// Sums of `f(a[i], b[i])`'s two components over a plane, lane by lane.
#[inline(always)]
fn plane_sums<A: Real, B: Real>(a: &[A], b: &[B], f: impl Fn(f64, f64) -> (f64, f64)) -> [f64; 2] {
    let mut s = [[0.0; LANES]; 2];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (ra, rb) in (&mut ca).zip(&mut cb) {
        for l in 0..LANES {
            let (u, v) = f(ra[l].f64(), rb[l].f64());
            s[0][l] += u;
            s[1][l] += v;
        }
    }
    for (l, (x, y)) in ca.remainder().iter().zip(cb.remainder()).enumerate() {
        let (u, v) = f(x.f64(), y.f64());
        s[0][l] += u;
        s[1][l] += v;
    }
    [fold(s[0]), fold(s[1])]
}

/// Planes per rayon task: enough elements per task that the split costs nothing next to the work. The
/// split never changes a result.
pub(super) fn min_planes(hw: usize) -> usize {
    (1usize << 14).div_ceil(hw.max(1))
}

/// Per-channel totals of per-plane partials, added in batch order.
fn per_channel(partials: &[[f64; 2]], c: usize) -> Vec<[f64; 2]> {
    let mut out = vec![[0.0; 2]; c];
    for (i, p) in partials.iter().enumerate() {
        let o = &mut out[i % c];
        o[0] += p[0];
        o[1] += p[1];
    }
    out
}

/// Per-plane sums of `f(channel)(a[i], b[i])` over planes of `hw` elements of `c` channels.
fn plane_partials<T: Real, G: Fn(f64, f64) -> (f64, f64)>(
    a: &[T],
    b: &[T],
    hw: usize,
    c: usize,
    f: impl Fn(usize) -> G + Sync,
) -> Vec<[f64; 2]> {
    a.par_chunks(hw)
        .zip(b.par_chunks(hw))
        .enumerate()
        .with_min_len(min_planes(hw))
        .map(|(i, (pa, pb))| plane_sums(pa, pb, f(i % c)))
        .collect()
}

/// A new buffer with `out[i] = f(channel)(a[i], b[i]).0` over planes of `hw` elements of `c` channels, and the
/// per-plane sums of the second component when `SUM`. Written in place of a zero-filled buffer: the fill
/// would be one more pass over memory than the op itself needs.
pub(super) fn zip_planes<T: Real, const SUM: bool, G: Fn(f64, f64) -> (f64, f64)>(
    a: &[T],
    b: &[T],
    hw: usize,
    c: usize,
    f: impl Fn(usize) -> G + Sync,
) -> Result<(Vec<T>, Vec<f64>)> {
    let len = a.len();
    if b.len() != len || hw == 0 || !len.is_multiple_of(hw) {
        bail!(
            "fused op: operands of {len} and {} elements in planes of {hw}",
            b.len()
        );
    }
    let mut out: Vec<T> = Vec::with_capacity(len);
    let partials = out.spare_capacity_mut()[..len]
        .par_chunks_mut(hw)
        .zip(a.par_chunks(hw).zip(b.par_chunks(hw)))
        .enumerate()
        .with_min_len(min_planes(hw))
        .map(|(i, (o, (pa, pb)))| {
            // The channel's constants are bound once per plane, outside the element loop.
            let f = f(i % c);
            let mut s = [0.0; LANES];
            let mut co = o.chunks_exact_mut(LANES);
            let mut ca = pa.chunks_exact(LANES);
            let mut cb = pb.chunks_exact(LANES);
            for (ro, (ra, rb)) in (&mut co).zip((&mut ca).zip(&mut cb)) {
                for l in 0..LANES {
                    let (v, w) = f(ra[l].f64(), rb[l].f64());
                    ro[l].write(T::of(v));
                    if SUM {
                        s[l] += w;
                    }
                }
            }
            let rest = co.into_remainder();
            for (l, (ro, (x, y))) in rest
                .iter_mut()
                .zip(ca.remainder().iter().zip(cb.remainder()))
                .enumerate()
            {
                let (v, w) = f(x.f64(), y.f64());
                ro.write(T::of(v));
                if SUM {
                    s[l] += w;
                }
            }
            fold(s)
        })
        .collect();
    // SAFETY: the first `len` slots were all written above: `out[..len]`, `a` and `b` have the same length,
    // so their chunks of `hw`, and those chunks' runs of LANES and remainders, pair up one to one.
    unsafe { out.set_len(len) };
    Ok((out, partials))
}

/// The contiguous data of an operand whose shape must be `expected`.
pub(super) fn operand<'a, T>(
    data: &'a [T],
    layout: &Layout,
    expected: &[usize],
    what: &str,
) -> Result<&'a [T]> {
    if layout.dims() != expected {
        bail!(
            "{what} has shape {:?}, expected {expected:?}",
            layout.dims()
        );
    }
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{what} is not contiguous"),
    }
}

/// One operand of a kernel: its storage, layout, the dims it must have and what it is (named in errors).
pub(super) struct Operand<'a> {
    pub(super) storage: &'a CpuStorage,
    pub(super) layout: &'a Layout,
    pub(super) dims: &'a [usize],
    pub(super) what: &'a str,
}

impl<'a> Operand<'a> {
    pub(super) fn new(
        storage: &'a CpuStorage,
        layout: &'a Layout,
        dims: &'a [usize],
        what: &'a str,
    ) -> Self {
        Self {
            storage,
            layout,
            dims,
            what,
        }
    }

    fn slice<T>(&self, data: &'a [T]) -> Result<&'a [T]> {
        operand(data, self.layout, self.dims, self.what)
    }
}

/// A kernel over two operands of one float type, written once for f32 and f64.
pub(super) trait PairKernel {
    fn run_pair<T: Real>(&self, a: &[T], b: &[T]) -> Result<Vec<T>>;
}

/// Runs `kernel` on two f32 or two f64 operands; any other pair is an error naming `op`.
pub(super) fn run_on_pair<K: PairKernel>(
    op: &str,
    kernel: &K,
    a: Operand<'_>,
    b: Operand<'_>,
) -> Result<CpuStorage> {
    Ok(match (a.storage, b.storage) {
        (CpuStorage::F32(x), CpuStorage::F32(y)) => {
            CpuStorage::F32(kernel.run_pair(a.slice(x)?, b.slice(y)?)?)
        }
        (CpuStorage::F64(x), CpuStorage::F64(y)) => {
            CpuStorage::F64(kernel.run_pair(a.slice(x)?, b.slice(y)?)?)
        }
        (x, y) => bail!(
            "{op}: needs f32 or f64 operands of one dtype, got {:?} and {:?}",
            x.dtype(),
            y.dtype()
        ),
    })
}

pub(super) fn to_f64<T: Real>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.f64()).collect()
}

/// Per-channel mean and biased variance of `x` [b, c, hw]; the statistics as saved for the backward pass.
#[derive(Debug)]
pub(super) struct Saved {
    pub(super) mean: Vec<f64>,
    pub(super) var: Vec<f64>,
    pub(super) invstd: Vec<f64>,
}

enum Stats {
    /// Training: computed from the batch by the forward pass and shared with the caller.
    Batch(Arc<OnceLock<Saved>>),
    /// Evaluation: given.
    Fixed(Saved),
}

struct BatchNormOp {
    dims: (usize, usize, usize),
    eps: f64,
    stats: Stats,
}

impl BatchNormOp {
    fn saved(&self) -> Result<&Saved> {
        match &self.stats {
            Stats::Fixed(s) => Ok(s),
            Stats::Batch(s) => match s.get() {
                Some(s) => Ok(s),
                None => bail!("batch norm: backward before forward"),
            },
        }
    }

    fn forward<T: Real>(&self, x: &[T], gamma: &[T], beta: &[T]) -> Result<Vec<T>> {
        let (_, c, hw) = self.dims;
        let saved = match &self.stats {
            Stats::Fixed(s) => s,
            Stats::Batch(cell) => {
                let s = batch_stats(x, self.dims, self.eps);
                // A repeated forward of the same op (never done by candle) would find the first result.
                let _ = cell.set(s);
                self.saved()?
            }
        };
        let scale: Vec<f64> = (0..c)
            .map(|ch| gamma[ch].f64() * saved.invstd[ch])
            .collect();
        let beta = to_f64(beta);
        let mean = &saved.mean;
        let (y, _) = zip_planes::<T, false, _>(x, x, hw, c, |ch| {
            let (m, s, b) = (mean[ch], scale[ch], beta[ch]);
            move |v, _| ((v - m) * s + b, 0.0)
        })?;
        Ok(y)
    }
}

/// Mean and biased variance per channel in one pass, from sums of `x - k` and its square where `k` is the
/// channel's first element: shifting by a value of the data keeps the variance free of the cancellation
/// that the raw sum of squares suffers when the mean is large against the spread.
pub(super) fn batch_stats<T: Real>(x: &[T], (b, c, hw): (usize, usize, usize), eps: f64) -> Saved {
    let shift: Vec<f64> = (0..c).map(|ch| x[ch * hw].f64()).collect();
    let partials = plane_partials(x, x, hw, c, |ch| {
        let k = shift[ch];
        move |v, _| {
            let d = v - k;
            (d, d * d)
        }
    });
    let n = (b * hw) as f64;
    let mut mean = Vec::with_capacity(c);
    let mut var = Vec::with_capacity(c);
    for (ch, [s1, s2]) in per_channel(&partials, c).into_iter().enumerate() {
        let d = s1 / n;
        mean.push(shift[ch] + d);
        var.push((s2 / n - d * d).max(0.0));
    }
    let invstd = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    Saved { mean, var, invstd }
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "batch-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, c, hw) = self.dims;
        let xd = l1.dims();
        if xd.len() != 4 || xd[..2] != [b, c] || xd[2] * xd[3] != hw {
            bail!("batch norm: input of shape {xd:?}");
        }
        let (shape, pd) = (Shape::from(xd), [c]);
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(g), CpuStorage::F32(be)) => {
                CpuStorage::F32(self.forward(
                    operand(x, l1, xd, "batch norm input")?,
                    operand(g, l2, &pd, "batch norm gamma")?,
                    operand(be, l3, &pd, "batch norm beta")?,
                )?)
            }
            (CpuStorage::F64(x), CpuStorage::F64(g), CpuStorage::F64(be)) => {
                CpuStorage::F64(self.forward(
                    operand(x, l1, xd, "batch norm input")?,
                    operand(g, l2, &pd, "batch norm gamma")?,
                    operand(be, l3, &pd, "batch norm beta")?,
                )?)
            }
            (x, g, be) => bail!(
                "batch norm: needs f32 or f64 operands of one dtype, got {:?}, {:?}, {:?}",
                x.dtype(),
                g.dtype(),
                be.dtype()
            ),
        };
        Ok((out, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let saved = self.saved()?;
        let (_, c, _) = self.dims;
        let gamma_f64: Vec<f64> = gamma.detach().to_dtype(DType::F64)?.to_vec1()?;
        let op = BatchNormGrad {
            dims: self.dims,
            train: matches!(self.stats, Stats::Batch(_)),
            mean: &saved.mean,
            invstd: &saved.invstd,
            gamma: &gamma_f64,
            want_dx: x.track_op(),
            sums: Mutex::new(None),
        };
        let grad = grad.contiguous()?;
        let dx = x.apply_op2_no_bwd(&grad, &op)?;
        let sums = match op.sums.lock() {
            Ok(mut s) => s.take(),
            Err(_) => None,
        };
        let Some(sums) = sums else {
            bail!("batch norm backward left no sums");
        };
        // dbeta = sum(dy), dgamma = sum(dy * xhat).
        let dbeta: Vec<f64> = sums.iter().map(|s| s[0]).collect();
        let dgamma: Vec<f64> = sums
            .iter()
            .zip(&saved.invstd)
            .map(|(s, is)| s[1] * is)
            .collect();
        let param = |v: Vec<f64>| Tensor::from_vec(v, c, x.device())?.to_dtype(x.dtype());
        let dx = if op.want_dx { Some(dx) } else { None };
        Ok((dx, Some(param(dgamma)?), Some(param(dbeta)?)))
    }
}

/// The batch-norm backward pass over (x, dy): the input gradient as output, the per-channel sums of `dy`
/// and `dy * (x - mean)` left in `sums`.
struct BatchNormGrad<'a> {
    dims: (usize, usize, usize),
    train: bool,
    mean: &'a [f64],
    invstd: &'a [f64],
    gamma: &'a [f64],
    want_dx: bool,
    sums: Mutex<Option<Vec<[f64; 2]>>>,
}

impl PairKernel for BatchNormGrad<'_> {
    fn run_pair<T: Real>(&self, x: &[T], dy: &[T]) -> Result<Vec<T>> {
        let (b, c, hw) = self.dims;
        let mean = self.mean;
        let partials = plane_partials(x, dy, hw, c, |ch| {
            let m = mean[ch];
            move |v, g| (g, g * (v - m))
        });
        let sums = per_channel(&partials, c);
        let n = (b * hw) as f64;
        // dx = gamma * invstd / n * (n * dy - sum(dy) - xhat * sum(dy * xhat)) in training, where the
        // statistics depend on x; gamma * invstd * dy in evaluation, where they are constants.
        let coef: Vec<[f64; 3]> = (0..c)
            .map(|ch| {
                let k = self.gamma[ch] * self.invstd[ch];
                if self.train {
                    let [s_dy, s_dyc] = sums[ch];
                    let is2 = self.invstd[ch] * self.invstd[ch];
                    [k, -k * is2 * s_dyc / n, -k * s_dy / n]
                } else {
                    [k, 0.0, 0.0]
                }
            })
            .collect();
        match self.sums.lock() {
            Ok(mut s) => *s = Some(sums),
            Err(_) => bail!("batch norm backward: poisoned sums"),
        }
        if !self.want_dx {
            return Ok(Vec::new());
        }
        let (dx, _) = zip_planes::<T, false, _>(x, dy, hw, c, |ch| {
            let ([a, b, k], m) = (coef[ch], mean[ch]);
            move |v, g| (a * g + (b * (v - m) + k), 0.0)
        })?;
        Ok(dx)
    }
}

impl CustomOp2 for BatchNormGrad<'_> {
    fn name(&self) -> &'static str {
        "batch-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = l1.dims();
        let shape = if self.want_dx {
            Shape::from(dims)
        } else {
            Shape::from(0)
        };
        let out = run_on_pair(
            "batch norm backward",
            self,
            Operand::new(s1, l1, dims, "batch norm input"),
            Operand::new(s2, l2, dims, "batch norm output gradient"),
        )?;
        Ok((out, shape))
    }
}

struct PReluOp {
    dims: (usize, usize, usize),
}

impl PairKernel for PReluOp {
    fn run_pair<T: Real>(&self, x: &[T], alpha: &[T]) -> Result<Vec<T>> {
        let (_, c, hw) = self.dims;
        let alpha = to_f64(alpha);
        // 0 + a * v rather than a * v: a zero slope gives +0, as relu does, never -0.
        let (y, _) = zip_planes::<T, false, _>(x, x, hw, c, |ch| {
            let a = alpha[ch];
            move |v, _| (if v > 0.0 { v } else { 0.0 + a * v }, 0.0)
        })?;
        Ok(y)
    }
}

impl CustomOp2 for PReluOp {
    fn name(&self) -> &'static str {
        "prelu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = l1.dims();
        let c = [self.dims.1];
        let out = run_on_pair(
            "prelu",
            self,
            Operand::new(s1, l1, dims, "prelu input"),
            Operand::new(s2, l2, &c, "prelu slopes"),
        )?;
        Ok((out, Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        alpha: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, c, _) = self.dims;
        let op = PReluGrad {
            dims: self.dims,
            alpha: alpha.detach().to_dtype(DType::F64)?.to_vec1()?,
            sums: Mutex::new(None),
        };
        let dx = x.apply_op2_no_bwd(&grad.contiguous()?, &op)?;
        let sums = match op.sums.lock() {
            Ok(mut s) => s.take(),
            Err(_) => None,
        };
        let Some(sums) = sums else {
            bail!("prelu backward left no sums");
        };
        let dalpha = Tensor::from_vec(sums, c, x.device())?.to_dtype(x.dtype())?;
        Ok((Some(dx), Some(dalpha)))
    }
}

/// The PReLU backward pass over (x, dy): the input gradient as output, the slopes' gradient (per-channel
/// sums of `dy * x` where `x < 0`) left in `sums`.
struct PReluGrad {
    dims: (usize, usize, usize),
    alpha: Vec<f64>,
    sums: Mutex<Option<Vec<f64>>>,
}

impl PairKernel for PReluGrad {
    fn run_pair<T: Real>(&self, x: &[T], dy: &[T]) -> Result<Vec<T>> {
        let (_, c, hw) = self.dims;
        let alpha = &self.alpha;
        let (dx, partials) = zip_planes::<T, true, _>(x, dy, hw, c, |ch| {
            let a = alpha[ch];
            move |v, g| if v < 0.0 { (a * g, g * v) } else { (g, 0.0) }
        })?;
        let mut sums = vec![0.0; c];
        for (i, p) in partials.iter().enumerate() {
            sums[i % c] += p;
        }
        match self.sums.lock() {
            Ok(mut s) => *s = Some(sums),
            Err(_) => bail!("prelu backward: poisoned sums"),
        }
        Ok(dx)
    }
}

impl CustomOp2 for PReluGrad {
    fn name(&self) -> &'static str {
        "prelu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = l1.dims();
        let out = run_on_pair(
            "prelu backward",
            self,
            Operand::new(s1, l1, dims, "prelu input"),
            Operand::new(s2, l2, dims, "prelu output gradient"),
        )?;
        Ok((out, Shape::from(dims)))
    }
}

#[cfg(test)]
#[path = "fused_tests.rs"]
mod tests;
