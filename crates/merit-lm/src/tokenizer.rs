//! Tokenizers (Hugging Face `tokenizer.json`, through the `tokenizers` crate)
//! and chat templates (Jinja in `tokenizer_config.json`, rendered with
//! minijinja the way transformers renders them: `trim_blocks`,
//! `lstrip_blocks`, Python string methods, `raise_exception`).

use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::LmError;

/// A byte range `[start, end)` in a text.
pub type Span = (usize, usize);

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// A tokenizer with its special tokens and chat template.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab_size", &self.inner.get_vocab_size(true))
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

/// `bos_token` / `eos_token` are strings or `{"content": …}` objects.
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

impl TextTokenizer {
    /// Reads `tokenizer.json` and, when present, `tokenizer_config.json` from a model folder.
    pub fn from_hf_dir(dir: &Path) -> Result<TextTokenizer, LmError> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(LmError::Tokenizer(format!("{} is missing", path.display())));
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| LmError::Tokenizer(format!("{}: not a readable tokenizer: {e}", path.display())))?;
        let config_path = dir.join("tokenizer_config.json");
        let config: Value = match std::fs::read(&config_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| LmError::Tokenizer(format!("{}: not JSON: {e}", config_path.display())))?,
            Err(_) => Value::Null,
        };
        let template_file = dir.join("chat_template.jinja");
        let chat_template = match config.get("chat_template").and_then(Value::as_str) {
            Some(t) => Some(t.to_string()),
            None => std::fs::read_to_string(&template_file).ok(),
        };
        Ok(TextTokenizer {
            inner,
            chat_template,
            bos_token: token_text(config.get("bos_token")),
            eos_token: token_text(config.get("eos_token")),
        })
    }

    /// A tokenizer from its parts (GGUF metadata).
    pub fn from_parts(
        inner: tokenizers::Tokenizer,
        chat_template: Option<String>,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> TextTokenizer {
        TextTokenizer { inner, chat_template, bos_token, eos_token }
    }

    /// Token ids of `text` with each token's byte range in `text` (tokens the
    /// post-processor adds, such as BOS, have an empty range).
    pub fn encode_with_offsets(&self, text: &str, add_special: bool) -> Result<(Vec<u32>, Vec<Span>), LmError> {
        let enc =
            self.inner.encode(text, add_special).map_err(|e| LmError::Tokenizer(format!("encoding failed: {e}")))?;
        let special = enc.get_special_tokens_mask();
        let offsets = enc
            .get_offsets()
            .iter()
            .zip(special)
            .map(|(&(a, b), &s)| if s == 1 && a == b { (a, a) } else { (a, b) })
            .collect();
        Ok((enc.get_ids().to_vec(), offsets))
    }

    /// Token ids of `text`; `add_special` adds what the post-processor adds (such as BOS).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, LmError> {
        let enc =
            self.inner.encode(text, add_special).map_err(|e| LmError::Tokenizer(format!("encoding failed: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of token ids.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, LmError> {
        self.inner.decode(ids, skip_special).map_err(|e| LmError::Tokenizer(format!("decoding failed: {e}")))
    }

    /// The id of a token, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Renders the model's chat template.
    pub fn apply_chat_template(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, LmError> {
        let template =
            self.chat_template.as_deref().ok_or_else(|| LmError::Template("the model has no chat template".into()))?;
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template("chat", template)
            .map_err(|e| LmError::Template(format!("the chat template does not parse: {e}")))?;
        let tmpl = env.get_template("chat").map_err(|e| LmError::Template(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        })
        .map_err(|e| LmError::Template(format!("the chat template failed: {e}")))
    }
}
