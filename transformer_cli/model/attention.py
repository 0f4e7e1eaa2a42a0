"""Multi-head attention (Vaswani et al. 2017, section 3.2) and the decoder's KV cache.

B batch, H heads, T query len, S key len, K head dim (D / H), D model dim

Two paths share one set of weights: the "math" path spells out eq. 1,
softmax(Q K^T / sqrt(d_k)) V, and can hand back the attention probabilities; the
"sdpa" path calls `torch.nn.functional.scaled_dot_product_attention`, which computes
the same thing with fused kernels. "auto" takes sdpa on CUDA and math elsewhere: on
the CPU, at sentence lengths (up to ~60 pieces), torch's fused kernel is the slower
of the two, forward plus backward, in fp32 and more so under bf16 autocast
(`bench/model_step.py`); and with attention dropout above 0 (`attention_dropout`, 0 by
default) the CPU has no fused kernel at all: SDPA falls back to an unfused eq. 1 of its
own. On an H100 the fused kernels make the whole training step 1.2-1.3x faster
(`bench/model_step.py --device cuda`). Masks come from `masks.py` (True = may attend).

The projections keep the weight layout of `torch.nn.MultiheadAttention`: the fused
`in_proj` of self-attention is its `in_proj_weight` (rows: Q, then K, then V), and
cross-attention's `q_proj` / `kv_proj` are that matrix's first third / last two thirds.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

if TYPE_CHECKING:
    from transformer_cli.decoding.slots import SlotLayerCache

PATHS = ("auto", "sdpa", "math")
# The fused kernels SDPA may pick on CUDA: all but cuDNN's. cuDNN builds an execution
# plan for every new shape, and with batch-max padding nearly every training batch (and
# every decoding step) is a new shape: bf16 training on an H100 ran ~10x slower with it
# (`bench/train_speed.py`, variant +cudnn). None = torch's own choice.
CUDA_BACKENDS: list[SDPBackend] | None = [
    SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH
]  # fmt: skip


def attend_math(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Scaled dot-product attention, written out (Vaswani et al. 2017, eq. 1).

    Args:
        q: (B, H, T, K); k, v: (B, H, S, K).
        mask: bool, broadcastable to (B, H, T, S), True = may attend; or None.
    Returns:
        the output (B, H, T, K) and the attention probabilities (B, H, T, S).
    """
    # dividing by sqrt(d_k) keeps the dot products' variance near 1, so the softmax
    # does not saturate into one-hot rows with vanishing gradients (section 3.2.1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B,H,T,K)@(B,H,K,S) -> (B,H,T,S)
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
    return probs @ v, probs  # (B,H,T,S) @ (B,H,S,K) -> (B,H,T,K)


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float) -> Tensor:
    """`F.scaled_dot_product_attention`, in fp32 on the CPU even under bf16 autocast, and
    on CUDA through `CUDA_BACKENDS`.

    The CPU kernel runs fwd+bwd ~2.7x slower in bf16 than in fp32, more than the casts
    cost, and autocast would cast fp32 inputs back down: so it is switched off here.
    """
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            q, k, v = q.float(), k.float(), v.float()
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    if q.device.type == "cuda" and CUDA_BACKENDS is not None:
        with sdpa_kernel(CUDA_BACKENDS):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


class Attention(nn.Module):
    """What self- and cross-attention share: heads, the two paths, the output projection.

    To read the attention probabilities, set `need_weights = True` (or call
    `Transformer.record_attention()`): every forward then takes the math path,
    whatever the configured one (the fused kernel never forms the probabilities),
    and stores them, detached, in `last_weights` with shape (B, H, T, S).
    """

    def __init__(self, d_model: int, heads: int, dropout: float, path: str = "auto") -> None:
        super().__init__()
        if d_model % heads != 0:
            raise ValueError(f"heads ({heads}) must divide d_model ({d_model})")
        if path not in PATHS:
            raise ValueError(f"attention path must be one of {', '.join(PATHS)}, got {path!r}")
        self.heads = heads
        self.head_dim = d_model // heads
        self.dropout = dropout
        self.path = path
        self.out_proj = nn.Linear(d_model, d_model)
        self.need_weights = False
        self.last_weights: Tensor | None = None

    def uses_sdpa(self, device: torch.device) -> bool:
        """Whether attention on `device` goes through the fused kernel (`path` resolved)."""
        return self.path == "sdpa" or (self.path == "auto" and device.type == "cuda")

    def _heads(self, x: Tensor, parts: int) -> tuple[Tensor, ...]:
        """Split a fused projection into `parts` tensors of heads.

        Args:
            x: (B, L, parts * D).
        Returns:
            `parts` tensors of shape (B, H, L, K): views, no copy.
        """
        B, L, _ = x.shape
        d = self.heads * self.head_dim
        # split (not unbind): backward then concatenates the parts' gradients straight
        # into the (B, L, p*D) layout in one pass, instead of stacking and re-laying out
        return tuple(
            t.view(B, L, self.heads, self.head_dim).transpose(1, 2)  # (B,L,D) -> (B,H,L,K)
            for t in x.split(d, dim=-1)  # (B,L,p*D) -> p x (B,L,D)
        )

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """Attention over heads, heads concatenated, output projection: (B, T, D)."""
        if q.dtype == k.dtype:
            out = self._heads_attend(q, k, v, mask)
        else:
            # a cache that holds keys and values in a wider type than autocast's (see
            # `slots.SlotLayerCache`): attend in theirs, so they are not cast back down
            with torch.autocast(q.device.type, enabled=False):
                out = self._heads_attend(q.to(k.dtype), k, v, mask)
        B, H, T, K = out.shape
        # Concat(head_1, ..., head_h) of eq. 4; a view when the kernel already wrote
        # its output as (B, T, H, K), which the fused CPU kernel does
        out = out.transpose(1, 2).reshape(B, T, H * K)  # (B,H,T,K) -> (B,T,H,K) -> (B,T,D)
        return self.out_proj(out)

    def _heads_attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """Every head's attention output, by the configured path: (B, H, T, K)."""
        dropout_p = self.dropout if self.training else 0.0
        if self.uses_sdpa(q.device) and not self.need_weights:
            return _sdpa(q, k, v, mask, dropout_p)
        out, probs = attend_math(q, k, v, mask, dropout_p)
        if self.need_weights:
            self.last_weights = probs.detach()
        return out


class SelfAttention(Attention):
    """Queries, keys and values from the same sequence, by one fused projection."""

    def __init__(self, d_model: int, heads: int, dropout: float, path: str = "auto") -> None:
        super().__init__(d_model, heads, dropout, path)
        self.in_proj = nn.Linear(d_model, 3 * d_model)  # = MultiheadAttention.in_proj_weight

    def forward(
        self, x: Tensor, mask: Tensor | None, cache: LayerCache | SlotLayerCache | None = None
    ) -> Tensor:
        """Attend from every new position to the cached and new positions.

        Args:
            x: (B, T, D).
            mask: bool, broadcastable to (B, H, T, S), S = T plus any cached length.
            cache: this layer's cache; the new keys and values are appended to it.
        Returns:
            (B, T, D).
        """
        q, k, v = self._heads(self.in_proj(x), 3)  # (B,T,3D) -> 3 x (B,H,T,K)
        if cache is not None:
            k, v = cache.append(k, v)
        return self._attend(q, k, v, mask)


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
        cache: LayerCache | SlotLayerCache | None = None,
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
        (q,) = self._heads(self.q_proj(x), 1)  # (B,T,D) -> (B,H,T,K)
        if cache is None:
            k, v = self._heads(self.kv_proj(memory), 2)  # (B,S,2D) -> 2 x (B,H,S,K)
        else:
            if cache.cross_k is None:
                cache.cross_k, cache.cross_v = self.keys_values(memory)
            k, v = cache.cross_k, cache.cross_v
        return self._attend(q, k, v, mask)

    def keys_values(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """The keys and values of `memory` (B, S, D), to cache: 2 x (B, H, S, K), contiguous.

        Views into the fused projection cannot fold (B, H) into one batch dimension, so
        every decoding step's matmul would copy them: they are copied once, here.
        """
        k, v = self._heads(self.kv_proj(memory), 2)  # (B,S,2D) -> 2 x (B,H,S,K)
        return k.contiguous(), v.contiguous()


class LayerCache:
    """One decoder layer's cached keys and values, each (B, H, L, K) or None."""

    __slots__ = ("self_k", "self_v", "cross_k", "cross_v")

    def __init__(self) -> None:
        self.self_k: Tensor | None = None
        self.self_v: Tensor | None = None
        self.cross_k: Tensor | None = None
        self.cross_v: Tensor | None = None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add the new positions' keys and values (B, H, T, K); return all (B, H, L+T, K)."""
        if self.self_k is not None:
            k = torch.cat([self.self_k, k], dim=2)  # (B,H,L,K) + (B,H,T,K) -> (B,H,L+T,K)
            v = torch.cat([self.self_v, v], dim=2)
        self.self_k, self.self_v = k, v
        return k, v

    def select(self, index: Tensor, sources_too: bool = True) -> None:
        names = self.__slots__ if sources_too else ("self_k", "self_v")
        for name in names:
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.index_select(0, index))


class KVCache:
    """State for incremental decoding: feed one new target token per sentence per step.

    Make one per batch of sentences with `Transformer.new_cache()` and pass it to
    every `Transformer.decode(tgt_in, memory, src, cache)` call of that batch:

    - `tgt_in` is (B, 1), the newest token of each sentence (BOS first); the call
      returns (B, 1, V) logits for the token after it, equal to the last position of
      a full `decode` over the whole prefix. Several tokens at once, (B, n), work too.
    - `length` is the number of target positions already fed; the positional
      encoding of the new tokens starts there.
    - Everything derived from the source is computed at the first call and then
      owned by the cache: the source padding mask (`src_mask`) and every layer's
      cross-attention keys and values. Later calls do not read `memory` or `src`
      (passing the same tensors again, or their selected rows, is fine).
    - `select(index)` keeps, in the given order, the batch rows `index` (a
      LongTensor on the model's device) of everything above, so beam search can
      reorder hypotheses and greedy search can drop finished sentences. The caller
      does not need to select `memory` or `src`; it does select its own `tgt_in`.
    - `select(index, sources_too=False)` reorders only the self-attention keys and
      values. It is for an `index` that maps every row to a row of the same source
      sentence (beam search reordering beams within sentences): the rows of the
      source-derived state are then equal to the ones they replace, and copying them
      (the largest part of the cache) would change nothing.
    - Target padding is not masked in the cache: with right padding, causality
      alone hides pad tokens from every real position, so a sentence that has
      finished may keep being fed PAD and its real logits do not change.
    """

    def __init__(self, num_layers: int) -> None:
        self.layers = [LayerCache() for _ in range(num_layers)]
        self.src_mask: Tensor | None = None  # (B, 1, 1, S) bool
        self.length = 0

    @property
    def batch_size(self) -> int | None:
        """Rows in the cache, or None before the first decode call."""
        return None if self.src_mask is None else self.src_mask.size(0)

    def select(self, index: Tensor, sources_too: bool = True) -> KVCache:
        """Keep (and reorder to) the batch rows `index`, in place; returns self.

        `sources_too=False` leaves the source padding mask and the cross-attention keys
        and values as they are: only for an `index` within sentences (see above).
        """
        if sources_too and self.src_mask is not None:
            self.src_mask = self.src_mask.index_select(0, index)
        for layer in self.layers:
            layer.select(index, sources_too)
        return self
