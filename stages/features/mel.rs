//! The log-mel front end, reproducing `librosa.feature.melspectrogram` followed by `librosa.power_to_db`
//! (librosa 0.11) for one segment of mono audio, without the engine.
//!
//! Recipe (see the reference notes, §1): periodic Hann window of `n_fft`; with `center`, `n_fft / 2` samples of
//! padding each side (zeros, or numpy-style `reflect`); frame `t` starts at `t * hop` of the padded signal;
//! real FFT; power `|X|^power`; Slaney-scale triangular filters with Slaney area normalisation; then
//! `10 log10(max(amin, S)) - 10 log10(max(amin, ref))`, clipped at `max - top_db`.
//!
//! Precision follows librosa where it matters and is better where it cannot hurt: the window and FFT are f64
//! (as librosa's), the filter bank is stored as f32 with librosa's double rounding, the mel sums accumulate in
//! f64 in fixed bin order, and the dB step runs in f32 as librosa's does. The result agrees with librosa to
//! well under 1e-3 dB per cell.
//!
//! Invariants: every output depends only on the segment's samples and the params (no shared mutable state,
//! no reductions whose order depends on anything else), so segments may be computed on any thread.

use std::borrow::Cow;
use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};

use super::{PadMode, Params, Reference};
use genrelab_contract::StageParams;

/// Why a mel front end could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum MelError {
    #[error("invalid feature params: {0}")]
    Params(String),
    #[error("segment of {len} samples: {reason}")]
    Segment { len: usize, reason: String },
    #[error("FFT failed: {0}")]
    Fft(String),
}

/// Slaney's mel scale (librosa `hz_to_mel(htk=False)`): linear below 1 kHz, logarithmic above.
pub fn hz_to_mel(hz: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if hz >= min_log_hz {
        min_log_mel + (hz / min_log_hz).ln() / logstep
    } else {
        hz / f_sp
    }
}

/// Inverse of [`hz_to_mel`] (librosa `mel_to_hz(htk=False)`).
pub fn mel_to_hz(mel: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if mel >= min_log_mel {
        min_log_hz * (logstep * (mel - min_log_mel)).exp()
    } else {
        f_sp * mel
    }
}

/// `n` frequencies evenly spaced on the mel scale from `fmin` to `fmax` inclusive (librosa
/// `mel_frequencies`), with numpy `linspace` rounding: `start + i * step`, the last point set to the end.
pub fn mel_frequencies(n: usize, fmin: f64, fmax: f64) -> Vec<f64> {
    let (lo, hi) = (hz_to_mel(fmin), hz_to_mel(fmax));
    let step = if n > 1 {
        (hi - lo) / (n - 1) as f64
    } else {
        0.0
    };
    (0..n)
        .map(|i| {
            if n > 1 && i == n - 1 {
                hi
            } else {
                i as f64 * step + lo
            }
        })
        .map(mel_to_hz)
        .collect()
}

/// Periodic Hann window of length `n` (scipy `get_window('hann', n, fftbins=True)`).
pub fn hann_periodic(n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos())
        .collect()
}

/// One row of the mel filter bank: its nonzero weights, starting at FFT bin `first_bin`.
#[derive(Debug, Clone, PartialEq)]
pub struct MelFilter {
    pub first_bin: usize,
    pub weights: Vec<f32>,
}

impl MelFilter {
    /// Last nonzero bin (inclusive).
    pub fn last_bin(&self) -> usize {
        self.first_bin + self.weights.len().saturating_sub(1)
    }
}

/// librosa `filters.mel(norm='slaney', htk=False, dtype=float32)`, kept sparse. Each triangle is computed in
/// f64, rounded to f32, scaled by the f64 area factor and rounded again, exactly as librosa's in-place
/// float32 array operations do. Returns an error if a row is empty (librosa only warns).
pub fn mel_filter_bank(
    sample_rate: u32,
    n_fft: usize,
    n_mels: usize,
    fmin: f64,
    fmax: f64,
) -> Result<Vec<MelFilter>, MelError> {
    let n_bins = n_fft / 2 + 1;
    // numpy rfftfreq: k * (1 / (n * d)) with d = 1 / sr.
    let bin_hz = 1.0 / (n_fft as f64 * (1.0 / f64::from(sample_rate)));
    let fftfreqs: Vec<f64> = (0..n_bins).map(|k| k as f64 * bin_hz).collect();
    let mel_f = mel_frequencies(n_mels + 2, fmin, fmax);
    let mut filters = Vec::with_capacity(n_mels);
    for i in 0..n_mels {
        let fdiff_lo = mel_f[i + 1] - mel_f[i];
        let fdiff_hi = mel_f[i + 2] - mel_f[i + 1];
        let enorm = 2.0 / (mel_f[i + 2] - mel_f[i]);
        let row: Vec<f32> = fftfreqs
            .iter()
            .map(|&f| {
                let lower = (f - mel_f[i]) / fdiff_lo;
                let upper = (mel_f[i + 2] - f) / fdiff_hi;
                let tri = 0f64.max(lower.min(upper)) as f32;
                (f64::from(tri) * enorm) as f32
            })
            .collect();
        // A triangle's support is contiguous, so the first to last nonzero bin holds all of it.
        let Some(first) = row.iter().position(|&w| w != 0.0) else {
            return Err(MelError::Params(format!(
                "mel filter {i} of {n_mels} covers no FFT bin (too many mel bands for n_fft {n_fft} \
                 between {fmin} and {fmax} Hz)"
            )));
        };
        let last = row.iter().rposition(|&w| w != 0.0).unwrap_or(first);
        filters.push(MelFilter {
            first_bin: first,
            weights: row[first..=last].to_vec(),
        });
    }
    Ok(filters)
}

/// A ready-to-run log-mel extractor: window, sparse filter bank and FFT plan, built once and shared by
/// every worker thread (`&self` methods only).
pub struct MelExtractor {
    n_fft: usize,
    hop: usize,
    center: bool,
    pad_mode: PadMode,
    power: f64,
    reference: Reference,
    amin: f64,
    top_db: Option<f64>,
    window: Vec<f64>,
    filters: Vec<MelFilter>,
    /// The filters' f32 weights widened to f64 once, back to back, so the per-frame sums need no conversion.
    bank: Vec<f64>,
    /// Per filter: (first bin, offset into `bank`, length).
    spans: Vec<(usize, usize, usize)>,
    fft: Arc<dyn RealToComplex<f64>>,
}

impl std::fmt::Debug for MelExtractor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MelExtractor")
            .field("n_fft", &self.n_fft)
            .field("hop", &self.hop)
            .field("n_mels", &self.filters.len())
            .finish_non_exhaustive()
    }
}

impl MelExtractor {
    pub fn new(params: &Params, sample_rate: u32) -> Result<Self, MelError> {
        let bad = |m: String| Err(MelError::Params(m));
        // The checks the params alone decide are the planner's; only the sample rate's are added here.
        let problems = params.validate();
        if !problems.is_empty() {
            let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
            return bad(all.join("; "));
        }
        let nyquist = f64::from(sample_rate) / 2.0;
        let fmax = params.fmax.unwrap_or(nyquist);
        if sample_rate == 0 {
            return bad("sample rate is 0".into());
        }
        if !(fmax.is_finite() && fmax > params.fmin && fmax <= nyquist) {
            return bad(format!(
                "fmax must lie in (fmin, sample_rate / 2] = ({}, {nyquist}], got {fmax}",
                params.fmin
            ));
        }
        let filters = mel_filter_bank(sample_rate, params.n_fft, params.n_mels, params.fmin, fmax)?;
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(params.n_fft);
        let mut bank = Vec::new();
        let mut spans = Vec::with_capacity(filters.len());
        for filter in &filters {
            spans.push((filter.first_bin, bank.len(), filter.weights.len()));
            bank.extend(filter.weights.iter().map(|&w| f64::from(w)));
        }
        Ok(MelExtractor {
            n_fft: params.n_fft,
            hop: params.hop_length,
            center: params.center,
            pad_mode: params.pad_mode,
            power: params.power,
            reference: params.reference,
            amin: params.amin,
            top_db: params.top_db,
            window: hann_periodic(params.n_fft),
            filters,
            bank,
            spans,
            fft,
        })
    }

    pub fn n_mels(&self) -> usize {
        self.filters.len()
    }

    /// FFT bins per frame, `n_fft / 2 + 1`.
    pub fn n_bins(&self) -> usize {
        self.n_fft / 2 + 1
    }

    pub fn window(&self) -> &[f64] {
        &self.window
    }

    pub fn filters(&self) -> &[MelFilter] {
        &self.filters
    }

    /// Frames for a segment of `len` samples: `1 + len / hop` when centred (even `n_fft`), else
    /// `1 + (len - n_fft) / hop`; an error when the segment is too short to frame.
    pub fn frames(&self, len: usize) -> Result<usize, MelError> {
        let padded = if self.center {
            len.checked_add(2 * (self.n_fft / 2))
                .ok_or_else(|| MelError::Segment {
                    len,
                    reason: "too long: centring pads it past the largest addressable length".into(),
                })?
        } else {
            len
        };
        if len == 0 {
            return Err(MelError::Segment {
                len,
                reason: "empty segment".into(),
            });
        }
        if padded < self.n_fft {
            return Err(MelError::Segment {
                len,
                reason: format!("shorter than n_fft ({}) and not centred", self.n_fft),
            });
        }
        Ok(1 + (padded - self.n_fft) / self.hop)
    }

    /// Number of f32 values [`Self::log_mel`] writes for a segment of `len` samples.
    pub fn output_len(&self, len: usize) -> Result<usize, MelError> {
        Ok(self.n_mels() * self.frames(len)?)
    }

    /// The signal the frames are cut from: the segment itself, or padded by `n_fft / 2` each side.
    fn padded<'a>(&self, segment: &'a [f32]) -> Result<Cow<'a, [f32]>, MelError> {
        if !self.center {
            return Ok(Cow::Borrowed(segment));
        }
        let pad = self.n_fft / 2;
        let len = segment.len();
        let mut out = Vec::with_capacity(len + 2 * pad);
        match self.pad_mode {
            PadMode::Constant => {
                out.resize(pad, 0.0);
                out.extend_from_slice(segment);
                out.resize(len + 2 * pad, 0.0);
            }
            PadMode::Reflect => {
                // numpy 'reflect' mirrors about the edge sample without repeating it.
                if len <= pad {
                    return Err(MelError::Segment {
                        len,
                        reason: format!(
                            "reflect padding needs more than n_fft / 2 = {pad} samples"
                        ),
                    });
                }
                out.extend((1..=pad).rev().map(|i| segment[i]));
                out.extend_from_slice(segment);
                out.extend((0..pad).map(|j| segment[len - 2 - j]));
            }
        }
        Ok(Cow::Owned(out))
    }

    /// Calls `visit(t, power)` for each frame in order, `power` holding `n_bins` values of `|X_t[k]|^power`.
    fn for_each_frame(
        &self,
        segment: &[f32],
        mut visit: impl FnMut(usize, &[f64]),
    ) -> Result<usize, MelError> {
        let frames = self.frames(segment.len())?;
        let padded = self.padded(segment)?;
        let mut input = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = vec![0f64; self.n_bins()];
        for t in 0..frames {
            let frame = &padded[t * self.hop..t * self.hop + self.n_fft];
            for ((dst, &x), &w) in input.iter_mut().zip(frame).zip(&self.window) {
                *dst = f64::from(x) * w;
            }
            self.fft
                .process_with_scratch(&mut input, &mut spectrum, &mut scratch)
                .map_err(|e| MelError::Fft(e.to_string()))?;
            if self.power == 2.0 {
                for (p, c) in power.iter_mut().zip(&spectrum) {
                    *p = c.re * c.re + c.im * c.im;
                }
            } else {
                for (p, c) in power.iter_mut().zip(&spectrum) {
                    *p = Complex::norm(*c).powf(self.power);
                }
            }
            visit(t, &power);
        }
        Ok(frames)
    }

    /// The power spectrogram `|STFT|^power`, layout bin x frame, row-major (`n_bins` rows).
    pub fn power_spectrogram(&self, segment: &[f32]) -> Result<Vec<f64>, MelError> {
        let frames = self.frames(segment.len())?;
        let mut out = vec![0f64; self.n_bins() * frames];
        self.for_each_frame(segment, |t, power| {
            for (k, &p) in power.iter().enumerate() {
                out[k * frames + t] = p;
            }
        })?;
        Ok(out)
    }

    /// Mel power (before dB), layout mel x frame, row-major.
    pub fn mel_power(&self, segment: &[f32]) -> Result<Vec<f64>, MelError> {
        let frames = self.frames(segment.len())?;
        let mut out = vec![0f64; self.n_mels() * frames];
        self.for_each_frame(segment, |t, power| {
            for (m, &span) in self.spans.iter().enumerate() {
                out[m * frames + t] = self.apply_filter(span, power);
            }
        })?;
        Ok(out)
    }

    /// The log-mel spectrogram in dB of one segment, written to `out` in layout **mel x frame, row-major,
    /// f32** (`out[m * frames + t]`); `out.len()` must be [`Self::output_len`]`(segment.len())`.
    pub fn log_mel(&self, segment: &[f32], out: &mut [f32]) -> Result<(), MelError> {
        let frames = self.frames(segment.len())?;
        let expected = self.n_mels() * frames;
        if out.len() != expected {
            return Err(MelError::Segment {
                len: segment.len(),
                reason: format!(
                    "output buffer holds {} values, expected {expected}",
                    out.len()
                ),
            });
        }
        self.for_each_frame(segment, |t, power| {
            for (m, &span) in self.spans.iter().enumerate() {
                // librosa's mel spectrogram is float32.
                out[m * frames + t] = self.apply_filter(span, power) as f32;
            }
        })?;
        self.power_to_db(out);
        Ok(())
    }

    /// One mel band of one frame: the filter's weights against its bins, summed in bin order.
    fn apply_filter(&self, (first_bin, offset, len): (usize, usize, usize), power: &[f64]) -> f64 {
        self.bank[offset..offset + len]
            .iter()
            .zip(&power[first_bin..first_bin + len])
            .map(|(&w, &p)| w * p)
            .sum()
    }

    /// librosa `power_to_db` in place over one segment's mel power, in librosa's float32 arithmetic.
    fn power_to_db(&self, values: &mut [f32]) {
        let amin = self.amin as f32;
        let max_power = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for v in values.iter_mut() {
            *v = 10.0 * v.max(amin).log10();
        }
        match self.reference {
            Reference::Max => {
                let ref_db = 10.0 * max_power.max(amin).log10();
                for v in values.iter_mut() {
                    *v -= ref_db;
                }
            }
            Reference::Value(r) => {
                // librosa subtracts a float64 scalar here, so the difference is taken in f64.
                let ref_db = 10.0 * r.abs().max(self.amin).log10();
                if ref_db != 0.0 {
                    for v in values.iter_mut() {
                        *v = (f64::from(*v) - ref_db) as f32;
                    }
                }
            }
        }
        if let Some(top_db) = self.top_db {
            let max_db = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let floor = max_db - top_db as f32;
            for v in values.iter_mut() {
                *v = v.max(floor);
            }
        }
    }
}
