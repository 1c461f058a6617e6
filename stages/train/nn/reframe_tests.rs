use candle_core::{DType, Tensor, Var};

use super::super::gradcheck::{assert_gradients, project, uniform, uniform_var};
use super::{crop, pad_zeros, reframe};

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// Output and input gradient of `project(f(x), r)`.
fn run(
    x: &Var,
    r: &Tensor,
    f: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> (Tensor, Tensor) {
    let y = f(x.as_tensor()).unwrap();
    let g = project(&y, r).unwrap().backward().unwrap();
    (y, g.get(x.as_tensor()).unwrap().clone())
}

const PADS: [[usize; 4]; 4] = [[0, 1, 0, 1], [2, 0, 1, 3], [0, 0, 0, 0], [1, 1, 1, 1]];

#[test]
fn pad_and_crop_equal_candles_pad_and_narrow_exactly() {
    let shape = [2, 3, 5, 7];
    let x = Var::from_tensor(&uniform(&shape, -1.0, 1.0, 1, DType::F32).unwrap()).unwrap();
    for (k, [t, b, l, r]) in PADS.iter().copied().enumerate() {
        let out = [2, 3, 5 + t + b, 7 + l + r];
        let w = uniform(&out, -1.0, 1.0, 10 + k as u64, DType::F32).unwrap();
        let (yf, gf) = run(&x, &w, &|x| pad_zeros(x, t, b, l, r));
        let (yc, gc) = run(&x, &w, &|x| {
            x.pad_with_zeros(2, t, b)?.pad_with_zeros(3, l, r)
        });
        assert_eq!(yf.dims(), &out);
        assert_eq!(bits(&yf), bits(&yc), "pad {t} {b} {l} {r}");
        assert_eq!(bits(&gf), bits(&gc), "pad gradient {t} {b} {l} {r}");
    }
    for (k, (top, left, h, w)) in [(0, 0, 4, 6), (1, 2, 3, 4), (0, 0, 5, 7), (4, 6, 1, 1)]
        .into_iter()
        .enumerate()
    {
        let wt = uniform(&[2, 3, h, w], -1.0, 1.0, 20 + k as u64, DType::F32).unwrap();
        let (yf, gf) = run(&x, &wt, &|x| crop(x, top, left, h, w));
        let (yc, gc) = run(&x, &wt, &|x| x.narrow(2, top, h)?.narrow(3, left, w));
        assert_eq!(bits(&yf), bits(&yc), "crop {top} {left} {h} {w}");
        assert_eq!(bits(&gf), bits(&gc), "crop gradient {top} {left} {h} {w}");
    }
    assert!(crop(x.as_tensor(), 1, 0, 5, 7).is_err());
}

#[test]
fn crop_and_pad_at_once_matches_finite_differences() {
    // A window hanging over the top-left and cut at the bottom-right: a crop and a pad in one.
    for (k, shape) in [[1, 2, 5, 7], [2, 1, 4, 3]].iter().enumerate() {
        let x = uniform_var(shape, -1.0, 1.0, 30 + k as u64).unwrap();
        let (oh, ow) = (shape[2] - 1 + 2, shape[3] - 2 + 1);
        let r = uniform(&[shape[0], shape[1], oh, ow], -1.0, 1.0, 40, DType::F64).unwrap();
        assert_gradients(
            &format!("reframe {shape:?}"),
            &[("x".into(), x.clone())],
            None,
            &|| project(&reframe(x.as_tensor(), oh, ow, -2, -1)?, &r),
        );
        let padded = uniform(
            &[shape[0], shape[1], shape[2] + 1, shape[3] + 3],
            -1.0,
            1.0,
            41,
            DType::F64,
        )
        .unwrap();
        assert_gradients(
            &format!("pad {shape:?}"),
            &[("x".into(), x.clone())],
            None,
            &|| project(&pad_zeros(x.as_tensor(), 0, 1, 2, 1)?, &padded),
        );
    }
}

#[test]
fn results_are_bit_identical_for_one_two_and_three_threads() {
    let shape = [3, 5, 64, 65];
    let on = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| {
                let x =
                    Var::from_tensor(&uniform(&shape, -1.0, 1.0, 50, DType::F32).unwrap()).unwrap();
                let w = uniform(&[3, 5, 65, 66], -1.0, 1.0, 51, DType::F32).unwrap();
                let (y, g) = run(&x, &w, &|x| pad_zeros(x, 0, 1, 0, 1));
                (bits(&y), bits(&g))
            })
    };
    let one = on(1);
    assert_eq!(one, on(2));
    assert_eq!(one, on(3));
}
