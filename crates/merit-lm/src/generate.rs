//! Sampling and generation: greedy, temperature, top-k, top-p, min-p,
//! repetition penalty, seeds, stop strings, several EOS ids, and streaming
//! text that never splits a UTF-8 character.

use candle_core::Tensor;
use rand::{Rng, SeedableRng};

use crate::{Adapters, Cache, Decoder, LmError, TextTokenizer};

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
    /// Bytes of `text` already streamed.
    sent: usize,
    done: Option<StopReason>,
}

impl Row {
    /// Takes the sampled token; returns the new text to stream, if any.
    /// Text that may be the start of a stop string is held back until it is
    /// known not to be one, so a client never sees text past a stop.
    fn accept(&mut self, model: &Decoder, tok: &TextTokenizer, next: u32, stop: &[String]) -> Result<String, LmError> {
        if model.config.eos_token_ids.contains(&next) {
            self.done = Some(StopReason::Eos);
            return Ok(self.rest());
        }
        self.out.push(next);
        self.seen.push(next);
        let Some(piece) = self.stream.push(tok, next)? else { return Ok(String::new()) };
        self.text.push_str(&piece);
        if let Some(at) = stop.iter().filter_map(|s| self.text.find(s.as_str())).min() {
            self.text.truncate(at);
            self.done = Some(StopReason::Stop);
            return Ok(self.rest());
        }
        // The longest end of the text that a stop string starts with.
        let held = stop
            .iter()
            .flat_map(|s| s.char_indices().skip(1).map(move |(i, _)| &s[..i]))
            .filter(|p| self.text.ends_with(p))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let safe = (self.text.len() - held).max(self.sent);
        let piece = self.text[self.sent..safe].to_string();
        self.sent = safe;
        Ok(piece)
    }

    /// The text not streamed yet (held back for a stop string that never came).
    fn rest(&mut self) -> String {
        let start = self.sent.min(self.text.len());
        self.sent = self.text.len();
        self.text[start..].to_string()
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
    let cancelled = || cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed));
    if cancelled() {
        let none = Generation { text: String::new(), token_ids: Vec::new(), stop_reason: StopReason::Cancelled };
        return Ok(vec![none; prompts.len()]);
    }
    let mut batch = Batch::as_loaded();
    let requests = prompts.iter().enumerate().map(|(i, p)| {
        let req =
            BatchRequest { prompt: p.clone(), params: params.clone(), max_new, stop: stop.to_vec(), adapter: None };
        (i as u64, req)
    });
    let mut out: Vec<Option<Generation>> = vec![None; prompts.len()];
    let mut on = |id: u64, event: BatchEvent| match event {
        BatchEvent::Text(piece) => on_text(id as usize, piece),
        BatchEvent::Done(g) => out[id as usize] = Some(g),
    };
    batch.join_frozen(model, tok, requests.collect(), &mut on)?;
    while !batch.is_empty() {
        if cancelled() {
            batch.cancel(|_| true, &mut on);
            break;
        }
        batch.step_frozen(model, tok, &mut on)?;
    }
    out.into_iter().map(|g| g.ok_or_else(|| LmError::Config("a row of the batch never finished".into()))).collect()
}

/// One request of a continuous [`Batch`].
#[derive(Debug, Clone)]
pub struct BatchRequest {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub max_new: usize,
    pub stop: Vec<String>,
    /// The adapter its row uses (from [`Decoder::adapters`] of the batch's
    /// model), or none for the base. Ignored by [`Batch::as_loaded`].
    pub adapter: Option<std::sync::Arc<Adapters>>,
}

impl BatchRequest {
    /// Checks what a batch would refuse; the error names it.
    pub fn check(&self) -> Result<(), LmError> {
        self.params.check()?;
        if self.prompt.is_empty() {
            return Err(LmError::Config("the prompt has no tokens".into()));
        }
        Ok(())
    }
}

/// What a [`Batch`] reports of one request (by the id it joined with).
#[derive(Debug)]
pub enum BatchEvent<'a> {
    /// New text of the answer.
    Text(&'a str),
    /// The request is finished and has left the batch.
    Done(Generation),
}

/// Continuous batching: requests join a running batch between decoding
/// steps (their prompts prefilled together, then their cache rows appended,
/// left-padded to the batch's length) and leave it as soon as they finish,
/// so a long answer never holds up a short one. Each row keeps its own
/// sampling parameters, stop strings, token budget and adapter: one forward
/// pass serves rows of different adapters ([`Decoder::set_row_adapters`]).
/// Every row gets the tokens it would get alone.
pub struct Batch {
    cache: Cache,
    live: Vec<Live>,
    /// Whether the batch puts each row's adapter on the model.
    manage_adapters: bool,
    /// The model's row adapters no longer match the rows.
    regroup: bool,
}

/// A request in the batch.
struct Live {
    id: u64,
    row: Row,
    stop: Vec<String>,
    max_new: usize,
    steps: usize,
    next: u32,
    adapter: Option<std::sync::Arc<Adapters>>,
}

impl Batch {
    /// A batch whose rows each run with their request's adapter.
    pub fn new() -> Batch {
        Batch { cache: Cache::default(), live: Vec::new(), manage_adapters: true, regroup: false }
    }

    /// A batch that runs the model with whatever adapters it carries.
    pub fn as_loaded() -> Batch {
        Batch { manage_adapters: false, ..Batch::new() }
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The ids of the requests in the batch.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.live.iter().map(|l| l.id)
    }

    /// Prefills `requests` (id, request) together and adds those that go on
    /// to the batch; `on` hears of their first token and of those already done.
    pub fn join(
        &mut self,
        model: &mut Decoder,
        tok: &TextTokenizer,
        requests: Vec<(u64, BatchRequest)>,
        on: &mut dyn FnMut(u64, BatchEvent),
    ) -> Result<(), LmError> {
        if requests.is_empty() {
            return Ok(());
        }
        if self.manage_adapters {
            // The next step puts the batch's own adapters back, whatever happens here.
            self.regroup = true;
            let adapters: Vec<_> = requests.iter().map(|(_, r)| r.adapter.clone()).collect();
            put_adapters(model, &adapters)?;
        }
        self.join_frozen(model, tok, requests, on)
    }

    /// One new token for every request in the batch; finished ones leave it.
    pub fn step(
        &mut self,
        model: &mut Decoder,
        tok: &TextTokenizer,
        on: &mut dyn FnMut(u64, BatchEvent),
    ) -> Result<(), LmError> {
        if self.manage_adapters && self.regroup && !self.live.is_empty() {
            let adapters: Vec<_> = self.live.iter().map(|l| l.adapter.clone()).collect();
            put_adapters(model, &adapters)?;
            self.regroup = false;
        }
        self.step_frozen(model, tok, on)
    }

    /// Ends the requests `which` picks, with [`StopReason::Cancelled`].
    pub fn cancel(&mut self, which: impl Fn(u64) -> bool, on: &mut dyn FnMut(u64, BatchEvent)) {
        let keep: Vec<usize> = (0..self.live.len()).filter(|&i| !which(self.live[i].id)).collect();
        if keep.len() == self.live.len() {
            return;
        }
        for l in self.live.iter_mut().filter(|l| which(l.id)) {
            l.row.done = Some(StopReason::Cancelled);
        }
        self.settle(keep, on);
    }

    /// Ends every request with an error (the batch's forward pass failed).
    pub fn abandon(&mut self) -> Vec<u64> {
        self.cache = Cache::default();
        self.live.drain(..).map(|l| l.id).collect()
    }

    fn join_frozen(
        &mut self,
        model: &Decoder,
        tok: &TextTokenizer,
        requests: Vec<(u64, BatchRequest)>,
        on: &mut dyn FnMut(u64, BatchEvent),
    ) -> Result<(), LmError> {
        for (_, r) in &requests {
            r.check()?;
        }
        if requests.is_empty() {
            return Ok(());
        }
        let longest = requests.iter().map(|(_, r)| r.prompt.len()).max().unwrap_or(0);
        let pads: Vec<usize> = requests.iter().map(|(_, r)| longest - r.prompt.len()).collect();
        // Padding positions hold any valid id; the mask hides them.
        let filler = requests[0].1.prompt[0];
        let input: Vec<u32> = requests
            .iter()
            .zip(&pads)
            .flat_map(|((_, r), &pad)| std::iter::repeat_n(filler, pad).chain(r.prompt.iter().copied()))
            .collect();
        let mut joined: Vec<Live> = requests
            .into_iter()
            .map(|(id, r)| Live {
                id,
                row: Row {
                    sampler: Sampler::new(r.params),
                    seen: r.prompt,
                    out: Vec::new(),
                    stream: TextStream::default(),
                    text: String::new(),
                    sent: 0,
                    done: (r.max_new == 0).then_some(StopReason::Length),
                },
                stop: r.stop,
                max_new: r.max_new,
                steps: 0,
                next: filler,
                adapter: r.adapter,
            })
            .collect();
        let mut cache = Cache::padded(pads);
        if joined.iter().any(|l| l.row.done.is_none()) {
            let ids = Tensor::from_vec(input, (joined.len(), longest), model.device())?;
            let logits: Vec<Vec<f32>> =
                model.forward_last(&ids, Some(&mut cache))?.to_dtype(candle_core::DType::F32)?.to_vec2()?;
            for (l, last) in joined.iter_mut().zip(&logits).filter(|(l, _)| l.row.done.is_none()) {
                l.advance(model, tok, last, on)?;
            }
        }
        let keep: Vec<usize> = (0..joined.len()).filter(|&i| joined[i].row.done.is_none()).collect();
        for l in joined.iter_mut().filter(|l| l.row.done.is_some()) {
            l.finish(on);
        }
        cache.retain_rows(&keep)?;
        self.cache.append_rows(cache)?;
        let mut joined: Vec<Option<Live>> = joined.into_iter().map(Some).collect();
        self.live.extend(keep.iter().filter_map(|&i| joined[i].take()));
        Ok(())
    }

    fn step_frozen(
        &mut self,
        model: &Decoder,
        tok: &TextTokenizer,
        on: &mut dyn FnMut(u64, BatchEvent),
    ) -> Result<(), LmError> {
        if self.live.is_empty() {
            return Ok(());
        }
        let input: Vec<u32> = self.live.iter().map(|l| l.next).collect();
        let ids = Tensor::from_vec(input, (self.live.len(), 1), model.device())?;
        let logits: Vec<Vec<f32>> =
            model.forward_last(&ids, Some(&mut self.cache))?.to_dtype(candle_core::DType::F32)?.to_vec2()?;
        for (l, last) in self.live.iter_mut().zip(&logits) {
            l.advance(model, tok, last, on)?;
        }
        let keep: Vec<usize> = (0..self.live.len()).filter(|&i| self.live[i].row.done.is_none()).collect();
        if keep.len() < self.live.len() {
            self.settle(keep, on);
        }
        Ok(())
    }

    /// Keeps the rows `keep`, reporting the others as done.
    fn settle(&mut self, keep: Vec<usize>, on: &mut dyn FnMut(u64, BatchEvent)) {
        if self.cache.retain_rows(&keep).is_err() {
            // Row indices come from `live`, which the cache mirrors.
            self.cache = Cache::default();
        }
        let mut kept = Vec::with_capacity(keep.len());
        for (i, mut l) in std::mem::take(&mut self.live).into_iter().enumerate() {
            if keep.contains(&i) {
                kept.push(l);
            } else {
                l.finish(on);
            }
        }
        self.live = kept;
        self.regroup = true;
    }
}

impl Default for Batch {
    fn default() -> Self {
        Batch::new()
    }
}

impl Live {
    /// Samples this row's next token from its logits and streams its text.
    fn advance(
        &mut self,
        model: &Decoder,
        tok: &TextTokenizer,
        logits: &[f32],
        on: &mut dyn FnMut(u64, BatchEvent),
    ) -> Result<(), LmError> {
        let next = self.row.sampler.sample(logits, &self.row.seen);
        let piece = self.row.accept(model, tok, next, &self.stop)?;
        if !piece.is_empty() {
            on(self.id, BatchEvent::Text(&piece));
        }
        self.next = next;
        self.steps += 1;
        if self.row.done.is_none() && self.steps >= self.max_new {
            self.row.done = Some(StopReason::Length);
        }
        Ok(())
    }

    /// Streams what was held back and reports the request done.
    fn finish(&mut self, on: &mut dyn FnMut(u64, BatchEvent)) {
        let rest = self.row.rest();
        if !rest.is_empty() {
            on(self.id, BatchEvent::Text(&rest));
        }
        on(self.id, BatchEvent::Done(self.take()));
    }

    fn take(&mut self) -> Generation {
        Generation {
            text: std::mem::take(&mut self.row.text),
            token_ids: std::mem::take(&mut self.row.out),
            stop_reason: self.row.done.unwrap_or(StopReason::Length),
        }
    }
}

/// Puts each row's adapter on the model as row groups; none at all, or (off
/// the CPU) one for every row, the plain way. On the CPU the row groups'
/// packed kernel beats the plain LoRA ops even for a single adapter.
fn put_adapters(model: &mut Decoder, rows: &[Option<std::sync::Arc<Adapters>>]) -> Result<(), LmError> {
    let same = |a: &Option<std::sync::Arc<Adapters>>, b: &Option<std::sync::Arc<Adapters>>| match (a, b) {
        (Some(a), Some(b)) => std::sync::Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    };
    let plain = rows.iter().all(Option::is_none) || !model.device().is_cpu();
    if plain && rows.iter().all(|r| same(r, &rows[0])) {
        return model.set_adapters(rows.first().and_then(|r| r.as_deref()).unwrap_or(&Adapters::default()));
    }
    let mut groups: Vec<(Vec<usize>, &Adapters)> = Vec::new();
    let mut owners: Vec<&std::sync::Arc<Adapters>> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let Some(a) = r else { continue };
        match owners.iter().position(|o| std::sync::Arc::ptr_eq(o, a)) {
            Some(k) => groups[k].0.push(i),
            None => {
                owners.push(a);
                groups.push((vec![i], a));
            }
        }
    }
    model.set_row_adapters(&groups)
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
