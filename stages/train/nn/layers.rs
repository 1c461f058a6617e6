//! The layers the study's networks are made of, with Keras semantics (the study was written in Keras 3) on NCHW
//! tensors. Every layer works in whatever float dtype its weights were built in: f32 for training, f64 for the
//! finite-difference checks.

use candle_core::{bail, DType, Device, Result, Shape, Tensor, Var};
use rand_chacha::ChaCha20Rng;

use super::bn_prelu::{self, Statistics};
pub use super::conv::ConvKernel;
use super::params::{unit_uniform, ParamStore, Role};
use super::{fused, pool, reframe};

/// Keras' "same" padding (before, after) along one axis of length `n` for kernel `k` and stride `s`. With an even
/// `n` and stride 2 the padding is asymmetric (0 before, 1 after), unlike the symmetric padding of candle's conv.
pub fn same_padding(n: usize, k: usize, s: usize) -> (usize, usize) {
    let out = same_output(n, s);
    let total = (out.saturating_sub(1) * s + k).saturating_sub(n);
    (total / 2, total - total / 2)
}

/// Output length of a "same"-padded conv along an axis of length `n` with stride `s`.
pub fn same_output(n: usize, s: usize) -> usize {
    n.div_ceil(s)
}

/// A k x k convolution with "same" padding and no bias; kernel [c_out, c_in, k, k], Glorot-uniform init.
pub struct Conv2d {
    kernel: Var,
    k: usize,
    stride: usize,
    implementation: ConvKernel,
}

impl Conv2d {
    /// A layer on the convolution implementation `p` was configured with (im2col-gemm by default).
    pub fn new(
        p: &mut ParamStore,
        name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
    ) -> Result<Self> {
        let implementation = p.conv_kernel();
        Self::with_kernel(p, name, c_in, c_out, k, stride, implementation)
    }

    /// A layer whose convolution runs on `implementation`; its weights do not depend on the choice.
    pub fn with_kernel(
        p: &mut ParamStore,
        name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        implementation: ConvKernel,
    ) -> Result<Self> {
        if c_in == 0 || c_out == 0 || k == 0 || stride == 0 {
            bail!("conv {name}: channels, kernel size and stride must be positive");
        }
        let kernel = p.glorot_uniform(
            &format!("{name}.kernel"),
            &[c_out, c_in, k, k],
            c_in * k * k,
            c_out * k * k,
        )?;
        Ok(Self {
            kernel,
            k,
            stride,
            implementation,
        })
    }

    pub fn kernel(&self) -> &Var {
        &self.kernel
    }

    pub fn implementation(&self) -> ConvKernel {
        self.implementation
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        if h == 0 || w == 0 {
            bail!("conv on an empty {h} x {w} input");
        }
        let (top, bottom) = same_padding(h, self.k, self.stride);
        let (left, right) = same_padding(w, self.k, self.stride);
        // Rows and columns past the last window (a strided conv with no padding on that axis) never reach the
        // output. They are cropped because candle 0.11.1's conv backward derives the transposed conv's output
        // padding from the height alone and fails with a shape mismatch when height and width leave different
        // remainders (e.g. a 1x1 stride-2 conv on 64 x 65).
        // The conv pads symmetrically; whatever Keras pads beyond that on one side is added explicitly.
        let common = top.min(bottom).min(left).min(right);
        if self.implementation != ConvKernel::CandleStock && fused::supports(x) {
            // Crop and extra padding as one copy (or none), rather than candle's narrows and concatenations.
            let rh = self.read_len(h, top + bottom);
            let rw = self.read_len(w, left + right);
            let (et, eb, el, er) = (top - common, bottom - common, left - common, right - common);
            let x = if (rh, rw) == (h, w) && et + eb + el + er == 0 {
                x.clone()
            } else {
                reframe::reframe(
                    x,
                    rh + et + eb,
                    rw + el + er,
                    -(et as isize),
                    -(el as isize),
                )?
            };
            return self
                .implementation
                .conv2d(&x, self.kernel.as_tensor(), self.stride, common);
        }
        let x = self.crop_unread(x, 2, h, top + bottom)?;
        let x = self.crop_unread(&x, 3, w, left + right)?;
        let x = if (top, bottom, left, right) == (common, common, common, common) {
            x
        } else {
            x.pad_with_zeros(2, top - common, bottom - common)?
                .pad_with_zeros(3, left - common, right - common)?
        };
        self.implementation
            .conv2d(&x, self.kernel.as_tensor(), self.stride, common)
    }

    fn crop_unread(&self, x: &Tensor, dim: usize, n: usize, padding: usize) -> Result<Tensor> {
        let read = self.read_len(n, padding);
        if read < n {
            x.narrow(dim, 0, read)
        } else {
            Ok(x.clone())
        }
    }

    /// How much of an axis of length `n` with `padding` in total the windows read: all of it, unless there
    /// is no padding and the last window stops short.
    fn read_len(&self, n: usize, padding: usize) -> usize {
        let read = (same_output(n, self.stride) - 1) * self.stride + self.k;
        if padding == 0 && n > read {
            read
        } else {
            n
        }
    }
}

/// The activation a batch norm feeds in [`BatchNorm::forward_then`].
#[derive(Clone, Copy)]
pub enum Then<'a> {
    Relu,
    PRelu(&'a PRelu),
}

/// Keras' batch-norm momentum: running = 0.99 * running + 0.01 * batch.
pub const BN_MOMENTUM: f64 = 0.99;
/// Keras' batch-norm epsilon.
pub const BN_EPSILON: f64 = 1e-3;

/// Batch normalisation over the channel axis (axis 1), Keras semantics: training normalises with the batch mean
/// and the biased batch variance and moves the running statistics towards those same two values (Keras 3 uses
/// the biased variance for the running update too, unlike PyTorch); evaluation normalises with the running
/// statistics.
pub struct BatchNorm {
    gamma: Var,
    beta: Var,
    moving_mean: Var,
    moving_variance: Var,
    momentum: f64,
}

impl BatchNorm {
    pub fn new(p: &mut ParamStore, name: &str, channels: usize) -> Result<Self> {
        Ok(Self {
            momentum: p.batch_norm_momentum(),
            gamma: p.constant(&format!("{name}.gamma"), &[channels], 1.0, Role::Trainable)?,
            beta: p.constant(&format!("{name}.beta"), &[channels], 0.0, Role::Trainable)?,
            moving_mean: p.constant(
                &format!("{name}.moving_mean"),
                &[channels],
                0.0,
                Role::Running,
            )?,
            moving_variance: p.constant(
                &format!("{name}.moving_variance"),
                &[channels],
                1.0,
                Role::Running,
            )?,
        })
    }

    pub fn gamma(&self) -> &Var {
        &self.gamma
    }

    pub fn beta(&self) -> &Var {
        &self.beta
    }

    pub fn moving_mean(&self) -> &Var {
        &self.moving_mean
    }

    pub fn moving_variance(&self) -> &Var {
        &self.moving_variance
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !fused::supports(x) {
            return self.forward_composed(x, train);
        }
        let (gamma, beta) = (self.gamma.as_tensor(), self.beta.as_tensor());
        if train {
            let (y, mean, variance) = fused::batch_norm_train(x, gamma, beta, BN_EPSILON)?;
            self.update_running(&mean, &variance)?;
            Ok(y)
        } else {
            // Detached: the running statistics are state, not parameters, and get no gradient.
            fused::batch_norm_eval(
                x,
                gamma,
                beta,
                &self.moving_mean.as_detached_tensor(),
                &self.moving_variance.as_detached_tensor(),
                BN_EPSILON,
            )
        }
    }

    /// `x` through this batch norm, then `act`, then a 2 x 2 max pool when `pool`, as one fused op on the CPU
    /// dtypes it covers (see [`bn_prelu`]) and as the chain of separate layers elsewhere.
    pub fn forward_then(
        &self,
        x: &Tensor,
        train: bool,
        act: Then<'_>,
        pool: bool,
    ) -> Result<Tensor> {
        if !fused::supports(x) {
            let y = self.forward(x, train)?;
            let y = match act {
                Then::Relu => y.relu()?,
                Then::PRelu(p) => p.forward(&y)?,
            };
            return if pool { max_pool_2x2(&y) } else { Ok(y) };
        }
        let (gamma, beta) = (self.gamma.as_tensor(), self.beta.as_tensor());
        let alpha = match act {
            Then::Relu => None,
            Then::PRelu(p) => Some(p.alpha.as_tensor()),
        };
        let (mean, var) = (
            self.moving_mean.as_detached_tensor(),
            self.moving_variance.as_detached_tensor(),
        );
        let stats = if train {
            Statistics::Batch
        } else {
            Statistics::Running {
                mean: &mean,
                var: &var,
            }
        };
        let (y, batch) = bn_prelu::batch_norm_act(x, gamma, beta, alpha, pool, stats, BN_EPSILON)?;
        if let Some((mean, variance)) = batch {
            self.update_running(&mean, &variance)?;
        }
        Ok(y)
    }

    /// Moves the running statistics towards the batch's `mean` and biased `variance` (any shape of c
    /// elements, no gradient).
    fn update_running(&self, mean: &Tensor, variance: &Tensor) -> Result<()> {
        let keep = self.momentum;
        let new_mean = (self.moving_mean.as_tensor().affine(keep, 0.0)?
            + mean.detach().flatten_all()?.affine(1.0 - keep, 0.0)?)?;
        let new_variance = (self.moving_variance.as_tensor().affine(keep, 0.0)?
            + variance.detach().flatten_all()?.affine(1.0 - keep, 0.0)?)?;
        self.moving_mean.set(&new_mean)?;
        self.moving_variance.set(&new_variance)
    }

    /// The same layer built from candle's tensor ops: the path for devices and dtypes the fused op does not
    /// cover, and the reference it is tested against.
    pub(crate) fn forward_composed(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let gamma = self.gamma.as_tensor().reshape((1, c, 1, 1))?;
        let beta = per_sample_channel(self.beta.as_tensor(), b, c)?;
        if train {
            let n = (b * h * w) as f64;
            let mean = channel_sum(x)?.affine(1.0 / n, 0.0)?;
            let centered = x.broadcast_sub(&mean.broadcast_as((b, c, 1, 1))?)?;
            let variance = channel_sum(&centered.sqr()?)?.affine(1.0 / n, 0.0)?;
            let scale = variance
                .affine(1.0, BN_EPSILON)?
                .sqrt()?
                .recip()?
                .mul(&gamma)?;
            let y = centered
                .broadcast_mul(&scale.broadcast_as((b, c, 1, 1))?)?
                .broadcast_add(&beta)?;
            self.update_running(&mean, &variance)?;
            Ok(y)
        } else {
            // Detached: the running statistics are state, not parameters, and get no gradient.
            let mean = self
                .moving_mean
                .as_detached_tensor()
                .reshape((1, c, 1, 1))?;
            let variance = self
                .moving_variance
                .as_detached_tensor()
                .reshape((1, c, 1, 1))?;
            let scale = variance
                .affine(1.0, BN_EPSILON)?
                .sqrt()?
                .recip()?
                .mul(&gamma)?;
            let shift = mean.mul(&scale)?;
            x.broadcast_mul(&scale.broadcast_as((b, c, 1, 1))?)?
                .broadcast_sub(&shift.broadcast_as((b, c, 1, 1))?)?
                .broadcast_add(&beta)
        }
    }
}

/// Sum over batch and space, [b, c, h, w] -> [1, c, 1, 1]. Reducing the contiguous spatial axes first keeps
/// candle on its vectorised path; one reduction over (0, 2, 3) takes a divide per element.
fn channel_sum(x: &Tensor) -> Result<Tensor> {
    x.sum_keepdim((2, 3))?.sum_keepdim(0)
}

/// A per-channel vector as [b, c, 1, 1], ready to broadcast over space. Broadcasting in two steps makes the
/// backward pass reduce the contiguous spatial axes (fast) and then the batch axis of a small tensor, instead of
/// one strided reduction over (0, 2, 3).
fn per_sample_channel(v: &Tensor, b: usize, c: usize) -> Result<Tensor> {
    v.reshape((1, c, 1, 1))?.broadcast_as((b, c, 1, 1))
}

/// PReLU with one slope per channel (Keras `PReLU(shared_axes=[1, 2])` on NHWC), slopes initialised at 0.
pub struct PRelu {
    alpha: Var,
}

impl PRelu {
    pub fn new(p: &mut ParamStore, name: &str, channels: usize) -> Result<Self> {
        Ok(Self {
            alpha: p.constant(&format!("{name}.alpha"), &[channels], 0.0, Role::Trainable)?,
        })
    }

    pub fn alpha(&self) -> &Var {
        &self.alpha
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if fused::supports(x) {
            fused::prelu(x, self.alpha.as_tensor())
        } else {
            self.forward_composed(x)
        }
    }

    /// `prelu(a + b)`, a residual add and its activation, as one op where the fused ops apply.
    pub fn forward_sum(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        if fused::supports(a) {
            fused::prelu_of_sum(a, b, self.alpha.as_tensor())
        } else {
            self.forward_composed(&(a + b)?)
        }
    }

    /// The same layer built from candle's tensor ops: the fallback off the fused op's CPU dtypes and the
    /// reference it is tested against.
    pub(crate) fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, _, _) = x.dims4()?;
        let positive = x.relu()?;
        let negative = (x - &positive)?;
        positive + negative.broadcast_mul(&per_sample_channel(self.alpha.as_tensor(), b, c)?)?
    }
}

/// A fully connected layer: kernel [in, out] (Glorot uniform) and bias [out] (zeros), as Keras' `Dense`.
pub struct Dense {
    kernel: Var,
    bias: Var,
}

impl Dense {
    pub fn new(p: &mut ParamStore, name: &str, inputs: usize, outputs: usize) -> Result<Self> {
        if inputs == 0 || outputs == 0 {
            bail!("dense {name}: sizes must be positive");
        }
        Ok(Self {
            kernel: p.glorot_uniform(
                &format!("{name}.kernel"),
                &[inputs, outputs],
                inputs,
                outputs,
            )?,
            bias: p.constant(&format!("{name}.bias"), &[outputs], 0.0, Role::Trainable)?,
        })
    }

    pub fn kernel(&self) -> &Var {
        &self.kernel
    }

    pub fn bias(&self) -> &Var {
        &self.bias
    }

    /// `x` [batch, in] -> [batch, out].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.matmul(self.kernel.as_tensor())?
            .broadcast_add(self.bias.as_tensor())
    }
}

/// The squeeze-and-excitation ratio the study uses.
pub const SE_RATIO: usize = 8;

/// Hidden width of an SE block on `channels` channels: Keras' `channels // 8`, kept at least 1 so that narrow
/// models remain buildable.
pub fn se_hidden(channels: usize) -> usize {
    (channels / SE_RATIO).max(1)
}

/// Squeeze-and-excitation: global average pool -> dense C/8 (ReLU) -> dense C (sigmoid) -> scale the channels.
/// Both denses have biases, as in the study (its parameter counts include them).
pub struct SqueezeExcite {
    reduce: Dense,
    expand: Dense,
}

impl SqueezeExcite {
    pub fn new(p: &mut ParamStore, name: &str, channels: usize) -> Result<Self> {
        let hidden = se_hidden(channels);
        Ok(Self {
            reduce: Dense::new(p, &format!("{name}.reduce"), channels, hidden)?,
            expand: Dense::new(p, &format!("{name}.expand"), hidden, channels)?,
        })
    }

    /// The block with the channel scaling as one op (where the fused ops apply).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !fused::supports(x) {
            return self.forward_composed(x);
        }
        pool::scale_channels(x, &self.gates(x)?)
    }

    /// The block built from candle's tensor ops: the fallback, the stock baseline and the reference.
    pub fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, _, _) = x.dims4()?;
        x.broadcast_mul(&self.gates(x)?.reshape((b, c, 1, 1))?)
    }

    /// The per-plane gates [batch, c].
    fn gates(&self, x: &Tensor) -> Result<Tensor> {
        let squeezed = global_avg_pool(x)?;
        let hidden = self.reduce.forward(&squeezed)?.relu()?;
        candle_nn::ops::sigmoid(&self.expand.forward(&hidden)?)
    }
}

/// 2 x 2 max pooling with stride 2, floor mode (Keras "valid"). Written as crop-to-even, reshape and `max`
/// because candle's own `max_pool2d` backward scales gradients by 1/4 and misroutes them on odd sizes.
pub fn max_pool_2x2(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if h < 2 || w < 2 {
        bail!("max pool 2x2 needs at least 2 x 2 inputs, got {h} x {w}");
    }
    let (h2, w2) = (h / 2, w / 2);
    let x = if h % 2 == 1 || w % 2 == 1 {
        x.narrow(2, 0, h2 * 2)?.narrow(3, 0, w2 * 2)?
    } else {
        x.clone()
    };
    x.reshape((b, c, h2, 2, w2, 2))?.max(5)?.max(3)
}

/// Mean over the spatial axes: [batch, c, h, w] -> [batch, c].
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.mean((2, 3))
}

/// Inverted dropout (Keras): in training each element is kept with probability 1 - rate and scaled by
/// 1 / (1 - rate); the mask comes from the caller's ChaCha stream, never from candle's unseeded RNG.
pub struct Dropout {
    rate: f64,
}

impl Dropout {
    pub fn new(rate: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&rate) {
            bail!("dropout rate must lie in [0, 1), got {rate}");
        }
        Ok(Self { rate })
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The scaled keep mask: 0 where dropped, 1 / (1 - rate) where kept; one draw per element in row-major order.
    pub fn mask(
        &self,
        shape: &Shape,
        dtype: DType,
        device: &Device,
        rng: &mut ChaCha20Rng,
    ) -> Result<Tensor> {
        let scale = 1.0 / (1.0 - self.rate);
        let values: Vec<f64> = (0..shape.elem_count())
            .map(|_| {
                if unit_uniform(rng) < self.rate {
                    0.0
                } else {
                    scale
                }
            })
            .collect();
        Tensor::from_vec(values, shape, device)?.to_dtype(dtype)
    }

    /// `rng` is `Some` in training (a mask is drawn) and `None` in evaluation (identity).
    pub fn forward(&self, x: &Tensor, rng: Option<&mut ChaCha20Rng>) -> Result<Tensor> {
        match rng {
            Some(rng) if self.rate > 0.0 => {
                x.mul(&self.mask(x.shape(), x.dtype(), x.device(), rng)?)
            }
            _ => Ok(x.clone()),
        }
    }
}
