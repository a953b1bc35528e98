#!/usr/bin/env bash
# Fuzzes every file parser of merit-gate and merit-core's policy parser for a
# bounded time, with a memory limit.
#
#   scripts/fuzz.sh [SECONDS]        # SECONDS per target, default 30
#
# With cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain, or a
# stable one through RUSTC_BOOTSTRAP=1, each target in fuzz/fuzz_targets runs
# under libFuzzer with AddressSanitizer, `-rss_limit_mb=2048` and
# `-max_total_time=SECONDS`, starting from seeds written by merit-gate's tests
# (a PDF, a docx, parquet files, images, audio, jsonl, csv). Crashes land in
# fuzz/artifacts/<target>/ and the script exits non-zero.
#
# Without cargo-fuzz (or with MERIT_FUZZ_PROPTEST=1), it runs merit-gate's
# proptest fuzz tests instead
# (arbitrary bytes under every extension and policy kind, mutations of the
# same seeds, arbitrary policy TOML), scaled to the time asked for through
# MERIT_FUZZ_CASES.
set -euo pipefail

seconds="${1:-30}"
case "$seconds" in
    '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

fuzz_cargo=()
if [ -n "${MERIT_FUZZ_PROPTEST:-}" ]; then
    : # asked for the proptest fallback
elif cargo fuzz --version >/dev/null 2>&1; then
    if rustup run nightly rustc --version >/dev/null 2>&1; then
        fuzz_cargo=(cargo +nightly fuzz)
    else
        fuzz_cargo=(env RUSTC_BOOTSTRAP=1 cargo fuzz)
    fi
fi

if [ ${#fuzz_cargo[@]} -eq 0 ]; then
    echo "cargo-fuzz not found: running the proptest fuzz tests instead" >&2
    # Roughly SECONDS per test on a small machine (a few thousand cases a second).
    cases=$(( seconds * 3000 ))
    MERIT_FUZZ_CASES="$cases" cargo test -p merit-gate --release --lib fuzz_
    exit $?
fi

echo "writing seed corpora" >&2
MERIT_FUZZ_SEEDS="$root/fuzz/corpus" cargo test -p merit-gate --lib fuzz_seeds --quiet >/dev/null

"${fuzz_cargo[@]}" build --fuzz-dir fuzz -O
failed=()
for target in $("${fuzz_cargo[@]}" list --fuzz-dir fuzz); do
    mkdir -p "fuzz/corpus/$target"
    echo "fuzzing $target for ${seconds}s" >&2
    if ! "${fuzz_cargo[@]}" run --fuzz-dir fuzz -O "$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=262144 -timeout=20 \
        -print_final_stats=1 >"fuzz/$target.log" 2>&1; then
        failed+=("$target")
        tail -n 40 "fuzz/$target.log" >&2
    fi
    grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb)" "fuzz/$target.log" | sed "s/^/  $target /" >&2 || true
done

if [ ${#failed[@]} -ne 0 ]; then
    echo "fuzzing found problems in: ${failed[*]} (see fuzz/artifacts/ and fuzz/<target>.log)" >&2
    exit 1
fi
echo "no crash, leak or out-of-memory in any target" >&2
