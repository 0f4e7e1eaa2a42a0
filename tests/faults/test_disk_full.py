"""A full disk while saving: one clear error, the previous checkpoint intact, no temp files."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

import pytest
from faultlib import (
    assert_one_error,
    assert_same_training_state,
    last_state,
    new_run,
    prepared_run,
    reference_state,
    temp_litter,
)
from typer.testing import CliRunner

from transformer_cli.cli.app import app
from transformer_cli.core import checkpoint
from transformer_cli.inspect.curves import read_metrics

pytestmark = pytest.mark.faults

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FillsUp:
    """A file whose disk fills up half-way through the payload (the third write)."""

    def __init__(self, f):
        self.f, self.writes = f, 0

    def write(self, data) -> int:
        self.writes += 1
        if self.writes == 3:
            self.f.write(bytes(data[: len(data) // 2]))
            raise ENOSPC
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


def full_disk_on_second_save(monkeypatch, where: str) -> None:
    """Make the second checkpoint save (step 6) fail with ENOSPC at `where`."""
    saves = [0]
    real_open = checkpoint.atomic_open
    real_fsync = os.fsync

    def fsync_fails(_fd):
        raise ENOSPC

    @contextlib.contextmanager
    def atomic_open(path):
        saves[0] += 1
        if saves[0] == 2 and where == "fsync":
            monkeypatch.setattr(os, "fsync", fsync_fails)  # atomic_open syncs before renaming
        try:
            with real_open(path) as f:
                yield FillsUp(f) if saves[0] == 2 and where == "write" else f
        finally:
            monkeypatch.setattr(os, "fsync", real_fsync)

    monkeypatch.setattr(checkpoint, "atomic_open", atomic_open)


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_disk_full_while_saving(tmp_path, tmp_path_factory, toy_pairs, monkeypatch, where):
    run_dir, config = new_run(tmp_path, prepared_run(tmp_path_factory, toy_pairs))
    full_disk_on_second_save(monkeypatch, where)
    result = CliRunner().invoke(app, ["train", "--config", str(config)])
    step6 = checkpoint.step_path(run_dir, 6)
    assert_one_error(result, f"no space left on device while writing {step6}")

    assert last_state(run_dir)["progress"]["step"] == 3  # the previous checkpoint is intact
    assert not step6.exists()
    assert temp_litter(run_dir) == []
    assert not (run_dir / "train.lock").exists()

    monkeypatch.undo()  # space was freed: the run resumes and ends as if nothing happened
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--resume"])
    assert result.exit_code == 0, result.output
    assert_same_training_state(last_state(run_dir), reference_state(tmp_path_factory, toy_pairs))


def test_disk_full_while_linking_last(tmp_path, tmp_path_factory, toy_pairs, monkeypatch):
    run_dir, config = new_run(tmp_path, prepared_run(tmp_path_factory, toy_pairs))
    real_replace = os.replace
    links = [0]

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == "last.pt":
            links[0] += 1
            if links[0] == 2:
                raise ENOSPC
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    result = CliRunner().invoke(app, ["train", "--config", str(config)])
    last = checkpoint.last_path(run_dir)
    assert_one_error(result, f"no space left on device while writing {last}")
    assert last_state(run_dir)["progress"]["step"] == 3
    assert temp_litter(run_dir) == []
    # the step file did get written: resume starts from it
    path, state = checkpoint.find_resumable(run_dir)
    assert state["progress"]["step"] == 6


class LogFillsUp:
    """metrics.jsonl on a disk that fills up half-way through record `n`."""

    def __init__(self, f, n: int):
        self.f, self.n, self.records = f, n, 0

    def write(self, text: str) -> int:
        self.records += 1
        if self.records == self.n:
            self.f.write(text[: len(text) // 2])
            self.f.flush()
            raise ENOSPC
        return self.f.write(text)

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_disk_full_while_logging_metrics(tmp_path, tmp_path_factory, toy_pairs, monkeypatch):
    run_dir, config = new_run(tmp_path, prepared_run(tmp_path_factory, toy_pairs))
    real_open = Path.open

    def open_(self, mode="r", *args, **kwargs):
        f = real_open(self, mode, *args, **kwargs)
        return LogFillsUp(f, n=5) if self.name == "metrics.jsonl" and mode == "a" else f

    monkeypatch.setattr(Path, "open", open_)
    result = CliRunner().invoke(app, ["train", "--config", str(config)])
    metrics = run_dir / "metrics.jsonl"
    assert_one_error(result, f"no space left on device while writing {metrics}")
    assert last_state(run_dir)["progress"]["step"] == 3
    assert temp_litter(run_dir) == []
    assert not (run_dir / "train.lock").exists()
    assert not metrics.read_bytes().endswith(b"\n")  # half a record made it to the disk

    monkeypatch.undo()  # space was freed
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--resume"])
    assert result.exit_code == 0, result.output
    train_records, valid_records = read_metrics(run_dir)  # what tfx plot reads
    assert [r["step"] for r in train_records] == list(range(1, 13))
    assert [r["step"] for r in valid_records] == [3, 6, 9, 12]
