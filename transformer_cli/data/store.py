"""The run dir's prepared cache: encoded splits as flat integer arrays on disk.

Layout under `RUN_DIR/cache/`:
    meta.json            stats, the array types, the fingerprint of inputs + config (+ a
                         borrowed tokenizer) and the tokenizer's own (written last)
    spm.model            joint SentencePiece model (or spm.src.model + spm.tgt.model)
    {split}.{side}.ids   every sentence's piece ids, one after another: raw uint16 when
                         the vocabulary fits, else int32, in the machine's byte order
    {split}.{side}.len   each sentence's length in pieces (uint16 when it fits, else int32)
    {split}.src.txt      raw source and target text of valid/test (for BLEU references)
    {split}.tgt.txt

prepare appends to the arrays chunk by chunk (`SplitWriter`), so no list of a corpus's
sentences or ids is ever held; training maps them (`load_split`), so the ranks of a job
share the page cache's one copy. A cache of format 1 (`{split}.pt`, torch.save of int32
ids and int64 offsets) still loads.

`meta.json` is written last and only after every other file is in place, so a cache
without it is incomplete by definition and is rebuilt.
"""

from __future__ import annotations

import array
import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from transformer_cli.core.errors import DataError
from transformer_cli.core.fileio import atomic_open, atomic_write_text

SPLITS = ("train", "valid", "test")


def cache_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "cache"


@dataclass(frozen=True)
class EncodedSplit:
    """Pairs of piece-id sequences (no BOS/EOS) stored as flat arrays plus offsets."""

    src: torch.Tensor  # (total source pieces,) uint16 or int32
    src_offsets: torch.Tensor  # (N + 1,) int64; sentence i is src[off[i]:off[i+1]]
    tgt: torch.Tensor
    tgt_offsets: torch.Tensor
    # (pairs, weight) of each corpus, in order; () = one corpus, read once an epoch
    weights: tuple[tuple[int, float], ...] = ()

    @classmethod
    def from_lists(cls, src: list[list[int]], tgt: list[list[int]]) -> EncodedSplit:
        if len(src) != len(tgt):
            raise ValueError(f"{len(src)} source vs {len(tgt)} target sentences")

        def flat(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
            lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
            offsets = torch.zeros(len(seqs) + 1, dtype=torch.int64)
            offsets[1:] = torch.cumsum(lengths, 0)
            ids = torch.tensor([i for s in seqs for i in s], dtype=torch.int32)
            return ids, offsets

        s, so = flat(src)
        t, to = flat(tgt)
        return cls(s, so, t, to)

    def __len__(self) -> int:
        return len(self.src_offsets) - 1

    @property
    def src_lengths(self) -> torch.Tensor:
        return self.src_offsets[1:] - self.src_offsets[:-1]

    @property
    def tgt_lengths(self) -> torch.Tensor:
        return self.tgt_offsets[1:] - self.tgt_offsets[:-1]

    def src_ids(self, i: int) -> torch.Tensor:
        return self.src[self.src_offsets[i] : self.src_offsets[i + 1]]

    def tgt_ids(self, i: int) -> torch.Tensor:
        return self.tgt[self.tgt_offsets[i] : self.tgt_offsets[i + 1]]


# ----------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class ArrayType:
    """How a cache array is stored: its name in meta.json, array-module code, torch dtype."""

    name: str
    typecode: str
    dtype: torch.dtype


ARRAY_TYPES = {
    t.name: t
    for t in (ArrayType("uint16", "H", torch.uint16), ArrayType("int32", "i", torch.int32))
}


def id_type(vocab_size: int) -> str:
    """The narrowest array type that holds every id of a vocabulary."""
    return "uint16" if vocab_size <= 1 << 16 else "int32"


def length_type(longest: int | None) -> str:
    """The narrowest array type for lengths up to `longest` (None: not bounded)."""
    return "uint16" if longest is not None and longest < 1 << 16 else "int32"


class SplitWriter:
    """Appends encoded pairs to one split's four arrays; each file appears, whole, only
    when the `with` block ends without an error (a temp file beside it until then)."""

    def __init__(self, directory: Path, role: str, ids: str, lengths: str):
        self.ids, self.lengths = ARRAY_TYPES[ids], ARRAY_TYPES[lengths]
        self.files = [f"{role}.{side}.{kind}" for side in ("src", "tgt") for kind in ("ids", "len")]
        self._paths = [directory / name for name in self.files]
        self._stack = contextlib.ExitStack()
        self._out: list[BinaryIO] = []

    def __enter__(self) -> SplitWriter:
        with contextlib.ExitStack() as stack:  # a failed open closes (and removes) the others
            self._out = [stack.enter_context(atomic_open(p)) for p in self._paths]
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: Any) -> bool | None:
        return self._stack.__exit__(*exc)

    @property
    def types(self) -> dict[str, str]:
        """What meta.json records of the arrays, for `load_split`."""
        return {"ids": self.ids.name, "lengths": self.lengths.name}

    def append(self, src: list[list[int]], tgt: list[list[int]]) -> tuple[array.array, ...]:
        """Add pairs: ids without BOS/EOS, one list per sentence. Returns what was written:
        (source ids, source lengths, target ids, target lengths), flat."""
        written = []
        for i, seqs in enumerate((src, tgt)):
            flat = array.array(self.ids.typecode)
            add = flat.fromlist  # list by list, in C: faster than one chained iterator
            for seq in seqs:
                add(seq)
            sizes = array.array(self.lengths.typecode, map(len, seqs))
            flat.tofile(self._out[2 * i])
            sizes.tofile(self._out[2 * i + 1])
            written += [flat, sizes]
        return tuple(written)


def as_tensor(values: array.array) -> torch.Tensor:
    """A flat array written by `SplitWriter` as an int64 tensor (a copy)."""
    kind = next(t for t in ARRAY_TYPES.values() if t.typecode == values.typecode)
    if len(values) == 0:
        return torch.zeros(0, dtype=torch.int64)
    return torch.frombuffer(values, dtype=kind.dtype).long()


# ----------------------------------------------------------------------------- reading


def load_meta(run_dir: str | Path) -> dict:
    """The cache's meta.json; a DataError if the cache is missing or incomplete."""
    path = cache_dir(run_dir) / "meta.json"
    if not path.exists():
        raise DataError(
            f"no prepared data in {cache_dir(run_dir)} (run `tfx prepare --config ...` first)"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable cache metadata ({e}); run tfx prepare again") from None


def write_meta(run_dir: str | Path, meta: dict) -> None:
    """Write meta.json, atomically: the last file of a prepare, which makes a cache whole."""
    atomic_write_text(cache_dir(run_dir) / "meta.json", json.dumps(meta, indent=2) + "\n")


def load_split(run_dir: str | Path, name: str) -> EncodedSplit:
    """Load one encoded split; requires a complete cache (meta.json present).

    The arrays are memory-mapped from the files, not read into private memory: the ranks
    of a distributed job on one machine share one copy, the page cache's. Only the
    offsets (8 bytes a sentence and side) are computed into memory.
    """
    meta = load_meta(run_dir)
    directory = cache_dir(run_dir)
    if meta.get("format", 1) < 2:
        return _load_format_1(directory / f"{name}.pt")
    stats = meta.get("splits", {}).get(name, {})
    types = stats.get("arrays", {})
    try:
        sides = [_side(directory, f"{name}.{side}", types) for side in ("src", "tgt")]
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        what = e.filename if isinstance(e, OSError) and e.filename else directory / name
        raise DataError(f"{what}: unreadable ({type(e).__name__}); run tfx prepare again") from None
    weights = tuple((c["kept"], c["weight"]) for c in stats.get("corpora", ()))
    return EncodedSplit(*sides[0], *sides[1], weights=weights)


def _side(directory: Path, stem: str, types: dict) -> tuple[torch.Tensor, torch.Tensor]:
    ids = _mapped(directory / f"{stem}.ids", types["ids"])
    lengths = _mapped(directory / f"{stem}.len", types["lengths"])
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    torch.cumsum(lengths.long(), 0, out=offsets[1:])
    if int(offsets[-1]) != len(ids):
        raise ValueError(f"{stem}: lengths sum to {int(offsets[-1])} but there are {len(ids)} ids")
    return ids, offsets


def _mapped(path: Path, kind: str) -> torch.Tensor:
    dtype = ARRAY_TYPES[kind].dtype
    count = path.stat().st_size // dtype.itemsize
    if count == 0:
        return torch.empty(0, dtype=dtype)
    return torch.from_file(str(path), shared=False, size=count, dtype=dtype)  # copy-on-write map


def _load_format_1(path: Path) -> EncodedSplit:
    try:
        d = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return EncodedSplit(d["src"], d["src_offsets"], d["tgt"], d["tgt_offsets"])
    except FileNotFoundError:
        raise DataError(f"{path}: missing from the prepared cache; run tfx prepare again") from None
    except Exception as e:  # any unreadable cache file means "prepare again"
        raise DataError(f"{path}: unreadable ({type(e).__name__}); run tfx prepare again") from None


def load_text(run_dir: str | Path, name: str, side: str) -> list[str]:
    """Raw text lines of a valid/test split, side 'src' or 'tgt'."""
    path = cache_dir(run_dir) / f"{name}.{side}.txt"
    try:
        return path.read_text(encoding="utf-8").split("\n")[:-1]
    except FileNotFoundError:
        raise DataError(f"{path}: missing from the prepared cache; run tfx prepare again") from None
