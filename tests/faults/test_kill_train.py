"""SIGKILL `tfx train` anywhere; `--resume` continues from the last good checkpoint, exactly.

The final weights and optimiser state of an interrupted and resumed run equal those of
an uninterrupted one bit for bit (CPU, train.threads=1).
"""

from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path

import pytest
from faultlib import (
    assert_same_training_state,
    kill9,
    kill_at,
    last_state,
    new_run,
    prepared_run,
    reference_state,
    run_tfx,
    start_tfx,
    temp_litter,
    tiny_raw,
    wait_until,
)
from typer.testing import CliRunner

from transformer_cli.cli.app import app
from transformer_cli.core import checkpoint
from transformer_cli.core.config_file import config_from_dict
from transformer_cli.core.errors import CheckpointError
from transformer_cli.training import loop as train

pytestmark = pytest.mark.faults


@pytest.fixture
def prepared(tmp_path_factory, toy_pairs) -> tuple[Path, Path]:
    return prepared_run(tmp_path_factory, toy_pairs)


def newest_intact_step(run_dir: Path) -> int:
    """The step of the newest checkpoint file that loads (0 if none), checked independently."""
    steps = [0]
    for path in run_dir.glob("checkpoints/*.pt"):
        with contextlib.suppress(CheckpointError):
            steps.append(checkpoint.load_checkpoint(path)["progress"]["step"])
    return max(steps)


def test_kill_during_a_checkpoint_write_then_resume_is_exact(
    tmp_path, prepared, tmp_path_factory, toy_pairs
):
    run_dir, config = new_run(tmp_path, prepared)
    log = tmp_path / "log"
    # saves come at steps 3, 6, 9 and 12: die with half of step 6's payload on disk
    kill_at(["train", "--config", str(config)], log, "write|checkpoint|2", tmp_path / "paused")
    assert temp_litter(run_dir)  # the half-written temp file
    assert last_state(run_dir)["progress"]["step"] == 3

    result = CliRunner().invoke(app, ["train", "--config", str(config), "--resume"])
    assert result.exit_code == 0, result.output
    assert "at step 3" in result.stderr
    assert temp_litter(run_dir) == []  # the resumed run cleared the litter
    assert not (run_dir / "train.lock").exists()
    assert_same_training_state(last_state(run_dir), reference_state(tmp_path_factory, toy_pairs))


@pytest.mark.parametrize("limit", [{"max_steps": 12}, {"max_steps": 0, "max_epochs": 1}])
def test_resuming_a_finished_run_trains_no_further(tmp_path, prepared, limit):
    """A kill after the final checkpoint leaves a finished run: --resume must not add steps."""
    run_dir, _ = new_run(tmp_path, prepared)
    cfg = config_from_dict(tiny_raw(run_dir, prepared[0], **limit))
    done = train.run(cfg)
    before = last_state(run_dir)
    again = train.run(cfg, resume=True)
    assert again["steps"] == done["steps"]
    assert_same_training_state(last_state(run_dir), before)


# ----------------------------------------------------------------------------- 10 kills

STEPS, EVERY = 60, 3
# where a kill lands: a pause point (see faultlib.install_pause), or a random moment
KILL_POINTS = {
    "mid-step": "call|transformer_cli.training.step.batch_loss|{steps}",
    "mid-validation": "call|transformer_cli.training.loop.decode_all|{saves}",
    "checkpoint write": "write|checkpoint|{saves}",
    "before last.pt/best.pt relink": "call|transformer_cli.core.checkpoint.publish|{saves}",
    "random moment in training": None,
    "random moment in start-up": None,
}


@pytest.mark.slow
def test_ten_kills_at_random_points_then_resume_is_exact(
    tmp_path, prepared, tmp_path_factory, toy_pairs
):
    rng = random.Random(20240608)
    run_dir, config = new_run(tmp_path, prepared, max_steps=STEPS, eval_every=EVERY)
    log = tmp_path / "log"
    kinds = [*KILL_POINTS, *rng.sample(list(KILL_POINTS), 4)]
    rng.shuffle(kinds)
    good = 0
    for number, kind in enumerate(kinds):
        assert good < STEPS, "the run finished before the tenth kill"
        args = ["train", "--config", str(config)] + (["--resume"] if good else [])
        offset = log.stat().st_size if log.exists() else 0
        pattern = KILL_POINTS[kind]
        if pattern is not None:
            # die within the next few steps or saves, so that all ten kills find work to cut
            n = {"steps": rng.randint(1, 5), "saves": rng.randint(1, 2)}
            kill_at(args, log, pattern.format(**n), tmp_path / "paused")
        else:
            process = start_tfx(args, log)
            if kind == "random moment in training":
                wait_until(lambda o=offset: b"training " in log.read_bytes()[o:], process, log=log)
                time.sleep(rng.uniform(0, 0.3))
            else:
                time.sleep(rng.uniform(0, 3))
            kill9(process)
        text = log.read_bytes()[offset:].decode(errors="replace")
        assert "Traceback" not in text, text
        assert "error" not in text, text
        if good:
            assert f"at step {good}" in text or "resuming" not in text, (kind, text)
        now = newest_intact_step(run_dir)
        assert now >= good, f"kill {number} ({kind}) lost the checkpoint of step {good}"
        good = now

    args = ["train", "--config", str(config)] + (["--resume"] if good else [])
    assert run_tfx(args, log) == 0, log.read_text()
    assert temp_litter(run_dir) == []
    reference = reference_state(tmp_path_factory, toy_pairs, max_steps=STEPS, eval_every=EVERY)
    assert_same_training_state(last_state(run_dir), reference)
