"""Atomic, self-describing checkpoints and the run dir's checkpoint files.

File format (checked before anything is unpickled):

    TFXCKPT\\n                                                  magic line
    {"format": 1, "payload_bytes": N, "sha256": "<hex>"}\\n     JSON header line
    <N bytes: torch.save(state)>                               payload

A file that is cut short or has a flipped byte fails the checksum and is never handed
to the unpickler; an intact payload is still loaded with `weights_only=True`, so a
crafted pickle cannot run code. Writes go through `fileio.atomic_open`, so a crash
mid-save leaves the previous file as it was.

The state a training checkpoint holds (all of it survives weights_only loading):
    tfx_version     str
    config          the resolved config as a plain dict (config.to_dict)
    model           model.state_dict()
    optimizer       optimizer.state_dict()
    scaler          GradScaler.state_dict() or None
    progress        train.Progress as a dict: step (optimiser updates done), epoch,
                    batch_pos (batches of that epoch consumed), best_bleu, ...
    rng             capture_rng(): {"torch": ByteTensor, "cuda": [ByteTensor] | None,
                    "python": random.getstate()}; rank 0's in a distributed run
    world_size      the number of ranks that trained it (1 outside torchrun; absent in
                    checkpoints older than distributed training, meaning 1)
    rng_ranks       a distributed run only: every rank's capture_rng(), in rank order
    tokenizer       {file name: SentencePiece model bytes}

Run-dir layout: RUN_DIR/checkpoints/ckpt_{step:08d}.pt (the newest `keep_last` are
kept), plus last.pt and best.pt there as real files, hard links to a step checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from transformer_cli import __version__
from transformer_cli.core.errors import CheckpointError, os_problem
from transformer_cli.core.fileio import atomic_open, fsync_dir, is_partial_write

MAGIC = b"TFXCKPT\n"
FORMAT_VERSION = 1
_HEADER_LIMIT = 4096  # bytes; a longer "header line" means this is not our file
_STEP_FILE = re.compile(r"ckpt_(\d+)\.pt")
_LINK_TEMP = re.compile(r"\..+\.\d+\.link")  # publish's `.NAME.PID.link`
# what a checkpoint must hold for inference; training state (optimizer, rng) is optional
REQUIRED_KEYS = ("tfx_version", "config", "tokenizer", "model")

# ----------------------------------------------------------------------------- one file


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write `state` to `path` atomically, framed by the magic line and a checksum."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getbuffer()  # a view: no second copy of a 100 MB model
    header = {
        "format": FORMAT_VERSION,
        "payload_bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    try:
        with atomic_open(path) as f:
            f.write(MAGIC)
            f.write(json.dumps(header).encode("ascii") + b"\n")
            f.write(payload)
    except OSError as e:  # a full disk, a quota, a read-only dir: the user's to fix
        raise CheckpointError(write_failure(e, path)) from None


def write_failure(e: OSError, path: str | Path) -> str:
    """The one-line message for a failed write during training: what, where, what is safe."""
    return f"{os_problem(e)} while writing {path}; the checkpoints written before it are intact"


def read_payload(path: str | Path) -> bytes:
    """The verified payload bytes of a checkpoint; CheckpointError for anything wrong."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    try:
        with open(path, "rb") as f:
            magic = f.read(len(MAGIC))
            if magic != MAGIC:
                hint = " (a plain torch.save file?)" if magic.startswith(b"PK") else ""
                raise CheckpointError(f"{path}: not a tfx checkpoint{hint}")
            line = f.readline(_HEADER_LIMIT)
            payload = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    try:
        header = json.loads(line)
        version = header["format"]
        size, digest = int(header["payload_bytes"]), str(header["sha256"])
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{path}: is corrupt (unreadable header)") from None
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version!r} is not supported "
            f"(this tfx reads format {FORMAT_VERSION}); use the tfx version that wrote it"
        )
    if len(payload) != size or hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError(f"{path}: is corrupt (checksum mismatch): was it cut short?")
    return payload


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Verify, then safely unpickle a checkpoint written by `save_checkpoint`."""
    payload = read_payload(path)
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for a refused pickle
        raise CheckpointError(
            f"{path}: refused to load: the payload holds more than tensors and plain data "
            f"({_refusal_reason(e)})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: does not hold a state dict ({type(state).__name__})")
    return state


def _refusal_reason(e: Exception) -> str:
    """The informative sentence of torch's multi-paragraph weights_only error."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # torch colours part of its message
    m = re.search(r"WeightsUnpickler error: ([^\n]*?)(?: was not an allowed|\.\s|$)", text)
    if m:
        return m.group(1).strip()
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first[:160] or type(e).__name__


# ----------------------------------------------------------------------------- RNG state


def capture_rng() -> dict[str, Any]:
    """Every RNG state training draws from, in types that weights_only loading accepts."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "python": random.getstate(),
    }


def restore_rng(rng: dict[str, Any]) -> None:
    """Undo `capture_rng`; a CUDA state saved on a machine without CUDA is ignored."""
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    # weights_only loading returns the tuple as saved; lists are accepted too, for safety.
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))


# ----------------------------------------------------------------------------- run dir


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_path(run_dir: str | Path, step: int) -> Path:
    return checkpoints_dir(run_dir) / f"ckpt_{step:08d}.pt"


def last_path(run_dir: str | Path) -> Path:
    return checkpoints_dir(run_dir) / "last.pt"


def best_path(run_dir: str | Path) -> Path:
    return checkpoints_dir(run_dir) / "best.pt"


def step_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every ckpt_*.pt in the run dir, oldest first."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(checkpoints_dir(run_dir)):
            m = _STEP_FILE.fullmatch(entry.name)
            if m and entry.is_file():
                found.append((int(m.group(1)), Path(entry.path)))
    return sorted(found)


def publish(src: Path, dst: Path) -> None:
    """Make `dst` the same bytes as `src` atomically: a hard link renamed over it.

    A link costs no second write of a large file and keeps its bytes alive when `src`
    is later pruned. Where links are not supported, fall back to an atomic copy.
    """
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        with atomic_open(dst) as f, open(src, "rb") as s:
            shutil.copyfileobj(s, f, length=16 << 20)
        return
    try:
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(dst.parent)


def prune(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` step checkpoints; returns what was removed.

    last.pt and best.pt are links of their own, so their bytes survive this.
    """
    doomed = [p for _, p in step_checkpoints(run_dir)[: -keep_last if keep_last > 0 else None]]
    for p in doomed:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)
    return doomed


def save_step(
    run_dir: str | Path, state: dict, step: int, keep_last: int, best: bool = False
) -> Path:
    """Save ckpt_{step}.pt, point last.pt (and best.pt if `best`) at it, prune old ones."""
    path = step_path(run_dir, step)
    save_checkpoint(path, state)
    for name, wanted in ((last_path(run_dir), True), (best_path(run_dir), best)):
        if not wanted:
            continue
        try:
            publish(path, name)
        except OSError as e:
            raise CheckpointError(write_failure(e, name)) from None
    prune(run_dir, keep_last)
    return path


def remove_partial_writes(run_dir: str | Path) -> list[Path]:
    """Delete temp files a killed save or relink left behind (their names only).

    Only the run-lock holder may call this.
    """
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(checkpoints_dir(run_dir)):
            if is_partial_write(entry.name) or _LINK_TEMP.fullmatch(entry.name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def state_step(state: dict) -> int:
    """The step a checkpoint was saved at (-1 if it does not say).

    The training loop keeps it in state["progress"]["step"]; a top-level "step" is read too.
    """
    progress = state.get("progress")
    step = progress.get("step") if isinstance(progress, dict) else state.get("step")
    return step if isinstance(step, int) else -1


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def find_resumable(run_dir: str | Path, warn: Callable[[str], None] = _stderr) -> tuple[Path, dict]:
    """The newest intact checkpoint of a run: last.pt, unless a newer ckpt_*.pt loads.

    A step file newer than last.pt exists when a run died between writing it and
    relinking last.pt. Every corrupt file passed over is reported through `warn`.
    """
    candidates = step_checkpoints(run_dir)
    last = last_path(run_dir)
    newest: tuple[Path, dict] | None = None
    skipped: list[str] = []
    last_step = -1
    if last.exists():
        try:
            state = load_checkpoint(last)
            newest, last_step = (last, state), state_step(state)
        except CheckpointError as e:
            skipped.append(str(e))
    for step, path in reversed(candidates):
        if step <= last_step:
            break
        try:
            newest = (path, load_checkpoint(path))
            break
        except CheckpointError as e:
            skipped.append(str(e))
    for message in skipped:
        warn(f"warning: skipped a checkpoint that does not load: {message}")
    if newest is None:
        looked = f"{checkpoints_dir(run_dir)}/last.pt and ckpt_*.pt"
        detail = f"; {len(skipped)} found, none intact" if skipped else ""
        raise CheckpointError(f"no checkpoint to resume from (looked for {looked}{detail})")
    return newest


# ----------------------------------------------------------------------------- for inference


def compatible_version(version: str) -> bool:
    """Same major version; within 0.x, the same minor (0.x releases may change the format)."""
    try:
        major, minor = (int(p) for p in str(version).split(".")[:2])
        ours_major, ours_minor = (int(p) for p in __version__.split(".")[:2])
    except ValueError:
        return False
    return major == ours_major and (major > 0 or minor == ours_minor)


def load_state(path: str | Path) -> dict:
    """A verified checkpoint that holds what inference needs; CheckpointError otherwise."""
    state = load_checkpoint(path)
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(
            f"{path}: not a complete tfx checkpoint (missing {', '.join(missing)})"
        )
    if not compatible_version(state["tfx_version"]):
        raise CheckpointError(
            f"{path}: written by tfx {state['tfx_version']}, which this tfx {__version__} "
            "cannot read; use the tfx version that wrote it"
        )
    return state
