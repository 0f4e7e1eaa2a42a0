"""The CPU dropout: right keep rate in every lane, unbiased, same mask forward and back."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer_cli.fast.dropout import Dropout, dropout, keep_mask

N = 400_000


def within(observed: float, expected: float, n: int, p: float) -> bool:
    """Within 6 standard errors of a binomial proportion."""
    return abs(observed - expected) <= 6 * math.sqrt(p * (1 - p) / n) + 1e-6


@settings(max_examples=15, deadline=None)
@given(p=st.floats(0.01, 0.9), seed=st.integers(0, 2**31))
def test_keep_rate_is_one_minus_p_in_every_lane(p, seed):
    torch.manual_seed(seed)
    keep = keep_mask(torch.Size([N]), p).float()
    assert within(keep.mean().item(), 1 - p, N, p)
    for lane in range(4):  # each 16-bit lane of a 64-bit draw is a fair coin on its own
        assert within(keep[lane::4].mean().item(), 1 - p, N // 4, p)


def test_neighbouring_elements_are_independent():
    torch.manual_seed(0)
    keep = keep_mask(torch.Size([N]), 0.5).float()
    both = (keep[:-1] * keep[1:]).mean().item()  # P(keep_i and keep_i+1) = 0.25 if independent
    assert within(both, 0.25, N, 0.25)


def test_expectation_is_preserved_and_dropped_elements_are_zero():
    torch.manual_seed(1)
    y = dropout(torch.ones(N), 0.3, training=True)
    values = torch.unique(y).tolist()
    assert len(values) == 2
    assert values[0] == 0.0
    assert values[1] == pytest.approx(1 / 0.7)
    assert abs(y.mean().item() - 1.0) < 0.01


def test_gradient_uses_the_forward_mask_and_scale():
    torch.manual_seed(2)
    x = torch.randn(64, 33, requires_grad=True)
    y = dropout(x, 0.2, training=True)
    upstream = torch.randn_like(y)
    y.backward(upstream)
    kept = y != 0
    torch.testing.assert_close(x.grad, torch.where(kept, upstream / 0.8, 0.0))


def test_identity_in_eval_and_at_zero():
    x = torch.randn(10, 7)
    module = Dropout(0.5).eval()
    assert module(x) is x
    assert dropout(x, 0.0, training=True) is x


def test_same_seed_same_mask_and_successive_masks_differ():
    torch.manual_seed(3)
    a = keep_mask(torch.Size([1000]), 0.5)
    b = keep_mask(torch.Size([1000]), 0.5)
    torch.manual_seed(3)
    assert torch.equal(keep_mask(torch.Size([1000]), 0.5), a)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_probability_out_of_range(p):
    with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
        Dropout(p)
