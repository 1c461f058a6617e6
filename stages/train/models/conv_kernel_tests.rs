use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::*;
use crate::train::nn::conv::profile;
use crate::train::nn::gradcheck::uniform;
use crate::train::nn::layers::Conv2d;
use crate::train::nn::loss::softmax_cross_entropy;
use crate::train::nn::params::ParamStore;

const ALL: [Architecture; 4] = [
    Architecture::EfficientVgg,
    Architecture::ResSe,
    Architecture::Unet,
    Architecture::UnetLean,
];
const SEED: [u8; 32] = [42; 32];

fn spec(arch: Architecture, n_mels: usize, frames: usize) -> ModelSpec {
    ModelSpec {
        arch,
        width: 0.25,
        classes: 10,
        n_mels,
        frames,
        batch_norm_momentum: 0.99,
    }
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Largest |a - b| over the largest |b| (at least 1e-3, so near-zero tensors are judged absolutely).
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (values(a), values(b));
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

#[test]
fn stock_convs_build_the_same_network() {
    // 13 x 11 leaves odd sizes after every stride and pool, the case candle's own conv backward needs
    // the layer's crop for.
    let labels = Tensor::new(&[1u32, 7], &Device::Cpu).unwrap();
    for arch in ALL {
        for (h, w) in [(13, 11), (20, 18)] {
            let s = spec(arch, h, w);
            let ours = build(&s, SEED, DType::F64, &Device::Cpu).unwrap();
            let stock =
                build_with(&s, SEED, DType::F64, &Device::Cpu, ConvKernel::CandleStock).unwrap();
            let (a, b) = (ours.state(), stock.state());
            assert_eq!(ours.trainable().len(), stock.trainable().len());
            assert_eq!(a.len(), b.len(), "{arch:?}");
            for ((name_a, va), (name_b, vb)) in a.iter().zip(&b) {
                assert_eq!(name_a, name_b);
                assert_eq!(
                    values(va),
                    values(vb),
                    "{arch:?}: {name_a} initialised differently"
                );
            }

            // PReLU slopes start at zero, which ties every all-negative pooling window at 0. Ties route
            // differently by design (ours: the first maximal element, as TensorFlow; candle's `max`: all of
            // them), so distinct non-zero slopes keep the comparison to the tie-free case.
            for (k, ((name, va), (_, vb))) in a.iter().zip(&b).enumerate() {
                if name.ends_with(".alpha") {
                    let t = uniform(va.dims(), 0.05, 0.3, 100 + k as u64, DType::F64).unwrap();
                    va.set(&t).unwrap();
                    vb.set(&t).unwrap();
                }
            }
            let x = uniform(&[2, 1, h, w], -1.0, 1.0, 5, DType::F64).unwrap();
            let step = |model: &dyn Classifier| {
                let mut rng = ChaCha20Rng::seed_from_u64(3);
                let y = model.forward(&x, Mode::Train { rng: &mut rng }).unwrap();
                let grads = softmax_cross_entropy(&y, &labels)
                    .unwrap()
                    .backward()
                    .unwrap();
                let grads: Vec<Tensor> = model
                    .trainable()
                    .iter()
                    .map(|(name, v)| {
                        grads
                            .get(v.as_tensor())
                            .unwrap_or_else(|| panic!("{arch:?}: {name} gets no gradient"))
                            .clone()
                    })
                    .collect();
                (y, grads)
            };
            let (y_ours, g_ours) = step(ours.as_ref());
            let (y_stock, g_stock) = step(stock.as_ref());
            let err = rel_err(&y_stock, &y_ours);
            assert!(err < 1e-10, "{arch:?} {h}x{w}: logits differ by {err:e}");
            for ((name, _), (ga, gb)) in ours.trainable().iter().zip(g_stock.iter().zip(&g_ours)) {
                let err = rel_err(ga, gb);
                assert!(
                    err < 1e-8,
                    "{arch:?} {h}x{w}: {name} gradient differs by {err:e}"
                );
            }
            let eval_err = rel_err(
                &stock.forward(&x, Mode::Eval).unwrap(),
                &ours.forward(&x, Mode::Eval).unwrap(),
            );
            assert!(
                eval_err < 1e-10,
                "{arch:?} {h}x{w}: eval logits differ by {eval_err:e}"
            );
        }
    }
}

#[test]
fn the_chosen_kernel_is_the_one_that_runs() {
    for arch in ALL {
        let s = spec(arch, 16, 16);
        let x = uniform(&[2, 1, 16, 16], -1.0, 1.0, 6, DType::F32).unwrap();
        let convs_run = |kernel: ConvKernel| {
            let model = build_with(&s, SEED, DType::F32, &Device::Cpu, kernel).unwrap();
            profile::take();
            profile::set_enabled(true);
            model.forward(&x, Mode::Eval).unwrap();
            profile::set_enabled(false);
            profile::take().forward.calls
        };
        assert!(convs_run(ConvKernel::Im2colGemm) > 0, "{arch:?}");
        assert_eq!(convs_run(ConvKernel::CandleStock), 0, "{arch:?}");
    }
}

#[test]
fn the_default_build_is_the_im2col_build_bit_for_bit() {
    let s = spec(Architecture::ResSe, 20, 18);
    let x = uniform(&[2, 1, 20, 18], -1.0, 1.0, 7, DType::F32).unwrap();
    let logits = |model: Box<dyn Classifier>| {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let y = model.forward(&x, Mode::Train { rng: &mut rng }).unwrap();
        values(&y).iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    };
    assert_eq!(
        logits(build(&s, SEED, DType::F32, &Device::Cpu).unwrap()),
        logits(build_with(&s, SEED, DType::F32, &Device::Cpu, ConvKernel::Im2colGemm).unwrap())
    );
}

#[test]
fn a_layer_runs_on_the_kernel_its_store_was_configured_with() {
    let layer = |p: &mut ParamStore| Conv2d::new(p, "c", 1, 2, 3, 1).unwrap().implementation();
    let mut default = ParamStore::new(SEED, DType::F32, &Device::Cpu);
    assert_eq!(layer(&mut default), ConvKernel::Im2colGemm);
    let mut stock =
        ParamStore::new(SEED, DType::F32, &Device::Cpu).with_conv_kernel(ConvKernel::CandleStock);
    assert_eq!(layer(&mut stock), ConvKernel::CandleStock);
    let explicit =
        Conv2d::with_kernel(&mut stock, "d", 1, 2, 3, 1, ConvKernel::Im2colGemm).unwrap();
    assert_eq!(explicit.implementation(), ConvKernel::Im2colGemm);
}
