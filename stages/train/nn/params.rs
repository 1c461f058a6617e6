//! Where a network's weights come from: every tensor is a named candle `Var`, initialised from its own
//! ChaCha20 stream seeded by blake3(model seed, tensor name). A tensor's initial values therefore depend only on
//! the model seed and its own name, so adding, removing or reordering layers never shifts another layer's init.

use super::conv::ConvKernel;
use std::collections::BTreeMap;

use candle_core::{bail, DType, Device, Result, Tensor, Var};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// The ChaCha20 stream that initialises the tensor `name` of a model seeded with `seed`.
pub fn tensor_rng(seed: &[u8; 32], name: &str) -> ChaCha20Rng {
    let mut hasher = blake3::Hasher::new();
    // The seed has a fixed length, so seed ‖ name is an unambiguous encoding of the pair.
    hasher.update(seed);
    hasher.update(name.as_bytes());
    ChaCha20Rng::from_seed(*hasher.finalize().as_bytes())
}

/// A uniform draw in [0, 1) with 53 random bits, built from `next_u64` alone so that the values cannot change
/// with the `rand` crate's sampling algorithms.
pub fn unit_uniform(rng: &mut ChaCha20Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Keras' `glorot_uniform` limit: sqrt(6 / (fan_in + fan_out)).
pub fn glorot_limit(fan_in: usize, fan_out: usize) -> f64 {
    (6.0 / (fan_in + fan_out) as f64).sqrt()
}

/// Whether the optimizer updates a tensor or the forward pass maintains it (batch-norm running statistics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Trainable,
    Running,
}

/// A model's weights once built: what the optimizer updates and everything a weights file holds, each sorted by
/// name.
#[derive(Clone)]
pub struct Weights {
    pub trainable: Vec<(String, Var)>,
    pub state: Vec<(String, Var)>,
}

/// Collects the named tensors of one model while its layers are constructed.
pub struct ParamStore {
    seed: [u8; 32],
    dtype: DType,
    device: Device,
    vars: BTreeMap<String, (Var, Role)>,
    batch_norm_momentum: f64,
    conv_kernel: ConvKernel,
}

impl ParamStore {
    pub fn new(seed: [u8; 32], dtype: DType, device: &Device) -> Self {
        Self {
            seed,
            dtype,
            device: device.clone(),
            vars: BTreeMap::new(),
            batch_norm_momentum: super::layers::BN_MOMENTUM,
            conv_kernel: ConvKernel::default(),
        }
    }

    /// The implementation every convolution built from this store runs on (its weights do not depend on it).
    pub fn with_conv_kernel(mut self, kernel: ConvKernel) -> Self {
        self.conv_kernel = kernel;
        self
    }

    pub fn conv_kernel(&self) -> ConvKernel {
        self.conv_kernel
    }

    /// The running-statistics momentum every batch norm built from this store uses.
    pub fn with_batch_norm_momentum(mut self, momentum: f64) -> Self {
        self.batch_norm_momentum = momentum;
        self
    }

    pub fn batch_norm_momentum(&self) -> f64 {
        self.batch_norm_momentum
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A trainable tensor drawn uniformly from [-limit, limit) with the Glorot limit of its fans (Keras'
    /// default kernel initialiser).
    pub fn glorot_uniform(
        &mut self,
        name: &str,
        shape: &[usize],
        fan_in: usize,
        fan_out: usize,
    ) -> Result<Var> {
        if fan_in + fan_out == 0 {
            bail!("tensor {name}: glorot init needs a non-zero fan");
        }
        let limit = glorot_limit(fan_in, fan_out);
        let mut rng = tensor_rng(&self.seed, name);
        let n: usize = shape.iter().product();
        let values: Vec<f64> = (0..n)
            .map(|_| limit * (2.0 * unit_uniform(&mut rng) - 1.0))
            .collect();
        self.insert(name, shape, values, Role::Trainable)
    }

    /// A tensor filled with `value` (zeros for biases, ones for batch-norm scales, ...).
    pub fn constant(&mut self, name: &str, shape: &[usize], value: f64, role: Role) -> Result<Var> {
        let n: usize = shape.iter().product();
        self.insert(name, shape, vec![value; n], role)
    }

    fn insert(&mut self, name: &str, shape: &[usize], values: Vec<f64>, role: Role) -> Result<Var> {
        if name.is_empty() {
            bail!("a model tensor needs a name");
        }
        if self.vars.contains_key(name) {
            bail!("tensor {name} is declared twice");
        }
        let tensor = Tensor::from_vec(values, shape, &self.device)?.to_dtype(self.dtype)?;
        let var = Var::from_tensor(&tensor)?;
        self.vars.insert(name.to_string(), (var.clone(), role));
        Ok(var)
    }

    /// The built model's tensors, sorted by name (the map is ordered, so no sort is needed).
    pub fn finish(self) -> Weights {
        let mut trainable = Vec::new();
        let mut state = Vec::new();
        for (name, (var, role)) in self.vars {
            if role == Role::Trainable {
                trainable.push((name.clone(), var.clone()));
            }
            state.push((name, var));
        }
        Weights { trainable, state }
    }
}
