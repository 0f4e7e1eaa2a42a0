"""Decoding many sentences: `decode_all`, what translate, evaluate, validation and inspect call.

It cuts the sources to the model's positions and gives each its output cap (`limits.py`),
sorts them by length into batches of `decode.batch_sentences`, and runs them through the
strategy that the decode options choose (`choose`): greedy search, beam search, or
sampling.
A strategy is a small frozen dataclass with a `decode(model, plan)` method, so another
search joins by adding one, chosen from the `DecodeConfig`, with no new parameters here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, overload

import torch
from torch import Tensor

from transformer_cli.core import runtime
from transformer_cli.core.config import DecodeConfig, ResolvedPrecision
from transformer_cli.core.specials import PAD_ID
from transformer_cli.decoding import host_sync, limits
from transformer_cli.decoding.sampling import Draws, Sampler, exact_type
from transformer_cli.decoding.scoring import score_pairs
from transformer_cli.decoding.search import Hypothesis, beam_search, greedy_search
from transformer_cli.decoding.stream import greedy_stream
from transformer_cli.fast import packing
from transformer_cli.model.transformer import Transformer

Output = list[int] | list[Hypothesis]


@dataclass(frozen=True)
class Plan:
    """The sources, cut to the encoder's length, their output caps, and their batches."""

    sources: list[list[int]]
    caps: list[int]  # the most pieces each may emit (limits.output_cap)
    chunks: list[list[int]]  # source numbers per batch, longest first; empty sources in none
    device: torch.device
    first: int = 0  # the input's number of sources[0]: sampling seeds each sentence by it

    @classmethod
    def of(
        cls,
        sources: list[list[int]],
        decode: DecodeConfig,
        positions: int,
        device: torch.device,
        first: int = 0,
    ) -> Plan:
        fitted, _ = limits.fit_sources(sources, positions)
        caps = [limits.output_cap(len(s), decode, positions) for s in fitted]
        # longest first, so that a batch too big for the device fails at once, not at the end
        order = sorted((i for i, s in enumerate(fitted) if s), key=lambda i: -len(fitted[i]))
        size = decode.batch_sentences
        chunks = [order[start : start + size] for start in range(0, len(order), size)]
        return cls(fitted, caps, chunks, device, first)

    def batch(self, chunk: list[int]) -> tuple[Tensor, Tensor]:
        """A chunk's right-padded sources (b, S) on the device, and its (b,) output caps."""
        src = torch.full((len(chunk), len(self.sources[chunk[0]])), PAD_ID, dtype=torch.long)
        for row, i in enumerate(chunk):
            src[row, : len(self.sources[i])] = torch.as_tensor(self.sources[i])
        caps = torch.tensor([self.caps[i] for i in chunk], dtype=torch.long)
        return src.to(self.device, non_blocking=True), caps

    def batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Every chunk's `batch`, made when it is taken."""
        return (self.batch(chunk) for chunk in self.chunks)


@dataclass(frozen=True)
class Greedy:
    """The most probable piece at every step. Over several batches of more than one
    sentence, one stream of `slots` sentences in flight (`refill`); the outputs are the
    same either way, and for every `sync_every` (steps between checks for finished ones)."""

    sync_every: int  # resolved, >= 1
    slots: int
    use_cache: bool = True
    refill: bool = True
    nbest: Literal[1] = 1

    def decode(self, model: Transformer, plan: Plan) -> Iterator[list[int]]:
        """One list of piece ids per sentence of `plan.chunks`, in their order."""
        if self.use_cache and self.refill and self.slots > 1 and len(plan.chunks) > 1:
            yield from greedy_stream(model, plan.batches(), self.slots, self.sync_every)
            return
        for src, caps in plan.batches():
            yield from greedy_search(model, src, caps, self.use_cache, self.sync_every)


@dataclass(frozen=True)
class Beam:
    """Beam search with the GNMT length penalty, `nbest` hypotheses per sentence."""

    beam: int
    alpha: float
    nbest: int
    early_stop: bool
    use_cache: bool = True

    def decode(self, model: Transformer, plan: Plan) -> Iterator[Output]:
        """Per sentence of `plan.chunks`: its best piece ids (nbest 1), or its scored n-best."""
        for src, caps in plan.batches():
            hyps = beam_search(
                model, src, self.beam, self.alpha, caps, self.nbest, self.use_cache, self.early_stop
            )
            yield from ([h[0][0] for h in hyps] if self.nbest == 1 else hyps)


@dataclass(frozen=True)
class Sample:
    """`nbest` independent samples per sentence (sampling.py), through greedy search's
    loops: the slot stream over several batches, else lockstep batches. Each sample of
    sentence i, number j, draws from the generator of (seed, plan.first + i, j). Scored
    lists carry each sample's mean log-probability per token (`scoring.PairScore.mean`)."""

    sampler: Sampler
    nbest: int
    sync_every: int  # resolved, >= 1
    slots: int

    def decode(self, model: Transformer, plan: Plan) -> Iterator[Output]:
        """Per sentence of `plan.chunks`: its sample (nbest 1), or its scored samples."""
        n = self.nbest
        batches = (self._rows(plan, chunk) for chunk in plan.chunks)
        if len(plan.chunks) > 1 and self.slots > 1:
            rows = greedy_stream(model, batches, self.slots, self.sync_every, self.sampler)
        else:
            rows = []
            for src, caps, u in batches:
                draws = Draws(self.sampler, u)
                rows += greedy_search(model, src, caps, True, self.sync_every, draws)
        order = [i for chunk in plan.chunks for i in chunk]
        if n == 1:
            yield from rows
            return
        sources = [plan.sources[i] for i in order for _ in range(n)]
        budget = self.slots * (max(map(len, sources), default=0) + 1)
        scores = score_pairs(model, sources, rows, budget, plan.device)
        for start in range(0, len(rows), n):
            yield [(rows[k], scores[k].mean) for k in range(start, start + n)]

    def _rows(self, plan: Plan, chunk: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        """A chunk's batch with each sentence repeated `nbest` times, and the rows' draws."""
        src, caps = plan.batch(chunk)
        keys = [(plan.first + i, j) for i in chunk for j in range(self.nbest)]
        u = self.sampler.draws(keys, int(caps.max()))
        u = u.to(plan.device, exact_type(plan.device), non_blocking=True)
        index = torch.arange(len(chunk)).repeat_interleave(self.nbest)
        return src[index.to(src.device)], caps[index], u


def greedy(decode: DecodeConfig) -> DecodeConfig:
    """`decode` as greedy search: what validation and the views decode with, whatever
    search or sampling the config asks translate for."""
    return dataclasses.replace(decode, beam=1, sample=False)


def choose(decode: DecodeConfig, nbest: int, device: torch.device) -> Greedy | Beam | Sample:
    """The search `decode` asks for: sampling if it says so; else greedy for beam 1 and
    one hypothesis, else beam search.

    `decode` is a checked config (`config_rules.apply_decode_overrides`); `nbest` must be
    between 1 and its beam.
    """
    if nbest < 1 or (nbest > decode.beam and not decode.sample):  # samples: any number
        raise ValueError(f"need 1 <= nbest <= beam, got beam {decode.beam}, nbest {nbest}")
    sync_every = host_sync.sync_every_for(decode.sync_every, device)
    if decode.sample:
        return Sample(Sampler.of(decode), nbest, sync_every, decode.batch_sentences)
    if decode.beam == 1:
        return Greedy(sync_every, decode.batch_sentences)
    return Beam(decode.beam, decode.alpha, nbest, decode.early_stop)


@overload
def decode_all(
    model: Transformer,
    sources: list[list[int]],
    decode: DecodeConfig,
    device: torch.device | str,
    precision: ResolvedPrecision = ...,
    nbest: Literal[1] = ...,
    first: int = ...,
) -> list[list[int]]: ...


@overload
def decode_all(
    model: Transformer,
    sources: list[list[int]],
    decode: DecodeConfig,
    device: torch.device | str,
    precision: ResolvedPrecision = ...,
    nbest: int = ...,
    first: int = ...,
) -> list[list[int]] | list[list[Hypothesis]]: ...


def decode_all(
    model: Transformer,
    sources: list[list[int]],
    decode: DecodeConfig,
    device: torch.device | str,
    precision: ResolvedPrecision = "fp32",
    nbest: int = 1,
    first: int = 0,
) -> list[list[int]] | list[list[Hypothesis]]:
    """Decode many sources by the search `decode` chooses; results come back in input order.

    Each source is cut to the model's positions and may emit its `limits.output_cap`. An
    empty source gives an empty output (score 0.0) without running the model.

    Args:
        sources: piece ids per sentence, without BOS/EOS.
        first: the input's number of sources[0] (sampling seeds each sentence by its own).
    Returns:
        nbest == 1: one list of piece ids per source (beam search's best, or greedy's);
        nbest > 1: one list of `nbest` (piece ids, score) pairs per source, best first
        (samples: in the order drawn, scored by `Sample`).
    """
    device = torch.device(device)
    plan = Plan.of(sources, decode, model.cfg.max_positions, device, first)
    return run(model, plan, choose(decode, nbest, device), precision)


def run(
    model: Transformer,
    plan: Plan,
    search: Greedy | Beam | Sample,
    precision: ResolvedPrecision = "fp32",
) -> list:
    """`plan` decoded by `search`, in eval mode, under `precision`; in source order."""
    nothing: Hypothesis = ([], 0.0)
    empty: Output = [] if search.nbest == 1 else [nothing] * search.nbest
    results: list = [empty] * len(plan.sources)
    order = [i for chunk in plan.chunks for i in chunk]
    was_training = model.training
    model.eval()
    try:
        # inference_mode skips autograd's bookkeeping, but under it autocast does not
        # keep its low-precision copies of the weights and casts every matrix again at
        # every step: so it is for fp32, and for models whose linear layers hold packed
        # copies in their own type and need no autocast (`fast/packing.py`)
        lean = precision == "fp32" or packing.fully_packed(model)
        grad_off = torch.inference_mode() if lean else torch.no_grad()
        with grad_off, runtime.autocast(plan.device, precision):
            for i, out in zip(order, search.decode(model, plan), strict=True):
                results[i] = out
    finally:
        model.train(was_training)
    return results
