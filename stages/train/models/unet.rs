//! The U-Net encoder used as a classifier, in the study's two sizes. UNet_Audio_Classifier: four stages of
//! [conv -> BN -> PReLU -> conv -> BN -> PReLU] at 32, 64, 128 and 256 filters with a max pool after the first
//! three (the study built skip tensors but no decoder, so none is built here). The lean U-Net: conv 32, conv 32,
//! pool, conv 64, pool, conv 128, each conv followed by BN and PReLU. Both end with global average pool ->
//! dropout 0.5 -> dense to the classes.

use crate::train::nn::conv::ConvKernel;
use candle_core::{DType, Device, Result, Tensor, Var};

use super::{check_input, split_mode, Architecture, ModelSpec, Tally};
use crate::train::classifier::{Classifier, Mode};
use crate::train::nn::layers::{
    global_avg_pool, max_pool_2x2, BatchNorm, Conv2d, Dense, Dropout, PRelu, Then,
};
use crate::train::nn::params::{ParamStore, Weights};

const DROPOUT: f64 = 0.5;

/// A stage: the filters of each conv -> BN -> PReLU unit, and whether a 2 x 2 max pool follows.
struct StagePlan {
    filters: &'static [usize],
    pool: bool,
}

const FULL: [StagePlan; 4] = [
    StagePlan {
        filters: &[32, 32],
        pool: true,
    },
    StagePlan {
        filters: &[64, 64],
        pool: true,
    },
    StagePlan {
        filters: &[128, 128],
        pool: true,
    },
    StagePlan {
        filters: &[256, 256],
        pool: false,
    },
];

const LEAN: [StagePlan; 3] = [
    StagePlan {
        filters: &[32, 32],
        pool: true,
    },
    StagePlan {
        filters: &[64],
        pool: true,
    },
    StagePlan {
        filters: &[128],
        pool: false,
    },
];

fn plan(arch: Architecture) -> &'static [StagePlan] {
    if arch == Architecture::UnetLean {
        &LEAN
    } else {
        &FULL
    }
}

struct Unit {
    conv: Conv2d,
    bn: BatchNorm,
    prelu: PRelu,
}

struct Stage {
    units: Vec<Unit>,
    pool: bool,
}

pub struct Unet {
    stages: Vec<Stage>,
    dropout: Dropout,
    logits: Dense,
    /// Batch norm, PReLU and the stage's pool as one op; off for the stock-candle baseline.
    fuse: bool,
    dtype: DType,
    weights: Weights,
}

impl Unet {
    /// Builds `spec.arch`, which must be `Unet` or `UnetLean`.
    pub fn new(
        spec: &ModelSpec,
        seed: [u8; 32],
        dtype: DType,
        device: &Device,
        kernel: ConvKernel,
    ) -> Result<Self> {
        if !matches!(spec.arch, Architecture::Unet | Architecture::UnetLean) {
            candle_core::bail!("Unet cannot build {:?}", spec.arch);
        }
        let mut p = ParamStore::new(seed, dtype, device)
            .with_batch_norm_momentum(spec.batch_norm_momentum)
            .with_conv_kernel(kernel);
        let mut stages = Vec::new();
        let mut c_in = 1;
        for (s, stage) in plan(spec.arch).iter().enumerate() {
            let mut units = Vec::new();
            for (u, filters) in stage.filters.iter().enumerate() {
                let c = spec.scaled(*filters);
                let name = format!("stage{}.unit{}", s + 1, u + 1);
                units.push(Unit {
                    conv: Conv2d::new(&mut p, &format!("{name}.conv"), c_in, c, 3, 1)?,
                    bn: BatchNorm::new(&mut p, &format!("{name}.bn"), c)?,
                    prelu: PRelu::new(&mut p, &format!("{name}.prelu"), c)?,
                });
                c_in = c;
            }
            stages.push(Stage {
                units,
                pool: stage.pool,
            });
        }
        let logits = Dense::new(&mut p, "logits", c_in, spec.classes)?;
        Ok(Self {
            stages,
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
    for stage in plan(spec.arch) {
        for filters in stage.filters {
            let c = spec.scaled(*filters);
            t.conv(c_in, c, 3, 1);
            t.batch_norm(c);
            t.prelu(c);
            c_in = c;
        }
        if stage.pool {
            t.pool();
        }
    }
    t.dense(c_in, spec.classes);
}

impl Unet {
    /// Everything before the head's dropout: the encoder and the global average pool.
    fn trunk(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        check_input(x, self.dtype)?;
        let mut x = x.clone();
        for stage in &self.stages {
            if self.fuse {
                let last = stage.units.len() - 1;
                for (i, u) in stage.units.iter().enumerate() {
                    let pool = stage.pool && i == last;
                    x = u.bn.forward_then(
                        &u.conv.forward(&x)?,
                        train,
                        Then::PRelu(&u.prelu),
                        pool,
                    )?;
                }
                continue;
            }
            for u in &stage.units {
                x = u
                    .prelu
                    .forward(&u.bn.forward(&u.conv.forward(&x)?, train)?)?;
            }
            if stage.pool {
                x = max_pool_2x2(&x)?;
            }
        }
        global_avg_pool(&x)
    }
}

impl Classifier for Unet {
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
