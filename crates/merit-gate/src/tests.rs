//! Data-driven tests through one helper: `check(policy, file name, bytes,
//! expected)`, where `expected` is `"pass"` or the reasons as
//! `gate/metric@row`, in order.

use std::sync::Arc;

use merit_core::{Format, Gates, Kind, PiiMode, Policy, RowSchema};
use proptest::prelude::*;
use serde_json::{json, Value};

use crate::export::{write_parquet, Column};
use crate::{inspect, minhash, Inspection};

/// English prose that passes every default gate: 9 sentences, 110 words.
const PROSE: &str = "The river runs through the old town and the people of the valley have lived with \
its floods for centuries. Each spring the water rises to the steps of the church and stays there for a week. \
The farmers move their animals to the hills and wait for the weather to change. When the water falls, the \
fields are rich and dark with new soil. The old stories say that the river gives more than it takes. Most of \
the people who live there believe it, and they plant their crops as soon as the ground is dry. Children learn \
to swim before they can read. The bridge was rebuilt twice in the last hundred years. Visitors come in summer \
to see the mills.";

/// A second, different text that also passes.
const PROSE2: &str = "Early in the morning the bakers of the harbour light their ovens and the smell of bread \
reaches the ships. The fishermen buy their loaves before they sail and return in the afternoon with the catch. \
Their wives sell the fish at the market near the square, where the stalls have stood for as long as anyone can \
remember. In winter the boats stay in port and the men repair their nets by the fire. The town council has \
talked for years about a new pier, but nobody wants to pay for it. Tourists think the place is quiet. The \
people who live there know that it is never quiet at all.";

fn summary(i: &Inspection) -> String {
    if i.reasons.is_empty() {
        return "pass".to_string();
    }
    i.reasons
        .iter()
        .map(|r| match r.row {
            Some(row) => format!("{}/{}@{row}", r.gate, r.metric),
            None => format!("{}/{}", r.gate, r.metric),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Inspects and compares the reasons with `expected` exactly.
fn check(policy: &Policy, filename: &str, bytes: &[u8], expected: &str) -> Inspection {
    let got = inspect(policy, filename, bytes);
    assert_eq!(summary(&got), expected, "{filename}: {:#?}", got.reasons);
    got
}

/// Inspects and checks that every `expected` reason is there and that no
/// other gate fired.
fn check_has(policy: &Policy, filename: &str, bytes: &[u8], expected: &[&str]) -> Inspection {
    let got = inspect(policy, filename, bytes);
    let all = summary(&got);
    let have: Vec<&str> = all.split(' ').collect();
    for e in expected {
        assert!(have.contains(e), "{filename}: expected {e} in {all}: {:#?}", got.reasons);
    }
    let gates: Vec<&str> = expected.iter().map(|e| e.split('/').next().unwrap_or("")).collect();
    for r in &got.reasons {
        assert!(gates.contains(&r.gate.as_str()), "{filename}: unexpected {} in {all}", r.gate);
    }
    got
}

fn text_policy() -> Policy {
    Policy::default_for(Kind::Text)
}

/// A text policy with every gate off, then `f` applied.
fn only(f: impl FnOnce(&mut Gates)) -> Policy {
    let mut p = text_policy();
    let g = &mut p.gates;
    g.min_words = 0;
    g.max_words = 0;
    g.languages.clear();
    g.pii = PiiMode::Allow;
    g.gopher_quality = false;
    g.gopher_repetition = false;
    g.c4 = false;
    g.fineweb = false;
    g.exact_duplicates = false;
    g.near_duplicates = false;
    f(g);
    p
}

fn with_rows(mut p: Policy, rows: RowSchema) -> Policy {
    p.rows = rows;
    p
}

fn jsonl(rows: &[Value]) -> Vec<u8> {
    rows.iter().map(|r| format!("{r}\n")).collect::<String>().into_bytes()
}

// ----- documents -----

#[test]
fn prose_is_accepted_as_txt_and_md() {
    let i = check(&text_policy(), "river.txt", PROSE.as_bytes(), "pass");
    assert_eq!(i.format, Some(Format::Txt));
    assert_eq!(i.rows.len(), 1);
    let row = &i.rows[0];
    assert_eq!(row.content, json!({ "text": PROSE }));
    assert_eq!(row.text, PROSE);
    assert_eq!(row.minhash.len(), minhash::BANDS * minhash::ROWS);
    assert_eq!(row.minhash, minhash::signature(&row.text), "the store can recompute signatures");
    assert_eq!(row.exact_hash, crate::hash::sha256(normalised(PROSE).as_bytes()));
    assert!(row.score > 0.5 && row.score <= 1.0, "score {}", row.score);
    let md = check(&text_policy(), "notes.md", PROSE.as_bytes(), "pass");
    assert_eq!(md.format, Some(Format::Md));
    // No extension: text by content.
    assert_eq!(check(&text_policy(), "README", PROSE.as_bytes(), "pass").format, Some(Format::Txt));
}

#[test]
fn scores_are_deterministic_and_lower_for_weaker_text() {
    let a = inspect(&text_policy(), "a.txt", PROSE.as_bytes());
    let b = inspect(&text_policy(), "a.txt", PROSE.as_bytes());
    assert_eq!(a, b);
    let weak = PROSE.replacen(". ", ". # # # # # # # # # ", 1);
    let w = inspect(&text_policy(), "w.txt", weak.as_bytes());
    assert!(w.reasons.is_empty());
    assert!(w.rows[0].score < a.rows[0].score, "{} vs {}", w.rows[0].score, a.rows[0].score);
}

#[test]
fn a_pdf_that_is_not_a_pdf_is_refused_as_such() {
    let i = check(&text_policy(), "paper.pdf", PROSE.as_bytes(), "format/detected");
    let r = &i.reasons[0];
    assert_eq!((r.value.clone(), r.threshold.clone()), (json!("txt"), json!("pdf")));
    assert_eq!(r.message, "file is named .pdf but its content is not a PDF (detected: txt)");
    check(&text_policy(), "report.docx", PROSE.as_bytes(), "format/detected");
    let pdf = crate::pdf::tests::pdf_bytes(&["Hello."]);
    let i = check(&text_policy(), "image.png", &pdf, "format/detected");
    assert_eq!(i.reasons[0].value, json!("pdf"));
    check(&text_policy(), "data.bin", b"\x00\x01\x02\x03 binary", "format/detected");
    check(&text_policy(), "notes.txt", b"caf\xE9 au lait", "format/encoding");
}

#[test]
fn formats_outside_the_policy_are_refused() {
    let mut p = text_policy();
    p.formats = vec![Format::Jsonl];
    let i = check(&p, "river.txt", PROSE.as_bytes(), "format/format");
    assert_eq!(i.reasons[0].threshold, json!(["jsonl"]));
    let image = Policy::default_for(Kind::Image);
    check(&image, "river.txt", PROSE.as_bytes(), "format/format");
}

#[test]
fn oversized_files_are_refused_first() {
    let mut p = text_policy();
    p.max_file_bytes = 100;
    let i = check(&p, "river.txt", PROSE.as_bytes(), "size/bytes");
    assert!(i.rows.is_empty());
}

#[test]
fn a_real_pdf_is_extracted() {
    let sentences: Vec<&str> = PROSE.split_inclusive(". ").map(str::trim).collect();
    let pdf = crate::pdf::tests::pdf_bytes(&sentences);
    let i = check(&text_policy(), "river.pdf", &pdf, "pass");
    assert_eq!(i.format, Some(Format::Pdf));
    let text = i.rows[0].content["text"].as_str().unwrap();
    assert_eq!(text, sentences.join("\n"));
}

#[test]
fn a_real_docx_is_extracted() {
    let paragraphs: Vec<&str> = PROSE.split_inclusive(". ").map(str::trim).collect();
    let docx = crate::docx::tests::docx_bytes(&crate::docx::tests::document(&paragraphs));
    let i = check(&text_policy(), "river.docx", &docx, "pass");
    assert_eq!(i.format, Some(Format::Docx));
    assert_eq!(i.rows[0].text, paragraphs.join("\n"));
}

#[test]
fn docx_zip_bombs_are_refused() {
    let body = format!(
        "<w:document xmlns:w=\"x\"><w:body><w:p><w:r><w:t>{}</w:t></w:r></w:p></w:body></w:document>",
        "a".repeat(32 << 20)
    );
    let bomb = crate::docx::tests::docx_bytes(&body);
    assert!(bomb.len() < 100_000, "{}", bomb.len());
    let mut p = text_policy();
    p.max_file_bytes = 1_000_000;
    check(&p, "bomb.docx", &bomb, "size/decompressed_bytes");
    // The same bomb with its declared sizes rewritten to 100 bytes: the hard
    // read limit still stops it.
    let lying = lie_about_sizes(&bomb, b"word/document.xml", 100);
    let i = inspect(&p, "bomb.docx", &lying);
    assert!(!i.reasons.is_empty() && i.rows.is_empty(), "{:?}", i.reasons);
    assert!(matches!(i.reasons[0].gate.as_str(), "size" | "format"), "{:?}", i.reasons);
}

/// Rewrites the uncompressed size of entry `name` in a zip's local and central headers.
fn lie_about_sizes(zip: &[u8], name: &[u8], size: u32) -> Vec<u8> {
    let mut out = zip.to_vec();
    let mut i = 0;
    while i + 46 <= out.len() {
        if out[i..].starts_with(b"PK\x03\x04") {
            let n = u16::from_le_bytes([out[i + 26], out[i + 27]]) as usize;
            if out.get(i + 30..i + 30 + n) == Some(name) {
                out[i + 22..i + 26].copy_from_slice(&size.to_le_bytes());
            }
        }
        if out[i..].starts_with(b"PK\x01\x02") {
            let n = u16::from_le_bytes([out[i + 28], out[i + 29]]) as usize;
            if out.get(i + 46..i + 46 + n) == Some(name) {
                out[i + 24..i + 28].copy_from_slice(&size.to_le_bytes());
            }
        }
        i += 1;
    }
    out
}

// ----- the text gates, one by one -----

#[test]
fn word_count() {
    let min = only(|g| g.min_words = 50);
    check(&min, "a.txt", b"Far too short.", "length/word_count@0");
    check(&min, "a.txt", PROSE.as_bytes(), "pass");
    let max = only(|g| g.max_words = 20);
    let i = check(&max, "a.txt", PROSE.as_bytes(), "length/word_count@0");
    assert_eq!(i.reasons[0].threshold, json!(20));
}

#[test]
fn gopher_quality() {
    let p = only(|g| g.gopher_quality = true);
    check(&p, "a.txt", PROSE.as_bytes(), "pass");
    check(&p, "a.txt", "a i o to of ".repeat(20).as_bytes(), "gopher_quality/avg_word_length@0");
    let long = "incomprehensibilities institutionalisation ".repeat(10) + "of the";
    check(&p, "a.txt", long.as_bytes(), "gopher_quality/avg_word_length@0");
    // (spaCy splits `#` off one at a time: ten of them are ten words.)
    let k = crate::word_tokens(PROSE).len() / 8 + 1;
    let hashes = format!("{PROSE} {}", "#".repeat(k));
    check(&p, "a.txt", hashes.as_bytes(), "gopher_quality/hash_word_ratio@0");
    let half = PROSE.len() / 2;
    let ellipses = format!("{} {} {}", &PROSE[..half], "and so\u{2026} ".repeat(25), &PROSE[half..]);
    check(&p, "a.txt", ellipses.as_bytes(), "gopher_quality/ellipsis_word_ratio@0");
    // (`•` alone is a word to datatrove: it is not in its PUNCTUATION_SET.)
    let bullets = "\u{2022} the river flows past the town of stone\n".repeat(10);
    check(&p, "a.txt", bullets.as_bytes(), "gopher_quality/bullet_line_ratio@0");
    let trailing = "the story of the night goes on and on with the wind...\n".repeat(10);
    check(&p, "a.txt", trailing.as_bytes(), "gopher_quality/ellipsis_line_ratio@0");
    let numbers = "1234 5678 9012 the house of the river ".repeat(10);
    check(&p, "a.txt", numbers.as_bytes(), "gopher_quality/alpha_word_ratio@0");
    let no_stop = "Quick brown foxes jump over lazy dogs. ".repeat(10);
    check(&p, "a.txt", no_stop.as_bytes(), "gopher_quality/stop_word_count@0");
}

#[test]
fn gopher_repetition() {
    let p = only(|g| g.gopher_repetition = true);
    check(&p, "a.txt", PROSE.as_bytes(), "pass");
    let lines = "The same line about the river again.\n".repeat(10);
    check_has(
        &p,
        "a.txt",
        lines.as_bytes(),
        &["gopher_repetition/dup_line_ratio@0", "gopher_repetition/dup_line_char_ratio@0"],
    );
    let paragraphs = format!("{PROSE}\n\n{PROSE}\n\n{PROSE2}");
    check_has(
        &p,
        "a.txt",
        paragraphs.as_bytes(),
        &["gopher_repetition/dup_para_ratio@0", "gopher_repetition/dup_para_char_ratio@0"],
    );
    let bigram = format!("{PROSE} {}", "big river ".repeat(30));
    check_has(&p, "a.txt", bigram.as_bytes(), &["gopher_repetition/top_2gram_char_ratio@0"]);
    let phrase = format!("{PROSE} {}", "the water rises to the steps of the church ".repeat(5));
    check_has(&p, "a.txt", phrase.as_bytes(), &["gopher_repetition/dup_5gram_char_ratio@0"]);
}

#[test]
fn c4() {
    let p = only(|g| g.c4 = true);
    check(&p, "a.txt", PROSE.as_bytes(), "pass");
    check(&p, "a.txt", format!("{PROSE} Lorem ipsum dolor sit amet.").as_bytes(), "c4/lorem_ipsum@0");
    check(&p, "a.txt", format!("{PROSE} Put the {{braces}} in the box.").as_bytes(), "c4/curly_bracket@0");
    check(&p, "a.txt", b"Only one short sentence here.", "c4/sentence_count@0");
    // A javascript line is dropped, not fatal.
    check(&p, "a.txt", format!("{PROSE}\nPlease enable JavaScript to see the map.").as_bytes(), "pass");
    // C4 drops lines, as datatrove does: a menu around enough sentences passes,
    // a menu alone has no sentence left.
    let menu = "Home | About us | Contact | Shop | Blog | Login | Register\n".repeat(20);
    check(&p, "a.txt", format!("{menu}\n{PROSE}").as_bytes(), "pass");
    check(&p, "a.txt", menu.as_bytes(), "c4/sentence_count@0");
}

#[test]
fn fineweb() {
    let p = only(|g| g.fineweb = true);
    check(&p, "a.txt", PROSE.as_bytes(), "pass");
    let unpunctuated = "a line of text without any final punctuation mark\n".repeat(10);
    check_has(&p, "a.txt", unpunctuated.as_bytes(), &["fineweb/line_punct_ratio@0"]);
    let short = (0..20).map(|i| format!("Item number {i} is here.\n")).collect::<String>();
    check_has(&p, "a.txt", short.as_bytes(), &["fineweb/short_line_ratio@0"]);
    let sentences: Vec<&str> = PROSE.split_inclusive(". ").map(str::trim).collect();
    let dup = format!("{}\n{}", sentences.join("\n"), sentences[0]);
    check(&p, "a.txt", dup.as_bytes(), "fineweb/char_dup_ratio@0");
    let list = (0..10).map(|i| format!("Extraordinarily incomprehensible{i}.\n")).collect::<String>();
    check(&p, "a.txt", list.as_bytes(), "fineweb/new_line_ratio@0");
}

#[test]
fn language() {
    let en = only(|g| g.languages = vec!["en".into()]);
    check(&en, "a.txt", PROSE.as_bytes(), "pass");
    let french = "Le petit village se trouve au bord de la rivière. Chaque printemps, l'eau monte jusqu'aux \
        marches de l'église et les paysans conduisent leurs bêtes vers les collines. Les enfants apprennent \
        à nager avant de savoir lire, et les visiteurs viennent en été pour voir les moulins.";
    let i = check(&en, "a.txt", french.as_bytes(), "language/language@0");
    assert_eq!((i.reasons[0].value.clone(), i.reasons[0].threshold.clone()), (json!("fr"), json!(["en"])));
    let fr = only(|g| g.languages = vec!["fr".into(), "de".into()]);
    check(&fr, "a.txt", french.as_bytes(), "pass");
    let i = check(&fr, "a.txt", PROSE.as_bytes(), "language/language@0");
    assert_eq!(i.reasons[0].value, json!("en"));
    // Short text: unreliable, so judged by script.
    check(&en, "a.txt", b"Hello there.", "pass");
    check(&en, "a.txt", "Привет, как дела?".as_bytes(), "language/language@0");
    check(&en, "a.txt", b"12345 67890", "language/language@0");
    // Off when the list is empty.
    check(&only(|_| {}), "a.txt", french.as_bytes(), "pass");
}

#[test]
fn personal_data() {
    let text = format!("{PROSE} Write to jane.doe@example.com or call +1 415 555 2671 or (555) 123-4567.");
    let reject = only(|g| g.pii = PiiMode::Reject);
    let i = check(&reject, "a.txt", text.as_bytes(), "pii/email@0 pii/phone@0");
    assert_eq!(i.reasons[1].value, json!(2));
    assert!(!i.reasons.iter().any(|r| r.message.contains("jane")), "no raw PII in messages");
    let ip_card = format!("{PROSE} Server 10.0.0.12 charged card 4111 1111 1111 1111.");
    check(&reject, "a.txt", ip_card.as_bytes(), "pii/ip@0 pii/card@0");
    let redact = only(|g| g.pii = PiiMode::Redact);
    let i = check(&redact, "a.txt", text.as_bytes(), "pass");
    let stored = i.rows[0].content["text"].as_str().unwrap();
    assert!(stored.ends_with("Write to <EMAIL> or call <PHONE> or <PHONE>."), "{stored}");
    assert_eq!(i.rows[0].text, stored);
    assert_eq!(i.rows[0].exact_hash, crate::hash::sha256(crate::tests::normalised(stored).as_bytes()));
    let allow = only(|g| g.pii = PiiMode::Allow);
    let i = check(&allow, "a.txt", text.as_bytes(), "pass");
    assert!(i.rows[0].text.contains("jane.doe@example.com"));
    // Years, prices and versions are not PII.
    let numbers = format!("{PROSE} In 1999 it cost 1,250 dollars; version 2.4.1 shipped on 2021-05-12.");
    check(&reject, "a.txt", numbers.as_bytes(), "pass");
}

/// The normalised form of a text, as the exact-duplicate hash sees it.
pub(crate) fn normalised(text: &str) -> String {
    let mut out = String::new();
    crate::hash::normalise_into(text, &mut out, &mut Vec::new());
    out
}

#[test]
fn duplicates_within_a_file() {
    let near = PROSE.replacen("centuries", "generations", 1);
    let rows = jsonl(&[
        json!({"text": PROSE}),
        json!({"text": PROSE2}),
        json!({"text": PROSE.to_uppercase()}),
        json!({"text": near}),
    ]);
    let p = only(|g| {
        g.exact_duplicates = true;
        g.near_duplicates = true;
    });
    let i = check(&p, "rows.jsonl", &rows, "exact_duplicate/sha256@2 near_duplicate/jaccard@3");
    assert_eq!(i.reasons[0].value, json!(0));
    assert!(i.reasons[1].value.as_f64().unwrap() >= 0.8);
    assert_eq!(i.rows[0].exact_hash, i.rows[2].exact_hash);
    check(&only(|_| {}), "rows.jsonl", &rows, "pass");
}

#[test]
fn duplicate_reasons_for_the_store() {
    let r = merit_core::verdict::exact_duplicate(9, 7, "datanet `qa`");
    assert_eq!((r.gate.as_str(), r.metric.as_str(), r.value.clone()), ("exact_duplicate", "sha256", json!(7)));
    let r = merit_core::verdict::near_duplicate(9, 3, "datanet `qa`", 0.91234, 0.8);
    assert_eq!((r.gate.as_str(), r.metric.as_str()), ("near_duplicate", "jaccard"));
    assert_eq!((r.value.clone(), r.threshold.clone()), (json!(0.9123), json!(0.8)));
}

#[test]
fn switched_off_gates_do_not_fire() {
    let junk = "#### $$$ {code} lorem ipsum 555-123-4567 a@b.io\n".repeat(30);
    check(&only(|_| {}), "junk.txt", junk.as_bytes(), "pass");
    let on = text_policy();
    let i = inspect(&on, "junk.txt", junk.as_bytes());
    for gate in ["gopher_quality", "gopher_repetition", "c4", "fineweb", "pii"] {
        assert!(i.reasons.iter().any(|r| r.gate == gate), "{gate} should fire: {:?}", i.reasons);
    }
}

#[test]
fn pathological_text_stays_linear() {
    let mut p = text_policy();
    p.gates.pii = PiiMode::Redact;
    p.max_file_bytes = 10 << 20;
    for unit in ["a:", "x@", "[", "1 ", "1.", "+1", "(1) ", "#", "... ", "\n", "\n\n", "a ", "ab ab ", "\u{2026}", "é:"]
    {
        let text = unit.repeat(200_000 / unit.len());
        let started = std::time::Instant::now();
        let i = inspect(&p, "a.txt", text.as_bytes());
        assert!(started.elapsed().as_secs() < 10, "{unit:?} took {:?}", started.elapsed());
        assert_eq!(i.rows.len(), 1);
    }
}

// ----- structured rows -----

#[test]
fn jsonl_rows_per_schema() {
    let p = |rows| with_rows(only(|_| {}), rows);
    let i = check(
        &p(RowSchema::Text),
        "d.jsonl",
        &jsonl(&[json!({"text": PROSE}), json!({"text": PROSE2, "id": 3})]),
        "pass",
    );
    assert_eq!(i.format, Some(Format::Jsonl));
    assert_eq!(i.rows[1].content, json!({"text": PROSE2}));

    let alpaca =
        json!({"instruction": "Name a river.", "input": "", "output": "The Danube.", "history": [["Hi", "Hello"]]});
    let i = check(&p(RowSchema::Alpaca), "d.jsonl", &jsonl(std::slice::from_ref(&alpaca)), "pass");
    assert_eq!(i.rows[0].content, alpaca);
    assert_eq!(i.rows[0].text, "Name a river.\nThe Danube.\nHi\nHello");

    let sharegpt = json!({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]});
    let i = check(&p(RowSchema::Sharegpt), "d.jsonl", &jsonl(std::slice::from_ref(&sharegpt)), "pass");
    assert_eq!(i.rows[0].content, sharegpt);

    let messages = json!({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]});
    let i = check(&p(RowSchema::Messages), "d.jsonl", &jsonl(std::slice::from_ref(&messages)), "pass");
    assert_eq!(i.rows[0].content, messages);
    assert_eq!(i.rows[0].text, "Be brief.\nHi");
    // Detected by content without the extension.
    assert_eq!(inspect(&p(RowSchema::Messages), "upload", &jsonl(&[messages])).format, Some(Format::Jsonl));
}

#[test]
fn schema_violations_name_the_row() {
    let p = with_rows(only(|_| {}), RowSchema::Alpaca);
    let mut bytes = jsonl(&[
        json!({"instruction": "a", "output": "b"}),
        json!({"instruction": "a"}),
        json!({"instruction": "a", "output": 3}),
    ]);
    bytes.extend_from_slice(b"{not json}\n");
    let i = check(&p, "d.jsonl", &bytes, "schema/row@1 schema/row@2 schema/row@3");
    assert!(i.reasons[0].message.contains("`output`"), "{}", i.reasons[0].message);
    assert_eq!(i.rows.len(), 4, "every record has a row");
    assert_eq!(i.rows[1].score, 0.0);
    let messages = with_rows(only(|_| {}), RowSchema::Messages);
    let bad_role = jsonl(&[json!({"messages": [{"role": "robot", "content": "x"}]})]);
    check(&messages, "d.jsonl", &bad_role, "schema/row@0");
}

#[test]
fn json_schema_is_checked_per_row() {
    let mut p = only(|_| {});
    p.gates.json_schema =
        Some(json!({"type": "object", "required": ["text", "lang"], "properties": {"lang": {"enum": ["en"]}}}));
    let rows = jsonl(&[json!({"text": "a", "lang": "en"}), json!({"text": "b"}), json!({"text": "c", "lang": "de"})]);
    let i = check(&p, "d.jsonl", &rows, "json_schema/row@1 json_schema/row@2");
    assert!(i.reasons[0].message.contains("lang"));
}

#[test]
fn reasons_are_capped() {
    let rows: Vec<Value> = (0..60).map(|i| json!({"wrong": i})).collect();
    let i = inspect(&only(|_| {}), "d.jsonl", &jsonl(&rows));
    assert_eq!(i.reasons.len(), crate::MAX_REASONS);
    assert_eq!(i.rows.len(), 60);
}

#[test]
fn csv_rows_per_schema() {
    let p = |rows| with_rows(only(|_| {}), rows);
    let csv = format!("text,source\n\"{}\",web\n", PROSE.replace('"', "\"\""));
    let i = check(&p(RowSchema::Text), "d.csv", csv.as_bytes(), "pass");
    assert_eq!(i.format, Some(Format::Csv));
    assert_eq!(i.rows[0].content, json!({"text": PROSE}));
    let alpaca = "instruction,input,output\nName a river.,,The Danube.\n";
    let i = check(&p(RowSchema::Alpaca), "d.csv", alpaca.as_bytes(), "pass");
    assert_eq!(i.rows[0].content, json!({"instruction": "Name a river.", "input": "", "output": "The Danube."}));
    let sharegpt = "conversations\n\"[{\"\"from\"\":\"\"human\"\",\"\"value\"\":\"\"Hi\"\"}]\"\n";
    check(&p(RowSchema::Sharegpt), "d.csv", sharegpt.as_bytes(), "pass");
    let messages = "messages\n\"[{\"\"role\"\":\"\"user\"\",\"\"content\"\":\"\"Hi\"\"}]\"\nnot json\n";
    check(&p(RowSchema::Messages), "d.csv", messages.as_bytes(), "schema/row@1");
    check(&p(RowSchema::Text), "d.csv", b"text,other\n\"a\",b,c\n", "schema/row@0");
}

#[test]
fn parquet_rows_per_schema() {
    let p = |rows| with_rows(only(|_| {}), rows);
    let text = write_parquet(&[
        ("id".into(), Column::Int64(vec![1, 2])),
        ("text".into(), Column::Utf8(vec![PROSE.into(), PROSE2.into()])),
        ("quality".into(), Column::Double(vec![0.5, 0.25])),
    ])
    .unwrap();
    let i = check(&p(RowSchema::Text), "d.parquet", &text, "pass");
    assert_eq!(i.format, Some(Format::Parquet));
    assert_eq!(i.rows.len(), 2);
    assert_eq!(i.rows[1].content, json!({"text": PROSE2}));
    // Detected by content whatever the name.
    assert_eq!(inspect(&p(RowSchema::Text), "upload", &text).format, Some(Format::Parquet));

    let alpaca = write_parquet(&[
        ("instruction".into(), Column::Utf8(vec!["Name a river.".into()])),
        ("output".into(), Column::Utf8(vec!["The Danube.".into()])),
    ])
    .unwrap();
    let i = check(&p(RowSchema::Alpaca), "d.parquet", &alpaca, "pass");
    assert_eq!(i.rows[0].content, json!({"instruction": "Name a river.", "output": "The Danube."}));

    let sharegpt = write_parquet(&[(
        "conversations".into(),
        Column::Utf8(vec![r#"[{"from":"human","value":"Hi"},{"from":"gpt","value":"Hello"}]"#.into()]),
    )])
    .unwrap();
    let i = check(&p(RowSchema::Sharegpt), "d.parquet", &sharegpt, "pass");
    assert_eq!(i.rows[0].text, "Hi\nHello");

    let i = check(&p(RowSchema::Messages), "d.parquet", &nested_messages_parquet(), "pass");
    assert_eq!(i.rows.len(), 2);
    assert_eq!(
        i.rows[0].content,
        json!({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]})
    );
    assert_eq!(i.rows[1].content, json!({"messages": [{"role": "user", "content": "Bye"}]}));

    check(&p(RowSchema::Messages), "d.parquet", &text, "schema/row@0 schema/row@1");
    let i = check(&p(RowSchema::Text), "d.parquet", &gzip_text_parquet(&[PROSE, PROSE2]), "pass");
    assert_eq!(i.rows[1].text, PROSE2);
}

/// A gzip-compressed, dictionary-encoded parquet file with one "text" column.
fn gzip_text_parquet(texts: &[&str]) -> Vec<u8> {
    use parquet::basic::{Compression, GzipLevel};
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    let schema =
        parquet::schema::parser::parse_message_type("message schema { required binary text (UTF8); }").unwrap();
    let props = WriterProperties::builder().set_compression(Compression::GZIP(GzipLevel::default())).build();
    let mut out = Vec::new();
    let mut w = SerializedFileWriter::new(&mut out, Arc::new(schema), Arc::new(props)).unwrap();
    let mut rg = w.next_row_group().unwrap();
    let mut col = rg.next_column().unwrap().unwrap();
    let values: Vec<ByteArray> = texts.iter().map(|t| ByteArray::from(*t)).collect();
    col.typed::<ByteArrayType>().write_batch(&values, None, None).unwrap();
    col.close().unwrap();
    rg.close().unwrap();
    w.close().unwrap();
    out
}

/// A parquet file with a real nested column: messages: list<struct<role, content>>.
fn nested_messages_parquet() -> Vec<u8> {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    let schema = parquet::schema::parser::parse_message_type(
        "message schema { required group messages (LIST) { repeated group list { required group element {
           required binary role (UTF8); required binary content (UTF8); } } } }",
    )
    .unwrap();
    let mut out = Vec::new();
    let mut w =
        SerializedFileWriter::new(&mut out, Arc::new(schema), Arc::new(WriterProperties::builder().build())).unwrap();
    let mut rg = w.next_row_group().unwrap();
    let columns: [&[&str]; 2] = [&["user", "assistant", "user"], &["Hi", "Hello there", "Bye"]];
    for values in columns {
        let mut col = rg.next_column().unwrap().unwrap();
        let values: Vec<ByteArray> = values.iter().map(|v| ByteArray::from(*v)).collect();
        col.typed::<ByteArrayType>().write_batch(&values, Some(&[1, 1, 1]), Some(&[0, 1, 0])).unwrap();
        col.close().unwrap();
    }
    rg.close().unwrap();
    w.close().unwrap();
    out
}

/// A tiny Thrift compact-protocol writer, to build parquet footers that lie.
struct Thrift {
    out: Vec<u8>,
    last: Vec<i16>,
}

impl Thrift {
    fn new() -> Self {
        Thrift { out: Vec::new(), last: vec![0] }
    }
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.out.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.out.push(v as u8);
    }
    fn header(&mut self, id: i16, kind: u8) {
        let last = self.last.last_mut().unwrap();
        self.out.push((((id - *last) as u8) << 4) | kind);
        *last = id;
    }
    fn int(&mut self, id: i16, kind: u8, v: i64) {
        self.header(id, kind);
        self.varint(((v << 1) ^ (v >> 63)) as u64);
    }
    fn i32(&mut self, id: i16, v: i64) {
        self.int(id, 5, v)
    }
    fn i64(&mut self, id: i16, v: i64) {
        self.int(id, 6, v)
    }
    fn string(&mut self, id: i16, s: &str) {
        self.header(id, 8);
        self.varint(s.len() as u64);
        self.out.extend_from_slice(s.as_bytes());
    }
    fn begin(&mut self, id: i16) {
        self.header(id, 12);
        self.last.push(0);
    }
    fn end(&mut self) {
        self.out.push(0);
        self.last.pop();
    }
    fn list(&mut self, id: i16, kind: u8, n: u8) {
        self.header(id, 9);
        self.out.push((n << 4) | kind);
    }
    fn list_struct(&mut self) {
        self.last.push(0);
    }
}

/// A one-row, one-column parquet file ("text" = "hello"), built by hand so that
/// its declared sizes can lie: the column's total uncompressed size and the
/// page's uncompressed size.
fn hand_parquet(column_uncompressed: i64, page_uncompressed: i64) -> Vec<u8> {
    let mut page = Thrift::new();
    page.i32(1, 0); // DATA_PAGE
    page.i32(2, page_uncompressed);
    page.i32(3, 9);
    page.begin(5);
    page.i32(1, 1); // num_values
    page.i32(2, 0); // PLAIN
    page.i32(3, 3); // RLE
    page.i32(4, 3);
    page.end();
    page.out.push(0);
    let mut body = page.out.clone();
    body.extend_from_slice(&5u32.to_le_bytes());
    body.extend_from_slice(b"hello");
    let mut f = Thrift::new();
    f.i32(1, 1);
    f.list(2, 12, 2);
    f.list_struct();
    f.string(4, "schema");
    f.i32(5, 1);
    f.end();
    f.list_struct();
    f.i32(1, 6); // BYTE_ARRAY
    f.i32(3, 0); // REQUIRED
    f.string(4, "text");
    f.i32(6, 0); // UTF8
    f.end();
    f.i64(3, 1);
    f.list(4, 12, 1);
    f.list_struct();
    f.list(1, 12, 1);
    f.list_struct();
    f.i64(2, 4);
    f.begin(3);
    f.i32(1, 6);
    f.list(2, 5, 1);
    f.out.push(0); // encoding PLAIN (zigzag 0)
    f.list(3, 8, 1);
    f.varint(4);
    f.out.extend_from_slice(b"text");
    f.i32(4, 0); // UNCOMPRESSED
    f.i64(5, 1);
    f.i64(6, column_uncompressed);
    f.i64(7, body.len() as i64);
    f.i64(9, 4);
    f.end();
    f.end();
    f.i64(2, column_uncompressed);
    f.i64(3, 1);
    f.end();
    f.out.push(0);
    let mut out = b"PAR1".to_vec();
    out.extend_from_slice(&body);
    out.extend_from_slice(&f.out);
    out.extend_from_slice(&(f.out.len() as u32).to_le_bytes());
    out.extend_from_slice(b"PAR1");
    out
}

#[test]
fn parquet_bombs_are_refused_by_declared_size() {
    let p = only(|_| {});
    // The honest file reads.
    let i = check(&p, "d.parquet", &hand_parquet(40, 9), "pass");
    assert_eq!(i.rows[0].content, json!({"text": "hello"}));
    // The same file declaring a terabyte, in the column metadata or in the page header.
    check(&p, "d.parquet", &hand_parquet(1 << 40, 9), "size/decompressed_bytes");
    check(&p, "d.parquet", &hand_parquet(40, 1 << 30), "size/decompressed_bytes");
    // A small file whose dictionary would fan out to gigabytes when decoded.
    let mut small = only(|_| {});
    small.max_file_bytes = 200_000;
    let fanout = write_parquet(&[("text".into(), Column::Utf8(vec!["x".repeat(1000); 20_000]))]).unwrap();
    assert!(fanout.len() < 200_000, "{}", fanout.len());
    check(&small, "d.parquet", &fanout, "size/decoded_bytes");
    // A footer whose list claims more elements than it has bytes.
    let mut lying = hand_parquet(40, 9);
    let n = lying.len();
    let footer_len = u32::from_le_bytes(lying[n - 8..n - 4].try_into().unwrap()) as usize;
    let at = n - 8 - footer_len + 3; // the schema list's size byte
    lying[at] = 0xFC;
    lying.splice(at + 1..at + 1, [0x80, 0x80, 0x80, 0x80, 0x08]);
    let new_len = (footer_len + 5) as u32;
    let n = lying.len();
    lying[n - 8..n - 4].copy_from_slice(&new_len.to_le_bytes());
    check(&p, "d.parquet", &lying, "format/parquet");
}

// ----- media -----

/// A PNG of `width` × `height` transparent RGBA pixels: its header, its
/// rows (filter byte 0) in stored deflate blocks, and IEND (CRCs not checked).
fn png(width: u32, height: u32) -> Vec<u8> {
    png_with_rows(width, height, height)
}

/// A PNG declaring `height` rows that holds only `rows` of them.
fn png_with_rows(width: u32, height: u32, rows: u32) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    v.extend_from_slice(&width.to_be_bytes());
    v.extend_from_slice(&height.to_be_bytes());
    v.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
    let raw = vec![0u8; rows as usize * (1 + 4 * width as usize)];
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65535).collect();
    for (i, b) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        z.extend_from_slice(&(b.len() as u16).to_le_bytes());
        z.extend_from_slice(&(!(b.len() as u16)).to_le_bytes());
        z.extend_from_slice(b);
    }
    z.extend_from_slice(&[0, 0, 0, 0]);
    v.extend_from_slice(&(z.len() as u32).to_be_bytes());
    v.extend_from_slice(b"IDAT");
    v.extend_from_slice(&z);
    v.extend_from_slice(&[0; 4]);
    v.extend_from_slice(b"\0\0\0\0IEND\0\0\0\0");
    v
}

/// Issue 14 (low): a PNG declaring 60000 × 60000 with 10 rows of data was
/// accepted as that size.
#[test]
fn a_png_too_small_for_its_size_is_refused() {
    let p = Policy::default_for(Kind::Image);
    check(&p, "a.png", &png_with_rows(600, 60, 60), "pass");
    let bomb = png_with_rows(60000, 60000, 10);
    assert!(bomb.len() < 3 << 20);
    check(&p, "a.png", &bomb, "format/image");
}

fn bmp(width: i32, height: i32) -> Vec<u8> {
    let mut v = b"BM".to_vec();
    v.extend_from_slice(&70u32.to_le_bytes());
    v.extend_from_slice(&[0; 4]);
    v.extend_from_slice(&54u32.to_le_bytes());
    v.extend_from_slice(&40u32.to_le_bytes());
    v.extend_from_slice(&width.to_le_bytes());
    v.extend_from_slice(&height.to_le_bytes());
    v.extend_from_slice(&1u16.to_le_bytes());
    v.extend_from_slice(&24u16.to_le_bytes());
    v.resize(70, 0);
    v
}

#[test]
fn images_are_measured() {
    let mut p = Policy::default_for(Kind::Image);
    let i = check(&p, "a.png", &png(64, 32), "pass");
    assert_eq!(i.rows[0].content, json!({"format": "png", "width": 64, "height": 32}));
    assert_eq!(i.rows[0].score, 1.0);
    assert!(i.rows[0].minhash.is_empty() && i.rows[0].text.is_empty());
    assert_eq!(i.rows[0].exact_hash, crate::hash::sha256(&png(64, 32)));
    let i = check(&p, "a.bmp", &bmp(10, -20), "pass");
    assert_eq!(i.rows[0].content, json!({"format": "bmp", "width": 10, "height": 20}));
    p.gates.min_width = 100;
    p.gates.max_height = 16;
    check(&p, "a.png", &png(64, 32), "image_size/width image_size/height");
    check(&p, "a.jpg", &png(64, 32), "format/detected");
    check(&p, "a.png", b"\x89PNG\r\n\x1a\n", "format/image");
}

#[test]
fn audio_is_measured() {
    let wav = crate::media::tests::wav_bytes(3);
    let mut p = Policy::default_for(Kind::Audio);
    let i = check(&p, "a.wav", &wav, "pass");
    assert_eq!(
        i.rows[0].content,
        json!({"format": "wav", "duration_seconds": 3.0, "sample_rate": 8000, "channels": 1})
    );
    p.gates.max_duration_seconds = 2.0;
    check(&p, "a.wav", &wav, "duration/duration_seconds");
    p.gates.max_duration_seconds = 0.0;
    p.gates.min_duration_seconds = 5.0;
    check(&p, "a.wav", &wav, "duration/duration_seconds");
    check(&p, "a.wav", b"RIFF\0\0\0\0WAVEjunk", "format/audio");
    check(&Policy::default_for(Kind::Audio), "a.mp3", &wav, "format/detected");
}

// ----- properties -----

/// A reference port of datatrove's GopherRepetitionFilter n-gram measures,
/// straight from the Python, to cross-check the fast version.
fn reference_ngram_ratios(text: &str) -> Vec<f64> {
    use std::collections::{HashMap, HashSet};
    let mut toks = Vec::new();
    crate::text::tokenize(text, &mut toks);
    let words: Vec<&str> = toks.iter().map(|t| &text[t.start..t.end]).collect();
    let len = text.chars().count() as f64;
    let mut out = Vec::new();
    for n in 2..=4 {
        if words.len() < n {
            break;
        }
        let grams: Vec<String> = words.windows(n).map(|w| w.join(" ")).collect();
        let mut counts: HashMap<&str, (usize, usize)> = HashMap::new();
        for (i, g) in grams.iter().enumerate() {
            counts.entry(g).or_insert((0, i)).0 += 1;
        }
        let (g, (c, _)) = counts.iter().max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(b.1 .1.cmp(&a.1 .1))).unwrap();
        out.push((g.chars().count() * c) as f64 / len);
    }
    for n in 5..=10 {
        if words.len() < n {
            break;
        }
        let mut seen = HashSet::new();
        let (mut repeated, mut i) = (0usize, 0usize);
        while i + n <= words.len() {
            // `"".join(words[idx : idx + n])`
            let g = words[i..i + n].concat();
            if seen.contains(&g) {
                repeated += g.chars().count();
                i += n;
            } else {
                seen.insert(g);
                i += 1;
            }
        }
        out.push(repeated as f64 / len);
    }
    out
}

const EXTENSIONS: [&str; 17] = [
    "txt", "md", "pdf", "docx", "jsonl", "csv", "parquet", "png", "jpg", "webp", "tiff", "bmp", "wav", "mp3", "flac",
    "bin", "",
];

fn fuzz_cases(default: u32) -> u32 {
    std::env::var("MERIT_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Seeds that reach deep into each parser, for mutation, with their extension.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("pdf", crate::pdf::tests::pdf_bytes(&["Hello world.", "Second line."])),
        ("docx", crate::docx::tests::docx_bytes(&crate::docx::tests::document(&["One.", "Two."]))),
        ("parquet", hand_parquet(40, 9)),
        ("parquet", nested_messages_parquet()),
        ("parquet", write_parquet(&[("text".into(), Column::Utf8(vec!["a".into(), "b".into()]))]).unwrap_or_default()),
        ("png", png(3, 4)),
        ("bmp", bmp(3, 4)),
        ("wav", crate::media::tests::wav_bytes(1)),
        ("jsonl", jsonl(&[json!({"text": PROSE}), json!({"messages": [{"role": "user", "content": "x"}]})])),
        ("csv", b"text,a\n\"x\",1\n".to_vec()),
    ]
}

/// Seed corpora for the cargo-fuzz targets in `fuzz/`: each seed is checked
/// here, and written to `$MERIT_FUZZ_SEEDS/<target>/` when that is set
/// (`scripts/fuzz.sh` does).
#[test]
fn fuzz_seeds() {
    let mut corpora: Vec<(&str, Vec<Vec<u8>>)> = Vec::new();
    let sentences: Vec<&str> = PROSE.split_inclusive(". ").map(str::trim).collect();
    corpora.push(("pdf", vec![crate::pdf::tests::pdf_bytes(&sentences)]));
    corpora.push(("docx", vec![crate::docx::tests::docx_bytes(&crate::docx::tests::document(&sentences))]));
    corpora.push(("parquet", vec![hand_parquet(40, 9), nested_messages_parquet()]));
    corpora.push((
        "jsonl",
        vec![
            jsonl(&[json!({"text": PROSE}), json!({"text": PROSE2})]),
            jsonl(&[json!({"instruction": "a", "input": "b", "output": "c", "history": [["d", "e"]]})]),
            jsonl(&[json!({"conversations": [{"from": "human", "value": "Hi"}]})]),
            jsonl(&[json!({"messages": [{"role": "user", "content": "Hi"}]})]),
        ],
    ));
    corpora.push((
        "csv",
        vec![
            format!("text\n\"{PROSE}\"\n").into_bytes(),
            b"instruction,input,output\na,b,c\n".to_vec(),
            b"messages\n\"[{\"\"role\"\":\"\"user\"\",\"\"content\"\":\"\"Hi\"\"}]\"\n".to_vec(),
        ],
    ));
    corpora.push((
        "text",
        vec![PROSE.as_bytes().to_vec(), format!("{PROSE} Mail a@b.io or call 555-123-4567.").into_bytes()],
    ));
    corpora.push(("image", vec![png(64, 32), bmp(10, -20)]));
    let mut mp3 = Vec::new();
    for _ in 0..4 {
        mp3.extend_from_slice(&[0xFF, 0xFB, 0x90, 0x00]);
        mp3.resize(mp3.len() + 413, 0);
    }
    corpora.push(("audio", vec![crate::media::tests::wav_bytes(1), mp3]));
    let mut any = vec![2u8];
    any.extend_from_slice(&crate::pdf::tests::pdf_bytes(&["Hello."]));
    corpora.push(("any", vec![any, [&[4u8][..], &jsonl(&[json!({"text": "x"})])].concat()]));
    corpora.push((
        "policy",
        vec![b"kind = \"text\"\nformats = [\"txt\", \"pdf\"]\nrows = \"alpaca\"\n[gates]\nmin_words = 5\npii = \"redact\"\njson_schema = \"s.json\"\n".to_vec()],
    ));
    let out = std::env::var_os("MERIT_FUZZ_SEEDS").map(std::path::PathBuf::from);
    for (target, seeds) in corpora {
        for (i, seed) in seeds.iter().enumerate() {
            if target != "policy" && target != "any" {
                let kind = match target {
                    "image" => Kind::Image,
                    "audio" => Kind::Audio,
                    _ => Kind::Text,
                };
                let ext = match target {
                    "text" => "txt",
                    "image" | "audio" => "",
                    t => t,
                };
                let i = inspect(&Policy::default_for(kind), &format!("seed.{ext}"), seed);
                assert!(i.format.is_some() && !i.rows.is_empty(), "{target} seed: {:?}", i.reasons);
            }
            if let Some(dir) = &out {
                let dir = dir.join(target);
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join(format!("seed-{i}")), seed).unwrap();
            }
        }
    }
}

/// Every media and text policy, for the fuzz targets.
fn fuzz_policies() -> Vec<Policy> {
    let mut out = Vec::new();
    for rows in [RowSchema::Text, RowSchema::Alpaca, RowSchema::Sharegpt, RowSchema::Messages] {
        out.push(with_rows(text_policy(), rows));
    }
    let mut redact = text_policy();
    redact.gates.pii = PiiMode::Redact;
    out.push(redact);
    out.push(Policy::default_for(Kind::Image));
    out.push(Policy::default_for(Kind::Audio));
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: fuzz_cases(64), ..ProptestConfig::default() })]

    #[test]
    fn fuzz_inspect_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048), ext in 0..EXTENSIONS.len()) {
        for kind in [Kind::Text, Kind::Image, Kind::Audio] {
            let mut p = Policy::default_for(kind);
            p.rows = RowSchema::Messages;
            let i = inspect(&p, &format!("f.{}", EXTENSIONS[ext]), &bytes);
            prop_assert!(i.reasons.len() <= crate::MAX_REASONS);
        }
    }

    #[test]
    fn fuzz_inspect_never_panics_on_mutated_files(
        seed in 0..10usize,
        edits in proptest::collection::vec((any::<u32>(), any::<u8>()), 1..16),
        cut in any::<u32>(),
    ) {
        let (ext, mut bytes) = seeds().swap_remove(seed);
        for (at, v) in edits {
            if !bytes.is_empty() {
                let i = at as usize % bytes.len();
                bytes[i] = v;
            }
        }
        if cut % 4 == 0 && !bytes.is_empty() {
            bytes.truncate(cut as usize % bytes.len());
        }
        for p in fuzz_policies() {
            let _ = inspect(&p, &format!("f.{ext}"), &bytes);
        }
    }

    #[test]
    fn fuzz_policy_from_toml_never_panics(text in "[a-z_=\\[\\]\" .0-9\n-]{0,200}") {
        let _ = Policy::from_toml(&text, |_| Err("no files".into()));
    }

    #[test]
    fn minhash_of_identical_texts(words in proptest::collection::vec("[a-zA-Z]{1,8}", 0..60)) {
        let text = words.join(" ");
        let a = minhash::signature(&text);
        let b = minhash::signature(&format!("  {}\n", text.to_lowercase()));
        prop_assert_eq!(minhash::similarity(&a, &b), 1.0);
        prop_assert_eq!(minhash::band_keys(&a), minhash::band_keys(&b));
        prop_assert_eq!(a.len(), minhash::BANDS * minhash::ROWS);
    }

    #[test]
    fn repetition_matches_the_reference(words in proptest::collection::vec(0..6usize, 0..120)) {
        const VOCAB: [&str; 6] = ["the", "river", "runs,", "old", "town.", "and"];
        let text: String = words.iter().map(|&w| VOCAB[w]).collect::<Vec<_>>().join(" ");
        let mut rules = Vec::new();
        let mut s = crate::text::Scratch::new();
        crate::text::tokenize(&text, &mut s.toks);
        let gates = only(|g| g.gopher_repetition = true).gates;
        crate::text::measure(&text, &gates, &mut s);
        rules.extend(s.rules.iter().filter(|r| r.metric.contains("gram")).map(|r| r.value));
        let expected = reference_ngram_ratios(&text);
        prop_assert_eq!(rules.len(), expected.len());
        for (got, want) in rules.iter().zip(&expected) {
            prop_assert!((got - want).abs() < 1e-9, "{} vs {}", got, want);
        }
    }
}
