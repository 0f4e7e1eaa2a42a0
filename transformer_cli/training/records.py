"""What a training run records: its `Progress` (saved in every checkpoint), the records of
metrics.jsonl, and the summary it prints at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch

from transformer_cli.core import checkpoint
from transformer_cli.core.errors import TrainingError
from transformer_cli.training.loss import per_token, perplexity


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint so that --resume continues exactly."""

    step: int = 0  # optimizer updates done
    epoch: int = 0  # current epoch (0-based)
    batch_pos: int = 0  # batches of this epoch already consumed
    elapsed: float = 0.0  # training seconds so far, across resumes
    tokens: int = 0  # real target tokens trained on
    best_bleu: float = -1.0
    best_step: int = 0
    evals_since_best: int = 0
    skipped_steps: int = 0  # updates skipped for non-finite loss or gradients
    bad_in_a_row: int = 0


@dataclass
class Window:
    """The running sums of the train record being gathered since the last one was logged.

    The sums of applied updates only; kept where the updates ran (on the GPU, on it), and
    read when the record is written.
    """

    loss: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros(()))
    nll: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros(()))
    tokens: torch.Tensor | int = 0
    grad_norm: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros(()))
    updates: torch.Tensor | int = 0  # applied ones
    t0: float = dataclasses.field(default_factory=time.monotonic)  # its training time starts

    def add(
        self,
        loss: torch.Tensor,
        nll: torch.Tensor,
        tokens: int,
        applied: torch.Tensor,
        grad_norm: torch.Tensor,
    ) -> None:
        """Count one update's sums if it was applied (no host sync)."""
        self.loss = self.loss + torch.where(applied, loss, 0.0)  # where: a NaN stays out
        self.nll = self.nll + torch.where(applied, nll, 0.0)
        self.tokens = self.tokens + applied.long() * tokens
        self.grad_norm = self.grad_norm + torch.where(applied, grad_norm.float(), 0.0)
        self.updates = self.updates + applied.long()


@dataclass
class BadSteps:
    """Non-finite updates, counted where the updates ran and read by the host in `settle`.

    `run` is the number of non-finite updates in a row up to the latest one; `hit_at` the
    step at which it first reached the limit (0: not yet), so a late read still names it.
    """

    run: torch.Tensor | int = 0
    skipped: torch.Tensor | int = 0  # since the last settle
    hit_at: torch.Tensor | int = 0

    def add(self, applied: torch.Tensor, step: int, limit: int) -> None:
        bad = (~applied).long()
        self.run = (self.run + bad) * bad  # back to 0 after an applied update
        self.skipped = self.skipped + bad
        reached = (torch.as_tensor(self.hit_at) == 0) & (self.run >= limit)
        self.hit_at = torch.where(reached, step, self.hit_at)

    def settle(self, progress: Progress) -> int:
        """Move the counts into `progress` (a host sync); the step the limit was hit, or 0."""
        progress.skipped_steps += int(self.skipped)
        progress.bad_in_a_row = int(self.run)
        self.skipped = 0
        return int(self.hit_at)


@dataclass
class MetricsLog:
    """metrics.jsonl, appended one JSON record a line and flushed as written."""

    path: Path
    file: TextIO

    @classmethod
    def open(cls, path: Path | None) -> MetricsLog:
        """Append to `path`; None: a log that writes nowhere (ranks other than 0)."""
        if path is None:
            return cls(Path(os.devnull), open(os.devnull, "w", encoding="utf-8"))
        drop_partial_record(path)
        return cls(path, path.open("a", encoding="utf-8"))

    def write(self, record: dict) -> None:
        """Append `record`; a failed write (a full disk) is a TrainingError naming the file."""
        try:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        except OSError as e:  # a full disk usually shows here first, before a checkpoint save
            raise TrainingError(checkpoint.write_failure(e, self.path)) from None

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a failed write was reported already
            self.file.close()


def drop_partial_record(path: Path) -> None:
    """Cut a last line left without its newline (a write that failed on a full disk).

    Appending after it would glue the next record onto the fragment, and the log would
    no longer parse.
    """
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, 2)
            start = max(0, size - (1 << 16))  # records are far shorter than this
            f.seek(start)
            tail = f.read()
            if tail and not tail.endswith(b"\n") and (b"\n" in tail or start == 0):
                f.truncate(start + tail.rfind(b"\n") + 1)
    except FileNotFoundError:
        pass


def train_record(progress: Progress, window: Window, lr: float) -> dict:
    nll_sum, tokens = float(window.nll), int(window.tokens)
    return {
        "kind": "train",
        "step": progress.step,
        "epoch": progress.epoch,
        "loss": per_token(float(window.loss), tokens),
        "nll": per_token(nll_sum, tokens),
        "ppl": perplexity(nll_sum, tokens),  # inf for a diverged model
        "lr": lr,
        "tokens_per_s": tokens / max(time.monotonic() - window.t0, 1e-9),
        # the mean over the window's applied updates, before clipping
        "grad_norm": float(window.grad_norm) / max(int(window.updates), 1),
        "elapsed": round(progress.elapsed, 2),
        "skipped_steps": progress.skipped_steps,
    }


def format_summary(s: dict) -> str:
    best = f"{s['best_bleu']:.2f} (step {s['best_step']})" if s["best_bleu"] >= 0 else "n/a"
    lines = [
        f"done: {s['stopped'] or 'finished'}",
        f"  steps {s['steps']}, epochs {s['epochs']}, {s['seconds']} s, "
        f"{s['tokens_per_s']:.0f} target tokens/s",
        f"  best valid BLEU {best}; skipped steps {s['skipped_steps']}",
        f"  checkpoints: {s['last']} (last), {s['best']} (best)",
    ]
    if s.get("world_size", 1) > 1:
        lines.insert(2, f"  {s['world_size']} ranks, all stopped at step {s['steps']}")
    return "\n".join(lines)
