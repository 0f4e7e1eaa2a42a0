"""A KV cache whose rows are slots: continuous batching for greedy search.

N slots, H heads, W widest filled prefix, S source len, K head dim

`KVCache` (kv_cache.py) decodes one batch in lockstep: every row is at the same target
position. When most sentences of a batch have finished, the few still running pay for
reading every weight matrix at each step, as a full batch would: on a CPU the step is
then bound by memory bandwidth, not arithmetic. A `SlotCache` instead gives each row its
own position, so a row whose sentence finished takes the next sentence at once, and the
decoder keeps working on full batches until the input runs out.

What a slot holds:

- `pos[n]`: the target position of the token it is fed next (0 = BOS);
- each layer's self-attention keys and values in a buffer (capacity, N, H, K), written at
  `pos[n]`; keys at and beyond it are stale or empty, and masked out (`prefix_mask`). The
  buffer is position-major so that the filled prefix the attention reads, positions
  0 .. W-1 of every slot, is one contiguous block (seen as (N, H, W, K) through a view).
  Slot-major, (N, H, capacity, K), it would be N x H short runs with gaps between them,
  which a step reads more slowly (docs/performance.md, "Full batches: the slot stream");
- each layer's cross-attention keys and values (N, H, S, K) and the source padding mask
  (N, 1, 1, S) of its sentence, S the widest source so far: a shorter source is padded,
  and its pad keys are masked like any other.

Each slot's numbers are those `KVCache` gives the same sentence alone, up to the
order of floating-point sums: masked keys get probability exactly 0.
"""

from __future__ import annotations

import typing

import torch
from torch import Tensor

from transformer_cli.model.masks import padding_mask, prefix_mask
from transformer_cli.model.positions import Positions, in_attention
from transformer_cli.model.transformer import DecoderLayer, Transformer


def pad_dim(t: Tensor, dim: int, size: int, value: float | bool = 0) -> Tensor:
    """`t` padded at the end of dimension `dim` to `size` with `value`."""
    missing = size - t.size(dim)
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t, t.new_full(shape, value)], dim=dim)


def _grown(old: Tensor | None, new: Tensor, capacity: int, dtype: torch.dtype) -> Tensor:
    """A (capacity, N, H, K) buffer for keys like `new` (N, H, 1, K), starting with `old`."""
    n, h, _, d = new.shape
    buffer = new.new_zeros(capacity, n, h, d, dtype=dtype)
    if old is not None:
        buffer[: old.size(0)] = old
    return buffer


class SlotLayerCache:
    """One decoder layer's slots: self K/V buffers and cross K/V, see `SlotCache`."""

    __slots__ = ("owner", "self_k", "self_v", "cross_k", "cross_v")

    def __init__(self, owner: SlotCache) -> None:
        self.owner = owner
        self.self_k: Tensor | None = None  # (capacity, N, H, K)
        self.self_v: Tensor | None = None
        self.cross_k: Tensor | None = None  # (N, H, S, K)
        self.cross_v: Tensor | None = None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write each slot's new key and value at its position; return the filled prefix.

        Args:
            k, v: (N, H, 1, K), one new token per slot.
        Returns:
            keys and values (N, H, W, K), W = the deepest slot's position + 1: views.
        """
        owner = self.owner
        width = owner.width
        if self.self_k is None or self.self_v is None or self.self_k.size(0) < width:
            # grow by doubling, so that a long sentence costs O(log length) copies
            capacity, dtype = max(16, 2 * width), owner.dtype(k)
            self.self_k = _grown(self.self_k, k, capacity, dtype)
            self.self_v = _grown(self.self_v, k, capacity, dtype)
        pos, rows = owner.pos_device, owner.rows
        self.self_k[pos, rows] = k[:, :, 0].to(self.self_k.dtype)  # (N,H,K) -> (cap,N,H,K)
        self.self_v[pos, rows] = v[:, :, 0].to(self.self_v.dtype)
        # (W,N,H,K) -> (N,H,W,K): a view, which matmul folds into (N*H, W, K) without a copy
        return self.self_k[:width].permute(1, 2, 0, 3), self.self_v[:width].permute(1, 2, 0, 3)


class SlotCache:
    """Per-slot positions, keys and values; see the module docstring.

    `fill(slots, *slot_sources(model, src))` starts new sentences in slots (rows of what
    `slot_sources` returns may be sliced to start some of them); `decode_slots(model,
    tokens, cache)` runs one step for every slot; `select(index)` keeps only some slots,
    in the given order.
    """

    @classmethod
    def for_model(cls, model: Transformer, device: torch.device | str) -> SlotCache:
        """An empty cache for `model`'s decoder layers, with no slots yet."""
        return cls(len(model.decoder.layers), device)

    def __init__(self, num_layers: int, device: torch.device | str) -> None:
        self.layers = [SlotLayerCache(self) for _ in range(num_layers)]
        self.device = torch.device(device)
        self.src_mask: Tensor | None = None  # (N, 1, 1, S) bool
        self.src_len = torch.zeros(0, dtype=torch.long)  # (N,) host: real source keys
        self.rows = torch.zeros(0, dtype=torch.long, device=self.device)  # (N,) arange
        self._set_pos(torch.zeros(0, dtype=torch.long))  # pos: (N,) host, next positions

    def dtype(self, t: Tensor) -> torch.dtype:
        """The type keys and values `t` are kept in: bf16 and fp16 become fp32 on the CPU.

        On the CPU, a bf16 matmul copies strided inputs (the filled prefix of a buffer
        is one) before it starts, and at one query per slot the copy costs more than
        the product; fp32 keys and values are read in place. Attention brings the
        queries to the keys' type (`model.attention.Attention._attend`).
        """
        low = t.dtype in (torch.bfloat16, torch.float16)
        return torch.float32 if low and self.device.type == "cpu" else t.dtype

    @property
    def slots(self) -> int:
        return len(self.pos)

    def self_mask(self) -> Tensor:
        """(N, 1, 1, W) bool: each slot sees its own positions 0 .. pos, nothing else."""
        return prefix_mask(self.pos_device + 1, self.width)

    def advance(self) -> None:
        """After a step: every slot moves on by one position."""
        self.pos += 1
        self.pos_device += 1
        self.width += 1

    def fill(
        self,
        slots: Tensor,
        cross: list[tuple[Tensor, Tensor]],
        src_mask: Tensor,
        src_len: Tensor,
    ) -> None:
        """Start new sentences in `slots` (host, int64; the value `self.slots` appends).

        Args:
            slots: (n,) slot numbers, existing ones to replace or N, N+1, .. to add.
            cross: each layer's cross-attention keys and values of the new sentences,
                (n, H, S', K) each.
            src_mask: (n, 1, 1, S') their source padding mask.
            src_len: (n,) host int64, their real source keys (the mask's row sums).
        """
        width = max(src_mask.size(-1), 0 if self.src_mask is None else self.src_mask.size(-1))
        added = int((slots >= self.slots).sum())
        index = slots.to(self.device)
        self.src_mask = self._put(self.src_mask, index, src_mask, added, 3, width, False)
        for layer, (k, v) in zip(self.layers, cross, strict=True):
            k, v = k.to(self.dtype(k)), v.to(self.dtype(v))
            layer.cross_k = self._put(layer.cross_k, index, k, added, 2, width, 0.0)
            layer.cross_v = self._put(layer.cross_v, index, v, added, 2, width, 0.0)
            if added and layer.self_k is not None and layer.self_v is not None:
                cap, _, h, d = layer.self_k.shape
                extra = layer.self_k.new_zeros(cap, added, h, d)
                layer.self_k = torch.cat([layer.self_k, extra], dim=1)
                layer.self_v = torch.cat([layer.self_v, extra], dim=1)
        pos = torch.cat([self.pos, torch.zeros(added, dtype=torch.long)])
        pos[slots] = 0
        self._set_pos(pos)
        lengths = torch.cat([self.src_len, torch.zeros(added, dtype=torch.long)])
        lengths[slots] = src_len
        self.src_len = lengths
        self._trim_sources()

    def select(self, index: Tensor) -> SlotCache:
        """Keep (and reorder to) the slots `index` (host, int64), in place; returns self."""
        device_index = index.to(self.device)
        if self.src_mask is not None:
            self.src_mask = self.src_mask.index_select(0, device_index)
        for layer in self.layers:
            # the slot dimension: 1 of the position-major self buffers, 0 of the rest
            for name, dim in (("self_k", 1), ("self_v", 1), ("cross_k", 0), ("cross_v", 0)):
                t = getattr(layer, name)
                if t is not None:
                    setattr(layer, name, t.index_select(dim, device_index))
        self._set_pos(self.pos[index])
        self.src_len = self.src_len[index]
        self._trim_sources()
        return self

    def _trim_sources(self) -> None:
        """Narrow the source keys to the longest source still in a slot (views, no copy).

        Sources arrive longest first, so without this every later sentence would attend
        over the pad keys of the first, longest one.
        """
        need = int(self.src_len.max()) if len(self.src_len) else 0
        if self.src_mask is None or not 0 < need < self.src_mask.size(-1):
            return
        self.src_mask = self.src_mask[..., :need]
        for layer in self.layers:
            if layer.cross_k is not None and layer.cross_v is not None:  # set by every fill
                layer.cross_k = layer.cross_k[:, :, :need]
                layer.cross_v = layer.cross_v[:, :, :need]

    def _set_pos(self, pos: Tensor) -> None:
        self.pos = pos
        self.pos_device = pos.to(self.device, copy=True)  # advance() adds to both
        # keys to attend over this step: the deepest slot's position + 1
        self.width = int(pos.max()) + 1 if len(pos) else 0
        if len(self.rows) != len(pos):
            self.rows = torch.arange(len(pos), device=self.device)

    @staticmethod
    def _put(
        old: Tensor | None,
        index: Tensor,
        new: Tensor,
        added: int,
        dim: int,
        width: int,
        value: float | bool,
    ) -> Tensor:
        """`old` with rows `index` set to `new`, `added` rows appended, `dim` padded to width."""
        new = pad_dim(new, dim, width, value)
        if old is None:
            return new.contiguous()
        old = pad_dim(old, dim, width, value)
        if added:
            old = torch.cat([old, new.new_full((added, *old.shape[1:]), value)])
        return old.index_copy_(0, index, new)


# what a slot needs of its sentence: cross keys and values per layer, mask, source lengths
SlotSources = tuple[list[tuple[Tensor, Tensor]], Tensor, Tensor]


def slot_sources(model: Transformer, src: Tensor) -> SlotSources:
    """Encode `src` into what a slot needs of its sentence: `SlotCache.fill`'s inputs.

    Args:
        src: (n, S) source ids, right-padded.
    Returns:
        each decoder layer's cross-attention keys and values, 2 x (n, H, S, K); the
        (n, 1, 1, S) source padding mask; and its row sums on the host, (n,) int64
        (one transfer per batch, not per slot filled). Rows can be sliced to fill
        some slots.
    """
    memory = model.encode(src)  # (n, S, D)
    # nn.ModuleList gives its items as nn.Module: name their class for the checker
    layers = typing.cast("list[DecoderLayer]", list(model.decoder.layers))
    cross = [layer.cross_attn.keys_values(memory) for layer in layers]
    mask = padding_mask(src)  # (n, 1, 1, S)
    return cross, mask, mask.sum(-1).view(-1).cpu()


def decode_slots(model: Transformer, tokens: Tensor, cache: SlotCache) -> Tensor:
    """One decoding step for every slot, each at its own position.

    Args:
        tokens: (N,) each slot's newest token (BOS for a slot just filled).
    Returns:
        (N, D) the decoder's last hidden state of each slot.
    """
    # every slot's position is below its sentence's output cap, which search keeps
    # within max_positions
    x = model.embed_target_at(tokens, cache.pos_device)[:, None]  # (N, D) -> (N, 1, D)
    # a key's position is its index in the buffer; read only by rope and relative
    positions = None
    if in_attention(model.cfg.positional):
        positions = Positions.per_row(cache.pos_device, cache.width)
    hidden = model.decoder(x, None, cache.self_mask(), cache.src_mask, cache.layers, positions)
    cache.advance()
    return hidden[:, 0]  # (N, 1, D) -> (N, D)
