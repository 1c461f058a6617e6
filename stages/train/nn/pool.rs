//! 2 x 2 max pooling (alone, after a ReLU, or after batch norm and ReLU) and squeeze-excitation's channel
//! scaling as single CPU ops with hand-written backward passes.
//!
//! Pooling is Keras "valid" with stride 2: odd trailing rows and columns are dropped. A window's gradient goes
//! to its first maximal element in scan order ((0,0), (0,1), (1,0), (1,1)), as TensorFlow routes it; candle's
//! `max` would hand it to every tied element, and its `max_pool2d` backward is wrong on odd sizes. Nothing
//! here sums in an order that depends on the rayon thread count.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use std::sync::OnceLock;

use super::bn_prelu::{batch_norm_act, fill_planes, first_max, window, Geom, Statistics};
use super::fused::{
    check_dtypes, min_planes, operand, run_on_pair, zip_planes, Operand, PairKernel, Real,
};

/// 2 x 2 max pool, stride 2, of `x` [b, c, h, w] (h, w >= 2).
pub fn max_pool_2x2(x: &Tensor) -> Result<Tensor> {
    pool(x, false)
}

/// `max_pool_2x2(relu(x))` in one pass; a window whose maximum is negative passes no gradient (as relu's
/// gradient, which passes where the input is >= 0).
pub fn relu_max_pool_2x2(x: &Tensor) -> Result<Tensor> {
    pool(x, true)
}

fn pool(x: &Tensor, relu: bool) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if h < 2 || w < 2 {
        bail!("max pool 2x2 needs at least 2 x 2 inputs, got {h} x {w}");
    }
    check_dtypes("max pool", x, &[])?;
    x.contiguous()?.apply_op1(PoolOp {
        geom: Geom {
            b,
            c,
            h,
            w,
            pool: true,
        },
        relu,
    })
}

/// `max_pool_2x2(relu(batch_norm(x)))` as one op: see [`batch_norm_act`]. `stats` chooses training (batch
/// statistics, returned as mean and biased variance) or evaluation (the given running statistics).
pub fn batch_norm_relu_max_pool(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    stats: Statistics<'_>,
    eps: f64,
) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
    batch_norm_act(x, gamma, beta, None, true, stats, eps)
}

struct PoolOp {
    geom: Geom,
    relu: bool,
}

impl PoolOp {
    #[inline(always)]
    fn value<T: Real>(&self, v: T) -> f64 {
        let v = v.f64();
        match self.relu {
            true if v > 0.0 => v,
            true => 0.0,
            false => v,
        }
    }

    fn forward<T: Real>(&self, x: &[T]) -> Vec<T> {
        let g = self.geom;
        let (oh, ow) = g.out_hw();
        let hw = g.h * g.w;
        let (y, _) = fill_planes::<T, ()>(g.b * g.c, oh * ow, min_planes(hw), |i, o| {
            let xp = &x[i * hw..(i + 1) * hw];
            for oy in 0..oh {
                for ox in 0..ow {
                    let a = window(g.w, oy, ox).map(|j| self.value(xp[j]));
                    o[oy * ow + ox].write(T::of(a[first_max(a)]));
                }
            }
        });
        y
    }

    /// The input gradient: each window's output gradient at its first maximal element, zero elsewhere.
    fn backward<T: Real>(&self, x: &[T], dy: &[T]) -> Vec<T> {
        let g = self.geom;
        let (oh, ow) = g.out_hw();
        let hw = g.h * g.w;
        let (dx, _) = fill_planes::<T, ()>(g.b * g.c, hw, min_planes(hw), |i, o| {
            let xp = &x[i * hw..(i + 1) * hw];
            let gp = &dy[i * oh * ow..(i + 1) * oh * ow];
            for v in o.iter_mut() {
                v.write(T::of(0.0));
            }
            for oy in 0..oh {
                for ox in 0..ow {
                    let idx = window(g.w, oy, ox);
                    let a = idx.map(|j| self.value(xp[j]));
                    let m = first_max(a);
                    // relu passes gradient where its input is >= 0.
                    if !self.relu || xp[idx[m]].f64() >= 0.0 {
                        o[idx[m]].write(gp[oy * ow + ox]);
                    }
                }
            }
        });
        dx
    }
}

impl CustomOp1 for PoolOp {
    fn name(&self) -> &'static str {
        "max-pool-2x2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.geom;
        let xd = [g.b, g.c, g.h, g.w];
        let (oh, ow) = g.out_hw();
        let out = match s {
            CpuStorage::F32(x) => CpuStorage::F32(self.forward(operand(x, l, &xd, "pool input")?)),
            CpuStorage::F64(x) => CpuStorage::F64(self.forward(operand(x, l, &xd, "pool input")?)),
            other => bail!("max pool: needs f32 or f64, got {:?}", other.dtype()),
        };
        Ok((out, Shape::from((g.b, g.c, oh, ow))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx = x.apply_op2_no_bwd(
            &grad.contiguous()?,
            &PoolGrad {
                op: PoolOp {
                    geom: self.geom,
                    relu: self.relu,
                },
            },
        )?;
        Ok(Some(dx))
    }
}

struct PoolGrad {
    op: PoolOp,
}

impl PairKernel for PoolGrad {
    fn run_pair<T: Real>(&self, x: &[T], dy: &[T]) -> Result<Vec<T>> {
        Ok(self.op.backward(x, dy))
    }
}

impl CustomOp2 for PoolGrad {
    fn name(&self) -> &'static str {
        "max-pool-2x2-grad"
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
        let (oh, ow) = g.out_hw();
        let od = [g.b, g.c, oh, ow];
        let out = run_on_pair(
            "max pool backward",
            self,
            Operand::new(s1, l1, &xd, "pool input"),
            Operand::new(s2, l2, &od, "pool output gradient"),
        )?;
        Ok((out, Shape::from(xd.to_vec())))
    }
}

/// `x` [b, c, h, w] with each plane scaled by `s` [b, c] (squeeze-excitation's gating), differentiable in both:
/// `dx = dy * s`, `ds[n, c]` the plane's sum of `dy * x` (f64, in a fixed order).
pub fn scale_channels(x: &Tensor, s: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if s.dims() != [b, c] {
        bail!(
            "scale channels: scales of shape {:?} for {b} x {c} planes",
            s.dims()
        );
    }
    check_dtypes("scale channels", x, &[s])?;
    x.contiguous()?.apply_op2(
        &s.contiguous()?,
        ScaleOp {
            planes: b * c,
            hw: h * w,
        },
    )
}

struct ScaleOp {
    planes: usize,
    hw: usize,
}

impl ScaleOp {
    fn scaled<T: Real>(&self, x: &[T], s: &[T]) -> Result<(Vec<T>, Vec<f64>)> {
        let s: Vec<f64> = s.iter().map(|v| v.f64()).collect();
        // With `planes` as the channel count, the closure sees each plane's own index.
        zip_planes::<T, false, _>(x, x, self.hw, self.planes, |i| {
            let k = s[i];
            move |v, _| (v * k, 0.0)
        })
    }
}

impl PairKernel for ScaleOp {
    fn run_pair<T: Real>(&self, x: &[T], s: &[T]) -> Result<Vec<T>> {
        Ok(self.scaled(x, s)?.0)
    }
}

impl CustomOp2 for ScaleOp {
    fn name(&self) -> &'static str {
        "scale-channels"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let xd = l1.dims();
        let sd = l2.dims();
        if sd.iter().product::<usize>() != self.planes {
            bail!("scale channels: scales of shape {sd:?}");
        }
        let out = run_on_pair(
            "scale channels",
            self,
            Operand::new(s1, l1, xd, "scale input"),
            Operand::new(s2, l2, sd, "scales"),
        )?;
        Ok((out, Shape::from(xd)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        s: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let op = ScaleGrad {
            op: ScaleOp {
                planes: self.planes,
                hw: self.hw,
            },
            s: s.detach()
                .to_dtype(candle_core::DType::F64)?
                .to_vec2()?
                .concat(),
            sums: OnceLock::new(),
        };
        let dx = x.apply_op2_no_bwd(&grad, &op)?;
        let Some(sums) = op.sums.get() else {
            bail!("scale channels backward left no sums");
        };
        let ds = Tensor::from_slice(sums, s.dims(), x.device())?.to_dtype(x.dtype())?;
        Ok((Some(dx), Some(ds)))
    }
}

/// The backward pass over (x, dy): `dy * s` as output, the per-plane sums of `dy * x` left in `sums`.
struct ScaleGrad {
    op: ScaleOp,
    s: Vec<f64>,
    sums: OnceLock<Vec<f64>>,
}

impl PairKernel for ScaleGrad {
    fn run_pair<T: Real>(&self, x: &[T], dy: &[T]) -> Result<Vec<T>> {
        let s = &self.s;
        let (dx, sums) = zip_planes::<T, true, _>(dy, x, self.op.hw, self.op.planes, |i| {
            let k = s[i];
            move |g, v| (g * k, g * v)
        })?;
        let _ = self.sums.set(sums);
        Ok(dx)
    }
}

impl CustomOp2 for ScaleGrad {
    fn name(&self) -> &'static str {
        "scale-channels-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let xd = l1.dims();
        let out = run_on_pair(
            "scale channels backward",
            self,
            Operand::new(s1, l1, xd, "scale input"),
            Operand::new(s2, l2, xd, "scale output gradient"),
        )?;
        Ok((out, Shape::from(xd)))
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
