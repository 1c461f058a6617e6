//! Decoder tests over small files written into a temp dir: exact sample values per format, errors that name
//! the file, resampling (length, alignment, frequency, anti-aliasing) and determinism.

use std::f64::consts::PI;
use std::path::{Path, PathBuf};

use super::*;

fn write_wav_int(path: &Path, rate: u32, channels: u16, bits: u16, samples: &[i32]) {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: bits,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for &s in samples {
        match bits {
            8 => w.write_sample(s as i8).unwrap(),
            16 => w.write_sample(s as i16).unwrap(),
            _ => w.write_sample(s).unwrap(),
        }
    }
    w.finalize().unwrap();
}

fn write_wav_f32(path: &Path, rate: u32, channels: u16, samples: &[f32]) {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for &s in samples {
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
}

/// A Sun .au file: 24-byte header (+ `annotation` bytes), then `data` as given.
fn au_bytes(
    encoding: u32,
    rate: u32,
    channels: u32,
    data_size: u32,
    annotation: usize,
    data: &[u8],
) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b".snd");
    b.extend_from_slice(&(24 + annotation as u32).to_be_bytes());
    b.extend_from_slice(&data_size.to_be_bytes());
    b.extend_from_slice(&encoding.to_be_bytes());
    b.extend_from_slice(&rate.to_be_bytes());
    b.extend_from_slice(&channels.to_be_bytes());
    b.extend(std::iter::repeat_n(0u8, annotation));
    b.extend_from_slice(data);
    b
}

fn pcm16_be(values: &[i16]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_be_bytes()).collect()
}

fn sine(rate: u32, freq: f64, amp: f64, n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| amp * (2.0 * PI * freq * i as f64 / f64::from(rate)).sin())
        .collect()
}

fn expect_err(path: &Path, target: u32) -> AudioError {
    match decode_file(path, target) {
        Ok(d) => panic!(
            "{} decoded to {} samples, expected an error",
            path.display(),
            d.samples.len()
        ),
        Err(e) => {
            assert_eq!(e.path, path, "error must name the file");
            assert!(e.to_string().contains(&path.display().to_string()));
            e
        }
    }
}

fn tmp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    (dir, root)
}

#[test]
fn pcm16_mono_is_value_over_32768() {
    let (_d, root) = tmp();
    let path = root.join("a.wav");
    let values = [0, 1, -1, 32767, -32768, 12345];
    write_wav_int(&path, 22050, 1, 16, &values);
    let d = decode_file(&path, 22050).unwrap();
    let want: Vec<f32> = values.iter().map(|&v| v as f32 / 32768.0).collect();
    assert_eq!(d.samples, want);
    assert_eq!((d.source_rate, d.source_channels), (22050, 1));
    assert_eq!(d.samples[4], -1.0);
}

#[test]
fn pcm8_pcm24_pcm32_and_float_use_libsndfile_scale() {
    let (_d, root) = tmp();
    let p8 = root.join("a8.wav");
    write_wav_int(&p8, 22050, 1, 8, &[-128, 0, 127, 64]);
    assert_eq!(
        decode_file(&p8, 22050).unwrap().samples,
        vec![-1.0, 0.0, 127.0 / 128.0, 0.5]
    );

    let p24 = root.join("a24.wav");
    write_wav_int(&p24, 22050, 1, 24, &[-8_388_608, 8_388_607, 1, 4_194_304]);
    assert_eq!(
        decode_file(&p24, 22050).unwrap().samples,
        vec![-1.0, 8_388_607.0 / 8_388_608.0, 1.0 / 8_388_608.0, 0.5]
    );

    let p32 = root.join("a32.wav");
    write_wav_int(&p32, 22050, 1, 32, &[i32::MIN, 1 << 30, 0]);
    assert_eq!(
        decode_file(&p32, 22050).unwrap().samples,
        vec![-1.0, 0.5, 0.0]
    );

    let pf = root.join("af.wav");
    let values = [0.25f32, -0.75, 1.0e-7, 0.0];
    write_wav_f32(&pf, 22050, 1, &values);
    assert_eq!(decode_file(&pf, 22050).unwrap().samples, values.to_vec());
}

#[test]
fn extensible_24_bit_wav_is_read() {
    // hound writes WAVE_FORMAT_EXTENSIBLE for 24-bit and for more than two channels.
    let (_d, root) = tmp();
    let path = root.join("x.wav");
    write_wav_int(
        &path,
        22050,
        3,
        24,
        &[3 << 20, 0, 0, -(3 << 20), 0, 3 << 20],
    );
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        u16::from_le_bytes([bytes[20], bytes[21]]),
        0xFFFE,
        "not EXTENSIBLE"
    );
    let d = decode_file(&path, 22050).unwrap();
    assert_eq!(d.source_channels, 3);
    let unit = (3 << 20) as f32 / 8_388_608.0;
    assert_eq!(d.samples, vec![unit / 3.0, 0.0]);
}

#[test]
fn stereo_is_mean_of_channels() {
    let (_d, root) = tmp();
    let path = root.join("s.wav");
    write_wav_int(&path, 22050, 2, 16, &[1000, -2000, 32767, 32767, -32768, 0]);
    let d = decode_file(&path, 22050).unwrap();
    assert_eq!(d.source_channels, 2);
    let f = |v: i32| v as f32 / 32768.0;
    assert_eq!(
        d.samples,
        vec![
            (f(1000) + f(-2000)) / 2.0,
            f(32767),
            (f(-32768) + 0.0) / 2.0
        ]
    );
}

#[test]
fn au_pcm16_header_and_annotation() {
    let (_d, root) = tmp();
    let values = [0i16, 1, -1, 32767, -32768, -12345];
    let data = pcm16_be(&values);
    let want: Vec<f32> = values.iter().map(|&v| f32::from(v) / 32768.0).collect();

    // The GTZAN header: offset 24, exact data size.
    let path = root.join("blues.00000.au");
    let bytes = au_bytes(3, 22050, 1, data.len() as u32, 0, &data);
    assert_eq!(
        &bytes[..24],
        &[
            0x2e, 0x73, 0x6e, 0x64, 0, 0, 0, 0x18, 0, 0, 0, 12, 0, 0, 0, 3, 0, 0, 0x56, 0x22, 0, 0,
            0, 1
        ]
    );
    std::fs::write(&path, bytes).unwrap();
    let d = decode_file(&path, 22050).unwrap();
    assert_eq!(d.samples, want);
    assert_eq!((d.source_rate, d.source_channels), (22050, 1));

    // An annotation after the header, and "size unknown: read to end of file".
    let path = root.join("annotated.au");
    std::fs::write(&path, au_bytes(3, 22050, 1, u32::MAX, 8, &data)).unwrap();
    assert_eq!(decode_file(&path, 22050).unwrap().samples, want);

    // Data size smaller than the file: trailing bytes are not audio.
    let path = root.join("short.au");
    let mut bytes = au_bytes(3, 22050, 1, 4, 0, &data);
    bytes.extend_from_slice(b"trailer");
    std::fs::write(&path, bytes).unwrap();
    assert_eq!(
        decode_file(&path, 22050).unwrap().samples,
        want[..2].to_vec()
    );
}

#[test]
fn au_other_linear_encodings_and_stereo() {
    let (_d, root) = tmp();
    let path = root.join("pcm8.au");
    std::fs::write(&path, au_bytes(2, 22050, 1, 3, 0, &[0x80, 0x40, 0x7f])).unwrap();
    assert_eq!(
        decode_file(&path, 22050).unwrap().samples,
        vec![-1.0, 0.5, 127.0 / 128.0]
    );

    let path = root.join("pcm24.au");
    std::fs::write(
        &path,
        au_bytes(4, 22050, 1, 6, 0, &[0x80, 0, 0, 0x40, 0, 0]),
    )
    .unwrap();
    assert_eq!(decode_file(&path, 22050).unwrap().samples, vec![-1.0, 0.5]);

    let path = root.join("pcm32.au");
    std::fs::write(
        &path,
        au_bytes(5, 22050, 1, 8, 0, &[0x80, 0, 0, 0, 0xc0, 0, 0, 0]),
    )
    .unwrap();
    assert_eq!(decode_file(&path, 22050).unwrap().samples, vec![-1.0, -0.5]);

    let path = root.join("float.au");
    let data: Vec<u8> = [0.25f32, -0.125]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    std::fs::write(&path, au_bytes(6, 22050, 1, 8, 0, &data)).unwrap();
    assert_eq!(
        decode_file(&path, 22050).unwrap().samples,
        vec![0.25, -0.125]
    );

    let path = root.join("stereo.au");
    std::fs::write(
        &path,
        au_bytes(3, 22050, 2, 4, 0, &pcm16_be(&[16384, -8192])),
    )
    .unwrap();
    let d = decode_file(&path, 22050).unwrap();
    assert_eq!(
        (d.samples.clone(), d.source_channels),
        (vec![(0.5 - 0.25) / 2.0], 2)
    );
}

#[test]
fn au_faults_are_named() {
    let (_d, root) = tmp();
    let data = pcm16_be(&[1, 2, 3, 4]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "mulaw.au",
            au_bytes(1, 8000, 1, 4, 0, &[1, 2, 3, 4]),
            "unsupported .au encoding 1 (µ-law)",
        ),
        (
            "alaw.au",
            au_bytes(27, 8000, 1, 4, 0, &[1, 2, 3, 4]),
            "unsupported .au encoding 27 (A-law)",
        ),
        (
            "f64.au",
            au_bytes(7, 8000, 1, 8, 0, &[0; 8]),
            "unsupported .au encoding 7 (64-bit float)",
        ),
        (
            "trunc.au",
            au_bytes(3, 22050, 1, 100, 0, &data),
            "truncated .au: header declares 100 data bytes, file holds 8",
        ),
        (
            "odd.au",
            au_bytes(3, 22050, 1, u32::MAX, 0, &data[..7]),
            "not a whole number of 2-byte frames",
        ),
        (
            "nochan.au",
            au_bytes(3, 22050, 0, 8, 0, &data),
            "0 channels",
        ),
        ("norate.au", au_bytes(3, 0, 1, 8, 0, &data), "sample rate 0"),
        (
            "nodata.au",
            au_bytes(3, 22050, 1, 0, 0, &[]),
            "no audio samples",
        ),
        (
            "header.au",
            b".snd\0\0\0\x18".to_vec(),
            "truncated .au header",
        ),
    ];
    for (name, bytes, reason) in cases {
        let path = root.join(name);
        std::fs::write(&path, bytes).unwrap();
        let e = expect_err(&path, 22050);
        assert!(
            e.reason.contains(reason),
            "{name}: got {:?}, want {reason:?}",
            e.reason
        );
    }
    // The offset field pointing inside the header is refused, not read as audio.
    let path = root.join("offset.au");
    let mut bytes = au_bytes(3, 22050, 1, 8, 0, &data);
    bytes[7] = 16;
    std::fs::write(&path, bytes).unwrap();
    assert!(expect_err(&path, 22050)
        .reason
        .contains("inside the 24-byte header"));
}

#[test]
fn truncated_wav_fails_though_its_header_opens() {
    let (_d, root) = tmp();
    let path = root.join("t.wav");
    let values: Vec<i32> = (0..1000).collect();
    write_wav_int(&path, 22050, 1, 16, &values);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    assert!(
        hound::WavReader::open(&path).is_ok(),
        "hound opens truncated files"
    );
    let e = expect_err(&path, 22050);
    assert!(
        e.reason
            .contains("truncated WAV: data chunk declares 1000 samples, file ends after 950"),
        "{}",
        e.reason
    );
}

#[test]
fn content_decides_and_misnamed_files_fail() {
    let (_d, root) = tmp();
    let random = root.join("jazz.00054.wav");
    std::fs::write(&random, b"\x12\x34garbage that is not audio at all").unwrap();
    assert!(expect_err(&random, 22050)
        .reason
        .starts_with("not a WAV file: no RIFF tag (starts with 12 34"));

    let au_as_wav = root.join("renamed.wav");
    std::fs::write(&au_as_wav, au_bytes(3, 22050, 1, 4, 0, &pcm16_be(&[1, 2]))).unwrap();
    assert_eq!(
        expect_err(&au_as_wav, 22050).reason,
        "not a WAV file: no RIFF tag (content is a Sun .au file)"
    );

    let wav_as_au = root.join("renamed.au");
    write_wav_int(&wav_as_au, 22050, 1, 16, &[1, 2]);
    assert!(expect_err(&wav_as_au, 22050)
        .reason
        .starts_with("not a Sun .au file"));

    // Without a telling extension the bytes decide.
    let bare = root.join("track");
    write_wav_int(&bare, 22050, 1, 16, &[16384]);
    assert_eq!(decode_file(&bare, 22050).unwrap().samples, vec![0.5]);
    let bare_au = root.join("track.bin");
    std::fs::write(&bare_au, au_bytes(3, 22050, 1, 2, 0, &pcm16_be(&[-16384]))).unwrap();
    assert_eq!(decode_file(&bare_au, 22050).unwrap().samples, vec![-0.5]);
    let unknown = root.join("notes.txt");
    std::fs::write(&unknown, b"hello").unwrap();
    assert!(expect_err(&unknown, 22050)
        .reason
        .starts_with("unrecognised audio format"));

    let empty = root.join("empty.wav");
    std::fs::write(&empty, b"").unwrap();
    assert_eq!(expect_err(&empty, 22050).reason, "empty file");

    let missing = root.join("missing.wav");
    expect_err(&missing, 22050);
}

#[test]
fn malformed_and_degenerate_wavs_fail() {
    let (_d, root) = tmp();
    let zero = root.join("zero.wav");
    write_wav_int(&zero, 22050, 1, 16, &[]);
    assert_eq!(expect_err(&zero, 22050).reason, "no audio samples");

    let nan = root.join("nan.wav");
    write_wav_f32(&nan, 22050, 2, &[0.0, 0.0, 0.1, f32::NAN]);
    assert_eq!(
        expect_err(&nan, 22050).reason,
        "non-finite sample at frame 1 (channel 1)"
    );

    // A RIFF header cut inside the fmt chunk.
    let cut = root.join("cut.wav");
    write_wav_int(&cut, 22050, 1, 16, &[1, 2, 3]);
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..20]).unwrap();
    assert!(!expect_err(&cut, 22050).reason.is_empty());

    let ok = root.join("ok.wav");
    write_wav_int(&ok, 22050, 1, 16, &[1]);
    assert_eq!(
        expect_err(&ok, 0).reason,
        "target sample rate 0 Hz is outside the accepted 1000..=768000 Hz"
    );
}

/// Max |a - b| over `range`.
fn max_err(a: &[f32], b: &[f64], range: std::ops::Range<usize>) -> f64 {
    range
        .map(|i| (f64::from(a[i]) - b[i]).abs())
        .fold(0.0, f64::max)
}

#[test]
fn downsampling_stereo_44k1_keeps_frequency_alignment_and_length() {
    let (_d, root) = tmp();
    let path = root.join("stereo44.wav");
    let n = 44100 * 2 + 1;
    let left = sine(44100, 440.0, 0.5, n);
    let right = sine(44100, 440.0, 0.25, n);
    let interleaved: Vec<f32> = left
        .iter()
        .zip(&right)
        .flat_map(|(l, r)| [*l as f32, *r as f32])
        .collect();
    write_wav_f32(&path, 44100, 2, &interleaved);
    let d = decode_file(&path, 22050).unwrap();
    assert_eq!((d.source_rate, d.source_channels), (44100, 2));
    assert_eq!(d.samples.len(), 44101, "round(88201 / 2)");
    let want = sine(22050, 440.0, 0.375, d.samples.len());
    // Away from the edges (where the signal starts/stops abruptly) the result is the ideal sine, sample-aligned:
    // a one-sample shift would give errors near 0.375 * 2*pi*440/22050 = 0.047.
    let err = max_err(&d.samples, &want, 1000..d.samples.len() - 1000);
    assert!(err < 1e-4, "interior error {err}");
    // Zero crossings: 440 Hz over 2 s is 1760 of them.
    let crossings = d
        .samples
        .windows(2)
        .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
        .count();
    assert!(
        (1758..=1762).contains(&crossings),
        "{crossings} zero crossings"
    );
}

#[test]
fn downsampling_removes_content_above_the_new_nyquist() {
    let (_d, root) = tmp();
    let path = root.join("alias.wav");
    let tone: Vec<f32> = sine(44100, 15000.0, 0.5, 44100)
        .iter()
        .map(|v| *v as f32)
        .collect();
    write_wav_f32(&path, 44100, 1, &tone);
    let d = decode_file(&path, 22050).unwrap();
    let interior = &d.samples[1000..d.samples.len() - 1000];
    let rms = (interior.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / interior.len() as f64)
        .sqrt();
    // Without an anti-aliasing filter this would fold to 7050 Hz at RMS 0.35.
    assert!(rms < 1e-3, "aliased rms {rms}");
}

#[test]
fn upsampling_11025_doubles_length_and_keeps_the_sine() {
    let (_d, root) = tmp();
    let path = root.join("up.wav");
    let n = 11025;
    let src: Vec<i32> = sine(11025, 300.0, 16000.0, n)
        .iter()
        .map(|v| v.round() as i32)
        .collect();
    write_wav_int(&path, 11025, 1, 16, &src);
    let d = decode_file(&path, 22050).unwrap();
    assert_eq!(d.samples.len(), 2 * n);
    let want = sine(22050, 300.0, 16000.0 / 32768.0, d.samples.len());
    // Tolerance covers the 16-bit quantisation of the source (1.5e-5) plus resampler ripple.
    let err = max_err(&d.samples, &want, 2000..d.samples.len() - 2000);
    assert!(err < 2e-4, "interior error {err}");
    // Original samples land on even output indices.
    for i in (2000..4000).step_by(97) {
        let diff = (d.samples[2 * i] - src[i] as f32 / 32768.0).abs();
        assert!(diff < 2e-4, "sample {i}: {diff}");
    }
}

#[test]
fn resampled_length_is_rounded_ratio() {
    assert_eq!(resample::output_len(48001, 48000, 22050).unwrap(), 22050);
    assert_eq!(resample::output_len(3, 44100, 22050).unwrap(), 2);
    assert_eq!(resample::output_len(661794, 22050, 44100).unwrap(), 1323588);
    let (_d, root) = tmp();
    let path = root.join("48k.wav");
    let tone: Vec<f32> = sine(48000, 1000.0, 0.5, 48001)
        .iter()
        .map(|v| *v as f32)
        .collect();
    write_wav_f32(&path, 48000, 1, &tone);
    let d = decode_file(&path, 22050).unwrap();
    assert_eq!(d.samples.len(), 22050);
    let want = sine(22050, 1000.0, 0.5, d.samples.len());
    assert!(max_err(&d.samples, &want, 1000..21000) < 1e-4);
}

#[test]
fn decoding_is_deterministic_across_threads() {
    let (_d, root) = tmp();
    let path = root.join("det.wav");
    let left = sine(44100, 523.0, 0.4, 30000);
    let interleaved: Vec<f32> = left
        .iter()
        .flat_map(|v| [*v as f32, (*v * 0.3) as f32])
        .collect();
    write_wav_f32(&path, 44100, 2, &interleaved);
    let digest_in = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            use rayon::prelude::*;
            (0..4)
                .into_par_iter()
                .map(|_| audio_digest(&decode_file(&path, 22050).unwrap().samples))
                .collect::<Vec<_>>()
        })
    };
    let one = digest_in(1);
    let four = digest_in(4);
    assert_eq!(one, four);
    assert!(one.iter().all(|d| d == &one[0]));
}

#[test]
fn audio_digest_is_blake3_of_le_f32() {
    let samples: Vec<f32> = (0..10_000).map(|i| (i as f32 * 0.001).sin()).collect();
    let bytes: Vec<u8> = samples.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(
        audio_digest(&samples),
        blake3::hash(&bytes).to_hex().to_string()
    );
    let mut other = samples.clone();
    other[9999] = -other[9999];
    assert_ne!(audio_digest(&samples), audio_digest(&other));
}

#[test]
fn header_values_that_would_allocate_without_bound_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // A few kB declared at 10 Hz would resample to 2,205x as many samples.
    let slow = root.join("slow.wav");
    write_wav_int(&slow, 10, 1, 16, &[1; 4000]);
    assert_eq!(
        expect_err(&slow, 22050).reason,
        "sample rate 10 Hz is outside the accepted 1000..=768000 Hz"
    );
    let fast = root.join("fast.au");
    std::fs::write(&fast, au_bytes(3, 4_000_000, 1, 8, 0, &[0; 8])).unwrap();
    assert!(
        expect_err(&fast, 22050)
            .reason
            .contains("sample rate 4000000 Hz is outside"),
        "{}",
        expect_err(&fast, 22050).reason
    );
    let wide = root.join("wide.au");
    std::fs::write(&wide, au_bytes(3, 22050, 5000, 10000, 0, &[0; 10000])).unwrap();
    assert_eq!(
        expect_err(&wide, 22050).reason,
        ".au header: 5000 channels: the accepted range is 1..=64"
    );
    // Within the rate limits, but upsampling 1 kHz to 768 kHz would pass the decoded-length bound.
    let long = root.join("long.wav");
    write_wav_int(&long, 1000, 1, 16, &vec![0; 200_000]);
    let reason = expect_err(&long, 768_000).reason;
    assert!(
        reason.starts_with("too long: 200000 samples at 1000 Hz decode to 153600000 samples"),
        "{reason}"
    );
}
