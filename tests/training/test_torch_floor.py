"""The step on the oldest torch pyproject.toml admits: what a release may lack, the step
does without, and gives the same numbers.

- `torch.nn.utils.get_total_norm` came after torch 2.4: without it `step.grad_norm`
  takes the norm itself (`norm_of_norms`).
- `found_inf`, how GradScaler has a fused optimizer skip an update on the device, is
  promised by no documentation: a fused optimizer that ignores it is found out
  (`honours_found_inf`) and its updates are decided on the host.
Each fallback is forced here on the installed torch and compared with the primary path.
"""

from __future__ import annotations

import pytest
import torch

from transformer_cli.training import step


def params_with_grads(fill: float | None = None) -> list[torch.nn.Parameter]:
    """Parameters of a few shapes with random gradients; `fill` goes into one element."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(*shape, generator=gen)) for shape in SHAPES]
    for p in params[:-1]:  # the last has no gradient, as a parameter the loss left out
        p.grad = torch.randn(p.shape, generator=gen)
    if fill is not None:
        params[1].grad.view(-1)[3] = fill  # type: ignore[union-attr]
    return params


SHAPES = [(7, 5), (11,), (3, 4, 2), (6,)]


@pytest.mark.parametrize("fill", [None, float("inf"), float("nan")])
def test_without_get_total_norm_the_norm_is_the_same(monkeypatch, fill):
    params = params_with_grads(fill)
    primary = step.grad_norm(params, clip_norm=0.0)
    monkeypatch.delattr(torch.nn.utils, "get_total_norm")
    fallback = step.grad_norm(params, clip_norm=0.0)
    torch.testing.assert_close(fallback, primary, rtol=0, atol=0, equal_nan=True)
    assert torch.isfinite(fallback) == (fill is None)


def test_without_get_total_norm_no_gradient_has_norm_zero(monkeypatch):
    params = [torch.nn.Parameter(torch.ones(3))]
    primary = step.grad_norm(params, clip_norm=0.0)
    monkeypatch.delattr(torch.nn.utils, "get_total_norm")
    assert float(step.grad_norm(params, clip_norm=0.0)) == float(primary) == 0.0


class IgnoresFoundInf(torch.optim.Adam):
    """A fused Adam that steps whatever `found_inf` says, as a torch release may."""

    def step(self, closure=None):  # type: ignore[override]
        self.found_inf = None
        return super().step(closure)


def three_updates(make) -> list[torch.Tensor]:
    """Weights, moments and step counts after three updates through `apply_if_finite`,
    the second with NaN gradients, by the optimizer `make(params)` builds."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3, generator=gen)) for _ in range(2)]
    optimizer = make(params)
    for update in range(3):
        for p in params:
            p.grad = torch.full_like(p, float("nan")) if update == 1 else torch.ones_like(p) * p
        step.apply_if_finite(optimizer, None, torch.tensor(update != 1))
    state = [optimizer.state[p][key] for p in params for key in ("exp_avg", "exp_avg_sq", "step")]
    return [p.detach().clone() for p in params] + state


def test_a_fused_optimizer_that_ignores_found_inf_is_skipped_by_the_host():
    cpu = torch.device("cpu")
    assert step.honours_found_inf(torch.optim.Adam, cpu)
    assert step.honours_found_inf(torch.optim.AdamW, cpu)
    assert not step.honours_found_inf(IgnoresFoundInf, cpu)
    probe = IgnoresFoundInf([torch.nn.Parameter(torch.zeros(2))], fused=True)
    assert not step.skips_on_device(probe)

    on_device = three_updates(lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=True))
    on_host = three_updates(lambda ps: IgnoresFoundInf(ps, lr=1e-2, fused=True))
    for a, b in zip(on_device, on_host, strict=True):
        assert torch.equal(a, b)
    assert all(torch.isfinite(t).all() for t in on_host)  # the NaN update was skipped
    assert float(on_host[4]) == 2.0  # two updates counted in Adam's step, not three
