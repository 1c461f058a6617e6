use candle_core::{DType, Device, Tensor, Var};

use super::super::gradcheck::{assert_gradients, project, uniform, uniform_var};
use super::super::layers::{BatchNorm, PRelu};
use super::super::params::ParamStore;
use super::supports;

const SEED: [u8; 32] = [5; 32];

fn store(dtype: DType) -> ParamStore {
    ParamStore::new(SEED, dtype, &Device::Cpu)
}

fn set_uniform(var: &Var, lo: f64, hi: f64, seed: u64) {
    let t = uniform(var.dims(), lo, hi, seed, var.dtype()).unwrap();
    var.set(&t).unwrap();
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * w.abs().max(1.0),
            "{what}[{i}]: fused {g:.17e}, composed {w:.17e}"
        );
    }
}

/// A batch norm with non-trivial parameters and running statistics, the same for every call with `seed`.
fn batch_norm(dtype: DType, c: usize, seed: u64) -> BatchNorm {
    let bn = BatchNorm::new(&mut store(dtype), "bn", c).unwrap();
    set_uniform(bn.gamma(), -2.0, 2.0, seed);
    set_uniform(bn.beta(), -1.0, 1.0, seed + 1);
    set_uniform(bn.moving_mean(), -0.5, 0.5, seed + 2);
    set_uniform(bn.moving_variance(), 0.5, 2.0, seed + 3);
    bn
}

fn prelu(dtype: DType, c: usize, seed: u64) -> PRelu {
    let act = PRelu::new(&mut store(dtype), "act", c).unwrap();
    set_uniform(act.alpha(), -0.5, 0.8, seed);
    act
}

/// Output and gradients (x first, then each param in order) of `project(forward(x), r)`.
fn run(
    x: &Var,
    r: &Tensor,
    params: &[&Var],
    forward: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> (Tensor, Vec<Tensor>) {
    let y = forward(x.as_tensor()).unwrap();
    let grads = project(&y, r).unwrap().backward().unwrap();
    let mut out = vec![grads.get(x.as_tensor()).unwrap().clone()];
    for p in params {
        out.push(grads.get(p.as_tensor()).unwrap().clone());
    }
    (y, out)
}

/// Odd spatial sizes, a single batch item, and a single pixel per channel.
const SHAPES: [[usize; 4]; 4] = [[3, 4, 5, 7], [1, 3, 3, 5], [2, 2, 1, 1], [4, 3, 8, 8]];

#[test]
fn batch_norm_fused_equals_the_composition_forward_backward_and_running_stats() {
    for (k, shape) in SHAPES.iter().enumerate() {
        for train in [true, false] {
            let seed = 100 + 10 * k as u64;
            let (fused, composed) = (
                batch_norm(DType::F64, shape[1], seed),
                batch_norm(DType::F64, shape[1], seed),
            );
            // An offset mean, so that the statistics are not trivially centred.
            let x = uniform_var(shape, 1.0, 4.0, seed + 5).unwrap();
            let r = uniform(shape, -1.0, 1.0, seed + 6, DType::F64).unwrap();
            let what = format!("{shape:?} train {train}");
            let (yf, gf) = run(&x, &r, &[fused.gamma(), fused.beta()], &|x| {
                fused.forward(x, train)
            });
            let (yc, gc) = run(&x, &r, &[composed.gamma(), composed.beta()], &|x| {
                composed.forward_composed(x, train)
            });
            assert_close(&format!("y {what}"), &values(&yf), &values(&yc), 1e-12);
            for (name, (f, c)) in ["dx", "dgamma", "dbeta"].iter().zip(gf.iter().zip(&gc)) {
                assert_close(&format!("{name} {what}"), &values(f), &values(c), 1e-12);
            }
            for (f, c) in [
                (fused.moving_mean(), composed.moving_mean()),
                (fused.moving_variance(), composed.moving_variance()),
            ] {
                assert_close(
                    &format!("running {what}"),
                    &values(f.as_tensor()),
                    &values(c.as_tensor()),
                    1e-12,
                );
            }
        }
    }
}

#[test]
fn prelu_fused_equals_the_composition_including_exact_zeros() {
    for (k, shape) in SHAPES.iter().enumerate() {
        let seed = 200 + 10 * k as u64;
        let act = prelu(DType::F64, shape[1], seed);
        // Every third element exactly zero: the kink, where both must pass dy through unchanged.
        let raw = values(&uniform(shape, -1.0, 1.0, seed + 1, DType::F64).unwrap());
        let raw: Vec<f64> = raw
            .iter()
            .enumerate()
            .map(|(i, v)| if i % 3 == 0 { 0.0 } else { *v })
            .collect();
        let x = Var::from_tensor(&Tensor::from_vec(raw, shape, &Device::Cpu).unwrap()).unwrap();
        let r = uniform(shape, -1.0, 1.0, seed + 2, DType::F64).unwrap();
        let (yf, gf) = run(&x, &r, &[act.alpha()], &|x| act.forward(x));
        let (yc, gc) = run(&x, &r, &[act.alpha()], &|x| act.forward_composed(x));
        assert_close(&format!("y {shape:?}"), &values(&yf), &values(&yc), 1e-12);
        assert_close(
            &format!("dx {shape:?}"),
            &values(&gf[0]),
            &values(&gc[0]),
            1e-12,
        );
        assert_close(
            &format!("dalpha {shape:?}"),
            &values(&gf[1]),
            &values(&gc[1]),
            1e-12,
        );
    }
}

#[test]
fn prelu_with_zero_slopes_is_relu_bit_for_bit() {
    let act = PRelu::new(&mut store(DType::F32), "act", 3).unwrap();
    let x = uniform(&[2, 3, 4, 5], -1.0, 1.0, 7, DType::F32).unwrap();
    assert_eq!(bits(&act.forward(&x).unwrap()), bits(&x.relu().unwrap()));
}

#[test]
fn fused_gradients_match_finite_differences_on_odd_sizes_and_batch_one() {
    for (k, shape) in [[1, 2, 3, 5], [2, 3, 1, 7], [3, 2, 5, 3]]
        .iter()
        .enumerate()
    {
        let seed = 300 + 10 * k as u64;
        for train in [true, false] {
            let bn = batch_norm(DType::F64, shape[1], seed);
            let x = uniform_var(shape, -2.0, 3.0, seed + 5).unwrap();
            let r = uniform(shape, -1.0, 1.0, seed + 6, DType::F64).unwrap();
            let loss = || project(&bn.forward(&x, train)?, &r);
            assert_gradients(
                &format!("batch norm {shape:?} train {train}"),
                &[
                    ("x".into(), x.clone()),
                    ("gamma".into(), bn.gamma().clone()),
                    ("beta".into(), bn.beta().clone()),
                ],
                None,
                &loss,
            );
        }
        let act = prelu(DType::F64, shape[1], seed);
        let x = uniform_var(shape, -1.0, 1.0, seed + 7).unwrap();
        let r = uniform(shape, -1.0, 1.0, seed + 8, DType::F64).unwrap();
        let loss = || project(&act.forward(&x)?, &r);
        assert_gradients(
            &format!("prelu {shape:?}"),
            &[
                ("x".into(), x.clone()),
                ("alpha".into(), act.alpha().clone()),
            ],
            None,
            &loss,
        );
        // BN feeding PReLU, as the networks chain them.
        let bn = batch_norm(DType::F64, shape[1], seed + 9);
        let loss = || project(&act.forward(&bn.forward(&x, true)?)?, &r);
        assert_gradients(
            &format!("batch norm -> prelu {shape:?}"),
            &[
                ("x".into(), x.clone()),
                ("gamma".into(), bn.gamma().clone()),
                ("alpha".into(), act.alpha().clone()),
            ],
            None,
            &loss,
        );
    }
}

#[test]
fn f32_fused_agrees_with_the_f32_composition() {
    let shape = [4, 3, 9, 11];
    let bn = batch_norm(DType::F32, 3, 400);
    let reference = batch_norm(DType::F32, 3, 400);
    let act = prelu(DType::F32, 3, 410);
    let x = Var::from_tensor(&uniform(&shape, -3.0, 5.0, 420, DType::F32).unwrap()).unwrap();
    let r = uniform(&shape, -1.0, 1.0, 421, DType::F32).unwrap();
    let (yf, gf) = run(&x, &r, &[bn.gamma(), act.alpha()], &|x| {
        act.forward(&bn.forward(x, true)?)
    });
    let (yc, gc) = run(&x, &r, &[reference.gamma(), act.alpha()], &|x| {
        act.forward_composed(&reference.forward_composed(x, true)?)
    });
    assert_eq!(yf.dtype(), DType::F32);
    assert_close("y f32", &values(&yf), &values(&yc), 1e-5);
    for (f, c) in gf.iter().zip(&gc) {
        assert_eq!(f.dtype(), DType::F32);
        assert_close("grad f32", &values(f), &values(c), 1e-4);
    }
    assert_close(
        "running variance f32",
        &values(bn.moving_variance().as_tensor()),
        &values(reference.moving_variance().as_tensor()),
        1e-6,
    );
}

/// Every output of a BN -> PReLU step in f32, as bits: y, the input and parameter gradients, the running
/// statistics, and an evaluation pass.
fn step_bits(shape: &[usize; 4]) -> Vec<Vec<u32>> {
    let bn = batch_norm(DType::F32, shape[1], 500);
    let act = prelu(DType::F32, shape[1], 510);
    let x = Var::from_tensor(&uniform(shape, -2.0, 3.0, 520, DType::F32).unwrap()).unwrap();
    let r = uniform(shape, -1.0, 1.0, 521, DType::F32).unwrap();
    let (y, grads) = run(&x, &r, &[bn.gamma(), bn.beta(), act.alpha()], &|x| {
        act.forward(&bn.forward(x, true)?)
    });
    let mut out = vec![bits(&y)];
    out.extend(grads.iter().map(bits));
    out.push(bits(bn.moving_mean().as_tensor()));
    out.push(bits(bn.moving_variance().as_tensor()));
    out.push(bits(&bn.forward(x.as_tensor(), false).unwrap()));
    out
}

#[test]
fn results_are_bit_identical_for_one_two_and_three_threads() {
    // Many small planes (several planes per task) and few large ones (one plane per task).
    for shape in [[4, 40, 17, 19], [2, 3, 130, 130]] {
        let x = uniform(&shape, 0.0, 1.0, 1, DType::F32).unwrap();
        assert!(supports(&x));
        let on = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| step_bits(&shape))
        };
        let one = on(1);
        assert_eq!(one, on(2), "{shape:?}: 1 vs 2 threads");
        assert_eq!(one, on(3), "{shape:?}: 1 vs 3 threads");
    }
}

#[test]
fn unsupported_dtypes_take_the_composed_path() {
    let x = uniform(&[2, 2, 3, 3], -1.0, 1.0, 9, DType::F32).unwrap();
    let half = x.to_dtype(DType::BF16).unwrap();
    assert!(!supports(&half));
    let out = |dtype: DType, x: &Tensor| {
        let bn = batch_norm(dtype, 2, 600);
        let act = prelu(dtype, 2, 610);
        let y = act.forward(&bn.forward(x, true).unwrap()).unwrap();
        assert_eq!(y.dtype(), dtype);
        values(&y)
    };
    assert_close(
        "bf16 against f32",
        &out(DType::BF16, &half),
        &out(DType::F32, &x),
        0.05,
    );
}

#[test]
fn prelu_of_sum_matches_finite_differences_and_the_composition() {
    for (k, shape) in SHAPES.iter().enumerate() {
        let seed = 700 + 10 * k as u64;
        let act = prelu(DType::F64, shape[1], seed);
        let a = uniform_var(shape, -1.0, 1.0, seed + 1).unwrap();
        let b = uniform_var(shape, -1.0, 1.0, seed + 2).unwrap();
        let r = uniform(shape, -1.0, 1.0, seed + 3, DType::F64).unwrap();
        assert_gradients(
            &format!("prelu of sum {shape:?}"),
            &[
                ("a".into(), a.clone()),
                ("b".into(), b.clone()),
                ("alpha".into(), act.alpha().clone()),
            ],
            None,
            &|| project(&act.forward_sum(a.as_tensor(), b.as_tensor())?, &r),
        );
        let (yf, gf) = run(&a, &r, &[&b, act.alpha()], &|x| {
            act.forward_sum(x, b.as_tensor())
        });
        let (yc, gc) = run(&a, &r, &[&b, act.alpha()], &|x| {
            act.forward_composed(&(x + b.as_tensor())?)
        });
        assert_close(&format!("y {shape:?}"), &values(&yf), &values(&yc), 1e-12);
        for (f, c) in gf.iter().zip(&gc) {
            assert_close(&format!("grads {shape:?}"), &values(f), &values(c), 1e-12);
        }
    }
    // f32: the output and the addends' gradients are the separate add and PReLU's bit for bit.
    let shape = [3, 4, 9, 11];
    let act = prelu(DType::F32, 4, 750);
    let a = Var::from_tensor(&uniform(&shape, -1.0, 1.0, 751, DType::F32).unwrap()).unwrap();
    let b = Var::from_tensor(&uniform(&shape, -1.0, 1.0, 752, DType::F32).unwrap()).unwrap();
    let r = uniform(&shape, -1.0, 1.0, 753, DType::F32).unwrap();
    let (yf, gf) = run(&a, &r, &[&b, act.alpha()], &|x| {
        act.forward_sum(x, b.as_tensor())
    });
    let (yc, gc) = run(&a, &r, &[&b, act.alpha()], &|x| {
        act.forward(&(x + b.as_tensor())?)
    });
    assert_eq!(bits(&yf), bits(&yc));
    assert_eq!(bits(&gf[0]), bits(&gc[0]));
    assert_eq!(bits(&gf[1]), bits(&gc[1]));
    assert_close("dalpha f32", &values(&gf[2]), &values(&gc[2]), 1e-5);
}

#[test]
fn prelu_of_sum_is_bit_identical_for_one_two_and_three_threads() {
    let shape = [2, 3, 130, 131];
    let on = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| {
                let act = prelu(DType::F32, 3, 760);
                let a = Var::from_tensor(&uniform(&shape, -1.0, 1.0, 761, DType::F32).unwrap())
                    .unwrap();
                let b = uniform(&shape, -1.0, 1.0, 762, DType::F32).unwrap();
                let r = uniform(&shape, -1.0, 1.0, 763, DType::F32).unwrap();
                let (y, g) = run(&a, &r, &[act.alpha()], &|x| act.forward_sum(x, &b));
                let mut out = vec![bits(&y)];
                out.extend(g.iter().map(bits));
                out
            })
    };
    let one = on(1);
    assert_eq!(one, on(2), "1 vs 2 threads");
    assert_eq!(one, on(3), "1 vs 3 threads");
}
