"""Cut or flipped checkpoints: detected on load; `--resume` falls back to an intact one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from faultlib import (
    assert_one_error,
    assert_same_training_state,
    last_state,
    prepared_run,
    reference_run,
    reference_state,
    tiny_raw,
    write_config,
)
from typer.testing import CliRunner

from transformer_cli.cli.app import app
from transformer_cli.core import checkpoint
from transformer_cli.core.checkpoint import MAGIC
from transformer_cli.core.config_file import config_from_dict
from transformer_cli.training import loop as train

pytestmark = pytest.mark.faults


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def cut_short(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 5])


def zero_the_header(path: Path) -> None:
    data = path.read_bytes()
    end = data.index(b"\n", len(MAGIC))
    path.write_bytes(data[: len(MAGIC)] + b"\0" * (end - len(MAGIC)) + data[end:])


@pytest.fixture
def finished(tmp_path, tmp_path_factory, toy_pairs) -> tuple[Path, Path]:
    """(a copy of a finished 12-step run, its config): checkpoints at steps 9 and 12."""
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run(tmp_path_factory, toy_pairs), run_dir)
    data, _ = prepared_run(tmp_path_factory, toy_pairs)
    return run_dir, write_config(tmp_path / "tiny.yaml", tiny_raw(run_dir, data))


@pytest.mark.parametrize("damage", [flip_a_byte, cut_short, zero_the_header])
def test_resume_falls_back_to_the_newest_intact_checkpoint_and_says_so(
    finished, damage, tmp_path_factory, toy_pairs
):
    run_dir, config = finished
    # last.pt is a hard link to ckpt_00000012.pt: damage reaches both names
    for path in (checkpoint.last_path(run_dir), checkpoint.step_path(run_dir, 12)):
        damage(path)
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--resume"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, warnings
    assert all("is corrupt" in w for w in warnings), warnings
    assert "ckpt_00000009.pt at step 9" in result.stderr
    assert_same_training_state(last_state(run_dir), reference_state(tmp_path_factory, toy_pairs))


def test_resume_with_no_intact_checkpoint_is_one_clear_error(finished):
    run_dir, config = finished
    for path in run_dir.glob("checkpoints/*.pt"):
        cut_short(path)
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--resume"])
    assert_one_error(result, "no checkpoint to resume from")
    assert "none intact" in result.stderr


def test_a_corrupt_step_file_beside_an_intact_copy_of_last_loses_no_steps(
    tmp_path, tmp_path_factory, toy_pairs, monkeypatch
):
    """Where hard links fail, last.pt is a copy: damage to the step file does not reach it."""

    def no_links(*_args, **_kwargs):
        raise OSError("hard links not supported")

    monkeypatch.setattr(checkpoint.os, "link", no_links)
    data, prepared = prepared_run(tmp_path_factory, toy_pairs)
    run_dir = tmp_path / "run"
    shutil.copytree(prepared / "cache", run_dir / "cache")
    train.run(config_from_dict(tiny_raw(run_dir, data)))
    monkeypatch.undo()
    cut_short(checkpoint.step_path(run_dir, 12))

    notes: list[str] = []
    path, state = checkpoint.find_resumable(run_dir, warn=notes.append)
    assert path == checkpoint.last_path(run_dir)
    assert state["progress"]["step"] == 12
