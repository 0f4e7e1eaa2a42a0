"""Data-parallel training on PyTorch's own engine: which process this is in the job, its
device, and the few collectives the training loop needs.

A job is started by `torchrun` (or `tfx train --nproc N`, which starts torchrun's
launcher): torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE in every
worker, and the rendezvous address for `init_process_group`. tfx chooses no port and no
address of its own. Outside torchrun there is one process and nothing here communicates.

What the loop shares, and how (training/loop.py calls these at the same points on every
rank, so every collective is matched):
    the global batch's real-token count    `World.sum_`, before the backward passes
    the gradients                          DistributedDataParallel, after the last micro-batch
    the loss sums of an update             `World.sum_`: every rank sees the same finiteness
    a stop (signal, wall-clock budget)     `World.max_`: every rank stops at the same step
    rank 0's validation verdict            `World.from_main`
    every rank's RNG state, for a save     `World.gather`
A collective that fails (a rank died, or none answered within train.dist_timeout_minutes)
becomes a one-line TrainingError naming this rank.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from transformer_cli.core.errors import ConfigError, TrainingError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place in the job: rank 0 of 1 when not launched by torchrun."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    launched: bool = False  # started by torchrun: a process group exists (even of size 1)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, validates and writes checkpoints."""
        return self.rank == 0

    # ------------------------------------------------------------------ collectives

    def sum_(self, values: torch.Tensor, what: str) -> torch.Tensor:
        """`values` summed over all ranks, in place (a no-op in a single process)."""
        return self._reduce(values, dist.ReduceOp.SUM, what)

    def max_(self, values: torch.Tensor, what: str) -> torch.Tensor:
        """`values` maximised over all ranks, in place (a no-op in a single process)."""
        return self._reduce(values, dist.ReduceOp.MAX, what)

    def _reduce(self, values: torch.Tensor, op: Any, what: str) -> torch.Tensor:
        if not self.launched:
            return values
        work = values.to(_comm_device())  # NCCL reduces GPU tensors only
        _collective(self, what, dist.all_reduce, work, op=op)
        if work is not values:
            values.copy_(work)
        return values

    def from_main(self, value: T, what: str) -> T:
        """Rank 0's `value`, on every rank (any picklable object)."""
        if not self.launched:
            return value
        box = [value]
        _collective(self, what, dist.broadcast_object_list, box, src=0)
        return box[0]

    def gather(self, value: T, what: str) -> list[T]:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.launched:
            return [value]
        out: list[Any] = [None] * self.size
        _collective(self, what, dist.all_gather_object, out, value)
        return out

    def no_sync(self, loss: Callable[..., Any], last: bool) -> contextlib.AbstractContextManager:
        """Skip DDP's gradient all-reduce for every micro-batch but the `last` of an update.

        `loss` is what the step calls; launched, it is DistributedDataParallel (`wrap`).
        """
        if self.launched and not last:
            return loss.no_sync()  # type: ignore[attr-defined]
        return contextlib.nullcontext()


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _collective(world: World, what: str, fn: Callable, *args: Any, **kwargs: Any) -> None:
    with world_guard(world, f"sharing {what}"):
        fn(*args, **kwargs)


_TRANSPORT = re.compile(
    r"gloo|nccl|connection (reset|closed|refused)|processgroup|timed? ?out", re.I
)


@contextlib.contextmanager
def world_guard(world: World, doing: str) -> Iterator[None]:
    """Turn the error of a collective whose peers are gone into one line naming this rank.

    Collectives run inside the training step too (DDP's gradient all-reduce), so the
    step runs under this guard; an error that is not the transport's passes unchanged.
    """
    try:
        yield
    except (RuntimeError, ValueError) as e:  # DistBackendError and gloo's errors are these
        if not world.launched or not (isinstance(e, dist.DistError) or _TRANSPORT.search(str(e))):
            raise
        text = re.sub(r"^\[[^\]]*\]\s*", "", str(e).strip())  # gloo's "[file.cc:553] "
        first = text.splitlines()[0].split(". ")[0][:160] if text else type(e).__name__
        raise TrainingError(
            f"rank {world.rank}: lost the other ranks of the job while {doing} "
            f"({first}); the checkpoints written before are intact"
        ) from None


def from_env(environ: Mapping[str, str] | None = None) -> World:
    """The World torchrun's variables describe; rank 0 of 1 when they are absent."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return World()
    try:
        rank, size = int(env["RANK"]), int(env["WORLD_SIZE"])
        local_rank = int(env.get("LOCAL_RANK", rank))
        local_size = int(env.get("LOCAL_WORLD_SIZE", size))
    except ValueError:
        raise ConfigError(
            "RANK, WORLD_SIZE, LOCAL_RANK: torchrun's variables must be integers"
        ) from None
    return World(rank, size, local_rank, local_size, launched=True)


def backend_for(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


def rank_device(world: World, device: torch.device) -> torch.device:
    """This rank's device: its own GPU (by local rank) on CUDA, else `device` itself."""
    if device.type != "cuda" or not world.launched:
        return device
    if world.local_size > torch.cuda.device_count():
        raise ConfigError(
            f"{world.local_size} ranks on this machine but {torch.cuda.device_count()} "
            "CUDA device(s) are visible: use at most one rank per GPU (--nproc, "
            "torchrun --nproc-per-node)"
        )
    torch.cuda.set_device(world.local_rank)
    return torch.device("cuda", world.local_rank)


def rank_threads(world: World, threads: int) -> int:
    """train.threads for one rank: 0 (one per core) shares the cores among local ranks."""
    if threads > 0 or not world.launched:
        return threads
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // world.local_size)


@contextlib.contextmanager
def process_group(world: World, device: torch.device, timeout_minutes: float) -> Iterator[None]:
    """The job's process group for as long as training runs (nothing outside torchrun)."""
    if not world.launched:
        yield
        return
    if device.type not in ("cuda", "cpu"):
        raise ConfigError(
            f"train.device: distributed training runs on cuda or cpu, not {device.type}"
        )
    timeout = datetime.timedelta(minutes=timeout_minutes)
    device_id = device if device.type == "cuda" else None  # NCCL: bind the rank's GPU
    try:
        dist.init_process_group(backend_for(device), timeout=timeout, device_id=device_id)
    except (RuntimeError, ValueError) as e:
        raise TrainingError(f"rank {world.rank}: could not join the job ({e})") from None
    try:
        yield
        # every rank done with every collective before any tears its transport down
        _collective(world, "the end of the job", dist.barrier)
    finally:
        # DDP goes before the group: a finished run that a reference cycle still holds
        # (a frame kept by a module imported during setup) is freed now, not at some
        # later collection
        gc.collect()
        dist.destroy_process_group()


def wrap(module: torch.nn.Module, world: World) -> torch.nn.Module:
    """`module` under DistributedDataParallel when launched, else `module` itself.

    DDP averages gradients over ranks; the training step multiplies its loss by the world
    size, so the reduced gradient is the sum over every rank's real tokens divided by the
    global count: one big batch's (step.py). DDP also broadcasts rank 0's weights once, so
    all ranks start equal.
    """
    if not world.launched:
        return module
    return torch.nn.parallel.DistributedDataParallel(module)


def shard(group: list[T], world: World) -> list[T]:
    """This rank's part of an update's global group of micro-batches: every size-th one."""
    return group[world.rank :: world.size]


def global_group(batches: list[T], pos: int, accum_steps: int, world: World) -> list[T]:
    """The micro-batches one update takes from an epoch's list at `pos`, for all ranks.

    Up to size * accum_steps of them, cut to a multiple of the world size, so every rank
    gets as many as every other. When fewer than `size` are left the epoch is over: those
    last batches are not trained on in this epoch (the next epoch's order is a new
    shuffle, so they are not the same ones each time). In one process nothing is left out.
    """
    left = batches[pos : pos + world.size * accum_steps]
    return left[: len(left) - len(left) % world.size]


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank > 0's dropout stream: distinct per rank; rank 0 keeps `seed`."""
    return seed if rank == 0 else (seed * 1_000_003 + rank) % (2**63)
