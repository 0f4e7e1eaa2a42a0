"""One optimizer update: the masked loss of every micro-batch, the gradient of the whole
group, clipping, the non-finite check, and the step itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from transformer_cli.core.config import Config, ResolvedPrecision
from transformer_cli.data import batching
from transformer_cli.data import store as cache
from transformer_cli.model.transformer import Transformer
from transformer_cli.training.loss import batch_loss


@dataclass
class Trainer:
    """What an update reads and changes; `scaler` is None unless precision is fp16."""

    model: Transformer | CompiledSteps  # what the step calls: may be a compiled view
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    split: cache.EncodedSplit
    cfg: Config
    device: torch.device
    precision: ResolvedPrecision


@dataclass
class StepResult:
    """One update's sums over its real target tokens, and whether it was applied."""

    loss: torch.Tensor  # () the label-smoothed objective, summed, on the host
    nll: torch.Tensor  # () the unsmoothed NLL, summed, on the host
    tokens: int  # real target tokens
    applied: bool  # False: non-finite, the weights were left as they were


class CompiledSteps:
    """The three calls a training step makes, each through torch.compile.

    `torch.compile(model)` would compile `forward` only, which the step never calls: it
    encodes, decodes to hidden states, and projects just the real positions.
    """

    def __init__(self, model: Transformer) -> None:
        self.encode = torch.compile(model.encode, dynamic=True)
        self.decode_hidden = torch.compile(model.decode_hidden, dynamic=True)
        self.logits = torch.compile(model.logits, dynamic=True)
        self.out_proj = model.out_proj  # the fused loss projects in chunks itself
        self.parameters = model.parameters


def make_optimizer(
    model: torch.nn.Module, cfg: Config, device: torch.device
) -> torch.optim.Optimizer:
    """Adam(0.9, 0.98, eps 1e-9) as in the paper, or AdamW; fused where torch has it."""
    t = cfg.train
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam

    def build(fused: bool | None, foreach: bool | None) -> torch.optim.Optimizer:
        return cls(
            model.parameters(),
            lr=0.0,
            betas=t.betas,
            eps=t.eps,
            weight_decay=t.weight_decay,
            fused=fused,
            foreach=foreach,
        )

    try:
        return build(fused=device.type in ("cuda", "cpu"), foreach=None)
    except (RuntimeError, TypeError):
        return build(fused=None, foreach=True)


def train_step(trainer: Trainer, group: list[torch.Tensor], lr: float) -> StepResult:
    """One update from `group` (accum_steps micro-batches of split indices) at rate `lr`.

    The loss of every micro-batch is a sum over its real tokens divided by the real tokens
    of the whole group, so accumulation gives exactly the gradient of one big batch. An
    update whose loss or gradient norm is not finite (or, under fp16, whose gradients
    overflowed the scaler) is not applied: the weights stay as they were.
    """
    optimizer, scaler, t = trainer.optimizer, trainer.scaler, trainer.cfg.train
    for param_group in optimizer.param_groups:
        param_group["lr"] = lr
    batches = [batching.collate(trainer.split, indices) for indices in group]
    n_tokens = sum(b.n_tokens for b in batches)
    loss_sum = torch.zeros((), device=trainer.device)
    nll_sum = torch.zeros((), device=trainer.device)
    for batch in batches:
        parts = batch_loss(
            trainer.model, batch, t.label_smoothing, trainer.device, trainer.precision, t.fused_loss
        )
        loss = parts.loss / n_tokens
        (scaler.scale(loss) if scaler is not None else loss).backward()
        loss_sum += parts.loss.detach()
        nll_sum += parts.nll.detach()
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, never the scaled ones
    norm = grad_norm([p for p in trainer.model.parameters() if p.grad is not None], t.clip_norm)
    # one host sync per update: the price of counting skipped steps exactly
    finite = bool(torch.isfinite(loss_sum) & torch.isfinite(norm))
    if scaler is not None:
        scale_before = scaler.get_scale()
        scaler.step(optimizer)  # skips the update itself when gradients overflowed
        scaler.update()
        finite = finite and scaler.get_scale() >= scale_before
    elif finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss_sum.cpu(), nll_sum.cpu(), n_tokens, finite)


def grad_norm(params: list[torch.nn.Parameter], clip_norm: float) -> torch.Tensor:
    """The total L2 norm of the gradients of `params`, clipping them to `clip_norm` if > 0.

    The norm is what tells a NaN or inf in any gradient from a finite one, so it is taken
    without clipping too.
    """
    if clip_norm > 0:
        return torch.nn.utils.clip_grad_norm_(params, clip_norm)
    return torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
