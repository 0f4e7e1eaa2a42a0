"""What one `tfx train` run carries from step to step (`Session`), and when it stops.

A stop is decided the same way on every rank of a distributed job: the step and epoch
counts are equal everywhere by construction, and what is not (a signal that reached one
rank first, each rank's clock) is shared by `shared_stop` before it is read.
"""

from __future__ import annotations

import dataclasses
import signal
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from transformer_cli.core.config import Config, TrainConfig
from transformer_cli.core.errors import TrainingError
from transformer_cli.data import store
from transformer_cli.data.tokenizer import Tokenizer
from transformer_cli.fast.prefetch import Prefetcher
from transformer_cli.model.transformer import Transformer
from transformer_cli.training.distributed import World
from transformer_cli.training.records import BadSteps, MetricsLog, Progress, Window
from transformer_cli.training.step import StepResult, Trainer
from transformer_cli.training.tensorboard import BoardLog


@dataclass
class StopSignals:
    """Ctrl-C (or SIGTERM) asks to stop at the next step boundary; a second one kills.

    `received` holds the signals caught while installed; `restore` puts back the handlers
    that were there before `install`. Under torchrun every worker runs in its own session,
    so a Ctrl-C reaches the launcher alone, which passes one signal on to each worker.
    """

    received: list[int] = dataclasses.field(default_factory=list)
    previous: dict = dataclasses.field(default_factory=dict)

    def install(self) -> None:
        self.previous = {s: signal.signal(s, self._caught) for s in (signal.SIGINT, signal.SIGTERM)}

    def _caught(self, signum: int, _frame: object) -> None:
        self.received.append(signum)
        signal.signal(signum, signal.SIG_DFL)  # the next one kills

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


@dataclass(frozen=True)
class ValidSet:
    """What validation scores: the valid split, encoded, and its raw reference lines."""

    split: store.EncodedSplit
    refs: list[str]


@dataclass
class Session:
    """One `tfx train` run: what setup built, and where the loop stands."""

    run_dir: Path
    tokenizer: Tokenizer
    trainer: Trainer
    valid: ValidSet
    progress: Progress
    settle_every: int = 1  # updates between host reads of `bad` (loop.settle)
    prefetch: Prefetcher | None = None  # collates the next update's batches ahead
    signals: StopSignals = dataclasses.field(default_factory=StopSignals)
    metrics: MetricsLog = dataclasses.field(init=False)  # set by `opened`, for the loop
    board: BoardLog = dataclasses.field(init=False)  # set by `opened` (train.tensorboard)
    bar: tqdm = dataclasses.field(init=False)  # set by `opened`, for the loop
    window: Window = dataclasses.field(default_factory=Window)
    bad: BadSteps = dataclasses.field(default_factory=BadSteps)  # non-finite updates
    started: float = 0.0  # time.monotonic() at which training time would have been 0
    batches: list[torch.Tensor] = dataclasses.field(default_factory=list)  # this epoch's
    stop_reason: str = ""
    stop_signal: int = 0  # the signal that stopped the run (any rank's), 0 = none
    last_eval_step: int = -1

    @property
    def model(self) -> Transformer:
        """The weights trained, saved and validated: the trainer's."""
        return self.trainer.model

    @property
    def cfg(self) -> Config:
        return self.trainer.cfg

    @property
    def world(self) -> World:
        return self.trainer.world


def prefetcher(trainer: Trainer, device: torch.device) -> Prefetcher | None:
    """`train.prefetch`'s collating thread (auto: on CUDA, into pinned memory), or None."""
    wanted = trainer.cfg.train.prefetch
    if wanted == "never" or (wanted == "auto" and device.type != "cuda"):
        return None
    if device.type == "cuda":
        return Prefetcher(lambda group: [b.pinned() for b in trainer.collate(group)])
    return Prefetcher(trainer.collate)


def settle_interval(cfg: Config, device: torch.device) -> int:
    """Updates between host reads of the skipped-update counts (`settle`): every one on
    the CPU, where a read costs nothing; on CUDA train.log_every, so no step syncs."""
    return cfg.train.log_every if device.type == "cuda" else 1


def count(session: Session, result: StepResult) -> None:
    """Add an applied update to the window, count a skipped one: on the device, no sync."""
    session.window.add(result.loss, result.nll, result.tokens, result.finite, result.grad_norm)
    session.bad.add(result.finite, session.progress.step, session.cfg.train.max_bad_steps)


def settle(session: Session) -> None:
    """Read the skipped-update counts to the host; abort if too many came in a row.

    Every step on the CPU, where a read costs nothing; on CUDA at log, validation and
    final steps only (`Session.settle_every`), so an abort comes at most that many
    updates late. It names the step that reached the limit; the checkpoints are intact,
    since a save settles first.
    """
    progress, limit = session.progress, session.cfg.train.max_bad_steps
    hit_at = session.bad.settle(progress)
    if hit_at:
        raise TrainingError(
            f"{limit} non-finite updates (loss or gradients) in a row at step "
            f"{hit_at} (train.max_bad_steps={limit}); the last "
            f"good checkpoint in {session.run_dir / 'checkpoints'} is intact. Try a lower "
            "learning rate, train.clip_norm, or train.precision: fp32"
        )


def shared_stop(session: Session) -> str:
    """Why to stop now ("" = go on): the same answer on every rank.

    Every rank takes the first signal any rank caught, and the longest elapsed time of
    any rank as its own, so that a wall-clock budget ends all of them at the same step.
    """
    progress, received = session.progress, session.signals.received
    signum = received[0] if received else 0
    if session.world.launched:
        both = torch.tensor([float(signum), progress.elapsed], dtype=torch.float64)
        session.world.max_(both, "the stop decision")
        signum, progress.elapsed = int(both[0]), float(both[1])
    session.stop_signal = signum
    return stop_condition(progress, session.cfg.train, [signum] if signum else [])


def stop_condition(progress: Progress, t: TrainConfig, stop_signal: list[int]) -> str:
    if stop_signal:
        name = signal.Signals(stop_signal[0]).name
        return f"stopped by {name}; continue with --resume"
    if t.max_steps and progress.step >= t.max_steps:
        return f"reached train.max_steps={t.max_steps}"
    if t.max_epochs and progress.epoch >= t.max_epochs:
        return f"reached train.max_epochs={t.max_epochs}"
    if t.max_minutes and progress.elapsed >= t.max_minutes * 60:
        return f"reached train.max_minutes={t.max_minutes:g}"
    return ""
