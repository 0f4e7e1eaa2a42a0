"""Every search, with every kind of position: the equalities of test_search.py hold.

rope and relative take positions inside self-attention, which the KV cache and the slot
stream pass step by step (each slot at its own position); these models are trained a
little, in float64, so that sentences end at varied lengths and no near-tie flips.
"""

from __future__ import annotations

import pytest
import torch
from helpers import pad, random_sources, tiny_model

from transformer_cli.core.config import DecodeConfig
from transformer_cli.decoding.runner import decode_all
from transformer_cli.decoding.search import beam_search, greedy_search
from transformer_cli.decoding.stream import greedy_stream
from transformer_cli.model.transformer import Transformer

KINDS = ("sinusoidal", "learned", "rope", "relative")
LIMITS = [3, 5, 8, 12, 2, 15, 7, 9, 4, 11, 6, 10]


@pytest.fixture(scope="module", params=KINDS)
def model(request) -> Transformer:
    return tiny_model(positional=request.param, max_relative_distance=3).double()


@pytest.fixture(scope="module")
def sources() -> list[list[int]]:
    return random_sources(12)


def test_greedy_cached_equals_uncached(model, sources):
    src = pad(sources)
    assert greedy_search(model, src, LIMITS) == greedy_search(model, src, LIMITS, use_cache=False)


def test_greedy_batched_equals_alone(model, sources):
    batched = greedy_search(model, pad(sources), LIMITS)
    alone = [greedy_search(model, pad([s]), n)[0] for s, n in zip(sources, LIMITS, strict=True)]
    assert batched == alone
    assert len({len(out) for out in batched}) > 2  # sentences end at varied lengths


def test_the_slot_stream_equals_lockstep_alone(model, sources):
    """Slots refilled mid-stream, each at its own position, decode as if alone."""
    limits = torch.tensor(LIMITS)
    batches = [(pad(sources[i : i + 4]), limits[i : i + 4]) for i in range(0, 12, 4)]
    stream = greedy_stream(model, iter(batches), 3)
    assert stream == greedy_search(model, pad(sources), LIMITS)


@pytest.mark.parametrize("use_cache", [True, False])
def test_beam_one_equals_greedy(model, sources, use_cache):
    greedy = greedy_search(model, pad(sources), LIMITS)
    beam = beam_search(model, pad(sources), 1, 0.6, LIMITS, use_cache=use_cache)
    assert [h[0][0] for h in beam] == greedy


def test_beam_cached_equals_uncached_and_batched_equals_alone(model, sources):
    src = pad(sources)
    cached = beam_search(model, src, 3, 0.6, LIMITS, nbest=3)
    uncached = beam_search(model, src, 3, 0.6, LIMITS, nbest=3, use_cache=False)
    assert [[ids for ids, _ in h] for h in cached] == [[ids for ids, _ in h] for h in uncached]
    for source, limit, hyps in zip(sources, LIMITS, cached, strict=True):
        alone = beam_search(model, pad([source]), 3, 0.6, limit, nbest=3)[0]
        assert [ids for ids, _ in alone] == [ids for ids, _ in hyps]


@pytest.mark.parametrize("batch_sentences", [5, 64])  # the slot stream, and one lockstep batch
def test_sampling_in_a_batch_equals_sampling_alone(model, sources, batch_sentences):
    decode = DecodeConfig(sample=True, seed=3, batch_sentences=batch_sentences)
    batched = decode_all(model, sources, decode, "cpu")
    alone = [decode_all(model, [s], decode, "cpu", first=i)[0] for i, s in enumerate(sources)]
    assert batched == alone
