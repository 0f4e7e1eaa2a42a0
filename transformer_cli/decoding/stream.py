"""Greedy search over many batches as one stream of slots.

N slots, S source len, D model dim

A sentence that finishes hands its slot to the next one at once (`slots.SlotCache`), so
the decoder runs on full batches until the input runs out. The one host sync is the "who
finished?" check, every `sync_every` steps (`host_sync`), and at once when a slot reaches
its cap. `runner.decode_all` runs greedy search this way over several batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from transformer_cli.core.specials import BOS_ID, EOS_ID
from transformer_cli.decoding import host_sync
from transformer_cli.decoding.limits import clamp_caps
from transformer_cli.decoding.sampling import Sampler, exact_type
from transformer_cli.decoding.search import cut_at_eos, most_probable
from transformer_cli.decoding.slots import (
    SlotCache,
    SlotSources,
    decode_slots,
    pad_dim,
    slot_sources,
)
from transformer_cli.model.transformer import Transformer

# ----------------------------------------------------------------------------- the stream


@dataclass
class _Slots:
    """The sentences in flight: the slot cache, and for each slot its sentence's number
    in the stream, its output cap and its newest token; when sampling, its sentence's
    uniforms, one per position (sampling.py)."""

    cache: SlotCache
    sentence: Tensor  # (N,) host int64
    limit: Tensor  # (N,) host int64: pieces the sentence may emit
    tokens: Tensor  # (N,) on the device: the token each slot is fed next
    u: Tensor | None  # (N, W) on the device: sampling's uniforms; None for greedy search

    @classmethod
    def empty(cls, model: Transformer, device: torch.device, sampling: bool) -> _Slots:
        none = torch.zeros(0, dtype=torch.long)
        tokens = torch.zeros(0, dtype=torch.long, device=device)
        u = torch.zeros(0, 0, dtype=exact_type(device), device=device) if sampling else None
        return cls(SlotCache.for_model(model, device), none, none.clone(), tokens, u)

    def fill(
        self, where: Tensor, sources: SlotSources, ids: range, caps: Tensor, u: Tensor | None
    ) -> None:
        """Start sentences `ids` in slots `where` (host; numbers >= N add slots)."""
        added = int((where >= self.cache.slots).sum())
        self.cache.fill(where, *sources)
        self.sentence = torch.cat([self.sentence, torch.zeros(added, dtype=torch.long)])
        self.limit = torch.cat([self.limit, torch.zeros(added, dtype=torch.long)])
        self.tokens = torch.cat([self.tokens, self.tokens.new_zeros(added)])
        self.sentence[where], self.limit[where] = torch.tensor(list(ids)), caps
        device_where = where.to(self.tokens.device)
        self.tokens[device_where] = BOS_ID
        if self.u is not None and u is not None:
            width = max(self.u.size(1), u.size(1))
            grown = torch.cat([self.u, self.u.new_zeros(added, self.u.size(1))])
            self.u = pad_dim(grown, 1, width)
            self.u[device_where] = pad_dim(u.to(self.u), 1, width)

    def drop(self, empty: Tensor) -> None:
        """Remove the slots `empty` (host), which the stream had nothing left to fill."""
        empty = empty[empty < self.cache.slots]
        if not len(empty):
            return
        keep = torch.ones(self.cache.slots, dtype=torch.bool)
        keep[empty] = False
        kept = keep.nonzero().squeeze(1)
        self.cache.select(kept)
        self.sentence, self.limit = self.sentence[kept], self.limit[kept]
        kept_device = kept.to(self.tokens.device)
        self.tokens = self.tokens[kept_device]
        if self.u is not None:
            self.u = self.u[kept_device]

    def run(
        self, model: Transformer, sync_every: int, sampler: Sampler | None
    ) -> tuple[Tensor, Tensor]:
        """Decode every slot up to the next check: its pieces (N, w) and the finished slots
        (host).

        The check comes after `sync_every` steps, or sooner when a slot reaches its cap,
        which the host knows: no slot runs past its cap (or the model's positions). A
        slot that says EOS before the check decodes on; its extra pieces are cut.
        """
        steps = min(sync_every, int((self.limit - self.cache.pos).min()))  # pos: emitted
        pieces = []
        for _ in range(steps):
            # sampling: each slot's uniform for the piece it emits now, read before the
            # step moves the positions on
            u = None if self.u is None else self.u.gather(1, self.cache.pos_device[:, None])
            hidden = decode_slots(model, self.tokens, self.cache)  # (N, D)
            logits = model.logits(hidden)  # (N, V)
            if sampler is None or u is None:
                self.tokens = most_probable(logits)  # (N,)
            else:
                self.tokens = sampler.pick(logits, u.squeeze(1))  # (N, 1) -> (N,)
            pieces.append(self.tokens)
        block = host_sync.to_host(torch.stack(pieces, dim=1))  # w x (N,) -> (N, w)
        done = (block == EOS_ID).any(dim=1) | (self.cache.pos >= self.limit)
        return block, done.nonzero().squeeze(1)


@torch.no_grad()
def greedy_stream(
    model: Transformer,
    batches: Iterable[tuple[Tensor, Tensor]] | Iterable[tuple[Tensor, Tensor, Tensor]],
    slots: int,
    sync_every: int = 1,
    sampler: Sampler | None = None,
) -> list[list[int]]:
    """Greedy search over a stream of batches, keeping `slots` sentences in flight; with a
    `sampler`, sampling (each batch then brings its rows' uniforms).

    A sentence that finishes hands its slot to the next sentence of the stream at once,
    so every step decodes a full batch until the input runs out; each batch is encoded
    when its first sentence is needed. Each sentence's output is the one
    `greedy_search` gives it alone, for every `sync_every`.

    Args:
        model: a `Transformer` in eval mode.
        batches: (src, max_len) pairs: (b, S) right-padded source ids on the model's
            device and (b,) int64 output caps; with a sampler, (src, max_len, u)
            triples, u (b, >= the longest cap) each row's `Sampler.draws`.
        slots: the most sentences decoded at once.
        sync_every: k >= 1, the most steps between two reads of the device.
    Returns:
        one list of piece ids per sentence, in the order of the stream.
    """
    sync_every = host_sync.checked(sync_every)
    stream = _Sources(model, iter(batches))
    outputs: list[list[int]] = []
    caps: list[int] = []
    state: _Slots | None = None
    free = torch.arange(slots)  # slots to fill; numbers >= N add slots
    while True:
        filled = 0
        for sources, ids, caps_in, u in stream.take(len(free)):
            if state is None:
                state = _Slots.empty(model, sources[1].device, sampler is not None)
            state.fill(free[filled : filled + len(ids)], sources, ids, caps_in, u)
            filled += len(ids)
            outputs.extend([] for _ in ids)
            caps.extend(caps_in.tolist())
        if state is None:
            break  # an empty stream
        state.drop(free[filled:])  # the stream has run dry: drop the slots it left empty
        if not state.cache.slots:
            break
        block, free = state.run(model, sync_every, sampler)
        for s, pieces in zip(state.sentence.tolist(), block.tolist(), strict=True):
            outputs[s].extend(pieces)
    return [cut_at_eos(row, n) for row, n in zip(outputs, caps, strict=True)]


class _Sources:
    """The sentences of a stream of batches, encoded a batch at a time as they are taken."""

    def __init__(self, model: Transformer, batches: Iterator[tuple[Tensor, ...]]) -> None:
        self.model, self.batches = model, batches
        self.next_id = 0
        self.size = 0  # the current batch, from row `self.row` on
        self.row = 0
        self.u: Tensor | None = None  # the current batch's uniforms, when sampling

    def take(self, n: int) -> Iterator[tuple[SlotSources, range, Tensor, Tensor | None]]:
        """Up to `n` sentences: slices of a batch's `slot_sources` (cross keys and values,
        source mask, source lengths), their numbers in the stream, their caps, and their
        uniforms (None for greedy search)."""
        while n > 0:
            if self.row == self.size:
                batch = next(self.batches, None)
                if batch is None:
                    return
                src, caps, *uniforms = batch  # (src, caps) or, sampling, (src, caps, u)
                self.u = uniforms[0] if uniforms else None
                self.cross, self.src_mask, self.src_len = slot_sources(self.model, src)
                self.caps = clamp_caps(caps, len(src), self.model.cfg.max_positions)
                self.size, self.row = len(src), 0
            rows = slice(self.row, min(self.row + n, self.size))
            count = rows.stop - rows.start
            cross = [(k[rows], v[rows]) for k, v in self.cross]
            sources = (cross, self.src_mask[rows], self.src_len[rows])
            u = None if self.u is None else self.u[rows]
            yield sources, range(self.next_id, self.next_id + count), self.caps[rows], u
            self.row, self.next_id, n = rows.stop, self.next_id + count, n - count
