"""`tfx prepare`: read the corpus, train SentencePiece (or take a checkpoint's, with
--tokenizer-from), and write the encoded cache.

The cache (layout in store.py) is keyed by a fingerprint of the input bytes, the data +
tokenizer config and a borrowed tokenizer's bytes, so running prepare again with the
same inputs is free, and any change to them rebuilds it. Every file is written
atomically and `meta.json` comes last: a cache that was interrupted halfway has no
meta.json and is never mistaken for a complete one.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import sentencepiece
from tqdm import tqdm

from transformer_cli.core.config import Config, to_dict
from transformer_cli.core.config_file import write_resolved
from transformer_cli.core.errors import DataError
from transformer_cli.core.fileio import atomic_write_text, is_partial_write
from transformer_cli.core.specials import SPECIAL_IDS, UNK_ID
from transformer_cli.core.table import aligned
from transformer_cli.data import corpus, store
from transformer_cli.data.base_checkpoint import check_tokenizer_section, load_base
from transformer_cli.data.store import SPLITS, EncodedSplit
from transformer_cli.data.tokenizer import (
    JOINT_FILE,
    SRC_FILE,
    TGT_FILE,
    Tokenizer,
    train_tokenizer,
)

# Bump when the cache layout or the way text becomes ids changes: old caches rebuild.
CACHE_FORMAT = 1
_ENCODE_CHUNK = 20_000  # lines per encode call: big enough to batch, small enough to show progress
DROP_REASONS = ("empty", "too_long", "ratio")


def run(cfg: Config, tokenizer_from: str | Path | None = None) -> dict:
    """Prepare `cfg.run_dir/cache`, or reuse it if it is up to date; returns its meta.

    With `tokenizer_from` (a checkpoint) the corpus is encoded with that checkpoint's
    SentencePiece model(s) instead of new ones, and the config's tokenizer section must
    be the checkpoint's; the model's fingerprint joins the cache's.
    """
    started = time.perf_counter()
    run_dir = Path(cfg.run_dir)
    directory = store.cache_dir(run_dir)
    borrowed = _borrowed(cfg, tokenizer_from)
    fingerprint, inputs = fingerprint_of(cfg, borrowed.fingerprint() if borrowed else None)

    meta = _up_to_date(directory, fingerprint)
    if meta is not None:
        write_resolved(cfg, run_dir)
        print(f"cache up to date: {directory} (fingerprint {fingerprint[:12]})")
        return {**meta, "reused": True}
    _clear_stale(directory)

    _status(f"reading {_describe(cfg)}")
    pairs = {role: corpus.read_split(cfg.data, role) for role in SPLITS}
    tokenizer = borrowed or _train(cfg, pairs["train"])
    encoded = _encode_all(tokenizer, pairs)
    stats = {role: _keep(cfg, role, pairs[role], encoded) for role in SPLITS}
    if stats["train"]["kept"] == 0:
        raise _nothing_left(cfg, stats["train"])

    _status(f"writing {directory}")
    try:
        files = _write_cache(directory, tokenizer, encoded, pairs)
        write_resolved(cfg, run_dir)
    except OSError as e:  # a full disk or a read-only run dir is the user's to fix
        where = e.filename or directory
        raise DataError(f"{where}: cannot write the cache ({e.strerror or e})") from None

    meta = {
        "format": CACHE_FORMAT,
        "fingerprint": fingerprint,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 2),
        "inputs": inputs,
        "tokenizer": _tokenizer_meta(cfg, tokenizer, tokenizer_from),
        "special_ids": SPECIAL_IDS,
        "splits": stats,
        "files": files,
    }
    store.write_meta(run_dir, meta)  # last: only now is the cache complete
    print(summary(meta, directory))
    return {**meta, "reused": False}


def _borrowed(cfg: Config, path: str | Path | None) -> Tokenizer | None:
    """The tokenizer of checkpoint `path` (None: none), once the config fits it."""
    if path is None:
        return None
    base = load_base(path, "--tokenizer-from")
    check_tokenizer_section(cfg, base)
    return base.tokenizer


def _train(cfg: Config, train: corpus.Pairs) -> Tokenizer:
    tok = cfg.tokenizer
    kind = "joint" if tok.joint else "separate"
    _status(f"training {kind} SentencePiece {tok.model_type} ({tok.vocab_size} pieces)")
    return train_tokenizer(tok, train.src, train.tgt)


def _tokenizer_meta(cfg: Config, tokenizer: Tokenizer, borrowed_from: str | Path | None) -> dict:
    """What meta.json says of the tokenizer; `sha256` is what `train --init-from` checks."""
    return {
        "joint": tokenizer.joint,
        "model_type": cfg.tokenizer.model_type,
        "src_vocab_size": tokenizer.src_vocab_size,
        "tgt_vocab_size": tokenizer.tgt_vocab_size,
        "sha256": tokenizer.fingerprint(),
        "from": None if borrowed_from is None else str(borrowed_from),
    }


def _clear_stale(directory: Path) -> None:
    """Mark an out-of-date cache incomplete, and remove what a killed prepare left."""
    # losing meta.json first means a crash halfway through leaves an incomplete cache,
    # never a mix that looks complete
    (directory / "meta.json").unlink(missing_ok=True)
    # a prepare killed mid-write leaves its temp file (fileio's `.NAME.*.tmp`), which can
    # be as large as train.pt: nothing else would ever remove it
    for litter in directory.glob(".*.tmp"):
        if is_partial_write(litter.name):
            litter.unlink(missing_ok=True)


def _encode_all(tokenizer: Tokenizer, pairs: dict) -> dict:
    """Every split's (source ids, target ids), with one progress bar over all lines."""
    total = 2 * sum(len(p) for p in pairs.values())
    with tqdm(total=total, desc="encoding", unit=" lines", file=sys.stderr, disable=None) as bar:
        return {
            role: (
                _encode(tokenizer.encode_src, p.src, bar.update),
                _encode(tokenizer.encode_tgt, p.tgt, bar.update),
            )
            for role, p in pairs.items()
        }


def _keep(cfg: Config, role: str, pairs: corpus.Pairs, encoded: dict) -> dict:
    """Filter the training pairs (in `encoded`, in place); return the split's statistics.

    valid/test are never filtered: their scores must stay comparable.
    """
    src_ids, tgt_ids = encoded[role]
    if role == "train":
        keep, dropped = filter_pairs(src_ids, tgt_ids, cfg.data.max_len, cfg.data.max_ratio)
        src_ids, tgt_ids = [src_ids[i] for i in keep], [tgt_ids[i] for i in keep]
        encoded[role] = src_ids, tgt_ids
    else:
        dropped = dict.fromkeys(DROP_REASONS, 0)
    dropped["empty"] += pairs.dropped_empty
    return {
        "name": corpus.split_name(cfg.data, role),
        "origin": pairs.origin,
        "read": pairs.read,
        "kept": len(src_ids),
        "dropped": dropped,
        "src_len": percentiles([len(s) for s in src_ids]),
        "tgt_len": percentiles([len(t) for t in tgt_ids]),
        "pieces": {"src": sum(map(len, src_ids)), "tgt": sum(map(len, tgt_ids))},
        "unk": {"src": _unknown(src_ids), "tgt": _unknown(tgt_ids)},
    }


def _unknown(seqs: list[list[int]]) -> int:
    """How many of the pieces are <unk>: text the tokenizer has no piece for."""
    return sum(ids.count(UNK_ID) for ids in seqs)


def _write_cache(
    directory: Path,
    tokenizer: Tokenizer,
    encoded: dict[str, tuple[list[list[int]], list[list[int]]]],
    pairs: dict[str, corpus.Pairs],
) -> list[str]:
    """Write everything but meta.json, each file atomically; return the file names."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in (JOINT_FILE, SRC_FILE, TGT_FILE):  # a joint <-> separate switch leaves one
        (directory / stale).unlink(missing_ok=True)
    files = [path.name for path in tokenizer.save(directory)]
    for role in SPLITS:
        store.save_split(directory / f"{role}.pt", EncodedSplit.from_lists(*encoded[role]))
        files.append(f"{role}.pt")
        if role != "train":  # raw text: the references BLEU is computed against
            for side, lines in (("src", pairs[role].src), ("tgt", pairs[role].tgt)):
                text = "".join(line + "\n" for line in lines)
                atomic_write_text(directory / f"{role}.{side}.txt", text)
                files.append(f"{role}.{side}.txt")
    return files


# ----------------------------------------------------------------------------- fingerprint


def fingerprint_of(
    cfg: Config, borrowed: str | None = None
) -> tuple[str, dict[str, list[dict[str, str]]]]:
    """sha256 over the input files' bytes, the data + tokenizer config and the borrowed
    tokenizer's fingerprint (`borrowed`, None = trained here); and the inputs."""
    inputs = {
        role: [
            {"path": str(p), "sha256": _sha256_file(p)} for p in corpus.input_paths(cfg.data, role)
        ]
        for role in SPLITS
    }
    data = to_dict(cfg.data)
    # The content hashes identify the files; the same files reached through another
    # path (another working directory, a symlink) are the same data.
    data.pop("dir")
    payload = {
        "format": CACHE_FORMAT,
        "sentencepiece": sentencepiece.__version__,
        "data": data,
        "tokenizer": to_dict(cfg.tokenizer),
        "inputs": {role: [f["sha256"] for f in files] for role, files in inputs.items()},
    }
    if borrowed is not None:  # absent otherwise: caches made before --tokenizer-from stay valid
        payload["tokenizer_from"] = borrowed
    blob = json.dumps(payload, sort_keys=True).encode("utf-8")
    return hashlib.sha256(blob).hexdigest(), inputs


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _up_to_date(directory: Path, fingerprint: str) -> dict | None:
    """The existing cache's meta if it matches the fingerprint and is whole, else None."""
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("fingerprint") != fingerprint:
        return None
    if not all((directory / name).is_file() for name in meta.get("files", [None])):
        return None
    return meta


# ----------------------------------------------------------------------------- encode, filter


def _encode(
    encode: Callable, lines: list[str], advance: Callable[[int], object]
) -> list[list[int]]:
    out: list[list[int]] = []
    for start in range(0, len(lines), _ENCODE_CHUNK):
        chunk = lines[start : start + _ENCODE_CHUNK]
        out.extend(encode(chunk))
        advance(len(chunk))
    return out


def filter_pairs(
    src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]], max_len: int, max_ratio: float
) -> tuple[list[int], dict[str, int]]:
    """Indices of the pairs to train on, and how many were dropped for each reason.

    A pair is dropped for the first reason that applies: a side with no pieces (a line
    that normalises to nothing), a side longer than `max_len` pieces, or a piece-length
    ratio above `max_ratio` (0 = no ratio limit).
    """
    keep: list[int] = []
    dropped = dict.fromkeys(DROP_REASONS, 0)
    for i, (s, t) in enumerate(zip(src, tgt, strict=True)):
        ls, lt = len(s), len(t)
        if ls == 0 or lt == 0:
            dropped["empty"] += 1
        elif ls > max_len or lt > max_len:
            dropped["too_long"] += 1
        elif max_ratio > 0 and max(ls, lt) > max_ratio * min(ls, lt):
            dropped["ratio"] += 1
        else:
            keep.append(i)
    return keep, dropped


def percentiles(lengths: Sequence[int]) -> dict[str, int]:
    """Nearest-rank p50/p90/p99 and the max of a list of lengths (all 0 when empty)."""
    if not lengths:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0}
    ordered = sorted(lengths)

    def rank(p: float) -> int:
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "max": ordered[-1]}


def _nothing_left(cfg: Config, train: dict) -> DataError:
    d = train["dropped"]
    return DataError(
        f"{train['origin']}: no training pairs left after filtering ({d['empty']} empty, "
        f"{d['too_long']} longer than data.max_len={cfg.data.max_len} pieces, {d['ratio']} "
        f"with a length ratio above data.max_ratio={cfg.data.max_ratio})"
    )


# ----------------------------------------------------------------------------- reporting


def _describe(cfg: Config) -> str:
    d = cfg.data
    if d.source == "hub":
        return f"{d.hub_name}{'/' + d.hub_config if d.hub_config else ''} from the Hugging Face hub"
    kind = "toy corpus" if d.source == "toy" else f"{d.format} files"
    return f"{kind} in {d.dir} ({d.train}/{d.valid}/{d.test}, {d.src_lang} -> {d.tgt_lang})"


def _status(message: str) -> None:
    print(f"{message} ...", file=sys.stderr, flush=True)


def summary(meta: dict, directory: Path) -> str:
    """A short table of what was read, kept and dropped, the lengths in pieces and the
    share of <unk> pieces; then the tokenizer."""
    header = (
        "split",
        "read",
        "kept",
        "empty",
        "too long",
        "ratio",
        "src p50/p90/p99/max",
        "tgt p50/p90/p99/max",
        "unk src/tgt",
    )
    rows = [header]
    for role, s in meta["splits"].items():
        d = s["dropped"]
        rows.append(
            (
                f"{role} ({s['name']})" if s["name"] != role else role,
                str(s["read"]),
                str(s["kept"]),
                str(d["empty"]),
                str(d["too_long"]),
                str(d["ratio"]),
                "/".join(str(v) for v in s["src_len"].values()),
                "/".join(str(v) for v in s["tgt_len"].values()),
                "/".join(_share(s["unk"][side], s["pieces"][side]) for side in ("src", "tgt")),
            )
        )
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


def _share(part: int, whole: int) -> str:
    """`part` of `whole` in percent; a share too small to show two decimals is <0.01%."""
    if part == 0:
        return "0%"
    percent = 100 * part / whole
    return "<0.01%" if percent < 0.01 else f"{percent:.2f}%"
