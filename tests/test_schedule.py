"""Learning-rate schedules: the formulas, where they peak, and their shape."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transformer_cli.core.config import TrainConfig
from transformer_cli.training.schedule import constant, inverse_sqrt, learning_rate, noam


@given(
    step=st.integers(1, 10**6),
    d_model=st.sampled_from([64, 256, 512, 1024]),
    warmup=st.integers(1, 20_000),
    factor=st.floats(0.1, 10),
)
def test_noam_is_eq3(step, d_model, warmup, factor):
    expected = factor / math.sqrt(d_model) * min(1 / math.sqrt(step), step / warmup**1.5)
    assert noam(step, d_model, warmup, factor) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("warmup", [1, 7, 400, 4000])
def test_noam_peaks_at_warmup_and_rises_then_falls(warmup):
    steps = range(1, 3 * warmup + 10)
    values = [noam(s, 512, warmup, 2.0) for s in steps]
    assert max(range(len(values)), key=values.__getitem__) + 1 == warmup
    rising, falling = values[:warmup], values[warmup - 1 :]
    assert all(a < b for a, b in zip(rising, rising[1:], strict=False))
    assert all(a > b for a, b in zip(falling, falling[1:], strict=False))


@given(step=st.integers(1, 10**6), peak=st.floats(1e-6, 1.0), warmup=st.integers(1, 20_000))
def test_inverse_sqrt_formula(step, peak, warmup):
    expected = peak * step / warmup if step <= warmup else peak * math.sqrt(warmup / step)
    assert inverse_sqrt(step, peak, warmup) == pytest.approx(expected, rel=1e-12)
    assert 0 < inverse_sqrt(step, peak, warmup) <= peak * (1 + 1e-12)


@pytest.mark.parametrize("warmup", [1, 10, 4000])
def test_inverse_sqrt_reaches_peak_at_warmup_and_is_continuous(warmup):
    peak = 7e-4
    assert inverse_sqrt(warmup, peak, warmup) == pytest.approx(peak)
    # no jump when the warmup line hands over to the 1/sqrt decay
    before, after = inverse_sqrt(warmup, peak, warmup), inverse_sqrt(warmup + 1, peak, warmup)
    assert after < before
    assert after == pytest.approx(peak * math.sqrt(warmup / (warmup + 1)))


def test_dispatch_follows_the_config():
    cfg = TrainConfig(warmup=100, noam_factor=1.5, lr=3e-4)
    for step in (1, 50, 100, 1000):
        assert learning_rate(step, cfg, 256) == noam(step, 256, 100, 1.5)
        inv = dataclasses.replace(cfg, schedule="inverse_sqrt")
        assert learning_rate(step, inv, 256) == inverse_sqrt(step, 3e-4, 100)
        const = dataclasses.replace(cfg, schedule="constant")
        assert learning_rate(step, const, 256) == constant(step, 3e-4) == 3e-4


@pytest.mark.parametrize("fn", [lambda s: noam(s, 512, 10), lambda s: inverse_sqrt(s, 1e-3, 10)])
def test_step_zero_is_rejected(fn):
    with pytest.raises(ValueError, match="1-based"):
        fn(0)
