"""`train.tensorboard: true`: the records of metrics.jsonl, also as TensorBoard event files.

metrics.jsonl stays the source of truth (`tfx plot` reads it); the event files under
RUN_DIR/tensorboard/ carry the same numbers at the same steps, for watching a run live
and comparing runs side by side (`tensorboard --logdir runs/`). Written by
`torch.utils.tensorboard`, which needs the `tensorboard` package (the extra
`pip install 'tfx[tensorboard]'`). Only rank 0 writes.

The names are stable, so runs compare across versions:

- at log steps: train/loss (label-smoothed), train/nll, train/ppl, train/lr,
  train/grad_norm, train/tokens_per_s, train/skipped_steps;
- at validations: valid/loss, valid/ppl, valid/bleu, valid/chrf, and the text
  valid/translations: the first few validation sources' references and hypotheses.

A resumed run appends a new event file to the same directory. Its first event is
TensorBoard's restart marker at the first step it will log (`purge_step`): TensorBoard's
event reader (`EventAccumulator`, which `tensorboard --load_fast=false` uses) then drops
what the earlier attempt logged from that step on, and shows one value per step, the
later one, as `tfx plot` does with metrics.jsonl.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformer_cli.core.errors import ConfigError, TrainingError

EXTRA = "pip install 'tfx[tensorboard]'"
SCALARS = {
    "train": ("loss", "nll", "ppl", "lr", "grad_norm", "tokens_per_s", "skipped_steps"),
    "valid": ("loss", "ppl", "bleu", "chrf"),
}
SHOWN = 3  # validation translations written as text


def cell(text: str) -> str:
    """`text` as one markdown table cell: a | would end it."""
    return text.replace("|", "\\|")


def require_writer() -> Any:
    """torch's SummaryWriter class, or a one-line error naming the extra to install."""
    try:
        import tensorboard  # noqa: F401 (torch.utils.tensorboard needs it)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            f"train.tensorboard: the tensorboard package is not installed: {EXTRA}"
        ) from None
    return SummaryWriter


@dataclass
class BoardLog:
    """Event files in RUN_DIR/tensorboard/, or nothing (`writer` None: off, or not rank 0).

    A failed write (a full disk) is a TrainingError naming the directory, as metrics.jsonl's.
    """

    writer: Any = None
    path: Path | None = None

    @classmethod
    def open(cls, run_dir: Path, enabled: bool, step: int) -> BoardLog:
        """A log that appends after `step` (the checkpoint's, 0 for a new run): events an
        earlier attempt wrote after it are dropped from TensorBoard's view."""
        if not enabled:
            return cls()
        path = run_dir / "tensorboard"
        writer_class = require_writer()
        try:
            return cls(writer_class(str(path), purge_step=step + 1), path)
        except OSError as e:
            raise TrainingError(f"{path}: cannot write ({e})") from None

    def write(self, record: dict) -> None:
        """One metrics.jsonl record's numbers, under `kind/name` at its step."""
        if self.writer is None:
            return
        with self._failing_as_training_error():
            for name in SCALARS[record["kind"]]:
                if name in record:
                    tag, step = f"{record['kind']}/{name}", record["step"]
                    self.writer.add_scalar(tag, record[name], step)
            self.writer.flush()

    def translations(self, step: int, refs: list[str], hyps: list[str]) -> None:
        """The first validation sentences' references and hypotheses, as a text summary."""
        if self.writer is None:
            return
        pairs = zip(refs[:SHOWN], hyps[:SHOWN], strict=False)
        rows = [f"| {cell(ref)} | {cell(hyp)} |" for ref, hyp in pairs]
        table = "\n".join(["| reference | hypothesis |", "|---|---|", *rows])
        with self._failing_as_training_error():
            self.writer.add_text("valid/translations", table, step)
            self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file; a failure here was reported by a write already."""
        if self.writer is not None:
            with contextlib.suppress(OSError):
                self.writer.close()

    @contextlib.contextmanager
    def _failing_as_training_error(self) -> Iterator[None]:
        try:
            yield
        except OSError as e:
            raise TrainingError(f"{self.path}: cannot write TensorBoard events ({e})") from None
