"""One optimizer update: the masked loss of every micro-batch, the gradient of the whole
group, clipping, the non-finite check, and the step itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from transformer_cli.core.config import Config, ResolvedPrecision
from transformer_cli.data import batching, store
from transformer_cli.model.transformer import Transformer
from transformer_cli.training.distributed import World
from transformer_cli.training.loss import batch_loss


@dataclass
class Trainer:
    """What an update reads and changes; `scaler` is None unless precision is fp16."""

    model: Transformer | CompiledSteps  # what the step calls: may be a compiled view
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    split: store.EncodedSplit
    cfg: Config
    device: torch.device
    precision: ResolvedPrecision
    world: World = dataclasses.field(default_factory=World)
    # `LossModule` under DDP when launched by torchrun; None: the step calls batch_loss itself
    loss_module: torch.nn.Module | None = None

    @property
    def pad_multiple(self) -> int:
        """`train.pad_multiple`, or where it is 0 (auto): 8 on CUDA, 1 elsewhere."""
        return self.cfg.train.pad_multiple or (8 if self.device.type == "cuda" else 1)

    def collate(self, group: Sequence[torch.Tensor]) -> list[batching.Batch]:
        """An update's micro-batches (split indices each), padded as this device likes but
        never past the model's positions."""
        positions = self.cfg.model.max_positions
        return [
            batching.collate(self.split, g, multiple=self.pad_multiple, positions=positions)
            for g in group
        ]

    def batch_sums(self, batch: batching.Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(label-smoothed loss, NLL) of `batch`, summed over its real target tokens."""
        if self.loss_module is not None:
            return self.loss_module(batch)
        t = self.cfg.train
        parts = batch_loss(
            self.model, batch, t.label_smoothing, self.device, self.precision, t.fused_loss
        )
        return parts.loss, parts.nll


class LossModule(torch.nn.Module):
    """`batch_loss` as a module, so that DistributedDataParallel can wrap it.

    DDP reduces the gradients of what its wrapped module's forward computed, and the step
    never calls `Transformer.forward` (see `CompiledSteps`). `calls` is what the loss runs:
    the model itself or a compiled view of it. It holds no reference back to the Trainer
    that holds it, so that dropping the trainer frees DDP (and its gloo or NCCL work) at
    once, before the process group goes.
    """

    calls: Transformer | CompiledSteps

    def __init__(self, model: Transformer, calls: Transformer | CompiledSteps, trainer: Trainer):
        super().__init__()
        self.model = model  # registered, so DDP finds (and broadcasts) its parameters
        object.__setattr__(self, "calls", calls)  # not a submodule: a compiled view is not one
        t = trainer.cfg.train
        self.settings = (t.label_smoothing, trainer.device, trainer.precision, t.fused_loss)

    def forward(self, batch: batching.Batch) -> tuple[torch.Tensor, torch.Tensor]:
        smoothing, device, precision, fused = self.settings
        parts = batch_loss(self.calls, batch, smoothing, device, precision, fused)
        return parts.loss, parts.nll


@dataclass
class StepResult:
    """One update's sums over its real target tokens (of all ranks), and whether it was
    applied. The tensors stay on the training device: reading them is a host sync, which
    the loop does at log steps only (`records.Window`, `records.BadSteps`)."""

    loss: torch.Tensor  # () the label-smoothed objective, summed
    nll: torch.Tensor  # () the unsmoothed NLL, summed
    tokens: int  # real target tokens
    finite: torch.Tensor  # () bool: True = applied; False = non-finite, weights untouched

    @property
    def applied(self) -> bool:
        """Whether the update was applied (reads `finite`: a host sync)."""
        return bool(self.finite)


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


def train_step(
    trainer: Trainer,
    group: list[torch.Tensor],
    lr: float,
    batches: list[batching.Batch] | None = None,
) -> StepResult:
    """One update from `group` (this rank's micro-batches of split indices) at rate `lr`.

    `batches` is `trainer.collate(group)` when it was collated ahead (fast/prefetch.py).

    The loss of every micro-batch is a sum over its real tokens divided by the real tokens
    of the whole global batch (every micro-batch of every rank), so accumulation and data
    parallelism both give exactly the gradient of one big batch. Under DDP, which averages
    gradients over ranks, the loss is multiplied by the world size to undo that mean; only
    the last micro-batch's backward all-reduces. The loss sums are summed over ranks too,
    so every rank takes the same decision. An update whose loss or gradient norm is not
    finite (or, under fp16, whose gradients overflowed the scaler) is not applied: the
    weights stay as they were (`apply_if_finite`).
    """
    optimizer, scaler, t, world = (
        trainer.optimizer,
        trainer.scaler,
        trainer.cfg.train,
        trainer.world,
    )
    for param_group in optimizer.param_groups:
        param_group["lr"] = lr
    if batches is None:
        batches = trainer.collate(group)
    n_tokens = sum(b.n_tokens for b in batches)
    if world.launched:
        n_tokens = int(world.sum_(torch.tensor([n_tokens]), "the batch's token count"))
    sums = torch.zeros(2, device=trainer.device)  # loss, nll
    for i, batch in enumerate(batches):
        with world.no_sync(trainer.loss_module, last=i == len(batches) - 1):
            loss_part, nll_part = trainer.batch_sums(batch)
            loss = loss_part * world.size / n_tokens
            (scaler.scale(loss) if scaler is not None else loss).backward()
        sums += torch.stack([loss_part.detach(), nll_part.detach()])
    world.sum_(sums, "the update's loss")
    loss_sum, nll_sum = sums[0], sums[1]
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, never the scaled ones
    norm = grad_norm([p for p in trainer.model.parameters() if p.grad is not None], t.clip_norm)
    finite = torch.isfinite(loss_sum) & torch.isfinite(norm)  # () on the device: no sync
    finite = apply_if_finite(optimizer, scaler, finite)
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss_sum.detach(), nll_sum.detach(), n_tokens, finite)


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer` can skip an update on the device (`found_inf`): the fused
    Adam and AdamW kernels can; the others need the host to decide."""
    return bool(optimizer.defaults.get("fused"))


def apply_if_finite(
    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, finite: torch.Tensor
) -> torch.Tensor:
    """Step the optimizer unless `finite` is False; return whether it stepped, as a
    device tensor.

    The fused optimizers take the decision on the device (GradScaler's own mechanism,
    `found_inf`: where it is 1 they leave weights, moments and step count as they were),
    so a step needs no host sync. Other optimizers, and fp16's GradScaler, whose scale
    is read back to tell an overflow, decide on the host.
    """
    if scaler is not None:
        scale_before = scaler.get_scale()
        scaler.step(optimizer)  # skips the update itself when gradients overflowed
        scaler.update()
        return finite & (scaler.get_scale() >= scale_before)
    if skips_on_device(optimizer):
        optimizer.found_inf = (~finite).float()  # type: ignore[attr-defined]
        try:
            optimizer.step()
        finally:
            optimizer.found_inf = None  # type: ignore[attr-defined]
        return finite
    if bool(finite):  # a host sync
        optimizer.step()
    return finite


def grad_norm(params: list[torch.nn.Parameter], clip_norm: float) -> torch.Tensor:
    """The total L2 norm of the gradients of `params`, clipping them to `clip_norm` if > 0.

    The norm is what tells a NaN or inf in any gradient from a finite one, so it is taken
    without clipping too.
    """
    if clip_norm > 0:
        return torch.nn.utils.clip_grad_norm_(params, clip_norm)
    return torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
