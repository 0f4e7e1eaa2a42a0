"""A corpus streamed through cleaning, SentencePiece and the length filter into a split's
arrays, chunk by chunk and counted on the way: what `tfx prepare` does to each corpus.

Memory follows the chunk, not the corpus: a chunk of lines is read, encoded with
SentencePiece's own threads, appended to the on-disk arrays (`store.SplitWriter`) and
let go. What stays is counts: a histogram of lengths per side, the drop counts, and,
with `data.dedup`, 8 bytes a distinct pair of the corpus being read (`clean.SeenPairs`).
"""

from __future__ import annotations

import array
import contextlib
import gc
import itertools
import math
import random
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO

import torch
from tqdm import tqdm

from transformer_cli.core.config import DataConfig
from transformer_cli.core.errors import DataError
from transformer_cli.core.specials import UNK_ID
from transformer_cli.data import clean, corpus, store
from transformer_cli.data.corpus import Corpus, Pair
from transformer_cli.data.store import SplitWriter
from transformer_cli.data.tokenizer import Tokenizer

CHUNK = 20_000  # pairs per encode call: big enough for SentencePiece's threads to share


@dataclass(frozen=True)
class Rules:
    """What a split's pairs must pass: training pairs are cleaned and filtered, others not."""

    train: bool
    max_len: int = 0
    max_ratio: float = 0.0
    dedup: bool = False
    drop_copies: bool = False
    tags: tuple[str, ...] = ()  # each training corpus's tag ("" = none): no text may hold one

    @classmethod
    def for_role(cls, data: DataConfig, role: str) -> Rules:
        tags = tuple(c.tag for c in corpus.corpora(data, "train"))
        if role != "train":
            return cls(train=False, tags=tags)
        return cls(
            train=True,
            max_len=data.max_len,
            max_ratio=data.max_ratio,
            dedup=data.dedup,
            drop_copies=data.drop_copies,
            tags=tags,
        )


@dataclass
class Counts:
    """What one corpus (or a whole split) gave: read, kept, dropped by reason, lengths."""

    name: str
    origin: str
    weight: float = 1.0
    tag: str = ""
    read: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(clean.DROP_REASONS, 0))
    src_hist: Counter = field(default_factory=Counter)  # length in pieces -> sentences
    tgt_hist: Counter = field(default_factory=Counter)
    pieces: dict[str, int] = field(default_factory=lambda: {"src": 0, "tgt": 0})
    unk: dict[str, int] = field(default_factory=lambda: {"src": 0, "tgt": 0})

    def add(self, other: Counts) -> None:
        """Fold another corpus's counts into these (a split's total)."""
        self.read += other.read
        self.kept += other.kept
        for reason, n in other.dropped.items():
            self.dropped[reason] += n
        self.src_hist.update(other.src_hist)
        self.tgt_hist.update(other.tgt_hist)
        for side in ("src", "tgt"):
            self.pieces[side] += other.pieces[side]
            self.unk[side] += other.unk[side]

    def as_meta(self) -> dict:
        """The record meta.json keeps (and `summary` prints)."""
        return {
            "name": self.name,
            "origin": self.origin,
            "weight": self.weight,
            "tag": self.tag,
            "read": self.read,
            "kept": self.kept,
            "dropped": dict(self.dropped),
            "src_len": clean.percentiles(self.src_hist),
            "tgt_len": clean.percentiles(self.tgt_hist),
            "pieces": dict(self.pieces),
            "unk": dict(self.unk),
        }


@dataclass(frozen=True)
class Sinks:
    """Where a split's kept pairs go: the id arrays, and for valid/test the raw text too."""

    arrays: SplitWriter
    text: tuple[IO[bytes], IO[bytes]] | None = None


def encode_corpus(source: Corpus, tokenizer: Tokenizer, rules: Rules, sinks: Sinks) -> Counts:
    """Stream one corpus into `sinks`; its counts. A tag is its piece id before each source.

    SentencePiece encodes each chunk on a worker thread (it lets go of the GIL) while this
    thread reads and cleans the next chunk and writes the one before: the output is in
    input order, the same as encoding one chunk after another. Duplicates are looked for
    within the corpus: each corpus keeps its own weight over its own pairs.
    """
    counts = Counts(source.name, corpus.origin(source), source.weight, source.tag)
    tag = [tokenizer.src_piece_id(source.tag)] if source.tag else []
    guard = Guard.of(rules.tags, tokenizer)
    seen = clean.SeenPairs()

    def encode(kept: list[Pair]) -> tuple[list[list[int]], list[list[int]]]:
        return tokenizer.encode_src([s for s, _ in kept]), tokenizer.encode_tgt(
            [t for _, t in kept]
        )

    with _bar(source.name, "encoding") as bar, ThreadPoolExecutor(1) as pool, _streaming(source):
        pending: _Job | None = None
        for chunk in corpus.read_chunks(source, CHUNK):
            _refuse_tags(chunk, rules.tags, source, counts.read)
            counts.read += len(chunk)
            kept = _clean(chunk, rules, seen, counts.dropped)
            job = _Job(kept, pool.submit(encode, kept), len(chunk), tag, guard)
            if pending is not None:
                _finish(pending, rules, sinks, counts, bar)
            pending = job
        if pending is not None:
            _finish(pending, rules, sinks, counts, bar)
    return counts


@contextlib.contextmanager
def _streaming(source: Corpus) -> Iterator[None]:
    """The runtime a corpus streams in: torch's counting on this thread alone (SentencePiece's
    threads have the cores, and torch's idle workers would spin beside them), and Python's
    cycle collector off. Streaming makes millions of lists and tuples, none in a cycle, so
    reference counting frees each of them; the collector would only walk them over and
    over (docs/performance.md, "prepare"). A hub corpus keeps it: what `datasets` makes
    while it streams is not ours to vouch for."""
    threads, collecting = torch.get_num_threads(), gc.isenabled()
    torch.set_num_threads(1)
    if source.source != "hub":
        gc.disable()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if collecting:
            gc.enable()


@dataclass(frozen=True)
class _Job:
    """A chunk's cleaned pairs, their encoding under way, the lines it read, and the tag
    (its id, or nothing) its sources get once filtered."""

    kept: list[Pair]
    encoded: Future
    lines: int
    tag: list[int]
    guard: Guard | None


@dataclass(frozen=True)
class Guard:
    """The tags' ids, to find text that SentencePiece normalises into a tag (full-width
    brackets, say), which the plain-text check cannot see."""

    ids: dict[int, tuple[int, str]]  # id -> (its corpus's index in data.train, the tag)
    joint: bool  # the target shares the source's pieces, so it is checked too

    @classmethod
    def of(cls, tags: tuple[str, ...], tokenizer: Tokenizer) -> Guard | None:
        ids = {tokenizer.src_piece_id(t): (i, t) for i, t in enumerate(tags) if t}
        return cls(ids, tokenizer.joint) if ids else None

    def check(
        self, written: tuple[array.array, ...], kept: list[Pair], tagged: bool, where: str
    ) -> None:
        """DataError naming the first written pair whose ids hold a tag, other than the one
        put before each source of a tagged corpus. `written` is `SplitWriter.append`'s."""
        wanted = torch.tensor(list(self.ids))
        sides = ((written[0], written[1]), (written[2], written[3]))
        for side, (ids, lengths) in enumerate(sides if self.joint else sides[:1]):
            flat, sizes = store.as_tensor(ids), store.as_tensor(lengths)
            ends = sizes.cumsum(0)
            hits = torch.isin(flat, wanted)
            if side == 0 and tagged:
                hits[ends - sizes] = False  # each source's own tag, its first piece
            found = hits.nonzero()
            if len(found):
                at = int(found[0])
                pair = int(torch.searchsorted(ends, at, right=True))
                i, tag = self.ids[int(flat[at])]
                raise DataError(
                    f"{where}: {kept[pair][side]!r} reads as {tag}, the tag of "
                    f"data.train.{i}.tag, once SentencePiece normalises it; a tag must never "
                    "occur in the text"
                )


def _finish(job: _Job, rules: Rules, sinks: Sinks, counts: Counts, bar: tqdm) -> None:
    """Filter a chunk's encoded pairs by length (training), tag them, and write them."""
    src, tgt = job.encoded.result()
    kept = job.kept
    if rules.train:
        keep, dropped = clean.filter_lengths(
            src, tgt, rules.max_len, rules.max_ratio, src_extra=len(job.tag)
        )
        for reason, n in dropped.items():
            counts.dropped[reason] += n
        if not all(keep):
            src, tgt, kept = (list(itertools.compress(x, keep)) for x in (src, tgt, kept))
    if job.tag:
        src = [job.tag + ids for ids in src]
    written = _emit(sinks, kept, src, tgt, counts)
    if job.guard is not None:  # on the arrays just written: a refusal discards them all
        job.guard.check(written, kept, bool(job.tag), counts.origin)
    bar.update(job.lines)


def _refuse_tags(chunk: list[Pair], tags: tuple[str, ...], source: Corpus, before: int) -> None:
    """A tag in the text would read as the tag: refuse the corpus, naming the line (for
    text files; the pair's number, from 1, otherwise)."""
    for i, tag in enumerate(tags):
        if not tag:
            continue
        for n, pair in enumerate(chunk, start=before + 1):
            for side, text in enumerate(pair):
                if tag in text:
                    raise DataError(
                        f"{_where(source, side, n)}: contains {tag}, the tag of "
                        f"data.train.{i}.tag; a tag must never occur in the text (choose "
                        "another, e.g. <bt>)"
                    )


def _where(source: Corpus, side: int, n: int) -> str:
    if source.source != "hub" and source.format == "text":
        return f"{corpus.input_paths(source)[side]}:{n}"
    return f"{corpus.origin(source)}: pair {n}"


def _clean(
    chunk: list[Pair], rules: Rules, seen: clean.SeenPairs, dropped: dict[str, int]
) -> list[Pair]:
    """The chunk's pairs that pass the text rules (empty sides; copies and duplicates when
    training), in order; `dropped` counts the rest."""
    kept = clean.non_empty(chunk)
    dropped["empty"] += len(chunk) - len(kept)
    if rules.train and rules.drop_copies:
        n = len(kept)
        kept = clean.not_copies(kept)
        dropped["copy"] += n - len(kept)
    if rules.train and rules.dedup:
        n = len(kept)
        kept = list(itertools.compress(kept, seen.first_seen(clean.pair_keys(kept))))
        dropped["duplicate"] += n - len(kept)
    return kept


def _emit(
    sinks: Sinks, kept: list[Pair], src: list[list[int]], tgt: list[list[int]], counts: Counts
) -> tuple[array.array, ...]:
    """Write a chunk's kept pairs (ids, and text for valid/test), and count them; returns
    the flat arrays written (`SplitWriter.append`'s)."""
    written = sinks.arrays.append(src, tgt)
    src_ids, src_lengths, tgt_ids, tgt_lengths = written
    if sinks.text is not None:
        for i, out in enumerate(sinks.text):
            out.write("".join(pair[i] + "\n" for pair in kept).encode("utf-8"))
    counts.kept += len(src)
    for side, ids, lengths, hist in (
        ("src", src_ids, src_lengths, counts.src_hist),
        ("tgt", tgt_ids, tgt_lengths, counts.tgt_hist),
    ):
        counts.pieces[side] += len(ids)
        counts.unk[side] += int((store.as_tensor(ids) == UNK_ID).sum())
        lengths_seen = torch.bincount(store.as_tensor(lengths)).tolist()
        hist.update({n: c for n, c in enumerate(lengths_seen) if c})
    return written


def sample(sources: tuple[Corpus, ...], size: int, seed: int) -> tuple[list[Pair], int]:
    """A uniform sample of at most `size` non-empty pairs over the corpora, read as a
    stream (every pair, in order, when there are no more than that); and how many pairs
    were read."""
    reservoir = Reservoir(size, seed)
    read = 0
    for source in sources:
        with _bar(source.name, "sampling") as bar, _streaming(source):
            for chunk in corpus.read_chunks(source, CHUNK):
                reservoir.offer(clean.non_empty(chunk))
                bar.update(len(chunk))
                read += len(chunk)
    return reservoir.items, read


class Reservoir:
    """A uniform random sample of at most `size` items of a stream offered in lists.

    Li's algorithm L (1994): once the sample is full, it draws how many items to skip
    before the next one it keeps, so a long stream costs a few draws a kept item, not
    one an item. Until the sample is full, it is every item, in order.
    """

    def __init__(self, size: int, seed: int):
        self.size = size
        self.items: list = []
        self._rng = random.Random(seed)
        self._seen = 0  # items offered so far
        self._log_w = 0.0  # log W: each kept item's chance shrinks as the stream grows
        self._next = 0  # the index of the next item to keep, once full

    def offer(self, items: list) -> None:
        start, end = self._seen, self._seen + len(items)
        if start < self.size:
            self.items.extend(items[: self.size - start])
            if len(self.items) == self.size:
                self._log_w = self._draw()
                self._next = self.size + self._skip()
        while len(self.items) == self.size and self._next < end:
            self.items[self._rng.randrange(self.size)] = items[self._next - start]
            self._log_w += self._draw()
            self._next += 1 + self._skip()
        self._seen = end

    def _draw(self) -> float:
        """log(u) / size for u uniform in (0, 1)."""
        u = self._rng.random()
        while u == 0.0:
            u = self._rng.random()
        return math.log(u) / self.size

    def _skip(self) -> int:
        u = self._rng.random() or 0.5
        return int(math.log(u) / math.log(-math.expm1(self._log_w)))


def _bar(name: str, stage: str) -> tqdm:
    return tqdm(desc=f"{stage} {name}", unit=" lines", file=sys.stderr, disable=None)
