"""Faults of a distributed job (`tfx train --nproc 2`, gloo on the CPU): a rank SIGKILLed
mid-run, and Ctrl-C to the launcher.

A killed rank ends the whole job, with one line that names it, no process left behind,
and the checkpoints before intact; --resume on 2 ranks then gives bit for bit the run
that was never interrupted (train.threads=1).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faultlib import (
    assert_same_training_state,
    copy_cache,
    kill9,
    last_state,
    prepared_run,
    run_tfx,
    start_tfx,
    tiny_raw,
    wait_until,
    write_config,
)

from transformer_cli.core import checkpoint

pytestmark = pytest.mark.faults


@pytest.fixture
def prepared(tmp_path_factory, toy_pairs) -> tuple[Path, Path]:
    return prepared_run(tmp_path_factory, toy_pairs)


def job(tmp_path: Path, prepared, name: str, **train) -> tuple[Path, Path]:
    """(run dir, config) of a 2-rank tiny job: dropout on, so resume must restore RNGs."""
    data, template = prepared
    run_dir = tmp_path / name
    copy_cache(template, run_dir)
    raw = tiny_raw(run_dir, data, dist_timeout_minutes=0.5, **train)
    return run_dir, write_config(tmp_path / f"{name}.yaml", raw)


def children(pid: int) -> dict[int, str]:
    """{pid: RANK} of the processes whose parent is `pid` (the launcher's ranks)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) != pid:
                continue
            env = (entry / "environ").read_bytes().split(b"\0")
            rank = next((e[5:].decode() for e in env if e.startswith(b"RANK=")), "")
            found[int(entry.name)] = rank
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie is gone but for its entry
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


def saved_steps(run_dir: Path) -> list[int]:
    return [step for step, _ in checkpoint.step_checkpoints(run_dir)]


@pytest.mark.skipif(not Path("/proc").exists(), reason="finds the ranks through /proc")
def test_a_killed_rank_ends_the_job_and_resume_on_two_ranks_is_exact(tmp_path, prepared):
    run_dir, config = job(tmp_path, prepared, "killed", max_steps=10_000, eval_every=2)
    log = tmp_path / "killed.log"
    launcher = start_tfx(["train", "--config", str(config), "--nproc", "2"], log)
    try:
        wait_until(lambda: saved_steps(run_dir), launcher, log=log)
        ranks = children(launcher.pid)
        assert sorted(ranks.values()) == ["0", "1"], ranks
        victim = next(pid for pid, rank in ranks.items() if rank == "1")
        os.kill(victim, signal.SIGKILL)
        started = time.monotonic()
        code = launcher.wait(timeout=60)
    finally:
        kill9(launcher)
    assert code != 0
    # bounded: a survivor blocked in a collective is freed by the collective timeout (30 s
    # here) or by torchrun's SIGKILL after its 30 s shutdown timeout, whichever is first
    assert time.monotonic() - started < 45
    last = log.read_text().strip().splitlines()[-1]
    assert last.startswith(f"error: rank 1 (pid {victim}) was killed by SIGKILL"), last
    assert not [pid for pid in ranks if alive(pid)]  # no orphans
    assert not (run_dir / "train.lock").exists()  # the launcher let go of the run dir
    step = last_state(run_dir)["progress"]["step"]  # the last checkpoint loads
    assert step >= 2

    resume = ["train", "--config", str(config), "--nproc", "2", "--resume"]
    end = f"--set=train.max_steps={step + 3}"
    assert run_tfx([*resume, end], tmp_path / "resumed.log") == 0
    straight, straight_config = job(
        tmp_path, prepared, "straight", max_steps=step + 3, eval_every=2
    )
    args = ["train", "--config", str(straight_config), "--nproc", "2"]
    assert run_tfx(args, tmp_path / "straight.log") == 0
    assert_same_training_state(last_state(run_dir), last_state(straight))


def test_ctrl_c_to_the_launcher_stops_every_rank_at_one_step_with_one_save(tmp_path, prepared):
    run_dir, config = job(tmp_path, prepared, "interrupted", max_steps=10_000, eval_every=10_000)
    log = tmp_path / "interrupted.log"
    launcher = start_tfx(["train", "--config", str(config), "--nproc", "2"], log)
    metrics = run_dir / "metrics.jsonl"
    try:
        wait_until(lambda: metrics.exists() and metrics.read_text().count("\n") >= 3, launcher)
        launcher.send_signal(signal.SIGINT)
        code = launcher.wait(timeout=60)
    finally:
        kill9(launcher)
    text = log.read_text()
    assert code == 130, text
    step = last_state(run_dir)["progress"]["step"]
    assert saved_steps(run_dir) == [step]  # exactly one checkpoint: the stop's
    assert f"2 ranks, all stopped at step {step}" in text
    assert "stopped by SIGINT; continue with --resume" in text
    resumed = ["train", "--config", str(config), "--nproc", "2", "--resume"]
    assert run_tfx([*resumed, f"--set=train.max_steps={step + 1}"], tmp_path / "r.log") == 0
    assert last_state(run_dir)["progress"]["step"] == step + 1


RAISE_ON_RANK_1 = """
import os, sys
from transformer_cli.training import loop
real = loop.train_step
def failing(trainer, group, lr, batches=None, calls=[0]):
    calls[0] += 1
    if os.environ["RANK"] == "1" and calls[0] == 3:
        raise RuntimeError("injected failure on rank 1")
    return real(trainer, group, lr, batches)
loop.train_step = failing
from transformer_cli.cli.app import main
sys.argv = ["tfx", *sys.argv[1:]]
main()
"""


@pytest.mark.skipif(not Path("/proc").exists(), reason="finds the ranks through /proc")
def test_a_rank_that_raises_ends_the_job_without_a_hang(tmp_path, prepared):
    from faultlib import child_env

    run_dir, config = job(tmp_path, prepared, "raising", max_steps=10_000, eval_every=2)
    boot = tmp_path / "boot.py"
    boot.write_text(RAISE_ON_RANK_1, encoding="utf-8")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command = [*launcher, "--nproc-per-node=2", "--max-restarts=0", str(boot)]
    command += ["train", "--config", str(config)]
    started = time.monotonic()
    with open(tmp_path / "raising.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_env())
        ranks = {}
        with contextlib.suppress(AssertionError):  # it may be over before they are seen
            wait_until(lambda: len(children(process.pid)) == 2, process, timeout=60)
            ranks = children(process.pid)
        code = process.wait(timeout=120)
    text = (tmp_path / "raising.log").read_text()
    assert code != 0
    assert time.monotonic() - started < 60, text  # far from the 30 s collective timeout x2
    assert "injected failure on rank 1" in text
    assert not [pid for pid in ranks if alive(pid)]
    assert last_state(run_dir)["progress"]["step"] == 2  # the save before the failure
