"""Search properties on tiny random models: cache, batching and beam-1 invariances, scores."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from helpers import FIRST_REAL, BigramModel, pad, random_sources, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer_cli.core.config import DecodeConfig
from transformer_cli.core.specials import BOS_ID, EOS_ID
from transformer_cli.decoding.runner import Greedy, Plan, choose, decode_all, run
from transformer_cli.decoding.search import beam_search, greedy_search, length_penalty
from transformer_cli.decoding.stream import greedy_stream
from transformer_cli.model.transformer import Transformer


def teacher_forced_logp(model, source: list[int], target: list[int]) -> list[float]:
    """log p(target[i] | source, target[:i]) for every position, by a full forward."""
    src = torch.tensor([source])
    tgt_in = torch.tensor([[BOS_ID] + target[:-1]])
    with torch.no_grad():
        logp = model(src, tgt_in).float().log_softmax(-1)[0]  # (T, V)
    return [float(logp[i, tok]) for i, tok in enumerate(target)]


@pytest.fixture(scope="module")
def model() -> Transformer:
    return tiny_model()


@pytest.fixture(scope="module")
def sources() -> list[list[int]]:
    return random_sources(12)


LIMITS = [3, 5, 8, 12, 2, 15, 7, 9, 4, 11, 6, 10]


def test_greedy_stops_at_eos_or_limit(model, sources):
    outs = greedy_search(model, pad(sources), LIMITS)
    assert all(len(o) <= n and EOS_ID not in o for o, n in zip(outs, LIMITS, strict=True))
    # the setup must exercise both endings, or the other tests prove less than they claim
    assert any(len(o) < n for o, n in zip(outs, LIMITS, strict=True))
    assert any(len(o) == n for o, n in zip(outs, LIMITS, strict=True))


def test_greedy_cached_equals_uncached(model, sources):
    src = pad(sources)
    assert greedy_search(model, src, LIMITS) == greedy_search(model, src, LIMITS, use_cache=False)


def test_greedy_picks_the_argmax_of_a_full_forward(model, sources):
    for source, out, limit in zip(
        sources, greedy_search(model, pad(sources), LIMITS), LIMITS, strict=True
    ):
        with torch.no_grad():
            logits = model(torch.tensor([source]), torch.tensor([[BOS_ID] + out]))[0]
        expected = logits.argmax(-1).tolist()  # (T,) the argmax after each prefix
        assert out == expected[: len(out)]
        if len(out) < limit:
            assert expected[len(out)] == EOS_ID


def test_greedy_batched_equals_one_at_a_time(model, sources):
    batched = greedy_search(model, pad(sources), LIMITS)
    alone = [greedy_search(model, pad([s]), n)[0] for s, n in zip(sources, LIMITS, strict=True)]
    assert batched == alone


@pytest.fixture(scope="module")
def model64() -> Transformer:
    """The tiny model in float64, where batch composition cannot flip a near-tie."""
    return tiny_model().double()


@settings(max_examples=25, deadline=None)
@given(
    batch_sizes=st.lists(st.integers(1, 5), min_size=1, max_size=5),
    slots=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_greedy_stream_gives_each_sentence_its_output_alone(model64, batch_sizes, slots, seed):
    """Sentences taking over finished ones' slots, at any point, decode as if alone."""
    sources = random_sources(sum(batch_sizes), seed=seed)
    g = torch.Generator().manual_seed(seed)
    limits = torch.randint(1, 16, (len(sources),), generator=g)
    batches, start = [], 0
    for size in batch_sizes:
        batches.append((pad(sources[start : start + size]), limits[start : start + size]))
        start += size
    outs = greedy_stream(model64, iter(batches), slots)
    alone = [
        greedy_search(model64, pad([s]), int(n))[0] for s, n in zip(sources, limits, strict=True)
    ]
    assert outs == alone


def test_greedy_stream_of_nothing_is_nothing(model):
    assert greedy_stream(model, iter([]), 4) == []


@pytest.mark.parametrize("batch_sentences", [1, 3, 64])
def test_decode_all_refill_changes_no_output(model64, sources, batch_sentences):
    cfg = DecodeConfig(beam=1, max_len_a=1.0, max_len_b=4, batch_sentences=batch_sentences)
    refilled = decode_all(model64, sources, cfg, "cpu")
    cpu = torch.device("cpu")
    plan = Plan.of(sources, cfg, model64.cfg.max_positions, cpu)
    greedy = choose(cfg, 1, cpu)
    assert isinstance(greedy, Greedy)
    assert refilled == run(model64, plan, dataclasses.replace(greedy, refill=False))
    assert refilled == run(model64, plan, dataclasses.replace(greedy, use_cache=False))


def test_decoding_keeps_autocasts_weight_copies(model, sources, monkeypatch):
    """Under inference_mode, autocast re-casts every weight at every step (measured: a
    third of bf16 greedy decoding's time); decode_all must run under no_grad instead."""
    seen = []
    real = model.logits

    def spy(hidden):
        seen.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled()))
        return real(hidden)

    monkeypatch.setattr(model, "logits", spy)
    decode_all(model, sources[:3], DecodeConfig(beam=1), "cpu", "bf16")
    assert seen
    assert set(seen) == {(False, False)}


@pytest.mark.parametrize("use_cache", [True, False])
def test_beam_one_equals_greedy(model, sources, use_cache):
    greedy = greedy_search(model, pad(sources), LIMITS)
    beam = beam_search(model, pad(sources), 1, 0.6, LIMITS, use_cache=use_cache)
    assert [h[0][0] for h in beam] == greedy


def test_beam_cached_equals_uncached(model, sources):
    src = pad(sources)
    cached = beam_search(model, src, 4, 0.6, LIMITS, nbest=4)
    uncached = beam_search(model, src, 4, 0.6, LIMITS, nbest=4, use_cache=False)
    assert [[ids for ids, _ in h] for h in cached] == [[ids for ids, _ in h] for h in uncached]
    for a, b in zip(cached, uncached, strict=True):
        assert [s for _, s in a] == pytest.approx([s for _, s in b], abs=1e-4)


def test_beam_batched_equals_one_at_a_time(model, sources):
    batched = beam_search(model, pad(sources), 3, 0.6, LIMITS, nbest=2)
    for source, limit, hyps in zip(sources, LIMITS, batched, strict=True):
        alone = beam_search(model, pad([source]), 3, 0.6, limit, nbest=2)[0]
        assert [ids for ids, _ in alone] == [ids for ids, _ in hyps]


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_scores_are_normalised_log_probabilities(model, sources, alpha):
    results = beam_search(model, pad(sources), 4, alpha, LIMITS, nbest=3)
    for source, limit, hyps in zip(sources, LIMITS, results, strict=True):
        assert len(hyps) == 3
        scores = [s for _, s in hyps]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(ids) for ids, _ in hyps}) == 3  # distinct hypotheses
        for ids, score in hyps:
            assert len(ids) <= limit
            assert EOS_ID not in ids
            # shorter than the limit means it ended with EOS, which is scored too
            target = ids + [EOS_ID] if len(ids) < limit else ids
            logp = sum(teacher_forced_logp(model, source, target))
            assert score == pytest.approx(logp / length_penalty(len(target), alpha), abs=1e-3)


A, B = FIRST_REAL, FIRST_REAL + 1
# EOS first is the most probable step, but "A EOS" wins once lengths are normalised
# at alpha 1: log(0.44 * 0.99) / (7/6) = -0.71 > log(0.45) / 1 = -0.80
SHORT_OR_LONG = {
    BOS_ID: {EOS_ID: 0.45, A: 0.44, B: 0.11},
    A: {EOS_ID: 0.99, B: 0.01},
    B: {EOS_ID: 0.5, A: 0.5},
}


@pytest.mark.parametrize("use_cache", [True, False])
def test_beam_waits_for_k_finished_hypotheses(use_cache):
    model = BigramModel(SHORT_OR_LONG)
    src = torch.tensor([[A]])
    full = beam_search(model, src, 2, 1.0, 5, use_cache=use_cache)[0]
    early = beam_search(model, src, 2, 1.0, 5, use_cache=use_cache, early_stop=True)[0]
    assert full[0][0] == [A]
    assert full[0][1] == pytest.approx(math.log(0.44 * 0.99) / length_penalty(2, 1.0), abs=1e-5)
    assert early[0][0] == []  # stopped at the first step: its best candidate was EOS
    # at alpha 0 the early rule is exact: nothing live can overtake a finished hypothesis
    assert beam_search(model, src, 2, 0.0, 5, early_stop=True)[0][0][0] == []
    assert beam_search(model, src, 2, 0.0, 5)[0][0][0] == []


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_waiting_for_k_finished_never_does_worse_than_stopping_early(model, sources, alpha):
    # both searches walk the same path until the early rule stops; waiting for K finished
    # hypotheses only adds candidates, so its best normalised score is never lower
    src = pad(sources)
    full = beam_search(model, src, 4, alpha, LIMITS, nbest=1)
    early = beam_search(model, src, 4, alpha, LIMITS, nbest=1, early_stop=True)
    for f, e in zip(full, early, strict=True):
        assert f[0][1] >= e[0][1] - 1e-5


def test_nbest_must_fit_in_the_beam(model, sources):
    with pytest.raises(ValueError, match="1 <= nbest <= beam"):
        beam_search(model, pad(sources), 2, 0.6, 5, nbest=3)


def test_limits_are_capped_by_the_models_positions(sources):
    # untrained with xavier embeddings, so it never says EOS: only the cap stops it before
    # position 6 overflows
    model = tiny_model(train_steps=0, max_positions=6, embedding_init="xavier")
    src = pad([s[:6] for s in sources])
    assert all(len(o) == 6 for o in greedy_search(model, src, 100))
    assert all(len(h[0][0]) == 6 for h in beam_search(model, src, 2, 0.6, 100))


def test_decode_all_keeps_input_order_and_handles_empty_sources(model, sources):
    mixed = [[], *sources[:5], [], *sources[5:], []]
    cfg = DecodeConfig(beam=1, max_len_a=1.0, max_len_b=3, batch_sentences=4)
    outs = decode_all(model, mixed, cfg, "cpu")
    assert len(outs) == len(mixed)
    assert outs[0] == []
    assert outs[6] == []
    assert outs[-1] == []
    for source, out in zip(mixed, outs, strict=True):
        if source:
            limit = int(1.0 * len(source) + 3)
            assert out == greedy_search(model, pad([source]), limit)[0]
    assert decode_all(model, [], cfg, "cpu") == []
    assert decode_all(model, [[], []], cfg, "cpu") == [[], []]


def test_decode_all_nbest_returns_scored_lists(model, sources):
    cfg = DecodeConfig(beam=3, batch_sentences=5)
    outs = decode_all(model, [*sources, []], cfg, "cpu", nbest=3)
    assert all(len(h) == 3 for h in outs)
    assert outs[-1] == [([], 0.0)] * 3
    best = decode_all(model, sources, cfg, "cpu")  # nbest 1: plain id lists
    assert best == [h[0][0] for h in outs[:-1]]
    assert all(math.isfinite(s) for h in outs for _, s in h)


def test_decode_all_restores_training_mode(sources):
    model = tiny_model(train_steps=0).train()
    decode_all(model, sources[:3], DecodeConfig(), "cpu")
    assert model.training
