"""The decoding limits (decoding/limits.py): the rules once, and tfx's searches obey them.

The CTranslate2 backend's use of the same rules is tested in tests/export/test_limits_ct2.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import pad, random_sources, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer_cli.core.config import DecodeConfig
from transformer_cli.decoding import limits
from transformer_cli.decoding.runner import decode_all
from transformer_cli.decoding.search import beam_search, greedy_search

lengths = st.integers(min_value=0, max_value=600)
positions = st.integers(min_value=1, max_value=512)
a_values = st.floats(min_value=0.0, max_value=4.0, allow_nan=False)
b_values = st.integers(min_value=-20, max_value=50)


@given(lengths, a_values, b_values, positions)
def test_an_output_cap_is_a_times_n_plus_b_within_one_and_the_positions(n, a, b, p):
    cap = limits.output_cap(n, DecodeConfig(max_len_a=a, max_len_b=b), p)
    assert 1 <= cap <= p
    if 1 <= int(a * n + b) <= p:
        assert cap == int(a * n + b)


@given(st.lists(st.lists(st.integers(0, 99), max_size=20), max_size=10), positions)
def test_fitted_sources_are_prefixes_that_fit_and_the_cut_ones_are_named(sources, p):
    fitted, cut = limits.fit_sources(sources, p)
    assert len(fitted) == len(sources)
    for i, (before, after) in enumerate(zip(sources, fitted, strict=True)):
        assert after == before[:p]
        assert (i in cut) == (len(before) > p)


@settings(max_examples=50)
@given(st.lists(st.integers(-5, 900), min_size=1, max_size=8), positions)
def test_clamped_caps_lie_between_one_and_the_positions(caps, p):
    clamped = limits.clamp_caps(caps, len(caps), p)
    assert clamped.tolist() == [min(max(c, 1), p) for c in caps]
    assert limits.clamp_caps(7, 3, p).tolist() == [min(7, p)] * 3


def test_clamp_caps_refuses_caps_of_the_wrong_shape():
    with pytest.raises(ValueError, match="shape"):
        limits.clamp_caps([1, 2], 3, 10)


@pytest.fixture(scope="module")
def model():
    # untrained, with xavier embeddings: near-uniform scores that never reach EOS
    return tiny_model(train_steps=0, max_positions=12, embedding_init="xavier")


@pytest.mark.parametrize("beam", [1, 3])
def test_decode_all_takes_its_caps_and_truncation_from_limits(model, monkeypatch, beam):
    """Spies on the two rules: whatever they say, decode_all's outputs follow."""
    sources = random_sources(7, max_len=9)
    calls = {"fit": 0, "cap": 0}
    real_fit = limits.fit_sources

    def fit(sources, positions):  # noqa: ARG001 (the rule's signature)
        calls["fit"] += 1
        return real_fit(sources, 2)  # every source cut to its first two pieces

    def cap(n_source, decode, positions):  # noqa: ARG001 (the rule's signature)
        calls["cap"] += 1
        return 3

    monkeypatch.setattr(limits, "fit_sources", fit)
    monkeypatch.setattr(limits, "output_cap", cap)
    decode = DecodeConfig(beam=beam, batch_sentences=3)
    outs = decode_all(model, sources, decode, "cpu")
    assert calls == {"fit": 1, "cap": len(sources)}
    monkeypatch.undo()
    src = pad([s[:2] for s in sources])
    if beam == 1:
        expected = greedy_search(model, src, 3)
    else:
        expected = [h[0][0] for h in beam_search(model, src, beam, decode.alpha, 3)]
    assert outs == expected  # the sources as fit_sources cut them, at the caps it gave


def test_the_searches_never_pass_the_models_positions(model):
    """A cap beyond the positions is clamped by limits.clamp_caps in both searches."""
    src = torch.tensor(random_sources(3, max_len=4, seed=2)[0:1])
    decode = dataclasses.replace(DecodeConfig(), max_len_b=1000)
    assert len(decode_all(model, src.tolist(), decode, "cpu")[0]) == model.cfg.max_positions
    assert len(greedy_search(model, src, 1000)[0]) == model.cfg.max_positions
    assert len(beam_search(model, src, 2, 0.6, 1000)[0][0][0]) == model.cfg.max_positions
