//! The frozen-embedding classifiers on hand-made embeddings, and the fine-tuning load that keeps the new head.

use super::probe::{knn, linear_probe, Embeddings};
use super::*;
use crate::train::metrics::argmax;
use crate::train::models::Architecture;

/// Two classes on two rays, a little spread: class 0 near (1, 0.1k), class 1 near (0.1k, 1).
fn rays(n: usize) -> (Embeddings, Vec<u32>) {
    let mut values = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let k = (i % 5) as f32 * 0.1;
        if i % 2 == 0 {
            values.extend([1.0, k]);
            labels.push(0);
        } else {
            values.extend([k, 1.0]);
            labels.push(1);
        }
    }
    (Embeddings { values, dim: 2 }, labels)
}

fn predicted(probs: &[f32], classes: usize) -> Vec<u32> {
    probs.chunks(classes).map(argmax).collect()
}

#[test]
fn knn_votes_by_cosine_similarity() {
    let (train, labels) = rays(20);
    let queries = Embeddings {
        values: vec![3.0, 0.2, 0.1, 2.0, 5.0, 4.9],
        dim: 2,
    };
    let probs = knn(&train, &labels, 2, &queries, 3).unwrap();
    assert_eq!(probs.len(), 6);
    assert_eq!(&probs[..4], &[1.0, 0.0, 0.0, 1.0]);
    // Vote shares sum to one.
    assert!((probs[4] + probs[5] - 1.0).abs() < 1e-6);
}

#[test]
fn knn_rejects_mismatched_inputs() {
    let (train, labels) = rays(4);
    let other_dim = Embeddings {
        values: vec![1.0; 3],
        dim: 3,
    };
    assert!(knn(&train, &labels, 2, &other_dim, 1).is_err());
    assert!(knn(&train, &labels[..3], 2, &train, 1).is_err());
    assert!(knn(&train, &labels, 1, &train, 1).is_err());
    assert!(knn(&train, &labels, 2, &train, 0).is_err());
}

#[test]
fn the_linear_probe_separates_separable_embeddings_and_is_repeatable() {
    let (train, labels) = rays(40);
    let probs = linear_probe(&train, &labels, 2, &train, 200, 0.05).unwrap();
    assert_eq!(predicted(&probs, 2), labels);
    let again = linear_probe(&train, &labels, 2, &train, 200, 0.05).unwrap();
    assert_eq!(
        probs.iter().map(|p| p.to_bits()).collect::<Vec<_>>(),
        again.iter().map(|p| p.to_bits()).collect::<Vec<_>>()
    );
}

#[test]
fn fine_tuning_loads_every_tensor_but_the_new_head() {
    let spec = ModelSpec {
        width: 0.125,
        n_mels: 16,
        frames: 16,
        ..ModelSpec::study(Architecture::UnetLean)
    };
    let source = models::build(&spec, [1; 32], DType::F32, &candle_core::Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weights.safetensors");
    fit::save_state(source.as_ref(), &path).unwrap();
    let five = ModelSpec {
        classes: 5,
        ..spec.clone()
    };
    let target = models::build(&five, [2; 32], DType::F32, &candle_core::Device::Cpu).unwrap();
    let loaded =
        fit::load_state_where(target.as_ref(), &path, &|n| !n.starts_with("logits.")).unwrap();
    let state = |m: &dyn Classifier| {
        m.state()
            .into_iter()
            .map(|(n, v)| {
                (
                    n,
                    v.as_tensor()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap(),
                )
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let (from, to) = (state(source.as_ref()), state(target.as_ref()));
    assert_eq!(loaded, to.len() - 2);
    for (name, values) in &to {
        if name.starts_with("logits.") {
            assert_ne!(Some(values), from.get(name), "{name}");
        } else {
            assert_eq!(Some(values), from.get(name), "{name}");
        }
    }
    // The full load refuses the other head's shape.
    assert!(fit::load_state(target.as_ref(), &path).is_err());
}

#[test]
fn every_network_embeds_what_its_head_reads() {
    for arch in [
        Architecture::EfficientVgg,
        Architecture::ResSe,
        Architecture::Unet,
    ] {
        let spec = ModelSpec {
            width: 0.125,
            n_mels: 16,
            frames: 16,
            ..ModelSpec::study(arch)
        };
        let model = models::build(&spec, [1; 32], DType::F32, &candle_core::Device::Cpu).unwrap();
        let x = Tensor::zeros((3, 1, 16, 16), DType::F32, &candle_core::Device::Cpu).unwrap();
        let e = model.embed(&x).unwrap();
        let head = model
            .trainable()
            .into_iter()
            .find(|(n, _)| n == "logits.kernel")
            .unwrap()
            .1;
        assert_eq!(e.dims(), &[3, head.dims()[0]], "{arch:?}");
    }
}

#[test]
fn the_results_table_has_one_row_per_method_in_run_order() {
    let labels = [0u32, 1, 0, 1];
    let tracks = [0u32, 1, 2, 3];
    let eval = |right: usize| {
        let probs: Vec<f32> = labels
            .iter()
            .enumerate()
            .flat_map(|(i, &l)| {
                if (i < right) == (l == 0) {
                    [0.8, 0.2]
                } else {
                    [0.2, 0.8]
                }
            })
            .collect();
        metrics::evaluate(&probs, 2, &labels, &tracks).unwrap()
    };
    let methods = vec![
        MethodScore {
            method: "linear_probe".into(),
            best_epoch: None,
            test: eval(1),
        },
        MethodScore {
            method: "fine_tune".into(),
            best_epoch: Some(7),
            test: eval(4),
        },
    ];
    let result = TransferResult {
        source: "train[arch=unet]".into(),
        source_spec: ModelSpec::study(Architecture::Unet),
        classes: vec!["a".into(), "b".into()],
        train_segments: 4,
        test_segments: 4,
        embedding_dim: 8,
        methods,
    };
    let df = results_frame(&result).unwrap();
    assert_eq!(
        crate::common::frames::column_names(&df),
        [
            "source",
            "method",
            "best_epoch",
            "test_segment_accuracy",
            "test_segment_macro_f1",
            "test_track_accuracy",
            "test_track_macro_f1",
            "test_track_vote_accuracy"
        ]
    );
    let method: Vec<&str> = df
        .column("method")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .flatten()
        .collect();
    assert_eq!(method, ["linear_probe", "fine_tune"]);
    let epochs: Vec<Option<u64>> = df
        .column("best_epoch")
        .unwrap()
        .u64()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(epochs, [None, Some(7)]);
    let accuracy: Vec<f64> = df
        .column("test_segment_accuracy")
        .unwrap()
        .f64()
        .unwrap()
        .iter()
        .flatten()
        .collect();
    let want: Vec<f64> = result
        .methods
        .iter()
        .map(|m| m.test.segment.accuracy)
        .collect();
    assert_eq!(accuracy, want);
    assert_ne!(want[0], want[1]);
}
