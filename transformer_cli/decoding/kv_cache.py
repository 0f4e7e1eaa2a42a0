"""The decoder's KV cache: incremental decoding, one new token per sentence per step.

B batch, H heads, L cached length, T new positions, K head dim, S source len, D model dim

At step t the decoder needs the keys and values of positions 0 .. t of every layer's
self-attention, and the source's keys and values in every cross-attention. Without a
cache each step recomputes them all from the whole prefix; with one, a step computes
only the new position's, and its outputs equal the last position of a full decode.
"""

from __future__ import annotations

import torch
from torch import Tensor

from transformer_cli.decoding.protocol import SearchModel
from transformer_cli.model.masks import causal_mask, padding_mask
from transformer_cli.model.positions import Positions, in_attention


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
        if self.self_k is not None and self.self_v is not None:
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

    Make one per batch of sentences with `KVCache.for_model(model)` and pass it to every
    `cached_hidden(model, tgt_in, memory, src, cache)` call of that batch:

    - `tgt_in` is (B, 1), the newest token of each sentence (BOS first); the call
      returns (B, 1, D) hidden states, whose logits score the token after it, equal to
      the last position of a full `model.decode_hidden` over the whole prefix. Several
      tokens at once, (B, n), work too.
    - `length` is the number of target positions already fed; the new tokens'
      positions start there.
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

    @classmethod
    def for_model(cls, model: SearchModel) -> KVCache:
        """An empty cache with one layer cache per decoder layer of `model`."""
        return cls(len(model.decoder.layers))

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


def cached_hidden(
    model: SearchModel, tgt_in: Tensor, memory: Tensor, src: Tensor, cache: KVCache
) -> Tensor:
    """The decoder's hidden states of the new tokens `tgt_in`, after those in `cache`.

    Args:
        tgt_in: (B, T) the newest decoder input ids, usually (B, 1) (BOS first).
        memory: (B, S, D), the output of `model.encode(src)`; read at the first call only.
        src: (B, S) source ids, for the source padding mask; read at the first call only.
    Returns:
        (B, T, D), equal to the last T positions of `model.decode_hidden` over the prefix.
    """
    if cache.src_mask is None:
        cache.src_mask = padding_mask(src)
    elif cache.src_mask.size(0) != tgt_in.size(0):
        raise ValueError(
            f"tgt_in has {tgt_in.size(0)} rows but the cache holds "
            f"{cache.src_mask.size(0)}; select() the cache when the batch changes"
        )
    new = tgt_in.size(1)
    # one new token may attend to everything cached; a chunk needs look-ahead
    self_mask = None if new == 1 else causal_mask(new, cache.length, tgt_in.device)
    x = model.embed_target(tgt_in, cache.length)
    # read only where positions live inside attention (rope, relative): not built otherwise
    positions = None
    if in_attention(model.cfg.positional):
        positions = Positions.span(cache.length, new, tgt_in.device)
    hidden = model.decoder(x, memory, self_mask, cache.src_mask, cache.layers, positions)
    cache.length += new
    return hidden
