"""What `tfx prepare` prints: a table of what each split and corpus gave, then the tokenizer."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from transformer_cli.core.table import aligned
from transformer_cli.data.clean import DROP_REASONS

_HEADER = (
    "split",
    "read",
    "kept",
    *(reason.replace("_", " ") for reason in DROP_REASONS),
    "src p50/p90/p99/max",
    "tgt p50/p90/p99/max",
    "unk src/tgt",
)


def summary(meta: dict, directory: Path) -> str:
    """One row per split, and one per corpus of a split that has several; the lengths in
    pieces and the share of <unk> pieces; then the tokenizer."""
    rows = [_HEADER]
    for role, s in meta["splits"].items():
        corpora = s.get("corpora", [])
        label = f"{role} ({s['name']})" if s["name"] != role else role
        rows.append(_row(label, s))
        if len(corpora) > 1:
            rows.extend(_row(f"  {_corpus_label(c)}", c) for c in corpora)
    lines = aligned(rows)
    t = meta["tokenizer"]
    vocab = (
        f"joint vocabulary {t['src_vocab_size']}"
        if t["joint"]
        else f"vocabularies {t['src_vocab_size']} (src) / {t['tgt_vocab_size']} (tgt)"
    )
    origin = f" of {t['from']}" if t["from"] else ""
    lines.append(f"SentencePiece {t['model_type']}{origin}, {vocab}; lengths in pieces")
    lines.append(f"cache: {directory} ({meta['seconds']:.1f} s)")
    return "\n".join(lines)


def _corpus_label(c: dict) -> str:
    extras = [f"weight {c['weight']:g}"] + ([f"tag {c['tag']}"] if c.get("tag") else [])
    return f"{c['name']} ({', '.join(extras)})"


def _row(label: str, s: dict) -> tuple[str, ...]:
    d = s["dropped"]
    return (
        label,
        str(s["read"]),
        str(s["kept"]),
        *(str(d.get(reason, 0)) for reason in DROP_REASONS),
        "/".join(str(v) for v in s["src_len"].values()),
        "/".join(str(v) for v in s["tgt_len"].values()),
        "/".join(_share(s["unk"][side], s["pieces"][side]) for side in ("src", "tgt")),
    )


def _share(part: int, whole: int) -> str:
    """`part` of `whole` in percent; a share too small to show two decimals is <0.01%."""
    if part == 0:
        return "0%"
    percent = 100 * part / whole
    return "<0.01%" if percent < 0.01 else f"{percent:.2f}%"


@contextmanager
def stage(message: str) -> Iterator[None]:
    """Print `message ...` to stderr, and its time when the block ends."""
    print(f"{message} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    yield
    print(f"{message}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
