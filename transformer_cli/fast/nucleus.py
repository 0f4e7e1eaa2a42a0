"""Top-p sampling's most probable pieces without sorting the whole vocabulary.

R rows, V vocabulary, k window

Nucleus sampling over the full distribution needs each row's pieces in order of
probability until they hold `topp`. Its plain twin, `decoding.sampling.Sampler.allowed`
with `ordered_by_sorting`, sorts every row of V pieces, which on a CPU costs more than the
decoder step (a sort of 64 x 8,000 scores takes tens of milliseconds on one core). A
trained model puts most of its mass on a few pieces: here the top k = 64 pieces are taken
(`topk`), and k grows 4x until every row's top k hold `topp`, so the nucleus lies inside
them. tests/decoding/test_sampling.py proves the two give the same pieces and
probabilities. On a GPU, sorting is fast and this loop's check would wait for the device
at every step: `decoding.sampling` uses it on the CPU only.
"""

from __future__ import annotations

from torch import Tensor

FIRST_WINDOW = 64


def nucleus_head(scores: Tensor, topp: float) -> tuple[Tensor, Tensor]:
    """Each row's most probable pieces, at least as many as hold `topp` of its softmax.

    Args:
        scores: (R, V) float logits (-inf for pieces never drawn).
        topp: the probability mass the pieces must hold, in (0, 1].
    Returns:
        ids (R, k) in order of probability, most probable first, and their probabilities
        under the softmax of the whole row, (R, k).
    """
    vocab = scores.size(-1)
    log_total = scores.logsumexp(-1, keepdim=True)  # (R, 1)
    k = min(FIRST_WINDOW, vocab)
    while True:
        top, ids = scores.topk(k, dim=-1)  # (R, k), sorted
        probs = (top - log_total).exp()
        if k == vocab or bool((probs.sum(-1) >= topp).all()):
            return ids, probs
        k = min(4 * k, vocab)
