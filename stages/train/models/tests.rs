use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::res_se::ResBlock;
use super::*;
use crate::train::nn::gradcheck::{assert_gradients, project, uniform, uniform_var};
use crate::train::nn::loss::softmax_cross_entropy;
use crate::train::nn::params::ParamStore;

const ALL: [Architecture; 4] = [
    Architecture::EfficientVgg,
    Architecture::ResSe,
    Architecture::Unet,
    Architecture::UnetLean,
];
const SEED: [u8; 32] = [42; 32];

fn numel(vars: &[(String, candle_core::Var)]) -> usize {
    vars.iter().map(|(_, v)| v.elem_count()).sum()
}

fn spec(arch: Architecture, width: f64, n_mels: usize, frames: usize) -> ModelSpec {
    ModelSpec {
        arch,
        width,
        classes: 10,
        n_mels,
        frames,
        batch_norm_momentum: 0.99,
    }
}

fn state_bytes(model: &dyn Classifier) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, var) in model.state() {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        for v in var.flatten_all().unwrap().to_vec1::<f32>().unwrap() {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

#[test]
fn architecture_names_are_snake_case() {
    let names: Vec<String> = ALL
        .iter()
        .map(|a| serde_json::to_string(a).unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "\"efficient_vgg\"",
            "\"res_se\"",
            "\"unet\"",
            "\"unet_lean\""
        ]
    );
    let s = ModelSpec::study(Architecture::UnetLean);
    let back: ModelSpec = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(back, s);
}

#[test]
fn study_parameter_counts_and_output_shape() {
    // (trainable, batch-norm running statistics) at width 1, 128 x 128, 10 classes. The study reports the lean
    // U-Net's 104,234 as Keras' total count: 103,722 trainable + 512 running statistics.
    let expected = [
        (34_488, 224),
        (1_232_770, 2_752),
        (1_176_170, 1_920),
        (103_722, 512),
    ];
    let x = uniform(&[1, 1, 128, 128], -1.0, 1.0, 1, DType::F32).unwrap();
    for (arch, (trainable, running)) in ALL.iter().zip(expected) {
        let s = ModelSpec::study(*arch);
        let model = build(&s, SEED, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(numel(&model.trainable()), trainable, "{arch:?} trainable");
        assert_eq!(
            numel(&model.state()) - numel(&model.trainable()),
            running,
            "{arch:?} running statistics"
        );
        assert_eq!(
            trainable_parameters(&s),
            trainable,
            "{arch:?} counted from shapes"
        );
        assert_eq!(
            running_statistics(&s),
            running,
            "{arch:?} running counted from shapes"
        );
        let y = model.forward(&x, Mode::Eval).unwrap();
        assert_eq!(y.dims(), &[1, 10], "{arch:?}");
        assert_eq!(y.dtype(), DType::F32);
    }
    assert_eq!(
        trainable_parameters(&ModelSpec::study(Architecture::UnetLean)) + 512,
        104_234
    );
}

#[test]
fn shape_counts_match_built_models_at_other_widths_and_sizes() {
    for arch in ALL {
        for (width, classes) in [(0.125, 3), (0.3, 10), (1.6, 8)] {
            let s = ModelSpec {
                arch,
                width,
                classes,
                n_mels: 20,
                frames: 18,
                batch_norm_momentum: 0.99,
            };
            let model = build(&s, SEED, DType::F32, &Device::Cpu).unwrap();
            assert_eq!(
                numel(&model.trainable()),
                trainable_parameters(&s),
                "{arch:?} x{width}"
            );
            assert_eq!(
                numel(&model.state()) - numel(&model.trainable()),
                running_statistics(&s),
                "{arch:?} x{width}"
            );
        }
    }
}

#[test]
fn multiply_adds_at_study_width() {
    const K: u64 = 9; // 3 x 3 taps
    let px = |n: u64| n * n;
    let vgg = px(128) * K * 16 + px(64) * K * 16 * 32 + px(32) * K * 32 * 64 // convs
        + 16 * 2 * 2 + 32 * 4 * 2 + 64 * 8 * 2 // SE denses
        + 64 * 128 + 128 * 10;
    let block = |n: u64, c_in: u64, c: u64| {
        px(n) * K * c_in * c + px(n) * K * c * c + px(n) * c_in * c + 2 * c * (c / 8)
    };
    let res_se =
        px(128) * K * 32 + block(64, 32, 64) + block(32, 64, 128) + block(16, 128, 256) + 256 * 10;
    let unet = px(128) * K * 32
        + px(128) * K * 32 * 32
        + px(64) * K * (32 * 64 + 64 * 64)
        + px(32) * K * (64 * 128 + 128 * 128)
        + px(16) * K * (128 * 256 + 256 * 256)
        + 256 * 10;
    let lean =
        px(128) * K * (32 + 32 * 32) + px(64) * K * 32 * 64 + px(32) * K * 64 * 128 + 128 * 10;
    let counted: Vec<u64> = ALL
        .iter()
        .map(|a| multiply_adds_per_segment(&ModelSpec::study(*a)))
        .collect();
    assert_eq!(counted, [vgg, res_se, unet, lean]);
    // The study's "about 835 M multiply-adds per segment" for the U-Net.
    assert_eq!(unet, 835_193_344);
    assert_eq!(counted, [40_118_848, 709_385_728, 835_193_344, 306_709_760]);
}

#[test]
fn odd_input_sizes_work() {
    // 128 x 130 pools to 64 x 65 and then 32 x 32; ResSE's strided convs see odd widths.
    for arch in ALL {
        for (h, w) in [(128, 130), (13, 11)] {
            let s = spec(arch, 0.25, h, w);
            let model = build(&s, SEED, DType::F32, &Device::Cpu).unwrap();
            let x = uniform(&[2, 1, h, w], -1.0, 1.0, 2, DType::F32).unwrap();
            let mut rng = ChaCha20Rng::seed_from_u64(0);
            let y = model.forward(&x, Mode::Train { rng: &mut rng }).unwrap();
            assert_eq!(y.dims(), &[2, 10], "{arch:?} on {h}x{w}");
            let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            assert!(v.iter().all(|z| z.is_finite()));
            // And it trains: the backward pass goes through every strided conv and odd-sized pool.
            let labels = Tensor::new(&[1u32, 7], &Device::Cpu).unwrap();
            let grads = softmax_cross_entropy(&y, &labels)
                .unwrap()
                .backward()
                .unwrap();
            assert!(
                model
                    .trainable()
                    .iter()
                    .all(|(_, v)| grads.get(v.as_tensor()).is_some()),
                "{arch:?}"
            );
        }
    }
}

#[test]
fn invalid_specs_are_errors() {
    let ok = spec(Architecture::EfficientVgg, 1.0, 128, 128);
    assert!(ok.validate().is_ok());
    for bad in [
        ModelSpec {
            width: 0.0,
            ..ok.clone()
        },
        ModelSpec {
            width: f64::NAN,
            ..ok.clone()
        },
        ModelSpec {
            classes: 0,
            ..ok.clone()
        },
        ModelSpec {
            n_mels: 0,
            ..ok.clone()
        },
        // Three pools need at least 8 rows: 7 -> 3 -> 1 -> nothing.
        ModelSpec {
            n_mels: 7,
            ..ok.clone()
        },
    ] {
        assert!(
            build(&bad, SEED, DType::F32, &Device::Cpu).is_err(),
            "{bad:?}"
        );
    }
    // ResSE has no pooling, so any positive size builds.
    assert!(build(
        &spec(Architecture::ResSe, 0.1, 3, 1),
        SEED,
        DType::F32,
        &Device::Cpu
    )
    .is_ok());
    assert!(build(
        &spec(Architecture::Unet, 1.0, 8, 8),
        SEED,
        DType::F32,
        &Device::Cpu
    )
    .is_ok());
    assert!(build(
        &spec(Architecture::Unet, 1.0, 7, 8),
        SEED,
        DType::F32,
        &Device::Cpu
    )
    .is_err());
}

#[test]
fn same_seed_same_weights_names_sorted() {
    for arch in ALL {
        let s = spec(arch, 0.25, 32, 32);
        let a = build(&s, SEED, DType::F32, &Device::Cpu).unwrap();
        let b = build(&s, SEED, DType::F32, &Device::Cpu).unwrap();
        let c = build(&s, [43; 32], DType::F32, &Device::Cpu).unwrap();
        assert_eq!(state_bytes(a.as_ref()), state_bytes(b.as_ref()), "{arch:?}");
        assert_ne!(state_bytes(a.as_ref()), state_bytes(c.as_ref()), "{arch:?}");
        for list in [a.state(), a.trainable()] {
            let names: Vec<&String> = list.iter().map(|(n, _)| n).collect();
            assert!(
                names.windows(2).all(|w| w[0] < w[1]),
                "{arch:?}: names sorted and unique"
            );
        }
        let state: Vec<String> = a.state().into_iter().map(|(n, _)| n).collect();
        assert!(a.trainable().iter().all(|(n, _)| state.contains(n)));
        assert!(state.iter().any(|n| n.ends_with(".moving_variance")));
    }
}

#[test]
fn train_mode_moves_running_stats_and_eval_does_not() {
    for arch in ALL {
        let model = build(&spec(arch, 0.25, 16, 16), SEED, DType::F32, &Device::Cpu).unwrap();
        let x = uniform(&[3, 1, 16, 16], -1.0, 1.0, 3, DType::F32).unwrap();
        let before = state_bytes(model.as_ref());
        let y1 = model.forward(&x, Mode::Eval).unwrap();
        assert_eq!(
            state_bytes(model.as_ref()),
            before,
            "{arch:?}: eval changed the state"
        );
        // Eval is per-example: a segment's logits do not depend on the rest of the batch.
        let alone = model
            .forward(&x.narrow(0, 1, 1).unwrap(), Mode::Eval)
            .unwrap();
        let d = (y1.narrow(0, 1, 1).unwrap() - alone)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-5, "{arch:?}");
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        model.forward(&x, Mode::Train { rng: &mut rng }).unwrap();
        assert_ne!(
            state_bytes(model.as_ref()),
            before,
            "{arch:?}: training left the running stats alone"
        );
        let trainable_after: Vec<Vec<f32>> = model
            .trainable()
            .iter()
            .map(|(_, v)| v.flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        let fresh = build(&spec(arch, 0.25, 16, 16), SEED, DType::F32, &Device::Cpu).unwrap();
        let trainable_fresh: Vec<Vec<f32>> = fresh
            .trainable()
            .iter()
            .map(|(_, v)| v.flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        assert_eq!(
            trainable_after, trainable_fresh,
            "{arch:?}: a forward pass changed a trainable value"
        );
    }
}

#[test]
fn residual_block_gradients() {
    // Both branches read the block input, so its gradient is the sum of two paths; strided, with odd sizes.
    for (i, &(h, w, train)) in [(6, 5, true), (7, 8, true), (6, 6, false)]
        .iter()
        .enumerate()
    {
        let mut p = ParamStore::new(SEED, DType::F64, &Device::Cpu);
        let block = ResBlock::new(&mut p, "b", 3, 4, 2).unwrap();
        let weights = p.finish();
        // Non-trivial slopes, biases, scales and running statistics, so that no path is an identity or a zero.
        for (j, (name, v)) in weights.state.iter().enumerate() {
            let (lo, hi) = if name.ends_with("moving_variance") || name.ends_with("gamma") {
                (0.5, 1.5)
            } else {
                (-0.5, 0.5)
            };
            if !name.ends_with("kernel") {
                v.set(&uniform(v.dims(), lo, hi, 200 + j as u64, DType::F64).unwrap())
                    .unwrap();
            }
        }
        let x = uniform_var(&[2, 3, h, w], -1.0, 1.0, 210 + i as u64).unwrap();
        let out = block.forward(&x, train).unwrap();
        assert_eq!(out.dims(), &[2, 4, h.div_ceil(2), w.div_ceil(2)]);
        let r = uniform(out.dims(), -1.0, 1.0, 220 + i as u64, DType::F64).unwrap();
        let loss = || project(&block.forward(&x, train)?, &r);
        let mut vars = weights.trainable.clone();
        vars.push(("x".into(), x.clone()));
        assert_gradients(
            &format!("residual block {h}x{w} train={train}"),
            &vars,
            None,
            &loss,
        );
    }
}

#[test]
fn whole_network_gradients_at_tiny_width() {
    let labels = Tensor::new(&[2u32, 0, 1], &Device::Cpu).unwrap();
    for arch in ALL {
        let s = ModelSpec {
            arch,
            width: 0.125,
            classes: 3,
            n_mels: 12,
            frames: 10,
            batch_norm_momentum: 0.99,
        };
        let model = build(&s, SEED, DType::F64, &Device::Cpu).unwrap();
        let x = uniform_var(&[3, 1, 12, 10], -1.0, 1.0, 300).unwrap();
        // Non-zero PReLU slopes and biases, so that the negative sides and every bias path are exercised.
        for (j, (name, v)) in model.trainable().iter().enumerate() {
            if name.ends_with(".alpha") || name.ends_with(".bias") || name.ends_with(".beta") {
                v.set(&uniform(v.dims(), -0.3, 0.3, 310 + j as u64, DType::F64).unwrap())
                    .unwrap();
            }
        }
        let mut vars = model.trainable();
        vars.push(("input".into(), x.clone()));

        // Training mode: batch statistics, and dropout with the same mask on every evaluation.
        let train_loss = || {
            let mut rng = ChaCha20Rng::seed_from_u64(11);
            softmax_cross_entropy(&model.forward(&x, Mode::Train { rng: &mut rng })?, &labels)
        };
        let grads = train_loss().unwrap().backward().unwrap();
        for (name, v) in model.trainable() {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{arch:?}: {name} gets no gradient"));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!(norm > 0.0, "{arch:?}: {name} has an all-zero gradient");
        }
        let report = assert_gradients(&format!("{arch:?} (train)"), &vars, Some(3), &train_loss);
        let expected: usize = vars.iter().map(|(_, v)| v.elem_count().min(3)).sum();
        assert_eq!(report.checked, expected, "{arch:?}");
        assert!(
            report.significant * 5 >= report.checked * 3,
            "{arch:?}: {report:?}"
        );

        // Evaluation mode, after the training passes above moved the running statistics.
        let eval_loss = || softmax_cross_entropy(&model.forward(&x, Mode::Eval)?, &labels);
        let report = assert_gradients(&format!("{arch:?} (eval)"), &vars, Some(2), &eval_loss);
        assert!(
            report.significant * 5 >= report.checked * 3,
            "{arch:?}: {report:?}"
        );
    }
}
