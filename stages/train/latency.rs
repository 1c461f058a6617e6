//! Inference latency of a trained network: wall-clock time per segment at a given batch size.
//!
//! Latency describes the machine as much as the model, so it is measured on demand (`genrelab efficiency`)
//! and printed, never stored in a content-addressed artifact: the same weights would get a new digest on
//! every run. The input values come from a fixed ChaCha stream so that every run times the same arithmetic.

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use genrelab_contract::{read_json, StageError};

use crate::train::classifier::{Classifier, Mode};
use crate::train::fit;
use crate::train::models::{self, ModelSpec};
use crate::train::stage::{candle_device, candle_error, ModelCard};

/// Milliseconds per segment for each timed forward pass, in the order they ran.
#[derive(Debug, Clone, PartialEq)]
pub struct Timings {
    pub batch: usize,
    pub ms_per_segment: Vec<f64>,
}

impl Timings {
    /// (min, median, max); the upper median for an even count, so it is always a measured value.
    pub fn summary(&self) -> Option<(f64, f64, f64)> {
        let mut v = self.ms_per_segment.clone();
        v.sort_by(f64::total_cmp);
        Some((*v.first()?, v[v.len() / 2], *v.last()?))
    }
}

/// Times `repeats` evaluation-mode forward passes of `model` over one batch of `batch` segments shaped as
/// `spec` says, after one untimed pass that lets the allocator and the thread pool settle.
pub fn time_inference(
    model: &dyn Classifier,
    spec: &ModelSpec,
    batch: usize,
    repeats: usize,
    device: &Device,
) -> Result<Timings> {
    if batch == 0 || repeats == 0 {
        candle_core::bail!("latency needs a batch and a repeat count of at least 1");
    }
    let mut rng = ChaCha20Rng::seed_from_u64(batch as u64);
    let len = batch * spec.n_mels * spec.frames;
    let values: Vec<f32> = (0..len).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    let x = Tensor::from_vec(values, (batch, 1, spec.n_mels, spec.frames), device)?
        .to_dtype(DType::F32)?;
    let pass = || -> Result<()> {
        let logits = model.forward(&x, Mode::Eval)?;
        // Reading the result back forces the whole pass to have run on a lazy device.
        let _ = logits.sum_all()?.to_scalar::<f32>()?;
        Ok(())
    };
    pass()?;
    let mut ms_per_segment = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let start = Instant::now();
        pass()?;
        ms_per_segment.push(start.elapsed().as_secs_f64() * 1e3 / batch as f64);
    }
    Ok(Timings {
        batch,
        ms_per_segment,
    })
}

/// Loads the `train` stage's model folder `folder` (its `model.json` and `weights.safetensors`) onto `device`
/// and times it at each of `batches`.
pub fn time_model_folder(
    folder: &std::path::Path,
    device: genrelab_contract::Device,
    batches: &[usize],
    repeats: usize,
) -> std::result::Result<(ModelCard, Vec<Timings>), StageError> {
    let device = candle_device(device)?;
    let card: ModelCard = read_json(&folder.join("model.json"), "model")?;
    let model = models::build(&card.spec, [0; 32], DType::F32, &device)
        .map_err(candle_error("building the model"))?;
    let weights = folder.join("weights.safetensors");
    fit::load_state(model.as_ref(), &weights)
        .map_err(|e| StageError::bad_file(&weights, e.to_string()))?;
    let timings = batches
        .iter()
        .map(|&batch| time_inference(model.as_ref(), &card.spec, batch, repeats, &device))
        .collect::<Result<Vec<_>>>()
        .map_err(candle_error("timing inference"))?;
    Ok((card, timings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::models::{self, Architecture};

    fn tiny() -> ModelSpec {
        ModelSpec {
            width: 0.125,
            n_mels: 16,
            frames: 16,
            ..ModelSpec::study(Architecture::EfficientVgg)
        }
    }

    #[test]
    fn one_timing_per_repeat_and_a_summary_from_them() {
        let spec = tiny();
        let model = models::build(&spec, [3; 32], DType::F32, &Device::Cpu).unwrap();
        let t = time_inference(model.as_ref(), &spec, 3, 4, &Device::Cpu).unwrap();
        assert_eq!(t.batch, 3);
        assert_eq!(t.ms_per_segment.len(), 4);
        assert!(t
            .ms_per_segment
            .iter()
            .all(|ms| ms.is_finite() && *ms >= 0.0));
        let (min, median, max) = t.summary().unwrap();
        assert!(min <= median && median <= max);
        assert!(t.ms_per_segment.contains(&median));
    }

    #[test]
    fn zero_batch_or_repeats_is_an_error() {
        let spec = tiny();
        let model = models::build(&spec, [3; 32], DType::F32, &Device::Cpu).unwrap();
        assert!(time_inference(model.as_ref(), &spec, 0, 3, &Device::Cpu).is_err());
        assert!(time_inference(model.as_ref(), &spec, 2, 0, &Device::Cpu).is_err());
    }

    #[test]
    fn summary_of_nothing_is_none() {
        let t = Timings {
            batch: 1,
            ms_per_segment: vec![],
        };
        assert_eq!(t.summary(), None);
    }
}
