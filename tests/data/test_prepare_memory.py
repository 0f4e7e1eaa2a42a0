"""prepare's memory follows the chunk, not the corpus: a million pairs, measured (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from transformer_cli.data import stream

REPO = Path(__file__).resolve().parents[2]
PAIRS = 1_000_000

# Runs prepare in a fresh process and reports its anonymous memory (RssAnon, which leaves
# out memory-mapped pages) when the training split's encoding starts, and its peak after.
SCRIPT = """
import json, sys, threading, time
from transformer_cli.core.config_file import config_from_dict
from transformer_cli.data import prepare, stream

def anon():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("RssAnon"))

seen = {"start": None, "peak": 0}
def watch():
    while True:
        if seen["start"] is not None:
            seen["peak"] = max(seen["peak"], anon())
        time.sleep(0.005)

real = stream.encode_corpus
def measured(source, *args):
    if source.name == "train":
        seen["start"] = seen["peak"] = anon()
    return real(source, *args)

stream.encode_corpus = measured
threading.Thread(target=watch, daemon=True).start()
meta = prepare.run(config_from_dict(json.loads(sys.argv[1])))
print(json.dumps({**seen, "max_len": max(meta["splits"]["train"][s]["max"]
                  for s in ("src_len", "tgt_len")), "kept": meta["splits"]["train"]["kept"]}))
"""


def write_corpus(directory: Path, pairs: int) -> int:
    """`pairs` distinct pairs of 8 words (index in base 400 in the first three); the longest
    line's length in characters."""
    words = [f"{a}{b}{c}" for a in "bcdfghjklmnpqrstvwxz" for b in "aeiou" for c in "ntsl"]
    longest = 0
    with open(directory / "train.en", "w") as en, open(directory / "train.de", "w") as de:
        for start in range(0, pairs, 100_000):
            src, tgt = [], []
            for i in range(start, min(pairs, start + 100_000)):
                digits = [words[(i // 400**k) % 400] for k in range(3)]
                line = digits + [words[(i * k) % 397] for k in range(5)]
                src.append(" ".join(line))
                tgt.append(" ".join(w.upper() for w in reversed(line)))
            longest = max(longest, *map(len, src), *map(len, tgt))
            en.write("\n".join(src) + "\n")
            de.write("\n".join(tgt) + "\n")
    for split in ("valid", "test"):
        for lang in ("en", "de"):
            lines = (directory / f"train.{lang}").open().readlines()[:50]
            (directory / f"{split}.{lang}").write_text("".join(lines))
    return longest


def pair_bytes(chars: int, pieces: int) -> int:
    """An upper bound on one pair's memory while its chunk is in flight, on CPython 64-bit:
    two str objects (49 bytes + 1 a character), a 2-tuple (56) and its list slot (8), two
    id lists (56 + 8 a slot, and a 32-byte int each at worst), and the written arrays (4 a
    piece at most)."""
    return 2 * (49 + chars) + 56 + 8 + 2 * (56 + 40 * pieces) + 2 * 4 * pieces


@pytest.mark.slow
def test_a_million_pairs_prepare_in_memory_bounded_by_the_chunk(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    chars = write_corpus(data, PAIRS)
    raw = {
        "run_dir": str(tmp_path / "run"),
        "data": {"source": "files", "dir": str(data), "max_len": 100},
        "tokenizer": {"vocab_size": 200, "sample_size": 20_000},
    }
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(raw)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["kept"] == PAIRS
    # three chunks in flight at most: one read and cleaned, one encoding, one being written;
    # 16 bytes a kept pair for duplicate detection (8, and 8 more while two arrays merge);
    # and 64 MiB for the allocator's and torch's own
    in_flight = 3 * stream.CHUNK * pair_bytes(chars, seen["max_len"])
    bound = in_flight + 16 * PAIRS + (64 << 20)
    grew = seen["peak"] - seen["start"]
    assert grew <= bound, f"grew {grew >> 20} MiB while encoding, bound {bound >> 20} MiB"
    # what holding the corpus would take: its ids alone as Python lists
    assert bound < PAIRS * 2 * 40 * 8
