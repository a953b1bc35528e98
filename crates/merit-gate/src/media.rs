//! Images (dimensions through `imagesize`) and audio (WAV, FLAC and MP3
//! durations, parsed by hand with bounded loops).

use merit_core::Format;

/// Width and height of an image, in pixels.
pub(crate) fn image_size(bytes: &[u8]) -> Result<(u64, u64), String> {
    let result = std::panic::catch_unwind(|| imagesize::blob_size(bytes));
    match result {
        Ok(Ok(size)) if size.width > 0 && size.height > 0 => {
            // A BMP stored top-down has a negative height, read here as a huge u32.
            let (w, h) = (size.width as u64, size.height as u64);
            let h = if bytes.starts_with(b"BM") && h > i32::MAX as u64 && h <= u32::MAX as u64 {
                (1u64 << 32) - h
            } else {
                h
            };
            Ok((w, h))
        }
        Ok(Ok(_)) => Err("the image declares a zero width or height".to_string()),
        Ok(Err(e)) => Err(format!("the image dimensions cannot be read: {e}")),
        Err(_) => Err("the image dimensions cannot be read".to_string()),
    }
}

/// PNG: the compressed image data (its IDAT chunks) must be able to hold
/// the pixels the header declares. Deflate expands at most 1032:1, so a
/// 60000 × 60000 image with a few rows of data is refused as what it is (a
/// decompression bomb or a broken file) before anyone decodes it.
pub(crate) fn png_data_fits(bytes: &[u8], width: u64, height: u64) -> Result<(), String> {
    let (Some(&depth), Some(&color)) = (bytes.get(24), bytes.get(25)) else {
        return Err("the PNG header is cut short".to_string());
    };
    let channels: u64 = match color {
        0 | 3 => 1,
        4 => 2,
        2 => 3,
        6 => 4,
        other => return Err(format!("the PNG declares an unknown colour type {other}")),
    };
    let row_bits = width.saturating_mul(channels).saturating_mul(depth as u64);
    let raw = height.saturating_mul(1 + row_bits.div_ceil(8));
    let mut idat = 0u64;
    let mut at = 8usize;
    while let (Some(len), Some(kind)) = (u32be(bytes, at), bytes.get(at + 4..at + 8)) {
        let len = len as usize;
        let data = bytes.len().saturating_sub(at + 8).min(len);
        if kind == b"IDAT" {
            idat += data as u64;
        }
        if kind == b"IEND" {
            break;
        }
        at = at.saturating_add(12).saturating_add(len);
    }
    if idat.saturating_mul(1032) < raw {
        return Err(format!(
            "the image declares {width} × {height} pixels, which need at least {} bytes of compressed data, \
             and holds {idat}",
            raw.div_ceil(1032)
        ));
    }
    Ok(())
}

/// What an audio file declares about itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Audio {
    pub duration_seconds: f64,
    pub sample_rate: u32,
    pub channels: u16,
}

/// Parses an audio file of the given format.
pub(crate) fn audio(format: Format, bytes: &[u8]) -> Result<Audio, String> {
    let audio = match format {
        Format::Wav => wav(bytes),
        Format::Flac => flac(bytes),
        Format::Mp3 => mp3(bytes),
        _ => Err("not an audio format".to_string()),
    }?;
    if !audio.duration_seconds.is_finite() || audio.duration_seconds < 0.0 {
        return Err("the recording's duration cannot be computed".to_string());
    }
    Ok(audio)
}

fn u16le(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32le(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u32be(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// RIFF/WAVE: the `fmt ` chunk gives the rate and byte rate, the `data` chunk the length.
fn wav(b: &[u8]) -> Result<Audio, String> {
    if b.len() < 12 || &b[0..4] != b"RIFF" || &b[8..12] != b"WAVE" {
        return Err("not a RIFF/WAVE file".to_string());
    }
    let mut pos = 12usize;
    let mut fmt: Option<(u16, u32, u32, u16)> = None;
    let mut data_len: Option<u64> = None;
    // Each chunk header is 8 bytes, so this loop runs at most len / 8 times.
    while pos + 8 <= b.len() {
        let id = &b[pos..pos + 4];
        let size = u32le(b, pos + 4).unwrap_or(0) as u64;
        let body = pos + 8;
        let available = (b.len() - body) as u64;
        match id {
            b"fmt " => {
                let channels = u16le(b, body + 2).ok_or("the WAV fmt chunk is truncated")?;
                let rate = u32le(b, body + 4).ok_or("the WAV fmt chunk is truncated")?;
                let byte_rate = u32le(b, body + 8).ok_or("the WAV fmt chunk is truncated")?;
                let block_align = u16le(b, body + 12).ok_or("the WAV fmt chunk is truncated")?;
                fmt = Some((channels, rate, byte_rate, block_align));
            }
            b"data" => {
                // A streaming writer may leave the size at 0 or 0xFFFFFFFF: count what is there.
                let len = if size == 0 || size == 0xFFFF_FFFF { available } else { size.min(available) };
                data_len = Some(len);
            }
            _ => {}
        }
        if fmt.is_some() && data_len.is_some() {
            break;
        }
        let next = (body as u64).saturating_add(size).saturating_add(size & 1);
        if next > b.len() as u64 {
            break;
        }
        pos = next as usize;
    }
    let (channels, rate, byte_rate, block_align) = fmt.ok_or("the WAV file has no fmt chunk")?;
    let data_len = data_len.ok_or("the WAV file has no data chunk")?;
    if rate == 0 || channels == 0 {
        return Err("the WAV file declares a zero sample rate or channel count".to_string());
    }
    let bytes_per_second = if byte_rate > 0 {
        byte_rate as f64
    } else if block_align > 0 {
        block_align as f64 * rate as f64
    } else {
        return Err("the WAV file declares a zero byte rate".to_string());
    };
    Ok(Audio { duration_seconds: data_len as f64 / bytes_per_second, sample_rate: rate, channels })
}

/// FLAC: the STREAMINFO block gives the rate, channels and total samples.
fn flac(b: &[u8]) -> Result<Audio, String> {
    if b.len() < 8 || &b[0..4] != b"fLaC" {
        return Err("not a FLAC stream".to_string());
    }
    let block_type = b[4] & 0x7F;
    let len = ((b[5] as usize) << 16) | ((b[6] as usize) << 8) | b[7] as usize;
    if block_type != 0 || len < 34 || b.len() < 8 + 34 {
        return Err("the FLAC stream does not start with a STREAMINFO block".to_string());
    }
    let s = &b[8..8 + 34];
    let rate = ((s[10] as u32) << 12) | ((s[11] as u32) << 4) | ((s[12] as u32) >> 4);
    let channels = (((s[12] >> 1) & 0x07) + 1) as u16;
    let total = (((s[13] & 0x0F) as u64) << 32) | u32be(s, 14).unwrap_or(0) as u64;
    if rate == 0 {
        return Err("the FLAC stream declares a zero sample rate".to_string());
    }
    if total == 0 {
        return Err("the FLAC stream does not declare its length".to_string());
    }
    Ok(Audio { duration_seconds: total as f64 / rate as f64, sample_rate: rate, channels })
}

/// An MPEG audio frame header.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Mp3Frame {
    pub sample_rate: u32,
    pub samples: u32,
    pub length: usize,
    pub channels: u16,
    mpeg1: bool,
}

/// Parses a 4-byte MPEG audio frame header; `None` when it is not one.
pub(crate) fn mp3_header(h: &[u8]) -> Option<Mp3Frame> {
    if h.len() < 4 || h[0] != 0xFF || h[1] & 0xE0 != 0xE0 {
        return None;
    }
    let version = (h[1] >> 3) & 0x03; // 0 = 2.5, 2 = 2, 3 = 1
    let layer = (h[1] >> 1) & 0x03; // 1 = III, 2 = II, 3 = I
    let bitrate_index = (h[2] >> 4) as usize;
    let rate_index = ((h[2] >> 2) & 0x03) as usize;
    let padding = ((h[2] >> 1) & 0x01) as usize;
    let channel_mode = h[3] >> 6;
    if version == 1 || layer == 0 || bitrate_index == 0 || bitrate_index == 15 || rate_index == 3 {
        return None;
    }
    let mpeg1 = version == 3;
    const RATES: [[u32; 3]; 4] = [[11025, 12000, 8000], [0, 0, 0], [22050, 24000, 16000], [44100, 48000, 32000]];
    let sample_rate = RATES[version as usize][rate_index];
    // kbit/s by [MPEG-1 layer I, II, III, MPEG-2/2.5 layer I, II/III].
    const BITRATES: [[u32; 5]; 15] = [
        [0, 0, 0, 0, 0],
        [32, 32, 32, 32, 8],
        [64, 48, 40, 48, 16],
        [96, 56, 48, 56, 24],
        [128, 64, 56, 64, 32],
        [160, 80, 64, 80, 40],
        [192, 96, 80, 96, 48],
        [224, 112, 96, 112, 56],
        [256, 128, 112, 128, 64],
        [288, 160, 128, 144, 80],
        [320, 192, 160, 160, 96],
        [352, 224, 192, 176, 112],
        [384, 256, 224, 192, 128],
        [416, 320, 256, 224, 144],
        [448, 384, 320, 256, 160],
    ];
    let column = match (mpeg1, layer) {
        (true, 3) => 0,
        (true, 2) => 1,
        (true, _) => 2,
        (false, 3) => 3,
        (false, _) => 4,
    };
    let bitrate = BITRATES[bitrate_index][column] * 1000;
    let (samples, length) = match layer {
        3 => (384, ((12 * bitrate / sample_rate) as usize + padding) * 4),
        2 => (1152, (144 * bitrate / sample_rate) as usize + padding),
        _ if mpeg1 => (1152, (144 * bitrate / sample_rate) as usize + padding),
        _ => (576, (72 * bitrate / sample_rate) as usize + padding),
    };
    if length < 4 {
        return None;
    }
    Some(Mp3Frame { sample_rate, samples, length, channels: if channel_mode == 3 { 1 } else { 2 }, mpeg1 })
}

/// MP3: skip an ID3v2 tag, then use the Xing/Info frame count when the first
/// frame has one, else walk the frame headers (at most one step per frame, and
/// each frame is at least 24 bytes long).
fn mp3(b: &[u8]) -> Result<Audio, String> {
    let mut pos = 0usize;
    if b.len() >= 10 && &b[0..3] == b"ID3" {
        let size = ((b[6] as usize & 0x7F) << 21)
            | ((b[7] as usize & 0x7F) << 14)
            | ((b[8] as usize & 0x7F) << 7)
            | (b[9] as usize & 0x7F);
        let footer = if b[5] & 0x10 != 0 { 10 } else { 0 };
        pos = 10 + size + footer;
    }
    // Find the first frame within 64 KiB of the tag, confirmed by the next header.
    let search_end = b.len().min(pos.saturating_add(65_536));
    let mut first = None;
    while pos + 4 <= search_end {
        if let Some(f) = mp3_header(&b[pos..pos + 4]) {
            let next = pos + f.length;
            let confirmed =
                next + 4 > b.len() || mp3_header(&b[next..next + 4]).is_some_and(|g| g.sample_rate == f.sample_rate);
            if confirmed {
                first = Some((pos, f));
                break;
            }
        }
        pos += 1;
    }
    let (start, frame) = first.ok_or("no MPEG audio frame was found")?;
    // Xing / Info / VBRI headers give the frame count directly.
    let side_info = match (frame.mpeg1, frame.channels) {
        (true, 1) => 17,
        (true, _) => 32,
        (false, 1) => 9,
        (false, _) => 17,
    };
    let xing_at = start + 4 + side_info;
    if let Some(tag) = b.get(xing_at..xing_at + 4) {
        if tag == b"Xing" || tag == b"Info" {
            let flags = u32be(b, xing_at + 4).unwrap_or(0);
            if flags & 1 != 0 {
                if let Some(frames) = u32be(b, xing_at + 8).filter(|&n| n > 0) {
                    let seconds = frames as f64 * frame.samples as f64 / frame.sample_rate as f64;
                    return Ok(Audio {
                        duration_seconds: seconds,
                        sample_rate: frame.sample_rate,
                        channels: frame.channels,
                    });
                }
            }
        }
    }
    let vbri_at = start + 4 + 32;
    if b.get(vbri_at..vbri_at + 4) == Some(b"VBRI") {
        if let Some(frames) = u32be(b, vbri_at + 14).filter(|&n| n > 0) {
            let seconds = frames as f64 * frame.samples as f64 / frame.sample_rate as f64;
            return Ok(Audio { duration_seconds: seconds, sample_rate: frame.sample_rate, channels: frame.channels });
        }
    }
    let mut pos = start;
    let mut samples = 0u64;
    while pos + 4 <= b.len() {
        let Some(f) = mp3_header(&b[pos..pos + 4]) else {
            break;
        };
        if f.sample_rate != frame.sample_rate {
            break;
        }
        samples += f.samples as u64;
        pos += f.length;
    }
    Ok(Audio {
        duration_seconds: samples as f64 / frame.sample_rate as f64,
        sample_rate: frame.sample_rate,
        channels: frame.channels,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A PCM WAV header (and silent data) for `seconds` at 8 kHz mono 8-bit.
    pub(crate) fn wav_bytes(seconds: u32) -> Vec<u8> {
        let data = 8000 * seconds;
        let mut v = Vec::new();
        v.extend_from_slice(b"RIFF");
        v.extend_from_slice(&(36 + data).to_le_bytes());
        v.extend_from_slice(b"WAVEfmt ");
        v.extend_from_slice(&16u32.to_le_bytes());
        v.extend_from_slice(&1u16.to_le_bytes()); // PCM
        v.extend_from_slice(&1u16.to_le_bytes()); // mono
        v.extend_from_slice(&8000u32.to_le_bytes());
        v.extend_from_slice(&8000u32.to_le_bytes());
        v.extend_from_slice(&1u16.to_le_bytes());
        v.extend_from_slice(&8u16.to_le_bytes());
        v.extend_from_slice(b"data");
        v.extend_from_slice(&data.to_le_bytes());
        v.resize(v.len() + data as usize, 128);
        v
    }

    #[test]
    fn wav_duration() {
        let a = audio(Format::Wav, &wav_bytes(3)).unwrap();
        assert_eq!((a.duration_seconds, a.sample_rate, a.channels), (3.0, 8000, 1));
        assert!(audio(Format::Wav, b"RIFF\0\0\0\0WAVE").is_err());
    }

    #[test]
    fn flac_duration() {
        let mut v = b"fLaC".to_vec();
        v.extend_from_slice(&[0x80, 0, 0, 34]);
        let mut info = [0u8; 34];
        // 44100 Hz = 0xAC44 in 20 bits, 2 channels, 16 bits, 441000 samples.
        info[10] = 0x0A;
        info[11] = 0xC4;
        info[12] = 0x40 | (1 << 1);
        info[13] = 0xF0;
        info[14..18].copy_from_slice(&441_000u32.to_be_bytes());
        v.extend_from_slice(&info);
        let a = audio(Format::Flac, &v).unwrap();
        assert_eq!((a.duration_seconds, a.sample_rate, a.channels), (10.0, 44100, 2));
    }

    #[test]
    fn mp3_frames_are_walked() {
        // MPEG-1 layer III, 128 kbit/s, 44.1 kHz, no padding: 417-byte frames of 1152 samples.
        let header = [0xFF, 0xFB, 0x90, 0x00];
        let f = mp3_header(&header).unwrap();
        assert_eq!((f.length, f.samples, f.sample_rate), (417, 1152, 44100));
        let mut v = Vec::new();
        for _ in 0..100 {
            v.extend_from_slice(&header);
            v.resize(v.len() + 413, 0);
        }
        let a = audio(Format::Mp3, &v).unwrap();
        assert!((a.duration_seconds - 100.0 * 1152.0 / 44100.0).abs() < 1e-9);
    }
}
