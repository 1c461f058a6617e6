//! 2-D convolution without bias, NCHW input and OIHW kernel.

use candle_core::{Result, Tensor};

/// `x` [batch, c_in, h, w] convolved with `kernel` [c_out, c_in, k, k], zero padding `padding`, stride `stride`.
pub fn conv2d(x: &Tensor, kernel: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    x.conv2d(kernel, padding, stride, 1, 1)
}
