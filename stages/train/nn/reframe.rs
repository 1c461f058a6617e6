//! Zero padding and cropping of the spatial axes as one CPU op each way.
//!
//! candle pads by concatenating zero tensors, once per axis, and crops with `narrow`, whose backward pads the
//! same way: every step is a full copy of an activation-sized tensor. Here either is one copy forward and one
//! backward, since the gradient of a pad is a crop and the gradient of a crop a pad. No arithmetic happens, so
//! results are exact and independent of the thread count.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::bn_prelu::fill_planes;
use super::fused::{check_dtypes, min_planes, operand, Real};

/// `x` [b, c, h, w] with `top` and `bottom` zero rows and `left` and `right` zero columns added.
pub fn pad_zeros(
    x: &Tensor,
    top: usize,
    bottom: usize,
    left: usize,
    right: usize,
) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    reframe(
        x,
        h + top + bottom,
        w + left + right,
        -(top as isize),
        -(left as isize),
    )
}

/// The `h` x `w` window of `x` [b, c, H, W] whose top-left corner is (`top`, `left`).
pub fn crop(x: &Tensor, top: usize, left: usize, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, ih, iw) = x.dims4()?;
    if top + h > ih || left + w > iw {
        bail!("crop of {h} x {w} at ({top}, {left}) from {ih} x {iw}");
    }
    reframe(x, h, w, top as isize, left as isize)
}

/// The `oh` x `ow` window of `x` [b, c, h, w] whose top-left corner sits at (`dy`, `dx`) in `x`'s coordinates
/// (negative: above or left of `x`), zero wherever it lies outside `x`: a crop and a zero pad in one copy.
pub fn reframe(x: &Tensor, oh: usize, ow: usize, dy: isize, dx: isize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    check_dtypes("pad or crop", x, &[])?;
    x.contiguous()?.apply_op1(Reframe {
        planes: b * c,
        dims: (b, c),
        input: (h, w),
        output: (oh, ow),
        offset: (dy, dx),
    })
}

/// `out[i][j] = in[i + offset.0][j + offset.1]` where that lies inside the input, zero elsewhere.
struct Reframe {
    planes: usize,
    dims: (usize, usize),
    input: (usize, usize),
    output: (usize, usize),
    offset: (isize, isize),
}

impl Reframe {
    fn run<T: Real>(&self, x: &[T]) -> Vec<T> {
        let (ih, iw) = self.input;
        let (oh, ow) = self.output;
        let (dy, dx) = self.offset;
        // The output columns that read the input: j with 0 <= j + dx < iw.
        let j0 = (-dx).clamp(0, ow as isize) as usize;
        let j1 = (iw as isize - dx).clamp(j0 as isize, ow as isize) as usize;
        let (y, _) = fill_planes::<T, ()>(self.planes, oh * ow, min_planes(oh * ow), |p, o| {
            let plane = &x[p * ih * iw..(p + 1) * ih * iw];
            for (i, row) in o.chunks_exact_mut(ow).enumerate() {
                let src = i as isize + dy;
                if src < 0 || src >= ih as isize {
                    for v in row.iter_mut() {
                        v.write(T::of(0.0));
                    }
                    continue;
                }
                let src = &plane[src as usize * iw..(src as usize + 1) * iw];
                for v in &mut row[..j0] {
                    v.write(T::of(0.0));
                }
                for (j, v) in (j0..j1).zip(&mut row[j0..j1]) {
                    v.write(src[(j as isize + dx) as usize]);
                }
                for v in &mut row[j1..] {
                    v.write(T::of(0.0));
                }
            }
        });
        y
    }

    fn inverse(&self) -> Self {
        Self {
            planes: self.planes,
            dims: self.dims,
            input: self.output,
            output: self.input,
            offset: (-self.offset.0, -self.offset.1),
        }
    }
}

impl CustomOp1 for Reframe {
    fn name(&self) -> &'static str {
        "reframe"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c) = self.dims;
        let xd = [b, c, self.input.0, self.input.1];
        let out = match s {
            CpuStorage::F32(x) => {
                CpuStorage::F32(self.run(operand(x, l, &xd, "pad or crop input")?))
            }
            CpuStorage::F64(x) => {
                CpuStorage::F64(self.run(operand(x, l, &xd, "pad or crop input")?))
            }
            other => bail!("pad or crop: needs f32 or f64, got {:?}", other.dtype()),
        };
        Ok((out, Shape::from((b, c, self.output.0, self.output.1))))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&self.inverse())?))
    }
}

#[cfg(test)]
#[path = "reframe_tests.rs"]
mod tests;
