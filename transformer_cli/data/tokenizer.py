"""SentencePiece training and loading, with the special ids of core/specials.py.

A `Tokenizer` holds one joint model (both languages share a vocabulary, which lets the
model share embeddings) or one model per side. It travels as raw model bytes, so a
checkpoint can carry it and `tfx translate CKPT` needs nothing else.

This module must not import torch: the data pipeline and `tfx --help` stay light.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm

from transformer_cli.core.config import TokenizerConfig
from transformer_cli.core.errors import DataError
from transformer_cli.core.fileio import atomic_write_bytes
from transformer_cli.core.specials import (
    BOS,
    BOS_ID,
    EOS,
    EOS_ID,
    PAD,
    PAD_ID,
    SPECIAL_IDS,
    UNK,
    UNK_ID,
)

JOINT_FILE = "spm.model"
SRC_FILE, TGT_FILE = "spm.src.model", "spm.tgt.model"

# SentencePiece samples and shuffles its input with its own generator; a fixed seed
# makes the same corpus and config give the same model bytes (and so the same cache).
_SEED = 1234


def _threads() -> int:
    return max(1, os.cpu_count() or 1)


class Tokenizer:
    """Source and target SentencePiece processors (the same object when joint)."""

    def __init__(self, src: spm.SentencePieceProcessor, tgt: spm.SentencePieceProcessor | None):
        self._src = src
        self._tgt = src if tgt is None else tgt
        self.joint = tgt is None
        for side, sp in (("source", self._src), ("target", self._tgt)):
            ids = {"pad": sp.pad_id(), "unk": sp.unk_id(), "bos": sp.bos_id(), "eos": sp.eos_id()}
            if ids != SPECIAL_IDS:
                raise DataError(
                    f"{side} SentencePiece model has special ids {ids}, tfx needs {SPECIAL_IDS}"
                )

    # ------------------------------------------------------------------ encode / decode

    def encode_src(self, lines: Sequence[str]) -> list[list[int]]:
        """Piece ids per line, without BOS/EOS."""
        return self._src.encode(list(lines), out_type=int, num_threads=_threads())

    def encode_tgt(self, lines: Sequence[str]) -> list[list[int]]:
        return self._tgt.encode(list(lines), out_type=int, num_threads=_threads())

    def decode_tgt(self, ids_lists: Iterable[Sequence[int]]) -> list[str]:
        """Detokenized text; each sequence stops at its first EOS, PAD and BOS are skipped."""
        clean = []
        for ids in ids_lists:
            ids = ids.tolist() if hasattr(ids, "tolist") else ids  # a tensor row is fine too
            out = []
            for i in ids:
                i = int(i)
                if i == EOS_ID:
                    break
                if i not in (PAD_ID, BOS_ID):
                    out.append(i)
            clean.append(out)
        return self._tgt.decode(clean) if clean else []

    def src_piece_id(self, piece: str) -> int:
        """The source id of `piece` as one whole piece (a corpus tag); DataError if the
        model would not keep it whole."""
        i = self._src.piece_to_id(piece)
        if i == UNK_ID or piece not in self._src.encode(piece, out_type=str):
            raise DataError(f"{piece} is not a piece of the source SentencePiece model")
        return i

    def src_pieces(self, line: str) -> list[str]:
        """The piece strings of one source line, for display."""
        return self._src.encode(line, out_type=str)

    def src_id_pieces(self, ids: Sequence[int]) -> list[str]:
        """The piece strings of source ids (what a piece-level decoder such as CTranslate2
        takes)."""
        return [self._src.id_to_piece(int(i)) for i in ids]

    def tgt_piece_ids(self, pieces: Sequence[str]) -> list[int]:
        """Target ids of piece strings (unknown pieces are UNK)."""
        return [self._tgt.piece_to_id(p) for p in pieces]

    def tgt_pieces(self, ids: Sequence[int]) -> list[str]:
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        return [self._tgt.id_to_piece(int(i)) for i in ids]

    @property
    def src_vocab_size(self) -> int:
        return self._src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self._tgt.get_piece_size()

    # ------------------------------------------------------------------ bytes and files

    def to_bytes(self) -> dict[str, bytes]:
        """Model file name -> model bytes: {spm.model} or {spm.src.model, spm.tgt.model}."""
        if self.joint:
            return {JOINT_FILE: self._src.serialized_model_proto()}
        return {
            SRC_FILE: self._src.serialized_model_proto(),
            TGT_FILE: self._tgt.serialized_model_proto(),
        }

    def fingerprint(self) -> str:
        """sha256 over the model files' names and bytes: the same for the same model(s), and
        another for any other, one with the same vocabulary size included."""
        h = hashlib.sha256()
        for name, data in sorted(self.to_bytes().items()):
            h.update(f"{name}\n{len(data)}\n".encode())
            h.update(data)
        return h.hexdigest()

    @classmethod
    def from_bytes(cls, models: dict[str, bytes]) -> Tokenizer:
        if JOINT_FILE in models:
            return cls(_processor(models[JOINT_FILE], JOINT_FILE), None)
        if SRC_FILE in models and TGT_FILE in models:
            return cls(
                _processor(models[SRC_FILE], SRC_FILE), _processor(models[TGT_FILE], TGT_FILE)
            )
        raise DataError(
            f"no tokenizer: expected {JOINT_FILE}, or {SRC_FILE} and {TGT_FILE} "
            f"(found: {', '.join(sorted(models)) or 'nothing'})"
        )

    def save(self, directory: str | Path) -> list[Path]:
        """Write the model file(s) atomically into `directory`."""
        paths = []
        for name, data in self.to_bytes().items():
            path = Path(directory) / name
            atomic_write_bytes(path, data)
            paths.append(path)
        return paths

    @classmethod
    def load(cls, run_dir: str | Path) -> Tokenizer:
        """The tokenizer of a prepared run dir (RUN_DIR/cache/spm*.model)."""
        # the cache dir as store.cache_dir() names it; that module imports torch, this one must not
        directory = Path(run_dir) / "cache"
        names = [JOINT_FILE] if (directory / JOINT_FILE).is_file() else [SRC_FILE, TGT_FILE]
        models = {}
        for name in names:
            path = directory / name
            try:
                models[name] = path.read_bytes()
            except FileNotFoundError:
                raise DataError(
                    f"{path}: no SentencePiece model (run `tfx prepare --config ...` first)"
                ) from None
        return cls.from_bytes(models)


def _processor(data: bytes, name: str) -> spm.SentencePieceProcessor:
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(data)
    except Exception as e:  # sentencepiece raises bare RuntimeError/OSError
        raise DataError(f"{name}: not a valid SentencePiece model ({e})") from None
    return sp


# ----------------------------------------------------------------------------- training


def train_tokenizer(
    cfg: TokenizerConfig, src: Sequence[str], tgt: Sequence[str], tags: Sequence[str] = ()
) -> Tokenizer:
    """Train one joint model on both sides, or one model per side; deterministic.

    `tags` become user-defined pieces of the source model: each is always one piece.
    """
    if cfg.joint:
        return Tokenizer(_train(cfg, [*src, *tgt], "joint", tags), None)
    return Tokenizer(_train(cfg, src, "source", tags), _train(cfg, tgt, "target"))


def _train(
    cfg: TokenizerConfig, lines: Sequence[str], side: str, tags: Sequence[str] = ()
) -> spm.SentencePieceProcessor:
    model = io.BytesIO()
    spm.set_random_generator_seed(_SEED)
    extra: dict[str, Any] = {"user_defined_symbols": list(tags)} if tags else {}
    try:
        spm.SentencePieceTrainer.train(
            **extra,
            sentence_iterator=iter(lines),
            model_writer=model,
            vocab_size=cfg.vocab_size,
            model_type=cfg.model_type,
            character_coverage=cfg.character_coverage,
            input_sentence_size=cfg.sample_size,
            shuffle_input_sentence=True,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            pad_piece=PAD,
            unk_piece=UNK,
            bos_piece=BOS,
            eos_piece=EOS,
            num_threads=_threads(),
            minloglevel=2,  # SentencePiece logs every EM step to stderr otherwise
        )
    except RuntimeError as e:
        raise DataError(_explain(str(e), cfg, side)) from None
    return _processor(model.getvalue(), f"{side} SentencePiece model")


def _explain(message: str, cfg: TokenizerConfig, side: str) -> str:
    """Turn SentencePiece's trainer errors into advice in tfx's own terms.

    tfx keeps SentencePiece's hard vocabulary limit on purpose: the model's embedding
    sizes then always equal tokenizer.vocab_size, and a corpus too small for it is
    reported (with the largest size that works) instead of silently shrinking.
    """
    corpus = "the training corpus" if side == "joint" else f"the {side} side of the training corpus"
    too_high = re.search(r"Vocabulary size too high \((\d+)\).*<= (\d+)", message)
    if too_high:
        limit = too_high.group(2)
        return (
            f"tokenizer.vocab_size {cfg.vocab_size} is too large for {corpus}: SentencePiece "
            f"({cfg.model_type}) can build at most {limit} pieces from it; set a smaller one, "
            f"e.g. --set tokenizer.vocab_size={limit}"
        )
    too_low = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message)
    if too_low:
        need = too_low.group(2)
        return (
            f"tokenizer.vocab_size {cfg.vocab_size} is smaller than the {need} pieces needed "
            f"for the characters of {corpus}; raise tokenizer.vocab_size to at least {need} "
            "or lower tokenizer.character_coverage"
        )
    detail = re.sub(r"^.*?\] ", "", message.strip().splitlines()[0] if message.strip() else "")
    return f"SentencePiece training failed on {corpus}: {detail or message}"
