//! Recognising a file's format from its content.

use merit_core::Format;

/// What the first and last bytes say a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sniffed {
    /// A binary format recognised by its magic bytes.
    Binary(Format),
    /// A zip archive that is not a docx.
    Zip,
    /// UTF-8 text without NUL bytes (a byte-order mark is allowed).
    Text,
    /// Something else; `invalid_utf8_at` is where UTF-8 decoding failed, if
    /// the file looked like text until then.
    Unknown { invalid_utf8_at: Option<usize> },
}

impl Sniffed {
    /// The name used in reasons.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Sniffed::Binary(f) => f.as_str(),
            Sniffed::Zip => "zip",
            Sniffed::Text => "text",
            Sniffed::Unknown { .. } => "unknown",
        }
    }
}

/// Recognises binary formats by magic bytes, else UTF-8 text.
pub(crate) fn sniff(bytes: &[u8]) -> Sniffed {
    let b = bytes;
    let at = |i: usize, magic: &[u8]| b.len() >= i + magic.len() && &b[i..i + magic.len()] == magic;
    if at(0, b"%PDF-") {
        return Sniffed::Binary(Format::Pdf);
    }
    if at(0, b"PK\x03\x04") || at(0, b"PK\x05\x06") {
        return if contains(b, b"word/document.xml") { Sniffed::Binary(Format::Docx) } else { Sniffed::Zip };
    }
    if b.len() >= 12 && at(0, b"PAR1") && b.ends_with(b"PAR1") {
        return Sniffed::Binary(Format::Parquet);
    }
    if at(0, b"\x89PNG\r\n\x1a\n") {
        return Sniffed::Binary(Format::Png);
    }
    if at(0, b"\xFF\xD8\xFF") {
        return Sniffed::Binary(Format::Jpg);
    }
    if at(0, b"RIFF") && at(8, b"WEBP") {
        return Sniffed::Binary(Format::Webp);
    }
    if at(0, b"RIFF") && at(8, b"WAVE") {
        return Sniffed::Binary(Format::Wav);
    }
    if at(0, b"II*\0") || at(0, b"MM\0*") {
        return Sniffed::Binary(Format::Tiff);
    }
    if at(0, b"BM") && b.len() >= 26 {
        // The DIB header size names the BMP variant; text starting "BM" has none of these.
        let dib = u32::from_le_bytes([b[14], b[15], b[16], b[17]]);
        if matches!(dib, 12 | 16 | 40 | 52 | 56 | 64 | 108 | 124) {
            return Sniffed::Binary(Format::Bmp);
        }
    }
    if at(0, b"fLaC") {
        return Sniffed::Binary(Format::Flac);
    }
    if at(0, b"ID3") || (b.len() >= 4 && crate::media::mp3_header(&b[..4]).is_some()) {
        return Sniffed::Binary(Format::Mp3);
    }
    let body = b.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(b);
    match std::str::from_utf8(body) {
        Ok(s) if !s.as_bytes().contains(&0) => Sniffed::Text,
        Ok(_) => Sniffed::Unknown { invalid_utf8_at: None },
        Err(e) => {
            let offset = e.valid_up_to() + (b.len() - body.len());
            let texty = !body[..e.valid_up_to()].contains(&0);
            Sniffed::Unknown { invalid_utf8_at: texty.then_some(offset) }
        }
    }
}

pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let last_start = hay.len() - needle.len();
    let mut i = 0;
    while i <= last_start {
        match hay[i..=last_start].iter().position(|&c| c == first) {
            None => return None,
            Some(p) => {
                let s = i + p;
                if &hay[s..s + needle.len()] == needle {
                    return Some(s);
                }
                i = s + 1;
            }
        }
    }
    None
}

/// The text of a file after the byte-order mark, if it is UTF-8.
pub(crate) fn utf8_text(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)).ok()
}

/// The format a file name claims, by its extension.
pub(crate) fn claimed(filename: &str) -> Option<Format> {
    let base = filename.rsplit(['/', '\\']).next().unwrap_or(filename);
    let (_, ext) = base.rsplit_once('.')?;
    Format::from_name(ext.trim())
}

/// The extension of a file name, for messages.
pub(crate) fn extension(filename: &str) -> Option<String> {
    let base = filename.rsplit(['/', '\\']).next().unwrap_or(filename);
    base.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).filter(|e| !e.is_empty() && e.len() <= 16)
}

/// A noun phrase for a format, for messages.
pub(crate) fn describe(f: Format) -> &'static str {
    match f {
        Format::Txt => "plain text",
        Format::Md => "Markdown",
        Format::Pdf => "a PDF",
        Format::Docx => "a Word document (docx)",
        Format::Jsonl => "JSON lines",
        Format::Csv => "CSV",
        Format::Parquet => "a Parquet file",
        Format::Png => "a PNG image",
        Format::Jpg => "a JPEG image",
        Format::Webp => "a WebP image",
        Format::Tiff => "a TIFF image",
        Format::Bmp => "a BMP image",
        Format::Wav => "a WAV recording",
        Format::Mp3 => "an MP3 recording",
        Format::Flac => "a FLAC recording",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_bytes() {
        assert_eq!(sniff(b"%PDF-1.7\n"), Sniffed::Binary(Format::Pdf));
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), Sniffed::Binary(Format::Png));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Sniffed::Binary(Format::Webp));
        assert_eq!(sniff(b"RIFF\0\0\0\0WAVEfmt "), Sniffed::Binary(Format::Wav));
        assert_eq!(sniff(b"BMW makes cars and the river is wide."), Sniffed::Text);
        assert_eq!(sniff(b"\xEF\xBB\xBFhello"), Sniffed::Text);
        assert_eq!(sniff(b"a\0b"), Sniffed::Unknown { invalid_utf8_at: None });
        assert_eq!(sniff(b"ab\xFFcd"), Sniffed::Unknown { invalid_utf8_at: Some(2) });
        assert_eq!(sniff(b"PK\x03\x04rest"), Sniffed::Zip);
        assert_eq!(claimed("dir.v2/Report.PDF"), Some(Format::Pdf));
        assert_eq!(claimed("photo.jpeg"), Some(Format::Jpg));
        assert_eq!(claimed("README"), None);
    }
}
