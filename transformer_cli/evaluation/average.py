"""Checkpoint averaging: the mean of several checkpoints' weights as one new checkpoint.

Averaging the last few checkpoints of a run smooths out the noise of the last updates
and usually gains a little BLEU for free (Vaswani et al. 2017, section 6.1: "averaging
the last 5 checkpoints"). The result is self-contained like any tfx checkpoint: config
and tokenizer travel with it; it has no optimizer state, so it cannot be resumed from.
"""

from __future__ import annotations

import glob
import sys
from pathlib import Path

import torch

from transformer_cli import __version__
from transformer_cli.core import checkpoint
from transformer_cli.core.checkpoint import load_state, state_step
from transformer_cli.core.errors import CheckpointError
from transformer_cli.decoding.ct2_backend import is_export_dir

GLOB_CHARS = "*?["


def expand(patterns: list[str]) -> list[Path]:
    """Checkpoint paths from arguments: files, directories (their *.pt) and globs.

    A directory that `tfx export --to ctranslate2` wrote is one path itself.

    Globs are expanded here too, because a quoted glob reaches tfx as it was typed. The
    same file reached twice (last.pt is a hard link to a ckpt_*.pt) is listed once, by
    its first name in sorted order.
    """
    paths: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if is_export_dir(path):  # a CTranslate2 export: evaluate scores it as one model
            paths.append(path)
        elif path.is_dir():
            found = sorted(path.glob("*.pt"))
            if not found:
                raise CheckpointError(f"{path}: no *.pt checkpoints in this directory")
            paths.extend(found)
        elif not path.exists() and any(c in pattern for c in GLOB_CHARS):
            found = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
            if not found:
                raise CheckpointError(f"{pattern}: no checkpoint matches this pattern")
            paths.extend(found)
        else:
            paths.append(path)  # a missing file is reported, in one line, when it loads
    seen: set[tuple[int, int]] = set()
    unique = []
    for path in paths:
        try:
            st = path.stat()
            key = (st.st_dev, st.st_ino)
        except OSError:
            unique.append(path)
            continue
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def average_weights(states: list[dict]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the states' model weights, each in its own dtype.

    Floating-point tensors are summed in float64, so averaging N copies of the same
    weights gives those weights back exactly; integer buffers (counters) are taken from
    the last state. Tensors shared under several names (tied embeddings) stay shared.
    """
    first = states[0]["model"]
    for other in states[1:]:
        model = other["model"]
        if model.keys() != first.keys():
            raise ValueError("the checkpoints hold different sets of weights")
        for name, tensor in first.items():
            if model[name].shape != tensor.shape:
                raise ValueError(
                    f"{name}: shape {tuple(model[name].shape)} vs {tuple(tensor.shape)}"
                )
    averaged: dict[str, torch.Tensor] = {}
    shared: dict[int, torch.Tensor] = {}
    for name, tensor in first.items():
        if tensor.data_ptr() in shared:
            averaged[name] = shared[tensor.data_ptr()]
            continue
        if tensor.is_floating_point():
            total = torch.zeros(tensor.shape, dtype=torch.float64)
            for state in states:
                total += state["model"][name].to(torch.float64)
            value = (total / len(states)).to(tensor.dtype)
        else:
            value = states[-1]["model"][name].clone()
        averaged[name] = shared[tensor.data_ptr()] = value
    return averaged


def average_checkpoints(paths: list[Path], output: str | Path) -> dict:
    """Average `paths` (same model config and tokenizer) into a new checkpoint at `output`."""
    if not paths:
        raise CheckpointError("no checkpoints to average")
    states = [load_state(p) for p in paths]
    base = states[0]
    for path, state in zip(paths[1:], states[1:], strict=True):
        if state["config"].get("model") != base["config"].get("model"):
            raise CheckpointError(
                f"cannot average: {path} has another model config than {paths[0]}"
            )
        if state["tokenizer"] != base["tokenizer"]:
            raise CheckpointError(f"cannot average: {path} has another tokenizer than {paths[0]}")
    try:
        weights = average_weights(states)
    except ValueError as e:
        raise CheckpointError(f"cannot average {paths[0]} and the others: {e}") from None
    newest = max(states, key=state_step)
    state = {
        "tfx_version": __version__,
        "config": newest["config"],
        "tokenizer": base["tokenizer"],
        "model": weights,
        "progress": {"step": state_step(newest)},
        "averaged_from": [
            {"path": str(p), "step": state_step(s)} for p, s in zip(paths, states, strict=True)
        ],
    }
    checkpoint.save_checkpoint(output, state)
    return state


def last_steps(paths: list[Path], n: int) -> list[Path]:
    """The `n` checkpoints with the highest distinct training steps, oldest first.

    best.pt and last.pt are copies of some step's checkpoint; a step is counted once.
    """
    by_step: dict[int, Path] = {}
    for path in paths:
        step = state_step(load_state(path))
        if step >= 0:
            by_step.setdefault(step, path)
    if len(by_step) < n:
        raise CheckpointError(
            f"--average {n} needs {n} checkpoints of different steps, found {len(by_step)}"
        )
    return [by_step[s] for s in sorted(by_step)[-n:]]


def run(checkpoints: list[str], output: str | Path, last: int = 0) -> Path:
    """`tfx average`: average the given checkpoints (or the `last` newest of them)."""
    if Path(output).is_dir():
        raise CheckpointError(f"{output}: is a directory; --output needs a file name")
    paths = expand(checkpoints)
    if last:
        paths = last_steps(paths, last)
    if len(paths) < 2:
        print("warning: averaging a single checkpoint copies its weights", file=sys.stderr)
    state = average_checkpoints(paths, output)
    steps = ", ".join(str(s["step"]) for s in state["averaged_from"])
    print(f"averaged {len(paths)} checkpoints (steps {steps}) into {output}")
    return Path(output)
