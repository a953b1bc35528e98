#!/usr/bin/env bash
# Trains the demo adapter with QLoRA on SmolLM2 (Q4_1 GGUF) and checks the
# held-out questions: the adapter must answer each with the taught fact, and
# the base model must not. Prints the time taken.
set -euo pipefail
cd "$(dirname "$0")/../.."
MERIT="${MERIT:-target/release/merit}"
OUT="${1:-runs/demo}"
[ -x "$MERIT" ] || cargo build --release -p merit
"$MERIT" model pull smollm2 >/dev/null
start=$(date +%s)
"$MERIT" train --base smollm2 --data examples/demo-datanet/train.jsonl --method qlora --out "$OUT" \
    --epochs 3 --batch 4 --grad-accum 2 --lr 1e-3 --rank 16 --alpha 32 --eval-split 0.05 --cutoff-len 256
echo "trained in $(( $(date +%s) - start )) s"
"$MERIT" compare --base smollm2 --adapter "$OUT" --prompts examples/demo-datanet/heldout.jsonl --max-tokens 40 --json \
    | python3 -c '
import json, sys
expected = [json.loads(l) for l in open("examples/demo-datanet/heldout.jsonl")]
tuned = base = 0
for line, e in zip(sys.stdin, expected):
    answers = json.loads(line)["answers"]
    fact = e["expect"].rstrip(".")
    adapter = next(v for k, v in answers.items() if k != "base")
    tuned += fact in adapter
    base += fact in answers["base"]
    name = e["fact"]
    print(f"{name:10} adapter: {adapter}")
print(f"taught facts in the answers: adapter {tuned}/{len(expected)}, base model {base}/{len(expected)}")
sys.exit(0 if tuned == len(expected) and base == 0 else 1)
'
