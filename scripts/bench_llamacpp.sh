#!/usr/bin/env bash
# Merit vs llama.cpp on the same GGUF (see scripts/bench_llamacpp.py).
# Builds merit in release mode and, on first use, a virtual environment
# with llama-cpp-python from PyPI (compiles llama.cpp: several minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MERIT_BENCH_VENV:-.venv-bench}"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "llama-cpp-python==0.3.36" numpy
fi
cargo build --release -p merit
exec "$VENV/bin/python" scripts/bench_llamacpp.py "$@"
