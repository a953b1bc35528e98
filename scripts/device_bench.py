#!/usr/bin/env python3
"""Merit's CUDA build beside PyTorch on one GPU (issue 21); run by scripts/device_bench.sh.

On the GPU machine, with its own transformers, it makes a random
Qwen2.5-1.5B-shaped and a Llama-3.2-1B-shaped model (bf16 safetensors), then
prints side by side, each measurement a fresh process:

- generation: Merit `bench generate` against transformers `generate` (bf16,
  SDPA, greedy), 128 prompt + 128 new tokens, batch 1 and 32;
- training: Merit `bench train` against PyTorch + PEFT, LoRA r=16 on all
  linear layers, AdamW, batch 8 x 1024 tokens, bf16 base;
- QLoRA (NF4 base) peak GPU memory beside LoRA's;
- many adapters: Merit `bench adapters` (16 adapters against one);
- the loss curve of the same `merit train` run on the GPU and on the CPU
  (fixture model, f32), step by step.

Peak GPU memory of a Merit process is sampled with nvidia-smi every 50 ms;
PyTorch's is torch.cuda.max_memory_reserved. Writes device_bench.json to --out.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIXTURES = os.path.join(ROOT, "crates", "merit-lm", "tests", "fixtures")

SHAPES = {
    # Qwen/Qwen2.5-1.5B-Instruct's config.json (the shape; weights random).
    "qwen2.5-1.5b": dict(
        model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
        rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu",
    ),
    # meta-llama/Llama-3.2-1B-Instruct's config.json.
    "llama-3.2-1b": dict(
        model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
        max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
        hidden_act="silu",
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
    ),
}


# ---- run in child processes (--only …): each measurement owns the GPU alone

def make_model(name, path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(SHAPES[name])
    cfg = AutoConfig.for_model(spec.pop("model_type"), **spec)
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = 1, 2, 0
    torch.manual_seed(0)
    with torch.device("cuda"):
        m = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    m.save_pretrained(path)
    # A small byte-level tokenizer (ids fit every vocabulary): tokens are what is timed.
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(FIXTURES, "smollm", f), os.path.join(path, f))
    n = sum(p.numel() for p in m.parameters())
    return {"model": name, "params": n}


def hf_generate(path, batch, prompt, new):
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
    m.generation_config.eos_token_id = None
    ids = torch.randint(100, 300, (batch, prompt), device="cuda")
    mask = torch.ones_like(ids)
    kw = dict(attention_mask=mask, do_sample=False, pad_token_id=0)
    with torch.inference_mode():
        m.generate(ids, max_new_tokens=8, min_new_tokens=8, **kw)
        best_pp, best_tg = 0.0, 0.0
        for _ in range(2):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            m(ids)
            torch.cuda.synchronize()
            pp = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = m.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw)
            torch.cuda.synchronize()
            total = time.perf_counter() - t0
            assert out.shape[1] == prompt + new
            best_pp = max(best_pp, batch * prompt / pp)
            best_tg = max(best_tg, batch * new / max(total - pp, 1e-9))
    return {"prompt_tokens_per_s": best_pp, "generation_tokens_per_s": best_tg,
            "peak_bytes": torch.cuda.max_memory_reserved()}


def peft_train(path, batch, tokens, steps, rank, checkpointing):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, attn_implementation="sdpa").cuda()
    if checkpointing:
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    m = get_peft_model(m, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear",
                                     task_type="CAUSAL_LM"))
    m.train()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=2e-4)
    vocab = m.config.vocab_size
    times = []
    for i in range(steps + 1):
        ids = torch.randint(100, vocab, (batch, tokens), device="cuda")
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = m(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i > 0:
            times.append(time.perf_counter() - t0)
    return {"tokens_per_s": batch * tokens * len(times) / sum(times), "peak_bytes": torch.cuda.max_memory_reserved(),
            "adapter_dtype": str(next(p for p in m.parameters() if p.requires_grad).dtype)}


# ---- the driver

def gpu_sampler(pid, stop, peak):
    while not stop.is_set():
        try:
            out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=5).stdout
            for line in out.splitlines():
                p, mib = [x.strip() for x in line.split(",")[:2]]
                if p == str(pid):
                    peak[0] = max(peak[0], int(mib) << 20)
        except Exception:
            pass
        stop.wait(0.05)


def run(cmd, timeout, env=None):
    """Runs cmd; returns (last JSON line of stdout or None, stderr tail, peak GPU bytes, seconds)."""
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, **(env or {})})
    stop, peak = threading.Event(), [0]
    th = threading.Thread(target=gpu_sampler, args=(p.pid, stop, peak), daemon=True)
    th.start()
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        err = (err or "") + f"\n[timed out after {timeout} s]"
    stop.set()
    th.join()
    result = None
    for line in reversed((out or "").strip().splitlines()):
        try:
            result = json.loads(line)
            break
        except ValueError:
            continue
    if result is None or p.returncode != 0:
        print(f"   ! {' '.join(cmd[:8])} … rc={p.returncode}: {(err or '')[-1500:]}", flush=True)
    return result, (err or "")[-2000:], peak[0], time.time() - t0, out


def py(args, timeout):
    r, err, _, secs, _ = run([sys.executable, __file__, "--only", json.dumps(args)], timeout)
    return r


def main():
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--merit", default="target/cuda/merit")
    a.add_argument("--work", default="/tmp/merit-device")
    a.add_argument("--out", default=".")
    a.add_argument("--quick", action="store_true", help="one model, fewer steps")
    a.add_argument("--models", default="qwen2.5-1.5b,llama-3.2-1b")
    a.add_argument("--only", help=argparse.SUPPRESS)
    o = a.parse_args()
    if o.only:
        job = json.loads(o.only)
        fn = {"make": make_model, "generate": hf_generate, "train": peft_train}[job.pop("fn")]
        print(json.dumps(fn(**job)), flush=True)
        return
    started = time.time()
    report = {"machine": None, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": []}
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
    report["machine"] = smi
    rows = report["rows"]

    def save():
        with open(os.path.join(o.out, "device_bench.json"), "w") as f:
            json.dump(report, f, indent=1)

    def merit(args, timeout, device="cuda", dtype="bf16"):
        cmd = [o.merit, "--device", device, "--dtype", dtype] + args + ["--json"]
        r, err, peak, secs, _ = run(cmd, timeout)
        if r is not None:
            r["gpu_peak_bytes"] = peak
        return r

    def row(what, model, merit_r, ref_r, key, ref_name):
        m = merit_r.get(key) if merit_r else None
        r = ref_r.get(key) if ref_r else None
        ratio = (m / r) if (m and r) else None
        rows.append({"what": what, "model": model, "merit": m, ref_name: r, "ratio": ratio,
                     "merit_detail": merit_r, "ref_detail": ref_r})
        fmt = lambda x: f"{x:10.1f}" if isinstance(x, (int, float)) else f"{'—':>10}"
        print(f"{what:<34} {model:<14} merit {fmt(m)}  {ref_name} {fmt(r)}  ratio "
              f"{(f'{ratio:.2f}x' if ratio else '—')}   [{time.time() - started:.0f} s]", flush=True)
        save()

    # 0. The loss curve on the GPU matches the CPU's (fixture model, f32).
    rows_file = os.path.join(FIXTURES, "train_rows.jsonl")
    curves = {}
    for dev in ("cpu", "cuda"):
        outdir = os.path.join(o.work, f"curve-{dev}")
        shutil.rmtree(outdir, ignore_errors=True)
        cmd = [o.merit, "--device", dev, "--dtype", "f32", "train", "--base", os.path.join(FIXTURES, "llama"),
               "--data", rows_file, "--out", outdir, "--max-steps", "12", "--batch", "2", "--grad-accum", "1",
               "--lr", "5e-3", "--eval-split", "0", "--json"]
        _, err, _, _, out = run(cmd, 60)
        curves[dev] = [json.loads(l)["loss"] for l in (out or "").splitlines() if '"kind":"step"' in l]
    cpu, gpu = curves["cpu"], curves["cuda"]
    worst = max((abs(g - c) / abs(c) for c, g in zip(cpu, gpu)), default=None)
    report["loss_curve"] = {"cpu": cpu, "cuda": gpu, "max_rel_diff": worst, "steps": min(len(cpu), len(gpu))}
    print(f"loss curve, fixture llama f32, 12 steps: GPU vs CPU max relative difference {worst} "
          f"({len(gpu)} GPU steps, {len(cpu)} CPU steps)", flush=True)
    save()

    models = o.models.split(",")[: 1 if o.quick else None]
    for name in models:
        path = os.path.join(o.work, name)
        if not os.path.exists(os.path.join(path, "config.json")):
            made = py({"fn": "make", "name": name, "path": path}, 150)
            print(f"made {name}: {made}", flush=True)
            if not made:
                continue
        def generate(batch):
            m = merit(["bench", "generate", "--model", path, "--prompt-tokens", "128", "--new-tokens", "128",
                       "--repeats", "2", "--batch", str(batch)], 100)
            r = py({"fn": "generate", "path": path, "batch": batch, "prompt": 128, "new": 128}, 100)
            row(f"generate tokens/s, batch {batch}", name, m, r, "generation_tokens_per_s", "transformers")
            row(f"prompt tokens/s, batch {batch}", name, m, r, "prompt_tokens_per_s", "transformers")

        generate(1)
        steps = 3 if o.quick else 5
        m = merit(["bench", "train", "--model", path, "--tokens", "1024", "--batch", "8", "--steps", str(steps),
                   "--rank", "16", "--targets", "all", "--method", "lora"], 120)
        r = py({"fn": "train", "path": path, "batch": 8, "tokens": 1024, "steps": steps, "rank": 16,
                "checkpointing": False}, 120)
        row("LoRA train tokens/s, 8x1024 r16", name, m, r, "tokens_per_s", "peft")
        if m and r:
            rows.append({"what": "LoRA peak GPU MiB", "model": name, "merit": m["gpu_peak_bytes"] >> 20,
                         "peft": r["peak_bytes"] >> 20})
            print(f"  peak GPU memory: merit {m['gpu_peak_bytes'] >> 20} MiB, peft {r['peak_bytes'] >> 20} MiB")
        q = merit(["bench", "train", "--model", path, "--tokens", "1024", "--batch", "8", "--steps", "2",
                   "--rank", "16", "--targets", "all", "--method", "qlora", "--gradient-checkpointing"], 90)
        if q:
            rows.append({"what": "QLoRA (NF4, checkpointing)", "model": name, "merit": q})
            print(f"  QLoRA NF4 + checkpointing: {q.get('tokens_per_s', 0):.1f} tokens/s, peak GPU "
                  f"{q['gpu_peak_bytes'] >> 20} MiB", flush=True)
        generate(32)
        ad = merit(["bench", "adapters", "--model", path, "--requests", "32", "--adapters", "16",
                    "--new-tokens", "32"], 90)
        if ad:
            rows.append({"what": "16 adapters vs 1", "model": name, "merit": ad})
            print(f"  adapters: {json.dumps(ad)}", flush=True)
        save()
    report["seconds"] = time.time() - started
    save()
    print(f"done in {report['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
