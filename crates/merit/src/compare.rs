//! `merit compare` (base and adapters side by side on held-out prompts) and
//! `merit export` (an adapter merged into a Hugging Face folder).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use merit_lm::{Message, Tensor};
use serde_json::{json, Value};

use crate::model;

#[derive(Args, Clone)]
pub struct CompareArgs {
    /// Base model: registered name, Hugging Face folder or GGUF file
    #[arg(long)]
    base: String,
    /// A PEFT adapter folder; repeatable
    #[arg(long = "adapter", required = true)]
    adapters: Vec<PathBuf>,
    /// Prompts: JSON lines with "prompt", "instruction" (+ "input") or "messages" (the turns before the answer),
    /// or plain text, one prompt per line
    #[arg(long)]
    prompts: PathBuf,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Send prompts as they are instead of through the chat template
    #[arg(long)]
    raw: bool,
    /// One JSON object per prompt: {"prompt", "answers": {"base": …, "<adapter>": …}}
    #[arg(long)]
    json: bool,
    #[arg(long, env = "MERIT_DATA_DIR", default_value = "./merit-data")]
    data_dir: PathBuf,
}

/// A prompt as chat turns (the answer to come is the assistant's).
fn read_prompts(path: &Path) -> Result<Vec<Vec<Message>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let user = |s: &str| vec![Message { role: "user".into(), content: s.into() }];
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let where_ = || format!("{} line {}", path.display(), i + 1);
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            out.push(user(line));
            continue;
        };
        if let Some(p) = v.get("prompt").and_then(Value::as_str) {
            out.push(user(p));
        } else if let Some(ins) = v.get("instruction").and_then(Value::as_str) {
            let input = v.get("input").and_then(Value::as_str).unwrap_or("");
            out.push(user(&if input.is_empty() { ins.to_string() } else { format!("{ins}\n{input}") }));
        } else if let Some(m) = v.get("messages") {
            let mut msgs: Vec<Message> = serde_json::from_value(m.clone())
                .with_context(|| format!("{}: `messages` must be [{{role, content}}]", where_()))?;
            // A held-out conversation: ask what its last answer answered.
            if msgs.last().is_some_and(|m| m.role == "assistant") {
                msgs.pop();
            }
            if msgs.is_empty() {
                bail!("{}: no turns before the answer", where_());
            }
            out.push(msgs);
        } else if let Some(t) = v.as_str() {
            out.push(user(t));
        } else {
            bail!("{}: a prompt needs `prompt`, `instruction` or `messages`", where_());
        }
    }
    if out.is_empty() {
        bail!("{} holds no prompts", path.display());
    }
    Ok(out)
}

pub async fn compare(args: CompareArgs) -> Result<()> {
    let prompts = read_prompts(&args.prompts)?;
    tokio::task::spawn_blocking(move || -> Result<()> {
        let mut columns: Vec<(String, Vec<String>)> = Vec::new();
        let mut names = vec![("base".to_string(), None)];
        names.extend(args.adapters.iter().map(|a| (a.display().to_string(), Some(a.clone()))));
        let params = merit_lm::SamplingParams::default();
        for (name, adapter) in names {
            let (m, tok) = model::load(&args.data_dir, &args.base, adapter.as_deref())?;
            let mut ids = Vec::with_capacity(prompts.len());
            for p in &prompts {
                if args.raw {
                    let text: Vec<&str> = p.iter().map(|m| m.content.as_str()).collect();
                    ids.push(tok.encode(&text.join("\n"), true)?);
                } else {
                    ids.push(tok.encode(&tok.apply_chat_template(p, true)?, false)?);
                }
            }
            let gens = merit_lm::generate_batch(&m, &tok, &ids, &params, args.max_tokens, &[], |_, _| {})?;
            columns.push((name, gens.into_iter().map(|g| g.text.trim().to_string()).collect()));
        }
        for (i, p) in prompts.iter().enumerate() {
            let prompt = p.last().map(|m| m.content.clone()).unwrap_or_default();
            if args.json {
                let answers: serde_json::Map<String, Value> =
                    columns.iter().map(|(n, a)| (n.clone(), Value::String(a[i].clone()))).collect();
                println!("{}", json!({ "prompt": prompt, "answers": answers }));
            } else {
                println!("## {prompt}");
                for (n, a) in &columns {
                    println!("[{n}] {}", a[i]);
                }
                println!();
            }
        }
        Ok(())
    })
    .await?
}

#[derive(Args, Clone)]
pub struct ExportArgs {
    /// Base model: a registered name or path of a Hugging Face folder
    #[arg(long)]
    base: String,
    /// The PEFT adapter folder to merge
    #[arg(long)]
    adapter: PathBuf,
    /// Output folder (created; must not exist)
    #[arg(long)]
    out: PathBuf,
    #[arg(long, env = "MERIT_DATA_DIR", default_value = "./merit-data")]
    data_dir: PathBuf,
}

/// Writes base + adapter as one Hugging Face folder: every adapted weight
/// becomes `W + scale · B A`; config, tokenizer and the other files are copied.
pub fn export(args: ExportArgs) -> Result<()> {
    let base = model::resolve(&args.data_dir, &args.base)?;
    if !base.is_dir() || !base.join("config.json").exists() {
        bail!(
            "{}: export merges into a Hugging Face folder (config.json + safetensors); GGUF bases are not supported",
            base.display()
        );
    }
    if args.out.exists() {
        bail!("{} exists; choose a new folder", args.out.display());
    }
    let cfg: Value = serde_json::from_slice(
        &std::fs::read(args.adapter.join("adapter_config.json"))
            .with_context(|| format!("reading {}/adapter_config.json", args.adapter.display()))?,
    )
    .context("adapter_config.json is not JSON")?;
    let r = cfg.get("r").and_then(Value::as_f64).context("adapter_config.json: `r` is missing")?;
    let alpha =
        cfg.get("lora_alpha").and_then(Value::as_f64).context("adapter_config.json: `lora_alpha` is missing")?;
    let rslora = cfg.get("use_rslora").and_then(Value::as_bool).unwrap_or(false);
    let scale = if rslora { alpha / r.sqrt() } else { alpha / r };
    let dev = merit_lm::Device::Cpu;
    let lora = merit_lm::candle_core::safetensors::load(args.adapter.join("adapter_model.safetensors"), &dev)
        .with_context(|| format!("reading {}/adapter_model.safetensors", args.adapter.display()))?;
    let mut weights: HashMap<String, Tensor> = HashMap::new();
    let mut files = Vec::new();
    for e in std::fs::read_dir(&base)?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with(".safetensors") {
            weights.extend(
                merit_lm::candle_core::safetensors::load(e.path(), &dev)
                    .with_context(|| format!("reading {}", e.path().display()))?,
            );
        } else if e.path().is_file() && !name.ends_with(".safetensors.index.json") {
            // Config, tokenizer and template files; not other weights (a GGUF beside them).
            let ext = e.path().extension().and_then(|x| x.to_str()).unwrap_or("").to_string();
            if matches!(ext.as_str(), "json" | "txt" | "model" | "jinja") {
                files.push(e.path());
            }
        }
    }
    let mut merged = 0;
    for (name, a) in &lora {
        let Some(module) = name.strip_suffix(".lora_A.weight") else { continue };
        let b = lora
            .get(&format!("{module}.lora_B.weight"))
            .with_context(|| format!("`{module}.lora_B.weight` is missing"))?;
        let target = format!("{}.weight", module.strip_prefix("base_model.model.").unwrap_or(module));
        let w =
            weights.get(&target).with_context(|| format!("the base has no `{target}` for the adapter's `{name}`"))?;
        let delta = (b
            .to_dtype(merit_lm::candle_core::DType::F32)?
            .matmul(&a.to_dtype(merit_lm::candle_core::DType::F32)?)?
            * scale)?;
        if delta.dims() != w.dims() {
            bail!("`{target}` is {:?} but the adapter's update is {:?}", w.dims(), delta.dims());
        }
        let new = (w.to_dtype(merit_lm::candle_core::DType::F32)? + delta)?.to_dtype(w.dtype())?;
        weights.insert(target, new);
        merged += 1;
    }
    if merged == 0 {
        bail!("{} holds no LoRA weights", args.adapter.display());
    }
    let tmp = args.out.with_extension("partial");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    for f in &files {
        if let Some(n) = f.file_name() {
            std::fs::copy(f, tmp.join(n)).with_context(|| format!("copying {}", f.display()))?;
        }
    }
    merit_lm::candle_core::safetensors::save(&weights, tmp.join("model.safetensors"))
        .context("writing model.safetensors")?;
    std::fs::rename(&tmp, &args.out).with_context(|| format!("writing {}", args.out.display()))?;
    println!("merged {merged} adapted layers into {}", args.out.display());
    Ok(())
}
