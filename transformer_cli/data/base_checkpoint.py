"""The checkpoint a fine-tuning run starts from, and how a new config is held against it.

`tfx prepare --tokenizer-from CKPT` takes its SentencePiece model(s), `tfx train
--init-from CKPT` its weights (training/finetune.py). Both read it here, and both report
a config that does not fit it the same way: one line that names every field that
differs, with the config's value and the checkpoint's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from transformer_cli.core import checkpoint
from transformer_cli.core.config import Config
from transformer_cli.core.errors import CheckpointError, ConfigError
from transformer_cli.data.checkpoint_parts import config_and_tokenizer
from transformer_cli.data.tokenizer import Tokenizer


@dataclass(frozen=True)
class BaseCheckpoint:
    """A verified, complete tfx checkpoint, read for the flag that named it."""

    path: Path
    flag: str  # --tokenizer-from or --init-from: messages start with it and the path
    config: Config  # its own config, as this tfx reads it
    tokenizer: Tokenizer
    state: dict  # the whole checkpoint state; the weights are state["model"]

    @property
    def where(self) -> str:
        return f"{self.flag} {self.path}"


def load_base(path: str | Path, flag: str) -> BaseCheckpoint:
    """Read `path` for `flag`; CheckpointError (a line starting with both) if it is unfit.

    It must hold what inference needs (config, tokenizer, weights); optimizer state and
    progress are not read, so an averaged checkpoint is as good a start as any.
    """
    try:
        state = checkpoint.load_state(path)
        cfg, tokenizer = config_and_tokenizer(state, path)
    except CheckpointError as e:  # its message starts with the path
        raise CheckpointError(f"{flag} {e}") from None
    return BaseCheckpoint(Path(path), flag, cfg, tokenizer, state)


def differences(
    section: str, ours: object, theirs: object, skip: tuple[str, ...] = ()
) -> list[str]:
    """`section.field: A in the config, B in the checkpoint` for each field that differs.

    `ours` and `theirs` are the same config dataclass (ModelConfig, TokenizerConfig);
    the fields in `skip` may differ.
    """
    found = []
    for field in dataclasses.fields(ours):  # type: ignore[arg-type]
        a, b = getattr(ours, field.name), getattr(theirs, field.name)
        if field.name not in skip and a != b:
            found.append(
                f"{section}.{field.name}: {_show(a)} in the config, {_show(b)} in the checkpoint"
            )
    return found


def refuse_misfits(base: BaseCheckpoint, problems: list[str], rule: str) -> None:
    """A ConfigError that names every problem and the `rule` they break; none: return."""
    if problems:
        raise ConfigError(f"{base.where}: {'; '.join(problems)} ({rule})")


def check_tokenizer_section(cfg: Config, base: BaseCheckpoint) -> None:
    """The config's tokenizer section must be the checkpoint's: it describes the
    SentencePiece model(s) the run uses, and the run's config.yaml and checkpoints say so."""
    refuse_misfits(
        base,
        differences("tokenizer", cfg.tokenizer, base.config.tokenizer),
        "the tokenizer section must be the checkpoint's, whose SentencePiece model is used",
    )


def _show(value: object) -> str:
    """A value as YAML writes it: true/false, numbers and strings bare."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)
