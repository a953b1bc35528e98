//! The datanet policy: what a datanet accepts, parsed from TOML and checked
//! key by key so that a refusal names the key and the reason.

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

/// What a datanet holds. Fixed when the datanet is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Documents and structured text rows.
    Text,
    /// Pictures.
    Image,
    /// Sound recordings.
    Audio,
}

impl Kind {
    /// The lowercase name used in policies and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Image => "image",
            Kind::Audio => "audio",
        }
    }

    /// Formats a datanet of this kind may accept.
    pub fn formats(self) -> &'static [Format] {
        use Format::*;
        match self {
            Kind::Text => &[Txt, Md, Pdf, Docx, Jsonl, Csv, Parquet],
            Kind::Image => &[Png, Jpg, Webp, Tiff, Bmp],
            Kind::Audio => &[Wav, Mp3, Flac],
        }
    }
}

/// A file format, recognised by content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Txt,
    Md,
    Pdf,
    Docx,
    Jsonl,
    Csv,
    Parquet,
    Png,
    /// JPEG; `jpeg` is accepted as a synonym in policies.
    Jpg,
    Webp,
    Tiff,
    Bmp,
    Wav,
    Mp3,
    Flac,
}

impl Format {
    /// Every format Merit knows.
    pub const ALL: [Format; 15] = [
        Format::Txt,
        Format::Md,
        Format::Pdf,
        Format::Docx,
        Format::Jsonl,
        Format::Csv,
        Format::Parquet,
        Format::Png,
        Format::Jpg,
        Format::Webp,
        Format::Tiff,
        Format::Bmp,
        Format::Wav,
        Format::Mp3,
        Format::Flac,
    ];

    /// The lowercase name (also the usual file extension).
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Txt => "txt",
            Format::Md => "md",
            Format::Pdf => "pdf",
            Format::Docx => "docx",
            Format::Jsonl => "jsonl",
            Format::Csv => "csv",
            Format::Parquet => "parquet",
            Format::Png => "png",
            Format::Jpg => "jpg",
            Format::Webp => "webp",
            Format::Tiff => "tiff",
            Format::Bmp => "bmp",
            Format::Wav => "wav",
            Format::Mp3 => "mp3",
            Format::Flac => "flac",
        }
    }

    /// Parses a format name or file extension (case-insensitive).
    pub fn from_name(name: &str) -> Option<Format> {
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "jpeg" => Some(Format::Jpg),
            "tif" => Some(Format::Tiff),
            "markdown" => Some(Format::Md),
            "text" => Some(Format::Txt),
            "ndjson" => Some(Format::Jsonl),
            other => Format::ALL.into_iter().find(|f| f.as_str() == other),
        }
    }

    /// The kind of datanet this format belongs to.
    pub fn kind(self) -> Kind {
        [Kind::Text, Kind::Image, Kind::Audio].into_iter().find(|k| k.formats().contains(&self)).unwrap_or(Kind::Text)
    }

    /// Whether rows come from a structured file (one row per record).
    pub fn is_structured(self) -> bool {
        matches!(self, Format::Jsonl | Format::Csv | Format::Parquet)
    }
}

/// The schema of rows read from jsonl, csv and parquet files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RowSchema {
    /// `{"text": "..."}`
    Text,
    /// `{"instruction", "input"?, "output", "system"?, "history"?}`
    Alpaca,
    /// `{"conversations": [{"from", "value"}]}`
    Sharegpt,
    /// `{"messages": [{"role", "content"}]}`
    Messages,
}

impl RowSchema {
    /// The lowercase name used in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            RowSchema::Text => "text",
            RowSchema::Alpaca => "alpaca",
            RowSchema::Sharegpt => "sharegpt",
            RowSchema::Messages => "messages",
        }
    }
}

/// Who decides on a contribution that passed the gates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Review {
    /// Files that pass every gate are accepted at once.
    Auto,
    /// Files that pass every gate wait for the owner or a curator.
    Owner,
}

/// What to do with personal data found in text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PiiMode {
    /// A row with personal data rejects the file.
    Reject,
    /// Personal data is replaced by a placeholder such as `<EMAIL>`.
    Redact,
    /// Personal data is not looked for.
    Allow,
}

/// Daily limits, counted per UTC day. Zero switches a limit off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Bytes one user may submit per day, across all datanets.
    pub user_bytes_per_day: u64,
    /// Files one user may submit per day, across all datanets.
    pub user_files_per_day: u64,
    /// Bytes one datanet may receive per day, from everyone.
    pub datanet_bytes_per_day: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { user_bytes_per_day: 10_000_000, user_files_per_day: 20, datanet_bytes_per_day: 10_000_000 }
    }
}

/// Quality gates. Every gate can be switched off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gates {
    /// Fewest words in a text row (0 = off).
    pub min_words: u64,
    /// Most words in a text row (0 = off).
    pub max_words: u64,
    /// ISO 639-1 codes of accepted languages; empty = any.
    pub languages: Vec<String>,
    /// Estimated Jaccard similarity at or above which a row is a near duplicate.
    pub near_duplicate_threshold: f64,
    /// Personal data handling.
    pub pii: PiiMode,
    /// Extra JSON Schema for structured rows (resolved: the schema itself).
    pub json_schema: Option<serde_json::Value>,
    /// Gopher quality rules (word lengths, symbols, bullets, ellipses, stop words).
    pub gopher_quality: bool,
    /// Gopher repetition rules (duplicate lines, paragraphs and n-grams).
    pub gopher_repetition: bool,
    /// C4-style line rules (terminal punctuation, javascript, lorem ipsum, curly brackets).
    pub c4: bool,
    /// FineWeb-style rules (punctuated lines, short lines, duplicated lines, newlines).
    pub fineweb: bool,
    /// Exact duplicates (SHA-256 of normalised text) in the file and the datanet.
    pub exact_duplicates: bool,
    /// Near duplicates (MinHash-LSH) in the file and the datanet.
    pub near_duplicates: bool,
    /// Smallest image width in pixels (0 = off).
    pub min_width: u64,
    /// Smallest image height in pixels (0 = off).
    pub min_height: u64,
    /// Largest image width in pixels (0 = off).
    pub max_width: u64,
    /// Largest image height in pixels (0 = off).
    pub max_height: u64,
    /// Shortest audio duration in seconds (0 = off).
    pub min_duration_seconds: f64,
    /// Longest audio duration in seconds (0 = off).
    pub max_duration_seconds: f64,
}

impl Default for Gates {
    fn default() -> Self {
        Gates {
            min_words: 50,
            max_words: 100_000,
            languages: vec!["en".to_string()],
            near_duplicate_threshold: 0.8,
            pii: PiiMode::Reject,
            json_schema: None,
            gopher_quality: true,
            gopher_repetition: true,
            c4: true,
            fineweb: true,
            exact_duplicates: true,
            near_duplicates: true,
            min_width: 0,
            min_height: 0,
            max_width: 0,
            max_height: 0,
            min_duration_seconds: 0.0,
            max_duration_seconds: 600.0,
        }
    }
}

/// A checked datanet policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub kind: Kind,
    pub formats: Vec<Format>,
    pub rows: RowSchema,
    pub max_file_bytes: u64,
    pub review: Review,
    pub limits: Limits,
    pub gates: Gates,
}

/// The largest `max_file_bytes` a policy may declare (uploads stream to disk,
/// but the gates read a file whole, under `merit serve --request-memory`).
pub const MAX_FILE_BYTES_CEILING: u64 = 256 * 1024 * 1024;

/// A policy was refused: `key` is the dotted TOML key, `reason` says why.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize)]
#[error("policy key `{key}`: {reason}")]
pub struct PolicyError {
    pub key: String,
    pub reason: String,
}

impl PolicyError {
    fn new(key: &str, reason: impl Into<String>) -> Self {
        PolicyError { key: key.to_string(), reason: reason.into() }
    }
}

impl Policy {
    /// The default policy for a datanet of `kind`.
    pub fn default_for(kind: Kind) -> Policy {
        Policy {
            kind,
            formats: kind.formats().to_vec(),
            rows: RowSchema::Text,
            max_file_bytes: 5_000_000,
            review: Review::Auto,
            limits: Limits::default(),
            gates: Gates::default(),
        }
    }

    /// Parses and checks a policy written in TOML.
    ///
    /// `load_schema` is called with the `gates.json_schema` path when the
    /// policy names one; it returns the file's text or a reason it could not
    /// be read. Core code does no I/O, so the caller decides where files are.
    pub fn from_toml(
        text: &str,
        load_schema: impl FnOnce(&str) -> Result<String, String>,
    ) -> Result<Policy, PolicyError> {
        let table: Table = text.parse::<Table>().map_err(|e| {
            let msg = e.message().to_string();
            PolicyError::new("(file)", format!("not valid TOML: {msg}"))
        })?;
        let mut reader = Reader { table: &table, prefix: "" };
        reader.known(&["kind", "formats", "rows", "max_file_bytes", "review", "limits", "gates"])?;

        let kind = match reader.string("kind")? {
            None => Kind::Text,
            Some(s) => match s.as_str() {
                "text" => Kind::Text,
                "image" => Kind::Image,
                "audio" => Kind::Audio,
                other => {
                    return Err(PolicyError::new(
                        "kind",
                        format!("`{other}` is not a kind; expected text, image or audio"),
                    ))
                }
            },
        };
        let mut policy = Policy::default_for(kind);

        if let Some(list) = reader.strings("formats")? {
            if list.is_empty() {
                return Err(PolicyError::new("formats", "must name at least one format"));
            }
            let mut formats = Vec::new();
            for name in &list {
                let Some(format) = Format::from_name(name) else {
                    return Err(PolicyError::new("formats", format!("`{name}` is not a known format")));
                };
                if format.kind() != kind {
                    let allowed: Vec<&str> = kind.formats().iter().map(|f| f.as_str()).collect();
                    return Err(PolicyError::new(
                        "formats",
                        format!(
                            "`{name}` is not a {} format; a {} datanet accepts {}",
                            kind.as_str(),
                            kind.as_str(),
                            allowed.join(", ")
                        ),
                    ));
                }
                if !formats.contains(&format) {
                    formats.push(format);
                }
            }
            policy.formats = formats;
        }
        if let Some(s) = reader.string("rows")? {
            policy.rows = match s.as_str() {
                "text" => RowSchema::Text,
                "alpaca" => RowSchema::Alpaca,
                "sharegpt" => RowSchema::Sharegpt,
                "messages" => RowSchema::Messages,
                other => {
                    return Err(PolicyError::new(
                        "rows",
                        format!("`{other}` is not a row schema; expected text, alpaca, sharegpt or messages"),
                    ))
                }
            };
        }
        if let Some(n) = reader.uint("max_file_bytes")? {
            if n == 0 || n > MAX_FILE_BYTES_CEILING {
                return Err(PolicyError::new(
                    "max_file_bytes",
                    format!("must be between 1 and {MAX_FILE_BYTES_CEILING}, got {n}"),
                ));
            }
            policy.max_file_bytes = n;
        }
        if let Some(s) = reader.string("review")? {
            policy.review = match s.as_str() {
                "auto" => Review::Auto,
                "owner" => Review::Owner,
                other => {
                    return Err(PolicyError::new(
                        "review",
                        format!("`{other}` is not a review mode; expected auto or owner"),
                    ))
                }
            };
        }

        if let Some(limits) = reader.table("limits")? {
            let mut r = Reader { table: limits, prefix: "limits." };
            r.known(&["user_bytes_per_day", "user_files_per_day", "datanet_bytes_per_day"])?;
            if let Some(n) = r.uint("user_bytes_per_day")? {
                policy.limits.user_bytes_per_day = n;
            }
            if let Some(n) = r.uint("user_files_per_day")? {
                policy.limits.user_files_per_day = n;
            }
            if let Some(n) = r.uint("datanet_bytes_per_day")? {
                policy.limits.datanet_bytes_per_day = n;
            }
        }

        if let Some(gates) = reader.table("gates")? {
            let mut r = Reader { table: gates, prefix: "gates." };
            r.known(&[
                "min_words",
                "max_words",
                "languages",
                "near_duplicate_threshold",
                "pii",
                "json_schema",
                "gopher_quality",
                "gopher_repetition",
                "c4",
                "fineweb",
                "exact_duplicates",
                "near_duplicates",
                "min_width",
                "min_height",
                "max_width",
                "max_height",
                "min_duration_seconds",
                "max_duration_seconds",
            ])?;
            let g = &mut policy.gates;
            if let Some(n) = r.uint("min_words")? {
                g.min_words = n;
            }
            if let Some(n) = r.uint("max_words")? {
                g.max_words = n;
            }
            if g.max_words != 0 && g.min_words > g.max_words {
                return Err(PolicyError::new(
                    "gates.min_words",
                    format!("is {} but gates.max_words is {}", g.min_words, g.max_words),
                ));
            }
            if let Some(list) = r.strings("languages")? {
                for code in &list {
                    if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_lowercase()) {
                        return Err(PolicyError::new(
                            "gates.languages",
                            format!("`{code}` is not a two-letter lowercase ISO 639-1 code"),
                        ));
                    }
                    if !crate::lang::is_supported(code) {
                        return Err(PolicyError::new(
                            "gates.languages",
                            format!("`{code}` is not a language Merit can identify"),
                        ));
                    }
                }
                g.languages = list;
            }
            if let Some(x) = r.float("near_duplicate_threshold")? {
                if !(x > 0.0 && x <= 1.0) {
                    return Err(PolicyError::new(
                        "gates.near_duplicate_threshold",
                        format!("must be in (0, 1], got {x}"),
                    ));
                }
                g.near_duplicate_threshold = x;
            }
            if let Some(s) = r.string("pii")? {
                g.pii = match s.as_str() {
                    "reject" => PiiMode::Reject,
                    "redact" => PiiMode::Redact,
                    "allow" => PiiMode::Allow,
                    other => {
                        return Err(PolicyError::new(
                            "gates.pii",
                            format!("`{other}` is not a PII mode; expected reject, redact or allow"),
                        ))
                    }
                };
            }
            if let Some(path) = r.string("json_schema")? {
                let text = load_schema(&path)
                    .map_err(|why| PolicyError::new("gates.json_schema", format!("cannot read `{path}`: {why}")))?;
                let schema: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| PolicyError::new("gates.json_schema", format!("`{path}` is not JSON: {e}")))?;
                crate::schema::check_schema(&schema)
                    .map_err(|why| PolicyError::new("gates.json_schema", format!("`{path}`: {why}")))?;
                g.json_schema = Some(schema);
            }
            for (key, slot) in [
                ("gopher_quality", &mut g.gopher_quality),
                ("gopher_repetition", &mut g.gopher_repetition),
                ("c4", &mut g.c4),
                ("fineweb", &mut g.fineweb),
                ("exact_duplicates", &mut g.exact_duplicates),
                ("near_duplicates", &mut g.near_duplicates),
            ] {
                if let Some(b) = r.bool(key)? {
                    *slot = b;
                }
            }
            for (key, slot) in [
                ("min_width", &mut g.min_width),
                ("min_height", &mut g.min_height),
                ("max_width", &mut g.max_width),
                ("max_height", &mut g.max_height),
            ] {
                if let Some(n) = r.uint(key)? {
                    *slot = n;
                }
            }
            for (lo, hi) in [("min_width", "max_width"), ("min_height", "max_height")] {
                let (a, b) = if lo == "min_width" { (g.min_width, g.max_width) } else { (g.min_height, g.max_height) };
                if b != 0 && a > b {
                    return Err(PolicyError::new(&format!("gates.{lo}"), format!("is {a} but gates.{hi} is {b}")));
                }
            }
            for (key, slot) in [
                ("min_duration_seconds", &mut g.min_duration_seconds),
                ("max_duration_seconds", &mut g.max_duration_seconds),
            ] {
                if let Some(x) = r.float(key)? {
                    if !(x >= 0.0 && x.is_finite()) {
                        return Err(PolicyError::new(
                            &format!("gates.{key}"),
                            format!("must be a non-negative number, got {x}"),
                        ));
                    }
                    *slot = x;
                }
            }
            if g.max_duration_seconds != 0.0 && g.min_duration_seconds > g.max_duration_seconds {
                return Err(PolicyError::new(
                    "gates.min_duration_seconds",
                    format!(
                        "is {} but gates.max_duration_seconds is {}",
                        g.min_duration_seconds, g.max_duration_seconds
                    ),
                ));
            }
        }
        Ok(policy)
    }

    /// SHA-256 of the policy's canonical JSON, as lowercase hex.
    pub fn hash_hex(&self) -> String {
        crate::sha256_hex(serde_json::to_string(self).unwrap_or_default().as_bytes())
    }
}

struct Reader<'a> {
    table: &'a Table,
    prefix: &'static str,
}

impl<'a> Reader<'a> {
    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    fn known(&mut self, keys: &[&str]) -> Result<(), PolicyError> {
        for k in self.table.keys() {
            if !keys.contains(&k.as_str()) {
                return Err(PolicyError::new(
                    &self.key(k),
                    format!("unknown key; expected one of {}", keys.join(", ")),
                ));
            }
        }
        Ok(())
    }

    fn type_error(&self, k: &str, want: &str, got: &Value) -> PolicyError {
        PolicyError::new(&self.key(k), format!("must be {want}, got {}", got.type_str()))
    }

    fn string(&self, k: &str) -> Result<Option<String>, PolicyError> {
        match self.table.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.type_error(k, "a string", v)),
        }
    }

    fn strings(&self, k: &str) -> Result<Option<Vec<String>>, PolicyError> {
        match self.table.get(k) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    v => Err(self.type_error(k, "a list of strings", v)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(self.type_error(k, "a list of strings", v)),
        }
    }

    fn uint(&self, k: &str) -> Result<Option<u64>, PolicyError> {
        match self.table.get(k) {
            None => Ok(None),
            Some(Value::Integer(n)) if *n >= 0 => Ok(Some(*n as u64)),
            Some(Value::Integer(n)) => Err(PolicyError::new(&self.key(k), format!("must not be negative, got {n}"))),
            Some(v) => Err(self.type_error(k, "a whole number", v)),
        }
    }

    fn float(&self, k: &str) -> Result<Option<f64>, PolicyError> {
        match self.table.get(k) {
            None => Ok(None),
            Some(Value::Float(x)) => Ok(Some(*x)),
            Some(Value::Integer(n)) => Ok(Some(*n as f64)),
            Some(v) => Err(self.type_error(k, "a number", v)),
        }
    }

    fn bool(&self, k: &str) -> Result<Option<bool>, PolicyError> {
        match self.table.get(k) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(*b)),
            Some(v) => Err(self.type_error(k, "true or false", v)),
        }
    }

    fn table(&self, k: &str) -> Result<Option<&'a Table>, PolicyError> {
        match self.table.get(k) {
            None => Ok(None),
            Some(Value::Table(t)) => Ok(Some(t)),
            Some(v) => Err(self.type_error(k, "a table", v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Policy, PolicyError> {
        Policy::from_toml(text, |p| match p {
            "schema.json" => Ok(r#"{"type":"object","required":["text"]}"#.to_string()),
            "bad.json" => Ok("{".to_string()),
            _ => Err("no such file".to_string()),
        })
    }

    fn refused(text: &str) -> (String, String) {
        let e = parse(text).expect_err("policy should be refused");
        (e.key, e.reason)
    }

    #[test]
    fn the_documented_example_parses_to_the_defaults() {
        let p = parse(
            r#"
kind = "text"
formats = ["txt", "md", "pdf", "docx", "jsonl", "csv", "parquet"]
rows = "text"
max_file_bytes = 5000000
review = "auto"
[limits]
user_bytes_per_day = 10000000
user_files_per_day = 20
datanet_bytes_per_day = 10000000
[gates]
min_words = 50
max_words = 100000
languages = ["en"]
near_duplicate_threshold = 0.8
pii = "reject"
"#,
        )
        .unwrap();
        assert_eq!(p, Policy::default_for(Kind::Text));
        assert_eq!(parse("").unwrap(), Policy::default_for(Kind::Text));
    }

    #[test]
    fn image_policy_defaults_to_image_formats() {
        let p = parse("kind = \"image\"\n[gates]\nmin_width = 32\nmax_width = 4096").unwrap();
        assert_eq!(p.formats, Kind::Image.formats());
        assert_eq!(p.gates.min_width, 32);
        assert_eq!(parse("kind = \"image\"\nformats = [\"jpeg\"]").unwrap().formats, vec![Format::Jpg]);
    }

    #[test]
    fn refusals_name_the_key() {
        assert_eq!(refused("kind = \"video\"").0, "kind");
        assert_eq!(refused("kind = \"image\"\nformats = [\"pdf\"]").0, "formats");
        assert_eq!(refused("formats = [\"exe\"]").0, "formats");
        assert_eq!(refused("formats = []").0, "formats");
        assert_eq!(refused("rows = \"xml\"").0, "rows");
        assert_eq!(refused("max_file_bytes = 0").0, "max_file_bytes");
        assert_eq!(refused("max_file_bytes = \"big\"").0, "max_file_bytes");
        assert_eq!(refused("review = \"nobody\"").0, "review");
        assert_eq!(refused("colour = 1").0, "colour");
        assert_eq!(refused("[limits]\nuser_files_per_day = -1").0, "limits.user_files_per_day");
        assert_eq!(refused("[limits]\nfiles = 1").0, "limits.files");
        assert_eq!(refused("[gates]\nmin_words = 10\nmax_words = 5").0, "gates.min_words");
        assert_eq!(refused("[gates]\nlanguages = [\"english\"]").0, "gates.languages");
        assert_eq!(refused("[gates]\nnear_duplicate_threshold = 1.5").0, "gates.near_duplicate_threshold");
        assert_eq!(refused("[gates]\npii = \"hide\"").0, "gates.pii");
        assert_eq!(refused("[gates]\njson_schema = \"missing.json\"").0, "gates.json_schema");
        assert_eq!(refused("[gates]\njson_schema = \"bad.json\"").0, "gates.json_schema");
        assert_eq!(refused("[gates]\nc4 = \"yes\"").0, "gates.c4");
        assert_eq!(refused("gates = 3").0, "gates");
        assert_eq!(refused("kind = ").0, "(file)");
    }

    #[test]
    fn gates_can_be_switched_off() {
        let p = parse("[gates]\nmin_words = 0\nlanguages = []\npii = \"allow\"\nc4 = false\nfineweb = false\ngopher_quality = false\ngopher_repetition = false\nnear_duplicates = false\nexact_duplicates = false").unwrap();
        assert_eq!(p.gates.min_words, 0);
        assert!(p.gates.languages.is_empty());
        assert!(!p.gates.c4 && !p.gates.fineweb && !p.gates.near_duplicates);
    }

    #[test]
    fn schema_is_loaded_and_kept() {
        let p = parse("rows = \"text\"\n[gates]\njson_schema = \"schema.json\"").unwrap();
        assert_eq!(p.gates.json_schema.unwrap()["required"][0], "text");
    }
}
