"""The masked, label-smoothed loss: semantics pinned by hand, padding inert, sums accumulate."""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer_cli.core.specials import PAD_ID
from transformer_cli.training.loss import (
    LossParts,
    masked_cross_entropy,
    per_token,
    perplexity,
    projected_cross_entropy,
    split_loss,
)

EPS = [0.0, 0.1, 0.3]


def make(seed: int, b: int = 3, t: int = 5, v: int = 11, pad_frac: float = 0.3):
    """Random logits and targets where every row keeps at least one real token."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g) * 3
    target = torch.randint(1, v, (b, t), generator=g)  # real ids are never PAD_ID
    pad = torch.rand(b, t, generator=g) < pad_frac
    pad[:, 0] = False
    return logits, target.masked_fill(pad, PAD_ID)


def by_hand(logits: torch.Tensor, target: torch.Tensor, eps: float) -> tuple[float, float, int]:
    """Cross-entropy against q = (1-eps)*onehot + eps/V over all V columns, real positions only."""
    v = logits.shape[-1]
    loss = nll = 0.0
    count = 0
    for row, tgt in zip(logits.reshape(-1, v).tolist(), target.reshape(-1).tolist(), strict=True):
        if tgt == PAD_ID:
            continue
        log_z = math.log(sum(math.exp(x) for x in row))
        logp = [x - log_z for x in row]
        q = [eps / v + (1 - eps if k == tgt else 0.0) for k in range(v)]
        loss -= sum(qk * lk for qk, lk in zip(q, logp, strict=True))
        nll -= logp[tgt]
        count += 1
    return loss, nll, count


@pytest.mark.parametrize("eps", EPS)
@pytest.mark.parametrize("seed", range(3))
def test_matches_a_hand_computation(eps, seed):
    logits, target = make(seed)
    parts = masked_cross_entropy(logits, target, eps)
    loss, nll, count = by_hand(logits, target, eps)
    assert int(parts.n_tokens) == count == int((target != PAD_ID).sum())
    assert parts.loss.item() == pytest.approx(loss, rel=1e-5)
    assert parts.nll.item() == pytest.approx(nll, rel=1e-5)


@pytest.mark.parametrize("eps", EPS)
def test_mean_equals_masked_reduction_none(eps):
    logits, target = make(7)
    v = logits.shape[-1]
    mask = (target != PAD_ID).float()
    per_pos = F.cross_entropy(
        logits.reshape(-1, v), target.reshape(-1), reduction="none", label_smoothing=eps
    ).reshape(target.shape)
    expected = (per_pos * mask).sum() / mask.sum()
    parts = masked_cross_entropy(logits, target, eps)
    assert (parts.loss / parts.n_tokens).item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("eps", EPS)
def test_pad_positions_change_nothing(eps):
    logits, target = make(3)
    pad = target == PAD_ID
    assert pad.any()
    other = logits.clone()
    other[pad] = torch.randn(int(pad.sum()), logits.shape[-1]) * 50  # wild values at pads

    grads, losses = [], []
    for x in (logits, other):
        x = x.clone().requires_grad_(True)
        parts = masked_cross_entropy(x, target, eps)
        parts.loss.backward()
        grads.append(x.grad)
        losses.append((parts.loss.item(), parts.nll.item()))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0][pad].abs().max() == 0  # pads get no gradient at all
    assert grads[0][~pad].abs().max() > 0


@pytest.mark.parametrize("eps", EPS)
def test_smoothing_ignores_pads_and_gathered_positions_agree(eps):
    logits, target = make(5)
    real = target != PAD_ID
    full = masked_cross_entropy(logits, target, eps)
    gathered = masked_cross_entropy(logits[real], target[real], eps)  # (N, V), (N,)
    assert full.loss.item() == pytest.approx(gathered.loss.item(), rel=1e-6)
    assert full.nll.item() == pytest.approx(gathered.nll.item(), rel=1e-6)
    assert int(full.n_tokens) == int(gathered.n_tokens) == int(real.sum())


def test_smoothing_raises_the_loss_of_a_confident_correct_model():
    target = torch.tensor([4, 5, PAD_ID])
    logits = F.one_hot(target, 9).float() * 20
    plain = masked_cross_entropy(logits, target, 0.0)
    smooth = masked_cross_entropy(logits, target, 0.1)
    assert smooth.loss > plain.loss
    assert smooth.nll.item() == pytest.approx(plain.nll.item())  # nll is never smoothed


def test_all_pad_batch_is_zero_not_nan():
    logits = torch.randn(2, 3, 7, requires_grad=True)
    parts = masked_cross_entropy(logits, torch.full((2, 3), PAD_ID), 0.1)
    assert parts.loss.item() == 0.0
    assert int(parts.n_tokens) == 0
    parts.loss.backward()
    assert logits.grad.abs().max() == 0


def test_bf16_logits_are_scored_in_float32():
    logits, target = make(11)
    parts = masked_cross_entropy(logits.bfloat16(), target, 0.1)
    assert parts.loss.dtype == torch.float32
    ref = masked_cross_entropy(logits.bfloat16().float(), target, 0.1)
    assert parts.loss.item() == pytest.approx(ref.loss.item(), rel=1e-5)


@pytest.mark.parametrize("eps", [0.0, 0.1])
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), split=st.integers(1, 5))
def test_accumulated_halves_give_the_whole_batch_gradient(eps, seed, split):
    """Sums over micro-batches / total tokens == the whole batch's per-token loss."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 9)
    x = torch.randn(6, 7, 4)
    target = torch.randint(1, 9, (6, 7))
    lengths = torch.randint(1, 8, (6,))
    target = target.masked_fill(torch.arange(7) >= lengths[:, None], PAD_ID)  # ragged rows

    model.zero_grad()
    whole = masked_cross_entropy(model(x), target, eps)
    (whole.loss / whole.n_tokens).backward()
    expected = [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    halves = [(x[:split], target[:split]), (x[split:], target[split:])]
    total = sum(int((t != PAD_ID).sum()) for _, t in halves)
    for xs, ts in halves:
        (masked_cross_entropy(model(xs), ts, eps).loss / total).backward()
    for got, want in zip((p.grad for p in model.parameters()), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@given(nll=st.floats(0, 1e6), n=st.integers(1, 10**7))
def test_perplexity_is_exp_of_mean_nll_and_never_overflows(nll, n):
    ppl = perplexity(nll, n)
    assert per_token(nll, n) == nll / n
    try:
        expected = math.exp(nll / n)
    except OverflowError:  # beyond ~709.78 nats per token a double cannot hold it
        expected = math.inf
    assert ppl == pytest.approx(expected)


def test_no_tokens_gives_nan():
    assert math.isnan(per_token(0.0, 0))
    assert math.isnan(perplexity(0.0, 0))


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="do not match"):
        masked_cross_entropy(torch.randn(2, 3, 5), torch.ones(2, 4, dtype=torch.long))


# ---------------------------------------------------------------- the fused, chunked path


def plain_and_fused(seed: int, n: int, eps: float, rows: int, dtype=torch.float64):
    """Loss, NLL and both gradients by the plain path and by the chunked one."""
    g = torch.Generator().manual_seed(seed)
    d, v = 6, 13
    hidden = torch.randn(n, d, generator=g, dtype=dtype) * 2
    weight = torch.randn(v, d, generator=g, dtype=dtype)
    target = torch.randint(1, v, (n,), generator=g)  # real positions only
    results = []
    for fused in (False, True):
        h = hidden.clone().requires_grad_()
        w = weight.clone().requires_grad_()
        if fused:
            parts = projected_cross_entropy(h, w, target, eps, chunk_bytes=4 * v * rows)
        else:
            parts = masked_cross_entropy(h @ w.t(), target, eps)
        (parts.loss * 0.37).backward()  # an upstream scale must pass through
        results.append((parts, h.grad, w.grad))
    return results


@pytest.mark.parametrize("eps", EPS)
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 40), rows=st.integers(1, 50))
def test_fused_loss_equals_the_plain_one_for_any_chunking(eps, seed, n, rows):
    (plain, plain_h, plain_w), (fused, fused_h, fused_w) = plain_and_fused(seed, n, eps, rows)
    assert int(fused.n_tokens) == int(plain.n_tokens) == n
    torch.testing.assert_close(fused.loss, plain.loss)
    torch.testing.assert_close(fused.nll, plain.nll)
    torch.testing.assert_close(fused_h, plain_h)
    torch.testing.assert_close(fused_w, plain_w)


def test_fused_loss_without_gradients_still_scores():
    (plain, _, _), _ = plain_and_fused(3, 17, 0.1, 5)
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(17, 6, generator=g, dtype=torch.float64) * 2
    weight = torch.randn(13, 6, generator=g, dtype=torch.float64)
    target = torch.randint(1, 13, (17,), generator=g)
    with torch.no_grad():
        parts = projected_cross_entropy(hidden, weight, target, 0.1, chunk_bytes=4 * 13 * 5)
    assert not parts.loss.requires_grad
    torch.testing.assert_close(parts.loss, plain.loss.detach())


def test_fused_loss_in_bf16_matches_bf16_autocast():
    """Matmuls in bf16, softmax in fp32: as the plain path under autocast."""
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(64, 32, generator=g)
    weight = torch.randn(50, 32, generator=g) * 0.2
    target = torch.randint(1, 50, (64,), generator=g)
    grads = []
    for fused in (False, True):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if fused:
                parts = projected_cross_entropy(h, w, target, 0.1, torch.bfloat16, 4 * 50 * 16)
            else:
                parts = masked_cross_entropy(torch.nn.functional.linear(h, w), target, 0.1)
        parts.loss.backward()
        assert parts.loss.dtype == torch.float32
        assert h.grad.dtype == w.grad.dtype == torch.float32
        grads.append((parts.loss, h.grad, w.grad))
    for fused_x, plain_x in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(fused_x, plain_x, rtol=2e-2, atol=2e-2)


def test_fused_loss_checks_its_arguments():
    hidden, weight = torch.randn(4, 3), torch.randn(5, 3)
    with pytest.raises(ValueError, match="does not match"):
        projected_cross_entropy(hidden, weight, torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match="label_smoothing"):
        projected_cross_entropy(hidden, weight, torch.ones(4, dtype=torch.long), 1.0)


class MatmulCounter(torch.overrides.TorchFunctionMode):
    """Counts the matrix products a block of code asks torch for."""

    NAMES = {"mm", "addmm", "addmm_", "matmul", "__matmul__", "__rmatmul__"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += getattr(func, "__name__", "") in self.NAMES
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_fused_loss_under_no_grad_forms_no_gradients_even_for_trainable_tensors(eps):
    """Validation scores parameters that require grad: under no_grad it must only score."""
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(17, 6, generator=g, dtype=torch.float64)
    weight = torch.randn(13, 6, generator=g, dtype=torch.float64)
    target = torch.randint(1, 13, (17,), generator=g)
    runs = {}
    for trainable in (False, True):
        h = hidden.clone().requires_grad_(trainable)
        w = weight.clone().requires_grad_(trainable)
        with torch.no_grad(), MatmulCounter() as counter:
            parts = projected_cross_entropy(h, w, target, eps, chunk_bytes=4 * 13 * 5)
        runs[trainable] = parts, counter.count
    (frozen, frozen_mm), (trainable, trainable_mm) = runs[False], runs[True]
    assert frozen_mm > 0  # the counter sees the projection of every chunk
    assert trainable_mm == frozen_mm  # no gradient products on top of the projections
    assert not trainable.loss.requires_grad
    assert torch.equal(trainable.loss, frozen.loss)
    assert torch.equal(trainable.nll, frozen.nll)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("scale", [1.0, 30.0, 1e3])  # ~4, ~100 and ~4000 nats per token
def test_split_perplexity_is_exp_of_its_nll_at_any_size(monkeypatch, scale, fused):
    """Valid/test perplexity is exp(per-token NLL): no cap, inf only where exp overflows."""
    from transformer_cli.core.config import Config, ModelConfig, TrainConfig
    from transformer_cli.data.store import EncodedSplit
    from transformer_cli.model.transformer import Transformer
    from transformer_cli.training import loss as loss_mod

    real = loss_mod.batch_loss

    def scaled(*args, **kwargs):  # a model as much worse as `scale` says
        parts = real(*args, **kwargs)
        return LossParts(parts.loss * scale, parts.nll * scale, parts.n_tokens)

    monkeypatch.setattr(loss_mod, "batch_loss", scaled)
    torch.manual_seed(0)
    model_cfg = ModelConfig(
        src_vocab=30,
        tgt_vocab=30,
        d_model=16,
        heads=2,
        enc_layers=1,
        dec_layers=1,
        d_ff=32,
        dropout=0.0,
    )
    cfg = Config(run_dir="unused", model=model_cfg, train=TrainConfig(fused_loss=fused))
    src = [torch.randint(4, 30, (n,)).tolist() for n in (3, 5, 2)]
    tgt = [torch.randint(4, 30, (n,)).tolist() for n in (4, 2, 6)]
    split = EncodedSplit.from_lists(src, tgt)
    result = split_loss(Transformer(model_cfg), split, cfg, torch.device("cpu"), "fp32")
    assert result["tokens"] == 4 + 2 + 6 + 3  # every target and its EOS
    if result["nll"] > math.log(sys.float_info.max):
        assert result["ppl"] == math.inf
    else:  # nll is rounded to 4 decimals, so exp of it is within a relative 1e-4
        assert result["ppl"] == pytest.approx(math.exp(result["nll"]), rel=2e-4)
