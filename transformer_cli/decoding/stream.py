"""Decoding many sentences: length-sorted batches, and greedy search as one stream of slots.

N slots, S source len, D model dim

`decode_all` is what translate, evaluate and validation call: it sorts the sources by
length, cuts them into batches and runs the search the decode options ask for. Greedy
search over several batches runs as one stream (`greedy_stream`): a sentence that
finishes hands its slot to the next one at once (`slots.SlotCache`), so the decoder runs
on full batches until the input runs out. The one host sync is the "who finished?"
check, every `sync_every` steps (`host_sync`), and at once when a slot reaches its cap.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, overload

import torch
from torch import Tensor

from transformer_cli.core import runtime
from transformer_cli.core.config import DecodeConfig, ResolvedPrecision
from transformer_cli.core.specials import BOS_ID, EOS_ID, PAD_ID
from transformer_cli.decoding import host_sync
from transformer_cli.decoding.protocol import SearchModel
from transformer_cli.decoding.search import (
    Hypothesis,
    beam_search,
    cut_at_eos,
    greedy_search,
    most_probable,
    output_limits,
)
from transformer_cli.decoding.slots import SlotCache, SlotSources, decode_slots, slot_sources
from transformer_cli.fast import packing
from transformer_cli.model.transformer import Transformer

# ----------------------------------------------------------------------------- the stream


@dataclass
class _Slots:
    """The sentences in flight: the slot cache, and for each slot its sentence's number
    in the stream, its output cap and its newest token."""

    cache: SlotCache
    sentence: Tensor  # (N,) host int64
    limit: Tensor  # (N,) host int64: pieces the sentence may emit
    tokens: Tensor  # (N,) on the device: the token each slot is fed next

    @classmethod
    def empty(cls, model: Transformer, device: torch.device) -> _Slots:
        none = torch.zeros(0, dtype=torch.long)
        tokens = torch.zeros(0, dtype=torch.long, device=device)
        return cls(SlotCache.for_model(model, device), none, none.clone(), tokens)

    def fill(self, where: Tensor, sources: SlotSources, ids: range, caps: Tensor) -> None:
        """Start sentences `ids` in slots `where` (host; numbers >= N add slots)."""
        added = int((where >= self.cache.slots).sum())
        self.cache.fill(where, *sources)
        self.sentence = torch.cat([self.sentence, torch.zeros(added, dtype=torch.long)])
        self.limit = torch.cat([self.limit, torch.zeros(added, dtype=torch.long)])
        self.tokens = torch.cat([self.tokens, self.tokens.new_zeros(added)])
        self.sentence[where], self.limit[where] = torch.tensor(list(ids)), caps
        self.tokens[where.to(self.tokens.device)] = BOS_ID

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
        self.tokens = self.tokens[kept.to(self.tokens.device)]

    def run(self, model: Transformer, sync_every: int) -> tuple[Tensor, Tensor]:
        """Decode every slot up to the next check: its pieces (N, w) and the finished slots
        (host).

        The check comes after `sync_every` steps, or sooner when a slot reaches its cap,
        which the host knows: no slot runs past its cap (or the model's positions). A
        slot that says EOS before the check decodes on; its extra pieces are cut.
        """
        steps = min(sync_every, int((self.limit - self.cache.pos).min()))  # pos: emitted
        pieces = []
        for _ in range(steps):
            hidden = decode_slots(model, self.tokens, self.cache)  # (N, D)
            self.tokens = most_probable(model.logits(hidden))  # (N,)
            pieces.append(self.tokens)
        block = host_sync.to_host(torch.stack(pieces, dim=1))  # w x (N,) -> (N, w)
        done = (block == EOS_ID).any(dim=1) | (self.cache.pos >= self.limit)
        return block, done.nonzero().squeeze(1)


@torch.no_grad()
def greedy_stream(
    model: Transformer,
    batches: Iterable[tuple[Tensor, Tensor]],
    slots: int,
    sync_every: int = 1,
) -> list[list[int]]:
    """Greedy search over a stream of batches, keeping `slots` sentences in flight.

    A sentence that finishes hands its slot to the next sentence of the stream at once,
    so every step decodes a full batch until the input runs out; each batch is encoded
    when its first sentence is needed. Each sentence's output is the one
    `greedy_search` gives it alone, for every `sync_every`.

    Args:
        model: a `Transformer` in eval mode.
        batches: (src, max_len) pairs: (b, S) right-padded source ids on the model's
            device and (b,) int64 output caps.
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
        for sources, ids, caps_in in stream.take(len(free)):
            if state is None:
                state = _Slots.empty(model, sources[1].device)
            state.fill(free[filled : filled + len(ids)], sources, ids, caps_in)
            filled += len(ids)
            outputs.extend([] for _ in ids)
            caps.extend(caps_in.tolist())
        if state is None:
            break  # an empty stream
        state.drop(free[filled:])  # the stream has run dry: drop the slots it left empty
        if not state.cache.slots:
            break
        block, free = state.run(model, sync_every)
        for s, pieces in zip(state.sentence.tolist(), block.tolist(), strict=True):
            outputs[s].extend(pieces)
    return [cut_at_eos(row, n) for row, n in zip(outputs, caps, strict=True)]


class _Sources:
    """The sentences of a stream of batches, encoded a batch at a time as they are taken."""

    def __init__(self, model: Transformer, batches: Iterator[tuple[Tensor, Tensor]]) -> None:
        self.model, self.batches = model, batches
        self.next_id = 0
        self.size = 0  # the current batch, from row `self.row` on
        self.row = 0

    def take(self, n: int) -> Iterator[tuple[SlotSources, range, Tensor]]:
        """Up to `n` sentences: slices of a batch's `slot_sources` (cross keys and values,
        source mask, source lengths), their numbers in the stream, and their caps."""
        while n > 0:
            if self.row == self.size:
                batch = next(self.batches, None)
                if batch is None:
                    return
                src, caps = batch
                self.cross, self.src_mask, self.src_len = slot_sources(self.model, src)
                self.caps = caps.cpu().clamp(1, self.model.cfg.max_positions)
                self.size, self.row = len(src), 0
            rows = slice(self.row, min(self.row + n, self.size))
            count = rows.stop - rows.start
            cross = [(k[rows], v[rows]) for k, v in self.cross]
            sources = (cross, self.src_mask[rows], self.src_len[rows])
            yield sources, range(self.next_id, self.next_id + count), self.caps[rows]
            self.row, self.next_id, n = rows.stop, self.next_id + count, n - count


# ----------------------------------------------------------------------------- many sources


def max_source_pieces(model: SearchModel) -> int:
    """The longest source the encoder can hold: one position per piece (no BOS/EOS)."""
    return model.cfg.max_positions


def fit_sources(model: SearchModel, sources: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """The sources cut to what the encoder holds, and the numbers of those that were cut.

    The one truncation rule of decoding: `decode_all` applies it, and translate and
    evaluate call it to say which inputs it cut.
    """
    cap = max_source_pieces(model)
    cut = [i for i, s in enumerate(sources) if len(s) > cap]
    return [s[:cap] for s in sources], cut


@dataclass(frozen=True)
class _Search:
    """How `decode_all` searches: the decode options with its arguments put in."""

    beam: int
    alpha: float
    nbest: int
    max_len_a: float
    max_len_b: int
    early_stop: bool
    batch_sentences: int
    use_cache: bool
    refill: bool
    sync_every: int  # decode.sync_every, 0 = by device

    @classmethod
    def of(
        cls,
        decode: DecodeConfig,
        beam: int | None,
        alpha: float | None,
        nbest: int,
        max_len_a: float | None,
        max_len_b: int | None,
        use_cache: bool,
        refill: bool,
    ) -> _Search:
        """`decode`'s options, with `decode_all`'s arguments that are not None put in; checked."""
        search = cls(
            beam=decode.beam if beam is None else beam,
            alpha=decode.alpha if alpha is None else alpha,
            nbest=nbest,
            max_len_a=decode.max_len_a if max_len_a is None else max_len_a,
            max_len_b=decode.max_len_b if max_len_b is None else max_len_b,
            early_stop=decode.early_stop,
            batch_sentences=decode.batch_sentences,
            use_cache=use_cache,
            refill=refill,
            sync_every=decode.sync_every,
        )
        if search.beam < 1 or not 1 <= nbest <= search.beam:
            raise ValueError(
                f"need beam >= 1 and 1 <= nbest <= beam, got beam {search.beam}, nbest {nbest}"
            )
        return search

    @property
    def greedy(self) -> bool:
        return self.beam == 1 and self.nbest == 1


@dataclass
class _Plan:
    """The sources, cut to the encoder's length, and their length-sorted batches."""

    sources: list[list[int]]
    lengths: list[int]
    chunks: list[list[int]]  # source numbers per batch, longest first


@overload
def decode_all(
    model: Transformer,
    sources: list[list[int]],
    decode_cfg: DecodeConfig,
    device: torch.device | str,
    precision: ResolvedPrecision = ...,
    beam: int | None = ...,
    alpha: float | None = ...,
    nbest: Literal[1] = ...,
    max_len_a: float | None = ...,
    max_len_b: int | None = ...,
    use_cache: bool = ...,
    refill: bool = ...,
) -> list[list[int]]: ...


@overload
def decode_all(
    model: Transformer,
    sources: list[list[int]],
    decode_cfg: DecodeConfig,
    device: torch.device | str,
    precision: ResolvedPrecision = ...,
    beam: int | None = ...,
    alpha: float | None = ...,
    nbest: int = ...,
    max_len_a: float | None = ...,
    max_len_b: int | None = ...,
    use_cache: bool = ...,
    refill: bool = ...,
) -> list[list[int]] | list[list[Hypothesis]]: ...


def decode_all(
    model: Transformer,
    sources: list[list[int]],
    decode_cfg: DecodeConfig,
    device: torch.device | str,
    precision: ResolvedPrecision = "fp32",
    beam: int | None = None,
    alpha: float | None = None,
    nbest: int = 1,
    max_len_a: float | None = None,
    max_len_b: int | None = None,
    use_cache: bool = True,
    refill: bool = True,
) -> list[list[int]] | list[list[Hypothesis]]:
    """Decode many sources in length-sorted batches; results come back in input order.

    Arguments left as None take their value from `decode_cfg`. Each sentence may emit at
    most int(a * source pieces + b) pieces (at least 1, at most the model's positions);
    sources longer than the model's positions are cut to fit. An empty source gives an
    empty output (score 0.0) without running the model.

    Greedy search with the cache, over several batches of more than one sentence, runs
    them as one stream (`greedy_stream`): `batch_sentences` sentences in flight, a
    finished one replaced by the next at once. `refill=False` decodes each batch on its
    own until its last sentence finishes (`greedy_search`, as beam search and the
    uncached search always do); the outputs are the same. Greedy search checks for
    finished sentences every `decode_cfg.sync_every` steps (`host_sync.sync_every_for`
    picks it by device when 0), with the same outputs for every value.

    Args:
        sources: piece ids per sentence, without BOS/EOS.
    Returns:
        nbest == 1: one list of piece ids per source (beam search's best, or greedy's);
        nbest > 1: one list of `nbest` (piece ids, score) pairs per source, best first.
    """
    search = _Search.of(decode_cfg, beam, alpha, nbest, max_len_a, max_len_b, use_cache, refill)
    plan = _plan(model, sources, search.batch_sentences)
    nothing: Hypothesis = ([], 0.0)
    empty: list[int] | list[Hypothesis] = [] if nbest == 1 else [nothing] * nbest
    results: list = [empty] * len(sources)
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        # inference_mode skips autograd's bookkeeping, but under it autocast does not
        # keep its low-precision copies of the weights and casts every matrix again at
        # every step: so it is for fp32, and for models whose linear layers hold packed
        # copies in their own type and need no autocast (`fast/packing.py`)
        lean = precision == "fp32" or packing.fully_packed(model)
        grad_off = torch.inference_mode() if lean else torch.no_grad()
        with grad_off, runtime.autocast(device, precision):
            for i, out in _decode_plan(model, plan, search, device):
                results[i] = out
    finally:
        model.train(was_training)
    return results


def _plan(model: SearchModel, sources: list[list[int]], size: int) -> _Plan:
    sources, _ = fit_sources(model, sources)
    lengths = [len(s) for s in sources]
    # longest first, so that a batch too big for the device fails at once, not at the end
    order = sorted((i for i, n in enumerate(lengths) if n), key=lambda i: -lengths[i])
    chunks = [order[start : start + size] for start in range(0, len(order), size)]
    return _Plan(sources, lengths, chunks)


def _batch(
    model: SearchModel, plan: _Plan, chunk: list[int], search: _Search, device: torch.device
) -> tuple[Tensor, Tensor]:
    """A chunk's right-padded sources on the device, and its output caps."""
    lengths = plan.lengths
    src = torch.full((len(chunk), lengths[chunk[0]]), PAD_ID, dtype=torch.long)
    for row, i in enumerate(chunk):
        src[row, : lengths[i]] = torch.as_tensor(plan.sources[i])
    a, b = search.max_len_a, search.max_len_b
    caps = [max(1, int(a * lengths[i] + b)) for i in chunk]
    return src.to(device, non_blocking=True), output_limits(model, caps, len(chunk))


def _decode_plan(
    model: Transformer, plan: _Plan, search: _Search, device: torch.device
) -> Iterator[tuple[int, list[int] | list[Hypothesis]]]:
    """(source number, output) for every non-empty source, by the search asked for."""
    chunks = plan.chunks
    size = search.batch_sentences
    sync_every = host_sync.sync_every_for(search.sync_every, device)
    if search.greedy and search.use_cache and search.refill and size > 1 and len(chunks) > 1:
        batches = (_batch(model, plan, c, search, device) for c in chunks)
        order = (i for chunk in chunks for i in chunk)
        yield from zip(order, greedy_stream(model, batches, size, sync_every), strict=True)
        return
    for chunk in chunks:
        src, limits = _batch(model, plan, chunk, search, device)
        outs: list[list[int]] | list[list[Hypothesis]]
        if search.greedy:
            outs = greedy_search(model, src, limits, search.use_cache, sync_every)
        else:
            s = search
            hyps = beam_search(
                model, src, s.beam, s.alpha, limits, s.nbest, s.use_cache, s.early_stop
            )
            outs = [h[0][0] for h in hyps] if search.nbest == 1 else hyps
        yield from zip(chunk, outs, strict=True)
