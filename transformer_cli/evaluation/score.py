"""`tfx score CKPT_OR_EXPORT --src F --tgt F`: how probable the model finds given translations.

One output line per pair, in input order: `log_prob<TAB>tokens<TAB>mean`, the summed
log-probability of the target given the source (`decoding.scoring`: training's shifted
targets and masked loss, no label smoothing), its token count (pieces + EOS) and their
ratio; or JSON lines with `--json`. `--filter MIN` is the data-filtering use: only the
pairs whose mean is at least MIN are written, as `source<TAB>target` lines under a header
of the model's two languages: a corpus of `format: tsv` (with `--json`, as JSON lines
that keep their scores).

The files are read as a stream, `CHUNK_PAIRS` pairs at a time; files (not pipes) are
counted first, so that files of different lengths are refused before anything is
written. A pair whose source is empty has no score (NaN, JSON null), with a warning: the
model has nothing to attend to.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from transformer_cli.core.config import Precision
from transformer_cli.core.errors import DataError
from transformer_cli.decoding.lines import chunks, open_input, open_output, read_lines, warn

if TYPE_CHECKING:
    from transformer_cli.data.tokenizer import Tokenizer
    from transformer_cli.decoding.scoring import PairScore

CHUNK_PAIRS = 10_000


@dataclass(frozen=True)
class ScoreJob:
    """What `tfx score` was asked to do."""

    checkpoint: Path  # a checkpoint or a CTranslate2 export directory
    src: Path
    tgt: Path
    output: Path | None = None  # None: stdout
    as_json: bool = False
    keep_min: float | None = None  # --filter: the least mean log-probability kept
    batch_tokens: int = 4096
    device: str = "auto"
    precision: Precision | None = None  # None: the checkpoint's decode.precision


def run(job: ScoreJob) -> int:
    """Score every pair of `job`'s files and write the lines; returns the pairs scored."""
    if job.batch_tokens < 1:
        raise DataError(f"--batch-tokens must be >= 1, got {job.batch_tokens}")
    for path in (job.src, job.tgt):  # said before the model loads (a pipe is not opened)
        if not path.exists():
            raise DataError(f"{path}: no such input file")
    if job.src.is_file() and job.tgt.is_file():  # refused before anything is written
        check_counts(job, count_lines(job.src), count_lines(job.tgt))
    scorer = load_scorer(job)
    tsv = job.keep_min is not None and not job.as_json  # --filter's kept pairs, as a corpus
    if tsv and len(set(scorer.langs)) < 2:
        raise DataError(
            f"--filter writes a tsv corpus whose two fields are the model's languages, and "
            f"both are {scorer.langs[0]!r}: use --json"
        )
    kept = total = 0
    with contextlib.ExitStack() as stack:
        src = read_lines(stack.enter_context(open_input(job.src)), str(job.src))
        tgt = read_lines(stack.enter_context(open_input(job.tgt)), str(job.tgt))
        out = stack.enter_context(open_output(job.output))
        if tsv:  # a tsv corpus starts with its fields
            out.write("\t".join(scorer.langs).encode("utf-8") + b"\n")
        for chunk in chunks(aligned(job, src, tgt), CHUNK_PAIRS):
            scores = score_chunk(scorer, chunk, total + 1)
            for number, (pair, score) in enumerate(zip(chunk, scores, strict=True), total + 1):
                line = format_line(job, number, pair, score)
                if line is not None:
                    out.write(line.encode("utf-8") + b"\n")
                    kept += 1
            out.flush()
            total += len(chunk)
    if job.keep_min is not None:
        print(f"kept {kept} of {total} pairs (mean >= {job.keep_min})", file=sys.stderr)
    return total


def count_lines(path: Path) -> int:
    """The lines of a file (a last line without a newline counts)."""
    with open_input(path) as f:
        return sum(1 for _ in f)


def check_counts(job: ScoreJob, n_src: int, n_tgt: int) -> None:
    """DataError unless the two files have the same number of lines, and some."""
    if n_src != n_tgt:
        raise DataError(
            f"--src {job.src} has {n_src} lines but --tgt {job.tgt} has {n_tgt}: "
            "they must be line-aligned pairs"
        )
    if n_src == 0:
        raise DataError(f"--src {job.src}: empty file, nothing to score")


def aligned(job: ScoreJob, src: Iterator[str], tgt: Iterator[str]) -> Iterator[tuple[str, str]]:
    """The pairs of two line streams; DataError (`check_counts`) when one ends first.

    Files were counted before; this is what finds it for pipes.
    """
    count = 0
    for s, t in itertools.zip_longest(src, tgt):
        if s is None or t is None:
            rest_src, rest_tgt = sum(1 for _ in src), sum(1 for _ in tgt)
            check_counts(
                job, count + (s is not None) + rest_src, count + (t is not None) + rest_tgt
            )
        count += 1
        yield s, t
    check_counts(job, count, count)


@dataclass(frozen=True)
class Scorer:
    """A loaded model as `tfx score` uses it: its tokenizer, its languages, and a function
    from id pairs to their scores."""

    tokenizer: Tokenizer
    langs: tuple[str, str]  # (source, target): the header of a --filter tsv
    score: Callable[[list[list[int]], list[list[int]]], list[PairScore]]


def load_scorer(job: ScoreJob) -> Scorer:
    """`job.checkpoint` (a checkpoint or a CTranslate2 export) as a `Scorer`."""
    import torch

    from transformer_cli.core import runtime
    from transformer_cli.decoding import ct2_backend as ct2
    from transformer_cli.decoding.loading import load_model
    from transformer_cli.decoding.scoring import score_pairs

    device = runtime.device_option(job.device)
    if ct2.is_export_dir(job.checkpoint):
        exp = ct2.load_export(job.checkpoint, device.type)

        def by_export(sources: list[list[int]], targets: list[list[int]]) -> list[PairScore]:
            return ct2.pair_scores(exp, sources, targets, job.batch_tokens)

        langs = (exp.cfg.data.src_lang, exp.cfg.data.tgt_lang)
        return Scorer(exp.tokenizer, langs, by_export)
    model, tokenizer, cfg = load_model(job.checkpoint, device)
    key = "--precision" if job.precision else "decode.precision"
    precision = runtime.resolve_precision(job.precision or cfg.decode.precision, device, key)

    def by_model(sources: list[list[int]], targets: list[list[int]]) -> list[PairScore]:
        with torch.inference_mode(), runtime.autocast(device, precision):
            return score_pairs(model, sources, targets, job.batch_tokens, device)

    return Scorer(tokenizer, (cfg.data.src_lang, cfg.data.tgt_lang), by_model)


def score_chunk(scorer: Scorer, chunk: list[tuple[str, str]], first: int) -> list[PairScore | None]:
    """The scores of a chunk's pairs (None for an empty source, with a warning)."""
    src_ids = scorer.tokenizer.encode_src([s for s, _ in chunk])
    tgt_ids = scorer.tokenizer.encode_tgt([t for _, t in chunk])
    real = [i for i, ids in enumerate(src_ids) if ids]
    for i in sorted(set(range(len(chunk))) - set(real)):
        warn(f"line {first + i}: empty source; the pair has no score")
    scored = iter(scorer.score([src_ids[i] for i in real], [tgt_ids[i] for i in real]))
    real_set = set(real)
    return [next(scored) if i in real_set else None for i in range(len(chunk))]


def format_line(
    job: ScoreJob, number: int, pair: tuple[str, str], score: PairScore | None
) -> str | None:
    """The output line of one pair, or None when `--filter` leaves it out."""
    mean = math.nan if score is None else score.mean
    if job.keep_min is not None and not mean >= job.keep_min:
        return None
    if job.as_json:
        record: dict = {"line": number}
        if job.keep_min is not None:
            record |= {"src": pair[0], "tgt": pair[1]}
        if score is None:
            return json.dumps(record | {"log_prob": None, "tokens": None, "mean": None})
        values = {"log_prob": score.log_prob, "tokens": score.tokens, "mean": score.mean}
        return json.dumps(record | values, ensure_ascii=False)
    if job.keep_min is not None:
        return f"{_one_field(pair[0])}\t{_one_field(pair[1])}"
    if score is None:
        return "nan\t0\tnan"
    return f"{score.log_prob:.4f}\t{score.tokens}\t{score.mean:.4f}"


def _one_field(text: str) -> str:
    """A TSV field: tabs would split it."""
    return text.replace("\t", " ")
