//! Sound sources and effects for the synthetic corpus: band-limited wavetable notes, drum voices, filters,
//! distortion, reverb. Everything renders additively into `&mut [f32]` buffers at [`SR`].
//!
//! Invariant: output depends only on the arguments and the RNG passed in (no global mutable state), and every
//! loop runs in a fixed order, so a track renders to the same bits on any thread.

use std::f32::consts::TAU;
use std::sync::OnceLock;

use rand::Rng;
use rand_chacha::ChaCha20Rng;

/// Sample rate of the corpus (GTZAN's).
pub const SR: f32 = 22050.0;
const TABLE: usize = 2048;
/// Highest partial a wavetable may hold, kept under Nyquist (11025 Hz) so notes do not alias.
const MAX_PARTIAL_HZ: f32 = 10500.0;
/// Octave bands of a wavetable: band `b` serves fundamentals below `BASE_HZ * 2^(b+1)`.
const BANDS: usize = 10;
const BASE_HZ: f32 = 27.5;

fn sine_table() -> &'static [f32] {
    static SINE: OnceLock<Vec<f32>> = OnceLock::new();
    SINE.get_or_init(|| {
        (0..=TABLE)
            .map(|n| (TAU * n as f32 / TABLE as f32).sin())
            .collect()
    })
}

/// sin(2π·phase) for phase in [0, 1), by table lookup with linear interpolation.
#[inline]
pub fn sine(phase: f32) -> f32 {
    lookup(sine_table(), phase)
}

#[inline]
fn lookup(table: &[f32], phase: f32) -> f32 {
    let x = phase * TABLE as f32;
    let i = (x as usize).min(TABLE - 1);
    let frac = x - i as f32;
    table[i] + (table[i + 1] - table[i]) * frac
}

/// A periodic waveform given by its partial amplitudes, with one table per octave band so that every note
/// keeps its partials below Nyquist.
pub struct Wave {
    bands: Vec<Vec<f32>>,
}

impl Wave {
    /// `amps[k]` is the amplitude of partial `k + 1`.
    pub fn new(amps: &[f32]) -> Wave {
        let sine = sine_table();
        let bands = (0..BANDS)
            .map(|b| {
                let top = BASE_HZ * 2f32.powi(b as i32 + 1);
                let n_partials = ((MAX_PARTIAL_HZ / top) as usize).clamp(1, amps.len().max(1));
                let mut table = vec![0.0f32; TABLE + 1];
                for (k, &a) in amps.iter().take(n_partials).enumerate() {
                    if a == 0.0 {
                        continue;
                    }
                    for (n, v) in table.iter_mut().take(TABLE).enumerate() {
                        *v += a * sine[((k + 1) * n) % TABLE];
                    }
                }
                let peak = table.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
                for v in &mut table {
                    *v /= peak;
                }
                table[TABLE] = table[0];
                table
            })
            .collect();
        Wave { bands }
    }

    /// Partials `1/k^tilt` (tilt 1 = sawtooth), optionally odd partials only (square, clarinet).
    pub fn rolloff(n: usize, tilt: f32, odd_only: bool) -> Wave {
        let amps: Vec<f32> = (1..=n)
            .map(|k| {
                if odd_only && k % 2 == 0 {
                    0.0
                } else {
                    (k as f32).powf(-tilt)
                }
            })
            .collect();
        Wave::new(&amps)
    }

    fn band(&self, freq: f32) -> &[f32] {
        let b = (freq / BASE_HZ).max(1.0).log2() as usize;
        &self.bands[b.min(BANDS - 1)]
    }
}

/// Amplitude envelope: linear attack, exponential decay towards `sustain`, exponential release after the
/// note's duration.
#[derive(Debug, Clone, Copy)]
pub struct Env {
    pub attack: f32,
    pub decay: f32,
    pub sustain: f32,
    pub release: f32,
}

impl Env {
    pub const fn new(attack: f32, decay: f32, sustain: f32, release: f32) -> Env {
        Env {
            attack,
            decay,
            sustain,
            release,
        }
    }
}

/// One pitched note.
#[derive(Debug, Clone, Copy)]
pub struct Note {
    /// Start, in seconds from the track's start (may be negative: a note already sounding).
    pub start: f32,
    pub dur: f32,
    pub freq: f32,
    pub amp: f32,
    /// Vibrato rate (Hz) and depth (fraction of the frequency).
    pub vibrato: (f32, f32),
    /// Slide from this frequency into `freq` (guitar bends, 808 glides), time constant 40 ms.
    pub glide_from: Option<f32>,
}

pub fn midi_hz(m: f32) -> f32 {
    440.0 * 2f32.powf((m - 69.0) / 12.0)
}

/// Renders `note` into `buf` with `wave` and `env`.
pub fn note(buf: &mut [f32], wave: &Wave, env: &Env, note: &Note) {
    let start = (note.start * SR).round() as i64;
    let on = (note.dur * SR) as i64;
    let total = on + (env.release * SR) as i64;
    let table = wave.band(note.freq * 1.06);
    let attack = (env.attack * SR).max(1.0);
    let dec = (-1.0 / (env.decay.max(1e-3) * SR)).exp();
    // Release to about -60 dB over `release`.
    let rel = (-7.0 / (env.release.max(1e-3) * SR)).exp();
    let (vib_rate, vib_depth) = note.vibrato;
    let mut phase = 0.0f32;
    let mut vib_phase = 0.0f32;
    let mut decaying = 1.0f32;
    let mut released = 1.0f32;
    let mut glide = note.glide_from.map_or(1.0, |f| f / note.freq);
    let glide_step = (-1.0 / (0.04 * SR)).exp();
    let mut inc = note.freq / SR;
    let n = buf.len() as i64;
    let first = start.max(0);
    for i in start..(start + total).min(n) {
        let t = (i - start) as f32;
        // Pitch modulation changes slowly: update it every 32 samples.
        if (i - start) % 32 == 0 {
            let vib = if vib_depth > 0.0 {
                1.0 + vib_depth * sine(vib_phase)
            } else {
                1.0
            };
            inc = note.freq * glide * vib / SR;
        }
        vib_phase += vib_rate / SR;
        if vib_phase >= 1.0 {
            vib_phase -= 1.0;
        }
        glide = 1.0 + (glide - 1.0) * glide_step;
        let level = if t < attack {
            t / attack
        } else {
            decaying *= dec;
            env.sustain + (1.0 - env.sustain) * decaying
        };
        if i - start >= on {
            released *= rel;
        }
        if i >= first {
            buf[i as usize] += note.amp * level * released * lookup(table, phase);
        }
        phase += inc;
        while phase >= 1.0 {
            phase -= 1.0;
        }
    }
}

#[inline]
fn noise(rng: &mut ChaCha20Rng) -> f32 {
    rng.random::<f32>() * 2.0 - 1.0
}

/// Decays are cut after this many time constants (about -39 dB).
const TAIL: f32 = 4.5;

fn span(buf: &[f32], at: f32, seconds: f32) -> (usize, usize) {
    let start = ((at * SR).round().max(0.0) as usize).min(buf.len());
    let end = (start + (seconds * SR) as usize).min(buf.len());
    (start, end)
}

/// Bass drum: a sine swept down from ~4x to `tune` Hz, with a click. Long `decay` gives an 808.
pub fn kick(buf: &mut [f32], at: f32, amp: f32, tune: f32, decay: f32) {
    let (s, e) = span(buf, at, decay * TAIL);
    let mut phase = 0.0f32;
    let sweep = (-1.0 / (0.025 * SR)).exp();
    let fall = (-1.0 / (decay * SR)).exp();
    let mut bend = 3.0f32;
    let mut level = amp;
    for v in &mut buf[s..e] {
        *v += level * sine(phase);
        phase += tune * (1.0 + bend) / SR;
        phase -= phase.floor();
        bend *= sweep;
        level *= fall;
    }
}

/// A noise burst through a one-pole high-pass at `hp_hz`, decaying with time constant `decay`: hi-hats,
/// cymbals, snare wires, shakers.
pub fn noise_hit(
    buf: &mut [f32],
    rng: &mut ChaCha20Rng,
    at: f32,
    amp: f32,
    hp_hz: f32,
    decay: f32,
) {
    let (s, e) = span(buf, at, decay * TAIL);
    let a = (-TAU * hp_hz / SR).exp();
    let fall = (-1.0 / (decay * SR)).exp();
    let mut low = 0.0f32;
    let mut level = amp;
    for v in &mut buf[s..e] {
        let x = noise(rng);
        low = a * low + (1.0 - a) * x;
        *v += level * (x - low);
        level *= fall;
    }
}

/// A damped sine (snare body, rim click, toms, cowbell partials).
pub fn tone_hit(buf: &mut [f32], at: f32, amp: f32, freq: f32, decay: f32) {
    let (s, e) = span(buf, at, decay * TAIL);
    let fall = (-1.0 / (decay * SR)).exp();
    let mut level = amp;
    let mut phase = 0.0f32;
    for v in &mut buf[s..e] {
        *v += level * sine(phase);
        phase += freq / SR;
        phase -= phase.floor();
        level *= fall;
    }
}

/// Snare: tuned body plus bright noise.
pub fn snare(buf: &mut [f32], rng: &mut ChaCha20Rng, at: f32, amp: f32, tune: f32, snap: f32) {
    tone_hit(buf, at, amp * 0.6, tune, 0.05);
    noise_hit(buf, rng, at, amp * snap, 1500.0, 0.09);
}

/// Hand clap: three quick bursts then a tail.
pub fn clap(buf: &mut [f32], rng: &mut ChaCha20Rng, at: f32, amp: f32) {
    for k in 0..3 {
        noise_hit(buf, rng, at + k as f32 * 0.011, amp * 0.7, 900.0, 0.008);
    }
    noise_hit(buf, rng, at + 0.033, amp, 900.0, 0.07);
}

/// Ride cymbal: noise plus a few inharmonic partials that ring.
pub fn ride(buf: &mut [f32], rng: &mut ChaCha20Rng, at: f32, amp: f32) {
    noise_hit(buf, rng, at, amp * 0.5, 5000.0, 0.25);
    for (f, a) in [(3140.0, 0.25), (4230.0, 0.2), (5270.0, 0.15), (6880.0, 0.1)] {
        tone_hit(buf, at, amp * a, f, 0.3);
    }
}

pub fn one_pole_lowpass(buf: &mut [f32], cutoff_hz: f32) {
    let a = (-TAU * cutoff_hz.min(SR * 0.49) / SR).exp();
    let mut y = 0.0f32;
    for v in buf.iter_mut() {
        y = a * y + (1.0 - a) * *v;
        *v = y;
    }
}

pub fn one_pole_highpass(buf: &mut [f32], cutoff_hz: f32) {
    let a = (-TAU * cutoff_hz / SR).exp();
    let mut low = 0.0f32;
    for v in buf.iter_mut() {
        low = a * low + (1.0 - a) * *v;
        *v -= low;
    }
}

/// Smooth saturation, about tanh for |x| < 3.
#[inline]
pub fn soft_clip(x: f32) -> f32 {
    let x = x.clamp(-3.0, 3.0);
    x * (27.0 + x * x) / (27.0 + 9.0 * x * x)
}

/// Guitar-amp distortion: gain into a soft clipper, then a speaker-cabinet low-pass.
pub fn distort(buf: &mut [f32], gain: f32, cab_hz: f32) {
    let peak = peak(buf).max(1e-6);
    for v in buf.iter_mut() {
        *v = soft_clip(*v / peak * gain);
    }
    one_pole_lowpass(buf, cab_hz);
    one_pole_lowpass(buf, cab_hz * 1.5);
}

pub fn peak(buf: &[f32]) -> f32 {
    buf.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// Schroeder reverb (four damped combs, two all-passes), mixed in at `mix`.
pub fn reverb(buf: &mut [f32], mix: f32, size: f32) {
    if mix <= 0.0 {
        return;
    }
    let n = buf.len();
    let mut wet = vec![0.0f32; n];
    let mut line = vec![0.0f32; n];
    for d in [1116usize, 1188, 1277, 1356] {
        let d = ((d as f32 * (0.4 + 0.6 * size)) as usize).max(1);
        let g = 0.72 + 0.2 * size;
        let mut damp = 0.0f32;
        for i in 0..n {
            let back = if i >= d { line[i - d] } else { 0.0 };
            damp = 0.7 * back + 0.3 * damp;
            line[i] = buf[i] + g * damp;
            wet[i] += line[i] * 0.25;
        }
    }
    for d in [225usize, 556] {
        let g = 0.5f32;
        let input = wet.clone();
        for i in 0..n {
            let back_in = if i >= d { input[i - d] } else { 0.0 };
            let back_out = if i >= d { wet[i - d] } else { 0.0 };
            wet[i] = -g * input[i] + back_in + g * back_out;
        }
    }
    for (v, w) in buf.iter_mut().zip(&wet) {
        *v = (1.0 - mix) * *v + mix * w;
    }
}

/// Feedback echo (dub delay).
pub fn echo(buf: &mut [f32], delay_s: f32, feedback: f32, mix: f32) {
    let d = ((delay_s * SR) as usize).max(1);
    let mut wet = vec![0.0f32; buf.len()];
    for i in d..buf.len() {
        wet[i] = (buf[i - d] + wet[i - d]) * feedback;
    }
    for (v, w) in buf.iter_mut().zip(&wet) {
        *v += mix * w;
    }
}

/// Adds a whole-track noise floor: white hiss filtered to `hiss_lp_hz`, mains hum, and vinyl crackle
/// (`crackle` clicks per second).
pub fn noise_floor(
    buf: &mut [f32],
    rng: &mut ChaCha20Rng,
    hiss: f32,
    hiss_lp_hz: f32,
    hum: f32,
    crackle: f32,
) {
    let a = (-TAU * hiss_lp_hz / SR).exp();
    let mut y = 0.0f32;
    let hum_hz = if rng.random_bool(0.5) { 50.0 } else { 60.0 };
    let mut phase = 0.0f32;
    let click_p = crackle / SR;
    for v in buf.iter_mut() {
        y = a * y + (1.0 - a) * noise(rng);
        let mut x = hiss * y + hum * (sine(phase) + 0.5 * sine((phase * 3.0).fract()));
        if click_p > 0.0 && rng.random::<f32>() < click_p {
            x += noise(rng) * hiss.max(0.02) * 8.0;
        }
        *v += x;
        phase += hum_hz / SR;
        phase -= phase.floor();
    }
}
