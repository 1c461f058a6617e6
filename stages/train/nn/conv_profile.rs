//! Opt-in accounting of the conv ops' wall time and arithmetic, so a benchmark can tell how much of a
//! training step the convolutions take and how close they run to the gemm rate.
//!
//! Off by default; when off an op pays one thread-local flag read. The counters are per thread:
//! candle runs an op's kernel (and every gradient op of a backward pass) on the thread that asks for
//! it, so a thread sees exactly its own step's convs, never those of tests or trainings running
//! beside it. Timing never touches the data, so enabling it cannot change a result bit.

use std::cell::Cell;
use std::time::Instant;

/// One of the three kernels behind a convolution and its gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Forward,
    GradInput,
    GradKernel,
}

/// What one kind of conv op did while profiling was on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpTotals {
    pub calls: u64,
    /// Wall time inside the kernels (operand checks included, the callers' copies to contiguous not).
    pub nanos: u64,
    /// 2 x multiply-adds, from the geometry (padding counted as data, as the model tally does).
    pub flops: u64,
}

impl OpTotals {
    fn add(self, other: OpTotals) -> OpTotals {
        OpTotals {
            calls: self.calls + other.calls,
            nanos: self.nanos + other.nanos,
            flops: self.flops + other.flops,
        }
    }

    /// Achieved GFLOP/s; 0 when nothing ran.
    pub fn gflops(&self) -> f64 {
        if self.nanos == 0 {
            0.0
        } else {
            self.flops as f64 / self.nanos as f64
        }
    }

    pub fn seconds(&self) -> f64 {
        self.nanos as f64 * 1e-9
    }
}

/// The conv ops of the current thread since profiling was last reset, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub forward: OpTotals,
    pub grad_input: OpTotals,
    pub grad_kernel: OpTotals,
}

impl Totals {
    /// The three kinds together.
    pub fn all(&self) -> OpTotals {
        self.forward.add(self.grad_input).add(self.grad_kernel)
    }

    fn slot(&mut self, op: Op) -> &mut OpTotals {
        match op {
            Op::Forward => &mut self.forward,
            Op::GradInput => &mut self.grad_input,
            Op::GradKernel => &mut self.grad_kernel,
        }
    }
}

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(false) };
    static TOTALS: Cell<Totals> = Cell::new(Totals::default());
}

/// Turns the accounting on or off for the current thread; the totals are kept either way.
pub fn set_enabled(on: bool) {
    ENABLED.with(|e| e.set(on));
}

/// The current thread's totals, which restart from zero.
pub fn take() -> Totals {
    TOTALS.with(|t| t.replace(Totals::default()))
}

/// Runs `kernel`, adding its wall time and `flops` to the thread's totals for `op` when enabled.
pub(super) fn record<R>(op: Op, flops: u64, kernel: impl FnOnce() -> R) -> R {
    if !ENABLED.with(Cell::get) {
        return kernel();
    }
    let started = Instant::now();
    let out = kernel();
    let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    TOTALS.with(|t| {
        let mut totals = t.get();
        *totals.slot(op) = totals.slot(op).add(OpTotals {
            calls: 1,
            nanos,
            flops,
        });
        t.set(totals);
    });
    out
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    use super::*;
    use crate::train::nn::conv::{conv2d, conv2d_grad_input, conv2d_grad_kernel};

    fn ramp(dims: (usize, usize, usize, usize)) -> Tensor {
        let n = dims.0 * dims.1 * dims.2 * dims.3;
        let values: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 13) as f32 / 13.0 - 0.5)
            .collect();
        Tensor::from_vec(values, dims, &Device::Cpu).unwrap()
    }

    /// Runs `f` with profiling on, from fresh totals, and returns what it recorded.
    fn profiled(f: impl FnOnce()) -> Totals {
        take();
        set_enabled(true);
        f();
        set_enabled(false);
        take()
    }

    #[test]
    fn counts_the_forward_and_both_gradients_of_a_backward_pass() {
        // 2 items, 3 -> 4 channels, 9 x 8 input, 3 x 3 kernel, stride 2, padding 1: output 5 x 4.
        let x = Var::from_tensor(&ramp((2, 3, 9, 8))).unwrap();
        let k = Var::from_tensor(&ramp((4, 3, 3, 3))).unwrap();
        let flops = 2 * 2 * 4 * (5 * 4) * (3 * 3 * 3);
        let totals = profiled(|| {
            let y = conv2d(x.as_tensor(), k.as_tensor(), 2, 1).unwrap();
            y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        });
        for (what, op) in [
            ("forward", totals.forward),
            ("grad input", totals.grad_input),
            ("grad kernel", totals.grad_kernel),
        ] {
            assert_eq!(op.calls, 1, "{what}");
            assert_eq!(op.flops, flops, "{what}");
        }
        assert_eq!(totals.all().flops, 3 * flops);
    }

    #[test]
    fn an_input_gradient_nothing_needs_is_neither_run_nor_counted() {
        let x = ramp((2, 1, 6, 6));
        let k = Var::from_tensor(&ramp((2, 1, 3, 3))).unwrap();
        let totals = profiled(|| {
            let y = conv2d(&x, k.as_tensor(), 1, 1).unwrap();
            y.sum_all().unwrap().backward().unwrap();
        });
        assert_eq!(totals.forward.calls, 1);
        assert_eq!(totals.grad_input, OpTotals::default());
        assert_eq!(totals.grad_kernel.calls, 1);
        assert_eq!(totals.grad_kernel.flops, 2 * 2 * 2 * 36 * 9);
    }

    #[test]
    fn the_gradient_functions_are_counted_and_nothing_is_while_disabled() {
        let x = ramp((1, 2, 5, 5));
        let k = ramp((3, 2, 1, 1));
        let grad = ramp((1, 3, 5, 5));
        let totals = profiled(|| {
            conv2d_grad_input(&grad, &k, (5, 5), 1, 0).unwrap();
            conv2d_grad_kernel(&x, &grad, (1, 1), 1, 0).unwrap();
        });
        assert_eq!(totals.forward, OpTotals::default());
        assert_eq!(totals.grad_input.flops, 2 * 3 * 25 * 2);
        assert_eq!(totals.grad_kernel.flops, 2 * 3 * 25 * 2);
        conv2d(&x, &k, 1, 0).unwrap();
        assert_eq!(take(), Totals::default());
    }

    #[test]
    fn profiling_leaves_the_bits_unchanged() {
        let x = Var::from_tensor(&ramp((3, 2, 7, 7))).unwrap();
        let k = Var::from_tensor(&ramp((4, 2, 3, 3))).unwrap();
        let run = || {
            let y = conv2d(x.as_tensor(), k.as_tensor(), 1, 1).unwrap();
            let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            [
                y,
                grads.get(x.as_tensor()).unwrap().clone(),
                grads.get(k.as_tensor()).unwrap().clone(),
            ]
            .map(|t| {
                t.flatten_all()
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>()
            })
        };
        let plain = run();
        let mut seen = None;
        let totals = profiled(|| seen = Some(run()));
        assert_eq!(totals.all().calls, 3);
        assert_eq!(seen, Some(plain));
    }
}
