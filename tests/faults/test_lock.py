"""Two `tfx train` on one run dir: the second refuses; a killed owner's lock is taken over."""

from __future__ import annotations

import subprocess
import sys

import pytest
from faultlib import (
    assert_one_error,
    child_env,
    kill9,
    new_run,
    prepared_run,
    start_tfx,
    wait_until,
)
from typer.testing import CliRunner

from transformer_cli.cli.app import app

pytestmark = pytest.mark.faults


def test_a_second_trainer_refuses_and_a_dead_owners_lock_is_taken_over(
    tmp_path, tmp_path_factory, toy_pairs
):
    run_dir, config = new_run(tmp_path, prepared_run(tmp_path_factory, toy_pairs))
    train = [sys.executable, "-m", "transformer_cli", "train", "--config", str(config)]
    marker, log = tmp_path / "paused", tmp_path / "log"
    # the first trainer holds the lock, stopped in its first step
    first = start_tfx(
        train[3:], log, pause="call|transformer_cli.training.step.batch_loss|1", marker=marker
    )
    try:
        wait_until(marker.exists, first, log=log)
        second = subprocess.run(train, capture_output=True, text=True, env=child_env(), timeout=300)
        assert second.returncode == 2, second.stderr
        assert second.stderr.count("\n") == 1
        assert second.stderr.startswith("error: ")
        assert f"another training run is using this run dir (PID {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        assert second.stdout == ""
    finally:
        kill9(first)

    lock = run_dir / "train.lock"
    assert lock.read_text().split()[0] == str(first.pid)  # left behind by SIGKILL: stale
    result = CliRunner().invoke(app, ["train", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert not lock.exists()


def test_a_lock_from_another_host_is_one_clear_error(tmp_path, tmp_path_factory, toy_pairs):
    run_dir, config = new_run(tmp_path, prepared_run(tmp_path_factory, toy_pairs))
    (run_dir / "train.lock").write_text("4242 elsewhere.example.org\n")
    result = CliRunner().invoke(app, ["train", "--config", str(config)])
    assert_one_error(result, "PID 4242 on host elsewhere.example.org")
    assert not (run_dir / "checkpoints").exists()
