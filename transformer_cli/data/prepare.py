"""`tfx prepare`: stream the corpora, train SentencePiece on a sample of them (or take a
checkpoint's, with --tokenizer-from), and write the encoded cache.

Memory follows the chunk, not the corpus (stream.py): SentencePiece trains on a
reservoir sample of `tokenizer.sample_size` sentences, and each split is encoded chunk
by chunk straight into its on-disk arrays (store.py).

The cache (layout in store.py) is keyed by a fingerprint of the input bytes, the data +
tokenizer config and a borrowed tokenizer's bytes, so running prepare again with the
same inputs is free, and any change to them rebuilds it. Every file is written
atomically and `meta.json` comes last: a cache that was interrupted halfway has no
meta.json and is never mistaken for a complete one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

import sentencepiece

from transformer_cli.core.config import Config, to_dict
from transformer_cli.core.config_file import write_resolved
from transformer_cli.core.errors import DataError
from transformer_cli.core.fileio import atomic_open, is_partial_write
from transformer_cli.core.specials import SPECIAL_IDS
from transformer_cli.data import corpus, report, store, stream
from transformer_cli.data.base_checkpoint import check_tokenizer_section, load_base
from transformer_cli.data.corpus import Corpus
from transformer_cli.data.store import SPLITS
from transformer_cli.data.tokenizer import (
    JOINT_FILE,
    SRC_FILE,
    TGT_FILE,
    Tokenizer,
    train_tokenizer,
)

# Bump when the cache layout or the way text becomes ids changes: old caches rebuild.
CACHE_FORMAT = 3
_SAMPLE_SEED = 1234  # the reservoir's: the same corpus gives the same sample, so the same model


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
    with report.stage("fingerprinting the inputs"):
        fingerprint, inputs = fingerprint_of(cfg, borrowed.fingerprint() if borrowed else None)

    meta = _up_to_date(directory, fingerprint)
    if meta is not None:
        write_resolved(cfg, run_dir)
        print(f"cache up to date: {directory} (fingerprint {fingerprint[:12]})")
        return {**meta, "reused": True}

    made = not directory.exists()
    # first: whatever happens next, train must not take the old cache for this config's
    _clear_stale(directory)
    sources = {role: corpus.corpora(cfg.data, role) for role in SPLITS}
    print(f"reading {_describe(cfg)}", file=sys.stderr)
    try:
        tokenizer = borrowed or _train(cfg, sources["train"])
        _check_tags(sources["train"], tokenizer, tokenizer_from)
        directory.mkdir(parents=True, exist_ok=True)
        splits, files = _encode_splits(cfg, sources, tokenizer, directory)
        files = _write_tokenizer(directory, tokenizer) + files
        write_resolved(cfg, run_dir)
    except OSError as e:  # a full disk or a read-only run dir is the user's to fix
        where = e.filename or directory
        raise DataError(f"{where}: cannot write the cache ({e.strerror or e})") from None
    except DataError:
        if made:  # the directory this prepare made, still empty: nothing of it stays
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise

    meta = {
        "format": CACHE_FORMAT,
        "fingerprint": fingerprint,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 2),
        "inputs": inputs,
        "tokenizer": _tokenizer_meta(cfg, tokenizer, tokenizer_from),
        "special_ids": SPECIAL_IDS,
        "splits": splits,
        "files": files,
    }
    store.write_meta(run_dir, meta)  # last: only now is the cache complete
    print(report.summary(meta, directory))
    return {**meta, "reused": False}


def _encode_splits(
    cfg: Config, sources: dict[str, tuple[Corpus, ...]], tokenizer: Tokenizer, directory: Path
) -> tuple[dict, list[str]]:
    """Every split's stats for meta.json, and the files written; valid and test first, as
    they are short and a mistake in them shows at once.

    Each file stays a temp file until every split is encoded: a corpus refused halfway
    leaves nothing behind.
    """
    splits, files = {}, []
    with contextlib.ExitStack() as stack:
        for role in ("valid", "test", "train"):
            with report.stage(f"encoding {role}"):
                splits[role], written = _encode_split(
                    cfg, role, sources[role], tokenizer, directory=directory, stack=stack
                )
            files += written
    return {role: splits[role] for role in SPLITS}, files


def _encode_split(
    cfg: Config,
    role: str,
    sources: tuple[Corpus, ...],
    tokenizer: Tokenizer,
    directory: Path,
    stack: contextlib.ExitStack,
) -> tuple[dict, list[str]]:
    """One split's stats and files; its files stay temp files until `stack` closes."""
    d = cfg.data
    train = role == "train"
    ids = store.id_type(max(tokenizer.src_vocab_size, tokenizer.tgt_vocab_size))
    lengths = store.length_type(d.max_len if train else None)
    text = [] if train else [f"{role}.{side}.txt" for side in ("src", "tgt")]
    arrays = stack.enter_context(store.SplitWriter(directory, role, ids, lengths))
    sinks = stream.Sinks(arrays, _text_sinks(stack, directory, text))
    parts = []
    for source in sources:
        counts = stream.encode_corpus(source, tokenizer, stream.Rules.for_role(d, role), sinks)
        if counts.kept == 0:
            raise _nothing_left(cfg, counts)
        parts.append(counts)
    total = stream.Counts(corpus.split_name(d, role), " + ".join(c.origin for c in parts))
    for counts in parts:
        total.add(counts)
    stats = {**total.as_meta(), "arrays": arrays.types}
    stats["corpora"] = [c.as_meta() for c in parts]
    return stats, arrays.files + text


def _text_sinks(
    stack: contextlib.ExitStack, directory: Path, names: list[str]
) -> tuple[IO[bytes], IO[bytes]] | None:
    """The raw text files of valid/test (the references BLEU is computed against), open
    until `stack` closes; None for train (no names)."""
    if not names:
        return None
    src, tgt = (stack.enter_context(atomic_open(directory / name)) for name in names)
    return src, tgt


def _write_tokenizer(directory: Path, tokenizer: Tokenizer) -> list[str]:
    """The model file(s), after the splits; and no file left of an older cache's layout."""
    for stale in (JOINT_FILE, SRC_FILE, TGT_FILE, *(f"{role}.pt" for role in SPLITS)):
        (directory / stale).unlink(missing_ok=True)  # a joint <-> separate switch leaves one
    return [path.name for path in tokenizer.save(directory)]


def _borrowed(cfg: Config, path: str | Path | None) -> Tokenizer | None:
    """The tokenizer of checkpoint `path` (None: none), once the config fits it."""
    if path is None:
        return None
    base = load_base(path, "--tokenizer-from")
    check_tokenizer_section(cfg, base)
    return base.tokenizer


def _train(cfg: Config, sources: tuple[Corpus, ...]) -> Tokenizer:
    """SentencePiece trained on a sample of the training corpora, knowing their tags."""
    tok = cfg.tokenizer
    # a joint model sees both sides of each sampled pair
    size = max(1, tok.sample_size // 2) if tok.joint else tok.sample_size
    with report.stage(f"sampling up to {size} training pairs for SentencePiece"):
        pairs, read = stream.sample(sources, size, _SAMPLE_SEED)
    if not pairs:
        raise _no_pairs(" + ".join(corpus.origin(s) for s in sources), read)
    kind = "joint" if tok.joint else "separate"
    tags = [s.tag for s in sources if s.tag]
    with report.stage(f"training {kind} SentencePiece {tok.model_type} ({tok.vocab_size} pieces)"):
        return train_tokenizer(tok, [s for s, _ in pairs], [t for _, t in pairs], tags)


def _check_tags(
    sources: tuple[Corpus, ...], tokenizer: Tokenizer, borrowed_from: str | Path | None
) -> None:
    """Each corpus tag must be one whole piece of the source model."""
    for i, source in enumerate(sources):
        if not source.tag:
            continue
        try:
            tokenizer.src_piece_id(source.tag)
        except DataError:
            whose = f"the tokenizer of {borrowed_from}" if borrowed_from else "the tokenizer"
            raise DataError(
                f"data.train.{i}.tag: {source.tag} is not one piece of {whose} (a tag must "
                "be a user-defined piece; prepare a tokenizer with the tag to use it)"
            ) from None


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


# ----------------------------------------------------------------------------- fingerprint


def fingerprint_of(
    cfg: Config, borrowed: str | None = None
) -> tuple[str, dict[str, list[dict[str, str]]]]:
    """sha256 over the input files' bytes, the data + tokenizer config and the borrowed
    tokenizer's fingerprint (`borrowed`, None = trained here); and the inputs."""
    inputs = {
        role: [
            {"path": str(p), "sha256": _sha256_file(p)}
            for source in corpus.corpora(cfg.data, role)
            for p in corpus.input_paths(source)
        ]
        for role in SPLITS
    }
    data = to_dict(cfg.data)
    # The content hashes identify the files; the same files reached through another
    # path (another working directory, a symlink) are the same data.
    data.pop("dir")
    for listed in data["train"] if isinstance(data["train"], list) else ():
        listed.pop("dir")
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
    if meta.get("format") != CACHE_FORMAT:  # an older layout: still loads, but rebuild it
        return None
    if not all((directory / name).is_file() for name in meta.get("files", [None])):
        return None
    return meta


# ----------------------------------------------------------------------------- messages


def _no_pairs(origin: str, read: int) -> DataError:
    """The error for corpora of no pair with two sides: empty, or every pair half empty."""
    why = f"all {read} pairs have an empty side" if read else "the input is empty"
    return DataError(f"{origin}: no sentence pairs ({why})")


def _nothing_left(cfg: Config, counts: stream.Counts) -> DataError:
    """The error for a corpus that gave no pairs: empty, or everything dropped."""
    d = counts.dropped
    if counts.read == d["empty"]:
        return _no_pairs(counts.origin, counts.read)
    return DataError(
        f"{counts.origin}: no training pairs left after filtering ({d['empty']} empty, "
        f"{d['copy']} copies, {d['duplicate']} duplicates, {d['too_long']} longer than "
        f"data.max_len={cfg.data.max_len} pieces, {d['ratio']} with a length ratio above "
        f"data.max_ratio={cfg.data.max_ratio})"
    )


# ----------------------------------------------------------------------------- reporting


def _describe(cfg: Config) -> str:
    d = cfg.data
    if d.source == "hub":
        return f"{d.hub_name}{'/' + d.hub_config if d.hub_config else ''} from the Hugging Face hub"
    kind = "toy corpus" if d.source == "toy" else f"{d.format} files"
    train = corpus.split_name(d, "train")
    return f"{kind} in {d.dir} ({train}/{d.valid}/{d.test}, {d.src_lang} -> {d.tgt_lang})"
