"""CLI options shared by `tfx` and `tfx inspect`, and loading a config with its overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="YAML config file.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config value: --set train.lr=3e-4 (repeatable)."),
]


def load(config: Path, overrides: list[str] | None):
    """The validated config at `config` with `--set` overrides (imports config lazily)."""
    from transformer_cli.core.config_file import load_config

    return load_config(config, overrides or [])
