//! Fakes of the trainer and the generator, for tests of the HTTP layer.

use serde_json::{json, Value};

/// A trainer that writes `steps` step lines, 20 ms apart, and an adapter.
pub struct FakeTrainer;

impl merit_server::RunTrainer for FakeTrainer {
    fn prepare(&self, mut config: Value) -> Result<Value, String> {
        if !config["base"].is_string() {
            return Err("`base` is required: the base model".into());
        }
        if config["rank"] == json!(0) {
            return Err("--rank must be at least 1".into());
        }
        config["rank"] = config.get("rank").cloned().unwrap_or(json!(8));
        Ok(config)
    }

    fn run(
        &self,
        config: &Value,
        dir: &std::path::Path,
        stop: &std::sync::atomic::AtomicBool,
    ) -> Result<Value, String> {
        use std::io::Write;
        let steps = config["max_steps"].as_u64().unwrap_or(5);
        let mut f = std::fs::File::create(dir.join("metrics.jsonl")).map_err(|e| e.to_string())?;
        for step in 1..=steps {
            writeln!(f, "{}", json!({ "kind": "step", "step": step, "loss": 1.0 / step as f64 })).unwrap();
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                writeln!(f, "{}", json!({ "kind": "checkpoint", "step": step })).unwrap();
                std::fs::write(dir.join("adapter_config.json"), b"{\"r\":8}").unwrap();
                return Ok(json!({ "stopped": true, "steps": step }));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if config["fail"] == json!(true) {
            return Err("the base model ran out of memory".into());
        }
        std::fs::write(dir.join("adapter_config.json"), b"{\"r\":8}").unwrap();
        std::fs::write(dir.join("adapter_model.safetensors"), format!("weights after {steps} steps")).unwrap();
        Ok(json!({ "stopped": false, "steps": steps }))
    }
}

/// Words as tokens (for the fake generators): a stable id per word, with its byte range.
pub fn word_tokens(text: &str) -> Vec<(u32, usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    for w in text.split(' ') {
        if !w.is_empty() {
            let id = w.bytes().fold(2_166_136_261u32, |h, b| (h ^ b as u32).wrapping_mul(16_777_619)) % 1_000_000;
            out.push((id, at, at + w.len()));
        }
        at += w.len() + 1;
    }
    out
}

/// Echoes the last message back, word by word.
pub struct EchoGenerator;

impl merit_server::openai::Generator for EchoGenerator {
    fn models(&self) -> Vec<String> {
        vec!["base".into(), "base:run-1".into(), "base:run-2".into()]
    }

    fn tokenize(
        &self,
        _base: &str,
        texts: &[String],
    ) -> Result<Vec<merit_server::openai::Tokens>, merit_server::openai::GenError> {
        Ok(texts.iter().map(|t| word_tokens(t)).collect())
    }

    /// Fixed TracIn scores: row 1 helped (3) and resembles the answer, row 0
    /// helped (1) but resembles it no more than noise does, row 2 hurt.
    fn influence(
        &self,
        _req: &merit_server::openai::GenRequest,
        _answer: &str,
    ) -> Result<Vec<(u64, merit_attrib::Influence)>, merit_server::openai::GenError> {
        let i = |score, similarity| merit_attrib::Influence { score, similarity };
        Ok(vec![(0, i(1.0, 0.1)), (1, i(3.0, 0.9)), (2, i(-5.0, -0.7))])
    }

    fn generate(
        &self,
        req: &merit_server::openai::GenRequest,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<merit_server::openai::GenOutput, merit_server::openai::GenError> {
        use merit_server::openai::{GenError, GenOutput};
        if !self.models().contains(&req.model) {
            return Err(GenError::NotFound(format!("the model `{}` does not exist", req.model)));
        }
        let last = match &req.messages {
            Some(m) => m.last().map(|(_, c)| c.clone()).unwrap_or_default(),
            None => req.prompt.clone(),
        };
        if last.len() > 100 {
            return Err(GenError::BadRequest("the prompt is longer than the model's 100 positions".into()));
        }
        let words: Vec<&str> = last.split(' ').take(req.max_tokens).collect();
        for (i, w) in words.iter().enumerate() {
            on_text(&if i == 0 { w.to_string() } else { format!(" {w}") });
        }
        let finish = if words.len() == req.max_tokens { "length" } else { "stop" };
        Ok(GenOutput {
            text: words.join(" "),
            prompt_tokens: last.split(' ').count(),
            completion_tokens: words.len(),
            finish_reason: finish.into(),
        })
    }
}
