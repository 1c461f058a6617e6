//! 2-D convolution without bias, NCHW input and OIHW kernel.
//!
//! On the CPU the forward pass, the input gradient and the kernel gradient are each an
//! im2col (or col2im) around one gemm per batch item. candle's own CPU conv spends most of its
//! time outside gemm (scalar tiled im2col, a direct-loop transposed conv for the input gradient,
//! and a kernel gradient computed as a conv whose kernel is the whole output map).
//!
//! Results are bit-identical for any rayon thread count: every output element is produced by a
//! single gemm whose summation order depends only on the shapes (gemm splits rows and columns
//! across threads, never the depth), and the kernel gradient sums a fixed number of per-group
//! partials in group order, where the grouping depends on the batch size alone.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::ops::{Add, AddAssign, Range};

#[path = "conv_profile.rs"]
pub mod profile;

/// Which implementation runs a convolution and its gradients. Chosen when a model is built and kept by
/// its layers, so that one network can be timed against the same network on candle's own kernels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ConvKernel {
    /// [`conv2d`]: im2col or col2im around one gemm per batch item; what training uses.
    #[default]
    Im2colGemm,
    /// candle's `Tensor::conv2d` and the backward candle's autograd derives for it (a transposed conv
    /// for the input gradient, a conv with the output map as kernel for the kernel gradient). Agrees
    /// with [`conv2d`] to rounding, not bit for bit; a speed baseline, not a training path.
    CandleStock,
}

impl ConvKernel {
    /// `x` convolved with `kernel` as [`conv2d`] defines it, by this implementation.
    pub fn conv2d(
        self,
        x: &Tensor,
        kernel: &Tensor,
        stride: usize,
        padding: usize,
    ) -> Result<Tensor> {
        match self {
            ConvKernel::Im2colGemm => conv2d(x, kernel, stride, padding),
            ConvKernel::CandleStock => x.conv2d(kernel, padding, stride, 1, 1),
        }
    }
}

/// `x` [batch, c_in, h, w] convolved with `kernel` [c_out, c_in, kh, kw], zero padding `padding`, stride `stride`.
///
/// Differentiable in both arguments; the input gradient is skipped when nothing upstream of
/// `x` needs it (e.g. for the network input). The gradients themselves are not differentiable.
/// Runs on f32 and f64 CPU tensors; other dtypes and devices fall back to candle's conv.
pub fn conv2d(x: &Tensor, kernel: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if !x.device().is_cpu() || !matches!(x.dtype(), DType::F32 | DType::F64) {
        return x.conv2d(kernel, padding, stride, 1, 1);
    }
    let geom = Geom::new(x.dims4()?, kernel.dims4()?, stride, padding)?;
    let x = x.contiguous()?;
    let kernel = kernel.contiguous()?;
    x.apply_op2(&kernel, Conv2d { geom })
}

/// The gradient of [`conv2d`] with respect to its input `x` of spatial size `input_hw`, given the
/// output gradient `grad` [batch, c_out, out_h, out_w]. Not differentiable.
pub fn conv2d_grad_input(
    grad: &Tensor,
    kernel: &Tensor,
    input_hw: (usize, usize),
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let (b, o, oh, ow) = grad.dims4()?;
    let (_, c, _, _) = kernel.dims4()?;
    let geom = Geom::new(
        (b, c, input_hw.0, input_hw.1),
        kernel.dims4()?,
        stride,
        padding,
    )?;
    geom.check_out((b, o, oh, ow))?;
    grad.contiguous()?
        .apply_op2_no_bwd(&kernel.contiguous()?, &GradInput { geom })
}

/// The gradient of [`conv2d`] with respect to its kernel of spatial size `kernel_hw`, given the
/// input `x` and the output gradient `grad`. Not differentiable.
pub fn conv2d_grad_kernel(
    x: &Tensor,
    grad: &Tensor,
    kernel_hw: (usize, usize),
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let o = grad.dim(1)?;
    let geom = Geom::new(
        (b, c, h, w),
        (o, c, kernel_hw.0, kernel_hw.1),
        stride,
        padding,
    )?;
    geom.check_out(grad.dims4()?)?;
    x.contiguous()?
        .apply_op2_no_bwd(&grad.contiguous()?, &GradKernel { geom })
}

/// Shapes of one convolution; every extent but the batch is non-zero.
#[derive(Clone, Copy, Debug)]
struct Geom {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    oh: usize,
    ow: usize,
}

impl Geom {
    fn new(
        (b, c, h, w): (usize, usize, usize, usize),
        (o, kc, kh, kw): (usize, usize, usize, usize),
        stride: usize,
        pad: usize,
    ) -> Result<Self> {
        if kc != c {
            bail!("conv2d: input has {c} channels but the kernel expects {kc}");
        }
        if [c, h, w, o, kh, kw, stride].contains(&0) {
            bail!(
                "conv2d: zero extent in input {c}x{h}x{w}, kernel {o}x{kh}x{kw} or stride {stride}"
            );
        }
        if h + 2 * pad < kh || w + 2 * pad < kw {
            bail!("conv2d: kernel {kh}x{kw} larger than the padded input {h}x{w} (padding {pad})");
        }
        Ok(Self {
            b,
            c,
            h,
            w,
            o,
            kh,
            kw,
            stride,
            pad,
            oh: (h + 2 * pad - kh) / stride + 1,
            ow: (w + 2 * pad - kw) / stride + 1,
        })
    }

    fn check_out(&self, dims: (usize, usize, usize, usize)) -> Result<()> {
        if dims != (self.b, self.o, self.oh, self.ow) {
            bail!(
                "conv2d: output gradient has shape {dims:?}, expected {:?}",
                (self.b, self.o, self.oh, self.ow)
            );
        }
        Ok(())
    }

    fn in_len(&self) -> usize {
        self.c * self.h * self.w
    }
    fn out_hw(&self) -> usize {
        self.oh * self.ow
    }
    fn out_len(&self) -> usize {
        self.o * self.out_hw()
    }
    /// Rows of the im2col matrix: one per (input channel, kernel tap).
    fn ckk(&self) -> usize {
        self.c * self.kh * self.kw
    }
    fn kernel_len(&self) -> usize {
        self.o * self.ckk()
    }
    /// A 1x1 kernel at stride 1 without padding: the im2col matrix is the input itself.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
    fn input_shape(&self) -> Shape {
        Shape::from((self.b, self.c, self.h, self.w))
    }
    fn kernel_shape(&self) -> Shape {
        Shape::from((self.o, self.c, self.kh, self.kw))
    }
    fn output_shape(&self) -> Shape {
        Shape::from((self.b, self.o, self.oh, self.ow))
    }
    /// 2 x the multiply-adds of the forward pass, which each gradient repeats in another order.
    fn flops(&self) -> u64 {
        2 * (self.b * self.out_len() * self.ckk()) as u64
    }
}

struct Conv2d {
    geom: Geom,
}
struct GradInput {
    geom: Geom,
}
struct GradKernel {
    geom: Geom,
}

/// The contiguous data of an operand whose shape must be `expected`.
fn operand<'a, T>(data: &'a [T], layout: &Layout, expected: &Shape, what: &str) -> Result<&'a [T]> {
    if layout.dims() != expected.dims() {
        bail!(
            "conv2d: {what} has shape {:?}, expected {:?}",
            layout.dims(),
            expected.dims()
        );
    }
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("conv2d: {what} is not contiguous"),
    }
}

/// Runs `f32`/`f64` instances of `run` on two operands of the same dtype.
macro_rules! dispatch {
    ($s1:expr, $l1:expr, $sh1:expr, $n1:expr, $s2:expr, $l2:expr, $sh2:expr, $n2:expr, $run:ident, $geom:expr, $out:expr) => {
        match ($s1, $s2) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => {
                let a = operand(a, $l1, &$sh1, $n1)?;
                let b = operand(b, $l2, &$sh2, $n2)?;
                Ok((CpuStorage::F32($run($geom, a, b)), $out))
            }
            (CpuStorage::F64(a), CpuStorage::F64(b)) => {
                let a = operand(a, $l1, &$sh1, $n1)?;
                let b = operand(b, $l2, &$sh2, $n2)?;
                Ok((CpuStorage::F64($run($geom, a, b)), $out))
            }
            (a, b) => bail!(
                "conv2d: needs two f32 or two f64 operands, got {:?} and {:?}",
                a.dtype(),
                b.dtype()
            ),
        }
    };
}

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "conv2d-im2col"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.geom;
        profile::record(profile::Op::Forward, g.flops(), || {
            dispatch!(
                s1,
                l1,
                g.input_shape(),
                "input",
                s2,
                l2,
                g.kernel_shape(),
                "kernel",
                forward,
                g,
                g.output_shape()
            )
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let geom = self.geom;
        let grad = grad.contiguous()?;
        // `track_op` is false exactly when no variable feeds `x`, so its gradient would be dropped.
        let grad_x = if x.track_op() {
            Some(grad.apply_op2_no_bwd(kernel, &GradInput { geom })?)
        } else {
            None
        };
        let grad_kernel = if kernel.track_op() {
            Some(x.apply_op2_no_bwd(&grad, &GradKernel { geom })?)
        } else {
            None
        };
        Ok((grad_x, grad_kernel))
    }
}

impl CustomOp2 for GradInput {
    fn name(&self) -> &'static str {
        "conv2d-im2col-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.geom;
        profile::record(profile::Op::GradInput, g.flops(), || {
            dispatch!(
                s1,
                l1,
                g.output_shape(),
                "output gradient",
                s2,
                l2,
                g.kernel_shape(),
                "kernel",
                grad_input,
                g,
                g.input_shape()
            )
        })
    }
}

impl CustomOp2 for GradKernel {
    fn name(&self) -> &'static str {
        "conv2d-im2col-grad-kernel"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.geom;
        profile::record(profile::Op::GradKernel, g.flops(), || {
            dispatch!(
                s1,
                l1,
                g.input_shape(),
                "input",
                s2,
                l2,
                g.output_shape(),
                "output gradient",
                grad_kernel,
                g,
                g.kernel_shape()
            )
        })
    }
}

/// The float types the kernels run on.
trait Elem: Copy + Send + Sync + 'static + Add<Output = Self> + AddAssign {
    const ZERO: Self;
    const ONE: Self;
}
impl Elem for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}
impl Elem for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

/// Whether to spread independent tasks over the pool (each gemm single-threaded) rather than
/// run them in turn with multi-threaded gemms. Either gives the same bits.
fn tasks_in_parallel(tasks: usize) -> bool {
    tasks >= rayon::current_num_threads()
}

fn gemm_threads() -> Parallelism {
    Parallelism::Rayon(rayon::current_num_threads())
}

/// A row-major m x n `dst` with row stride `dst_rs` becomes `lhs * rhs` (plus its old value if
/// `accumulate`), where element (i, l) of lhs is `lhs[i * lhs_rs + l * lhs_cs]` and element
/// (l, j) of rhs is `rhs[l * rhs_rs + j * rhs_cs]`.
#[allow(clippy::too_many_arguments)]
fn matmul<T: Elem>(
    dims: (usize, usize, usize),
    dst: &mut [T],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[T],
    lhs_strides: (usize, usize),
    rhs: &[T],
    rhs_strides: (usize, usize),
    parallelism: Parallelism,
) {
    // SAFETY: T and MaybeUninit<T> share their layout, gemm stores only initialised values, and
    // dst is initialised, as gemm_raw requires when accumulating.
    unsafe {
        let dst = &mut *(dst as *mut [T] as *mut [MaybeUninit<T>]);
        gemm_raw(
            dims,
            dst,
            dst_rs,
            accumulate,
            lhs,
            lhs_strides,
            rhs,
            rhs_strides,
            parallelism,
        );
    }
}

/// [`matmul`] without accumulation into a possibly uninitialised `dst`, whose m x n block gemm
/// then writes without reading it: this spares zeroing large outputs first.
#[allow(clippy::too_many_arguments)]
fn matmul_uninit<T: Elem>(
    dims: (usize, usize, usize),
    dst: &mut [MaybeUninit<T>],
    dst_rs: usize,
    lhs: &[T],
    lhs_strides: (usize, usize),
    rhs: &[T],
    rhs_strides: (usize, usize),
    parallelism: Parallelism,
) {
    // SAFETY: without accumulation gemm_raw has no requirement on dst's contents.
    unsafe {
        gemm_raw(
            dims,
            dst,
            dst_rs,
            false,
            lhs,
            lhs_strides,
            rhs,
            rhs_strides,
            parallelism,
        )
    }
}

/// # Safety
/// If `accumulate`, the m x n block of `dst` must be initialised. Without it gemm reads no
/// element of dst: `read_dst == false` zeroes its alpha, and every gemm 0.19 code path then
/// stores `beta * (lhs * rhs)` without loading the destination.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw<T: Elem>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [MaybeUninit<T>],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[T],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[T],
    (rhs_rs, rhs_cs): (usize, usize),
    parallelism: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    // The raw-pointer gemm is only sound if every addressed element lies inside its slice.
    assert!((m - 1) * dst_rs + n <= dst.len(), "gemm dst out of bounds");
    assert!(n <= dst_rs || m == 1, "gemm dst rows overlap");
    assert!(
        k > 0,
        "gemm with an empty inner dimension would leave dst unwritten"
    );
    assert!(
        (m - 1) * lhs_rs + (k - 1) * lhs_cs < lhs.len(),
        "gemm lhs out of bounds"
    );
    assert!(
        (k - 1) * rhs_rs + (n - 1) * rhs_cs < rhs.len(),
        "gemm rhs out of bounds"
    );
    // SAFETY: the asserts above keep every access in bounds; dst does not alias lhs or rhs
    // (it is borrowed mutably), and gemm writes only dst.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().cast::<T>(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Output positions `lo..hi` (along one axis) whose input position `o * stride + tap - pad`
/// falls inside `0..in_len`.
fn valid_range(
    out_len: usize,
    in_len: usize,
    tap: usize,
    pad: usize,
    stride: usize,
) -> (usize, usize) {
    let lo = if tap >= pad {
        0
    } else {
        (pad - tap).div_ceil(stride)
    };
    let hi = if in_len + pad <= tap {
        0
    } else {
        ((in_len - 1 + pad - tap) / stride + 1).min(out_len)
    };
    (lo.min(hi), hi)
}

/// Calls `f(row, ki, kj, (y_lo, y_hi), (x_lo, x_hi))` for each im2col row, in row order.
fn for_each_tap(g: &Geom, mut f: impl FnMut(usize, usize, usize, (usize, usize), (usize, usize))) {
    for ki in 0..g.kh {
        let ys = valid_range(g.oh, g.h, ki, g.pad, g.stride);
        for kj in 0..g.kw {
            let xs = valid_range(g.ow, g.w, kj, g.pad, g.stride);
            f(ki * g.kw + kj, ki, kj, ys, xs);
        }
    }
}

/// `dst[i] = src[i * stride]` for every i; `src` must reach that far.
fn gather<T: Elem>(dst: &mut [T], src: &[T], stride: usize) {
    let Some(last) = dst.len().checked_sub(1) else {
        return;
    };
    match stride {
        1 => dst.copy_from_slice(&src[..dst.len()]),
        // Exact chunks let the compiler drop bounds checks and vectorise the common stride 2.
        2 => {
            let src = &src[..2 * last + 1];
            for (d, pair) in dst[..last].iter_mut().zip(src.chunks_exact(2)) {
                *d = pair[0];
            }
            dst[last] = src[2 * last];
        }
        _ => {
            for (d, &v) in dst.iter_mut().zip(src.iter().step_by(stride)) {
                *d = v;
            }
        }
    }
}

/// `dst[i * stride] += src[i]` for every i; `dst` must reach that far.
fn scatter_add<T: Elem>(dst: &mut [T], src: &[T], stride: usize) {
    let Some(last) = src.len().checked_sub(1) else {
        return;
    };
    match stride {
        1 => {
            for (d, &v) in dst[..src.len()].iter_mut().zip(src) {
                *d += v;
            }
        }
        2 => {
            let dst = &mut dst[..2 * last + 1];
            for (pair, &v) in dst.chunks_exact_mut(2).zip(&src[..last]) {
                pair[0] += v;
            }
            dst[2 * last] += src[last];
        }
        _ => {
            for (d, &v) in dst.iter_mut().step_by(stride).zip(src) {
                *d += v;
            }
        }
    }
}

/// Writes every element of `col` [c * kh * kw, rows.len() * out_w]: row (c, ki, kj) holds the
/// input plane c sampled at tap (ki, kj) for each output position in the output rows `rows`,
/// zero where it falls in the padding.
fn im2col<T: Elem>(g: &Geom, x: &[T], col: &mut [T], rows: Range<usize>) {
    let (ow, s) = (g.ow, g.stride);
    let n = rows.len() * ow;
    let taps = g.kh * g.kw;
    for (ci, plane) in x.chunks_exact(g.h * g.w).enumerate() {
        for_each_tap(g, |tap, ki, kj, (ylo, yhi), (xlo, xhi)| {
            let row = &mut col[(ci * taps + tap) * n..][..n];
            for (dst, oy) in row.chunks_exact_mut(ow).zip(rows.clone()) {
                if oy < ylo || oy >= yhi || xlo == xhi {
                    dst.fill(T::ZERO);
                    continue;
                }
                dst[..xlo].fill(T::ZERO);
                dst[xhi..].fill(T::ZERO);
                let src = &plane[(oy * s + ki - g.pad) * g.w..][..g.w];
                let ix0 = xlo * s + kj - g.pad;
                gather(&mut dst[xlo..xhi], &src[ix0..], s);
            }
        });
    }
}

/// The adjoint of [`im2col`]: adds to `dx` [c, h, w], in row order, each row of `dcol` (covering
/// the output rows `rows`) scattered back to the input positions it was sampled from.
fn col2im<T: Elem>(g: &Geom, dcol: &[T], dx: &mut [T], rows: Range<usize>) {
    let (ow, s) = (g.ow, g.stride);
    let n = rows.len() * ow;
    let taps = g.kh * g.kw;
    for (ci, plane) in dx.chunks_exact_mut(g.h * g.w).enumerate() {
        for_each_tap(g, |tap, ki, kj, (ylo, yhi), (xlo, xhi)| {
            if xlo == xhi {
                return;
            }
            let row = &dcol[(ci * taps + tap) * n..][..n];
            for (src, oy) in row.chunks_exact(ow).zip(rows.clone()) {
                if oy < ylo || oy >= yhi {
                    continue;
                }
                let src = &src[xlo..xhi];
                let dst = &mut plane[(oy * s + ki - g.pad) * g.w..][..g.w];
                let ix0 = xlo * s + kj - g.pad;
                scatter_add(&mut dst[ix0..], src, s);
            }
        });
    }
}

/// Elements per im2col tile: small enough for the tile to stay in a core's L2 cache between
/// being written and being read by gemm (measured: up to a quarter off the layers with few
/// channels), unless that leaves fewer than [`MIN_TILE_PIXELS`] output pixels per gemm.
const COL_TILE: usize = 1 << 16;
const MIN_TILE_PIXELS: usize = 256;

/// Consecutive ranges of output rows whose im2col tiles hold about [`COL_TILE`] elements, their
/// lengths differing by at most one row. A single range for pointwise convs, which need no
/// im2col. Depends on the shape only, so it never changes the bits across thread counts.
fn row_tiles(g: &Geom) -> Vec<Range<usize>> {
    let fit = if g.pointwise() {
        g.oh
    } else {
        (COL_TILE / (g.ckk() * g.ow)).max(MIN_TILE_PIXELS.div_ceil(g.ow))
    };
    let tiles = g.oh.div_ceil(fit);
    (0..tiles)
        .map(|t| t * g.oh / tiles..(t + 1) * g.oh / tiles)
        .collect()
}

/// Sizes `buf` to at least `len` and returns its first `len` elements, to be overwritten.
fn scratch<T: Elem>(buf: &mut Vec<T>, len: usize) -> &mut [T] {
    if buf.len() < len {
        buf.resize(len, T::ZERO);
    }
    &mut buf[..len]
}

fn forward<T: Elem>(g: &Geom, x: &[T], kernel: &[T]) -> Vec<T> {
    let len = g.b * g.out_len();
    let mut out = Vec::with_capacity(len);
    if len == 0 {
        return out;
    }
    let tiles = row_tiles(g);
    let item = |col: &mut Vec<T>, out_b: &mut [MaybeUninit<T>], x_b: &[T], par: Parallelism| {
        for rows in &tiles {
            let n = rows.len() * g.ow;
            let rhs: &[T] = if g.pointwise() {
                x_b
            } else {
                let col = scratch(col, g.ckk() * n);
                im2col(g, x_b, col, rows.clone());
                col
            };
            // out_b[:, rows] [o, n] = kernel [o, ckk] * col [ckk, n]
            matmul_uninit(
                (g.o, n, g.ckk()),
                &mut out_b[rows.start * g.ow..],
                g.out_hw(),
                kernel,
                (g.ckk(), 1),
                rhs,
                (n, 1),
                par,
            );
        }
    };
    per_item(
        g.b,
        &mut out.spare_capacity_mut()[..len],
        g.out_len(),
        x,
        g.in_len(),
        item,
    );
    // SAFETY: for each item the tiles' gemms wrote all o rows of consecutive output-row ranges
    // covering 0..out_h, i.e. every element of `out_len`.
    unsafe { out.set_len(len) };
    out
}

/// Runs `item` on each batch item's (output, input) pair: items in parallel with single-threaded gemms when
/// there are enough of them, else one after another with every thread in each gemm. Either way each output
/// element is written by one gemm, so the bits do not depend on the choice. `item` gets a scratch buffer
/// it may reuse across the items of one worker.
fn per_item<T: Elem, F>(
    items: usize,
    out: &mut [MaybeUninit<T>],
    out_len: usize,
    inp: &[T],
    in_len: usize,
    item: F,
) where
    F: Fn(&mut Vec<T>, &mut [MaybeUninit<T>], &[T], Parallelism) + Sync,
{
    if tasks_in_parallel(items) {
        out.par_chunks_mut(out_len)
            .zip(inp.par_chunks(in_len))
            .for_each_init(Vec::new, |scratch, (out_b, in_b)| {
                item(scratch, out_b, in_b, Parallelism::None)
            });
    } else {
        let mut scratch = Vec::new();
        for (out_b, in_b) in out.chunks_mut(out_len).zip(inp.chunks(in_len)) {
            item(&mut scratch, out_b, in_b, gemm_threads());
        }
    }
}

fn grad_input<T: Elem>(g: &Geom, grad: &[T], kernel: &[T]) -> Vec<T> {
    let len = g.b * g.in_len();
    let mut dx = Vec::with_capacity(len);
    if len == 0 {
        return dx;
    }
    let tiles = row_tiles(g);
    let item = |dcol: &mut Vec<T>, dx_b: &mut [MaybeUninit<T>], grad_b: &[T], par: Parallelism| {
        if g.pointwise() {
            // dx_b [c, hw] = kernel^T [c, o] * grad_b [o, hw]
            let dims = (g.c, g.out_hw(), g.o);
            let strides = (g.out_hw(), 1);
            matmul_uninit(
                dims,
                dx_b,
                g.out_hw(),
                kernel,
                (1, g.ckk()),
                grad_b,
                strides,
                par,
            );
            return;
        }
        dx_b.fill(MaybeUninit::new(T::ZERO));
        // SAFETY: just initialised; MaybeUninit<T> and T share their layout.
        let dx_b = unsafe { &mut *(dx_b as *mut [MaybeUninit<T>] as *mut [T]) };
        for rows in &tiles {
            let n = rows.len() * g.ow;
            let dcol = scratch(dcol, g.ckk() * n);
            // dcol [ckk, n] = kernel^T [ckk, o] * grad_b[:, rows] [o, n]
            matmul(
                (g.ckk(), n, g.o),
                dcol,
                n,
                false,
                kernel,
                (1, g.ckk()),
                &grad_b[rows.start * g.ow..],
                (g.out_hw(), 1),
                par,
            );
            col2im(g, dcol, dx_b, rows.clone());
        }
    };
    per_item(
        g.b,
        &mut dx.spare_capacity_mut()[..len],
        g.in_len(),
        grad,
        g.out_len(),
        item,
    );
    // SAFETY: each item was either written whole by one gemm (pointwise: its c x hw block is
    // the whole item) or zero-filled before col2im added to it.
    unsafe { dx.set_len(len) };
    dx
}

/// The kernel gradient sums over the batch in this many contiguous groups of items (fewer for
/// smaller batches): enough to keep a few threads busy, and fixed so the order of the sum never
/// depends on the thread count. 12 splits evenly over 1, 2, 3, 4 and 6 threads.
const KERNEL_GRAD_GROUPS: usize = 12;

/// The gemm of one output-row tile of item `bi` for the kernel gradient: its (m, n, k), the
/// item's output gradient (lhs, rows of stride out_h * out_w) and the tile's im2col matrix
/// (rhs, read transposed).
fn kernel_grad_step<'a, T: Elem>(
    g: &Geom,
    x: &'a [T],
    grad: &'a [T],
    col: &'a mut Vec<T>,
    bi: usize,
    rows: Range<usize>,
) -> ((usize, usize, usize), &'a [T], &'a [T]) {
    let n = rows.len() * g.ow;
    let x_b = &x[bi * g.in_len()..][..g.in_len()];
    let grad_b = &grad[bi * g.out_len()..][..g.out_len()];
    let rhs: &[T] = if g.pointwise() {
        x_b
    } else {
        let col = scratch(col, g.ckk() * n);
        im2col(g, x_b, col, rows.clone());
        col
    };
    // part [o, ckk] (+)= grad_b[:, rows] [o, n] * col^T [n, ckk]
    ((g.o, g.ckk(), n), &grad_b[rows.start * g.ow..], rhs)
}

fn grad_kernel<T: Elem>(g: &Geom, x: &[T], grad: &[T]) -> Vec<T> {
    let groups = g.b.min(KERNEL_GRAD_GROUPS);
    let klen = g.kernel_len();
    if groups == 0 {
        return vec![T::ZERO; klen];
    }
    let tiles = row_tiles(g);
    let len = groups * klen;
    let mut partials = Vec::with_capacity(len);
    let group = |col: &mut Vec<T>, gi: usize, part: &mut [MaybeUninit<T>], par: Parallelism| {
        let items = gi * g.b / groups..(gi + 1) * g.b / groups;
        let mut steps = items.flat_map(|bi| tiles.iter().map(move |rows| (bi, rows.clone())));
        let Some((bi, rows)) = steps.next() else {
            return;
        };
        let (dims, lhs, rhs) = kernel_grad_step(g, x, grad, col, bi, rows);
        matmul_uninit(
            dims,
            part,
            g.ckk(),
            lhs,
            (g.out_hw(), 1),
            rhs,
            (1, dims.2),
            par,
        );
        // SAFETY: the gemm just wrote the whole o x ckk block, i.e. all of `part`; T and
        // MaybeUninit<T> share their layout.
        let part = unsafe { &mut *(part as *mut [MaybeUninit<T>] as *mut [T]) };
        for (bi, rows) in steps {
            let (dims, lhs, rhs) = kernel_grad_step(g, x, grad, col, bi, rows);
            matmul(
                dims,
                part,
                g.ckk(),
                true,
                lhs,
                (g.out_hw(), 1),
                rhs,
                (1, dims.2),
                par,
            );
        }
    };
    let spare = &mut partials.spare_capacity_mut()[..len];
    if tasks_in_parallel(groups) {
        spare
            .par_chunks_mut(klen)
            .enumerate()
            .for_each_init(Vec::new, |col, (gi, part)| {
                group(col, gi, part, Parallelism::None)
            });
    } else {
        let mut col = Vec::new();
        for (gi, part) in spare.chunks_mut(klen).enumerate() {
            group(&mut col, gi, part, gemm_threads());
        }
    }
    // SAFETY: every group holds at least one item (groups <= batch) and so at least one step,
    // whose gemm wrote the group's whole partial.
    unsafe { partials.set_len(len) };
    let (total, rest) = partials.split_at_mut(klen);
    for part in rest.chunks_exact(klen) {
        for (t, &p) in total.iter_mut().zip(part) {
            *t += p;
        }
    }
    partials.truncate(klen);
    partials
}

#[cfg(test)]
#[path = "conv_tests.rs"]
mod tests;
