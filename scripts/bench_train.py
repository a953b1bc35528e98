#!/usr/bin/env python3
"""Merit's LoRA / QLoRA training speed and memory beside PyTorch + PEFT, in one run.

Both train SmolLM2-135M in f32 on one 256-token sequence per step (batch 1),
LoRA r=8 alpha=16 with AdamW, first on q_proj,v_proj then on all linear
layers; Merit also runs QLoRA (the GGUF's 4-bit base kept quantized), and
both again with gradient checkpointing (layers recomputed in the backward
pass). Each
measurement is a fresh process; tokens/s is over the timed steps after one
warm-up step, peak memory is the process's maximum resident set.

    scripts/bench_train.sh --model PATH.gguf [--threads 2] [--steps 6]

PyTorch loads the same GGUF through transformers (dequantized to f32), so
both train the same weights. Needs torch, transformers, peft and gguf (the
fixture environment: scripts/fixtures/requirements.txt).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time


def torch_run(model, threads, tokens, steps, targets):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(os.path.dirname(model), gguf_file=os.path.basename(model),
                                             dtype=torch.float32)
    tm = {"qv": ["q_proj", "v_proj"], "all": "all-linear"}[targets]
    m = get_peft_model(m, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=tm, task_type="CAUSAL_LM"))
    m.train()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=2e-4)
    ids = torch.randint(100, 20000, (1, tokens))
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = m(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if i > 0:
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"tokens_per_s": tokens * len(times) / sum(times), "peak_bytes": peak}


def merit_run(binary, model, threads, tokens, steps, targets, method, checkpointing=False):
    t = {"qv": "q_proj,v_proj", "all": "all"}[targets]
    out = subprocess.run(
        [binary, "--threads", str(threads), "bench", "train", "--model", model, "--tokens", str(tokens),
         "--steps", str(steps), "--targets", t, "--method", method, "--json"]
        + (["--gradient-checkpointing"] if checkpointing else []),
        check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="SmolLM2 GGUF (merit model pull smollm2)")
    p.add_argument("--merit", default="target/release/merit")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--only", choices=["torch", "merit"], help=argparse.SUPPRESS)
    p.add_argument("--targets", default="qv", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.only == "torch":
        print(json.dumps(torch_run(a.model, a.threads, a.tokens, a.steps, a.targets)))
        return
    rows = []
    for targets in ["qv", "all"]:
        t = subprocess.run([sys.executable, __file__, "--only", "torch", "--model", a.model, "--threads",
                            str(a.threads), "--tokens", str(a.tokens), "--steps", str(a.steps), "--targets", targets],
                           check=True, capture_output=True, text=True)
        torch_r = json.loads(t.stdout.strip().splitlines()[-1])
        runs = {(m, c): merit_run(a.merit, a.model, a.threads, a.tokens, a.steps, targets, m, c)
                for c in [False, True] for m in ["lora", "qlora"]}
        rows.append((targets, torch_r, runs))
    print(f"SmolLM2-135M, batch 1 x {a.tokens} tokens, r=8, AdamW, {a.threads} threads, {a.steps} timed steps")
    print(f"{'targets':8}{'engine':28}{'tokens/s':>10}{'peak MiB':>10}{'vs torch':>10}")
    for targets, tr, runs in rows:
        name = {"qv": "q,v", "all": "all"}[targets]
        engines = [("PyTorch + PEFT", tr)] + [
            (f"Merit {'QLoRA (4-bit)' if m == 'qlora' else 'LoRA (f32)'}{' +ckpt' if c else ''}", runs[(m, c)])
            for c in [False, True] for m in ["lora", "qlora"]]
        for label, r in engines:
            ratio = r["tokens_per_s"] / tr["tokens_per_s"]
            print(f"{name:8}{label:28}{r['tokens_per_s']:>10.1f}{r['peak_bytes'] / 2**20:>10.0f}{ratio:>9.2f}x")
        for c in [False, True]:
            lo, ql = runs[("lora", c)], runs[("qlora", c)]
            print(f"{'':8}QLoRA/LoRA{' (both with gradient checkpointing)' if c else ''}: "
                  f"speed {ql['tokens_per_s'] / lo['tokens_per_s']:.2f}x, "
                  f"peak memory {ql['peak_bytes'] / lo['peak_bytes']:.2f}x")
    print("targets: LoRA >= 1.0x torch; QLoRA memory <= 0.5x of LoRA at speed >= 0.8x")


if __name__ == "__main__":
    main()
