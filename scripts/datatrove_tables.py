#!/usr/bin/env python3
"""Writes crates/merit-gate/src/dt_tables.rs: datatrove's PUNCTUATION_SET and
TERMINAL_PUNCTUATION as code-point ranges. Run in the venv of
scripts/datatrove_diff.sh (it has the pinned datatrove)."""

import os

from datatrove.utils.text import PUNCTUATION_SET, TERMINAL_PUNCTUATION

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "crates", "merit-gate", "src", "dt_tables.rs")


def ranges(chars):
    cps = sorted(ord(c) for c in chars)
    out, start, prev = [], cps[0], cps[0]
    for c in cps[1:]:
        if c == prev + 1:
            prev = c
            continue
        out.append((start, prev))
        start = prev = c
    out.append((start, prev))
    return out


def emit(name, rs, doc):
    lines = [f"/// {doc}", f"pub(crate) const {name}: &[(u32, u32)] = &["]
    row = [f"(0x{a:04X}, 0x{b:04X})" for a, b in rs]
    for i in range(0, len(row), 6):
        lines.append("    " + ", ".join(row[i : i + 6]) + ",")
    lines.append("];")
    return "\n".join(lines)


HEAD = """//! Character sets of datatrove 0.10's text metrics, as sorted inclusive
//! code-point ranges (generated from `datatrove.utils.text` with
//! `scripts/datatrove_tables.py`; regenerate when the pinned datatrove changes).

"""

TAIL = """

/// Whether `c` is in the sorted ranges `set`.
#[inline]
pub(crate) fn contains(set: &[(u32, u32)], c: char) -> bool {
    let c = c as u32;
    set.binary_search_by(|&(a, b)| {
        if b < c {
            std::cmp::Ordering::Less
        } else if a > c {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    })
    .is_ok()
}
"""

with open(OUT, "w") as f:
    f.write(HEAD)
    f.write(emit("PUNCTUATION", ranges(PUNCTUATION_SET), "`PUNCTUATION_SET`: what a word made only of is a symbol, not a word."))
    f.write("\n\n")
    f.write(emit("TERMINAL_PUNCTUATION", ranges(TERMINAL_PUNCTUATION),
                 "`TERMINAL_PUNCTUATION`: what a line ends with to count as punctuated (FineWeb)."))
    f.write(TAIL)
print(f"wrote {OUT}")
