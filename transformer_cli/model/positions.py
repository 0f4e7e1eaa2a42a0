"""Where each token is: the four ways of `model.positional`.

B batch, H heads, T query len, S key len, K head dim, D model dim, R = 2k + 1 offsets

- `sinusoidal` (Vaswani et al. 2017, section 3.5) and `learned`: a table of position
  vectors, added to the scaled token embeddings once, at the input. Relative position is
  there in the raw table, but every self-attention then compares the vectors through
  W_q and W_k, which need not keep it (`tfx inspect positions`).
- `rope` (Su et al. 2021, RoFormer): every self-attention rotates each pair of dimensions
  of its queries and keys by an angle proportional to their position. A rotation by m
  then one by n meet in the dot product as one rotation by n - m, so a score depends on
  the contents and the offset only, by construction, after the linear maps.
- `relative` (Shaw et al. 2018): every self-attention adds a learned vector of the
  clipped offset clip(j - i, -k, k) to each key (in the scores) and to each value (in
  the output). Offsets beyond k share one vector.

The last two add nothing to the input; attention needs each query's and key's position
instead, which `Positions` carries. Cross-attention gets neither: a source word and a
target word have no meaningful offset between them (their positions count in different
sentences), so it compares contents only, as in both papers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


def angles(positions: int, width: int) -> Tensor:
    """pos / 10000^(2i / width) for i < width / 2: the sinusoid's angles (section 3.5).

    Returns:
        (positions, ceil(width / 2)) float64.
    """
    pos = torch.arange(positions, dtype=torch.float64)[:, None]  # (P, 1)
    two_i = torch.arange(0, width, 2, dtype=torch.float64)  # (ceil(W/2),)
    return pos / 10000.0 ** (two_i / width)  # (P, 1) / (ceil(W/2),) -> (P, ceil(W/2))


def sinusoidal_table(positions: int, d_model: int) -> Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...) (section 3.5).

    Each pair of dimensions is a rotation at its own frequency, so PE(pos + k) is a
    fixed linear function of PE(pos): the model can attend by relative position.

    Returns:
        (positions, d_model) float32, computed in float64.
    """
    angle = angles(positions, d_model)  # (P, ceil(D/2))
    table = torch.empty(positions, d_model, dtype=torch.float64)
    table[:, 0::2] = angle.sin()
    table[:, 1::2] = angle[:, : d_model // 2].cos()
    return table.float()


class SinusoidalPositions(nn.Module):
    """The fixed positional encoding, precomputed once for `max_positions` positions."""

    table: Tensor  # (max_positions, D), a buffer

    def __init__(self, d_model: int, max_positions: int) -> None:
        super().__init__()
        # not persistent: it is a function of the config, so checkpoints need not carry it
        self.register_buffer("table", sinusoidal_table(max_positions, d_model), persistent=False)

    def forward(self, length: int, offset: int = 0) -> Tensor:
        """Encodings of positions offset .. offset+length-1: (length, D)."""
        return self.table[offset : offset + length]


class LearnedPositions(nn.Module):
    """A learned embedding per position (the paper's alternative, section 3.5)."""

    def __init__(self, d_model: int, max_positions: int) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.empty(max_positions, d_model))

    def forward(self, length: int, offset: int = 0) -> Tensor:
        """Embeddings of positions offset .. offset+length-1: (length, D)."""
        return self.table[offset : offset + length]


@dataclass(frozen=True)
class Positions:
    """The positions of one self-attention call's queries and keys (`rope`, `relative`).

    query: (B or 1, T) int64, the new tokens' positions; key: (B or 1, S) int64, the
    positions of every key attended over (cached ones included). A first dimension of 1
    is shared by the whole batch.
    """

    query: Tensor
    key: Tensor

    @classmethod
    def span(cls, start: int, length: int, device: torch.device | None = None) -> Positions:
        """Queries at start .. start+length-1 after a prefix of `start` cached keys."""
        key = torch.arange(start + length, device=device)[None]  # (1, start + T)
        return cls(key[:, start:], key)

    @classmethod
    def per_row(cls, query: Tensor, width: int) -> Positions:
        """One query per row, each at its own position `query` (N,); keys 0 .. width-1."""
        return cls(query[:, None], torch.arange(width, device=query.device)[None])


class Rotary(nn.Module):
    """RoPE (Su et al. 2021, eq. 34): rotate pair (2i, 2i+1) of a head by pos * theta_i.

    theta_i = 10000^(-2i / K), the sinusoid's frequencies at the head's width. Rotations
    keep norms, and R(m)^T R(n) = R(n - m), so (R(m) q) . (R(n) k) = q . R(n - m) k.
    """

    cos: Tensor  # (max_positions, K / 2), float64 buffers
    sin: Tensor

    def __init__(self, head_dim: int, max_positions: int) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rope rotates pairs of dimensions: the head size is odd ({head_dim})")
        angle = angles(max_positions, head_dim)  # (P, K/2)
        # not persistent: a function of the config, as the sinusoidal table; float64, so
        # that a float64 model rotates exactly (each call reads its rows in its own type)
        self.register_buffer("cos", angle.cos(), persistent=False)
        self.register_buffer("sin", angle.sin(), persistent=False)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """Rotate queries or keys.

        Args:
            x: (B, H, T, K).
            positions: (B or 1, T) int64, each row's position.
        Returns:
            (B, H, T, K) in x's type; the rotation runs in float32 at least.
        """
        dtype = torch.promote_types(x.dtype, torch.float32)
        cos = self.cos[positions][:, None].to(dtype)  # (B|1, T, K/2) -> (B|1, 1, T, K/2)
        sin = self.sin[positions][:, None].to(dtype)
        even, odd = x[..., 0::2].to(dtype), x[..., 1::2].to(dtype)  # (B, H, T, K/2) each
        rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
        return rotated.flatten(-2).to(x.dtype)  # (B, H, T, K/2, 2) -> (B, H, T, K)


@dataclass(frozen=True)
class RelativeTerms:
    """Shaw et al.'s terms for one attention call: each pair's offset bucket and vectors.

    buckets: (B or 1, T, S) int64, clip(key - query, -k, k) + k; keys, values: (R, K).
    """

    buckets: Tensor
    keys: Tensor
    values: Tensor

    def _index(self, batch: int, heads: int) -> Tensor:
        t, s = self.buckets.shape[1:]
        return self.buckets[:, None].expand(batch, heads, t, s)  # (B|1,T,S) -> (B,H,T,S)

    def key_scores(self, q: Tensor) -> Tensor:
        """q_i . a^K_ij for every pair (the term eq. 5 adds): (B, H, T, K) -> (B, H, T, S)."""
        per_offset = q @ self.keys.T.to(q.dtype)  # (B,H,T,K) @ (K,R) -> (B,H,T,R)
        return per_offset.gather(-1, self._index(q.size(0), q.size(1)))  # -> (B,H,T,S)

    def value_sums(self, probs: Tensor) -> Tensor:
        """sum_j p_ij a^V_ij (the term eq. 3 adds): (B, H, T, S) -> (B, H, T, K).

        The probabilities of keys in the same offset bucket are summed first, so the
        vectors are read once per bucket, not once per key. The sums run in float32 at
        least: beyond +-k a bucket collects many keys, which bf16 would round.
        """
        dtype = torch.promote_types(probs.dtype, torch.float32)
        b, h, t, _ = probs.shape
        per_offset = probs.new_zeros(b, h, t, self.values.size(0), dtype=dtype)  # (B,H,T,R)
        per_offset.scatter_add_(-1, self._index(b, h), probs.to(dtype))
        out = per_offset @ self.values.to(dtype)  # (B,H,T,R) @ (R,K) -> (B,H,T,K)
        return out.to(probs.dtype)


def in_attention(positional: str) -> bool:
    """Whether `model.positional` works inside self-attention (rope, relative) rather
    than as a table added to the input (sinusoidal, learned)."""
    return positional in ("rope", "relative")


class RelativePositions(nn.Module):
    """Shaw et al. 2018: learned key and value vectors per clipped offset, for one layer.

    a^K_ij = keys[clip(j - i, -k, k) + k], a^V_ij = values[...]; the heads share them, as
    in the paper. Offset j - i > 0 is a key to the right of (after) its query.
    """

    def __init__(self, head_dim: int, max_distance: int) -> None:
        super().__init__()
        self.max_distance = max_distance
        self.keys = nn.Parameter(torch.empty(2 * max_distance + 1, head_dim))  # (R, K)
        self.values = nn.Parameter(torch.empty(2 * max_distance + 1, head_dim))

    def forward(self, positions: Positions) -> RelativeTerms:
        """The terms of one attention call between `positions.query` and `positions.key`."""
        k = self.max_distance
        offset = positions.key[:, None, :] - positions.query[:, :, None]  # (B|1, T, S)
        return RelativeTerms(offset.clamp(-k, k) + k, self.keys, self.values)
