#!/usr/bin/env bash
# The GPU run (issue 21): Merit's CUDA build beside PyTorch (transformers,
# PEFT) on the same GPU, in one short script for the GPU machine.
#
#   scripts/build_cuda.sh                      # here: target/cuda/merit.xz
#   scripts/device_bench.sh [--quick]          # there: prints the table, writes $OUT/device_bench.json
#
# The GPU machine has PyTorch, transformers and PEFT but no Rust and no
# network: the binary travels packed, the models are made there from
# configs (random weights time as trained ones do).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-${TMPDIR:-/tmp}/merit-device-out}
WORK=${MERIT_BENCH_DIR:-${TMPDIR:-/tmp}/merit-device}
mkdir -p "$OUT" "$WORK"

PY=${PYTHON:-python3}
# cuBLAS, cuRAND and the CUDA runtime of the machine's PyTorch; the driver gives libcuda.so.1.
CU_LIB=$("$PY" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))' 2>/dev/null || true)
[ -n "$CU_LIB" ] && export LD_LIBRARY_PATH="$CU_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

BIN=${MERIT_BIN:-}
if [ -z "$BIN" ]; then
    xz -dc target/cuda/merit.xz >"$WORK/merit" && chmod +x "$WORK/merit" || { echo "error: no target/cuda/merit.xz" >&2; exit 1; }
    BIN="$WORK/merit"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$BIN" --version || { ldd "$BIN"; exit 1; }
PYTHONUNBUFFERED=1 exec "$PY" scripts/device_bench.py --merit "$BIN" --work "$WORK" --out "$OUT" "$@"
