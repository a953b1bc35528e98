//! docx text extraction: the zip archive's `word/document.xml`, read with
//! quick-xml. Paragraphs (`w:p`) become lines, `w:t` holds the text, `w:tab`
//! is a tab and `w:br` / `w:cr` a line break.
//!
//! Zip bombs are refused three ways: too many entries (counted from the raw
//! central-directory signatures before the zip crate sees the file), declared
//! sizes over the budget, and reading `document.xml` through a hard limit (a
//! header can lie about its size).

use std::io::{Cursor, Read};

use merit_core::Reason;
use quick_xml::events::Event;
use serde_json::Value;

/// Most entries a docx archive may hold.
pub(crate) const MAX_ENTRIES: usize = 10_000;

fn refuse(message: impl Into<String>) -> Reason {
    Reason::new("format", "docx", Value::Null, Value::Null, message)
}

fn too_big(value: u64, budget: u64, message: String) -> Reason {
    Reason::new("size", "decompressed_bytes", value, budget, message)
}

/// Extracts the text of a docx file, or says why it cannot.
pub(crate) fn extract(bytes: &[u8], budget: u64) -> Result<String, Reason> {
    let entries = count(bytes, b"PK\x01\x02");
    if entries > MAX_ENTRIES {
        return Err(Reason::new(
            "size",
            "zip_entries",
            entries as u64,
            MAX_ENTRIES as u64,
            format!("the docx archive holds more than {MAX_ENTRIES} entries"),
        ));
    }
    let xml = std::panic::catch_unwind(|| document_xml(bytes, budget))
        .unwrap_or_else(|_| Err(refuse("the docx archive could not be read")))?;
    std::panic::catch_unwind(|| text_of(&xml)).unwrap_or_else(|_| Err(refuse("the docx document could not be read")))
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    let mut n = 0;
    let mut from = 0;
    while let Some(p) = crate::detect::find(&hay[from..], needle) {
        n += 1;
        from += p + needle.len();
    }
    n
}

/// The bytes of `word/document.xml`, within the budget.
fn document_xml(bytes: &[u8], budget: u64) -> Result<Vec<u8>, Reason> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| refuse(format!("the docx file is not a readable zip archive: {e}")))?;
    if archive.len() > MAX_ENTRIES {
        return Err(refuse(format!("the docx archive holds more than {MAX_ENTRIES} entries")));
    }
    let mut declared_total = 0u64;
    for i in 0..archive.len() {
        if let Ok(entry) = archive.by_index_raw(i) {
            declared_total = declared_total.saturating_add(entry.size());
        }
    }
    if declared_total > budget {
        return Err(too_big(
            declared_total,
            budget,
            format!("the docx archive declares {declared_total} bytes uncompressed, over the limit of {budget}"),
        ));
    }
    let mut entry = archive
        .by_name("word/document.xml")
        .map_err(|e| refuse(format!("the docx archive has no readable word/document.xml: {e}")))?;
    if entry.size() > budget {
        return Err(too_big(
            entry.size(),
            budget,
            format!("word/document.xml declares {} bytes, over the limit of {budget}", entry.size()),
        ));
    }
    let mut xml = Vec::with_capacity(entry.size().min(budget) as usize);
    (&mut entry)
        .take(budget + 1)
        .read_to_end(&mut xml)
        .map_err(|e| refuse(format!("word/document.xml cannot be decompressed: {e}")))?;
    if xml.len() as u64 > budget {
        return Err(too_big(
            xml.len() as u64,
            budget,
            format!("word/document.xml expands to more than {budget} bytes"),
        ));
    }
    Ok(xml)
}

/// The text of a WordprocessingML document.
fn text_of(xml: &[u8]) -> Result<String, Reason> {
    let mut reader = quick_xml::Reader::from_reader(xml);
    reader.config_mut().trim_text(false);
    let mut out = String::new();
    let mut in_text = 0usize;
    loop {
        let event =
            reader.read_event().map_err(|e| refuse(format!("word/document.xml is not well-formed XML: {e}")))?;
        match event {
            Event::Start(e) => match e.local_name().as_ref() {
                b"t" => in_text += 1,
                b"tab" => out.push('\t'),
                b"br" | b"cr" => out.push('\n'),
                _ => {}
            },
            Event::Empty(e) => match e.local_name().as_ref() {
                b"tab" => out.push('\t'),
                b"br" | b"cr" | b"p" => out.push('\n'),
                _ => {}
            },
            Event::End(e) => match e.local_name().as_ref() {
                b"t" => in_text = in_text.saturating_sub(1),
                b"p" => out.push('\n'),
                _ => {}
            },
            Event::Text(t) if in_text > 0 => match t.unescape() {
                Ok(s) => out.push_str(&s),
                Err(_) => out.push_str(&String::from_utf8_lossy(&t)),
            },
            Event::CData(t) if in_text > 0 => out.push_str(&String::from_utf8_lossy(&t)),
            Event::Eof => break,
            _ => {}
        }
    }
    let lines: Vec<&str> = out.lines().map(str::trim_end).collect();
    Ok(lines.join("\n").trim_matches('\n').to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A minimal docx holding `document` as word/document.xml (deflated).
    pub(crate) fn docx_bytes(document: &str) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("[Content_Types].xml", options).unwrap();
        zip.write_all(
            b"<?xml version=\"1.0\"?><Types xmlns=\"http://schemas.openxmlformats.org/package/2006/content-types\"/>",
        )
        .unwrap();
        zip.start_file("word/document.xml", options).unwrap();
        zip.write_all(document.as_bytes()).unwrap();
        zip.finish().unwrap().into_inner()
    }

    /// WordprocessingML with one paragraph per line.
    pub(crate) fn document(paragraphs: &[&str]) -> String {
        let body: String =
            paragraphs.iter().map(|p| format!("<w:p><w:r><w:t xml:space=\"preserve\">{p}</w:t></w:r></w:p>")).collect();
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><w:document xmlns:w=\"http://schemas.openxmlformats.org/wordprocessingml/2006/main\"><w:body>{body}</w:body></w:document>"
        )
    }

    #[test]
    fn paragraphs_tabs_and_breaks() {
        let xml = "<w:document xmlns:w=\"x\"><w:body><w:p><w:r><w:t>One &amp; two</w:t><w:tab/><w:t>three</w:t></w:r></w:p>\
                   <w:p><w:r><w:t>four</w:t><w:br/><w:t>five</w:t><w:instrText>PAGE</w:instrText></w:r></w:p></w:body></w:document>";
        assert_eq!(extract(&docx_bytes(xml), 1 << 20).unwrap(), "One & two\tthree\nfour\nfive");
    }

    #[test]
    fn zip_bombs_are_refused() {
        // 8 MiB of zeros deflate to a few KiB; the budget is 1 MiB.
        let body = format!(
            "<w:document xmlns:w=\"x\"><w:body><w:p><w:r><w:t>{}</w:t></w:r></w:p></w:body></w:document>",
            "0".repeat(8 << 20)
        );
        let bytes = docx_bytes(&body);
        assert!(bytes.len() < 64 << 10);
        let err = extract(&bytes, 1 << 20).unwrap_err();
        assert_eq!((err.gate.as_str(), err.metric.as_str()), ("size", "decompressed_bytes"));
    }

    #[test]
    fn not_a_docx() {
        assert_eq!(extract(b"PK\x03\x04garbage", 1 << 20).unwrap_err().gate, "format");
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        zip.start_file("other.txt", zip::write::SimpleFileOptions::default()).unwrap();
        let bytes = zip.finish().unwrap().into_inner();
        assert!(extract(&bytes, 1 << 20).unwrap_err().message.contains("word/document.xml"));
    }
}
