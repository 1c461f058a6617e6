//! Sun/NeXT .au, the container of the original GTZAN (`genres/<genre>/<genre>.000NN.au`, 16-bit PCM).
//!
//! Layout: a big-endian header of six u32 (magic `.snd`, data offset >= 24, data size or 0xFFFFFFFF for "to
//! end of file", encoding, sample rate, channels), an annotation, then interleaved big-endian samples.
//! Linear PCM (8/16/24/32-bit) and 32-bit float are read; companded and 64-bit encodings are refused by name.
//! A file shorter than its declared data size, or holding a partial frame, is an error, never padded.

use std::path::Path;

use super::Interleaved;

pub(super) const MAGIC: &[u8; 4] = b".snd";
const HEADER_LEN: usize = 24;
const SIZE_UNKNOWN: u32 = 0xFFFF_FFFF;

/// How one sample is stored, for the encodings read here.
#[derive(Debug, Clone, Copy)]
enum Encoding {
    Pcm8,
    Pcm16,
    Pcm24,
    Pcm32,
    Float32,
}

impl Encoding {
    fn from_code(code: u32) -> Result<Encoding, String> {
        Ok(match code {
            2 => Encoding::Pcm8,
            3 => Encoding::Pcm16,
            4 => Encoding::Pcm24,
            5 => Encoding::Pcm32,
            6 => Encoding::Float32,
            1 => return Err("unsupported .au encoding 1 (µ-law)".into()),
            7 => return Err("unsupported .au encoding 7 (64-bit float)".into()),
            23..=26 => return Err(format!("unsupported .au encoding {code} (G.72x ADPCM)")),
            27 => return Err("unsupported .au encoding 27 (A-law)".into()),
            other => return Err(format!("unsupported .au encoding {other}")),
        })
    }

    fn bytes(self) -> usize {
        match self {
            Encoding::Pcm8 => 1,
            Encoding::Pcm16 => 2,
            Encoding::Pcm24 => 3,
            Encoding::Pcm32 | Encoding::Float32 => 4,
        }
    }

    /// One sample to f32 with libsndfile's scale (full scale 2^(bits-1)).
    fn decode(self, b: &[u8]) -> f32 {
        match self {
            Encoding::Pcm8 => f32::from(i8::from_be_bytes([b[0]])) / 128.0,
            Encoding::Pcm16 => f32::from(i16::from_be_bytes([b[0], b[1]])) / 32768.0,
            Encoding::Pcm24 => {
                // Place the 24 bits at the top of an i32 so the shift back sign-extends.
                let v = i32::from_be_bytes([b[0], b[1], b[2], 0]) >> 8;
                (f64::from(v) / 8_388_608.0) as f32
            }
            Encoding::Pcm32 => {
                (f64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]])) / 2_147_483_648.0) as f32
            }
            Encoding::Float32 => f32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        }
    }
}

pub(super) fn read(path: &Path) -> Result<Interleaved, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    parse(&bytes)
}

fn parse(bytes: &[u8]) -> Result<Interleaved, String> {
    if bytes.len() < HEADER_LEN {
        return Err(format!(
            "truncated .au header: {} bytes, need {HEADER_LEN}",
            bytes.len()
        ));
    }
    if &bytes[..4] != MAGIC {
        return Err("not a Sun .au file: no .snd magic".into());
    }
    let field = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let data_offset = field(4);
    let data_size = field(8);
    let encoding = Encoding::from_code(field(12))?;
    let rate = field(16);
    let channels = field(20);
    super::check_format(rate, channels).map_err(|e| format!(".au header: {e}"))?;
    let channels =
        u16::try_from(channels).map_err(|_| format!(".au header declares {channels} channels"))?;
    let offset = usize::try_from(data_offset).unwrap_or(usize::MAX);
    if offset < HEADER_LEN {
        return Err(format!(
            ".au data offset {data_offset} is inside the 24-byte header"
        ));
    }
    if offset > bytes.len() {
        return Err(format!(
            "truncated .au: data offset {data_offset} is beyond the end of the file ({} bytes)",
            bytes.len()
        ));
    }
    let available = bytes.len() - offset;
    let len = if data_size == SIZE_UNKNOWN {
        available
    } else {
        let declared = usize::try_from(data_size).unwrap_or(usize::MAX);
        if declared > available {
            return Err(format!(
                "truncated .au: header declares {data_size} data bytes, file holds {available}"
            ));
        }
        declared
    };
    let frame = encoding.bytes() * usize::from(channels);
    if !len.is_multiple_of(frame) {
        return Err(format!(
            ".au data is {len} bytes, not a whole number of {frame}-byte frames"
        ));
    }
    let samples = bytes[offset..offset + len]
        .chunks_exact(encoding.bytes())
        .map(|b| encoding.decode(b))
        .collect();
    Ok(Interleaved {
        samples,
        rate,
        channels,
        warnings: Vec::new(),
    })
}
