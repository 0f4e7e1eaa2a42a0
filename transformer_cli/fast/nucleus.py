"""Top-p sampling's most probable pieces without sorting the whole vocabulary.

R rows, V vocabulary, k window

Nucleus sampling over the full distribution needs each row's pieces in order of
probability until they hold `topp`. Its plain twin, `decoding.sampling.Sampler.allowed`
with `ordered_by_sorting`, sorts every row of V pieces, which on a CPU costs more than the
decoder step (a sort of 64 x 8,000 scores takes tens of milliseconds on one core). A
trained model puts most of its mass on a few pieces: here the top k = 64 pieces are taken
(`topk`), and k grows 4x, for the rows that need it, until each row's top k hold `topp`,
so the nucleus lies inside them. tests/decoding/test_sampling.py proves the two give the
same top-p sets. On a GPU, sorting is fast and this loop's check would wait for the device
at every step: `decoding.sampling` uses it on the CPU only.
"""

from __future__ import annotations

import torch
from torch import Tensor

FIRST_WINDOW = 64


def nucleus_head(scores: Tensor, topp: float) -> tuple[Tensor, Tensor]:
    """Each row's most probable pieces, at least as many as hold `topp` of its softmax.

    Every row starts with the top `FIRST_WINDOW`; only the rows whose window falls short
    of `topp` take a window 4x as wide, again and again (a flat row does not make every
    row of the batch sort its whole vocabulary).

    Args:
        scores: (R, V) float logits (-inf for pieces never drawn).
        topp: the probability mass the pieces must hold, in (0, 1].
    Returns:
        ids (R, k) in order of probability, most probable first, and their probabilities
        under the softmax of the whole row, (R, k), k the widest window; a row's columns
        beyond its own window have probability 0.
    """
    vocab = scores.size(-1)
    log_total = scores.logsumexp(-1, keepdim=True)  # (R, 1)
    k = min(FIRST_WINDOW, vocab)
    top, ids = scores.topk(k, dim=-1)  # (R, k), sorted
    probs = (top - log_total).exp()
    # the rows their window leaves short, by the cumulative sum the top-p cut reads
    rows = (probs.cumsum(-1)[:, -1] < topp).nonzero().squeeze(1)
    while len(rows) and k < vocab:
        k = min(4 * k, vocab)
        top, wider = scores[rows].topk(k, dim=-1)
        wider_probs = (top - log_total[rows]).exp()
        ids, probs = pad_columns(ids, k), pad_columns(probs, k)
        ids[rows], probs[rows] = wider, wider_probs
        rows = rows[wider_probs.cumsum(-1)[:, -1] < topp]
    return ids, probs


def pad_columns(t: Tensor, width: int) -> Tensor:
    """`t` (R, k) with zeros appended up to (R, width): probability 0 draws nothing."""
    return torch.cat([t, t.new_zeros(t.size(0), width - t.size(1))], dim=1)
