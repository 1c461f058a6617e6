//! RIFF/WAVE through hound: PCM 8/16/24/32-bit integer, 32-bit float, and WAVE_FORMAT_EXTENSIBLE of those.
//!
//! hound trusts the data chunk's declared length when it opens a file and only fails when the sample iterator
//! runs past the end of a short file, so every sample is read here before the file counts as decoded.
//!
//! Warnings, not failures (every sample the header promises is in the file, so the audio is known):
//! - the RIFF size field disagrees with the file's length (streaming writers leave it 0 or 0xFFFFFFFF; some
//!   tools append bytes after the RIFF chunk), since decoding never relies on it;
//! - a data chunk whose length ends part way into a frame: the whole frames before it are the audio, and the
//!   partial frame is dropped (hound alone refuses such a file).
//!
//! Failures (quarantine): a data chunk declaring more bytes than the file holds, i.e. a truncated file, since
//! which of its samples are real cannot be told; and everything hound rejects.

use std::path::Path;

use super::Interleaved;

pub(super) fn read(path: &Path) -> Result<Interleaved, String> {
    // One read of the whole file (a GTZAN track is 1.3 MB), then hound parses the header from memory.
    let mut bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let file_len = bytes.len() as u64;
    let warnings = header_warnings(&mut bytes);
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
            warnings,
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
        warnings,
    })
}

/// The header oddities that are warnings (see the module doc), in file order. A data chunk ending in a partial
/// frame is cut back to whole frames in `bytes` (memory only), so hound reads the frames before it.
fn header_warnings(bytes: &mut [u8]) -> Vec<String> {
    let mut warnings = Vec::new();
    let file_len = bytes.len() as u64;
    if let Some(field) = bytes.get(4..8) {
        let declared = u64::from(u32::from_le_bytes([field[0], field[1], field[2], field[3]])) + 8;
        if declared > file_len {
            warnings.push(format!(
                "RIFF size field declares {declared} bytes, the file has {file_len}"
            ));
        } else if declared < file_len {
            warnings.push(format!(
                "{} bytes after the RIFF chunk ignored (its size field declares {declared} bytes, the file \
                 has {file_len})",
                file_len - declared
            ));
        }
    }
    let Some(align) = block_align(bytes).filter(|a| *a > 0).map(u64::from) else {
        return warnings; // hound reports the missing or broken `fmt ` chunk
    };
    let Some((size_at, start, size)) = data_chunk(bytes) else {
        return warnings;
    };
    // A chunk running past the end of the file is a truncated file, left for the sample reader to report.
    let partial = size % align;
    if partial != 0 && start + size <= file_len {
        let whole = size - partial;
        if let (Ok(whole32), Some(field)) =
            (u32::try_from(whole), bytes.get_mut(size_at..size_at + 4))
        {
            field.copy_from_slice(&whole32.to_le_bytes());
            let unit = if partial == 1 { "byte" } else { "bytes" };
            warnings.push(format!(
                "data chunk of {size} bytes ends {partial} {unit} into a {align}-byte frame; the partial \
                 frame is ignored"
            ));
        }
    }
    warnings
}

/// The `data` chunk: where its size field is, where its bytes start, and its declared size.
fn data_chunk(bytes: &[u8]) -> Option<(usize, u64, u64)> {
    let mut at = 12usize;
    while at.checked_add(8)? <= bytes.len() {
        let size = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().ok()?) as usize;
        if &bytes[at..at + 4] == b"data" {
            return Some((at + 4, (at + 8) as u64, size as u64));
        }
        at = at
            .checked_add(8)?
            .checked_add(size)?
            .checked_add(size % 2)?;
    }
    None
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
