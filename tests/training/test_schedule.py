"""Learning-rate schedules: the formulas, where they peak, and their shape."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transformer_cli.core.config import TrainConfig
from transformer_cli.training.schedule import constant, inverse_sqrt, learning_rate, noam


# Eq. 3 of Vaswani et al. 2017 with the paper's base model (d_model 512, warmup 4000),
# worked by hand: d_model^-0.5 = 1/22.627 = 0.044194; 4000^-0.5 = 0.015811;
# 4000^-1.5 = 0.015811 / 4000 = 3.9528e-6; 16000^-0.5 = 0.0079057.
@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (1, 1.747e-7),  # 0.044194 * 1 * 3.9528e-6: the first update, on the warmup line
        (4000, 6.988e-4),  # 0.044194 * 0.015811: the peak, where the two terms meet
        (16000, 3.494e-4),  # 0.044194 * 0.0079057: four times the steps, half the rate
    ],
)
def test_noam_at_points_worked_out_by_hand(step, expected):
    assert noam(step, 512, 4000) == pytest.approx(expected, rel=1e-3)


@given(step=st.integers(1, 10**6), warmup=st.integers(1, 20_000), factor=st.floats(0.1, 10))
def test_noam_is_linear_in_its_factor_and_in_d_model_to_the_minus_half(step, warmup, factor):
    base = noam(step, 512, warmup)
    assert noam(step, 512, warmup, factor) == pytest.approx(factor * base, rel=1e-12)
    assert noam(step, 128, warmup) == pytest.approx(2 * base, rel=1e-12)  # 4x smaller model


@given(warmup=st.integers(2, 20_000), k=st.integers(2, 50))
def test_noam_grows_linearly_in_warmup_and_decays_as_one_over_sqrt_after(warmup, k):
    peak = noam(warmup, 512, warmup)
    if warmup % k == 0:  # a k-th of the warmup: a k-th of the peak
        assert noam(warmup // k, 512, warmup) == pytest.approx(peak / k, rel=1e-12)
    assert noam(k * warmup, 512, warmup) == pytest.approx(peak / math.sqrt(k), rel=1e-12)


@pytest.mark.parametrize("warmup", [1, 7, 400, 4000])
def test_noam_peaks_at_warmup_and_rises_then_falls(warmup):
    steps = range(1, 3 * warmup + 10)
    values = [noam(s, 512, warmup, 2.0) for s in steps]
    assert max(range(len(values)), key=values.__getitem__) + 1 == warmup
    rising, falling = values[:warmup], values[warmup - 1 :]
    assert all(a < b for a, b in zip(rising, rising[1:], strict=False))
    assert all(a > b for a, b in zip(falling, falling[1:], strict=False))


@pytest.mark.parametrize(
    ("step", "expected"),
    [(1000, 2.5e-4), (4000, 1e-3), (16000, 5e-4), (64000, 2.5e-4)],  # peak 1e-3, warmup 4000
)
def test_inverse_sqrt_at_points_worked_out_by_hand(step, expected):
    assert inverse_sqrt(step, 1e-3, 4000) == pytest.approx(expected, rel=1e-12)


@given(step=st.integers(1, 10**6), peak=st.floats(1e-6, 1.0), warmup=st.integers(1, 20_000))
def test_inverse_sqrt_never_exceeds_its_peak(step, peak, warmup):
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
