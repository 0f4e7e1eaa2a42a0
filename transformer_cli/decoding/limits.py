"""The limits of decoding, in one place: how long a source may be, how long an output may grow.

Every backend (tfx's searches and the CTranslate2 backend) and every caller (translate,
evaluate, validation, inspect) takes them from here:

- a source is cut to the model's positions: the encoder holds one position per piece,
  and sources carry no BOS or EOS;
- a sentence of n source pieces may emit int(a * n + b) pieces (`decode.max_len_a`,
  `decode.max_len_b`), at least 1 and at most the model's positions: the decoder input
  of the step that emits piece m is BOS y_1 .. y_{m-1}, m positions;
- PAD and BOS are never emitted: they are inputs, never predictions (`never_emitted`;
  CTranslate2 is given them as `suppress_sequences`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from transformer_cli.core.config import DecodeConfig
from transformer_cli.core.specials import BOS, BOS_ID, PAD, PAD_ID

NEVER_EMITTED = (PAD_ID, BOS_ID)
NEVER_EMITTED_PIECES = [[PAD], [BOS]]  # the same, as CTranslate2's suppress_sequences


def fit_sources(
    sources: Sequence[Sequence[int]], positions: int
) -> tuple[list[list[int]], list[int]]:
    """The sources cut to what an encoder of `positions` holds, and the numbers of those cut."""
    cut = [i for i, s in enumerate(sources) if len(s) > positions]
    return [list(s[:positions]) for s in sources], cut


def output_cap(n_source: int, decode: DecodeConfig, positions: int) -> int:
    """The most pieces a source of `n_source` pieces may emit: int(a * n + b) in [1, positions]."""
    return max(1, min(positions, int(decode.max_len_a * n_source + decode.max_len_b)))


def clamp_caps(caps: int | Sequence[int] | Tensor, batch: int, positions: int) -> Tensor:
    """Output caps for `batch` sentences as a (batch,) CPU int64 tensor in [1, positions].

    `caps` is one cap for all or one per sentence, as a search is given them.
    """
    limits = torch.as_tensor(caps, dtype=torch.int64).cpu()
    if limits.dim() == 0:
        limits = limits.expand(batch)
    if limits.shape != (batch,):
        raise ValueError(f"max_len must be an int or have shape ({batch},), got {limits.shape}")
    return limits.clamp(1, positions).clone()


def never_emitted(scores: Tensor) -> Tensor:
    """`scores` (R, V) with the pieces no output may hold set to -inf, in place.

    Beam search applies it after the log-softmax, so that its scores stay the model's own
    log-probabilities; sampling before its softmax, so that they are never drawn.
    """
    for piece in NEVER_EMITTED:
        scores[:, piece] = -math.inf
    return scores
