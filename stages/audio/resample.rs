//! Whole-signal sample-rate conversion with rubato's synchronous FFT resampler (exact rational ratio).
//!
//! Invariants:
//! - Output length is `round(len * target / source)`, the first output sample is aligned with the first input
//!   sample: the resampler's fixed delay is trimmed from the front and the tail is flushed with zeros.
//! - The computation is sequential over fixed-size chunks in f64: the same input gives the same bits.
//! - This is not librosa's `soxr_hq`; values of resampled tracks differ from librosa's in the last digits,
//!   while frequency content and alignment agree. GTZAN is already at 22050 Hz and is never resampled.

use rubato::{FftFixedInOut, Resampler};

/// Input frames per FFT block, at least. The block length is also the anti-aliasing filter's length, so a
/// longer block gives a sharper cutoff; 1024 keeps the transition band well under 1 % of Nyquist.
const MIN_CHUNK: usize = 1024;

/// Refuse rate pairs whose exact ratio needs absurdly long FFT blocks (both rates coprime and huge).
const MAX_CHUNK: usize = 1 << 22;

pub(super) fn resample(mono: &[f32], source: u32, target: u32) -> Result<Vec<f32>, String> {
    let (src, dst) = (source as usize, target as usize);
    let g = gcd(src, dst);
    let (min_in, min_out) = (src / g, dst / g);
    // An even number of ratio periods per block makes both block lengths even, so the resampler's delay
    // (half a block) is a whole number of samples on both sides and alignment is exact.
    let periods = MIN_CHUNK.div_ceil(min_in).next_multiple_of(2);
    let chunk_in = periods * min_in;
    let chunk_out = periods * min_out;
    if chunk_in > MAX_CHUNK || chunk_out > MAX_CHUNK {
        return Err(format!(
            "cannot resample {source} Hz to {target} Hz: the exact ratio needs blocks of {chunk_in} samples"
        ));
    }
    let mut resampler = FftFixedInOut::<f64>::new(src, dst, chunk_in, 1)
        .map_err(|e| format!("cannot resample {source} Hz to {target} Hz: {e}"))?;
    if resampler.input_frames_next() != chunk_in || resampler.output_frames_next() != chunk_out {
        return Err(format!(
            "cannot resample {source} Hz to {target} Hz: unexpected block sizes {} -> {}",
            resampler.input_frames_next(),
            resampler.output_frames_next()
        ));
    }
    let delay = resampler.output_delay();
    let wanted = output_len(mono.len(), source, target)?;

    let mut out = Vec::with_capacity(wanted);
    let mut block_in = vec![0.0f64; chunk_in];
    let mut block_out = vec![0.0f64; chunk_out];
    let mut produced = 0usize;
    let mut pos = 0usize;
    while out.len() < wanted {
        let take = mono.len().saturating_sub(pos).min(chunk_in);
        for (dst, src) in block_in.iter_mut().zip(&mono[pos..pos + take]) {
            *dst = f64::from(*src);
        }
        block_in[take..].fill(0.0);
        pos += take;
        resampler
            .process_into_buffer(&[&block_in], &mut [&mut block_out], None)
            .map_err(|e| format!("resampling {source} Hz to {target} Hz: {e}"))?;
        for (i, v) in block_out.iter().enumerate() {
            let j = produced + i;
            if j >= delay && out.len() < wanted {
                out.push(*v as f32);
            }
        }
        produced += chunk_out;
    }
    Ok(out)
}

/// `round(len * target / source)`, half up, in exact integer arithmetic.
pub(super) fn output_len(len: usize, source: u32, target: u32) -> Result<usize, String> {
    let num = (len as u128) * u128::from(target) * 2 + u128::from(source);
    let n = num / (2 * u128::from(source));
    usize::try_from(n).map_err(|_| format!("{len} samples at {source} Hz is too long to resample"))
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}
