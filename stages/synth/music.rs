//! The musical side of the synthetic corpora: what makes one genre sound unlike another.
//!
//! Each genre is a blueprint that draws a [`Style`] per track: tempo range, swing, drum pattern, bass line,
//! accompaniment, lead, timbres, distortion, room, noise floor and bandwidth. Genres differ where real ones
//! do (four-on-the-floor disco, off-beat reggae skank with a one-drop, swung jazz ride with walking bass,
//! distorted 16th-note metal chugs, drumless classical with slow dynamics, 808 bass under sparse hip-hop
//! beats), and deliberately overlap where real ones do: a track sometimes borrows its drums, bass or
//! accompaniment from a neighbouring genre (rock~metal, disco~pop, blues~jazz~country, hiphop~reggae,
//! classical~jazz), and tempo, brightness, noise and levels vary within wide, overlapping ranges. The mean
//! spectrum alone therefore separates genres only partly; rhythm and time structure separate them further.
//!
//! The transfer corpus ([`TRANSFER_CLASSES`]) draws five other styles from the same elements, with the same
//! kind of borrowing among its own classes (afrobeat~dub~ambient, bossa~ambient, polka~afrobeat~bossa).

use rand::Rng;
use rand_chacha::ChaCha20Rng;

use super::dsp::{self, Env, Note, Wave, SR};

/// The ten GTZAN genres, in GTZAN's (alphabetical) order.
pub const GENRES: [&str; 10] = [
    "blues",
    "classical",
    "country",
    "disco",
    "hiphop",
    "jazz",
    "metal",
    "pop",
    "reggae",
    "rock",
];

/// The five styles of the transfer corpus, in alphabetical order: none is a GTZAN genre, so a model trained
/// on the ten genres meets new classes, built from the same musical elements (the study's second dataset
/// plays this part with five Indian styles).
pub const TRANSFER_CLASSES: [&str; 5] = ["afrobeat", "ambient", "bossa", "dub", "polka"];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Drums {
    None,
    Shuffle,
    Jazz,
    Country,
    Disco,
    Pop,
    HipHop,
    OneDrop,
    Steppers,
    Rock,
    Metal { double_kick: bool, blast: bool },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Bass {
    None,
    Boogie,
    Walking,
    RootFifth,
    Octaves,
    Roots8,
    Sub808,
    Reggae,
    Sustain,
    Chug,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Comp {
    None,
    Pad,
    Arpeggio,
    Strum,
    Stabs,
    Skank,
    Comping,
    Power,
    Chug,
    Loop,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Lead {
    None,
    /// Scale melody: notes per beat, legato fraction.
    Melody {
        density: f32,
        legato: f32,
    },
    /// Pentatonic/blues licks with bends, in phrases separated by rests.
    Licks {
        density: f32,
    },
}

/// Instrument colours, each a partial recipe plus an envelope.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Timbre {
    Flute,
    Strings,
    Piano,
    EPiano,
    Organ,
    Pluck,
    Sax,
    Synth,
    Vocal,
    Guitar,
    Upright,
    BassGuitar,
    SynthBass,
    Sub,
}

impl Timbre {
    fn wave(self, bright: f32) -> Wave {
        let b = bright.clamp(0.5, 1.5);
        match self {
            Timbre::Flute => Wave::new(&[1.0, 0.25 * b, 0.08 * b, 0.03 * b]),
            Timbre::Strings => Wave::rolloff(40, 1.25 / b, false),
            Timbre::Piano => Wave::rolloff(24, 1.7 / b, false),
            Timbre::EPiano => Wave::new(&[1.0, 0.2 * b, 0.05, 0.0, 0.0, 0.0, 0.12 * b]),
            Timbre::Organ => Wave::new(&[1.0, 0.9, 0.5, 0.7, 0.0, 0.3, 0.0, 0.4 * b]),
            Timbre::Pluck => Wave::rolloff(30, 1.4 / b, false),
            Timbre::Sax => {
                // A formant around the 3rd-5th partials.
                let amps: Vec<f32> = (1..=24)
                    .map(|k| {
                        let k = k as f32;
                        (1.0 + 1.5 * (-(k - 4.0).powi(2) / 4.0).exp()) * k.powf(-1.3 / b)
                    })
                    .collect();
                Wave::new(&amps)
            }
            Timbre::Synth => Wave::rolloff(60, 1.0 / b, false),
            Timbre::Vocal => {
                let amps: Vec<f32> = (1..=30)
                    .map(|k| {
                        let k = k as f32;
                        (0.4 + 1.2 * (-(k - 3.0).powi(2) / 2.0).exp()
                            + 0.6 * (-(k - 9.0).powi(2) / 6.0).exp())
                            * k.powf(-1.0 / b)
                    })
                    .collect();
                Wave::new(&amps)
            }
            Timbre::Guitar => Wave::rolloff(40, 1.1 / b, false),
            Timbre::Upright => Wave::new(&[1.0, 0.45, 0.12, 0.05]),
            Timbre::BassGuitar => Wave::rolloff(12, 1.5 / b, false),
            Timbre::SynthBass => Wave::rolloff(20, 1.0 / b, true),
            Timbre::Sub => Wave::new(&[1.0, 0.08]),
        }
    }

    fn env(self, note_len: f32) -> Env {
        match self {
            Timbre::Flute | Timbre::Vocal | Timbre::Sax => Env::new(0.05, 0.3, 0.8, 0.12),
            Timbre::Strings => Env::new(0.25, 0.5, 0.85, 0.4),
            Timbre::Piano => Env::new(0.003, 0.6, 0.0, 0.25),
            Timbre::EPiano => Env::new(0.004, 0.8, 0.1, 0.2),
            Timbre::Organ => Env::new(0.01, 1.0, 1.0, 0.05),
            Timbre::Pluck => Env::new(0.002, 0.35, 0.0, 0.1),
            Timbre::Synth => Env::new(0.01, 0.3, 0.6, 0.1),
            Timbre::Guitar => Env::new(0.003, 1.2, 0.5, 0.08),
            Timbre::Upright => Env::new(0.004, 0.35, 0.0, 0.08),
            Timbre::BassGuitar => Env::new(0.004, 0.5, 0.4, 0.05),
            Timbre::SynthBass => Env::new(0.003, 0.2, 0.5, 0.04),
            Timbre::Sub => Env::new(0.004, note_len.max(0.2), 0.0, 0.1),
        }
    }
}

/// Everything drawn for one track.
#[derive(Debug, Clone)]
struct Style {
    bpm: f32,
    /// Where the off-beat 8th falls within a beat: 0.5 straight, 0.667 triplet swing.
    swing8: f32,
    /// Same for 16ths within each 8th.
    swing16: f32,
    /// Timing jitter (seconds, standard deviation): 0 for programmed music, larger for live bands.
    jitter: f32,
    /// Tempo drift (rubato) as a fraction of the beat, classical only.
    rubato: f32,
    drums: Drums,
    bass: Bass,
    bass_timbre: Timbre,
    comp: Comp,
    comp_timbre: Timbre,
    lead: Lead,
    lead_timbre: Timbre,
    /// Distortion gain on the accompaniment (1 = clean).
    comp_drive: f32,
    lead_drive: f32,
    bright: f32,
    reverb: f32,
    /// Dub echo on the accompaniment.
    echo: f32,
    /// Depth of slow loudness swells (0 = flat).
    swell: f32,
    /// Master low-pass (recording bandwidth).
    bandwidth_hz: f32,
    hiss: f32,
    hum: f32,
    crackle: f32,
    /// Final soft-clip drive (loudness-war compression).
    squash: f32,
    scale: &'static [i32],
    progression: Vec<(i32, &'static [i32])>,
    chords_per_bar: usize,
    key: i32,
    levels: [f32; 4],
}

const MAJOR: &[i32] = &[0, 2, 4, 5, 7, 9, 11];
const MINOR: &[i32] = &[0, 2, 3, 5, 7, 8, 10];
const DORIAN: &[i32] = &[0, 2, 3, 5, 7, 9, 10];
const MIXOLYDIAN: &[i32] = &[0, 2, 4, 5, 7, 9, 10];
const PHRYGIAN: &[i32] = &[0, 1, 3, 5, 7, 8, 10];
const BLUES: &[i32] = &[0, 3, 5, 6, 7, 10];
const PENTA: &[i32] = &[0, 2, 4, 7, 9];

const MAJ: &[i32] = &[0, 4, 7];
const MIN: &[i32] = &[0, 3, 7];
const DOM7: &[i32] = &[0, 4, 7, 10];
const MIN7: &[i32] = &[0, 3, 7, 10];
const MAJ7: &[i32] = &[0, 4, 7, 11];
const MIN9: &[i32] = &[0, 3, 7, 10, 14];
const DOM9: &[i32] = &[0, 4, 10, 14];
const POWER: &[i32] = &[0, 7, 12];

fn pick<T: Copy>(rng: &mut ChaCha20Rng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

fn range(rng: &mut ChaCha20Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.random::<f32>()
}

fn gauss(rng: &mut ChaCha20Rng) -> f32 {
    // Irwin-Hall approximation: cheap and plenty for jitter.
    (0..4).map(|_| rng.random::<f32>()).sum::<f32>() - 2.0
}

fn base_style(rng: &mut ChaCha20Rng) -> Style {
    Style {
        bpm: 120.0,
        swing8: 0.5,
        swing16: 0.5,
        jitter: range(rng, 0.0, 0.01),
        rubato: 0.0,
        drums: Drums::None,
        bass: Bass::None,
        bass_timbre: Timbre::BassGuitar,
        comp: Comp::None,
        comp_timbre: Timbre::Piano,
        lead: Lead::None,
        lead_timbre: Timbre::Synth,
        comp_drive: 1.0,
        lead_drive: 1.0,
        bright: range(rng, 0.7, 1.3),
        reverb: range(rng, 0.05, 0.25),
        echo: 0.0,
        swell: range(rng, 0.0, 0.25),
        bandwidth_hz: range(rng, 4000.0, 10500.0),
        hiss: 10f32.powf(range(rng, -3.8, -2.3)),
        hum: if rng.random_bool(0.2) {
            10f32.powf(range(rng, -3.5, -2.2))
        } else {
            0.0
        },
        crackle: 0.0,
        squash: range(rng, 1.0, 2.0),
        scale: MAJOR,
        progression: vec![(0, MAJ), (5, MAJ), (7, MAJ), (0, MAJ)],
        chords_per_bar: 1,
        key: rng.random_range(0..12),
        levels: [
            range(rng, 0.6, 1.4),
            range(rng, 0.6, 1.4),
            range(rng, 0.6, 1.4),
            range(rng, 0.6, 1.4),
        ],
    }
}

/// The genre's own blueprint, drawn once per track.
fn blueprint(genre: &str, rng: &mut ChaCha20Rng) -> Style {
    let mut s = base_style(rng);
    match genre {
        "blues" => {
            s.bpm = range(rng, 60.0, 115.0);
            s.swing8 = range(rng, 0.6, 0.68);
            s.jitter = range(rng, 0.005, 0.02);
            s.drums = if rng.random_bool(0.8) {
                Drums::Shuffle
            } else {
                Drums::None
            };
            s.bass = pick(rng, &[Bass::Boogie, Bass::Boogie, Bass::Walking]);
            s.comp = pick(rng, &[Comp::Strum, Comp::Stabs, Comp::Pad]);
            s.comp_timbre = pick(
                rng,
                &[Timbre::Guitar, Timbre::EPiano, Timbre::Organ, Timbre::Piano],
            );
            s.comp_drive = range(rng, 1.0, 3.0);
            s.lead = Lead::Licks {
                density: range(rng, 1.0, 2.5),
            };
            s.lead_timbre = pick(
                rng,
                &[Timbre::Guitar, Timbre::Guitar, Timbre::Sax, Timbre::Vocal],
            );
            s.lead_drive = range(rng, 1.0, 5.0);
            s.scale = BLUES;
            s.progression = vec![
                (0, DOM7),
                (0, DOM7),
                (0, DOM7),
                (0, DOM7),
                (5, DOM7),
                (5, DOM7),
                (0, DOM7),
                (0, DOM7),
                (7, DOM7),
                (5, DOM7),
                (0, DOM7),
                (7, DOM7),
            ];
            s.hiss *= 2.0;
            s.bandwidth_hz = range(rng, 3000.0, 9000.0);
        }
        "jazz" => {
            s.bpm = range(rng, 90.0, 220.0);
            s.swing8 = range(rng, 0.6, 0.68);
            s.jitter = range(rng, 0.005, 0.015);
            s.drums = if rng.random_bool(0.85) {
                Drums::Jazz
            } else {
                Drums::None
            };
            s.bass = Bass::Walking;
            s.bass_timbre = Timbre::Upright;
            s.comp = Comp::Comping;
            s.comp_timbre = pick(
                rng,
                &[Timbre::Piano, Timbre::Piano, Timbre::EPiano, Timbre::Guitar],
            );
            s.lead = if rng.random_bool(0.75) {
                Lead::Melody {
                    density: range(rng, 1.0, 3.0),
                    legato: range(rng, 0.5, 0.95),
                }
            } else {
                Lead::None
            };
            s.lead_timbre = pick(
                rng,
                &[
                    Timbre::Sax,
                    Timbre::Sax,
                    Timbre::Flute,
                    Timbre::Piano,
                    Timbre::Vocal,
                ],
            );
            s.scale = DORIAN;
            s.progression = pick(
                rng,
                &[
                    &[(2, MIN9), (7, DOM9), (0, MAJ7), (0, MAJ7)][..],
                    &[(9, MIN7), (2, MIN7), (7, DOM7), (0, MAJ7)][..],
                    &[(0, MAJ7), (9, MIN7), (2, MIN9), (7, DOM9)][..],
                ],
            )
            .to_vec();
            s.chords_per_bar = pick(rng, &[1, 1, 2]);
            s.reverb = range(rng, 0.15, 0.4);
            s.hiss *= 1.5;
            s.squash = range(rng, 1.0, 1.5);
        }
        "country" => {
            s.bpm = range(rng, 80.0, 150.0);
            s.swing8 = range(rng, 0.5, 0.57);
            s.jitter = range(rng, 0.003, 0.012);
            s.drums = if rng.random_bool(0.85) {
                Drums::Country
            } else {
                Drums::None
            };
            s.bass = Bass::RootFifth;
            s.comp = Comp::Strum;
            s.comp_timbre = pick(
                rng,
                &[Timbre::Pluck, Timbre::Pluck, Timbre::Guitar, Timbre::Piano],
            );
            s.lead = if rng.random_bool(0.75) {
                Lead::Melody {
                    density: range(rng, 1.0, 2.5),
                    legato: range(rng, 0.6, 1.0),
                }
            } else {
                Lead::None
            };
            s.lead_timbre = pick(
                rng,
                &[
                    Timbre::Strings,
                    Timbre::Vocal,
                    Timbre::Guitar,
                    Timbre::Pluck,
                ],
            );
            s.scale = pick(rng, &[MAJOR, MAJOR, MIXOLYDIAN, PENTA]);
            s.progression = pick(
                rng,
                &[
                    &[
                        (0, MAJ),
                        (0, MAJ),
                        (5, MAJ),
                        (5, MAJ),
                        (7, MAJ),
                        (7, MAJ),
                        (0, MAJ),
                        (0, MAJ),
                    ][..],
                    &[(0, MAJ), (5, MAJ), (0, MAJ), (7, MAJ)][..],
                    &[(0, MAJ), (7, MAJ), (9, MIN), (5, MAJ)][..],
                ],
            )
            .to_vec();
            s.bandwidth_hz = range(rng, 4500.0, 10500.0);
        }
        "disco" => {
            s.bpm = range(rng, 108.0, 132.0);
            s.jitter = range(rng, 0.0, 0.006);
            s.drums = if rng.random_bool(0.9) {
                Drums::Disco
            } else {
                Drums::Pop
            };
            s.bass = pick(rng, &[Bass::Octaves, Bass::Octaves, Bass::Roots8]);
            s.bass_timbre = pick(rng, &[Timbre::BassGuitar, Timbre::SynthBass]);
            s.comp = pick(rng, &[Comp::Stabs, Comp::Stabs, Comp::Pad, Comp::Strum]);
            s.comp_timbre = pick(
                rng,
                &[
                    Timbre::Strings,
                    Timbre::EPiano,
                    Timbre::Guitar,
                    Timbre::Synth,
                ],
            );
            s.lead = if rng.random_bool(0.6) {
                Lead::Melody {
                    density: range(rng, 1.0, 2.5),
                    legato: range(rng, 0.5, 0.9),
                }
            } else {
                Lead::None
            };
            s.lead_timbre = pick(rng, &[Timbre::Vocal, Timbre::Strings, Timbre::Synth]);
            s.scale = pick(rng, &[MINOR, DORIAN, MAJOR]);
            s.progression = pick(
                rng,
                &[
                    &[(0, MIN7), (0, MIN7), (5, MIN7), (5, MIN7)][..],
                    &[(0, MAJ7), (5, MAJ7), (2, MIN7), (7, DOM7)][..],
                    &[(0, MIN7), (10, MAJ), (8, MAJ), (7, DOM7)][..],
                ],
            )
            .to_vec();
            s.squash = range(rng, 1.5, 3.0);
            s.bandwidth_hz = range(rng, 6000.0, 10500.0);
        }
        "pop" => {
            s.bpm = range(rng, 85.0, 130.0);
            s.swing16 = range(rng, 0.5, 0.55);
            s.jitter = range(rng, 0.0, 0.006);
            s.drums = if rng.random_bool(0.3) {
                Drums::Disco
            } else {
                Drums::Pop
            };
            s.bass = pick(
                rng,
                &[Bass::Roots8, Bass::Roots8, Bass::Sustain, Bass::Octaves],
            );
            s.bass_timbre = pick(rng, &[Timbre::SynthBass, Timbre::BassGuitar]);
            s.comp = pick(rng, &[Comp::Pad, Comp::Arpeggio, Comp::Strum, Comp::Stabs]);
            s.comp_timbre = pick(
                rng,
                &[Timbre::Synth, Timbre::Piano, Timbre::Strings, Timbre::Pluck],
            );
            s.lead = Lead::Melody {
                density: range(rng, 1.5, 3.0),
                legato: range(rng, 0.6, 0.95),
            };
            s.lead_timbre = pick(rng, &[Timbre::Vocal, Timbre::Vocal, Timbre::Synth]);
            s.scale = pick(rng, &[MAJOR, MAJOR, MINOR]);
            s.progression = pick(
                rng,
                &[
                    &[(0, MAJ), (7, MAJ), (9, MIN), (5, MAJ)][..],
                    &[(9, MIN), (5, MAJ), (0, MAJ), (7, MAJ)][..],
                    &[(0, MAJ), (5, MAJ), (0, MAJ), (7, MAJ)][..],
                ],
            )
            .to_vec();
            s.squash = range(rng, 1.8, 3.0);
            s.bandwidth_hz = range(rng, 6500.0, 10500.0);
        }
        "hiphop" => {
            s.bpm = range(rng, 70.0, 100.0);
            s.swing16 = range(rng, 0.5, 0.62);
            s.jitter = range(rng, 0.0, 0.008);
            s.drums = Drums::HipHop;
            s.bass = pick(rng, &[Bass::Sub808, Bass::Sub808, Bass::Roots8]);
            s.bass_timbre = Timbre::Sub;
            s.comp = pick(rng, &[Comp::Loop, Comp::Loop, Comp::Stabs, Comp::None]);
            s.comp_timbre = pick(
                rng,
                &[
                    Timbre::EPiano,
                    Timbre::Piano,
                    Timbre::Strings,
                    Timbre::Organ,
                ],
            );
            s.lead = if rng.random_bool(0.35) {
                Lead::Melody {
                    density: range(rng, 0.5, 1.5),
                    legato: range(rng, 0.3, 0.8),
                }
            } else {
                Lead::None
            };
            s.lead_timbre = pick(rng, &[Timbre::Synth, Timbre::Flute, Timbre::Vocal]);
            s.scale = pick(rng, &[MINOR, DORIAN, PHRYGIAN]);
            s.progression = pick(
                rng,
                &[
                    &[(0, MIN7), (0, MIN7), (8, MAJ7), (8, MAJ7)][..],
                    &[(0, MIN9), (5, MIN7)][..],
                    &[(0, MIN7), (3, MAJ7), (8, MAJ7), (7, MIN7)][..],
                ],
            )
            .to_vec();
            if rng.random_bool(0.5) {
                s.crackle = range(rng, 2.0, 12.0);
            }
            s.squash = range(rng, 1.5, 3.0);
        }
        "reggae" => {
            s.bpm = range(rng, 62.0, 100.0);
            s.swing8 = range(rng, 0.5, 0.6);
            s.swing16 = range(rng, 0.5, 0.58);
            s.jitter = range(rng, 0.002, 0.01);
            s.drums = pick(
                rng,
                &[
                    Drums::OneDrop,
                    Drums::OneDrop,
                    Drums::OneDrop,
                    Drums::Steppers,
                ],
            );
            s.bass = Bass::Reggae;
            s.bass_timbre = pick(rng, &[Timbre::BassGuitar, Timbre::Sub]);
            s.comp = Comp::Skank;
            s.comp_timbre = pick(
                rng,
                &[Timbre::Guitar, Timbre::Organ, Timbre::Pluck, Timbre::EPiano],
            );
            s.lead = if rng.random_bool(0.6) {
                Lead::Melody {
                    density: range(rng, 0.8, 2.0),
                    legato: range(rng, 0.5, 0.9),
                }
            } else {
                Lead::None
            };
            s.lead_timbre = pick(
                rng,
                &[Timbre::Vocal, Timbre::Vocal, Timbre::Organ, Timbre::Sax],
            );
            s.scale = pick(rng, &[MAJOR, MINOR, DORIAN]);
            s.progression = pick(
                rng,
                &[
                    &[(0, MAJ), (5, MAJ)][..],
                    &[(0, MIN), (5, MIN)][..],
                    &[(0, MAJ), (7, MAJ), (5, MAJ), (5, MAJ)][..],
                ],
            )
            .to_vec();
            s.echo = range(rng, 0.0, 0.45);
            s.bandwidth_hz = range(rng, 4000.0, 10000.0);
        }
        "rock" => {
            s.bpm = range(rng, 95.0, 165.0);
            s.jitter = range(rng, 0.002, 0.01);
            s.drums = if rng.random_bool(0.9) {
                Drums::Rock
            } else {
                Drums::Country
            };
            s.bass = pick(rng, &[Bass::Roots8, Bass::Roots8, Bass::RootFifth]);
            s.comp = pick(rng, &[Comp::Power, Comp::Power, Comp::Power, Comp::Strum]);
            s.comp_timbre = Timbre::Guitar;
            s.comp_drive = range(rng, 2.0, 9.0);
            s.lead = if rng.random_bool(0.55) {
                Lead::Melody {
                    density: range(rng, 1.0, 3.0),
                    legato: range(rng, 0.6, 1.0),
                }
            } else {
                Lead::None
            };
            s.lead_timbre = pick(rng, &[Timbre::Vocal, Timbre::Guitar]);
            s.lead_drive = range(rng, 1.0, 6.0);
            s.scale = pick(rng, &[MAJOR, MIXOLYDIAN, MINOR, PENTA]);
            s.progression = pick(
                rng,
                &[
                    &[(0, POWER), (10, POWER), (5, POWER), (0, POWER)][..],
                    &[(0, POWER), (5, POWER), (7, POWER), (5, POWER)][..],
                    &[(0, POWER), (8, POWER), (10, POWER), (0, POWER)][..],
                ],
            )
            .to_vec();
            s.squash = range(rng, 1.2, 2.5);
            s.bandwidth_hz = range(rng, 5000.0, 10500.0);
        }
        "metal" => {
            s.bpm = range(rng, 90.0, 210.0);
            s.jitter = range(rng, 0.0, 0.006);
            s.drums = if rng.random_bool(0.85) {
                Drums::Metal {
                    double_kick: rng.random_bool(0.6),
                    blast: rng.random_bool(0.15),
                }
            } else {
                Drums::Rock
            };
            s.bass = Bass::Chug;
            s.comp = Comp::Chug;
            s.comp_timbre = Timbre::Guitar;
            s.comp_drive = range(rng, 7.0, 30.0);
            s.lead = if rng.random_bool(0.4) {
                Lead::Melody {
                    density: range(rng, 2.0, 4.0),
                    legato: range(rng, 0.7, 1.0),
                }
            } else {
                Lead::None
            };
            s.lead_timbre = pick(rng, &[Timbre::Guitar, Timbre::Vocal]);
            s.lead_drive = range(rng, 3.0, 15.0);
            s.scale = pick(rng, &[MINOR, PHRYGIAN]);
            s.progression = pick(
                rng,
                &[
                    &[(0, POWER), (0, POWER), (1, POWER), (0, POWER)][..],
                    &[(0, POWER), (8, POWER), (10, POWER), (7, POWER)][..],
                    &[(0, POWER), (3, POWER), (5, POWER), (6, POWER)][..],
                ],
            )
            .to_vec();
            s.squash = range(rng, 1.5, 3.0);
            s.bandwidth_hz = range(rng, 6000.0, 10500.0);
        }
        "afrobeat" => {
            // A one-chord vamp driven by busy 16th hats, interlocking clean guitar and a horn line.
            s.bpm = range(rng, 100.0, 130.0);
            s.swing16 = range(rng, 0.5, 0.56);
            s.jitter = range(rng, 0.003, 0.01);
            s.drums = pick(rng, &[Drums::Pop, Drums::Pop, Drums::Disco]);
            s.bass = pick(rng, &[Bass::Reggae, Bass::Octaves, Bass::Octaves]);
            s.bass_timbre = Timbre::BassGuitar;
            s.comp = pick(rng, &[Comp::Skank, Comp::Stabs, Comp::Stabs]);
            s.comp_timbre = pick(rng, &[Timbre::Guitar, Timbre::Pluck, Timbre::Organ]);
            s.lead = Lead::Melody {
                density: range(rng, 2.0, 3.5),
                legato: range(rng, 0.4, 0.8),
            };
            s.lead_timbre = pick(
                rng,
                &[Timbre::Sax, Timbre::Sax, Timbre::Organ, Timbre::Vocal],
            );
            s.scale = pick(rng, &[DORIAN, MIXOLYDIAN, PENTA]);
            s.progression = pick(
                rng,
                &[
                    &[(0, MIN7), (0, MIN7), (0, MIN7), (5, DOM7)][..],
                    &[(0, DOM7), (0, DOM7)][..],
                    &[(0, MIN7), (10, MAJ), (0, MIN7), (10, MAJ)][..],
                ],
            )
            .to_vec();
            s.squash = range(rng, 1.4, 2.6);
            s.bandwidth_hz = range(rng, 5500.0, 10500.0);
        }
        "ambient" => {
            // Drumless slow washes: long pads, a held bass, sparse lead and deep room.
            s.bpm = range(rng, 50.0, 90.0);
            s.jitter = range(rng, 0.0, 0.01);
            s.drums = Drums::None;
            s.bass = pick(rng, &[Bass::Sustain, Bass::Sustain, Bass::None]);
            s.bass_timbre = pick(rng, &[Timbre::Sub, Timbre::Strings, Timbre::SynthBass]);
            s.comp = pick(rng, &[Comp::Pad, Comp::Pad, Comp::Arpeggio]);
            s.comp_timbre = pick(rng, &[Timbre::Synth, Timbre::Strings, Timbre::EPiano]);
            s.lead = if rng.random_bool(0.5) {
                Lead::Melody {
                    density: range(rng, 0.3, 1.0),
                    legato: range(rng, 0.9, 1.0),
                }
            } else {
                Lead::None
            };
            s.lead_timbre = pick(rng, &[Timbre::Flute, Timbre::Synth, Timbre::Vocal]);
            s.scale = pick(rng, &[MAJOR, DORIAN, PENTA]);
            s.progression = pick(
                rng,
                &[
                    &[(0, MAJ7), (0, MAJ7), (5, MAJ7), (5, MAJ7)][..],
                    &[(0, MIN9), (8, MAJ7)][..],
                    &[(0, MAJ7), (9, MIN7), (5, MAJ7), (7, MAJ)][..],
                ],
            )
            .to_vec();
            s.reverb = range(rng, 0.45, 0.75);
            s.echo = range(rng, 0.0, 0.4);
            s.swell = range(rng, 0.3, 0.8);
            s.squash = range(rng, 1.0, 1.3);
            s.hiss *= 0.5;
        }
        "bossa" => {
            // Soft brushed ride over a root-fifth upright bass, nylon-string comping and a breathy melody.
            s.bpm = range(rng, 110.0, 150.0);
            s.swing8 = range(rng, 0.5, 0.56);
            s.jitter = range(rng, 0.003, 0.012);
            s.drums = pick(
                rng,
                &[Drums::Jazz, Drums::Jazz, Drums::Country, Drums::None],
            );
            s.bass = pick(rng, &[Bass::RootFifth, Bass::RootFifth, Bass::Walking]);
            s.bass_timbre = pick(rng, &[Timbre::Upright, Timbre::BassGuitar]);
            s.comp = pick(rng, &[Comp::Comping, Comp::Strum, Comp::Arpeggio]);
            s.comp_timbre = pick(
                rng,
                &[Timbre::Pluck, Timbre::Pluck, Timbre::Piano, Timbre::EPiano],
            );
            s.lead = if rng.random_bool(0.8) {
                Lead::Melody {
                    density: range(rng, 0.8, 2.0),
                    legato: range(rng, 0.7, 1.0),
                }
            } else {
                Lead::None
            };
            s.lead_timbre = pick(rng, &[Timbre::Vocal, Timbre::Flute, Timbre::Sax]);
            s.scale = pick(rng, &[MAJOR, DORIAN]);
            s.progression = pick(
                rng,
                &[
                    &[
                        (0, MAJ7),
                        (0, MAJ7),
                        (2, DOM9),
                        (2, DOM9),
                        (2, MIN7),
                        (7, DOM9),
                        (0, MAJ7),
                        (7, DOM9),
                    ][..],
                    &[(0, MAJ7), (9, MIN7), (2, MIN9), (7, DOM9)][..],
                    &[(2, MIN9), (7, DOM9), (0, MAJ7), (5, MAJ7)][..],
                ],
            )
            .to_vec();
            s.chords_per_bar = pick(rng, &[1, 1, 2]);
            s.reverb = range(rng, 0.1, 0.35);
            s.squash = range(rng, 1.0, 1.6);
            s.bandwidth_hz = range(rng, 4500.0, 9500.0);
        }
        "dub" => {
            // Reggae's rhythm section stripped down: heavy sub bass, echoed skank, dark and roomy.
            s.bpm = range(rng, 62.0, 90.0);
            s.swing16 = range(rng, 0.5, 0.6);
            s.jitter = range(rng, 0.0, 0.008);
            s.drums = pick(rng, &[Drums::Steppers, Drums::Steppers, Drums::OneDrop]);
            s.bass = pick(rng, &[Bass::Reggae, Bass::Reggae, Bass::Sub808]);
            s.bass_timbre = Timbre::Sub;
            s.comp = pick(rng, &[Comp::Skank, Comp::Skank, Comp::Stabs]);
            s.comp_timbre = pick(rng, &[Timbre::Organ, Timbre::EPiano, Timbre::Guitar]);
            s.lead = if rng.random_bool(0.3) {
                Lead::Melody {
                    density: range(rng, 0.5, 1.2),
                    legato: range(rng, 0.5, 0.9),
                }
            } else {
                Lead::None
            };
            s.lead_timbre = pick(rng, &[Timbre::Synth, Timbre::Sax, Timbre::Vocal]);
            s.scale = pick(rng, &[MINOR, DORIAN]);
            s.progression = pick(
                rng,
                &[
                    &[(0, MIN), (0, MIN), (5, MIN), (5, MIN)][..],
                    &[(0, MIN7), (10, MAJ)][..],
                    &[(0, MIN), (8, MAJ), (10, MAJ), (0, MIN)][..],
                ],
            )
            .to_vec();
            s.echo = range(rng, 0.35, 0.7);
            s.reverb = range(rng, 0.2, 0.5);
            s.bandwidth_hz = range(rng, 2500.0, 7000.0);
            s.squash = range(rng, 1.2, 2.2);
        }
        "polka" => {
            // Fast oom-pah: bass on the beats, chords off them, a busy bright melody on top.
            s.bpm = range(rng, 110.0, 160.0);
            s.jitter = range(rng, 0.003, 0.012);
            s.drums = pick(rng, &[Drums::Country, Drums::Country, Drums::Rock]);
            s.bass = pick(rng, &[Bass::RootFifth, Bass::RootFifth, Bass::Boogie]);
            s.bass_timbre = pick(rng, &[Timbre::BassGuitar, Timbre::Upright]);
            s.comp = pick(rng, &[Comp::Skank, Comp::Stabs, Comp::Strum]);
            s.comp_timbre = pick(
                rng,
                &[Timbre::Organ, Timbre::Organ, Timbre::Piano, Timbre::Pluck],
            );
            s.lead = Lead::Melody {
                density: range(rng, 2.5, 4.0),
                legato: range(rng, 0.5, 0.85),
            };
            s.lead_timbre = pick(
                rng,
                &[Timbre::Organ, Timbre::Flute, Timbre::Sax, Timbre::Strings],
            );
            s.scale = MAJOR;
            s.progression = pick(
                rng,
                &[
                    &[
                        (0, MAJ),
                        (0, MAJ),
                        (7, DOM7),
                        (7, DOM7),
                        (7, DOM7),
                        (7, DOM7),
                        (0, MAJ),
                        (0, MAJ),
                    ][..],
                    &[(0, MAJ), (7, DOM7), (0, MAJ), (5, MAJ)][..],
                    &[(0, MAJ), (5, MAJ), (7, DOM7), (0, MAJ)][..],
                ],
            )
            .to_vec();
            s.bright = range(rng, 1.0, 1.4);
            s.reverb = range(rng, 0.05, 0.2);
            s.bandwidth_hz = range(rng, 4500.0, 10000.0);
        }
        _ => {
            // classical
            s.bpm = range(rng, 50.0, 130.0);
            s.jitter = range(rng, 0.005, 0.02);
            s.rubato = range(rng, 0.05, 0.2);
            s.drums = Drums::None;
            s.bass = pick(rng, &[Bass::Sustain, Bass::Sustain, Bass::None]);
            s.bass_timbre = Timbre::Strings;
            s.comp = pick(rng, &[Comp::Pad, Comp::Arpeggio, Comp::Arpeggio]);
            s.comp_timbre = if s.comp == Comp::Pad {
                Timbre::Strings
            } else {
                pick(rng, &[Timbre::Piano, Timbre::Piano, Timbre::Pluck])
            };
            s.lead = if rng.random_bool(0.8) {
                Lead::Melody {
                    density: range(rng, 0.5, 2.5),
                    legato: range(rng, 0.8, 1.0),
                }
            } else {
                Lead::None
            };
            s.lead_timbre = pick(
                rng,
                &[Timbre::Strings, Timbre::Flute, Timbre::Piano, Timbre::Sax],
            );
            s.scale = pick(rng, &[MAJOR, MINOR]);
            s.progression = pick(
                rng,
                &[
                    &[
                        (0, MAJ),
                        (5, MAJ),
                        (7, DOM7),
                        (0, MAJ),
                        (9, MIN),
                        (2, MIN),
                        (7, DOM7),
                        (0, MAJ),
                    ][..],
                    &[(0, MIN), (5, MIN), (7, DOM7), (0, MIN)][..],
                    &[
                        (0, MAJ),
                        (7, MAJ),
                        (9, MIN),
                        (4, MIN),
                        (5, MAJ),
                        (0, MAJ),
                        (5, MAJ),
                        (7, MAJ),
                    ][..],
                ],
            )
            .to_vec();
            s.reverb = range(rng, 0.25, 0.55);
            s.swell = range(rng, 0.3, 0.8);
            s.squash = 1.0;
            s.hiss *= 0.5;
        }
    }
    s
}

/// Genres a track may borrow an element from.
fn neighbours(genre: &str) -> &'static [&'static str] {
    match genre {
        "blues" => &["jazz", "country", "rock"],
        "jazz" => &["blues", "classical", "country"],
        "country" => &["blues", "rock", "pop"],
        "disco" => &["pop", "hiphop"],
        "pop" => &["disco", "rock", "hiphop"],
        "hiphop" => &["reggae", "pop", "disco"],
        "reggae" => &["hiphop", "pop"],
        "rock" => &["metal", "country", "blues"],
        "metal" => &["rock"],
        "afrobeat" => &["dub", "bossa", "polka"],
        "ambient" => &["dub", "bossa"],
        "bossa" => &["ambient", "afrobeat"],
        "dub" => &["afrobeat", "ambient"],
        "polka" => &["afrobeat", "bossa"],
        _ => &["jazz"],
    }
}

/// Probability that a track borrows one element from a neighbouring genre.
const BORROW: f64 = 0.2;

/// Draws the style of one track of `genre`.
fn style(genre: &str, rng: &mut ChaCha20Rng) -> Style {
    let mut s = blueprint(genre, rng);
    if rng.random_bool(BORROW) {
        let other = blueprint(pick(rng, neighbours(genre)), rng);
        match rng.random_range(0..4) {
            0 => {
                s.drums = other.drums;
                s.swing8 = other.swing8;
            }
            1 => {
                s.bass = other.bass;
                s.bass_timbre = other.bass_timbre;
            }
            2 => {
                s.comp = other.comp;
                s.comp_timbre = other.comp_timbre;
                s.comp_drive = other.comp_drive;
            }
            _ => {
                s.bpm = other.bpm;
                s.bandwidth_hz = other.bandwidth_hz;
                s.lead = other.lead;
                s.lead_timbre = other.lead_timbre;
            }
        }
    }
    s
}

/// Maps musical time to seconds: tempo, swing, rubato, and a random start inside the first bar (an excerpt
/// rarely starts on a downbeat).
struct Grid {
    spb: f32,
    swing8: f32,
    swing16: f32,
    offset: f32,
    rubato: f32,
    rubato_period: f32,
}

impl Grid {
    fn bar_len(&self) -> f32 {
        4.0 * self.spb
    }
    /// Time of 16th-note `step` (0..16) of `bar`.
    fn at(&self, bar: usize, step: usize) -> f32 {
        let beat = (step / 4) as f32;
        let h1 = self.swing8 * self.spb;
        let h2 = self.spb - h1;
        let within = match step % 4 {
            0 => 0.0,
            1 => h1 * self.swing16,
            2 => h1,
            _ => h1 + h2 * self.swing16,
        };
        let t = bar as f32 * self.bar_len() + beat * self.spb + within - self.offset;
        // Rubato: a slow, monotonic time warp.
        t + self.rubato * self.spb * (std::f32::consts::TAU * t / self.rubato_period).sin()
    }
}

struct Ctx<'a> {
    s: &'a Style,
    g: Grid,
    bars: usize,
    /// Per 4-bar phrase: which layers play (drums, bass, comp, lead).
    active: Vec<[bool; 4]>,
}

impl Ctx<'_> {
    fn chord(&self, bar: usize, step: usize) -> (i32, &'static [i32]) {
        let per = self.s.chords_per_bar;
        let idx = bar * per + step * per / 16;
        self.s.progression[idx % self.s.progression.len()]
    }
    fn plays(&self, bar: usize, layer: usize) -> bool {
        self.active[bar / 4][layer]
    }
    fn t(&self, rng: &mut ChaCha20Rng, bar: usize, step: usize) -> f32 {
        self.g.at(bar, step) + gauss(rng) * self.s.jitter
    }
}

/// One-shot drum sounds rendered once per track (three takes each, picked at random per hit) and stamped
/// where they play: a drum machine's samples, and far cheaper than synthesising every hit.
#[derive(Default)]
struct Kit {
    shots: std::collections::BTreeMap<usize, Vec<Vec<f32>>>,
}

impl Kit {
    const TAKES: usize = 3;
    /// Longest one-shot (a crash rings longest).
    const MAX_SECONDS: f32 = 3.6;

    fn play(
        &mut self,
        buf: &mut [f32],
        rng: &mut ChaCha20Rng,
        voice: usize,
        at: f32,
        amp: f32,
        make: impl Fn(&mut [f32], &mut ChaCha20Rng),
    ) {
        let takes = self.shots.entry(voice).or_insert_with(|| {
            (0..Self::TAKES)
                .map(|_| {
                    let mut shot = vec![0.0f32; (Self::MAX_SECONDS * SR) as usize];
                    make(&mut shot, rng);
                    let end = shot.iter().rposition(|v| *v != 0.0).map_or(0, |i| i + 1);
                    shot.truncate(end);
                    shot
                })
                .collect()
        });
        let shot = &takes[rng.random_range(0..Self::TAKES)];
        let start = (at * SR).round();
        if start < 0.0 {
            return;
        }
        let start = start as usize;
        if start >= buf.len() {
            return;
        }
        let end = (start + shot.len()).min(buf.len());
        for (v, s) in buf[start..end].iter_mut().zip(shot) {
            *v += amp * s;
        }
    }
}

fn drums(c: &Ctx, buf: &mut [f32], rng: &mut ChaCha20Rng) {
    let mut kit = Kit::default();
    let kick_tune = range(rng, 45.0, 65.0);
    let kick_decay = range(rng, 0.08, 0.2);
    let snare_tune = range(rng, 160.0, 240.0);
    let snap = range(rng, 0.5, 1.2);
    let hat_hp = range(rng, 5000.0, 8500.0);
    let hat_decay = range(rng, 0.02, 0.05);
    let hat16 = rng.random_bool(0.4);
    for bar in 0..c.bars {
        if !c.plays(bar, 0) {
            continue;
        }
        if bar % 4 == 0 && !matches!(c.s.drums, Drums::Jazz | Drums::None) && rng.random_bool(0.5) {
            let t = c.t(rng, bar, 0);
            kit.play(buf, rng, 0, t, 0.5, |b, r| {
                dsp::noise_hit(b, r, 0.0, 1.0, 3000.0, 0.8)
            });
        }
        for step in 0..16 {
            let t = c.t(rng, bar, step);
            let v = range(rng, 0.8, 1.0);
            let eighth = step % 2 == 0;
            let beat = step % 4 == 0;
            match c.s.drums {
                Drums::None => {}
                Drums::Shuffle | Drums::Rock | Drums::Country | Drums::Pop => {
                    let kick = match c.s.drums {
                        Drums::Rock => step == 0 || step == 8 || (step == 10 && bar % 2 == 1),
                        Drums::Pop => {
                            step == 0 || step == 8 || step == 6 || (step == 11 && bar % 2 == 0)
                        }
                        _ => step == 0 || step == 8,
                    };
                    if kick {
                        kit.play(buf, rng, 1, t, v, |b, _| {
                            dsp::kick(b, 0.0, 1.0, kick_tune, kick_decay)
                        });
                    }
                    if step == 4 || step == 12 {
                        if c.s.drums == Drums::Pop {
                            kit.play(buf, rng, 2, t, 0.8 * v, |b, r| dsp::clap(b, r, 0.0, 1.0));
                        } else if c.s.drums == Drums::Country {
                            kit.play(buf, rng, 3, t, 0.5 * v, |b, _| {
                                dsp::tone_hit(b, 0.0, 1.0, 1700.0, 0.02)
                            });
                            kit.play(buf, rng, 4, t, 0.5 * v, |b, r| {
                                dsp::snare(b, r, 0.0, 1.0, snare_tune, snap * 0.6)
                            });
                        } else {
                            kit.play(buf, rng, 5, t, v, |b, r| {
                                dsp::snare(b, r, 0.0, 1.0, snare_tune, snap)
                            });
                        }
                    }
                    if c.s.drums == Drums::Country && !eighth {
                        kit.play(buf, rng, 6, t, 0.12 * v, |b, r| {
                            dsp::noise_hit(b, r, 0.0, 1.0, 2500.0, 0.04)
                        });
                    }
                    if eighth || (hat16 && c.s.drums == Drums::Pop) {
                        let accent = if beat { 0.35 } else { 0.25 };
                        if c.s.drums == Drums::Shuffle && !beat && step % 4 != 2 {
                            continue;
                        }
                        kit.play(buf, rng, 7, t, accent * v, |b, r| {
                            dsp::noise_hit(b, r, 0.0, 1.0, hat_hp, hat_decay)
                        });
                    }
                }
                Drums::Jazz => {
                    // Ride: 1, 2, 2-and (swung), 3, 4, 4-and.
                    if beat || step == 6 || step == 14 {
                        kit.play(buf, rng, 8, t, 0.3 * v, |b, r| dsp::ride(b, r, 0.0, 1.0));
                    }
                    if step == 4 || step == 12 {
                        kit.play(buf, rng, 9, t, 0.15 * v, |b, r| {
                            dsp::noise_hit(b, r, 0.0, 1.0, 4000.0, 0.02)
                        });
                    }
                    if beat {
                        kit.play(buf, rng, 10, t, 0.25 * v, |b, _| {
                            dsp::kick(b, 0.0, 1.0, kick_tune, 0.1)
                        });
                    }
                    if eighth && rng.random_bool(0.12) {
                        kit.play(buf, rng, 11, t, 0.35 * v, |b, r| {
                            dsp::snare(b, r, 0.0, 1.0, snare_tune, snap)
                        });
                    }
                }
                Drums::Disco => {
                    if beat {
                        kit.play(buf, rng, 12, t, v, |b, _| {
                            dsp::kick(b, 0.0, 1.0, kick_tune, kick_decay)
                        });
                    }
                    if step == 4 || step == 12 {
                        kit.play(buf, rng, 13, t, 0.6 * v, |b, r| dsp::clap(b, r, 0.0, 1.0));
                        kit.play(buf, rng, 14, t, 0.6 * v, |b, r| {
                            dsp::snare(b, r, 0.0, 1.0, snare_tune, snap)
                        });
                    }
                    if step % 4 == 2 {
                        kit.play(buf, rng, 15, t, 0.35 * v, |b, r| {
                            dsp::noise_hit(b, r, 0.0, 1.0, hat_hp * 0.8, 0.18)
                        });
                    } else {
                        kit.play(buf, rng, 16, t, 0.15 * v, |b, r| {
                            dsp::noise_hit(b, r, 0.0, 1.0, hat_hp, hat_decay)
                        });
                    }
                }
                Drums::HipHop => {
                    let kick = matches!(step, 0 | 7 | 10) || (step == 3 && bar % 2 == 1);
                    if kick {
                        kit.play(buf, rng, 17, t, v, |b, _| {
                            dsp::kick(b, 0.0, 1.0, kick_tune * 0.9, kick_decay * 1.5)
                        });
                    }
                    if step == 4 || step == 12 {
                        kit.play(buf, rng, 18, t, v, |b, r| {
                            dsp::snare(b, r, 0.0, 1.0, snare_tune, snap)
                        });
                        if rng.random_bool(0.5) {
                            kit.play(buf, rng, 19, t, 0.4 * v, |b, r| dsp::clap(b, r, 0.0, 1.0));
                        }
                    }
                    if eighth || hat16 {
                        kit.play(buf, rng, 20, t, 0.2 * v, |b, r| {
                            dsp::noise_hit(b, r, 0.0, 1.0, hat_hp, hat_decay * 0.8)
                        });
                    }
                    if step == 14 && bar % 4 == 3 && rng.random_bool(0.5) {
                        // Hi-hat roll.
                        for k in 1..4 {
                            let tk = t + k as f32 * c.g.spb / 12.0;
                            kit.play(buf, rng, 21, tk, 0.15 * v, |b, r| {
                                dsp::noise_hit(b, r, 0.0, 1.0, hat_hp, hat_decay * 0.6)
                            });
                        }
                    }
                }
                Drums::OneDrop | Drums::Steppers => {
                    let kick = match c.s.drums {
                        Drums::OneDrop => step == 8,
                        _ => beat,
                    };
                    if kick {
                        kit.play(buf, rng, 22, t, v, |b, _| {
                            dsp::kick(b, 0.0, 1.0, kick_tune, kick_decay * 1.3)
                        });
                    }
                    if step == 8 {
                        kit.play(buf, rng, 23, t, 0.5 * v, |b, _| {
                            dsp::tone_hit(b, 0.0, 1.0, 1600.0, 0.025)
                        });
                        kit.play(buf, rng, 24, t, 0.3 * v, |b, r| {
                            dsp::noise_hit(b, r, 0.0, 1.0, 2000.0, 0.03)
                        });
                    }
                    if eighth {
                        kit.play(buf, rng, 25, t, 0.2 * v, |b, r| {
                            dsp::noise_hit(b, r, 0.0, 1.0, hat_hp, hat_decay)
                        });
                    }
                }
                Drums::Metal { double_kick, blast } => {
                    let kick = if double_kick { true } else { eighth };
                    if kick {
                        kit.play(buf, rng, 26, t, 0.8 * v, |b, _| {
                            dsp::kick(b, 0.0, 1.0, kick_tune * 1.1, 0.06)
                        });
                    }
                    let snare = if blast {
                        !beat && eighth
                    } else {
                        step == 4 || step == 12
                    };
                    if snare {
                        kit.play(buf, rng, 27, t, v, |b, r| {
                            dsp::snare(b, r, 0.0, 1.0, snare_tune * 1.1, snap * 1.2)
                        });
                    }
                    if eighth {
                        kit.play(buf, rng, 28, t, 0.3 * v, |b, r| {
                            dsp::noise_hit(b, r, 0.0, 1.0, 3500.0, 0.15)
                        });
                    }
                }
            }
        }
    }
}

fn bass(c: &Ctx, buf: &mut [f32], rng: &mut ChaCha20Rng) {
    let wave = c.s.bass_timbre.wave(c.s.bright);
    let base = 28 + c.s.key + if c.s.key > 6 { 0 } else { 12 };
    let play = |buf: &mut [f32],
                rng: &mut ChaCha20Rng,
                t: f32,
                dur: f32,
                midi: i32,
                amp: f32,
                glide: Option<f32>| {
        let env = c.s.bass_timbre.env(dur);
        let n = Note {
            start: t,
            dur,
            freq: dsp::midi_hz(midi as f32),
            amp: amp * range(rng, 0.85, 1.0),
            vibrato: (0.0, 0.0),
            glide_from: glide,
        };
        dsp::note(buf, &wave, &env, &n);
    };
    let spb = c.g.spb;
    for bar in 0..c.bars {
        if !c.plays(bar, 1) {
            continue;
        }
        for step in 0..16 {
            let (root, quality) = c.chord(bar, step);
            let r = base + root;
            let t = c.t(rng, bar, step);
            match c.s.bass {
                Bass::None => {}
                Bass::Boogie if step % 2 == 0 => {
                    let pattern = [0, 4, 7, 9, 10, 9, 7, 4];
                    play(buf, rng, t, spb * 0.45, r + pattern[step / 2], 0.8, None);
                }
                Bass::Walking if step % 4 == 0 => {
                    let tone = if step == 0 {
                        0
                    } else if step == 12 {
                        // Chromatic approach to the next chord's root.
                        let (next, _) = c.chord(bar + 1, 0);
                        next - root + pick(rng, &[-1, 1])
                    } else {
                        pick(
                            rng,
                            &[
                                quality[1 % quality.len()],
                                quality[2 % quality.len()],
                                2,
                                5,
                                9,
                            ],
                        )
                    };
                    play(buf, rng, t, spb * 0.9, r + tone, 0.8, None);
                }
                Bass::RootFifth if step == 0 || step == 8 => {
                    let tone = if step == 0 { 0 } else { 7 - 12 };
                    play(buf, rng, t, spb * 0.8, r + tone, 0.8, None);
                }
                Bass::Octaves if step % 2 == 0 => {
                    let up = if step % 4 == 2 { 12 } else { 0 };
                    play(buf, rng, t, spb * 0.35, r + up, 0.7, None);
                }
                Bass::Roots8 if step % 2 == 0 => play(buf, rng, t, spb * 0.45, r, 0.7, None),
                Bass::Chug if step % 2 == 0 || rng.random_bool(0.3) => {
                    play(buf, rng, t, spb * 0.22, r, 0.7, None)
                }
                Bass::Sustain if step == 0 => {
                    play(buf, rng, t, 4.0 * spb * 0.95, r, 0.6, None);
                }
                Bass::Sub808 if matches!(step, 0 | 7 | 10) => {
                    let glide =
                        (step == 10 && rng.random_bool(0.4)).then(|| dsp::midi_hz((r + 5) as f32));
                    play(buf, rng, t, spb * 1.5, r, 1.0, glide);
                }
                Bass::Reggae => {
                    // A melodic riff that rests on the downbeat ("the drop").
                    let riff: [Option<i32>; 16] = [
                        None,
                        None,
                        Some(0),
                        None,
                        Some(7),
                        None,
                        Some(12),
                        Some(10),
                        None,
                        None,
                        Some(7),
                        None,
                        Some(5),
                        Some(3),
                        Some(0),
                        None,
                    ];
                    if let Some(tone) = riff[step] {
                        play(buf, rng, t, spb * 0.4, r + tone, 0.9, None);
                    }
                }
                _ => {}
            }
        }
    }
}

fn chord_notes(c: &Ctx, root: i32, quality: &[i32], low: i32) -> Vec<i32> {
    let mut base = 48 + c.s.key + root;
    while base < low {
        base += 12;
    }
    while base >= low + 12 {
        base -= 12;
    }
    quality.iter().map(|q| base + q).collect()
}

fn comp(c: &Ctx, buf: &mut [f32], rng: &mut ChaCha20Rng) {
    let wave = c.s.comp_timbre.wave(c.s.bright);
    let spb = c.g.spb;
    let low = if matches!(c.s.comp, Comp::Power | Comp::Chug) {
        40
    } else {
        53
    };
    let play = |buf: &mut [f32], t: f32, dur: f32, notes: &[i32], amp: f32, spread: f32| {
        let env = c.s.comp_timbre.env(dur);
        let amp = amp / (notes.len() as f32).sqrt();
        for (i, &m) in notes.iter().enumerate() {
            let n = Note {
                start: t + i as f32 * spread,
                dur,
                freq: dsp::midi_hz(m as f32),
                amp,
                vibrato: (0.0, 0.0),
                glide_from: None,
            };
            dsp::note(buf, &wave, &env, &n);
        }
    };
    let strum = [0usize, 4, 6, 10, 12, 14];
    let stabs = [3usize, 6, 10, 14];
    for bar in 0..c.bars {
        if !c.plays(bar, 2) {
            continue;
        }
        for step in 0..16 {
            let (root, quality) = c.chord(bar, step);
            let notes = chord_notes(c, root, quality, low);
            let t = c.t(rng, bar, step);
            let v = range(rng, 0.75, 1.0);
            let new_chord = step == 0 || (c.s.chords_per_bar == 2 && step == 8);
            match c.s.comp {
                Comp::None => {}
                Comp::Pad | Comp::Loop if new_chord => {
                    let dur = 4.0 * spb / c.s.chords_per_bar as f32;
                    play(buf, t, dur * 0.98, &notes, 0.6 * v, 0.0);
                }
                Comp::Arpeggio if step % 2 == 0 => {
                    let i = (step / 2) % (notes.len() + 1);
                    let m = if i == notes.len() {
                        notes[0] + 12
                    } else {
                        notes[i]
                    };
                    play(buf, t, spb * 0.6, &[m], 0.6 * v, 0.0);
                }
                Comp::Strum if strum.contains(&step) => {
                    let spread = if step % 4 == 0 { 0.012 } else { -0.0 };
                    play(buf, t, spb * 0.5, &notes, 0.6 * v, spread);
                }
                Comp::Stabs if stabs.contains(&step) => {
                    play(buf, t, spb * 0.2, &notes, 0.6 * v, 0.0)
                }
                Comp::Skank if step % 4 == 2 => {
                    let up: Vec<i32> = notes.iter().map(|m| m + 12).collect();
                    play(buf, t, spb * 0.12, &up, 0.6 * v, 0.004);
                }
                Comp::Comping if (step % 2 == 0 || step % 4 == 3) && rng.random_bool(0.22) => {
                    play(buf, t, spb * range(rng, 0.3, 1.2), &notes, 0.5 * v, 0.0);
                }
                Comp::Power if step % 2 == 0 => {
                    let dur = if rng.random_bool(0.5) {
                        spb * 0.45
                    } else {
                        spb * 0.5
                    };
                    play(buf, t, dur, &notes, 0.6 * v, 0.0);
                }
                Comp::Chug => {
                    let accent = step % 8 == 0 || rng.random_bool(0.1);
                    if accent {
                        play(buf, t, spb * 0.9, &notes, 0.7 * v, 0.0);
                    } else if rng.random_bool(0.8) {
                        play(buf, t, spb * 0.12, &notes[..2], 0.5 * v, 0.0);
                    }
                }
                _ => {}
            }
        }
    }
}

fn lead(c: &Ctx, buf: &mut [f32], rng: &mut ChaCha20Rng) {
    let wave = c.s.lead_timbre.wave(c.s.bright);
    let spb = c.g.spb;
    let (density, legato, licks) = match c.s.lead {
        Lead::None => return,
        Lead::Melody { density, legato } => (density, legato, false),
        Lead::Licks { density } => (density, 0.8, true),
    };
    let scale = c.s.scale;
    let n_deg = scale.len() as i32;
    let low = match c.s.lead_timbre {
        Timbre::Flute => 72,
        Timbre::Guitar | Timbre::Sax => 57,
        _ => 62,
    };
    let vib = match c.s.lead_timbre {
        Timbre::Vocal | Timbre::Strings | Timbre::Sax => {
            (range(rng, 4.5, 6.5), range(rng, 0.004, 0.012))
        }
        Timbre::Flute => (5.0, 0.003),
        _ => (0.0, 0.0),
    };
    let mut degree = rng.random_range(0..n_deg);
    // Onsets on the 16th grid, with a probability that gives `density` notes per beat on average.
    let p = (density / 4.0).clamp(0.05, 1.0) as f64;
    let mut onsets: Vec<(usize, usize)> = Vec::new();
    for bar in 0..c.bars {
        // Licks come in phrases: play two bars, rest two.
        if !c.plays(bar, 3) || (licks && bar % 4 >= 2) {
            continue;
        }
        for step in 0..16 {
            let strong = step % 4 == 0;
            let prob = if strong { (p * 1.5).min(1.0) } else { p * 0.8 };
            if rng.random_bool(prob) {
                onsets.push((bar, step));
            }
        }
    }
    for (i, &(bar, step)) in onsets.iter().enumerate() {
        let t = c.t(rng, bar, step);
        let next = onsets.get(i + 1).map_or(t + spb, |&(b, s)| c.g.at(b, s));
        let gap = (next - t).clamp(0.05, 2.0 * spb);
        degree += pick(rng, &[-2, -1, -1, 0, 1, 1, 2, 3, -3]);
        degree = degree.clamp(0, 2 * n_deg - 1);
        let midi = low + c.s.key % 12 + 12 * (degree / n_deg) + scale[(degree % n_deg) as usize];
        let glide = (licks && rng.random_bool(0.3)).then(|| dsp::midi_hz((midi - 2) as f32));
        let n = Note {
            start: t,
            dur: gap * legato,
            freq: dsp::midi_hz(midi as f32),
            amp: range(rng, 0.6, 1.0),
            vibrato: vib,
            glide_from: glide,
        };
        dsp::note(buf, &wave, &c.s.lead_timbre.env(gap), &n);
    }
}

/// Renders one track of `genre`, `len` samples long, peak-normalised to a random level in [0.5, 0.95].
pub fn render(genre: &str, len: usize, rng: &mut ChaCha20Rng) -> Vec<f32> {
    let s = style(genre, rng);
    let spb = 60.0 / s.bpm;
    let g = Grid {
        spb,
        swing8: s.swing8,
        swing16: s.swing16,
        offset: range(rng, 0.0, 4.0 * spb),
        rubato: s.rubato,
        rubato_period: range(rng, 4.0, 10.0),
    };
    let bars = (len as f32 / SR / g.bar_len()).ceil() as usize + 2;
    let active = (0..bars.div_ceil(4) + 1)
        .map(|_| {
            [
                rng.random_bool(0.92),
                rng.random_bool(0.9),
                rng.random_bool(0.88),
                rng.random_bool(0.8),
            ]
        })
        .collect();
    let c = Ctx {
        s: &s,
        g,
        bars,
        active,
    };
    let mut layers = vec![vec![0.0f32; len]; 4];
    if s.drums != Drums::None {
        drums(&c, &mut layers[0], rng);
    }
    bass(&c, &mut layers[1], rng);
    comp(&c, &mut layers[2], rng);
    lead(&c, &mut layers[3], rng);

    if s.comp_drive > 1.0 {
        dsp::distort(&mut layers[2], s.comp_drive, range(rng, 3500.0, 6000.0));
    }
    if s.lead_drive > 1.0 && s.lead_timbre == Timbre::Guitar {
        dsp::distort(&mut layers[3], s.lead_drive, range(rng, 3500.0, 6000.0));
    }
    if s.echo > 0.0 {
        dsp::echo(&mut layers[2], 0.75 * spb, s.echo, 0.6);
    }
    let mut mix = vec![0.0f32; len];
    for (k, layer) in layers.iter().enumerate() {
        let p = dsp::peak(layer);
        if p > 0.0 {
            let gain = s.levels[k] / p * if k == 0 { 1.0 } else { 0.8 };
            for (m, v) in mix.iter_mut().zip(layer) {
                *m += gain * v;
            }
        }
    }
    dsp::reverb(&mut mix, s.reverb, range(rng, 0.3, 1.0));
    if s.swell > 0.0 {
        let period = range(rng, 6.0, 20.0);
        let phase = rng.random::<f32>();
        for (i, v) in mix.iter_mut().enumerate() {
            let x = (phase + i as f32 / SR / period).fract();
            *v *= 1.0 - s.swell * 0.5 * (1.0 + dsp::sine(x));
        }
    }
    dsp::one_pole_lowpass(&mut mix, s.bandwidth_hz);
    dsp::one_pole_highpass(&mut mix, 30.0);
    let p = dsp::peak(&mix).max(1e-6);
    for v in &mut mix {
        *v = dsp::soft_clip(*v / p * s.squash) / dsp::soft_clip(s.squash);
    }
    let hiss_lp = range(rng, 3000.0, 10000.0);
    dsp::noise_floor(&mut mix, rng, s.hiss, hiss_lp, s.hum, s.crackle);
    let target = range(rng, 0.5, 0.95) / dsp::peak(&mix).max(1e-6);
    for v in &mut mix {
        *v *= target;
    }
    mix
}
