use super::*;
use candle_core::{DType, Device, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::mem::MaybeUninit;

type Dims = (usize, usize, usize, usize);

/// (input, kernel, stride, padding). candle's own backward fails when stride 2 leaves height and
/// width with different remainders (it derives both output paddings from the height), so such
/// shapes are checked against finite differences only.
const CASES: &[(Dims, Dims, usize, usize)] = &[
    ((3, 1, 9, 11), (8, 1, 3, 3), 1, 1),
    ((3, 4, 9, 11), (6, 4, 3, 3), 2, 1),
    ((3, 4, 8, 10), (6, 4, 3, 3), 2, 1),
    ((3, 5, 7, 9), (6, 5, 1, 1), 1, 0),
    ((3, 5, 7, 9), (6, 5, 1, 1), 2, 0),
    ((3, 5, 8, 10), (6, 5, 1, 1), 2, 0),
    ((3, 3, 9, 11), (4, 3, 3, 3), 1, 0),
    ((1, 2, 10, 9), (3, 2, 5, 5), 1, 2),
    ((2, 3, 7, 8), (4, 3, 2, 3), 2, 1),
    ((2, 2, 3, 3), (3, 2, 3, 3), 2, 2),
    ((14, 3, 6, 5), (4, 3, 3, 3), 1, 1),
    ((2, 3, 10, 13), (4, 3, 3, 3), 3, 1),
    // Large enough for several im2col row tiles.
    ((2, 16, 37, 120), (8, 16, 3, 3), 1, 1),
    ((2, 16, 41, 251), (8, 16, 3, 3), 2, 1),
];

#[test]
fn row_tiles_cover_the_output_rows_in_order() {
    let mut tiled = 0;
    for &(xd, kd, stride, pad) in CASES {
        let g = Geom::new(xd, kd, stride, pad).unwrap();
        let tiles = row_tiles(&g);
        assert_eq!(tiles.first().unwrap().start, 0);
        assert_eq!(tiles.last().unwrap().end, g.oh);
        for pair in tiles.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        let longest = tiles.iter().map(|t| t.len()).max().unwrap();
        for t in &tiles {
            assert!(t.len() + 1 >= longest, "{tiles:?} uneven");
            let small = t.len() * g.ow * g.ckk() <= COL_TILE;
            let min_rows = t.len() == MIN_TILE_PIXELS.div_ceil(g.ow);
            assert!(
                !t.is_empty() && (small || min_rows || tiles.len() == 1),
                "{t:?} of {tiles:?}"
            );
        }
        tiled += usize::from(tiles.len() > 1);
    }
    assert_eq!(tiled, 2, "the last two cases are the tiled ones");
}

fn random(dims: Dims, dtype: DType, rng: &mut ChaCha20Rng) -> Tensor {
    let (a, b, c, d) = dims;
    let vals: Vec<f64> = (0..a * b * c * d)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    Tensor::from_vec(vals, (a, b, c, d), &Device::Cpu)
        .and_then(|t| t.to_dtype(dtype))
        .unwrap()
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// max |a - b| / max |b|
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (to_f64(a), to_f64(b));
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "reference is all zeros");
    a.iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn bits(t: &Tensor) -> Vec<u64> {
    match t.dtype() {
        DType::F32 => t
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits() as u64)
            .collect(),
        _ => to_f64(t).iter().map(|v| v.to_bits()).collect(),
    }
}

type ConvFn = fn(&Tensor, &Tensor, usize, usize) -> Result<Tensor>;

fn candle_conv(x: &Tensor, k: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    x.conv2d(k, padding, stride, 1, 1)
}

/// Output and the gradients of `sum(conv(x, k) * weight)` with respect to `x` and `k`.
fn run(
    conv: ConvFn,
    x: &Tensor,
    k: &Tensor,
    weight: &Tensor,
    stride: usize,
    pad: usize,
) -> (Tensor, Tensor, Tensor) {
    let xv = Var::from_tensor(x).unwrap();
    let kv = Var::from_tensor(k).unwrap();
    let out = conv(xv.as_tensor(), kv.as_tensor(), stride, pad).unwrap();
    let grads = out
        .mul(weight)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gx = grads.get(xv.as_tensor()).expect("input gradient").clone();
    let gk = grads.get(kv.as_tensor()).expect("kernel gradient").clone();
    (out, gx, gk)
}

fn case_tensors(case: usize, dtype: DType) -> (Tensor, Tensor, Tensor) {
    let (xd, kd, stride, pad) = CASES[case];
    let mut rng = ChaCha20Rng::seed_from_u64(case as u64);
    let x = random(xd, dtype, &mut rng);
    let k = random(kd, dtype, &mut rng);
    let out_dims = candle_conv(&x, &k, stride, pad).unwrap().dims4().unwrap();
    let weight = random(out_dims, dtype, &mut rng);
    (x, k, weight)
}

fn matches_candle(dtype: DType, tol: f64) {
    for (i, &(_, _, stride, pad)) in CASES.iter().enumerate() {
        let (x, k, weight) = case_tensors(i, dtype);
        let ours = run(conv2d, &x, &k, &weight, stride, pad);
        let reference = run(candle_conv, &x, &k, &weight, stride, pad);
        for (what, a, b) in [
            ("output", &ours.0, &reference.0),
            ("grad x", &ours.1, &reference.1),
            ("grad k", &ours.2, &reference.2),
        ] {
            let err = rel_err(a, b);
            assert!(
                err <= tol,
                "case {i} {:?} {dtype:?}: {what} relative error {err:e}",
                CASES[i]
            );
        }
    }
}

#[test]
fn f32_matches_candle_conv_and_its_gradients() {
    matches_candle(DType::F32, 1e-5);
}

#[test]
fn f64_matches_candle_conv_and_its_gradients() {
    matches_candle(DType::F64, 1e-10);
}

#[test]
fn f64_gradients_match_central_differences() {
    for &(xd, kd, stride, pad) in &[
        ((2, 3, 7, 8), (4, 3, 3, 3), 2, 1),
        ((2, 3, 7, 8), (4, 3, 3, 3), 1, 1),
        ((2, 3, 5, 6), (2, 3, 1, 1), 2, 0),
        ((2, 3, 8, 9), (2, 3, 3, 3), 2, 1),
        ((1, 2, 8, 9), (3, 2, 1, 1), 2, 0),
    ] {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let x = random(xd, DType::F64, &mut rng);
        let k = random(kd, DType::F64, &mut rng);
        let out_dims = conv2d(&x, &k, stride, pad).unwrap().dims4().unwrap();
        let weight = random(out_dims, DType::F64, &mut rng);
        let (_, gx, gk) = run(conv2d, &x, &k, &weight, stride, pad);
        let loss = |x: &Tensor, k: &Tensor| -> f64 {
            conv2d(x, k, stride, pad)
                .unwrap()
                .mul(&weight)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        let perturbed = |t: &Tensor, i: usize, delta: f64| -> Tensor {
            let mut v = to_f64(t);
            v[i] += delta;
            Tensor::from_vec(v, t.shape(), &Device::Cpu).unwrap()
        };
        let eps = 1e-5;
        let (gx, gk) = (to_f64(&gx), to_f64(&gk));
        let mut checked = 0;
        for _ in 0..20 {
            let i = rng.random_range(0..gx.len());
            let fd = (loss(&perturbed(&x, i, eps), &k) - loss(&perturbed(&x, i, -eps), &k))
                / (2.0 * eps);
            assert!(
                (fd - gx[i]).abs() <= 1e-8 * gx[i].abs().max(1.0),
                "grad x[{i}]: {fd} vs {}",
                gx[i]
            );
            let j = rng.random_range(0..gk.len());
            let fd = (loss(&x, &perturbed(&k, j, eps)) - loss(&x, &perturbed(&k, j, -eps)))
                / (2.0 * eps);
            assert!(
                (fd - gk[j]).abs() <= 1e-8 * gk[j].abs().max(1.0),
                "grad k[{j}]: {fd} vs {}",
                gk[j]
            );
            checked += 2;
        }
        assert_eq!(checked, 40);
    }
}

#[test]
fn bits_do_not_depend_on_thread_count() {
    // Batch 1 runs multi-threaded gemms, the others run items (or kernel-gradient groups) in
    // parallel; 16 items make uneven groups of the kernel gradient; the last case is tiled.
    let cases: &[(Dims, Dims, usize, usize)] = &[
        ((5, 8, 33, 31), (16, 8, 3, 3), 1, 1),
        ((5, 8, 33, 31), (16, 8, 3, 3), 2, 1),
        ((16, 4, 17, 15), (8, 4, 3, 3), 1, 1),
        ((1, 32, 40, 40), (64, 32, 3, 3), 1, 1),
        ((4, 32, 20, 21), (48, 32, 1, 1), 1, 0),
        ((3, 16, 30, 130), (16, 16, 3, 3), 1, 1),
    ];
    for (ci, &(xd, kd, stride, pad)) in cases.iter().enumerate() {
        let mut rng = ChaCha20Rng::seed_from_u64(100 + ci as u64);
        let x = random(xd, DType::F32, &mut rng);
        let k = random(kd, DType::F32, &mut rng);
        let out_dims = conv2d(&x, &k, stride, pad).unwrap().dims4().unwrap();
        let weight = random(out_dims, DType::F32, &mut rng);
        let in_pool = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let (out, gx, gk) = run(conv2d, &x, &k, &weight, stride, pad);
                (bits(&out), bits(&gx), bits(&gk))
            })
        };
        let one = in_pool(1);
        assert!(one.0.iter().any(|&b| b != 0) && one.2.iter().any(|&b| b != 0));
        for threads in [2, 3] {
            assert!(
                in_pool(threads) == one,
                "case {ci}: {threads} threads differ from 1"
            );
        }
    }
}

#[test]
fn input_gradient_is_skipped_when_nothing_needs_it() {
    let (x, k, weight) = case_tensors(1, DType::F32);
    let (_, _, stride, pad) = CASES[1];
    let kv = Var::from_tensor(&k).unwrap();
    let grads = conv2d(&x, kv.as_tensor(), stride, pad)
        .unwrap()
        .mul(&weight)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(grads.get(&x).is_none());
    let (_, _, reference) = run(candle_conv, &x, &k, &weight, stride, pad);
    assert!(rel_err(grads.get(kv.as_tensor()).unwrap(), &reference) <= 1e-5);
}

#[test]
fn gradient_functions_equal_the_backward_pass() {
    for (i, &(xd, kd, stride, pad)) in CASES.iter().enumerate() {
        let (x, k, weight) = case_tensors(i, DType::F32);
        let (_, gx, gk) = run(conv2d, &x, &k, &weight, stride, pad);
        let gx2 = conv2d_grad_input(&weight, &k, (xd.2, xd.3), stride, pad).unwrap();
        let gk2 = conv2d_grad_kernel(&x, &weight, (kd.2, kd.3), stride, pad).unwrap();
        assert_eq!(bits(&gx), bits(&gx2), "case {i}");
        assert_eq!(bits(&gk), bits(&gk2), "case {i}");
    }
}

#[test]
fn non_contiguous_operands_give_the_contiguous_result() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let x = random((2, 3, 8, 9), DType::F32, &mut rng);
    let k = random((4, 3, 3, 3), DType::F32, &mut rng);
    let xt = x.transpose(2, 3).unwrap();
    let kt = k.transpose(2, 3).unwrap();
    assert!(!xt.is_contiguous() && !kt.is_contiguous());
    let a = conv2d(&xt, &kt, 1, 1).unwrap();
    let b = conv2d(&xt.contiguous().unwrap(), &kt.contiguous().unwrap(), 1, 1).unwrap();
    assert_eq!(a.dims(), &[2, 4, 9, 8]);
    assert_eq!(bits(&a), bits(&b));
}

#[test]
fn other_dtypes_fall_back_to_candle() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let x = random((2, 3, 6, 7), DType::F16, &mut rng);
    let k = random((4, 3, 3, 3), DType::F16, &mut rng);
    let ours = conv2d(&x, &k, 2, 1).unwrap();
    assert_eq!(ours.dtype(), DType::F16);
    assert_eq!(bits(&ours), bits(&candle_conv(&x, &k, 2, 1).unwrap()));
}

#[test]
fn bad_shapes_and_dtypes_are_errors() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let x = random((2, 3, 4, 4), DType::F32, &mut rng);
    let k = random((4, 3, 3, 3), DType::F32, &mut rng);
    assert!(conv2d(&x, &random((4, 2, 3, 3), DType::F32, &mut rng), 1, 1).is_err());
    assert!(conv2d(&x, &random((4, 3, 7, 7), DType::F32, &mut rng), 1, 1).is_err());
    assert!(conv2d(&x, &k, 0, 1).is_err());
    assert!(conv2d(&random((2, 3, 0, 4), DType::F32, &mut rng), &k, 1, 2).is_err());
    let empty_batch = conv2d(&random((0, 3, 4, 4), DType::F32, &mut rng), &k, 1, 1).unwrap();
    assert_eq!(empty_batch.dims(), &[0, 4, 4, 4]);
    assert!(conv2d(&x, &k.to_dtype(DType::F64).unwrap(), 1, 1).is_err());
    assert!(conv2d_grad_input(
        &random((2, 4, 3, 3), DType::F32, &mut rng),
        &k,
        (4, 4),
        1,
        1
    )
    .is_err());
    assert!(conv2d(&x, &k, 1, 1).is_ok());
}

#[test]
fn gemm_never_reads_a_destination_it_overwrites() {
    // NaN in dst would survive any read of it (0 * NaN = NaN), so a clean result shows that
    // matmul_uninit only writes. The shapes reach gemm's small-k, vector, horizontal and blocked
    // paths in each operand layout the conv uses.
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    for &(m, n, k) in &[
        (1, 1, 1),
        (1, 7, 3),
        (7, 1, 3),
        (5, 6, 2),
        (16, 9, 300),
        (64, 300, 288),
        (3, 5, 40),
    ] {
        let lhs: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let rhs: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0..1.0)).collect();
        for (ls, rs) in [((k, 1), (n, 1)), ((1, m), (n, 1)), ((k, 1), (1, k))] {
            let mut clean = vec![0f32; m * n];
            matmul(
                (m, n, k),
                &mut clean,
                n,
                false,
                &lhs,
                ls,
                &rhs,
                rs,
                Parallelism::None,
            );
            let mut dirty = vec![MaybeUninit::new(f32::NAN); m * n];
            matmul_uninit(
                (m, n, k),
                &mut dirty,
                n,
                &lhs,
                ls,
                &rhs,
                rs,
                Parallelism::None,
            );
            // SAFETY: initialised with NaN above.
            let dirty: Vec<f32> = dirty.iter().map(|v| unsafe { v.assume_init() }).collect();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&clean), bits(&dirty), "{m}x{n}x{k} {ls:?} {rs:?}");
            assert!(clean.iter().all(|v| v.is_finite()));
        }
    }
}

#[test]
fn chained_and_shared_operands_match_candle() {
    // x feeds two convs and the kernel is used twice, so both gradients accumulate over uses.
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let x = random((3, 4, 9, 11), DType::F64, &mut rng);
    let k1 = random((6, 4, 3, 3), DType::F64, &mut rng);
    let k2 = random((6, 6, 3, 3), DType::F64, &mut rng);
    let k3 = random((6, 4, 1, 1), DType::F64, &mut rng);
    let grads = |conv: ConvFn| {
        let vars: Vec<Var> = [&x, &k1, &k2, &k3]
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let [xv, k1v, k2v, k3v] = [0, 1, 2, 3].map(|i| vars[i].as_tensor());
        let h = conv(xv, k1v, 1, 1).unwrap().relu().unwrap();
        let a = conv(&h, k2v, 2, 1).unwrap();
        let b = conv(&conv(&h, k2v, 1, 1).unwrap(), k2v, 2, 1).unwrap();
        let c = conv(xv, k3v, 2, 0).unwrap();
        let loss = (a.sqr().unwrap().sum_all().unwrap()
            + b.sum_all().unwrap()
            + c.sqr().unwrap().sum_all().unwrap())
        .unwrap();
        let g = loss.backward().unwrap();
        vars.iter()
            .map(|v| g.get(v.as_tensor()).unwrap().clone())
            .collect::<Vec<_>>()
    };
    for (i, (a, b)) in grads(conv2d).iter().zip(grads(candle_conv)).enumerate() {
        let err = rel_err(a, &b);
        assert!(err <= 1e-10, "gradient {i}: relative error {err:e}");
    }
}
