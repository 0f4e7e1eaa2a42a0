"""One optimizer update: the masked loss of every micro-batch, the gradient of the whole
group, clipping, the non-finite check, and the step itself.

Setup builds the `Trainer` once, whole (`build_trainer`): the model, the loss of one
batch as the step runs it, the optimizer and what they need. Nothing changes its fields
afterwards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from transformer_cli.core.config import Config, ResolvedPrecision
from transformer_cli.data import batching, store
from transformer_cli.model.transformer import Transformer
from transformer_cli.training import distributed
from transformer_cli.training.distributed import World
from transformer_cli.training.loss import ModelCalls, batch_loss

# one batch -> its (label-smoothed loss, NLL), each summed over its real target tokens
LossFn = Callable[[batching.Batch], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True, eq=False)
class Trainer:
    """What an update reads and changes; `scaler` is None unless precision is fp16."""

    model: Transformer  # the weights: stepped, clipped, saved and validated
    loss: LossFn  # what the step calls for a batch's loss (`loss_fn`)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    split: store.EncodedSplit
    cfg: Config
    device: torch.device
    precision: ResolvedPrecision
    world: World = dataclasses.field(default_factory=World)

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


def build_trainer(
    model: Transformer,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    split: store.EncodedSplit,
    cfg: Config,
    device: torch.device,
    precision: ResolvedPrecision,
    world: World | None = None,
) -> Trainer:
    """The trainer of `model`, with its loss of one batch built here, once (`loss_fn`)."""
    world = world or World()
    loss = loss_fn(model, cfg, device, precision, world)
    return Trainer(model, loss, optimizer, scaler, split, cfg, device, precision, world)


def loss_fn(
    model: Transformer,
    cfg: Config,
    device: torch.device,
    precision: ResolvedPrecision,
    world: World,
) -> LossFn:
    """`batch_loss` of one batch through `model`'s calls, compiled under train.compile.

    Launched by torchrun, the function is DistributedDataParallel around it
    (`LossModule`), which all-reduces the gradients of what it computed.
    """
    t = cfg.train
    calls = ModelCalls.compiled(model) if t.compile else ModelCalls.of(model)

    def sums(batch: batching.Batch) -> tuple[torch.Tensor, torch.Tensor]:
        parts = batch_loss(calls, batch, t.label_smoothing, device, precision, t.fused_loss)
        return parts.loss, parts.nll

    if not world.launched:
        return sums
    return distributed.wrap(LossModule(model, sums), world)


class LossModule(torch.nn.Module):
    """A batch's loss as a module that holds `model`, so that DistributedDataParallel can
    wrap it.

    DDP reduces the gradients of what its wrapped module's forward computed (the step
    never calls `Transformer.forward`), and broadcasts the parameters of the module it
    wraps. Nothing here refers back to the trainer, so that the trainer's going frees DDP
    (and its gloo or NCCL work) at once, before the process group goes.
    """

    def __init__(self, model: Transformer, loss: LossFn) -> None:
        super().__init__()
        self.model = model  # registered, so DDP finds (and broadcasts) its parameters
        self.loss = loss

    def forward(self, batch: batching.Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loss(batch)


@dataclass(frozen=True)
class StepResult:
    """One update's sums over its real target tokens (of all ranks), and whether it was
    applied. The tensors stay on the training device: reading them is a host sync, which
    the loop does at log steps only (`records.Window`, `records.BadSteps`)."""

    loss: torch.Tensor  # () the label-smoothed objective, summed
    nll: torch.Tensor  # () the unsmoothed NLL, summed
    tokens: int  # real target tokens
    finite: torch.Tensor  # () bool: True = applied; False = non-finite, weights untouched
    grad_norm: torch.Tensor  # () the gradients' total L2 norm, before clipping


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
        with world.no_sync(trainer.loss, last=i == len(batches) - 1):
            loss_part, nll_part = trainer.loss(batch)
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
    return StepResult(loss_sum.detach(), nll_sum.detach(), n_tokens, finite, norm.detach())


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer` can skip an update on the device (`found_inf`): the fused
    Adam and AdamW kernels can, where this torch's do (`honours_found_inf`); the others
    need the host to decide."""
    if not optimizer.defaults.get("fused"):
        return False
    key = (type(optimizer), optimizer.param_groups[0]["params"][0].device)
    if key not in _HONOURS_FOUND_INF:
        _HONOURS_FOUND_INF[key] = honours_found_inf(*key)
    return _HONOURS_FOUND_INF[key]


_HONOURS_FOUND_INF: dict[tuple[type[torch.optim.Optimizer], torch.device], bool] = {}


def honours_found_inf(cls: type[torch.optim.Optimizer], device: torch.device) -> bool:
    """Whether the fused step of `cls` on `device` leaves a weight, its moments and its
    step count as they were where `found_inf` is 1.

    `found_inf` is how GradScaler has the fused optimizers skip an update, and no torch
    documentation promises it to anyone else; one update of a one-element weight tells,
    once per optimizer class and device.
    """
    weight = torch.nn.Parameter(torch.ones(1, device=device))
    weight.grad = torch.ones(1, device=device)
    try:
        probe = cls([weight], lr=1.0, fused=True)  # type: ignore[call-arg]
        probe.found_inf = torch.ones((), device=device)  # type: ignore[attr-defined]
        probe.step()
    except (RuntimeError, TypeError):
        return False
    state = probe.state[weight]
    moments = [v for k, v in state.items() if k != "step" and torch.is_tensor(v)]
    return (
        bool((weight == 1).all())
        and float(state.get("step", 0)) == 0
        and not any(bool(m.any()) for m in moments)
    )


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
    grads = [p.grad for p in params if p.grad is not None]
    total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
    return total_norm(grads) if total_norm is not None else norm_of_norms(grads)


def norm_of_norms(grads: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all of `grads` as one vector: `get_total_norm` for the torch
    releases that lack it."""
    if not grads:
        return torch.tensor(0.0)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
