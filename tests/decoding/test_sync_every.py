"""Checking for finished sentences every k steps: the same outputs as every step, fewer reads."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from helpers import pad, random_sources, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer_cli.core.config import DecodeConfig
from transformer_cli.decoding import host_sync
from transformer_cli.decoding.runner import decode_all
from transformer_cli.decoding.search import greedy_search
from transformer_cli.decoding.stream import greedy_stream

KS = [1, 3, 8]
MAX_POSITIONS = 40


@pytest.fixture(scope="module")
def model():
    return tiny_model(max_positions=MAX_POSITIONS)


@pytest.fixture(scope="module")
def model64():
    """In float64, where batch composition cannot flip a near-tie."""
    return tiny_model(max_positions=MAX_POSITIONS).double()


@pytest.fixture(scope="module")
def babbler():
    """Untrained, with xavier embeddings: it never says EOS, so every sentence runs to its cap."""
    return tiny_model(train_steps=0, max_positions=MAX_POSITIONS, embedding_init="xavier")


@pytest.fixture(scope="module")
def uneven():
    """Sources of 1 to 30 pieces with caps from 1 to the model's positions: very different
    lengths, ending at EOS or at the cap, a few at the last position the model has."""
    sources = random_sources(16, seed=7, max_len=30)
    caps = [1, 40, 3, 25, 40, 7, 2, 33, 12, 40, 5, 18, 9, 1, 28, 14]
    return sources, caps


def counting_reads(monkeypatch) -> list[int]:
    """Count `host_sync.to_host` calls: one entry per read, its tensor's size."""
    reads: list[int] = []
    real = host_sync.to_host

    def spy(t):
        reads.append(t.numel())
        return real(t)

    monkeypatch.setattr(host_sync, "to_host", spy)
    return reads


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("k", KS[1:])
def test_greedy_output_is_the_same_for_every_k(model, babbler, uneven, k, use_cache):
    sources, caps = uneven
    src = pad(sources)
    for m in (model, babbler):
        every_step = greedy_search(m, src, caps, use_cache)
        assert greedy_search(m, src, caps, use_cache, sync_every=k) == every_step
    # the trained model ends sentences both ways, or the check above proves less
    outs = greedy_search(model, src, caps)
    assert any(len(o) < n for o, n in zip(outs, caps, strict=True))
    assert any(len(o) == n > 1 for o, n in zip(outs, caps, strict=True))


@pytest.mark.parametrize("k", KS)
def test_greedy_batched_equals_one_at_a_time_for_every_k(model, uneven, k):
    sources, caps = uneven
    batched = greedy_search(model, pad(sources), caps, sync_every=k)
    alone = [greedy_search(model, pad([s]), n)[0] for s, n in zip(sources, caps, strict=True)]
    assert batched == alone


@pytest.mark.parametrize("k", KS)
def test_greedy_reads_the_device_once_per_k_steps(babbler, monkeypatch, k):
    reads = counting_reads(monkeypatch)
    greedy_search(babbler, pad(random_sources(4)), 12, sync_every=k)
    # a check after steps k, 2k, .. but not after the last, when every row is done
    assert len(reads) == (12 - 1) // k


@pytest.mark.parametrize("k", KS)
def test_stream_output_is_the_same_for_every_k(model64, babbler, uneven, k):
    sources, caps = uneven
    batches = [(pad(sources[i : i + 4]), torch.tensor(caps[i : i + 4])) for i in (0, 4, 8, 12)]
    for m in (model64, copy.deepcopy(babbler).double()):
        alone = [greedy_search(m, pad([s]), n)[0] for s, n in zip(sources, caps, strict=True)]
        assert greedy_stream(m, iter(batches), 5, sync_every=k) == alone


@settings(max_examples=15, deadline=None)
@given(
    batch_sizes=st.lists(st.integers(1, 5), min_size=1, max_size=5),
    slots=st.integers(1, 6),
    k=st.integers(2, 9),
    seed=st.integers(0, 2**16),
)
def test_stream_with_any_k_decodes_each_sentence_as_alone(model64, batch_sizes, slots, k, seed):
    sources = random_sources(sum(batch_sizes), seed=seed, max_len=20)
    g = torch.Generator().manual_seed(seed)
    limits = torch.randint(1, MAX_POSITIONS + 1, (len(sources),), generator=g)
    batches, start = [], 0
    for size in batch_sizes:
        batches.append((pad(sources[start : start + size]), limits[start : start + size]))
        start += size
    alone = [
        greedy_search(model64, pad([s]), int(n))[0] for s, n in zip(sources, limits, strict=True)
    ]
    assert greedy_stream(model64, iter(batches), slots, sync_every=k) == alone


@pytest.mark.parametrize(("k", "expected"), [(1, 12), (3, 4), (8, 2)])
def test_stream_reads_once_per_k_steps_and_at_a_cap(babbler, monkeypatch, k, expected):
    reads = counting_reads(monkeypatch)
    batch = (pad(random_sources(4)), torch.full((4,), 12))
    greedy_stream(babbler, iter([batch]), 4, sync_every=k)
    # k = 8: a check after 8 steps, then one after 4 more, when every slot is at its cap
    assert len(reads) == expected


def test_stream_reads_less_on_a_trained_model(model, uneven, monkeypatch):
    sources, caps = uneven
    batches = [(pad(sources[i : i + 4]), torch.tensor(caps[i : i + 4])) for i in (0, 4, 8, 12)]
    reads = counting_reads(monkeypatch)
    counts = []
    for k in KS:
        reads.clear()
        greedy_stream(model, iter(batches), 4, sync_every=k)
        counts.append(len(reads))
    assert counts[0] > counts[1] > counts[2]


def counting_rows(model, monkeypatch) -> list[int]:
    """Count the rows the decoder runs: one entry per step, its rows (sentences or slots)."""
    rows: list[int] = []
    real = model.logits

    def spy(hidden):
        rows.append(hidden.size(0))
        return real(hidden)

    monkeypatch.setattr(model, "logits", spy)
    return rows


@pytest.mark.parametrize("k", KS[1:])
def test_a_finished_sentence_decodes_at_most_k_minus_1_extra_steps(model, uneven, k, monkeypatch):
    sources, caps = uneven
    batches = [(pad(sources[i : i + 4]), torch.tensor(caps[i : i + 4])) for i in (0, 4, 8, 12)]
    rows = counting_rows(model, monkeypatch)
    runs = {
        "search": lambda k: greedy_search(model, pad(sources), caps, sync_every=k),
        "stream": lambda k: greedy_stream(model, iter(batches), 4, sync_every=k),
    }
    for run in runs.values():
        rows.clear()
        run(1)
        every_step = sum(rows)
        rows.clear()
        run(k)
        assert every_step <= sum(rows) <= every_step + (k - 1) * len(sources)


def test_decode_all_resolves_auto_by_device_and_keeps_its_outputs(model, uneven, monkeypatch):
    assert host_sync.sync_every_for(0, torch.device("cpu")) == 1
    assert host_sync.sync_every_for(0, torch.device("cuda")) == 8
    assert host_sync.sync_every_for(5, torch.device("cpu")) == 5
    sources, _ = uneven
    reads = counting_reads(monkeypatch)
    counts, outs = [], []
    for k in (0, 1, 4):
        reads.clear()
        cfg = DecodeConfig(beam=1, batch_sentences=4, sync_every=k)
        outs.append(decode_all(model, sources, cfg, "cpu"))
        counts.append(len(reads))
    assert outs[0] == outs[1] == outs[2]
    assert counts[0] == counts[1] > counts[2]  # auto on the CPU: a check at every step


def test_a_search_needs_k_of_at_least_one(model, uneven):
    sources, caps = uneven
    with pytest.raises(ValueError, match="sync_every must be >= 1"):
        greedy_search(model, pad(sources), caps, sync_every=0)
    with pytest.raises(ValueError, match="sync_every must be >= 1"):
        greedy_stream(model, iter([(pad(sources), torch.tensor(caps))]), 4, sync_every=0)


def cuda_syncs(run) -> int:
    """How many synchronizing CUDA operations `run()` makes (torch's sync debug mode)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="sync debug mode needs CUDA")
def test_on_cuda_the_checks_are_the_only_syncs_per_step(monkeypatch):
    # untrained with xavier embeddings: never says EOS
    model = tiny_model(train_steps=0, max_positions=MAX_POSITIONS, embedding_init="xavier").cuda()
    src = pad(random_sources(8)).cuda()
    reads = counting_reads(monkeypatch)
    syncs, checks = {}, {}
    for cap in (MAX_POSITIONS // 2, MAX_POSITIONS):
        batch = (src, torch.full((8,), cap))
        for k in (1, 8):
            for name, run in (
                ("search", lambda k=k, cap=cap: greedy_search(model, src, cap, sync_every=k)),
                ("stream", lambda k=k, b=batch: greedy_stream(model, iter([b]), 8, sync_every=k)),
            ):
                reads.clear()
                syncs[name, cap, k] = cuda_syncs(run)
                checks[name, cap, k] = len(reads)
    for name in ("search", "stream"):
        # the rest (encoding, filling slots, the last read) costs the same at any length
        # and any k: nothing but the checks syncs once per step
        others = {syncs[key] - checks[key] for key in syncs if key[0] == name}
        assert len(others) == 1, (name, syncs, checks)
        assert checks[name, MAX_POSITIONS, 8] <= MAX_POSITIONS // 8
        assert syncs[name, MAX_POSITIONS, 8] < syncs[name, MAX_POSITIONS, 1]
