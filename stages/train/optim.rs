//! Adam exactly as Keras 3 runs it, with a state that can be written out and read back so that a resumed
//! run continues bit for bit.
//!
//! Keras 3 (`keras/src/optimizers/adam.py`, `Adam.update_step`) does not bias-correct `m` and `v`
//! themselves. It folds both corrections into the step size and adds epsilon to the *uncorrected*
//! `sqrt(v)` (the paper's "epsilon hat"), all in the variable's dtype:
//!
//! ```text
//! t     = iterations + 1
//! alpha = lr * sqrt(1 - beta2^t) / (1 - beta1^t)
//! m    += (g - m) * (1 - beta1)
//! v    += (g * g - v) * (1 - beta2)
//! var  -= m * alpha / (sqrt(v) + epsilon)
//! ```
//!
//! The textbook form `lr * m_hat / (sqrt(v_hat) + epsilon)` differs from this whenever epsilon is not
//! negligible next to `sqrt(v)`, which is why the order of operations above is kept literally. The
//! constants `1 - beta1` and `1 - beta2` are formed in f64 and then rounded to the variable's dtype, as
//! Python does before the multiplication.

use std::collections::{BTreeSet, HashMap};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Error, Result, Tensor, Var};

/// Keras' defaults.
pub const BETA_1: f64 = 0.9;
pub const BETA_2: f64 = 0.999;
pub const EPSILON: f64 = 1e-7;

const ITERATIONS: &str = "adam/iterations";
const LEARNING_RATE: &str = "adam/learning_rate";
const MOMENTUM: &str = "adam/momentum/";
const VELOCITY: &str = "adam/velocity/";

/// Floating-point element types the update runs in (the variable's own dtype, as in Keras).
trait Real:
    candle_core::WithDType
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::AddAssign
    + std::ops::SubAssign
{
    fn of(x: f64) -> Self;
    fn sqrt(self) -> Self;
    fn powf(self, e: Self) -> Self;
}

macro_rules! real {
    ($t:ty) => {
        impl Real for $t {
            fn of(x: f64) -> Self {
                x as $t
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn powf(self, e: Self) -> Self {
                <$t>::powf(self, e)
            }
        }
    };
}
real!(f32);
real!(f64);

/// First and second moments of one variable, in its dtype.
#[derive(Clone)]
enum Moments {
    F32 { m: Vec<f32>, v: Vec<f32> },
    F64 { m: Vec<f64>, v: Vec<f64> },
}

struct Slot {
    name: String,
    var: Var,
    moments: Moments,
}

/// Adam over a fixed set of named variables (sorted by name; updated in that order).
pub struct Adam {
    slots: Vec<Slot>,
    learning_rate: f64,
    beta_1: f64,
    beta_2: f64,
    epsilon: f64,
    iterations: u64,
}

impl Adam {
    /// Keras' defaults (beta1 0.9, beta2 0.999, epsilon 1e-7, no weight decay).
    pub fn new(vars: Vec<(String, Var)>, learning_rate: f64) -> Result<Self> {
        Self::with_hyper(vars, learning_rate, BETA_1, BETA_2, EPSILON)
    }

    pub fn with_hyper(
        mut vars: Vec<(String, Var)>,
        learning_rate: f64,
        beta_1: f64,
        beta_2: f64,
        epsilon: f64,
    ) -> Result<Self> {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let mut slots = Vec::with_capacity(vars.len());
        for (name, var) in vars {
            if slots.last().is_some_and(|s: &Slot| s.name == name) {
                candle_core::bail!("adam: variable name {name:?} given twice");
            }
            let n = var.elem_count();
            let moments = match var.dtype() {
                DType::F32 => Moments::F32 {
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                },
                DType::F64 => Moments::F64 {
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                },
                dt => {
                    candle_core::bail!("adam: variable {name:?} has dtype {dt:?}, need f32 or f64")
                }
            };
            slots.push(Slot { name, var, moments });
        }
        Ok(Self {
            slots,
            learning_rate,
            beta_1,
            beta_2,
            epsilon,
            iterations: 0,
        })
    }

    pub fn learning_rate(&self) -> f64 {
        self.learning_rate
    }

    /// Takes effect from the next step (Keras changes it between epochs through a callback).
    pub fn set_learning_rate(&mut self, learning_rate: f64) {
        self.learning_rate = learning_rate;
    }

    /// Steps taken so far (Keras' `optimizer.iterations`).
    pub fn iterations(&self) -> u64 {
        self.iterations
    }

    /// Back-propagates `loss` and applies one step.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = loss.backward()?;
        self.step(&grads)
    }

    /// One step from the gradients in `grads`. A variable without a gradient keeps its value and moments
    /// (Keras drops `None` gradients the same way); the step counter advances once regardless.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let t = (self.iterations + 1) as f64;
        for slot in &mut self.slots {
            let Some(grad) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            if grad.dims() != slot.var.dims() {
                candle_core::bail!(
                    "adam: gradient of {:?} has shape {:?}, variable {:?}",
                    slot.name,
                    grad.dims(),
                    slot.var.dims()
                );
            }
            let hyper = (
                self.learning_rate,
                self.beta_1,
                self.beta_2,
                self.epsilon,
                t,
            );
            match &mut slot.moments {
                Moments::F32 { m, v } => update::<f32>(&slot.var, grad, m, v, hyper)?,
                Moments::F64 { m, v } => update::<f64>(&slot.var, grad, m, v, hyper)?,
            }
        }
        self.iterations += 1;
        Ok(())
    }

    /// The full state as named tensors: `adam/iterations` (i64 scalar), `adam/learning_rate` (f64
    /// scalar), and `adam/momentum/<var>`, `adam/velocity/<var>` in each variable's shape and dtype.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(2 + 2 * self.slots.len());
        let iterations = i64::try_from(self.iterations)
            .map_err(|_| Error::Msg("adam: step count overflows i64".into()))?;
        out.push((
            ITERATIONS.to_string(),
            Tensor::new(iterations, &Device::Cpu)?,
        ));
        out.push((
            LEARNING_RATE.to_string(),
            Tensor::new(self.learning_rate, &Device::Cpu)?,
        ));
        for slot in &self.slots {
            let shape = slot.var.shape();
            let (m, v) = match &slot.moments {
                Moments::F32 { m, v } => (
                    Tensor::from_slice(m, shape, &Device::Cpu)?,
                    Tensor::from_slice(v, shape, &Device::Cpu)?,
                ),
                Moments::F64 { m, v } => (
                    Tensor::from_slice(m, shape, &Device::Cpu)?,
                    Tensor::from_slice(v, shape, &Device::Cpu)?,
                ),
            };
            out.push((format!("{MOMENTUM}{}", slot.name), m));
            out.push((format!("{VELOCITY}{}", slot.name), v));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Restores what [`Adam::state_tensors`] wrote. The names, shapes and dtypes must match this
    /// optimizer's variables exactly; on any mismatch nothing is changed and an error is returned.
    pub fn load_state_tensors(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let expected: BTreeSet<String> = [ITERATIONS.to_string(), LEARNING_RATE.to_string()]
            .into_iter()
            .chain(self.slots.iter().flat_map(|s| {
                [
                    format!("{MOMENTUM}{}", s.name),
                    format!("{VELOCITY}{}", s.name),
                ]
            }))
            .collect();
        let given: BTreeSet<String> = tensors.keys().cloned().collect();
        if expected != given {
            candle_core::bail!("adam: state tensors do not name this optimizer's variables");
        }
        let scalar = |name: &str, dtype: DType| -> Result<&Tensor> {
            let t = &tensors[name];
            if t.dtype() != dtype || t.elem_count() != 1 {
                candle_core::bail!("adam: {name} must be a {dtype:?} scalar");
            }
            Ok(t)
        };
        let iterations = scalar(ITERATIONS, DType::I64)?
            .flatten_all()?
            .to_vec1::<i64>()?[0];
        let iterations = u64::try_from(iterations)
            .map_err(|_| Error::Msg("adam: negative step count".into()))?;
        let learning_rate = scalar(LEARNING_RATE, DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?[0];
        let mut moments = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            let m = &tensors[&format!("{MOMENTUM}{}", slot.name)];
            let v = &tensors[&format!("{VELOCITY}{}", slot.name)];
            for t in [m, v] {
                if t.dims() != slot.var.dims() || t.dtype() != slot.var.dtype() {
                    candle_core::bail!(
                        "adam: moments of {:?} do not match the variable",
                        slot.name
                    );
                }
            }
            moments.push(match slot.moments {
                Moments::F32 { .. } => Moments::F32 {
                    m: m.flatten_all()?.to_vec1()?,
                    v: v.flatten_all()?.to_vec1()?,
                },
                Moments::F64 { .. } => Moments::F64 {
                    m: m.flatten_all()?.to_vec1()?,
                    v: v.flatten_all()?.to_vec1()?,
                },
            });
        }
        for (slot, m) in self.slots.iter_mut().zip(moments) {
            slot.moments = m;
        }
        self.iterations = iterations;
        self.learning_rate = learning_rate;
        Ok(())
    }
}

fn update<T: Real>(
    var: &Var,
    grad: &Tensor,
    m: &mut [T],
    v: &mut [T],
    (lr, beta_1, beta_2, epsilon, t): (f64, f64, f64, f64, f64),
) -> Result<()> {
    let mut p: Vec<T> = var.as_tensor().flatten_all()?.to_vec1()?;
    let g: Vec<T> = grad.to_dtype(var.dtype())?.flatten_all()?.to_vec1()?;
    let one = T::of(1.0);
    let local_step = T::of(t);
    let beta_1_power = T::of(beta_1).powf(local_step);
    let beta_2_power = T::of(beta_2).powf(local_step);
    let alpha = T::of(lr) * (one - beta_2_power).sqrt() / (one - beta_1_power);
    let one_minus_beta_1 = T::of(1.0 - beta_1);
    let one_minus_beta_2 = T::of(1.0 - beta_2);
    let eps = T::of(epsilon);
    for (((p, &g), m), v) in p.iter_mut().zip(&g).zip(m.iter_mut()).zip(v.iter_mut()) {
        *m += (g - *m) * one_minus_beta_1;
        *v += (g * g - *v) * one_minus_beta_2;
        *p -= *m * alpha / (v.sqrt() + eps);
    }
    var.set(&Tensor::from_vec(p, var.shape(), var.device())?)
}

#[cfg(test)]
#[path = "optim_tests.rs"]
mod tests;
