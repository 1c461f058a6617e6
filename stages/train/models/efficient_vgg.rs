//! Efficient_VGG: three blocks of [conv 3x3 -> BN -> ReLU -> max pool -> SE] with 16, 32 and 64 filters, then
//! global average pool -> dense 128 (ReLU) -> dropout 0.5 -> dense to the classes.

use crate::train::nn::conv::ConvKernel;
use candle_core::{DType, Device, Result, Tensor, Var};

use super::{check_input, split_mode, ModelSpec, Tally};
use crate::train::classifier::{Classifier, Mode};
use crate::train::nn::layers::{
    global_avg_pool, max_pool_2x2, BatchNorm, Conv2d, Dense, Dropout, SqueezeExcite, Then,
};
use crate::train::nn::params::{ParamStore, Weights};

const FILTERS: [usize; 3] = [16, 32, 64];
const HIDDEN: usize = 128;
const DROPOUT: f64 = 0.5;

struct Block {
    conv: Conv2d,
    bn: BatchNorm,
    se: SqueezeExcite,
}

pub struct EfficientVgg {
    blocks: Vec<Block>,
    hidden: Dense,
    dropout: Dropout,
    logits: Dense,
    /// Batch norm, ReLU and pool as one op and SE's scaling as one op; off for the stock-candle baseline,
    /// which keeps them as separate candle ops.
    fuse: bool,
    dtype: DType,
    weights: Weights,
}

impl EfficientVgg {
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
        let mut blocks = Vec::new();
        let mut c_in = 1;
        for (i, filters) in FILTERS.iter().enumerate() {
            let c = spec.scaled(*filters);
            let name = format!("block{}", i + 1);
            blocks.push(Block {
                conv: Conv2d::new(&mut p, &format!("{name}.conv"), c_in, c, 3, 1)?,
                bn: BatchNorm::new(&mut p, &format!("{name}.bn"), c)?,
                se: SqueezeExcite::new(&mut p, &format!("{name}.se"), c)?,
            });
            c_in = c;
        }
        let hidden_units = spec.scaled(HIDDEN);
        let hidden = Dense::new(&mut p, "hidden", c_in, hidden_units)?;
        let logits = Dense::new(&mut p, "logits", hidden_units, spec.classes)?;
        Ok(Self {
            blocks,
            hidden,
            dropout: Dropout::new(DROPOUT)?,
            logits,
            fuse: kernel != ConvKernel::CandleStock,
            dtype,
            weights: p.finish(),
        })
    }
}

pub(super) fn tally(spec: &ModelSpec, t: &mut Tally) {
    let mut c_in = 1;
    for filters in FILTERS {
        let c = spec.scaled(filters);
        t.conv(c_in, c, 3, 1);
        t.batch_norm(c);
        t.pool();
        t.squeeze_excite(c);
        c_in = c;
    }
    let hidden = spec.scaled(HIDDEN);
    t.dense(c_in, hidden);
    t.dense(hidden, spec.classes);
}

impl EfficientVgg {
    /// Everything before the head's dropout: the conv blocks, the pool and the hidden dense layer.
    fn trunk(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        check_input(x, self.dtype)?;
        let mut x = x.clone();
        for b in &self.blocks {
            x = b.conv.forward(&x)?;
            x = if self.fuse {
                let pooled = b.bn.forward_then(&x, train, Then::Relu, true)?;
                b.se.forward(&pooled)?
            } else {
                let pooled = max_pool_2x2(&b.bn.forward(&x, train)?.relu()?)?;
                b.se.forward_composed(&pooled)?
            };
        }
        self.hidden.forward(&global_avg_pool(&x)?)?.relu()
    }
}

impl Classifier for EfficientVgg {
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
