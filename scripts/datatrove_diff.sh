#!/usr/bin/env bash
# Merit's web-text rule families against datatrove's own filters on real
# documents nobody on the project wrote (gathered from this machine):
#
#   scripts/datatrove_diff.sh [--max-docs N] [--min-agreement 0.99] [--show N]
#
# Installs datatrove (pinned, with spaCy, whose English tokenizer datatrove
# uses) into its own venv (DATATROVE_VENV, default target/datatrove/venv),
# lets it judge the documents (scripts/datatrove_diff.py), then prints
# Merit's agreement per family (crates/merit-gate/examples/datatrove_diff.rs);
# exits 1 when a family agrees on fewer documents than --min-agreement.
set -euo pipefail
cd "$(dirname "$0")/.."

max_docs=800
rest=()
while [ $# -gt 0 ]; do
    case "$1" in
        --max-docs) max_docs="$2"; shift 2 ;;
        *) rest+=("$1"); shift ;;
    esac
done

OUT=target/datatrove
VENV=$(realpath -m "${DATATROVE_VENV:-$OUT/venv}")
mkdir -p "$OUT"
# (datatrove's text utilities import `regex`, which only its extras install.)
REQS=("datatrove==0.10.1" "spacy==3.8.*" "regex")
if [ "$(cat "$VENV/datatrove-ready" 2>/dev/null)" != "${REQS[*]}" ]; then
    [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "${REQS[@]}"
    echo "${REQS[*]}" >"$VENV/datatrove-ready"
fi
"$VENV/bin/python" scripts/datatrove_diff.py "$OUT/corpus.jsonl" --max-docs "$max_docs"
cargo run -q -p merit-gate --example datatrove_diff -- "$OUT/corpus.jsonl" "${rest[@]}"
