//! ResSE_AudioCNN: stem [conv 32 -> BN -> PReLU], three residual blocks with (filters, stride) (64, 2), (128, 2),
//! (256, 2), then global average pool -> dropout 0.5 -> dense to the classes.

use crate::train::nn::conv::ConvKernel;
use candle_core::{DType, Device, Result, Tensor, Var};

use super::{check_input, split_mode, ModelSpec, Tally};
use crate::train::classifier::{Classifier, Mode};
use crate::train::nn::layers::{
    global_avg_pool, BatchNorm, Conv2d, Dense, Dropout, PRelu, SqueezeExcite, Then,
};
use crate::train::nn::params::{ParamStore, Weights};

const STEM: usize = 32;
const BLOCKS: [(usize, usize); 3] = [(64, 2), (128, 2), (256, 2)];
const DROPOUT: f64 = 0.5;

/// conv 3x3 (stride s) -> BN -> PReLU -> conv 3x3 -> BN -> SE, plus a shortcut 1x1 conv (stride s) -> BN; the
/// two are added and go through a PReLU. (Every block of the study changes stride, so the shortcut always has
/// its conv.)
pub(crate) struct ResBlock {
    conv1: Conv2d,
    bn1: BatchNorm,
    prelu1: PRelu,
    conv2: Conv2d,
    bn2: BatchNorm,
    se: SqueezeExcite,
    shortcut_conv: Conv2d,
    shortcut_bn: BatchNorm,
    prelu_out: PRelu,
    /// BN -> PReLU, SE's scaling and add -> PReLU as single ops; off for the stock-candle baseline.
    fuse: bool,
}

impl ResBlock {
    pub(crate) fn new(
        p: &mut ParamStore,
        name: &str,
        c_in: usize,
        c: usize,
        stride: usize,
    ) -> Result<Self> {
        Ok(Self {
            conv1: Conv2d::new(p, &format!("{name}.conv1"), c_in, c, 3, stride)?,
            bn1: BatchNorm::new(p, &format!("{name}.bn1"), c)?,
            prelu1: PRelu::new(p, &format!("{name}.prelu1"), c)?,
            conv2: Conv2d::new(p, &format!("{name}.conv2"), c, c, 3, 1)?,
            bn2: BatchNorm::new(p, &format!("{name}.bn2"), c)?,
            se: SqueezeExcite::new(p, &format!("{name}.se"), c)?,
            shortcut_conv: Conv2d::new(p, &format!("{name}.shortcut_conv"), c_in, c, 1, stride)?,
            shortcut_bn: BatchNorm::new(p, &format!("{name}.shortcut_bn"), c)?,
            prelu_out: PRelu::new(p, &format!("{name}.prelu_out"), c)?,
            fuse: p.conv_kernel() != ConvKernel::CandleStock,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if self.fuse {
            let y = self.bn1.forward_then(
                &self.conv1.forward(x)?,
                train,
                Then::PRelu(&self.prelu1),
                false,
            )?;
            let y = self
                .se
                .forward(&self.bn2.forward(&self.conv2.forward(&y)?, train)?)?;
            let shortcut = self
                .shortcut_bn
                .forward(&self.shortcut_conv.forward(x)?, train)?;
            return self.prelu_out.forward_sum(&shortcut, &y);
        }
        let y = self
            .prelu1
            .forward(&self.bn1.forward(&self.conv1.forward(x)?, train)?)?;
        let y = self
            .se
            .forward_composed(&self.bn2.forward(&self.conv2.forward(&y)?, train)?)?;
        let shortcut = self
            .shortcut_bn
            .forward(&self.shortcut_conv.forward(x)?, train)?;
        self.prelu_out.forward(&(shortcut + y)?)
    }
}

pub struct ResSe {
    stem_conv: Conv2d,
    stem_bn: BatchNorm,
    stem_prelu: PRelu,
    blocks: Vec<ResBlock>,
    dropout: Dropout,
    logits: Dense,
    fuse: bool,
    dtype: DType,
    weights: Weights,
}

impl ResSe {
    pub fn new(
        spec: &ModelSpec,
        seed: [u8; 32],
        dtype: DType,
        device: &Device,
        kernel: ConvKernel,
    ) -> Result<Self> {
        let mut p = ParamStore::new(seed, dtype, device)
            .with_batch_norm_momentum(spec.batch_norm_momentum)
            .with_conv_kernel(kernel);
        let stem = spec.scaled(STEM);
        let stem_conv = Conv2d::new(&mut p, "stem.conv", 1, stem, 3, 1)?;
        let stem_bn = BatchNorm::new(&mut p, "stem.bn", stem)?;
        let stem_prelu = PRelu::new(&mut p, "stem.prelu", stem)?;
        let mut blocks = Vec::new();
        let mut c_in = stem;
        for (i, (filters, stride)) in BLOCKS.iter().enumerate() {
            let c = spec.scaled(*filters);
            blocks.push(ResBlock::new(
                &mut p,
                &format!("block{}", i + 1),
                c_in,
                c,
                *stride,
            )?);
            c_in = c;
        }
        let logits = Dense::new(&mut p, "logits", c_in, spec.classes)?;
        Ok(Self {
            stem_conv,
            stem_bn,
            stem_prelu,
            blocks,
            dropout: Dropout::new(DROPOUT)?,
            logits,
            fuse: kernel != ConvKernel::CandleStock,
            dtype,
            weights: p.finish(),
        })
    }
}

pub(super) fn tally(spec: &ModelSpec, t: &mut Tally) {
    let stem = spec.scaled(STEM);
    t.conv(1, stem, 3, 1);
    t.batch_norm(stem);
    t.prelu(stem);
    let mut c_in = stem;
    for (filters, stride) in BLOCKS {
        let c = spec.scaled(filters);
        let (h, w) = (t.h, t.w);
        t.conv(c_in, c, 3, stride);
        t.batch_norm(c);
        t.prelu(c);
        t.conv(c, c, 3, 1);
        t.batch_norm(c);
        t.squeeze_excite(c);
        t.conv_from(h, w, c_in, c, 1, stride);
        t.batch_norm(c);
        t.prelu(c);
        c_in = c;
    }
    t.dense(c_in, spec.classes);
}

impl ResSe {
    /// Everything before the head's dropout: the stem, the residual blocks and the global average pool.
    fn trunk(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        check_input(x, self.dtype)?;
        let stem = self.stem_conv.forward(x)?;
        let mut x = if self.fuse {
            self.stem_bn
                .forward_then(&stem, train, Then::PRelu(&self.stem_prelu), false)?
        } else {
            self.stem_prelu
                .forward(&self.stem_bn.forward(&stem, train)?)?
        };
        for b in &self.blocks {
            x = b.forward(&x, train)?;
        }
        global_avg_pool(&x)
    }
}

impl Classifier for ResSe {
    fn forward(&self, x: &Tensor, mode: Mode<'_>) -> Result<Tensor> {
        let (train, rng) = split_mode(mode);
        let x = self.dropout.forward(&self.trunk(x, train)?, rng)?;
        self.logits.forward(&x)
    }

    fn embed(&self, x: &Tensor) -> Result<Tensor> {
        self.trunk(x, false)
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        self.weights.trainable.clone()
    }

    fn state(&self) -> Vec<(String, Var)> {
        self.weights.state.clone()
    }
}
