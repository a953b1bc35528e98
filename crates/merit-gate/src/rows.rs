//! Structured rows: the four row schemas and the jsonl and csv readers.

use merit_core::RowSchema;
use std::borrow::Cow;

use serde_json::{json, Map, Value};

/// A record shaped by a row schema: its text fields can be redacted in place.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Shaped {
    Text(String),
    Alpaca {
        instruction: String,
        input: Option<String>,
        output: String,
        system: Option<String>,
        history: Option<Vec<(String, String)>>,
    },
    Sharegpt(Vec<(String, String)>),
    Messages(Vec<(String, String)>),
}

impl Shaped {
    /// The text fields, in the order they are joined for the gates.
    pub(crate) fn fields_mut(&mut self) -> Vec<&mut String> {
        match self {
            Shaped::Text(t) => vec![t],
            Shaped::Alpaca { instruction, input, output, system, history } => {
                let mut v = vec![instruction];
                if let Some(i) = input {
                    v.push(i);
                }
                v.push(output);
                if let Some(s) = system {
                    v.push(s);
                }
                if let Some(h) = history {
                    for (q, a) in h {
                        v.push(q);
                        v.push(a);
                    }
                }
                v
            }
            Shaped::Sharegpt(turns) | Shaped::Messages(turns) => turns.iter_mut().map(|(_, text)| text).collect(),
        }
    }

    /// The text the gates measure: the non-empty text fields joined by `\n`.
    pub(crate) fn text(&mut self) -> String {
        let fields = self.fields_mut();
        let mut out = String::with_capacity(fields.iter().map(|f| f.len() + 1).sum());
        for f in fields {
            if f.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(f);
        }
        out
    }

    /// The row as it is stored.
    pub(crate) fn into_value(self) -> Value {
        match self {
            Shaped::Text(t) => {
                let mut m = Map::new();
                m.insert("text".into(), Value::String(t));
                Value::Object(m)
            }
            Shaped::Alpaca { instruction, input, output, system, history } => {
                let mut m = Map::new();
                m.insert("instruction".into(), json!(instruction));
                if let Some(i) = input {
                    m.insert("input".into(), json!(i));
                }
                m.insert("output".into(), json!(output));
                if let Some(s) = system {
                    m.insert("system".into(), json!(s));
                }
                if let Some(h) = history {
                    m.insert("history".into(), Value::Array(h.iter().map(|(q, a)| json!([q, a])).collect()));
                }
                Value::Object(m)
            }
            Shaped::Sharegpt(turns) => json!({
                "conversations": turns.iter().map(|(from, value)| json!({"from": from, "value": value})).collect::<Vec<_>>()
            }),
            Shaped::Messages(turns) => json!({
                "messages": turns.iter().map(|(role, content)| json!({"role": role, "content": content})).collect::<Vec<_>>()
            }),
        }
    }
}

/// One record read from a structured file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Record {
    /// It fits the row schema; `original` is the record as read (for `json_schema`).
    Fits { shaped: Shaped, original: Option<Value> },
    /// It does not; `original` is what could be read of it.
    Misfit { original: Value, error: String },
}

const SHAREGPT_FROM: [&str; 7] = ["human", "gpt", "system", "user", "assistant", "function_call", "observation"];
const MESSAGE_ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

fn string_field(obj: &Map<String, Value>, key: &str, required: bool) -> Result<Option<String>, String> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(Some(s.clone())),
        None | Some(Value::Null) if !required => Ok(None),
        None | Some(Value::Null) => Err(format!("missing required string field `{key}`")),
        Some(other) => Err(format!("field `{key}` must be a string, not {}", type_name(other))),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A list field; a string holding a JSON list (as csv and flat parquet files
/// carry lists) is read as that list.
fn list_value<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<Option<Cow<'a, [Value]>>, String> {
    match obj.get(key) {
        Some(Value::Array(items)) => Ok(Some(Cow::Borrowed(items.as_slice()))),
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Array(items)) => Ok(Some(Cow::Owned(items))),
            _ => Err(format!("field `{key}` must be a list (or a string holding a JSON list)")),
        },
        Some(other) => Err(format!("field `{key}` must be a list, not {}", type_name(other))),
    }
}

fn list_field<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<Cow<'a, [Value]>, String> {
    match list_value(obj, key)? {
        Some(items) if !items.is_empty() => Ok(items),
        Some(_) => Err(format!("field `{key}` must not be empty")),
        None => Err(format!("missing required list field `{key}`")),
    }
}

fn turns(items: &[Value], key: &str, who: &str, what: &str, allowed: &[&str]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(t) = item else {
            return Err(format!("`{key}[{i}]` must be an object with `{who}` and `{what}`"));
        };
        let speaker = match t.get(who) {
            Some(Value::String(s)) => s,
            _ => return Err(format!("`{key}[{i}].{who}` must be a string")),
        };
        if !allowed.contains(&speaker.as_str()) {
            return Err(format!("`{key}[{i}].{who}` is `{}`; expected one of {}", clip(speaker), allowed.join(", ")));
        }
        let text = match t.get(what) {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(format!("`{key}[{i}].{what}` must be a string")),
        };
        out.push((speaker.clone(), text));
    }
    Ok(out)
}

/// At most 40 characters of a value quoted in a message.
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// Shapes a JSON value by the row schema.
pub(crate) fn shape(schema: RowSchema, value: &Value) -> Result<Shaped, String> {
    let Value::Object(obj) = value else {
        return Err(format!("a row must be a JSON object, not {}", type_name(value)));
    };
    match schema {
        RowSchema::Text => Ok(Shaped::Text(string_field(obj, "text", true)?.unwrap_or_default())),
        RowSchema::Alpaca => {
            let instruction = string_field(obj, "instruction", true)?.unwrap_or_default();
            let output = string_field(obj, "output", true)?.unwrap_or_default();
            let input = string_field(obj, "input", false)?;
            let system = string_field(obj, "system", false)?;
            let history = match list_value(obj, "history")? {
                None => None,
                Some(pairs) => {
                    let mut h = Vec::with_capacity(pairs.len());
                    for (i, pair) in pairs.iter().enumerate() {
                        match pair.as_array().map(Vec::as_slice) {
                            Some([Value::String(q), Value::String(a)]) => h.push((q.clone(), a.clone())),
                            _ => return Err(format!("`history[{i}]` must be a pair of strings [user, assistant]")),
                        }
                    }
                    Some(h)
                }
            };
            Ok(Shaped::Alpaca { instruction, input, output, system, history })
        }
        RowSchema::Sharegpt => {
            let items = list_field(obj, "conversations")?;
            Ok(Shaped::Sharegpt(turns(&items, "conversations", "from", "value", &SHAREGPT_FROM)?))
        }
        RowSchema::Messages => {
            let items = list_field(obj, "messages")?;
            Ok(Shaped::Messages(turns(&items, "messages", "role", "content", &MESSAGE_ROLES)?))
        }
    }
}

/// The record from a parsed value; the value itself is kept only when
/// `keep_original` (a policy with a JSON schema checks it).
pub(crate) fn record(schema: RowSchema, mut value: Value, keep_original: bool) -> Record {
    // The common case, without a copy: a text row whose text is moved out.
    if !keep_original && schema == RowSchema::Text {
        if let Value::Object(obj) = &mut value {
            if let Some(Value::String(text)) = obj.get_mut("text") {
                return Record::Fits { shaped: Shaped::Text(std::mem::take(text)), original: None };
            }
        }
    }
    match shape(schema, &value) {
        Ok(shaped) => Record::Fits { shaped, original: keep_original.then_some(value) },
        Err(error) => Record::Misfit { original: value, error },
    }
}

/// Non-empty lines of a jsonl file (a `\r` before `\n` is dropped).
pub(crate) fn jsonl_lines(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).filter(|l| !l.trim().is_empty())
}

/// Whether every non-empty line is a JSON object (and there is at least one).
pub(crate) fn looks_like_jsonl(text: &str) -> bool {
    let mut any = false;
    for line in jsonl_lines(text) {
        let t = line.trim_start();
        if !t.starts_with('{') || serde_json::from_str::<Map<String, Value>>(line).is_err() {
            return false;
        }
        any = true;
    }
    any
}

/// Parses one jsonl line into a record.
pub(crate) fn jsonl_record(schema: RowSchema, line: &str, keep_original: bool) -> Record {
    match serde_json::from_str::<Value>(line) {
        Ok(v) => record(schema, v, keep_original),
        Err(e) => Record::Misfit { original: Value::Null, error: format!("not valid JSON: {e}") },
    }
}

/// Columns that hold lists, written as JSON strings in csv files.
fn list_column(schema: RowSchema, name: &str) -> bool {
    matches!(
        (schema, name),
        (RowSchema::Alpaca, "history") | (RowSchema::Sharegpt, "conversations") | (RowSchema::Messages, "messages")
    )
}

/// Reads a csv file with a header row; `Err` when it cannot be read as csv at all.
pub(crate) fn csv_records(
    schema: RowSchema,
    text: &str,
    max_rows: usize,
    keep_original: bool,
) -> Result<Vec<Record>, String> {
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(text.as_bytes());
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| format!("the csv header cannot be read: {e}"))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    if headers.is_empty() || headers.iter().all(String::is_empty) {
        return Err("the csv file has no header row".to_string());
    }
    let mut out = Vec::new();
    for result in reader.records() {
        if out.len() >= max_rows {
            return Err(format!("more than {max_rows} rows"));
        }
        let rec = match result {
            Ok(r) => r,
            Err(e) => {
                out.push(Record::Misfit { original: Value::Null, error: format!("not a valid csv record: {e}") });
                continue;
            }
        };
        let mut obj = Map::new();
        let mut bad = None;
        for (name, cell) in headers.iter().zip(rec.iter()) {
            let value = if list_column(schema, name) {
                match serde_json::from_str::<Value>(cell) {
                    Ok(v) => v,
                    Err(e) => {
                        bad.get_or_insert_with(|| format!("column `{name}` must hold a JSON list: {e}"));
                        Value::String(cell.to_string())
                    }
                }
            } else {
                Value::String(cell.to_string())
            };
            obj.insert(name.clone(), value);
        }
        let original = Value::Object(obj);
        out.push(match bad {
            Some(error) => Record::Misfit { original, error },
            None => record(schema, original, keep_original),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_follow_the_schemas() {
        let a = shape(
            RowSchema::Alpaca,
            &json!({"instruction": "Say hi", "output": "hi", "history": [["a", "b"]], "extra": 1}),
        )
        .unwrap();
        assert_eq!(a.clone().into_value(), json!({"instruction": "Say hi", "output": "hi", "history": [["a", "b"]]}));
        assert_eq!(a.clone().text(), "Say hi\nhi\na\nb");
        assert!(shape(RowSchema::Alpaca, &json!({"instruction": "x"})).unwrap_err().contains("`output`"));
        assert!(shape(RowSchema::Sharegpt, &json!({"conversations": [{"from": "bot", "value": "x"}]}))
            .unwrap_err()
            .contains("from"));
        assert!(shape(RowSchema::Messages, &json!({"messages": []})).unwrap_err().contains("empty"));
        assert!(shape(RowSchema::Text, &json!([1])).unwrap_err().contains("object"));
    }

    #[test]
    fn csv_lists_are_json() {
        let csv = "messages\n\"[{\"\"role\"\":\"\"user\"\",\"\"content\"\":\"\"hi\"\"}]\"\nnot json\n";
        let recs = csv_records(RowSchema::Messages, csv, 10, false).unwrap();
        assert!(matches!(&recs[0], Record::Fits { .. }));
        assert!(matches!(&recs[1], Record::Misfit { error, .. } if error.contains("JSON list")));
    }
}
