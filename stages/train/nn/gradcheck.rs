//! Finite-difference checks of candle's backprop, in f64: the analytic gradient of a scalar loss with respect to
//! each checked element must match the central difference (L(v + h) - L(v - h)) / 2h.

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::params::unit_uniform;

pub const STEP: f64 = 1e-6;
/// |analytic - numeric| must stay under ABS_TOL + REL_TOL * max(|analytic|, |numeric|). With f64 and h = 1e-6
/// the central difference is accurate to about 1e-9 on these losses, so these leave margin without hiding a
/// wrong gradient (the bugs this guards against are off by factors like 0.25, or by whole entries).
pub const ABS_TOL: f64 = 1e-7;
pub const REL_TOL: f64 = 1e-5;

/// A deterministic tensor with entries uniform in [lo, hi), drawn from ChaCha20 seeded by `seed`.
pub fn uniform(shape: &[usize], lo: f64, hi: f64, seed: u64, dtype: DType) -> Result<Tensor> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let values: Vec<f64> = (0..n)
        .map(|_| lo + (hi - lo) * unit_uniform(&mut rng))
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu)?.to_dtype(dtype)
}

/// A variable with deterministic uniform entries (f64).
pub fn uniform_var(shape: &[usize], lo: f64, hi: f64, seed: u64) -> Result<Var> {
    Var::from_tensor(&uniform(shape, lo, hi, seed, DType::F64)?)
}

/// Reduces any output to a scalar that depends on every element with a different weight, so that a gradient
/// routed to the wrong output element cannot cancel out.
pub fn project(y: &Tensor, weights: &Tensor) -> Result<Tensor> {
    y.mul(weights)?.sum_all()
}

/// Outcome of a check: how many elements were compared and the worst error relative to the tolerance.
#[derive(Debug)]
pub struct Report {
    pub checked: usize,
    /// Entries whose gradient is large enough (above 1e-4) that a wrong scale or routing would show against the
    /// tolerance; a check where this stays near zero would prove little.
    pub significant: usize,
    pub worst: f64,
    pub failures: Vec<String>,
}

/// Compares analytic and numeric gradients of `loss` for every element of each var, or for `sample` elements
/// per var chosen by a seeded stream when `sample` is `Some` and the var is larger.
pub fn check(
    vars: &[(String, Var)],
    sample: Option<usize>,
    loss: &dyn Fn() -> Result<Tensor>,
) -> Result<Report> {
    let grads = loss()?.backward()?;
    let mut pick = ChaCha20Rng::seed_from_u64(7);
    let mut report = Report {
        checked: 0,
        significant: 0,
        worst: 0.0,
        failures: Vec::new(),
    };
    for (name, var) in vars {
        let shape = var.shape().clone();
        let base: Vec<f64> = var.flatten_all()?.to_vec1()?;
        let analytic: Vec<f64> = match grads.get(var.as_tensor()) {
            Some(g) => g.flatten_all()?.to_vec1()?,
            None => vec![0.0; base.len()],
        };
        let indices: Vec<usize> = match sample {
            Some(k) if k < base.len() => {
                let mut chosen = Vec::with_capacity(k);
                while chosen.len() < k {
                    let i = (pick.next_u64() % base.len() as u64) as usize;
                    if !chosen.contains(&i) {
                        chosen.push(i);
                    }
                }
                chosen
            }
            _ => (0..base.len()).collect(),
        };
        for i in indices {
            let mut values = base.clone();
            values[i] = base[i] + STEP;
            var.set(&Tensor::from_vec(values.clone(), &shape, &Device::Cpu)?)?;
            let plus = loss()?.to_scalar::<f64>()?;
            values[i] = base[i] - STEP;
            var.set(&Tensor::from_vec(values, &shape, &Device::Cpu)?)?;
            let minus = loss()?.to_scalar::<f64>()?;
            var.set(&Tensor::from_vec(base.clone(), &shape, &Device::Cpu)?)?;
            let numeric = (plus - minus) / (2.0 * STEP);
            let a = analytic[i];
            let allowed = ABS_TOL + REL_TOL * a.abs().max(numeric.abs());
            let ratio = (a - numeric).abs() / allowed;
            report.worst = report.worst.max(ratio);
            report.checked += 1;
            if a.abs().max(numeric.abs()) > 1e-4 {
                report.significant += 1;
            }
            if ratio > 1.0 {
                report.failures.push(format!(
                    "{name}[{i}]: analytic {a:.10e}, numeric {numeric:.10e}"
                ));
            }
        }
    }
    Ok(report)
}

/// Runs `check` and fails the test with every mismatching element listed.
pub fn assert_gradients(
    what: &str,
    vars: &[(String, Var)],
    sample: Option<usize>,
    loss: &dyn Fn() -> Result<Tensor>,
) -> Report {
    let report = check(vars, sample, loss).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        report.significant > 0,
        "{what}: every checked gradient is negligible: {report:?}"
    );
    assert!(
        report.failures.is_empty(),
        "{what}: {} of {} gradient entries disagree with finite differences:\n{}",
        report.failures.len(),
        report.checked,
        report.failures.join("\n")
    );
    report
}

/// The analytic gradient of `loss` with respect to `var`, flattened (zeros if `var` does not reach the loss).
pub fn analytic(var: &Var, loss: &Tensor) -> Result<Vec<f64>> {
    let grads = loss.backward()?;
    match grads.get(var.as_tensor()) {
        Some(g) => g.flatten_all()?.to_vec1(),
        None => Ok(vec![0.0; var.elem_count()]),
    }
}

/// The central-difference gradient of `loss` with respect to every element of `var`.
pub fn numeric(var: &Var, loss: &dyn Fn() -> Result<Tensor>) -> Result<Vec<f64>> {
    let shape = var.shape().clone();
    let base: Vec<f64> = var.flatten_all()?.to_vec1()?;
    let mut out = Vec::with_capacity(base.len());
    for i in 0..base.len() {
        let mut values = base.clone();
        values[i] = base[i] + STEP;
        var.set(&Tensor::from_vec(values.clone(), &shape, &Device::Cpu)?)?;
        let plus = loss()?.to_scalar::<f64>()?;
        values[i] = base[i] - STEP;
        var.set(&Tensor::from_vec(values, &shape, &Device::Cpu)?)?;
        let minus = loss()?.to_scalar::<f64>()?;
        out.push((plus - minus) / (2.0 * STEP));
    }
    var.set(&Tensor::from_vec(base, &shape, &Device::Cpu)?)?;
    Ok(out)
}
