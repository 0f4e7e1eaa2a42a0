"""Non-finite losses through the CLI: skipped and counted; too many in a row stop cleanly."""

from __future__ import annotations

import shutil

import pytest
from faultlib import (
    assert_one_error,
    prepared_run,
    reference_run,
    temp_litter,
    tiny_raw,
    write_config,
)
from typer.testing import CliRunner

from transformer_cli.cli.app import app
from transformer_cli.core import checkpoint
from transformer_cli.training import step as train
from transformer_cli.training.loss import LossParts

pytestmark = pytest.mark.faults


def nan_on(updates: set[int], monkeypatch) -> None:
    """Make the training loss non-finite on the given 1-based updates of this process."""
    real = train.batch_loss
    count = [0]

    def maybe_nan(*args, **kwargs):
        count[0] += 1
        parts = real(*args, **kwargs)
        if count[0] in updates:
            nan = float("nan")
            return LossParts(parts.loss * nan, parts.nll * nan, parts.n_tokens)
        return parts

    monkeypatch.setattr(train, "batch_loss", maybe_nan)


@pytest.fixture
def finished(tmp_path, tmp_path_factory, toy_pairs):
    """A copy of a finished 12-step run, and a config that continues it to step 30."""
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run(tmp_path_factory, toy_pairs), run_dir)
    data, _ = prepared_run(tmp_path_factory, toy_pairs)
    raw = tiny_raw(run_dir, data, max_steps=30, max_bad_steps=3)
    return run_dir, write_config(tmp_path / "tiny.yaml", raw)


def test_too_many_in_a_row_stop_with_one_line_and_the_checkpoints_intact(finished, monkeypatch):
    run_dir, config = finished
    before = {p.name: p.read_bytes() for p in run_dir.glob("checkpoints/*.pt")}
    nan_on(set(range(1, 30)), monkeypatch)  # steps 13, 14 and 15: it stops before saving 15
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--resume"])
    expected = "3 non-finite updates (loss or gradients) in a row at step 15"
    assert_one_error(result, f"{expected} (train.max_bad_steps=3)")
    assert "last good checkpoint" in result.stderr
    after = {p.name: p.read_bytes() for p in run_dir.glob("checkpoints/*.pt")}
    assert after == before
    assert temp_litter(run_dir) == []
    assert not (run_dir / "train.lock").exists()


def test_a_few_are_skipped_and_counted(finished, monkeypatch):
    run_dir, config = finished
    nan_on({2, 5}, monkeypatch)
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--resume"])
    assert result.exit_code == 0, result.output
    assert "skipped steps 2" in result.stdout
    state = checkpoint.load_checkpoint(checkpoint.last_path(run_dir))
    assert state["progress"]["step"] == 30
    assert state["progress"]["skipped_steps"] == 2
