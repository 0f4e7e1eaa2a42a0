"""Attention masks, built here and nowhere else. One convention: True = may attend.

That is the convention of `torch.nn.functional.scaled_dot_product_attention`, so the
masks go to the fast path unchanged; the readable path fills the False entries with
-inf before its softmax. Every mask broadcasts against attention scores of shape
(B, H, T_query, T_key), with H, and T_query where it does not matter, left as 1.

Padding is always on the right (batch-max padding), which is what makes the cached
decoder below exact: causality alone already hides right-padding from every real
target position.
"""

from __future__ import annotations

import torch
from torch import Tensor

from transformer_cli.core.specials import PAD_ID


def padding_mask(ids: Tensor) -> Tensor:
    """Which keys are real tokens (not padding).

    A sentence with no real token at all (all padding) would leave its queries
    nothing to attend to, and a softmax over nothing is 0/0 = NaN, which then leaks
    into gradients and into every layer that reads those positions. Such a sentence
    may attend to all of its (pad) positions instead: its outputs are meaningless but
    finite, and no other sentence ever sees them.

    Args:
        ids: (B, L) token ids.
    Returns:
        (B, 1, 1, L) bool.
    """
    real = ids != PAD_ID  # (B, L)
    real = real | ~real.any(dim=-1, keepdim=True)
    return real[:, None, None, :]  # (B, L) -> (B, 1, 1, L)


def causal_mask(length: int, offset: int = 0, device: torch.device | None = None) -> Tensor:
    """The look-ahead mask: query i may attend to key j only if j <= i.

    Vaswani et al. 2017, section 3.2.3: the decoder must not see the words it is
    about to predict. `offset` is the number of earlier positions already seen
    (in a KV cache): queries are then positions offset .. offset+length-1 and keys
    0 .. offset+length-1.

    Returns:
        (length, offset + length) bool.
    """
    ones = torch.ones(length, offset + length, dtype=torch.bool, device=device)
    return ones.tril(diagonal=offset)


def decoder_mask(tgt_ids: Tensor) -> Tensor:
    """The decoder self-attention mask: look-ahead combined with target padding.

    With right padding, the padding part only ever removes keys that causality
    already hides from real positions; it is kept so that padded query rows also
    attend to real tokens only, as in the paper's reference recipe.

    Args:
        tgt_ids: (B, T) decoder input ids.
    Returns:
        (B, 1, T, T) bool.
    """
    look_ahead = causal_mask(tgt_ids.size(1), device=tgt_ids.device)  # (T, T)
    return look_ahead & padding_mask(tgt_ids)  # (T, T) & (B, 1, 1, T) -> (B, 1, T, T)


def prefix_mask(lengths: Tensor, width: int) -> Tensor:
    """Key j is real for row b if j < lengths[b]: rows of a cache filled to different depths.

    Args:
        lengths: (B,) int, each row's number of real keys, at most `width`.
    Returns:
        (B, 1, 1, width) bool.
    """
    keys = torch.arange(width, device=lengths.device)  # (width,)
    return (keys < lengths[:, None])[:, None, None, :]  # (B, width) -> (B, 1, 1, width)
