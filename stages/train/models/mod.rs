//! The study's four networks, built at any width from one seed. At width 1 on 128 x 128 inputs with 10 classes
//! they have exactly the study's parameter counts (Efficient_VGG 34,488; ResSE_AudioCNN 1,232,770;
//! UNet_Audio_Classifier 1,176,170; the lean U-Net 103,722 trainable + 512 running statistics = 104,234).

mod efficient_vgg;
mod res_se;
mod unet;

#[cfg(test)]
mod tests;

#[cfg(test)]
#[path = "conv_kernel_tests.rs"]
mod conv_kernel_tests;

use candle_core::{bail, DType, Device, Result};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use crate::train::classifier::{Classifier, Mode};
use crate::train::nn::layers::{same_output, se_hidden};

pub use crate::train::nn::conv::ConvKernel;

pub use efficient_vgg::EfficientVgg;
pub use res_se::ResSe;
pub use unet::Unet;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// Efficient_VGG: three conv/BN/ReLU/pool/SE blocks, then dense 128 and dropout.
    EfficientVgg,
    /// ResSE_AudioCNN: a stem and three strided residual blocks with SE.
    ResSe,
    /// UNet_Audio_Classifier: the U-Net encoder (32..256 filters) as a classifier; the tournament's winner.
    Unet,
    /// The lean U-Net of the study's cross-validation and FMA runs (32, 32, 64, 128 filters).
    UnetLean,
}

/// What to build: an architecture at a width, for a number of classes and an input size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub arch: Architecture,
    /// Multiplies every layer's filters and hidden units (not the classes); each is rounded and kept at least 1.
    pub width: f64,
    pub classes: usize,
    pub n_mels: usize,
    pub frames: usize,
    /// Running-statistics momentum of every batch norm (Keras: 0.99). With few training steps the running
    /// statistics stay near their initial values at 0.99, and evaluation-mode scores near chance.
    #[serde(default = "study_batch_norm_momentum")]
    pub batch_norm_momentum: f64,
}

fn study_batch_norm_momentum() -> f64 {
    crate::train::nn::layers::BN_MOMENTUM
}

impl ModelSpec {
    /// The study's setting: width 1, 10 classes, 128 x 128 inputs.
    pub fn study(arch: Architecture) -> Self {
        Self {
            arch,
            width: 1.0,
            classes: 10,
            n_mels: 128,
            frames: 128,
            batch_norm_momentum: study_batch_norm_momentum(),
        }
    }

    /// A layer's size at this width.
    pub fn scaled(&self, units: usize) -> usize {
        ((units as f64 * self.width).round() as usize).max(1)
    }

    /// Checks that the spec describes a buildable network: positive finite width, at least one class, and an
    /// input large enough that no pooling step runs out of rows or columns.
    pub fn validate(&self) -> Result<()> {
        if !self.width.is_finite() || self.width <= 0.0 {
            bail!("model width must be a positive number, got {}", self.width);
        }
        if self.classes == 0 {
            bail!("a classifier needs at least one class");
        }
        if self.n_mels == 0 || self.frames == 0 {
            bail!(
                "input size must be positive, got {} x {}",
                self.n_mels,
                self.frames
            );
        }
        let tally = tally(self);
        if tally.collapsed {
            bail!(
                "input {} x {} is too small for {:?}: a 2 x 2 pooling would see fewer than 2 rows or columns",
                self.n_mels,
                self.frames,
                self.arch
            );
        }
        Ok(())
    }
}

/// Builds the network `spec` describes, every tensor initialised from `seed` and its own name.
pub fn build(
    spec: &ModelSpec,
    seed: [u8; 32],
    dtype: DType,
    device: &Device,
) -> Result<Box<dyn Classifier>> {
    build_with(spec, seed, dtype, device, ConvKernel::default())
}

/// [`build`] with every convolution of the network (and its gradients) running on `kernel`. The weights, and
/// so the network's function up to rounding, are the same whichever kernel is chosen.
pub fn build_with(
    spec: &ModelSpec,
    seed: [u8; 32],
    dtype: DType,
    device: &Device,
    kernel: ConvKernel,
) -> Result<Box<dyn Classifier>> {
    spec.validate()?;
    Ok(match spec.arch {
        Architecture::EfficientVgg => {
            Box::new(EfficientVgg::new(spec, seed, dtype, device, kernel)?)
        }
        Architecture::ResSe => Box::new(ResSe::new(spec, seed, dtype, device, kernel)?),
        Architecture::Unet | Architecture::UnetLean => {
            Box::new(Unet::new(spec, seed, dtype, device, kernel)?)
        }
    })
}

/// Number of values the optimizer updates (Keras' trainable parameter count), from the layer shapes alone.
pub fn trainable_parameters(spec: &ModelSpec) -> usize {
    tally(spec).trainable
}

/// Number of batch-norm running statistics (Keras' non-trainable count).
pub fn running_statistics(spec: &ModelSpec) -> usize {
    tally(spec).running
}

/// Multiply-adds of one forward pass over one segment, from the layer shapes: every convolution
/// (out_h * out_w * k * k * c_in * c_out, at the "same"-padded output size, padding included as if it were
/// data) and every dense layer (in * out, SE blocks included). Batch norm, activations, pooling, SE scaling, the
/// residual add and biases are elementwise and not counted. Training costs about three times this per segment
/// (forward, gradient of the input, gradient of the weights).
pub fn multiply_adds_per_segment(spec: &ModelSpec) -> u64 {
    tally(spec).multiply_adds
}

fn tally(spec: &ModelSpec) -> Tally {
    let mut t = Tally::new(spec.n_mels, spec.frames);
    match spec.arch {
        Architecture::EfficientVgg => efficient_vgg::tally(spec, &mut t),
        Architecture::ResSe => res_se::tally(spec, &mut t),
        Architecture::Unet | Architecture::UnetLean => unet::tally(spec, &mut t),
    }
    t
}

/// Walks a network's layer shapes without building it: spatial size, parameter and multiply-add counts.
struct Tally {
    h: usize,
    w: usize,
    trainable: usize,
    running: usize,
    multiply_adds: u64,
    collapsed: bool,
}

impl Tally {
    fn new(h: usize, w: usize) -> Self {
        Self {
            h,
            w,
            trainable: 0,
            running: 0,
            multiply_adds: 0,
            collapsed: false,
        }
    }

    /// A conv from the current spatial size; moves the spatial size to the conv's output.
    fn conv(&mut self, c_in: usize, c_out: usize, k: usize, stride: usize) {
        let (h, w) = self.conv_from(self.h, self.w, c_in, c_out, k, stride);
        self.h = h;
        self.w = w;
    }

    /// A conv applied to an input of size h x w (a residual shortcut); returns its output size.
    fn conv_from(
        &mut self,
        h: usize,
        w: usize,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
    ) -> (usize, usize) {
        let (oh, ow) = (same_output(h, stride), same_output(w, stride));
        self.trainable += k * k * c_in * c_out;
        self.multiply_adds += (oh * ow * k * k * c_in * c_out) as u64;
        (oh, ow)
    }

    fn batch_norm(&mut self, c: usize) {
        self.trainable += 2 * c;
        self.running += 2 * c;
    }

    fn prelu(&mut self, c: usize) {
        self.trainable += c;
    }

    fn dense(&mut self, inputs: usize, outputs: usize) {
        self.trainable += inputs * outputs + outputs;
        self.multiply_adds += (inputs * outputs) as u64;
    }

    fn squeeze_excite(&mut self, c: usize) {
        let hidden = se_hidden(c);
        self.dense(c, hidden);
        self.dense(hidden, c);
    }

    fn pool(&mut self) {
        if self.h < 2 || self.w < 2 {
            self.collapsed = true;
        }
        self.h /= 2;
        self.w /= 2;
    }
}

/// The forward pass's switches from a `Mode`: whether batch norm trains, and the stream dropout draws from.
fn split_mode(mode: Mode<'_>) -> (bool, Option<&mut ChaCha20Rng>) {
    match mode {
        Mode::Train { rng } => (true, Some(rng)),
        Mode::Eval => (false, None),
    }
}

/// The input every network takes: [batch, 1, n_mels, frames] in the model's dtype.
fn check_input(x: &candle_core::Tensor, dtype: DType) -> Result<()> {
    let (_, c, _, _) = x.dims4()?;
    if c != 1 {
        bail!(
            "expected a single-channel input [batch, 1, n_mels, frames], got {:?}",
            x.dims()
        );
    }
    if x.dtype() != dtype {
        bail!(
            "input is {:?} but the model was built in {:?}",
            x.dtype(),
            dtype
        );
    }
    Ok(())
}
