//! SpecAugment as the study applied it: per example, one band of mel bins and one band of frames set to 0
//! (the training mean once the features are standardised).

use serde::{Deserialize, Serialize};

use rand_chacha::ChaCha20Rng;

use super::batches::uniform_below;

/// The study's widest mask, in bins or frames.
pub const DEFAULT_MAX_WIDTH: usize = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecAugment {
    pub enabled: bool,
    /// Widest frequency mask, in mel bins (clamped to the number of bins).
    pub max_freq_width: usize,
    /// Widest time mask, in frames (clamped to the number of frames).
    pub max_time_width: usize,
}

impl Default for SpecAugment {
    fn default() -> Self {
        Self::with_max_width(DEFAULT_MAX_WIDTH)
    }
}

/// A masked range `start..start + width` along one axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Band {
    pub start: usize,
    pub width: usize,
}

/// What one example got: `None` where the axis or the maximum width is 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExampleMasks {
    pub freq: Option<Band>,
    pub time: Option<Band>,
}

/// Width uniform in `1..=min(max_width, len)`, then start uniform in `[0, len - width)` as the study
/// draws it (`0` when the band covers the whole axis, where that range is empty).
pub fn draw_band(len: usize, max_width: usize, rng: &mut ChaCha20Rng) -> Option<Band> {
    let widest = max_width.min(len);
    if widest == 0 {
        return None;
    }
    let width = 1 + uniform_below(rng, widest as u64) as usize;
    let start = uniform_below(rng, (len - width) as u64) as usize;
    Some(Band { start, width })
}

impl SpecAugment {
    pub fn with_max_width(max_width: usize) -> Self {
        Self {
            enabled: true,
            max_freq_width: max_width,
            max_time_width: max_width,
        }
    }

    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// Draws one example's masks: frequency width, frequency start, time width, time start, in that order.
    pub fn draw(&self, n_mels: usize, frames: usize, rng: &mut ChaCha20Rng) -> ExampleMasks {
        let freq = draw_band(n_mels, self.max_freq_width, rng);
        let time = draw_band(frames, self.max_time_width, rng);
        ExampleMasks { freq, time }
    }

    /// Masks every example of `batch` (`[b, n_mels, frames]` row-major, i.e. mel-major) in place, drawing
    /// example by example. Disabled, it draws nothing and leaves the batch alone.
    pub fn apply(
        &self,
        batch: &mut [f32],
        n_mels: usize,
        frames: usize,
        rng: &mut ChaCha20Rng,
    ) -> candle_core::Result<Vec<ExampleMasks>> {
        if !self.enabled {
            return Ok(Vec::new());
        }
        let per = n_mels * frames;
        if per == 0 || !batch.len().is_multiple_of(per) {
            candle_core::bail!(
                "{} values do not make whole {n_mels}x{frames} segments",
                batch.len()
            );
        }
        let mut drawn = Vec::with_capacity(batch.len() / per);
        for example in batch.chunks_exact_mut(per) {
            let masks = self.draw(n_mels, frames, rng);
            if let Some(band) = masks.freq {
                example[band.start * frames..(band.start + band.width) * frames].fill(0.0);
            }
            if let Some(band) = masks.time {
                for row in example.chunks_exact_mut(frames) {
                    row[band.start..band.start + band.width].fill(0.0);
                }
            }
            drawn.push(masks);
        }
        Ok(drawn)
    }
}

#[cfg(test)]
#[path = "augment_tests.rs"]
mod tests;
