//! Sampling and generation: greedy, temperature, top-k, top-p, min-p,
//! repetition penalty, seeds, stop strings, several EOS ids, and streaming
//! text that never splits a UTF-8 character.

use candle_core::Tensor;
use rand::{Rng, SeedableRng};

use crate::{Cache, Decoder, LmError, TextTokenizer};

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 picks the most likely token (greedy).
    pub temperature: f64,
    /// Keep only the `k` most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1 = off).
    pub top_p: f64,
    /// Drop tokens less likely than `min_p` × the most likely one (0 = off).
    pub min_p: f64,
    /// Divide positive (multiply negative) logits of tokens already seen (1 = off).
    pub repetition_penalty: f64,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0, repetition_penalty: 1.0, seed: 42 }
    }
}

impl SamplingParams {
    /// Checks ranges; the error names the parameter.
    pub fn check(&self) -> Result<(), LmError> {
        let bad = |what: &str| Err(LmError::Config(format!("sampling: {what}")));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature must be 0 or more");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p must be in [0, 1]");
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad("repetition_penalty must be above 0");
        }
        Ok(())
    }
}

/// Draws tokens from logits.
pub struct Sampler {
    params: SamplingParams,
    rng: rand::rngs::StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let rng = rand::rngs::StdRng::seed_from_u64(params.seed);
        Sampler { params, rng }
    }

    /// The next token from `logits`, given the tokens seen so far.
    pub fn sample(&mut self, logits: &[f32], seen: &[u32]) -> u32 {
        let p = &self.params;
        let mut logits = logits.to_vec();
        if p.repetition_penalty != 1.0 {
            let mut done = std::collections::HashSet::new();
            for &t in seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    if done.insert(t) {
                        *l = if *l < 0.0 { *l * p.repetition_penalty as f32 } else { *l / p.repetition_penalty as f32 };
                    }
                }
            }
        }
        let argmax = || {
            logits
                .iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |best, (i, &l)| if l > best.1 { (i, l) } else { best })
                .0 as u32
        };
        if p.temperature == 0.0 {
            return argmax();
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<(u32, f64)> =
            logits.iter().enumerate().map(|(i, &l)| (i as u32, (((l - max) as f64) / p.temperature).exp())).collect();
        probs.sort_by(|a, b| b.1.total_cmp(&a.1));
        if p.top_k > 0 {
            probs.truncate(p.top_k);
        }
        let total: f64 = probs.iter().map(|x| x.1).sum();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, x) in probs.iter().enumerate() {
                acc += x.1 / total;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
        }
        if p.min_p > 0.0 {
            let top = probs[0].1;
            probs.retain(|x| x.1 >= p.min_p * top);
        }
        let total: f64 = probs.iter().map(|x| x.1).sum();
        let mut r = self.rng.random::<f64>() * total;
        for (t, w) in &probs {
            r -= w;
            if r <= 0.0 {
                return *t;
            }
        }
        probs.last().map_or_else(argmax, |x| x.0)
    }
}

/// Turns tokens into text pieces as they come, holding back bytes until a
/// UTF-8 character is complete.
#[derive(Default)]
pub struct TextStream {
    ids: Vec<u32>,
    emitted: usize,
}

impl TextStream {
    /// The new complete text after `id`, if any.
    pub fn push(&mut self, tok: &TextTokenizer, id: u32) -> Result<Option<String>, LmError> {
        self.ids.push(id);
        let text = tok.decode(&self.ids, true)?;
        if text.ends_with('\u{FFFD}') || text.len() <= self.emitted || !text.is_char_boundary(self.emitted) {
            return Ok(None);
        }
        let piece = text[self.emitted..].to_string();
        self.emitted = text.len();
        Ok(Some(piece))
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Eos,
    Stop,
    Length,
    /// The caller asked to stop (a client went away).
    Cancelled,
}

/// What a generation produced (new tokens only).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Generation {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub stop_reason: StopReason,
}

/// Generates up to `max_new` tokens after `prompt`, calling `on_text` with
/// each complete piece of text. Stops at an EOS id or a stop string (which is
/// left out of the text).
pub fn generate(
    model: &Decoder,
    tok: &TextTokenizer,
    prompt: &[u32],
    params: &SamplingParams,
    max_new: usize,
    stop: &[String],
    on_text: impl FnMut(&str),
) -> Result<Generation, LmError> {
    let never = std::sync::atomic::AtomicBool::new(false);
    generate_cancellable(model, tok, prompt, params, max_new, stop, &never, on_text)
}

/// One prompt's progress in a batch.
struct Row {
    sampler: Sampler,
    seen: Vec<u32>,
    out: Vec<u32>,
    stream: TextStream,
    text: String,
    done: Option<StopReason>,
}

impl Row {
    /// Takes the sampled token; returns the new text to stream, if any.
    fn accept(&mut self, model: &Decoder, tok: &TextTokenizer, next: u32, stop: &[String]) -> Result<String, LmError> {
        if model.config.eos_token_ids.contains(&next) {
            self.done = Some(StopReason::Eos);
            return Ok(String::new());
        }
        self.out.push(next);
        self.seen.push(next);
        let Some(piece) = self.stream.push(tok, next)? else { return Ok(String::new()) };
        self.text.push_str(&piece);
        if let Some(at) = stop.iter().filter_map(|s| self.text.find(s.as_str())).min() {
            let keep = self.text[..at].len().saturating_sub(self.text.len() - piece.len());
            self.text.truncate(at);
            self.done = Some(StopReason::Stop);
            return Ok(piece[..keep.min(piece.len())].to_string());
        }
        Ok(piece)
    }
}

/// Generates for several prompts of different lengths at once: they are
/// left-padded into one batch (padding masked out, positions counted from
/// each prompt's first token), so each row gets the tokens it would get on
/// its own. `on_text(row, piece)` streams each row's text.
pub fn generate_batch(
    model: &Decoder,
    tok: &TextTokenizer,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    max_new: usize,
    stop: &[String],
    on_text: impl FnMut(usize, &str),
) -> Result<Vec<Generation>, LmError> {
    generate_rows(model, tok, prompts, params, max_new, stop, None, on_text)
}

/// [`generate`] that also stops, with [`StopReason::Cancelled`], as soon as
/// `cancel` is set (checked before every new token).
#[allow(clippy::too_many_arguments)]
pub fn generate_cancellable(
    model: &Decoder,
    tok: &TextTokenizer,
    prompt: &[u32],
    params: &SamplingParams,
    max_new: usize,
    stop: &[String],
    cancel: &std::sync::atomic::AtomicBool,
    mut on_text: impl FnMut(&str),
) -> Result<Generation, LmError> {
    let mut out =
        generate_rows(model, tok, &[prompt.to_vec()], params, max_new, stop, Some(cancel), |_, p| on_text(p))?;
    out.pop().ok_or_else(|| LmError::Config("no generation".into()))
}

#[allow(clippy::too_many_arguments)]
fn generate_rows(
    model: &Decoder,
    tok: &TextTokenizer,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    max_new: usize,
    stop: &[String],
    cancel: Option<&std::sync::atomic::AtomicBool>,
    mut on_text: impl FnMut(usize, &str),
) -> Result<Vec<Generation>, LmError> {
    params.check()?;
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(LmError::Config(format!("prompt {i} has no tokens")));
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let pads: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    // Padding positions hold any valid id; the mask hides them.
    let filler = prompts.first().and_then(|p| p.first()).copied().unwrap_or(0);
    let mut rows: Vec<Row> = prompts
        .iter()
        .map(|p| Row {
            sampler: Sampler::new(params.clone()),
            seen: p.clone(),
            out: Vec::new(),
            stream: TextStream::default(),
            text: String::new(),
            done: (max_new == 0).then_some(StopReason::Length),
        })
        .collect();
    let mut cache = Cache::padded(pads.clone());
    let device = model.device().clone();
    let mut input: Vec<u32> = prompts
        .iter()
        .zip(&pads)
        .flat_map(|(p, &pad)| std::iter::repeat_n(filler, pad).chain(p.iter().copied()))
        .collect();
    let mut width = longest;
    for _ in 0..max_new {
        if rows.iter().all(|r| r.done.is_some()) {
            break;
        }
        if cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed)) {
            for r in rows.iter_mut().filter(|r| r.done.is_none()) {
                r.done = Some(StopReason::Cancelled);
            }
            break;
        }
        let ids = Tensor::from_vec(input, (rows.len(), width), &device)?;
        let logits: Vec<Vec<f32>> = model.forward_last(&ids, Some(&mut cache))?.to_vec2()?;
        input = Vec::with_capacity(rows.len());
        for (i, (row, last)) in rows.iter_mut().zip(&logits).enumerate() {
            if row.done.is_some() {
                input.push(filler);
                continue;
            }
            let next = row.sampler.sample(last, &row.seen);
            let piece = row.accept(model, tok, next, stop)?;
            if !piece.is_empty() {
                on_text(i, &piece);
            }
            input.push(next);
        }
        width = 1;
    }
    Ok(rows
        .into_iter()
        .map(|r| Generation { text: r.text, token_ids: r.out, stop_reason: r.done.unwrap_or(StopReason::Length) })
        .collect())
}

/// The summed negative log-likelihood (natural log) of `ids[1..]` given the
/// tokens before each, and how many tokens were scored.
pub fn nll(model: &Decoder, ids: &[u32]) -> Result<(f64, usize), LmError> {
    if ids.len() < 2 {
        return Ok((0.0, 0));
    }
    let input = Tensor::new(ids, model.device())?.unsqueeze(0)?;
    let logits: Vec<Vec<f32>> = model.forward(&input, None)?.squeeze(0)?.to_vec2()?;
    let mut total = 0.0f64;
    for (row, &next) in logits.iter().zip(&ids[1..]) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let log_z = max + row.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln();
        let target = *row
            .get(next as usize)
            .ok_or_else(|| LmError::Config(format!("token id {next} is outside the vocabulary")))?
            as f64;
        total += log_z - target;
    }
    Ok((total, ids.len() - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_filters() {
        let logits = [1.0f32, 3.0, 2.0, -1.0];
        assert_eq!(Sampler::new(SamplingParams::default()).sample(&logits, &[]), 1);
        // A repetition penalty of 10 moves greedy off the seen token.
        let p = SamplingParams { repetition_penalty: 10.0, ..Default::default() };
        assert_eq!(Sampler::new(p).sample(&logits, &[1]), 2);
        // top_k = 1 is greedy whatever the temperature.
        let p = SamplingParams { temperature: 5.0, top_k: 1, ..Default::default() };
        let mut s = Sampler::new(p);
        assert!((0..50).all(|_| s.sample(&logits, &[]) == 1));
        // min_p close to 1 keeps only the best; tiny top_p too.
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, min_p: 0.99, ..Default::default() });
        assert!((0..50).all(|_| s.sample(&logits, &[]) == 1));
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_p: 0.01, ..Default::default() });
        assert!((0..50).all(|_| s.sample(&logits, &[]) == 1));
        // Same seed, same draws; sampling reaches other tokens.
        let p = SamplingParams { temperature: 2.0, seed: 7, ..Default::default() };
        let a: Vec<u32> = {
            let mut s = Sampler::new(p.clone());
            (0..40).map(|_| s.sample(&logits, &[])).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(p);
            (0..40).map(|_| s.sample(&logits, &[])).collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().any(|&t| t != 1));
        assert!(SamplingParams { top_p: 0.0, ..Default::default() }.check().is_err());
    }
}
