//! Audio decoding shared by `ingest` and `features`: WAV (every format hound reads) and Sun .au, downmixed
//! to mono and resampled to the pipeline's rate.
//!
//! (Placeholder body: 16-bit mono WAV only, to be completed.)

use std::path::{Path, PathBuf};

/// A decode failure, naming the file: the reason ingest quarantines it.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct AudioError {
    pub path: PathBuf,
    pub reason: String,
}

/// One decoded track: mono samples at the requested rate, in [-1, 1].
#[derive(Debug, Clone)]
pub struct Decoded {
    pub samples: Vec<f32>,
    pub source_rate: u32,
    pub source_channels: u16,
}

/// Decode every sample of `path` (so a truncated file fails here), downmix, resample to `target_rate`.
pub fn decode_file(path: &Path, target_rate: u32) -> Result<Decoded, AudioError> {
    let err = |reason: String| AudioError {
        path: path.to_path_buf(),
        reason,
    };
    let reader = hound::WavReader::open(path).map_err(|e| err(e.to_string()))?;
    let spec = reader.spec();
    if spec.sample_rate != target_rate || spec.channels != 1 {
        return Err(err(
            "only mono WAV at the target rate is supported so far".into()
        ));
    }
    let samples = reader
        .into_samples::<i16>()
        .map(|s| s.map(|v| f32::from(v) / 32768.0))
        .collect::<Result<Vec<f32>, _>>()
        .map_err(|e| err(e.to_string()))?;
    Ok(Decoded {
        samples,
        source_rate: spec.sample_rate,
        source_channels: spec.channels,
    })
}

/// blake3 of the samples as little-endian f32: the identity of a track's audio, whatever its container.
pub fn audio_digest(samples: &[f32]) -> String {
    let mut hasher = blake3::Hasher::new();
    for chunk in samples.chunks(4096) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
        hasher.update(&bytes);
    }
    hasher.finalize().to_hex().to_string()
}
