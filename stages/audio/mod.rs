//! Audio decoding shared by `ingest` and `features`: WAV (every format hound reads) and Sun/NeXT .au,
//! downmixed to mono and resampled to the pipeline's rate.
//!
//! Invariants:
//! - Every sample of a file is read before it is accepted, so a truncated file fails here, not downstream.
//! - Integer PCM becomes f32 the way libsndfile (and so `librosa.load`) does it: `v / 2^(bits-1)`.
//! - The container is recognised by its first bytes; a `.wav`/`.au` name whose content disagrees is an error
//!   (a misnamed file is a data fault worth seeing, like the Kaggle GTZAN `jazz.00054.wav`).
//! - Downmix is the mean of the channels summed in channel order (librosa's `to_mono`), resampling is a fixed
//!   FFT resampler: the same file gives the same bits whatever thread decodes it.
//! - A decoded track always has at least one sample, and every sample is finite.
//! - Oddities that leave every sample readable (a WAV whose RIFF size field disagrees with the file, bytes
//!   after the RIFF chunk, a data chunk ending in part of a sample) are not failures: they come back as
//!   `Decoded::warnings` for ingest to record. A data chunk declaring more samples than the file holds is a
//!   truncated file and fails, since which samples are real cannot be told.
//! - Nothing read from a header is trusted for an allocation: rates, channel counts and the decoded length
//!   are checked against the limits below before any buffer of that size exists, so a hostile or corrupt
//!   header quarantines its file instead of aborting the run.

mod au;
mod resample;
mod wav;

#[cfg(test)]
mod tests;

use std::io::Read;
use std::path::{Path, PathBuf};

/// Lowest source (and target) sample rate accepted. Telephone audio is 8 kHz; nothing musical sits below
/// 1 kHz, and a floor bounds how far a file can be upsampled (a 10 Hz header would otherwise ask for 2,205x).
pub const MIN_SAMPLE_RATE: u32 = 1_000;
/// Highest sample rate accepted: 768 kHz is the top rate of current converters and of any common format.
pub const MAX_SAMPLE_RATE: u32 = 768_000;
/// Most channels accepted: room for 7th-order ambisonics (64) and large multitrack stems; a header claiming
/// thousands is corrupt.
pub const MAX_CHANNELS: u16 = 64;
/// Longest decoded track, in samples at the target rate: 2^27 f32 samples (512 MiB), 101 minutes at
/// 22,050 Hz. Bounds the resampler's output buffer whatever the header says.
pub const MAX_DECODED_SAMPLES: u64 = 1 << 27;

/// Checks a container's declared rate and channel count before anything is allocated from them.
fn check_format(rate: u32, channels: u32) -> Result<(), String> {
    if !(MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&rate) {
        return Err(format!(
            "sample rate {rate} Hz is outside the accepted {MIN_SAMPLE_RATE}..={MAX_SAMPLE_RATE} Hz"
        ));
    }
    if channels == 0 || channels > u32::from(MAX_CHANNELS) {
        return Err(format!(
            "{channels} channels: the accepted range is 1..={MAX_CHANNELS}"
        ));
    }
    Ok(())
}

/// A decode failure, naming the file: the reason ingest quarantines it.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct AudioError {
    pub path: PathBuf,
    pub reason: String,
}

/// One decoded track: mono samples at the requested rate, nominally in [-1, 1] (resampling may overshoot
/// full scale slightly, as any band-limited resampler does; nothing is clipped).
#[derive(Debug, Clone)]
pub struct Decoded {
    pub samples: Vec<f32>,
    pub source_rate: u32,
    pub source_channels: u16,
    /// Header oddities that did not stop decoding, in the order found; empty for a clean file.
    pub warnings: Vec<String>,
}

/// Interleaved samples as a container decoder hands them over, before downmix and resampling.
struct Interleaved {
    samples: Vec<f32>,
    rate: u32,
    channels: u16,
    warnings: Vec<String>,
}

/// Containers recognised by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    Wav,
    Au,
}

impl Container {
    fn sniff(head: &[u8]) -> Option<Container> {
        if head.starts_with(b"RIFF") {
            Some(Container::Wav)
        } else if head.starts_with(au::MAGIC) {
            Some(Container::Au)
        } else {
            None
        }
    }

    /// The container a file name promises, if its extension names one.
    fn from_extension(path: &Path) -> Option<Container> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "wav" | "wave" => Some(Container::Wav),
            "au" | "snd" => Some(Container::Au),
            _ => None,
        }
    }
}

/// Decode every sample of `path` (so a truncated file fails here), downmix, resample to `target_rate`.
pub fn decode_file(path: &Path, target_rate: u32) -> Result<Decoded, AudioError> {
    let err = |reason: String| AudioError {
        path: path.to_path_buf(),
        reason,
    };
    if !(MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&target_rate) {
        return Err(err(format!(
            "target sample rate {target_rate} Hz is outside the accepted {MIN_SAMPLE_RATE}..={MAX_SAMPLE_RATE} Hz"
        )));
    }
    let raw = read_container(path).map_err(err)?;
    let source_rate = raw.rate;
    let source_channels = raw.channels;
    let warnings = raw.warnings;
    let mono = downmix(raw.samples, raw.channels).map_err(err)?;
    let decoded_len = resample::output_len(mono.len(), source_rate, target_rate).map_err(err)?;
    if decoded_len as u64 > MAX_DECODED_SAMPLES {
        return Err(err(format!(
            "too long: {} samples at {source_rate} Hz decode to {decoded_len} samples at {target_rate} Hz, over \
             the limit of {MAX_DECODED_SAMPLES}",
            mono.len()
        )));
    }
    let samples = if source_rate == target_rate {
        mono
    } else {
        resample::resample(&mono, source_rate, target_rate).map_err(err)?
    };
    if samples.is_empty() {
        return Err(err("no audio samples".into()));
    }
    Ok(Decoded {
        samples,
        source_rate,
        source_channels,
        warnings,
    })
}

/// Recognise the container and decode it to interleaved f32, checking what every caller relies on.
fn read_container(path: &Path) -> Result<Interleaved, String> {
    let mut head = [0u8; 12];
    let got = read_head(path, &mut head)?;
    let head = &head[..got];
    if head.is_empty() {
        return Err("empty file".into());
    }
    let found = Container::sniff(head);
    let named = Container::from_extension(path);
    let raw = match (named, found) {
        (Some(Container::Wav), Some(Container::Wav)) | (None, Some(Container::Wav)) => {
            wav::read(path)?
        }
        (Some(Container::Au), Some(Container::Au)) | (None, Some(Container::Au)) => au::read(path)?,
        (Some(Container::Wav), other) => {
            return Err(format!(
                "not a WAV file: no RIFF tag ({})",
                describe(head, other)
            ))
        }
        (Some(Container::Au), other) => {
            return Err(format!(
                "not a Sun .au file: no .snd magic ({})",
                describe(head, other)
            ))
        }
        (None, None) => {
            return Err(format!(
                "unrecognised audio format (starts with {})",
                hex_prefix(head)
            ))
        }
    };
    check_format(raw.rate, u32::from(raw.channels))?;
    if raw.samples.is_empty() {
        return Err("no audio samples".into());
    }
    if let Some(i) = raw.samples.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "non-finite sample at frame {} (channel {})",
            i / usize::from(raw.channels),
            i % usize::from(raw.channels)
        ));
    }
    Ok(raw)
}

fn read_head(path: &Path, head: &mut [u8]) -> Result<usize, String> {
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut got = 0;
    while got < head.len() {
        match file.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(got)
}

/// What a misnamed file looks like instead, for the error text.
fn describe(head: &[u8], found: Option<Container>) -> String {
    match found {
        Some(Container::Wav) => "content is a RIFF/WAV file".into(),
        Some(Container::Au) => "content is a Sun .au file".into(),
        None => format!("starts with {}", hex_prefix(head)),
    }
}

fn hex_prefix(head: &[u8]) -> String {
    let hex: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
    hex.join(" ")
}

/// Mean of the channels of each frame, summed in channel order (librosa `to_mono` averages in f32).
fn downmix(interleaved: Vec<f32>, channels: u16) -> Result<Vec<f32>, String> {
    let n = usize::from(channels);
    if n == 0 {
        return Err("0 channels".into());
    }
    if !interleaved.len().is_multiple_of(n) {
        return Err(format!(
            "{} samples is not a whole number of {n}-channel frames",
            interleaved.len()
        ));
    }
    if n == 1 {
        return Ok(interleaved);
    }
    let scale = n as f32;
    Ok(interleaved
        .chunks_exact(n)
        .map(|frame| frame.iter().fold(0.0f32, |acc, v| acc + v) / scale)
        .collect())
}

/// blake3 of the samples as little-endian f32: the identity of a track's audio, whatever its container.
pub fn audio_digest(samples: &[f32]) -> String {
    let mut hasher = blake3::Hasher::new();
    let mut bytes = Vec::with_capacity(4096 * 4);
    for chunk in samples.chunks(4096) {
        bytes.clear();
        bytes.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
        hasher.update(&bytes);
    }
    hasher.finalize().to_hex().to_string()
}
