//! RIFF/WAVE through hound: PCM 8/16/24/32-bit integer, 32-bit float, and WAVE_FORMAT_EXTENSIBLE of those.
//!
//! hound trusts the data chunk's declared length when it opens a file and only fails when the sample iterator
//! runs past the end of a short file, so every sample is read here before the file counts as decoded.

use std::path::Path;

use super::Interleaved;

pub(super) fn read(path: &Path) -> Result<Interleaved, String> {
    // One read of the whole file (a GTZAN track is 1.3 MB), then hound parses the header from memory.
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let file_len = bytes.len() as u64;
    let reader = hound::WavReader::new(std::io::Cursor::new(bytes.as_slice()))
        .map_err(|e| open_error(&e))?;
    let spec = reader.spec();
    super::check_format(spec.sample_rate, u32::from(spec.channels))?;
    let declared = u64::from(reader.len());
    let packed_16_bit = block_align(&bytes) == Some(2 * spec.channels);
    if spec.sample_format == hound::SampleFormat::Int && spec.bits_per_sample == 16 && packed_16_bit
    {
        // The common case (every GTZAN file): hound leaves the reader at the first data byte, and reading
        // the samples in bulk is about 20x faster than hound's sample-by-sample iterator.
        let start = usize::try_from(reader.into_inner().position()).unwrap_or(usize::MAX);
        let data = bytes.get(start..).unwrap_or(&[]);
        let available = (data.len() / 2) as u64;
        if available < declared {
            return Err(format!(
                "truncated WAV: data chunk declares {declared} samples, file ends after {available}"
            ));
        }
        let samples = data[..declared as usize * 2]
            .chunks_exact(2)
            .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) / 32768.0)
            .collect();
        return Ok(Interleaved {
            samples,
            rate: spec.sample_rate,
            channels: spec.channels,
        });
    }
    // The header's sample count is not trusted for allocation: a corrupt header could claim 4 G samples.
    let bytes_per_sample = u64::from(spec.bits_per_sample.div_ceil(8).max(1));
    let capacity = declared.min(file_len / bytes_per_sample);
    let mut samples = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
    match spec.sample_format {
        hound::SampleFormat::Float => {
            for (i, s) in reader.into_samples::<f32>().enumerate() {
                samples.push(s.map_err(|e| sample_error(&e, i, declared))?);
            }
        }
        hound::SampleFormat::Int => {
            // libsndfile's int -> float scale: full scale is 2^(bits-1), so -2^(bits-1) maps to exactly -1.
            // hound returns 8-bit (unsigned on disk) already re-centred to signed.
            let bits = i32::from(spec.bits_per_sample);
            if !(1..=32).contains(&bits) {
                return Err(format!("unsupported WAV bit depth {bits}"));
            }
            let scale = 1.0f64 / f64::from(2u32.pow((bits - 1) as u32));
            for (i, s) in reader.into_samples::<i32>().enumerate() {
                let v = s.map_err(|e| sample_error(&e, i, declared))?;
                // v * 2^-(bits-1) is exact in f64; the single rounding to f32 matches libsndfile's.
                samples.push((f64::from(v) * scale) as f32);
            }
        }
    }
    Ok(Interleaved {
        samples,
        rate: spec.sample_rate,
        channels: spec.channels,
    })
}

/// The `fmt ` chunk's block align (bytes per frame), read from a header hound has already validated. Tells a
/// packed 16-bit file from 16 valid bits in a wider container (WAVE_FORMAT_EXTENSIBLE), which hound's public
/// spec does not.
fn block_align(bytes: &[u8]) -> Option<u16> {
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let size = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().ok()?) as usize;
        if id == b"fmt " {
            let field = bytes.get(at + 20..at + 22)?;
            return Some(u16::from_le_bytes([field[0], field[1]]));
        }
        at = at.checked_add(8 + size + size % 2)?;
    }
    None
}

fn open_error(e: &hound::Error) -> String {
    match e {
        hound::Error::IoError(io) if is_short_read(io) => "truncated WAV header".into(),
        hound::Error::IoError(io) => io.to_string(),
        hound::Error::FormatError(reason) => format!("malformed WAV: {reason}"),
        hound::Error::Unsupported => {
            "unsupported WAV encoding (readable: PCM 8/16/24/32-bit integer, 32-bit float)".into()
        }
        other => format!("cannot read WAV: {other}"),
    }
}

fn sample_error(e: &hound::Error, index: usize, declared: u64) -> String {
    match e {
        hound::Error::IoError(io) if is_short_read(io) => format!(
            "truncated WAV: data chunk declares {declared} samples, file ends after {index}"
        ),
        hound::Error::Unsupported | hound::Error::TooWide => {
            format!("unsupported WAV sample layout: {}", e)
        }
        other => format!("WAV sample {index}: {other}"),
    }
}

/// hound reports running out of bytes as `ErrorKind::Other` with this text, or as `UnexpectedEof` from std.
fn is_short_read(io: &std::io::Error) -> bool {
    io.kind() == std::io::ErrorKind::UnexpectedEof
        || io.to_string() == "Failed to read enough bytes."
}
