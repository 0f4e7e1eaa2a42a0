"""`tfx train --init-from CKPT`: a new run that starts from a checkpoint's weights, with a
fresh optimizer, schedule and step count (docs/fine-tuning.md).

Before a weight is loaded, the run must fit the checkpoint, and each misfit is one line:
- the config's model shape is the checkpoint's: every model field but those in
  FREE_MODEL_FIELDS, which change no parameter;
- the config's tokenizer section is the checkpoint's (as for prepare --tokenizer-from);
- the run dir's cache was encoded with the checkpoint's SentencePiece model(s): the
  fingerprint prepare recorded in meta.json is the checkpoint tokenizer's. Its size alone
  would not do: two models of one size can give the same text other ids.
Only the weights are read, so a checkpoint without optimizer state (an averaged one) will
do. What the run then saves is an ordinary, complete checkpoint of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from transformer_cli.core import checkpoint
from transformer_cli.core.config import Config
from transformer_cli.core.errors import CheckpointError, ConfigError, DataError
from transformer_cli.data import store
from transformer_cli.data.base_checkpoint import (
    BaseCheckpoint,
    check_tokenizer_section,
    differences,
    load_base,
    refuse_misfits,
)
from transformer_cli.data.tokenizer import Tokenizer

FLAG = "--init-from"
# Free to differ from the checkpoint: dropout rates and the attention kernel change no
# parameter. The vocabulary sizes are the tokenizer's, which the fingerprint checks.
FREE_MODEL_FIELDS = ("dropout", "attention_dropout", "attention", "src_vocab", "tgt_vocab")


@dataclass(frozen=True)
class Start:
    """Where a run's weights come from: new ones, the run dir's own last checkpoint
    (`resume`), or another run's checkpoint (`init_from`); never both of the last two."""

    resume: bool = False
    init_from: Path | None = None

    def __post_init__(self) -> None:
        if self.init_from is not None and self.resume:
            raise ConfigError(
                f"{FLAG} and --resume do not go together: {FLAG} starts a new run from a "
                "checkpoint's weights, --resume continues the run dir's own checkpoints "
                "(a fine-tuning run resumes with --resume alone)"
            )


def base_for(cfg: Config, run_dir: Path, path: str | Path) -> BaseCheckpoint:
    """Checkpoint `path`, once the config and the run dir's cache are shown to fit it."""
    base = load_base(path, FLAG)
    shape = differences("model", cfg.model, base.config.model, skip=FREE_MODEL_FIELDS)
    refuse_misfits(base, shape, "the model's shape must be the checkpoint's")
    check_tokenizer_section(cfg, base)
    check_cache_tokenizer(run_dir, base)
    return base


def check_cache_tokenizer(run_dir: Path, base: BaseCheckpoint) -> None:
    """The cache must hold ids of the checkpoint's tokenizer: equal fingerprints."""
    meta = store.load_meta(run_dir)
    # a cache prepared before meta.json held the fingerprint: its model files tell
    recorded = meta.get("tokenizer", {}).get("sha256") or Tokenizer.load(run_dir).fingerprint()
    wanted = base.tokenizer.fingerprint()
    if recorded != wanted:
        raise DataError(
            f"{store.cache_dir(run_dir)} was prepared with another tokenizer (sha256 "
            f"{recorded[:12]}) than {base.where} (sha256 {wanted[:12]}): prepare it with "
            f"`tfx prepare --config ... --tokenizer-from {base.path}`"
        )


def load_weights(model: torch.nn.Module, base: BaseCheckpoint) -> str:
    """Copy the checkpoint's weights into `model` (of the same shape); returns a note."""
    try:
        model.load_state_dict(base.state["model"])
    except (RuntimeError, TypeError, AttributeError) as e:  # torch: missing or odd keys
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{base.where}: its weights do not fit its config ({first})"
        ) from None
    step = checkpoint.state_step(base.state)
    at = f" (its step {step})" if step >= 0 else ""
    return (
        f"starting from the weights of {base.path}{at}, with a fresh optimizer, "
        "schedule and step count"
    )
