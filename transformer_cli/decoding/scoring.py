"""Teacher-forced scores of given translations: log p(target | source), pair by pair.

B pairs, T target len (pieces + 1), V target vocabulary

A pair is scored as training scores it, without label smoothing: the decoder reads the
target shifted right (BOS y_1 .. y_n) and is scored at y_1 .. y_n EOS, PAD positions
left out (`batching.collate`, `training.loss`). Sources are cut to the model's positions
and targets to what its positions hold, as `tfx evaluate`'s split loss cuts them
(`batching.eval_truncation`), so the scores of a split sum to that loss times its
tokens. Pairs go through the model in length-sorted batches; scores come back in input
order. `tfx score` and the scores of sampled n-best lists are these numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from transformer_cli.core.specials import PAD_ID
from transformer_cli.data import batching
from transformer_cli.data.store import EncodedSplit
from transformer_cli.decoding.limits import fit_sources
from transformer_cli.model.transformer import Transformer


@dataclass(frozen=True)
class PairScore:
    """One pair's score: its summed log-probability and the tokens it sums over."""

    log_prob: float  # natural log, summed over the target's pieces and its EOS
    tokens: int  # the target's pieces + 1 (EOS)

    @property
    def mean(self) -> float:
        """Log-probability per token: what `tfx score --filter` compares."""
        return self.log_prob / self.tokens


def cut_pairs(
    sources: list[list[int]], targets: list[list[int]], positions: int
) -> tuple[list[list[int]], list[list[int]]]:
    """Sources and targets cut to what a model of `positions` scores (the split loss's cut)."""
    keep = batching.eval_truncation(positions)
    return fit_sources(sources, positions)[0], [t[:keep] for t in targets]


@torch.no_grad()
def score_pairs(
    model: Transformer,
    sources: list[list[int]],
    targets: list[list[int]],
    batch_tokens: int,
    device: torch.device,
) -> list[PairScore]:
    """Each pair's `PairScore`, in input order; the caller sets eval mode and precision.

    Args:
        sources, targets: piece ids without BOS/EOS; a source must not be empty (there
            would be nothing to attend to), a target may be (it is scored on EOS alone).
        batch_tokens: the most (longer side + 1) pieces per batch.
    """
    if any(not s for s in sources):
        raise ValueError("every source must have at least one piece")
    sources, targets = cut_pairs(sources, targets, model.cfg.max_positions)
    split = EncodedSplit.from_lists(sources, targets)
    scores: list[PairScore | None] = [None] * len(sources)
    for batch in batching.eval_batches(split, batch_tokens):
        b = batch.to(device)
        logits = model(b.src, b.tgt_in)  # (B, T, V)
        gold = logits.float().log_softmax(-1).gather(-1, b.tgt_out[..., None])[..., 0]  # (B, T)
        real = b.tgt_out != PAD_ID  # (B, T)
        sums = gold.masked_fill(~real, 0.0).double().sum(-1).tolist()  # (B,)
        counts = real.sum(-1).tolist()
        for i, total, n in zip(batch.indices.tolist(), sums, counts, strict=True):
            scores[i] = PairScore(total, n)
    return [s for s in scores if s is not None]
