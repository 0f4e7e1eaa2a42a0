"""Multi-head attention (Vaswani et al. 2017, section 3.2).

B batch, H heads, T query len, S key len, K head dim (D / H), D model dim

Eq. 1, softmax(Q K^T / sqrt(d_k)) V, is written out in `attend_math`, which can also
hand back the attention probabilities. The same weights can instead run through torch's
fused kernel (`fast/sdpa.py`, chosen by `ModelConfig.attention`); tests prove the two
paths equal. Eq. 1 is a module of its own, `ScaledDotProduct` (the left of the paper's
figure 2), inside each multi-head attention. Masks come from `masks.py` (True = may
attend).

The projections keep the weight layout of `torch.nn.MultiheadAttention`: the fused
`in_proj` of self-attention is its `in_proj_weight` (rows: Q, then K, then V), and
cross-attention's `q_proj` / `kv_proj` are that matrix's first third / last two thirds.

Incremental decoding hands each layer a cache (`LayerState`), which only stores tensors:
self-attention appends its new keys and values to it, cross-attention computes the
source's keys and values once and keeps them there. The caches themselves live in
`decoding/`.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_cli.fast import sdpa
from transformer_cli.model.positions import Positions, RelativePositions, RelativeTerms, Rotary

PATHS = ("auto", "sdpa", "math")


class LayerState(Protocol):
    """What a decoding cache stores for one decoder layer (see decoding/kv_cache.py).

    It may keep keys and values in a wider type than the queries come in; attention then
    runs in the keys' type (`Attention._attend`).
    """

    cross_k: Tensor | None  # (B, H, S, K): the source's keys, once computed
    cross_v: Tensor | None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add the new positions' keys and values (B, H, T, K); return all of them."""
        ...


def attend_math(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    dropout_p: float = 0.0,
    relative: RelativeTerms | None = None,
) -> tuple[Tensor, Tensor]:
    """Scaled dot-product attention, written out (Vaswani et al. 2017, eq. 1).

    Args:
        q: (B, H, T, K); k, v: (B, H, S, K).
        mask: bool, broadcastable to (B, H, T, S), True = may attend; or None.
        relative: Shaw et al.'s relative-position terms, added to the scores and to the
            output (`model.positional: relative`); None for the paper's eq. 1.
    Returns:
        the output (B, H, T, K) and the attention probabilities (B, H, T, S).
    """
    scores = q @ k.transpose(-2, -1)  # (B,H,T,K) @ (B,H,K,S) -> (B,H,T,S)
    if relative is not None:
        scores = scores + relative.key_scores(q)
    # dividing by sqrt(d_k) keeps the dot products' variance near 1, so the softmax
    # does not saturate into one-hot rows with vanishing gradients (section 3.2.1)
    scores = scores / math.sqrt(q.size(-1))
    if mask is None:
        probs = scores.softmax(dim=-1)
    else:
        blocked = ~mask
        probs = scores.masked_fill(blocked, float("-inf")).softmax(dim=-1)
        # a row whose keys are all masked is softmax(-inf, ..., -inf) = NaN; make it
        # all zeros, as scaled_dot_product_attention does, so NaN never reaches a sum
        probs = probs.masked_fill(blocked, 0.0)
    if dropout_p > 0.0:
        probs = F.dropout(probs, dropout_p)
    out = probs @ v  # (B,H,T,S) @ (B,H,S,K) -> (B,H,T,K)
    if relative is not None:
        out = out + relative.value_sums(probs)
    return out, probs


class ScaledDotProduct(nn.Module):
    """Eq. 1 for every head at once, by the configured path; no parameters of its own."""

    def __init__(self, dropout: float, path: str = "auto") -> None:
        super().__init__()
        if path not in PATHS:
            raise ValueError(f"attention path must be one of {', '.join(PATHS)}, got {path!r}")
        self.dropout = dropout
        self.path = path

    def uses_sdpa(self, device: torch.device) -> bool:
        """Whether attention on `device` goes through the fused kernel (`path` resolved)."""
        return sdpa.chosen(self.path, device)

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None,
        relative: RelativeTerms | None = None,
    ) -> Tensor:
        """softmax(Q K^T / sqrt(d_k)) V, dropout on the probabilities while training.

        Args:
            q: (B, H, T, K); k, v: (B, H, S, K).
            mask: bool, broadcastable to (B, H, T, S), True = may attend; or None.
            relative: Shaw et al.'s terms, or None; with them, attention is always the
                written-out path (the fused kernel has no place for the value term).
        Returns:
            (B, H, T, K).
        """
        dropout_p = self.dropout if self.training else 0.0
        # fast path: the fused kernel (fast/sdpa.py), equal to attend_math in tests
        if relative is None and self.uses_sdpa(q.device):
            return sdpa.attend(q, k, v, mask, dropout_p)
        return attend_math(q, k, v, mask, dropout_p, relative)[0]


class Attention(nn.Module):
    """What self- and cross-attention share: heads, eq. 1, the output projection (eq. 4)."""

    def __init__(self, d_model: int, heads: int, dropout: float, path: str = "auto") -> None:
        super().__init__()
        if d_model % heads != 0:
            raise ValueError(f"heads ({heads}) must divide d_model ({d_model})")
        self.heads = heads
        self.head_dim = d_model // heads
        self.scaled_dot_product = ScaledDotProduct(dropout, path)
        self.out_proj = nn.Linear(d_model, d_model)

    def _heads(self, x: Tensor) -> tuple[Tensor, ...]:
        """Split a fused projection into tensors of heads.

        Args:
            x: (B, L, p * D), p projections side by side.
        Returns:
            p tensors of shape (B, H, L, K): views, no copy.
        """
        B, L, _ = x.shape
        d = self.heads * self.head_dim
        # split (not unbind): backward then concatenates the parts' gradients straight
        # into the (B, L, p*D) layout in one pass, instead of stacking and re-laying out
        return tuple(
            t.view(B, L, self.heads, self.head_dim).transpose(1, 2)  # (B,L,D) -> (B,H,L,K)
            for t in x.split(d, dim=-1)  # (B,L,p*D) -> p x (B,L,D)
        )

    def _attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None,
        relative: RelativeTerms | None = None,
    ) -> Tensor:
        """Attention over heads, heads concatenated, output projection: (B, T, D)."""
        if q.dtype == k.dtype:
            out = self.scaled_dot_product(q, k, v, mask, relative)
        else:
            # fast path (decoding/slots.py: SlotCache.dtype keeps keys and values in fp32
            # under bf16 on the CPU): attend in the keys' type, with autocast off, which
            # would otherwise cast every kept key again at every call
            with torch.autocast(q.device.type, enabled=False):
                out = self.scaled_dot_product(q.to(k.dtype), k, v, mask, relative)
        B, H, T, K = out.shape
        # Concat(head_1, ..., head_h) of eq. 4; a view when the kernel already wrote
        # its output as (B, T, H, K), which the fused CPU kernel does
        out = out.transpose(1, 2).reshape(B, T, H * K)  # (B,H,T,K) -> (B,T,H,K) -> (B,T,D)
        return self.out_proj(out)


class SelfAttention(Attention):
    """Queries, keys and values from the same sequence, by one fused projection.

    `position` is where self-attention learns position under `model.positional: rope`
    (a `Rotary`) or `relative` (this layer's `RelativePositions`); None when positions
    were added to the input instead (model/positions.py).
    """

    def __init__(
        self,
        d_model: int,
        heads: int,
        dropout: float,
        path: str = "auto",
        position: Rotary | RelativePositions | None = None,
    ) -> None:
        super().__init__(d_model, heads, dropout, path)
        self.in_proj = nn.Linear(d_model, 3 * d_model)  # = MultiheadAttention.in_proj_weight
        self.rotary = position if isinstance(position, Rotary) else None
        self.relative = position if isinstance(position, RelativePositions) else None

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None,
        cache: LayerState | None = None,
        positions: Positions | None = None,
    ) -> Tensor:
        """Attend from every new position to the cached and new positions.

        Args:
            x: (B, T, D).
            mask: bool, broadcastable to (B, H, T, S), S = T plus any cached length.
            cache: this layer's cache; the new keys and values are appended to it.
            positions: where the new queries and all keys are (read by `rope` and
                `relative` only); None means 0 .. T-1, which needs an empty cache.
        Returns:
            (B, T, D).
        """
        q, k, v = self._heads(self.in_proj(x))  # (B,T,3D) -> 3 x (B,H,T,K)
        relative = None
        if self.rotary is not None or self.relative is not None:
            if positions is None:
                if cache is not None:
                    raise ValueError("a cached self-attention needs its queries' positions")
                positions = Positions.span(0, x.size(1), x.device)
            if self.rotary is not None:
                # keys are rotated before they are cached: a key's position never changes
                q, k = self.rotary(q, positions.query), self.rotary(k, positions.query)
            if self.relative is not None:
                relative = self.relative(positions)
        if cache is not None:
            k, v = cache.append(k, v)
        return self._attend(q, k, v, mask, relative)


class CrossAttention(Attention):
    """Queries from the decoder; keys and values from the encoder output (section 3.2.3)."""

    def __init__(self, d_model: int, heads: int, dropout: float, path: str = "auto") -> None:
        super().__init__(d_model, heads, dropout, path)
        self.q_proj = nn.Linear(d_model, d_model)  # = in_proj_weight[:D]
        self.kv_proj = nn.Linear(d_model, 2 * d_model)  # = in_proj_weight[D:]

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None,
        mask: Tensor | None,
        cache: LayerState | None = None,
    ) -> Tensor:
        """Attend from the decoder states to the encoder output.

        Args:
            x: (B, T, D) decoder states.
            memory: (B, S, D) encoder output; not read when the cache already holds
                this layer's keys and values.
            mask: bool, broadcastable to (B, H, T, S): the source padding mask.
            cache: this layer's cache; keys and values are computed once per sentence.
        Returns:
            (B, T, D).
        """
        (q,) = self._heads(self.q_proj(x))  # (B,T,D) -> (B,H,T,K)
        if cache is None:
            k, v = self._heads(self.kv_proj(memory))  # (B,S,2D) -> 2 x (B,H,S,K)
        else:
            if cache.cross_k is None or cache.cross_v is None:
                assert memory is not None, "the first decoding step needs the memory"
                cache.cross_k, cache.cross_v = self.keys_values(memory)
            k, v = cache.cross_k, cache.cross_v
        return self._attend(q, k, v, mask)

    def keys_values(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """The keys and values of `memory` (B, S, D), to cache: 2 x (B, H, S, K), contiguous.

        Views into the fused projection cannot fold (B, H) into one batch dimension, so
        every decoding step's matmul would copy them: they are copied once, here.
        """
        k, v = self._heads(self.kv_proj(memory))  # (B,S,2D) -> 2 x (B,H,S,K)
        return k.contiguous(), v.contiguous()
