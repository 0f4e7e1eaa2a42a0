"""Which training pairs prepare drops, and why: the rules, one function each.

A pair is dropped for the first reason that applies, in the order of `DROP_REASONS`:
    empty      a side that is empty after stripping, or that SentencePiece's
               normalisation turns into no pieces at all
    copy       the source equals the target (an untranslated line; `data.drop_copies`)
    duplicate  the same source and target came earlier in the same corpus (`data.dedup`)
    too_long   a side longer than `data.max_len` pieces
    ratio      a piece-length ratio above `data.max_ratio`
Valid and test pairs lose only empty ones: their scores must stay comparable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

DROP_REASONS = ("empty", "copy", "duplicate", "too_long", "ratio")


def non_empty(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The pairs with both sides non-empty (the lines come stripped)."""
    return [pair for pair in pairs if pair[0] and pair[1]]


def not_copies(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The pairs whose source differs from their target (a copy is an untranslated line)."""
    return [pair for pair in pairs if pair[0] != pair[1]]


def pair_keys(pairs: list[tuple[str, str]]) -> list[int]:
    """64-bit keys of (source, target) pairs, stable within one process (what duplicate
    detection needs): Python's own hash of the tuple, computed in C."""
    return list(map(hash, pairs))


class SeenPairs:
    """The pairs seen so far, as 64-bit hashes in a few sorted arrays: 8 bytes a distinct
    pair, never a Python set of strings.

    The arrays grow like a binary counter (a new one is merged into the last while that
    one is no larger), so there are O(log n) of them and each hash is copied O(log n)
    times; a merge holds the two arrays, the merged one and the positions of the newer
    (about 3x the merged size for a moment). Two different pairs share a hash with
    probability about n^2 / 2^64 (1 in 70,000 at 16M pairs); such a pair would be counted
    as a duplicate.
    """

    def __init__(self) -> None:
        self._runs: list[torch.Tensor] = []

    def first_seen(self, keys: Sequence[int]) -> list[bool]:
        """For each key, in order: True the first time it appears (here or before)."""
        h = torch.tensor(keys, dtype=torch.int64)
        if len(h) == 0:
            return []
        values, order = torch.sort(h, stable=True)
        new = torch.ones(len(h), dtype=torch.bool)  # in sorted order
        new[1:] = values[1:] != values[:-1]  # a repeat within the chunk
        for run in self._runs:
            # sorted queries: neighbours share their search paths, so they stay in cache
            at = torch.searchsorted(run, values).clamp(max=len(run) - 1)
            new &= run[at] != values
        self._add(values[new])  # sorted, and unique
        first = torch.zeros(len(h), dtype=torch.bool)
        first[order] = new
        return first.tolist()

    def _add(self, run: torch.Tensor) -> None:
        if len(run) == 0:
            return
        self._runs.append(run)
        while len(self._runs) > 1 and len(self._runs[-2]) <= len(self._runs[-1]):
            newer = self._runs.pop()
            self._runs[-1] = _merge(self._runs[-1], newer)

    def __len__(self) -> int:
        return sum(len(run) for run in self._runs)


def _merge(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two sorted arrays with no value in common, as one sorted array (linear, no sort)."""
    at = torch.searchsorted(a, b) + torch.arange(len(b))  # b[i]'s place in the merged one
    merged = torch.empty(len(a) + len(b), dtype=a.dtype)
    merged[at] = b
    rest = torch.ones(len(merged), dtype=torch.bool)
    rest[at] = False
    merged[rest] = a
    return merged


def filter_lengths(
    src: Sequence[Sequence[int]],
    tgt: Sequence[Sequence[int]],
    max_len: int,
    max_ratio: float,
    src_extra: int = 0,
) -> tuple[list[bool], dict[str, int]]:
    """Which encoded pairs to train on (a flag each), and how many were dropped for each
    reason.

    A pair is dropped for the first reason that applies: a side with no pieces (a line
    that normalises to nothing), a side longer than `max_len` pieces (the source with
    `src_extra` more, a tag to come, counted), or a piece-length ratio above `max_ratio`
    (0 = no ratio limit).
    """
    if len(src) != len(tgt):
        raise ValueError(f"{len(src)} source vs {len(tgt)} target sentences")
    ls = torch.tensor(list(map(len, src)), dtype=torch.int64)
    lt = torch.tensor(list(map(len, tgt)), dtype=torch.int64)
    empty = (ls == 0) | (lt == 0)
    too_long = ~empty & ((ls + src_extra > max_len) | (lt > max_len))
    longer, shorter = torch.maximum(ls, lt).double(), torch.minimum(ls, lt).double()
    ratio = (
        ~empty & ~too_long & (longer > max_ratio * shorter)
        if max_ratio > 0
        else torch.zeros_like(empty)
    )
    dropped = dict.fromkeys(DROP_REASONS, 0)
    for reason, mask in (("empty", empty), ("too_long", too_long), ("ratio", ratio)):
        dropped[reason] = int(mask.sum())
    return (~(empty | too_long | ratio)).tolist(), dropped


def percentiles(histogram: Mapping[int, int]) -> dict[str, int]:
    """Nearest-rank p50/p90/p99 and the max of the lengths counted in `histogram`
    (length -> how many); all 0 when it is empty."""
    total = sum(histogram.values())
    if total == 0:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0}
    lengths = sorted(histogram)
    out = {}
    for name, p in (("p50", 50), ("p90", 90), ("p99", 99)):
        rank, seen = max(1, math.ceil(p / 100 * total)), 0
        for length in lengths:
            seen += histogram[length]
            if seen >= rank:
                out[name] = length
                break
    out["max"] = lengths[-1]
    return out
