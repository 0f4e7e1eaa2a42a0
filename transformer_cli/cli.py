"""The `tfx` command line. Each command is a few lines: load config -> <module>.run(...).

torch and the heavy modules are imported inside the commands, so `tfx --help` is instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from transformer_cli.errors import boundary

app = typer.Typer(
    name="tfx",
    help="tfx: train, evaluate and use Transformer translation models from YAML configs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="YAML config file.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config value: --set train.lr=3e-4 (repeatable)."),
]


def _load(config: Path, overrides: list[str] | None):
    from transformer_cli.config import load_config

    return load_config(config, overrides or [])


@app.command()
@boundary
def prepare(config: ConfigOpt, set_: SetOpt = None) -> None:
    """Read the corpus, train SentencePiece, and write the encoded cache into the run dir."""
    from transformer_cli import prepare as prepare_mod

    prepare_mod.run(_load(config, set_))


@app.command()
@boundary
def train(
    config: ConfigOpt,
    set_: SetOpt = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the run dir's last checkpoint.")
    ] = False,
) -> None:
    """Train a model on the prepared cache; checkpoints go into the run dir."""
    from transformer_cli import train as train_mod

    train_mod.run(_load(config, set_), resume=resume)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
