//! Training rows → token ids and label masks.
//!
//! Four row shapes, recognised by their keys:
//! - `text`: `{"text": …}` — every token is trained, EOS appended;
//! - `alpaca`: `{"instruction", "input"?, "output", "system"?, "history"?}`;
//! - `sharegpt`: `{"conversations": [{"from": "human"|"gpt"|"system", "value"}]}`;
//! - `messages`: `{"messages": [{"role", "content"}]}`.
//!
//! Chat rows are rendered with the model's own chat template. Only the
//! assistant turns — their text and the template's end-of-turn tokens — are
//! labels, unless `train_on_prompt`; `last_turn_only` keeps just the last
//! assistant turn. A row that cannot be rendered is reported with its index
//! and reason and left out; nothing is silently changed.

use merit_lm::{Message, TextTokenizer};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::Value;

/// How rows become examples.
#[derive(Debug, Clone, PartialEq)]
pub struct DataOptions {
    /// Longest example in tokens; longer ones are cut.
    pub cutoff_len: usize,
    /// Train on the prompt tokens of chat rows too.
    pub train_on_prompt: bool,
    /// Train only on the last assistant turn of each conversation.
    pub last_turn_only: bool,
    /// Concatenate examples into sequences of `cutoff_len` tokens.
    pub packing: bool,
    /// Fraction of rows held out for evaluation (chosen by `seed`).
    pub eval_split: f64,
    pub seed: u64,
}

impl Default for DataOptions {
    fn default() -> Self {
        DataOptions {
            cutoff_len: 1024,
            train_on_prompt: false,
            last_turn_only: false,
            packing: false,
            eval_split: 0.0,
            seed: 42,
        }
    }
}

/// One training sequence: `labels[i]` says whether token `i` is a target.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub labels: Vec<bool>,
    /// The row it came from (the first row, when packed).
    pub row: usize,
}

impl Example {
    /// Tokens that count in the loss (each predicted from the ones before it).
    pub fn target_count(&self) -> usize {
        self.labels.iter().skip(1).filter(|l| **l).count()
    }
}

/// A row left out, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Skipped {
    pub row: usize,
    pub reason: String,
}

/// Training and evaluation examples built from rows.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub train: Vec<Example>,
    pub eval: Vec<Example>,
    pub skipped: Vec<Skipped>,
}

/// What a row is, after reading its keys.
enum Row {
    Text(String),
    Chat(Vec<Message>),
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn parse_row(v: &Value) -> Result<Row, String> {
    let obj = v.as_object().ok_or("the row is not a JSON object")?;
    if let Some(m) = obj.get("messages") {
        let list = m.as_array().ok_or("`messages` is not a list")?;
        let mut out = Vec::with_capacity(list.len());
        for (i, m) in list.iter().enumerate() {
            let role = str_field(m, "role").ok_or(format!("messages[{i}] has no string `role`"))?;
            let content = str_field(m, "content").ok_or(format!("messages[{i}] has no string `content`"))?;
            if !matches!(role, "system" | "user" | "assistant") {
                return Err(format!("messages[{i}]: role `{role}` is not system, user or assistant"));
            }
            out.push(Message { role: role.into(), content: content.into() });
        }
        return Ok(Row::Chat(out));
    }
    if let Some(c) = obj.get("conversations") {
        let list = c.as_array().ok_or("`conversations` is not a list")?;
        let mut out = Vec::with_capacity(list.len());
        for (i, m) in list.iter().enumerate() {
            let from = str_field(m, "from").ok_or(format!("conversations[{i}] has no string `from`"))?;
            let value = str_field(m, "value").ok_or(format!("conversations[{i}] has no string `value`"))?;
            let role = match from {
                "human" | "user" => "user",
                "gpt" | "assistant" => "assistant",
                "system" => "system",
                other => return Err(format!("conversations[{i}]: `from` `{other}` is not human, gpt or system")),
            };
            out.push(Message { role: role.into(), content: value.into() });
        }
        return Ok(Row::Chat(out));
    }
    if obj.contains_key("instruction") {
        let instruction = str_field(v, "instruction").ok_or("`instruction` is not a string")?;
        let output = str_field(v, "output").ok_or("an alpaca row needs a string `output`")?;
        let input = str_field(v, "input").unwrap_or("");
        let mut out = Vec::new();
        if let Some(system) = str_field(v, "system").filter(|s| !s.is_empty()) {
            out.push(Message { role: "system".into(), content: system.into() });
        }
        if let Some(h) = obj.get("history") {
            let turns = h.as_array().ok_or("`history` is not a list of [prompt, answer] pairs")?;
            for (i, t) in turns.iter().enumerate() {
                let pair = t.as_array().filter(|p| p.len() == 2);
                let (q, a) = match pair.map(|p| (p[0].as_str(), p[1].as_str())) {
                    Some((Some(q), Some(a))) => (q, a),
                    _ => return Err(format!("history[{i}] is not a [prompt, answer] pair of strings")),
                };
                out.push(Message { role: "user".into(), content: q.into() });
                out.push(Message { role: "assistant".into(), content: a.into() });
            }
        }
        let prompt = if input.is_empty() { instruction.to_string() } else { format!("{instruction}\n{input}") };
        out.push(Message { role: "user".into(), content: prompt });
        out.push(Message { role: "assistant".into(), content: output.into() });
        return Ok(Row::Chat(out));
    }
    if let Some(t) = obj.get("text") {
        return Ok(Row::Text(t.as_str().ok_or("`text` is not a string")?.to_string()));
    }
    Err("the row has none of `text`, `instruction`, `conversations` or `messages`".into())
}

/// Tokens and labels of one row.
fn encode_row(
    tok: &TextTokenizer,
    eos: Option<u32>,
    row: Row,
    opts: &DataOptions,
) -> Result<(Vec<u32>, Vec<bool>), String> {
    match row {
        Row::Text(text) => {
            if text.trim().is_empty() {
                return Err("`text` is empty".into());
            }
            let mut ids = tok.encode(&text, true).map_err(|e| e.to_string())?;
            ids.extend(eos);
            let labels = vec![true; ids.len()];
            Ok((ids, labels))
        }
        Row::Chat(messages) => {
            let assistant_turns: Vec<usize> =
                messages.iter().enumerate().filter(|(_, m)| m.role == "assistant").map(|(i, _)| i).collect();
            let Some(&last) = assistant_turns.last() else {
                return Err("the conversation has no assistant turn".into());
            };
            let messages = &messages[..=last];
            let full = tok.apply_chat_template(messages, false).map_err(|e| e.to_string())?;
            // Each assistant turn's bytes: what rendering through it adds to
            // rendering up to it with the generation prompt.
            let mut spans = Vec::new();
            for &k in &assistant_turns {
                let prefix = tok.apply_chat_template(&messages[..k], true).map_err(|e| e.to_string())?;
                let through = tok.apply_chat_template(&messages[..=k], false).map_err(|e| e.to_string())?;
                if !through.starts_with(&prefix) || !full.starts_with(&through) {
                    return Err(format!(
                        "the chat template does not render turn {k} as a continuation of the turns before it"
                    ));
                }
                spans.push((prefix.len(), through.len()));
            }
            if opts.last_turn_only {
                spans.drain(..spans.len() - 1);
            }
            let (ids, offsets) = tok.encode_with_offsets(&full, false).map_err(|e| e.to_string())?;
            let labels = offsets
                .iter()
                .map(|&(a, b)| opts.train_on_prompt || (b > a && spans.iter().any(|&(s, e)| a >= s && a < e)))
                .collect();
            Ok((ids, labels))
        }
    }
}

/// Builds the examples: rows split into train and eval by `seed`, encoded,
/// cut to `cutoff_len`, packed if asked.
pub fn build(tok: &TextTokenizer, eos: Option<u32>, rows: &[Value], opts: &DataOptions) -> Dataset {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    let n_eval = if opts.eval_split > 0.0 { ((rows.len() as f64) * opts.eval_split).ceil() as usize } else { 0 };
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    order.shuffle(&mut rng);
    let mut eval_rows: Vec<usize> = order[..n_eval.min(rows.len())].to_vec();
    eval_rows.sort_unstable();
    let mut out = Dataset::default();
    for (i, row) in rows.iter().enumerate() {
        let encoded = parse_row(row).and_then(|r| encode_row(tok, eos, r, opts));
        let (mut ids, mut labels) = match encoded {
            Ok(x) => x,
            Err(reason) => {
                out.skipped.push(Skipped { row: i, reason });
                continue;
            }
        };
        if !opts.packing && ids.len() > opts.cutoff_len {
            ids.truncate(opts.cutoff_len);
            labels.truncate(opts.cutoff_len);
        }
        let ex = Example { ids, labels, row: i };
        if ex.target_count() == 0 {
            out.skipped
                .push(Skipped { row: i, reason: format!("no trainable tokens within {} tokens", opts.cutoff_len) });
            continue;
        }
        if eval_rows.binary_search(&i).is_ok() {
            out.eval.push(ex);
        } else {
            out.train.push(ex);
        }
    }
    if opts.packing {
        out.train = pack(std::mem::take(&mut out.train), opts.cutoff_len);
        out.eval = pack(std::mem::take(&mut out.eval), opts.cutoff_len);
    }
    out
}

/// Concatenates examples into sequences of at most `len` tokens.
fn pack(examples: Vec<Example>, len: usize) -> Vec<Example> {
    let mut out: Vec<Example> = Vec::new();
    let mut cur: Option<Example> = None;
    for ex in examples {
        let mut rest = ex;
        while !rest.ids.is_empty() {
            let slot = cur.get_or_insert_with(|| Example { ids: Vec::new(), labels: Vec::new(), row: rest.row });
            let room = len - slot.ids.len();
            let take = room.min(rest.ids.len());
            slot.ids.extend(rest.ids.drain(..take));
            slot.labels.extend(rest.labels.drain(..take));
            if slot.ids.len() == len {
                out.extend(cur.take());
            }
        }
    }
    out.extend(cur.filter(|c| c.target_count() > 0));
    out
}

/// Reads training rows from a local file: JSON lines (`.jsonl`), a JSON
/// array (`.json`) or Parquet (`.parquet`).
pub fn read_rows(path: &std::path::Path) -> Result<Vec<Value>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "parquet" => merit_gate::parquet_rows(&bytes).map_err(|e| format!("{}: {e}", path.display())),
        "json" => match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Array(rows)) => Ok(rows),
            Ok(_) => Err(format!("{}: a .json file must hold a list of rows", path.display())),
            Err(e) => Err(format!("{}: not JSON: {e}", path.display())),
        },
        _ => {
            let text = std::str::from_utf8(&bytes).map_err(|_| format!("{}: not UTF-8 text", path.display()))?;
            let mut rows = Vec::new();
            for (n, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                rows.push(
                    serde_json::from_str(line)
                        .map_err(|e| format!("{} line {}: not JSON: {e}", path.display(), n + 1))?,
                );
            }
            Ok(rows)
        }
    }
}
