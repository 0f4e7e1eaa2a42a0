"""What every reader of a tfx checkpoint needs first: its config and its tokenizer.

Translation, evaluation and fine-tuning all read them this way, so a checkpoint that does
not fit this tfx is reported in the same words whoever reads it.
"""

from __future__ import annotations

from pathlib import Path

from transformer_cli.core.config import Config
from transformer_cli.core.config_file import config_from_dict
from transformer_cli.core.errors import CheckpointError, ConfigError, DataError
from transformer_cli.data.tokenizer import Tokenizer

# keys whose default changed after checkpoints without them were written: what a saved
# config that lacks one meant when it was written
WRITTEN_BEFORE = {("model", "embedding_init"): "xavier"}


def as_written(config: dict) -> dict:
    """A saved config with the defaults of its time filled in (`WRITTEN_BEFORE`)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for (section, key), value in WRITTEN_BEFORE.items():
        if isinstance(out.get(section), dict):
            out[section].setdefault(key, value)
    return out


def saved_config(holder: dict, path: str | Path, source: str | Path | None = None) -> Config:
    """The config saved in `holder` (a checkpoint's state, an export's tfx_export.json);
    CheckpointError naming `path` if this tfx cannot read it. `source`: the file it came
    from, for the config error's own message (default: `path`)."""
    try:
        return config_from_dict(
            as_written(holder["config"]), source=f"{source or path} (its config)"
        )
    except (ConfigError, KeyError) as e:
        raise CheckpointError(f"{path}: its config does not fit this tfx: {e}") from None


def config_and_tokenizer(state: dict, path: str | Path) -> tuple[Config, Tokenizer]:
    """A loaded checkpoint's config and tokenizer; CheckpointError naming `path` if unfit."""
    cfg = saved_config(state, path)
    try:
        tokenizer = Tokenizer.from_bytes(state["tokenizer"])
    except (DataError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: its tokenizer does not load: {e}") from None
    return cfg, tokenizer
