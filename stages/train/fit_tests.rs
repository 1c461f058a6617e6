use std::cell::Cell;

use candle_core::{Device, Tensor, Var};
use rand_chacha::rand_core::SeedableRng;

use super::*;

/// One hidden layer on the flattened input, centred by the batch mean in training (and by a running mean,
/// updated as batch norm's, in evaluation), ReLU, dropout 0.5 from the mode's stream, then logits.
struct Tiny {
    w1: Var,
    b1: Var,
    running: Var,
    w2: Var,
    b2: Var,
}

const HIDDEN: usize = 16;

fn uniform(rng: &mut ChaCha20Rng, n: usize, limit: f32) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * limit)
        .collect()
}

impl Tiny {
    fn new(inputs: usize, classes: usize, seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let var = |v: Vec<f32>, shape: &[usize]| {
            Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
        };
        let l1 = (6.0 / inputs as f32).sqrt();
        let l2 = (6.0 / HIDDEN as f32).sqrt();
        Self {
            w1: var(uniform(&mut rng, inputs * HIDDEN, l1), &[inputs, HIDDEN]),
            b1: var(vec![0.0; HIDDEN], &[HIDDEN]),
            running: var(vec![0.0; HIDDEN], &[HIDDEN]),
            w2: var(uniform(&mut rng, HIDDEN * classes, l2), &[HIDDEN, classes]),
            b2: var(vec![0.0; classes], &[classes]),
        }
    }
}

impl Classifier for Tiny {
    fn forward(&self, x: &Tensor, mode: Mode<'_>) -> candle_core::Result<Tensor> {
        let b = x.dim(0)?;
        let h = x
            .reshape((b, ()))?
            .matmul(self.w1.as_tensor())?
            .broadcast_add(self.b1.as_tensor())?;
        let hidden = match mode {
            Mode::Train { rng } => {
                let mean = h.mean(0)?;
                let updated = ((self.running.as_tensor() * 0.99)? + (mean.detach() * 0.01)?)?;
                self.running.set(&updated)?;
                let keep: Vec<f32> = (0..b * HIDDEN)
                    .map(|_| if rng.next_u32() >> 31 == 1 { 2.0 } else { 0.0 })
                    .collect();
                let mask = Tensor::from_vec(keep, (b, HIDDEN), &Device::Cpu)?;
                (h.broadcast_sub(&mean)?.relu()? * mask)?
            }
            Mode::Eval => h.broadcast_sub(self.running.as_tensor())?.relu()?,
        };
        hidden
            .matmul(self.w2.as_tensor())?
            .broadcast_add(self.b2.as_tensor())
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        vec![
            ("l1.bias".into(), self.b1.clone()),
            ("l1.weight".into(), self.w1.clone()),
            ("l2.bias".into(), self.b2.clone()),
            ("l2.weight".into(), self.w2.clone()),
        ]
    }

    fn state(&self) -> Vec<(String, Var)> {
        let mut s = self.trainable();
        s.push(("l1.running_mean".into(), self.running.clone()));
        s.sort_by(|a, b| a.0.cmp(&b.0));
        s
    }
}

const N_MELS: usize = 4;
const FRAMES: usize = 6;
const CLASSES: usize = 3;

struct Data {
    values: Vec<f32>,
    labels: Vec<u32>,
    tracks: Vec<u32>,
}

impl Data {
    fn set(&self) -> SegmentSet<'_> {
        SegmentSet {
            values: &self.values,
            n_mels: N_MELS,
            frames: FRAMES,
            labels: &self.labels,
            tracks: &self.tracks,
        }
    }
}

/// `tracks_per_class` tracks of 5 segments per class: a class pattern plus noise. With `random_labels`
/// the labels (constant within a track) ignore the pattern, so nothing can be learnt about them.
fn data(tracks_per_class: usize, first_track: u32, seed: u64, random_labels: bool) -> Data {
    let cells = N_MELS * FRAMES;
    let patterns = uniform(&mut ChaCha20Rng::seed_from_u64(99), CLASSES * cells, 1.0);
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut d = Data {
        values: Vec::new(),
        labels: Vec::new(),
        tracks: Vec::new(),
    };
    for t in 0..CLASSES * tracks_per_class {
        let class = t % CLASSES;
        let label = if random_labels {
            rng.next_u32() % CLASSES as u32
        } else {
            class as u32
        };
        for _ in 0..5 {
            let noise = uniform(&mut rng, cells, 1.0);
            d.values.extend(
                patterns[class * cells..(class + 1) * cells]
                    .iter()
                    .zip(noise)
                    .map(|(p, n)| p + n),
            );
            d.labels.push(label);
            d.tracks.push(first_track + t as u32);
        }
    }
    d
}

fn streams(seed: u64) -> impl Fn(&str) -> ChaCha20Rng {
    move |name: &str| {
        ChaCha20Rng::from_seed(*blake3::hash(format!("{seed}/{name}").as_bytes()).as_bytes())
    }
}

fn settings(max_epochs: usize) -> FitSettings {
    FitSettings {
        batch_size: 8,
        max_epochs,
        patience: 100,
        learning_rate: 1e-2,
        plateau_factor: 0.2,
        plateau_patience: 3,
        augment: true,
        mask_max_width: 2,
    }
}

fn model() -> Tiny {
    Tiny::new(N_MELS * FRAMES, CLASSES, 5)
}

fn weight_bytes(model: &Tiny, dir: &Path, name: &str) -> Vec<u8> {
    let path = dir.join(name);
    save_state(model, &path).unwrap();
    fs::read(path).unwrap()
}

#[derive(Default)]
struct Recorder {
    notes: Vec<FitNote>,
    epochs: Vec<usize>,
}

impl FitHooks for Recorder {
    fn epoch_done(&mut self, progress: &EpochProgress) {
        assert!(progress.samples_per_second >= 0.0);
        self.epochs.push(progress.epoch);
    }
    fn note(&mut self, note: &FitNote) {
        self.notes.push(note.clone());
    }
}

fn run(
    max_epochs: usize,
    seed: u64,
    dir: Option<&Path>,
    hooks: &mut dyn FitHooks,
) -> (Tiny, Result<FitOutcome, FitError>) {
    let (train, val) = (data(4, 0, 1, false), data(2, 100, 2, false));
    let m = model();
    let out = fit(
        &m,
        &train.set(),
        &val.set(),
        &settings(max_epochs),
        &streams(seed),
        dir,
        hooks,
    );
    (m, out)
}

#[test]
fn same_inputs_give_byte_identical_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, out_a) = run(6, 42, None, &mut NoHooks);
    let (b, out_b) = run(6, 42, None, &mut NoHooks);
    let (c, _) = run(6, 43, None, &mut NoHooks);
    let (out_a, out_b) = (out_a.unwrap(), out_b.unwrap());
    assert_eq!(out_a, out_b);
    assert_eq!(
        weight_bytes(&a, tmp.path(), "a"),
        weight_bytes(&b, tmp.path(), "b")
    );
    assert_ne!(
        weight_bytes(&a, tmp.path(), "a"),
        weight_bytes(&c, tmp.path(), "c"),
        "the seed changed nothing"
    );
    assert_ne!(
        weight_bytes(&a, tmp.path(), "a"),
        weight_bytes(&model(), tmp.path(), "init"),
        "nothing was learnt"
    );
    assert_eq!(out_a.history.len(), 6);
    assert_eq!(
        out_a.history.iter().map(|r| r.epoch).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6]
    );
    // The task is learnable: validation accuracy well above chance (1/3).
    assert!(out_a.best_val_accuracy > 0.6, "{:?}", out_a.history);
    // Keras keeps the rate in float32.
    assert_eq!(out_a.history[0].learning_rate, f64::from(1e-2f32));
}

#[test]
fn the_restored_model_predicts_the_best_epochs_validation_accuracy() {
    let (train, val) = (data(4, 0, 1, false), data(2, 100, 2, false));
    let m = model();
    let out = fit(
        &m,
        &train.set(),
        &val.set(),
        &settings(6),
        &streams(42),
        None,
        &mut NoHooks,
    )
    .unwrap();
    let probs = predict(&m, &val.set(), 7).unwrap();
    assert_eq!(probs.len(), val.labels.len() * CLASSES);
    for row in probs.chunks(CLASSES) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
    let e = metrics::evaluate(&probs, CLASSES, &val.labels, &val.tracks).unwrap();
    assert_eq!(e.segment.accuracy, out.best_val_accuracy);
    assert_eq!(
        e.track_mean.accuracy,
        out.history[out.best_epoch - 1].val_track_accuracy
    );
}

/// Cancels after `after` batches of epoch `epoch`.
struct CancelAt {
    epoch: usize,
    after: usize,
    done: usize,
    calls: Cell<usize>,
}

impl FitHooks for CancelAt {
    fn cancelled(&self) -> bool {
        if self.done + 1 != self.epoch {
            return false;
        }
        let n = self.calls.get();
        self.calls.set(n + 1);
        n >= self.after
    }
    fn epoch_done(&mut self, progress: &EpochProgress) {
        self.done = progress.epoch;
    }
}

#[test]
fn an_interrupted_run_resumes_to_the_uninterrupted_result() {
    let tmp = tempfile::tempdir().unwrap();
    let (straight, expected) = run(6, 42, None, &mut NoHooks);
    let expected = expected.unwrap();

    let ck = tmp.path().join("ck");
    let mut cancel = CancelAt {
        epoch: 3,
        after: 4,
        done: 0,
        calls: Cell::new(0),
    };
    let (_, interrupted) = run(6, 42, Some(&ck), &mut cancel);
    assert!(matches!(interrupted, Err(FitError::Cancelled)));
    assert_eq!(
        cancel.calls.get(),
        5,
        "cancelled after 4 batches of epoch 3"
    );
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(ck.join("checkpoint.json")).unwrap()).unwrap();
    assert_eq!(index["epoch"], 2);
    let files: Vec<String> = fs::read_dir(&ck)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    assert_eq!(
        files.len(),
        4,
        "only the last epoch's files remain: {files:?}"
    );

    let mut rec = Recorder::default();
    let (resumed, outcome) = run(6, 42, Some(&ck), &mut rec);
    assert_eq!(rec.notes, vec![FitNote::Resumed { epoch: 2 }]);
    assert_eq!(rec.epochs, vec![3, 4, 5, 6]);
    assert_eq!(outcome.unwrap(), expected);
    assert_eq!(
        weight_bytes(&resumed, tmp.path(), "r"),
        weight_bytes(&straight, tmp.path(), "s")
    );

    // A finished checkpoint replays without training.
    let mut rec = Recorder::default();
    let (again, outcome) = run(6, 42, Some(&ck), &mut rec);
    assert_eq!(rec.notes, vec![FitNote::Resumed { epoch: 6 }]);
    assert!(rec.epochs.is_empty());
    assert_eq!(outcome.unwrap(), expected);
    assert_eq!(
        weight_bytes(&again, tmp.path(), "g"),
        weight_bytes(&straight, tmp.path(), "s")
    );
}

#[test]
fn corrupt_or_foreign_checkpoints_are_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let (straight, expected) = run(3, 42, None, &mut NoHooks);
    let expected = expected.unwrap();
    let ck = tmp.path().join("ck");

    // A checkpoint from another seed is not continued.
    run(2, 7, Some(&ck), &mut NoHooks).1.unwrap();
    let mut rec = Recorder::default();
    let (m, out) = run(3, 42, Some(&ck), &mut rec);
    assert!(
        matches!(&rec.notes[..], [FitNote::CheckpointIgnored { .. }]),
        "{:?}",
        rec.notes
    );
    assert_eq!(out.unwrap(), expected);
    assert_eq!(
        weight_bytes(&m, tmp.path(), "m"),
        weight_bytes(&straight, tmp.path(), "s")
    );

    // A damaged tensor file is caught by its hash.
    let model_file = fs::read_dir(&ck)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".model.safetensors"))
        .unwrap();
    let mut bytes = fs::read(&model_file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&model_file, bytes).unwrap();
    let mut rec = Recorder::default();
    let (m, out) = run(3, 42, Some(&ck), &mut rec);
    assert!(
        matches!(&rec.notes[..], [FitNote::CheckpointIgnored { reason }] if reason.contains("hash")),
        "{:?}",
        rec.notes
    );
    assert_eq!(out.unwrap(), expected);
    assert_eq!(
        weight_bytes(&m, tmp.path(), "m"),
        weight_bytes(&straight, tmp.path(), "s")
    );

    // An unreadable index.
    fs::write(ck.join("checkpoint.json"), b"{ not json").unwrap();
    let mut rec = Recorder::default();
    let (_, out) = run(3, 42, Some(&ck), &mut rec);
    assert!(matches!(
        &rec.notes[..],
        [FitNote::CheckpointIgnored { .. }]
    ));
    assert_eq!(out.unwrap(), expected);
}

#[test]
fn early_stopping_restores_the_best_epochs_weights() {
    // Validation labels that ignore the inputs: accuracy wanders, peaks early, and patience 3 runs out.
    let tmp = tempfile::tempdir().unwrap();
    let (train, val) = (data(4, 0, 1, false), data(4, 100, 3, true));
    let mut s = settings(40);
    s.patience = 3;
    let ck = tmp.path().join("ck");
    let m = model();
    let out = fit(
        &m,
        &train.set(),
        &val.set(),
        &s,
        &streams(42),
        Some(&ck),
        &mut NoHooks,
    )
    .unwrap();
    assert!(out.stopped_early, "{:?}", out.history);
    let last = out.history.len();
    assert!(last < 40 && out.best_epoch < last);
    // Keras stops `patience` epochs after the last strict improvement.
    assert_eq!(last, out.best_epoch + 3);
    let accs: Vec<f64> = out.history.iter().map(|r| r.val_accuracy).collect();
    let first_max = accs
        .iter()
        .position(|&a| a == out.best_val_accuracy)
        .unwrap()
        + 1;
    assert_eq!(out.best_epoch, first_max);
    assert!(accs.iter().all(|&a| a <= out.best_val_accuracy));

    // The model holds the best epoch's state, not the last one's (still in the checkpoint).
    let restored = weight_bytes(&m, tmp.path(), "restored");
    let last_state = fs::read(ck.join(format!("epoch-{last:04}.model.safetensors"))).unwrap();
    assert_ne!(restored, last_state);
    // The same training cut at the best epoch ends on exactly those weights.
    s.max_epochs = out.best_epoch;
    s.patience = 100;
    let m2 = model();
    let out2 = fit(
        &m2,
        &train.set(),
        &val.set(),
        &s,
        &streams(42),
        None,
        &mut NoHooks,
    )
    .unwrap();
    assert_eq!(out2.best_epoch, out.best_epoch);
    assert_eq!(out2.history[..], out.history[..out.best_epoch]);
    assert_eq!(weight_bytes(&m2, tmp.path(), "cut"), restored);
}

#[test]
fn save_and_load_state_round_trip_and_refuse_mismatches() {
    let tmp = tempfile::tempdir().unwrap();
    let (trained, _) = run(2, 42, None, &mut NoHooks);
    let path = tmp.path().join("w.safetensors");
    save_state(&trained, &path).unwrap();
    let fresh = model();
    load_state(&fresh, &path).unwrap();
    assert_eq!(
        weight_bytes(&fresh, tmp.path(), "f"),
        fs::read(&path).unwrap()
    );
    let bytes = fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + header_len].to_vec()).unwrap();
    assert!(!header.contains("__metadata__"));
    assert!(header.find("l1.bias").unwrap() < header.find("l2.weight").unwrap());

    let other = Tiny::new(N_MELS * FRAMES, 4, 5);
    let before = weight_bytes(&other, tmp.path(), "o");
    assert!(load_state(&other, &path).is_err());
    assert_eq!(weight_bytes(&other, tmp.path(), "o"), before);
    let leftovers: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp")
        })
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn bad_inputs_are_refused_before_training() {
    let (train, val) = (data(1, 0, 1, false), data(1, 100, 2, false));
    let m = model();
    let mut s = settings(1);
    s.batch_size = 0;
    assert!(matches!(
        fit(
            &m,
            &train.set(),
            &val.set(),
            &s,
            &streams(1),
            None,
            &mut NoHooks
        ),
        Err(FitError::Invalid(_))
    ));
    let mut short = train.set();
    short.labels = &train.labels[1..];
    assert!(matches!(
        fit(
            &m,
            &short,
            &val.set(),
            &settings(1),
            &streams(1),
            None,
            &mut NoHooks
        ),
        Err(FitError::Invalid(_))
    ));
    let big = vec![7u32; val.labels.len()];
    let mut wrong = val.set();
    wrong.labels = &big;
    assert!(matches!(
        fit(
            &m,
            &train.set(),
            &wrong,
            &settings(1),
            &streams(1),
            None,
            &mut NoHooks
        ),
        Err(FitError::Invalid(_))
    ));
}

#[test]
fn checkpoint_floats_survive_json_exactly() {
    // Losses and rates are arbitrary doubles; a resumed run must read back the very bits it wrote.
    let mut rng = ChaCha20Rng::seed_from_u64(12);
    for _ in 0..20_000 {
        let mantissa = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let x = mantissa * 10f64.powi((rng.next_u32() % 12) as i32 - 9);
        let back: f64 = serde_json::from_str(&serde_json::to_string(&x).unwrap()).unwrap();
        assert_eq!(back.to_bits(), x.to_bits(), "{x:?}");
    }
}
