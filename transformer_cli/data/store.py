"""The run dir's prepared cache: encoded splits as flat integer arrays.

Layout under `RUN_DIR/cache/`:
    meta.json            stats, the fingerprint of inputs + config (+ a borrowed
                         tokenizer) and the tokenizer's own (written last)
    spm.model            joint SentencePiece model (or spm.src.model + spm.tgt.model)
    {split}.pt           an EncodedSplit: token ids as one flat int32 array per side
                         plus offsets, never Python lists of lists
    {split}.src.txt      raw source and target text of valid/test (for BLEU references)
    {split}.tgt.txt

`meta.json` is written last and only after every other file is in place, so a cache
without it is incomplete by definition and is rebuilt.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from transformer_cli.core.errors import DataError
from transformer_cli.core.fileio import atomic_write_bytes, atomic_write_text

SPLITS = ("train", "valid", "test")


def cache_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "cache"


@dataclass(frozen=True)
class EncodedSplit:
    """Pairs of piece-id sequences (no BOS/EOS) stored as flat arrays plus offsets."""

    src: torch.Tensor  # (total source pieces,) int32
    src_offsets: torch.Tensor  # (N + 1,) int64; sentence i is src[off[i]:off[i+1]]
    tgt: torch.Tensor
    tgt_offsets: torch.Tensor

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


def save_split(path: Path, split: EncodedSplit) -> None:
    buffer = io.BytesIO()
    torch.save(
        {
            "src": split.src,
            "src_offsets": split.src_offsets,
            "tgt": split.tgt,
            "tgt_offsets": split.tgt_offsets,
        },
        buffer,
    )
    atomic_write_bytes(path, buffer.getvalue())


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
    atomic_write_text(cache_dir(run_dir) / "meta.json", json.dumps(meta, indent=2) + "\n")


def load_split(run_dir: str | Path, name: str) -> EncodedSplit:
    """Load one encoded split; requires a complete cache (meta.json present).

    The arrays are memory-mapped from the file, not read into private memory: the ranks
    of a distributed job on one machine share one copy, the page cache's.
    """
    load_meta(run_dir)
    path = cache_dir(run_dir) / f"{name}.pt"
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
