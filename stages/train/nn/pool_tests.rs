use candle_core::{DType, Device, Tensor, Var};

use super::super::gradcheck::{assert_gradients, project, uniform, uniform_var};
use super::super::layers::{self, BatchNorm, Then};
use super::super::params::ParamStore;
use super::{max_pool_2x2, relu_max_pool_2x2, scale_channels};

const SEED: [u8; 32] = [9; 32];

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

fn set_uniform(var: &Var, lo: f64, hi: f64, seed: u64) {
    let t = uniform(var.dims(), lo, hi, seed, var.dtype()).unwrap();
    var.set(&t).unwrap();
}

fn batch_norm(dtype: DType, c: usize, seed: u64) -> BatchNorm {
    let bn = BatchNorm::new(&mut ParamStore::new(SEED, dtype, &Device::Cpu), "bn", c).unwrap();
    set_uniform(bn.gamma(), -2.0, 2.0, seed);
    set_uniform(bn.beta(), -1.0, 1.0, seed + 1);
    set_uniform(bn.moving_mean(), -0.5, 0.5, seed + 2);
    set_uniform(bn.moving_variance(), 0.5, 2.0, seed + 3);
    bn
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

fn pooled_shape(s: &[usize; 4]) -> [usize; 4] {
    [s[0], s[1], s[2] / 2, s[3] / 2]
}

/// Odd and even sizes, a single batch item, and the smallest poolable plane.
const SHAPES: [[usize; 4]; 4] = [[2, 3, 5, 7], [1, 2, 4, 6], [3, 2, 3, 2], [2, 1, 2, 2]];

#[test]
fn pool_gradients_match_finite_differences_on_odd_sizes() {
    for (k, shape) in SHAPES.iter().enumerate() {
        let seed = 10 * k as u64;
        let x = uniform_var(shape, -1.0, 1.0, seed).unwrap();
        let r = uniform(&pooled_shape(shape), -1.0, 1.0, seed + 1, DType::F64).unwrap();
        assert_gradients(
            &format!("max pool {shape:?}"),
            &[("x".into(), x.clone())],
            None,
            &|| project(&max_pool_2x2(x.as_tensor())?, &r),
        );
        assert_gradients(
            &format!("relu max pool {shape:?}"),
            &[("x".into(), x.clone())],
            None,
            &|| project(&relu_max_pool_2x2(x.as_tensor())?, &r),
        );
        for train in [true, false] {
            let bn = batch_norm(DType::F64, shape[1], seed + 2);
            let x = uniform_var(shape, -2.0, 3.0, seed + 3).unwrap();
            assert_gradients(
                &format!("batch norm relu max pool {shape:?} train {train}"),
                &[
                    ("x".into(), x.clone()),
                    ("gamma".into(), bn.gamma().clone()),
                    ("beta".into(), bn.beta().clone()),
                ],
                None,
                &|| {
                    project(
                        &bn.forward_then(x.as_tensor(), train, Then::Relu, true)?,
                        &r,
                    )
                },
            );
        }
    }
}

#[test]
fn scale_channels_gradients_match_finite_differences() {
    for (k, shape) in SHAPES.iter().enumerate() {
        let seed = 50 + 10 * k as u64;
        let x = uniform_var(shape, -1.0, 1.0, seed).unwrap();
        let s = uniform_var(&shape[..2], 0.0, 1.0, seed + 1).unwrap();
        let r = uniform(shape, -1.0, 1.0, seed + 2, DType::F64).unwrap();
        assert_gradients(
            &format!("scale channels {shape:?}"),
            &[("x".into(), x.clone()), ("s".into(), s.clone())],
            None,
            &|| project(&scale_channels(x.as_tensor(), s.as_tensor())?, &r),
        );
    }
}

#[test]
fn ties_send_the_whole_gradient_to_the_first_maximal_element() {
    // One 2 x 3 plane pooled to a single window (the third column is dropped): the window is all ties.
    // Second plane: the maximum 3 twice, at (0, 1) and (1, 0); the first in scan order is (0, 1).
    // Third plane: ties at a negative maximum, which relu turns into ties at zero.
    let x = Tensor::from_vec(
        vec![
            2.0f32, 2.0, 9.0, 2.0, 2.0, 9.0, //
            1.0, 3.0, 9.0, 3.0, 2.0, 9.0, //
            -1.0, -1.0, 9.0, -1.0, -2.0, 9.0,
        ],
        (1, 3, 2, 3),
        &Device::Cpu,
    )
    .unwrap();
    let x = Var::from_tensor(&x).unwrap();
    let r = Tensor::from_vec(vec![5.0f32, 7.0, 11.0], (1, 3, 1, 1), &Device::Cpu).unwrap();
    let (y, g) = run(&x, &r, &[], &|x| max_pool_2x2(x));
    assert_eq!(values(&y), [2.0, 3.0, -1.0]);
    assert_eq!(
        values(&g[0]),
        [
            5.0, 0.0, 0.0, 0.0, 0.0, 0.0, //
            0.0, 7.0, 0.0, 0.0, 0.0, 0.0, //
            11.0, 0.0, 0.0, 0.0, 0.0, 0.0
        ]
    );
    let (y, g) = run(&x, &r, &[], &|x| relu_max_pool_2x2(x));
    assert_eq!(values(&y), [2.0, 3.0, 0.0]);
    // relu's gradient is zero below zero, so the negative window passes nothing.
    assert_eq!(
        values(&g[0]),
        [
            5.0, 0.0, 0.0, 0.0, 0.0, 0.0, //
            0.0, 7.0, 0.0, 0.0, 0.0, 0.0, //
            0.0, 0.0, 0.0, 0.0, 0.0, 0.0
        ]
    );
    // Through an evaluation-mode batch norm (affine per channel with positive scale, so ties survive) the
    // gradient lands on the same elements, scaled by gamma / sqrt(var + eps).
    let bn = BatchNorm::new(
        &mut ParamStore::new(SEED, DType::F32, &Device::Cpu),
        "bn",
        3,
    )
    .unwrap();
    let (_, g) = run(&x, &r, &[], &|x| {
        bn.forward_then(x, false, Then::Relu, true)
    });
    let k = 1.0 / (1.0f64 + layers::BN_EPSILON).sqrt();
    let got = values(&g[0]);
    for (i, want) in [(0, 5.0 * k), (7, 7.0 * k)] {
        assert!((got[i] - want).abs() < 1e-6, "[{i}]: {} vs {want}", got[i]);
    }
    let nonzero: Vec<usize> = (0..got.len()).filter(|&i| got[i] != 0.0).collect();
    assert_eq!(nonzero, [0, 7]);
}

#[test]
fn pool_equals_the_candle_composition_without_ties() {
    for (k, shape) in SHAPES.iter().enumerate() {
        let seed = 100 + 10 * k as u64;
        let x = Var::from_tensor(&uniform(shape, -1.0, 1.0, seed, DType::F32).unwrap()).unwrap();
        let r = uniform(&pooled_shape(shape), -1.0, 1.0, seed + 1, DType::F32).unwrap();
        let (yf, gf) = run(&x, &r, &[], &|x| max_pool_2x2(x));
        let (yc, gc) = run(&x, &r, &[], &|x| layers::max_pool_2x2(x));
        assert_eq!(bits(&yf), bits(&yc), "max pool {shape:?}");
        assert_eq!(bits(&gf[0]), bits(&gc[0]), "max pool dx {shape:?}");
        let (yf, gf) = run(&x, &r, &[], &|x| relu_max_pool_2x2(x));
        let (yc, gc) = run(&x, &r, &[], &|x| layers::max_pool_2x2(&x.relu()?));
        assert_eq!(bits(&yf), bits(&yc), "relu max pool {shape:?}");
        // Where a window is all negative, candle's max hands relu's zero gradient to all four: still zero.
        assert_eq!(bits(&gf[0]), bits(&gc[0]), "relu max pool dx {shape:?}");
    }
}

#[test]
fn batch_norm_relu_max_pool_equals_the_chain_of_layers() {
    for (k, shape) in SHAPES.iter().enumerate() {
        for train in [true, false] {
            let seed = 200 + 10 * k as u64;
            let what = format!("{shape:?} train {train}");
            // f64: the fused op against batch norm built from candle ops, relu and the composed pool.
            let (fused, composed) = (
                batch_norm(DType::F64, shape[1], seed),
                batch_norm(DType::F64, shape[1], seed),
            );
            let x = uniform_var(shape, 1.0, 4.0, seed + 5).unwrap();
            let r = uniform(&pooled_shape(shape), -1.0, 1.0, seed + 6, DType::F64).unwrap();
            let (yf, gf) = run(&x, &r, &[fused.gamma(), fused.beta()], &|x| {
                fused.forward_then(x, train, Then::Relu, true)
            });
            let (yc, gc) = run(&x, &r, &[composed.gamma(), composed.beta()], &|x| {
                layers::max_pool_2x2(&composed.forward_composed(x, train)?.relu()?)
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
            // f32: the output is bit for bit the separate fused batch norm's, relu'd and pooled.
            let (fused, separate) = (
                batch_norm(DType::F32, shape[1], seed),
                batch_norm(DType::F32, shape[1], seed),
            );
            let x = Var::from_tensor(&uniform(shape, -3.0, 5.0, seed + 7, DType::F32).unwrap())
                .unwrap();
            let r = r.to_dtype(DType::F32).unwrap();
            let (yf, gf) = run(&x, &r, &[fused.gamma(), fused.beta()], &|x| {
                fused.forward_then(x, train, Then::Relu, true)
            });
            let (yc, gc) = run(&x, &r, &[separate.gamma(), separate.beta()], &|x| {
                layers::max_pool_2x2(&separate.forward(x, train)?.relu()?)
            });
            assert_eq!(bits(&yf), bits(&yc), "f32 y {what}");
            for (f, c) in gf.iter().zip(&gc) {
                assert_close(&format!("f32 grad {what}"), &values(f), &values(c), 1e-4);
            }
            assert_eq!(
                bits(fused.moving_variance().as_tensor()),
                bits(separate.moving_variance().as_tensor()),
                "f32 running variance {what}"
            );
        }
    }
}

#[test]
fn scale_channels_equals_the_broadcast_multiply() {
    let shape = [3, 4, 5, 7];
    let x = Var::from_tensor(&uniform(&shape, -1.0, 1.0, 300, DType::F32).unwrap()).unwrap();
    let s = Var::from_tensor(&uniform(&shape[..2], 0.0, 1.0, 301, DType::F32).unwrap()).unwrap();
    let r = uniform(&shape, -1.0, 1.0, 302, DType::F32).unwrap();
    let (yf, gf) = run(&x, &r, &[&s], &|x| scale_channels(x, s.as_tensor()));
    let (yc, gc) = run(&x, &r, &[&s], &|x| {
        x.broadcast_mul(&s.as_tensor().reshape((3, 4, 1, 1))?)
    });
    // A product of two f32 values is exact in f64, so the rounding back is the f32 multiply's.
    assert_eq!(bits(&yf), bits(&yc));
    assert_eq!(bits(&gf[0]), bits(&gc[0]));
    assert_close("ds", &values(&gf[1]), &values(&gc[1]), 1e-5);
}

/// Every output and gradient of each op in f32, as bits.
fn all_bits(shape: &[usize; 4]) -> Vec<Vec<u32>> {
    let x = Var::from_tensor(&uniform(shape, -2.0, 3.0, 400, DType::F32).unwrap()).unwrap();
    let r = uniform(&pooled_shape(shape), -1.0, 1.0, 401, DType::F32).unwrap();
    let mut out = Vec::new();
    let push = |out: &mut Vec<Vec<u32>>, (y, g): (Tensor, Vec<Tensor>)| {
        out.push(bits(&y));
        out.extend(g.iter().map(bits));
    };
    push(&mut out, run(&x, &r, &[], &|x| max_pool_2x2(x)));
    push(&mut out, run(&x, &r, &[], &|x| relu_max_pool_2x2(x)));
    let bn = batch_norm(DType::F32, shape[1], 402);
    push(
        &mut out,
        run(&x, &r, &[bn.gamma(), bn.beta()], &|x| {
            bn.forward_then(x, true, Then::Relu, true)
        }),
    );
    out.push(bits(bn.moving_mean().as_tensor()));
    out.push(bits(bn.moving_variance().as_tensor()));
    let s = Var::from_tensor(&uniform(&shape[..2], 0.0, 1.0, 403, DType::F32).unwrap()).unwrap();
    let r = uniform(shape, -1.0, 1.0, 404, DType::F32).unwrap();
    push(
        &mut out,
        run(&x, &r, &[&s], &|x| scale_channels(x, s.as_tensor())),
    );
    out
}

#[test]
fn results_are_bit_identical_for_one_two_and_three_threads() {
    for shape in [[4, 40, 17, 19], [2, 3, 130, 131]] {
        let on = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| all_bits(&shape))
        };
        let one = on(1);
        assert_eq!(one, on(2), "{shape:?}: 1 vs 2 threads");
        assert_eq!(one, on(3), "{shape:?}: 1 vs 3 threads");
    }
}
