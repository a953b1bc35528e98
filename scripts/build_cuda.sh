#!/usr/bin/env bash
# Builds the CUDA binary of merit on a machine with no GPU and no CUDA install:
# the CUDA 13.0 compiler and libraries come from PyPI (pinned to 13.0, the GPU
# machines' driver: a newer nvcc or nvvm writes PTX their assembler refuses).
#
#   scripts/build_cuda.sh            # release build, stripped and packed:
#                                    #   target/cuda/merit.xz
#   scripts/build_cuda.sh --check    # cargo check --features cuda only (CI)
#
# Environment: CUDA_VENV (default target/cuda/venv), CUDA_COMPUTE_CAP (default
# 90, the H100/H200), CARGO_TARGET_DIR as usual.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=build
[ "${1:-}" = "--check" ] && mode=check

OUT=target/cuda
mkdir -p "$OUT"
# Absolute: the python below runs from inside the venv (so no `nvidia` folder in
# the working directory shadows the installed package).
VENV=$(realpath -m "${CUDA_VENV:-$OUT/venv}")

# The compiler (enough for `--check`), then the libraries the binary links.
COMPILER=("nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-crt==13.0.*"
          "nvidia-cuda-cccl==13.0.*" "nvidia-nvvm==13.0.*")
LIBRARIES=("nvidia-cublas==13.0.*" "nvidia-cuda-nvrtc==13.0.*" "nvidia-curand")
ready="$VENV/bin/nvcc-ready"
[ "$mode" = build ] && ready="$VENV/bin/cuda-libs-ready"
if [ ! -x "$ready" ]; then
    [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
    if [ "$mode" = build ]; then
        "$VENV/bin/pip" install -q "${COMPILER[@]}" "${LIBRARIES[@]}"
    else
        "$VENV/bin/pip" install -q "${COMPILER[@]}"
    fi
    printf '#!/bin/sh\n' >"$ready" && chmod +x "$ready"
fi
CU=$(cd "$VENV" && "$VENV/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')
[ -x "$CU/bin/nvcc" ] || { echo "error: no nvcc under $CU" >&2; exit 1; }

export PATH="$CU/bin:$PATH"
export CUDA_ROOT="$CU" CUDA_PATH="$CU" CUDA_TOOLKIT_ROOT_DIR="$CU"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
# nvcc looks for its host-side headers (crt/) and nvvm beside itself.
export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:-} -I$CU/include"

# Link-time libraries: unversioned names for the .so.N files of the venv.
LIB="$PWD/$OUT/lib"
mkdir -p "$LIB"
for so in "$CU"/lib/lib*.so.*; do
    base=$(basename "$so")
    ln -sf "$so" "$LIB/${base%%.so.*}.so"
done
export LIBRARY_PATH="$LIB${LIBRARY_PATH:+:$LIBRARY_PATH}"

if [ "$mode" = check ]; then
    cargo check -p merit --features cuda --all-targets
    exit 0
fi

# libcuda.so is the driver's: at link time a stub with the symbols cudarc uses
# (soname libcuda.so.1, so the real driver library is loaded at run time).
cargo build --release -p merit-lm --features cuda --lib
TD=${CARGO_TARGET_DIR:-target}
RLIB=$(ls -t "$TD"/release/deps/libcudarc-*.rlib | head -n 1)
nm -u "$RLIB" 2>/dev/null | awk '$1 == "U" && $2 ~ /^cu[A-Z]/ {print $2}' | sort -u >"$OUT/libcuda.syms"
[ -s "$OUT/libcuda.syms" ] || { echo "error: no cu* symbols found in $RLIB" >&2; exit 1; }
awk '{printf "void %s(void) {}\n", $1}' "$OUT/libcuda.syms" >"$OUT/libcuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LIB/libcuda.so" "$OUT/libcuda_stub.c"

cargo build --release -p merit --features cuda
strip -o "$OUT/merit" "$TD/release/merit"
xz -T0 -6 -f -k "$OUT/merit"
ls -l "$OUT/merit" "$OUT/merit.xz"
