"""A training run's checkpoints: what a save holds (every rank's RNG included), and how
--resume puts it back, on the same or on another number of ranks.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

from transformer_cli import __version__
from transformer_cli.core import checkpoint
from transformer_cli.core.config import to_dict
from transformer_cli.core.errors import TrainingError
from transformer_cli.training.distributed import World, rank_seed
from transformer_cli.training.records import Progress
from transformer_cli.training.session import Session


def refuse_a_second_run(run_dir: Path, resume: bool) -> None:
    """A fresh run into a run_dir that already holds checkpoints is an error."""
    if not resume and checkpoint.step_checkpoints(run_dir):
        raise TrainingError(
            f"{run_dir} already holds a training run ({checkpoint.checkpoints_dir(run_dir)}); "
            "continue it with --resume, or train into another run_dir"
        )


def save(session: Session, is_best: bool) -> Path | None:
    """Checkpoint the run (rank 0 writes; every rank must call this: it gathers RNGs).

    Returns the step checkpoint's path on rank 0, None on the others.
    """
    trainer, world = session.trainer, session.world
    rngs = world.gather(checkpoint.capture_rng(), "the RNG states of a checkpoint")
    if not world.is_main:
        return None
    state: dict[str, object] = {
        "tfx_version": __version__,
        "config": to_dict(trainer.cfg),
        "tokenizer": session.tokenizer.to_bytes(),
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "progress": dataclasses.asdict(session.progress),
        "rng": rngs[0],
        "world_size": world.size,
    }
    if world.size > 1:
        state["rng_ranks"] = rngs
    keep = trainer.cfg.train.keep_last
    return checkpoint.save_step(session.run_dir, state, session.progress.step, keep, best=is_best)


def restore(
    run_dir: Path,
    world: World,
    seed: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
) -> Progress:
    """Load the latest good checkpoint into the model, optimizer and scaler, put back this
    rank's RNG, and return the run's progress.

    Every rank reads the same file. With the world size it was written with, each rank
    gets its own RNG state back and the run continues exactly. With another size the run
    continues too: the data position counts batches of the epoch's global list, not per
    rank, so it carries over; ranks the checkpoint has no RNG state for start a stream of
    their own (from `seed`), and a note says the run is no longer bitwise what the old
    size would give.
    """
    warn = _stderr if world.is_main else _quiet
    path, state = checkpoint.find_resumable(run_dir, warn)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    progress = Progress(**state["progress"])
    written = int(state.get("world_size", 1))
    ranks = state.get("rng_ranks") or [state["rng"]]
    if world.rank < len(ranks) and written == world.size:
        checkpoint.restore_rng(ranks[world.rank])
    elif world.rank == 0:
        checkpoint.restore_rng(state["rng"])
    else:
        torch.manual_seed(rank_seed(seed + progress.step, world.rank))
    warn(f"resuming from {path} at step {progress.step}")
    if written != world.size:
        warn(
            f"note: {path} was written by {written} rank(s) and resumes on {world.size}: the "
            "data position carries over (it counts the epoch's batches over all ranks), each "
            f"update now takes {world.size} x train.accum_steps batches, and dropout draws "
            "differ from a continuation at the old size"
        )
    return progress


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _quiet(_message: str) -> None:
    pass
