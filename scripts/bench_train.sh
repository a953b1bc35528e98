#!/usr/bin/env bash
# Merit's training speed and memory beside PyTorch + PEFT (see scripts/bench_train.py).
# Makes .venv-train with the fixture requirements (torch, transformers, peft, gguf) on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MERIT_TRAIN_VENV:-.venv-train}"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, transformers, peft, gguf" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet -r scripts/fixtures/requirements.txt
fi
cargo build --release -p merit
exec "$VENV/bin/python" scripts/bench_train.py "$@"
