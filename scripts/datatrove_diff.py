#!/usr/bin/env python3
"""Gathers real documents nobody on the project wrote and runs datatrove's
own web-text filters over them, for `merit-gate`'s differential test.

    python datatrove_diff.py OUT.jsonl [--max-docs 1500]

Run by scripts/datatrove_diff.sh inside a venv that has datatrove and spaCy.
The documents come from the machine: Debian's /usr/share/common-licenses and
/usr/share/doc (README, NEWS, copyright, changelogs; .gz read too) and the
long descriptions in installed Python packages' METADATA. Each output line:
{"id", "source", "text", "datatrove": {"gopher_quality": bool, ...}, "words":
[datatrove's English word tokens]}.
"""

import glob
import gzip
import hashlib
import json
import os
import sys
import sysconfig

from datatrove.data import Document
from datatrove.utils.text import split_into_words
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)

MIN_BYTES, MAX_BYTES = 300, 200_000


def read_text(path):
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read(MAX_BYTES + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_BYTES + 1)
    except OSError:
        return None
    if len(data) > MAX_BYTES or len(data) < MIN_BYTES or b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def metadata_description(path):
    text = read_text(path)
    if text is None:
        return None
    # The long description is the body after the first blank line.
    head, sep, body = text.partition("\n\n")
    return body if sep and len(body.encode()) >= MIN_BYTES else None


def sources():
    """Every source's documents, interleaved (licenses, package metadata and
    Debian's documentation take turns, so a cap keeps all three)."""
    groups = [list(licenses()), list(metadata()), list(docs())]
    longest = max(len(g) for g in groups)
    for i in range(longest):
        for g in groups:
            if i < len(g):
                yield g[i]


def licenses():
    for path in sorted(glob.glob("/usr/share/common-licenses/*")):
        yield "common-licenses", path, read_text(path)


def docs():
    patterns = ["README*", "NEWS*", "*.txt", "*.md", "copyright", "changelog.gz", "changelog.Debian.gz", "AUTHORS*"]
    for pkg in sorted(glob.glob("/usr/share/doc/*")):
        for pattern in patterns:
            for path in sorted(glob.glob(os.path.join(pkg, pattern))):
                if os.path.isfile(path):
                    yield "usr-share-doc", path, read_text(path)


def metadata():
    site = sysconfig.get_paths()["purelib"]
    for path in sorted(glob.glob(os.path.join(site, "*.dist-info", "METADATA"))):
        yield "python-metadata", path, metadata_description(path)


def main():
    out = sys.argv[1]
    max_docs = int(sys.argv[sys.argv.index("--max-docs") + 1]) if "--max-docs" in sys.argv else 1500
    filters = {
        "gopher_quality": GopherQualityFilter(),
        "gopher_repetition": GopherRepetitionFilter(),
        "c4": C4QualityFilter(),
        "fineweb": FineWebQualityFilter(),
    }
    seen = set()
    n = 0
    counts = {}
    with open(out, "w", encoding="utf-8") as f:
        for source, path, text in sources():
            if text is None or not text.strip():
                continue
            digest = hashlib.sha256(text.encode()).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            verdicts = {}
            for name, flt in filters.items():
                # Each filter gets its own document: C4 rewrites the text it keeps.
                doc = Document(text=text, id=digest[:16])
                result = flt.filter(doc)
                verdicts[name] = bool(result[0] if isinstance(result, tuple) else result)
            words = split_into_words(text)
            f.write(json.dumps({"id": digest[:16], "source": path, "text": text, "datatrove": verdicts,
                                "words": words}) + "\n")
            counts[source] = counts.get(source, 0) + 1
            n += 1
            if n >= max_docs:
                break
    print(f"datatrove 0.10 judged {n} documents: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    main()
