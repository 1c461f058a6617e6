use candle_core::{DType, Device, Tensor, Var};

use super::super::gradcheck::{assert_gradients, project, uniform, uniform_var};
use super::super::layers::{self, BatchNorm, PRelu, Then};
use super::super::params::ParamStore;
use super::batch_norm_prelu_train;

const SEED: [u8; 32] = [7; 32];

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

fn store(dtype: DType) -> ParamStore {
    ParamStore::new(SEED, dtype, &Device::Cpu)
}

fn batch_norm(dtype: DType, c: usize, seed: u64) -> BatchNorm {
    let bn = BatchNorm::new(&mut store(dtype), "bn", c).unwrap();
    set_uniform(bn.gamma(), -2.0, 2.0, seed);
    set_uniform(bn.beta(), -1.0, 1.0, seed + 1);
    set_uniform(bn.moving_mean(), -0.5, 0.5, seed + 2);
    set_uniform(bn.moving_variance(), 0.5, 2.0, seed + 3);
    bn
}

/// Slopes of both signs: a negative slope makes PReLU non-monotone, so pooling after it must compare the
/// activated values.
fn prelu(dtype: DType, c: usize, seed: u64) -> PRelu {
    let act = PRelu::new(&mut store(dtype), "act", c).unwrap();
    set_uniform(act.alpha(), -0.5, 0.8, seed);
    act
}

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

fn out_shape(s: &[usize; 4], pool: bool) -> [usize; 4] {
    if pool {
        [s[0], s[1], s[2] / 2, s[3] / 2]
    } else {
        *s
    }
}

const SHAPES: [[usize; 4]; 4] = [[2, 3, 5, 7], [1, 2, 3, 5], [3, 2, 2, 3], [2, 4, 6, 4]];

#[test]
fn gradients_match_finite_differences_with_and_without_pooling() {
    for (k, shape) in SHAPES.iter().enumerate() {
        for train in [true, false] {
            for pool in [false, true] {
                let seed = 10 * k as u64;
                let bn = batch_norm(DType::F64, shape[1], seed);
                let act = prelu(DType::F64, shape[1], seed + 4);
                let x = uniform_var(shape, -2.0, 3.0, seed + 5).unwrap();
                let r = uniform(&out_shape(shape, pool), -1.0, 1.0, seed + 6, DType::F64).unwrap();
                assert_gradients(
                    &format!("batch norm -> prelu {shape:?} train {train} pool {pool}"),
                    &[
                        ("x".into(), x.clone()),
                        ("gamma".into(), bn.gamma().clone()),
                        ("beta".into(), bn.beta().clone()),
                        ("alpha".into(), act.alpha().clone()),
                    ],
                    None,
                    &|| {
                        project(
                            &bn.forward_then(x.as_tensor(), train, Then::PRelu(&act), pool)?,
                            &r,
                        )
                    },
                );
            }
        }
    }
}

#[test]
fn equals_the_chain_of_composed_layers_in_f64() {
    for (k, shape) in SHAPES.iter().enumerate() {
        for train in [true, false] {
            for pool in [false, true] {
                let seed = 100 + 10 * k as u64;
                let what = format!("{shape:?} train {train} pool {pool}");
                let (fused, composed) = (
                    batch_norm(DType::F64, shape[1], seed),
                    batch_norm(DType::F64, shape[1], seed),
                );
                let act = prelu(DType::F64, shape[1], seed + 4);
                let x = uniform_var(shape, 1.0, 4.0, seed + 5).unwrap();
                let r = uniform(&out_shape(shape, pool), -1.0, 1.0, seed + 6, DType::F64).unwrap();
                let params = |bn: &BatchNorm| [bn.gamma().clone(), bn.beta().clone()];
                let pf = params(&fused);
                let pc = params(&composed);
                let (yf, gf) = run(&x, &r, &[&pf[0], &pf[1], act.alpha()], &|x| {
                    fused.forward_then(x, train, Then::PRelu(&act), pool)
                });
                let (yc, gc) = run(&x, &r, &[&pc[0], &pc[1], act.alpha()], &|x| {
                    let y = act.forward_composed(&composed.forward_composed(x, train)?)?;
                    if pool {
                        layers::max_pool_2x2(&y)
                    } else {
                        Ok(y)
                    }
                });
                assert_close(&format!("y {what}"), &values(&yf), &values(&yc), 1e-12);
                for (name, (f, c)) in ["dx", "dgamma", "dbeta", "dalpha"]
                    .iter()
                    .zip(gf.iter().zip(&gc))
                {
                    assert_close(&format!("{name} {what}"), &values(f), &values(c), 1e-12);
                }
                assert_close(
                    &format!("running mean {what}"),
                    &values(fused.moving_mean().as_tensor()),
                    &values(composed.moving_mean().as_tensor()),
                    1e-12,
                );
            }
        }
    }
}

#[test]
fn f32_output_is_the_separate_fused_ops_bit_for_bit() {
    let shape = [4, 3, 9, 11];
    for pool in [false, true] {
        let (fused, separate) = (
            batch_norm(DType::F32, 3, 400),
            batch_norm(DType::F32, 3, 400),
        );
        let act = prelu(DType::F32, 3, 410);
        let x = Var::from_tensor(&uniform(&shape, -3.0, 5.0, 420, DType::F32).unwrap()).unwrap();
        let r = uniform(&out_shape(&shape, pool), -1.0, 1.0, 421, DType::F32).unwrap();
        let (yf, gf) = run(&x, &r, &[fused.gamma(), act.alpha()], &|x| {
            fused.forward_then(x, true, Then::PRelu(&act), pool)
        });
        let (yc, gc) = run(&x, &r, &[separate.gamma(), act.alpha()], &|x| {
            let y = act.forward(&separate.forward(x, true)?)?;
            if pool {
                layers::max_pool_2x2(&y)
            } else {
                Ok(y)
            }
        });
        assert_eq!(bits(&yf), bits(&yc), "pool {pool}");
        for (f, c) in gf.iter().zip(&gc) {
            assert_eq!(f.dtype(), DType::F32);
            assert_close(&format!("grad pool {pool}"), &values(f), &values(c), 1e-4);
        }
        assert_eq!(
            bits(fused.moving_variance().as_tensor()),
            bits(separate.moving_variance().as_tensor())
        );
        // Without pooling the input gradient is the separate ops' to f32 rounding of the same formula.
        if !pool {
            assert_close("dx", &values(&gf[0]), &values(&gc[0]), 1e-5);
        }
    }
}

#[test]
fn training_function_returns_the_batch_statistics() {
    let shape = [3, 2, 4, 5];
    let bn = batch_norm(DType::F64, 2, 500);
    let act = prelu(DType::F64, 2, 504);
    let x = uniform(&shape, 1.0, 3.0, 505, DType::F64).unwrap();
    let (y, mean, var) = batch_norm_prelu_train(
        &x,
        bn.gamma().as_tensor(),
        bn.beta().as_tensor(),
        act.alpha().as_tensor(),
        layers::BN_EPSILON,
    )
    .unwrap();
    let want_mean = values(&x.mean_keepdim((0, 2, 3)).unwrap());
    assert_close("mean", &values(&mean), &want_mean, 1e-12);
    let centred = x
        .broadcast_sub(&Tensor::from_vec(want_mean, (1, 2, 1, 1), &Device::Cpu).unwrap())
        .unwrap();
    let want_var = values(&centred.sqr().unwrap().mean_keepdim((0, 2, 3)).unwrap());
    assert_close("var", &values(&var), &want_var, 1e-12);
    assert_eq!(y.dims(), &shape);
}

fn all_bits(shape: &[usize; 4]) -> Vec<Vec<u32>> {
    let mut out = Vec::new();
    for pool in [false, true] {
        let bn = batch_norm(DType::F32, shape[1], 600);
        let act = prelu(DType::F32, shape[1], 604);
        let x = Var::from_tensor(&uniform(shape, -2.0, 3.0, 605, DType::F32).unwrap()).unwrap();
        let r = uniform(&out_shape(shape, pool), -1.0, 1.0, 606, DType::F32).unwrap();
        let (y, g) = run(&x, &r, &[bn.gamma(), bn.beta(), act.alpha()], &|x| {
            bn.forward_then(x, true, Then::PRelu(&act), pool)
        });
        out.push(bits(&y));
        out.extend(g.iter().map(bits));
        out.push(bits(bn.moving_mean().as_tensor()));
        out.push(bits(bn.moving_variance().as_tensor()));
        let (y, g) = run(&x, &r, &[bn.gamma(), act.alpha()], &|x| {
            bn.forward_then(x, false, Then::PRelu(&act), pool)
        });
        out.push(bits(&y));
        out.extend(g.iter().map(bits));
    }
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

/// The backward pass as first written: a dense `dz` plane per plane, summed element by element in row-major
/// order and computed twice (once for the sums, once for the input gradient). The routed backward must give
/// its bits exactly: the same sums in the same order, the same input gradient.
fn dense_reference(
    grad: &super::BnActGrad<'_>,
    x: &[f32],
    dy: &[f32],
) -> (Vec<f32>, Vec<[f64; 3]>) {
    use super::{activate, activation_grad, first_max, normalise, window, Stats};
    let op = grad.op;
    let g = op.geom;
    let (hw, (oh, ow)) = (op.hw, g.out_hw());
    let ohw = oh * ow;
    let plane_dz = |k: super::Channel, xp: &[f32], gp: &[f32], dz: &mut Vec<f64>| -> f64 {
        let mut dalpha = 0.0;
        dz.clear();
        dz.resize(hw, 0.0);
        if g.pool {
            for oy in 0..oh {
                for ox in 0..ow {
                    let idx = window(g.w, oy, ox);
                    let z = idx.map(|j| normalise::<f32>(k, f64::from(xp[j])));
                    let a = z.map(|z| activate::<f32>(op.act, k, z));
                    let m = first_max(a);
                    let (d, da) = activation_grad(op.act, k, z[m], f64::from(gp[oy * ow + ox]));
                    dz[idx[m]] = d;
                    dalpha += da;
                }
            }
        } else {
            for ((d, v), gv) in dz.iter_mut().zip(xp).zip(gp) {
                let z = normalise::<f32>(k, f64::from(*v));
                let (dd, da) = activation_grad(op.act, k, z, f64::from(*gv));
                *d = dd;
                dalpha += da;
            }
        }
        dalpha
    };
    let planes = g.b * g.c;
    let mut dz = Vec::new();
    let mut sums = vec![[0.0; 3]; g.c];
    for i in 0..planes {
        let k = grad.chans[i % g.c];
        let xp = &x[i * hw..(i + 1) * hw];
        let da = plane_dz(k, xp, &dy[i * ohw..(i + 1) * ohw], &mut dz);
        let (mut s0, mut s1) = (0.0, 0.0);
        for (d, v) in dz.iter().zip(xp) {
            s0 += d;
            s1 += d * (f64::from(*v) - k.mean);
        }
        let o = &mut sums[i % g.c];
        for (o, p) in o.iter_mut().zip([s0, s1, da]) {
            *o += p;
        }
    }
    let n = (g.b * hw) as f64;
    let train = matches!(op.stats, Stats::Batch(_));
    let mut dx = Vec::with_capacity(x.len());
    for i in 0..planes {
        let ch = i % g.c;
        let k = grad.chans[ch];
        let [a, b, c0] = if train {
            let [s_dz, s_dzc, _] = sums[ch];
            let is2 = grad.invstd[ch] * grad.invstd[ch];
            [k.scale, -k.scale * is2 * s_dzc / n, -k.scale * s_dz / n]
        } else {
            [k.scale, 0.0, 0.0]
        };
        let xp = &x[i * hw..(i + 1) * hw];
        plane_dz(k, xp, &dy[i * ohw..(i + 1) * ohw], &mut dz);
        for (v, d) in xp.iter().zip(&dz) {
            dx.push((a * d + (b * (f64::from(*v) - k.mean) + c0)) as f32);
        }
    }
    (dx, sums)
}

#[test]
fn routed_backward_has_the_dense_backwards_bits() {
    use super::{Activation, BnActGrad, BnActOp, Geom, Stats};
    use std::sync::{Arc, OnceLock};
    let mut checked = 0;
    for [b, c, h, w] in [[3, 4, 9, 11], [2, 3, 16, 16], [1, 2, 2, 3]] {
        for pool in [false, true] {
            for act in [Activation::Relu, Activation::PRelu] {
                for train in [true, false] {
                    let seed = (b * 1000 + h * 10 + w) as u64;
                    // Values on a coarse grid, so that windows hold ties and the batch norm hits exact zeros.
                    let grid = |t: Tensor| (t * 4.0).unwrap().round().unwrap() / 4.0;
                    let x = grid(uniform(&[b, c, h, w], -2.0, 2.0, seed, DType::F32).unwrap())
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap();
                    let geom = Geom { b, c, h, w, pool };
                    let [_, _, oh, ow] = out_shape(&[b, c, h, w], pool);
                    let dy = uniform(&[b * c * oh * ow], -1.0, 1.0, seed + 1, DType::F32)
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap();
                    let mut params: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 * 0.25).collect();
                    params.extend((0..c).map(|i| i as f32 * 0.125 - 0.25));
                    if act == Activation::PRelu {
                        params.extend((0..c).map(|i| 0.1 * i as f32 - 0.05));
                    }
                    let stats = if train {
                        Stats::Batch(Arc::new(OnceLock::new()))
                    } else {
                        Stats::Fixed(super::super::fused::Saved {
                            mean: (0..c).map(|i| 0.1 * i as f64).collect(),
                            var: (0..c).map(|i| 0.5 + i as f64).collect(),
                            invstd: (0..c)
                                .map(|i| 1.0 / (0.5 + i as f64 + 1e-3).sqrt())
                                .collect(),
                        })
                    };
                    let op = BnActOp {
                        geom,
                        hw: h * w,
                        eps: 1e-3,
                        act,
                        stats,
                    };
                    op.forward::<f32>(&x, &params).unwrap();
                    let saved = op.saved().unwrap();
                    let p64: Vec<f64> = params.iter().map(|v| f64::from(*v)).collect();
                    let grad = BnActGrad {
                        op: &op,
                        chans: op.channels(saved, &p64),
                        invstd: &saved.invstd,
                        sums: OnceLock::new(),
                    };
                    let dx = grad.run::<f32>(&x, &dy).unwrap();
                    let (want_dx, want_sums) = dense_reference(&grad, &x, &dy);
                    let what = format!("{:?} pool {pool} {act:?} train {train}", [b, c, h, w]);
                    let to_bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(to_bits(&dx), to_bits(&want_dx), "dx, {what}");
                    let sum_bits = |s: &[[f64; 3]]| {
                        s.iter()
                            .flat_map(|s| s.map(f64::to_bits))
                            .collect::<Vec<_>>()
                    };
                    let sums = grad.sums.get().unwrap();
                    assert_eq!(sum_bits(sums), sum_bits(&want_sums), "sums, {what}");
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 24);
}
