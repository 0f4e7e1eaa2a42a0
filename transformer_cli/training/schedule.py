"""Learning-rate schedules as pure functions of the update number.

`step` is 1-based: it is the number of the optimiser update about to be made, so the
first update uses `learning_rate(1, ...)`. Nothing here touches an optimiser; the
training loop writes the value into its param groups before each update.
"""

from __future__ import annotations

import math

from transformer_cli.core.config import TrainConfig


def _check_step(step: int) -> None:
    if step < 1:
        raise ValueError(f"learning-rate step is 1-based, got {step}")


def noam(step: int, d_model: int, warmup: int, factor: float = 1.0) -> float:
    """factor * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5): Vaswani et al. 2017, eq. 3."""
    _check_step(step)
    # The two terms meet at step == warmup: linear growth before, 1/sqrt decay after.
    return factor * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def inverse_sqrt(step: int, peak: float, warmup: int) -> float:
    """Linear warmup from peak/warmup to `peak` at `warmup`, then peak * sqrt(warmup / step)."""
    _check_step(step)
    if step <= warmup:
        return peak * step / warmup
    return peak * math.sqrt(warmup / step)


def constant(step: int, value: float) -> float:
    """The same learning rate at every step."""
    _check_step(step)
    return value


def learning_rate(step: int, train_cfg: TrainConfig, d_model: int) -> float:
    """The learning rate for update number `step` under `train_cfg.schedule`."""
    if train_cfg.schedule == "noam":
        return noam(step, d_model, train_cfg.warmup, train_cfg.noam_factor)
    if train_cfg.schedule == "inverse_sqrt":
        return inverse_sqrt(step, train_cfg.lr, train_cfg.warmup)
    if train_cfg.schedule == "constant":
        return constant(step, train_cfg.lr)
    # config.py validates the Literal, so reaching this is a bug, not a user error.
    raise ValueError(f"unknown schedule {train_cfg.schedule!r}")
