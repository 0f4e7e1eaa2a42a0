"""A self-contained checkpoint -> (model, tokenizer, config), ready for decoding."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from transformer_cli.core.checkpoint import load_state
from transformer_cli.core.config import Config, ResolvedPrecision
from transformer_cli.core.errors import CheckpointError
from transformer_cli.data.checkpoint_parts import config_and_tokenizer
from transformer_cli.data.tokenizer import Tokenizer
from transformer_cli.fast.packing import pack_linears
from transformer_cli.model.transformer import Transformer

if TYPE_CHECKING:
    import torch


def model_from_state(
    state: dict, path: str | Path, device: torch.device
) -> tuple[Transformer, Tokenizer, Config]:
    """(model in eval mode on `device`, tokenizer, config) from a loaded checkpoint state."""
    cfg, tokenizer = config_and_tokenizer(state, path)
    try:
        model = Transformer(cfg.model)
        model.load_state_dict(state["model"])
    except (ValueError, RuntimeError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: its weights do not fit its config ({first})") from None
    return model.to(device).eval(), tokenizer, cfg


def load_model(path: str | Path, device: torch.device) -> tuple[Transformer, Tokenizer, Config]:
    """(model, tokenizer, config) from a self-contained checkpoint; CheckpointError if not."""
    return model_from_state(load_state(path), path, device)


def ready_to_decode(
    model: Transformer, device: torch.device, precision: ResolvedPrecision
) -> Transformer:
    """`model` as translate and evaluate decode with it: the same numbers, faster.

    The one place the decoding fast path is switched on: every linear layer's weight is
    packed once for oneDNN where this CPU and torch build have it (`fast/packing.py`; its
    outputs equal `F.linear`'s, tests/fast/test_packing.py).
    """
    pack_linears(model, device, precision)
    return model
