"""A checkpoint written by an earlier tfx still loads, translates the same, and trains on.

The expected outputs were produced by tfx itself at the commit that wrote the checkpoint
(tests/fixtures/legacy_461f0ec/README.md): this is a compatibility check across versions, not
a number copied from a run of the code under test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import toy_splits, write_splits
from typer.testing import CliRunner

from transformer_cli.cli.app import app

LEGACY = Path(__file__).parent / "fixtures" / "legacy_461f0ec"
FP32_CPU = ["--device", "cpu", "--precision", "fp32"]


def translate(tmp_path: Path, *options: str) -> list[str]:
    out = tmp_path / "out.de"
    argv = ["translate", str(LEGACY / "legacy.pt"), "-i", str(LEGACY / "test.en"), "-o", str(out)]
    result = CliRunner().invoke(app, [*argv, *FP32_CPU, *options])
    assert result.exit_code == 0, result.output
    return out.read_text("utf-8").splitlines()


def expected(name: str) -> list[str]:
    return (LEGACY / name).read_text("utf-8").splitlines()


def test_the_old_checkpoint_translates_as_it_did_greedily(tmp_path):
    assert translate(tmp_path) == expected("greedy.de")


def test_the_old_checkpoint_translates_as_it_did_with_beam_search(tmp_path):
    assert translate(tmp_path, "--beam", "4") == expected("beam4.de")


def test_the_old_checkpoint_trains_on_from_where_it_stopped(tmp_path, toy_pairs):
    write_splits(tmp_path / "data", toy_splits(toy_pairs))
    config = tmp_path / "legacy.yaml"
    shutil.copy(LEGACY / "legacy.yaml", config)
    sets = ["--set", f"run_dir={tmp_path / 'run'}", "--set", f"data.dir={tmp_path / 'data'}"]
    result = CliRunner().invoke(app, ["prepare", "-c", str(config), *sets])
    assert result.exit_code == 0, result.output
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir()
    shutil.copy(LEGACY / "legacy.pt", checkpoints / "ckpt_00000400.pt")
    more = ["--set", "train.max_steps=420", "--set", "train.eval_every=10"]
    result = CliRunner().invoke(app, ["train", "-c", str(config), "--resume", *sets, *more])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "run" / "metrics.jsonl").read_text("utf-8").splitlines()
    losses = {r["step"]: r["loss"] for r in map(json.loads, lines) if r["kind"] == "valid"}
    # the same updates from the same state: equal up to float rounding across CPUs
    assert losses == pytest.approx({410: 2.1401, 420: 2.1521}, abs=2e-3)
