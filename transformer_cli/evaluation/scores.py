"""One model's scores on one set of sentences: sacreBLEU/chrF of its decoded text, its
teacher-forced loss, and its decoding speed. A tfx model and a CTranslate2 export are
scored the same way, so `tfx evaluate` puts them in one table.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from transformer_cli.core.config import Config, DecodeConfig, ResolvedPrecision
from transformer_cli.core.metrics import score_texts
from transformer_cli.decoding.limits import fit_sources
from transformer_cli.training.loss import per_token, perplexity, split_loss

if TYPE_CHECKING:
    import torch

    from transformer_cli.data.tokenizer import Tokenizer
    from transformer_cli.decoding.ct2_backend import Exported
    from transformer_cli.model.transformer import Transformer


@dataclass
class EvalData:
    """What every checkpoint is scored on: source lines and reference lines."""

    label: str  # names the hypothesis and report files: a split name or the source file's name
    sources: list[str]
    references: list[str]
    origin: str  # for the report: where the lines came from


def score_checkpoint(
    model: Transformer,
    tokenizer: Tokenizer,
    cfg: Config,
    decode: DecodeConfig,
    data: EvalData,
    device: torch.device,
    precision: ResolvedPrecision,
) -> dict:
    """Decode, score and time one model; the returned dict holds its hypotheses too."""
    from transformer_cli.data.store import EncodedSplit
    from transformer_cli.decoding.runner import decode_all

    src_ids = tokenizer.encode_src(data.sources)
    truncated = warn_truncated(src_ids, model.cfg.max_positions)
    started = time.perf_counter()
    hyp_ids = decode_all(model, src_ids, decode, device, precision)
    seconds = time.perf_counter() - started
    encoded = EncodedSplit.from_lists(src_ids, tokenizer.encode_tgt(data.references))
    loss = split_loss(model, encoded, cfg, device, precision)
    return result_row(tokenizer, hyp_ids, data, loss, truncated, seconds)


def score_export(exported: Exported, decode: DecodeConfig, data: EvalData) -> dict:
    """`score_checkpoint` for a CTranslate2 export: its decoding, its teacher-forced loss."""
    from transformer_cli.data.batching import eval_truncation
    from transformer_cli.decoding.ct2_backend import decode_exported, target_log_probs

    tokenizer = exported.tokenizer
    src_ids = tokenizer.encode_src(data.sources)
    positions = exported.cfg.model.max_positions
    truncated = warn_truncated(src_ids, positions)
    started = time.perf_counter()
    hyp_ids = cast("list[list[int]]", decode_exported(exported, src_ids, decode))  # nbest 1
    seconds = time.perf_counter() - started
    # the teacher-forced loss cuts targets as split_loss does (batching.eval_truncation)
    targets = [t[: eval_truncation(positions)] for t in tokenizer.encode_tgt(data.references)]
    log_probs = target_log_probs(exported, src_ids, targets)
    nll, tokens = -sum(sum(lp) for lp in log_probs), sum(len(lp) for lp in log_probs)
    loss = {"nll": round(per_token(nll, tokens), 4), "ppl": round(perplexity(nll, tokens), 3)}
    return result_row(tokenizer, hyp_ids, data, loss, truncated, seconds)


def warn_truncated(sources: list[list[int]], positions: int) -> int:
    """Warn of the sources that decoding cuts to the model's positions; returns their count."""
    truncated = len(fit_sources(sources, positions)[1])
    if truncated:
        print(
            f"warning: {truncated} source lines are longer than the model's {positions} "
            "positions; only their first pieces are translated",
            file=sys.stderr,
        )
    return truncated


def result_row(
    tokenizer: Tokenizer,
    hyp_ids: list[list[int]],
    data: EvalData,
    loss: dict,
    truncated: int,
    seconds: float,
) -> dict:
    """One model's row of `tfx evaluate`: scores, loss, speed, and its hypotheses."""
    hyps = tokenizer.decode_tgt(hyp_ids)
    n_tokens = sum(len(h) for h in hyp_ids)
    return {
        **score_texts(hyps, data.references),
        "loss": loss["nll"],
        "ppl": loss["ppl"],
        "sentences": len(hyps),
        "truncated_sources": truncated,
        "hyp_tokens": n_tokens,
        "decode_seconds": round(seconds, 3),
        "sentences_per_s": round(len(hyps) / max(seconds, 1e-9), 1),
        "tokens_per_s": round(n_tokens / max(seconds, 1e-9), 1),
        "hypotheses": hyps,
    }
