"""Dropout (Srivastava et al. 2014) with a cheaper random mask on the CPU.

Inverted dropout: in training, each element is kept with probability 1 - p and scaled
by 1 / (1 - p), so the expected activation is unchanged and evaluation needs no
rescaling. `torch.nn.Dropout` draws one Bernoulli sample per element, which is a large
part of a CPU training step (docs/performance.md, "Dropout mask"). Here each 64-bit
random integer is read as four 16-bit lanes, one per element, and an element is kept
when its lane is at or above a threshold: a quarter of the random draws, and the keep
probability is still exact to 1/65536. On other devices torch's fused dropout is used.
Its plain twin is `torch.nn.Dropout`: tests/fast/test_dropout.py checks the same distribution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LANES = 4  # 16-bit lanes in one 64-bit draw


def keep_mask(shape: torch.Size, p: float, generator: torch.Generator | None = None) -> Tensor:
    """A bool tensor of `shape`, each element True with probability 1 - p (to 1/65536)."""
    n = shape.numel()
    draws = torch.empty((n + _LANES - 1) // _LANES, dtype=torch.int64)
    draws.random_(-(2**63), 2**63 - 1, generator=generator)  # the full 64 bits
    lanes = draws.view(torch.int16)[:n]  # (n,) uniform over int16
    threshold = round(p * 65536) - 32768  # P(lane >= threshold) = 1 - p
    return (lanes >= threshold).view(shape)


class _MaskedScale(torch.autograd.Function):
    """y = x * keep / (1 - p); the gradient goes through the same mask and scale."""

    @staticmethod
    def forward(ctx, x: Tensor, keep: Tensor, scale: float) -> Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.mul(x, keep).mul_(scale)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (keep,) = ctx.saved_tensors
        return torch.mul(grad, keep).mul_(ctx.scale), None, None


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout; the identity when not training or when p is 0."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    return _MaskedScale.apply(x, keep_mask(x.shape, p), 1.0 / (1.0 - p))


class Dropout(nn.Module):
    """Drop-in for `torch.nn.Dropout` that uses `dropout` above."""

    def __init__(self, p: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
