"""SIGKILL `tfx prepare`: train never sees a half-written cache; the next prepare repairs it."""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import pytest
from faultlib import (
    assert_one_error,
    kill9,
    kill_at,
    prepared_run,
    start_tfx,
    tiny_raw,
    write_config,
)
from typer.testing import CliRunner

from transformer_cli.cli.app import app
from transformer_cli.data import store

pytestmark = pytest.mark.faults

VOCAB = 90  # differs from the prepared template's 100: the copied cache is stale


@pytest.fixture
def clean(tmp_path_factory, toy_pairs) -> Path:
    """The cache an uninterrupted `tfx prepare` writes for the VOCAB config."""
    data, _ = prepared_run(tmp_path_factory, toy_pairs)
    root = tmp_path_factory.mktemp("clean")
    config = write_config(root / "c.yaml", with_vocab(tiny_raw(root / "run", data)))
    result = CliRunner().invoke(app, ["prepare", "--config", str(config)])
    assert result.exit_code == 0, result.output
    return store.cache_dir(root / "run")


@pytest.fixture
def stale(tmp_path, tmp_path_factory, toy_pairs) -> tuple[Path, Path]:
    """(a run dir holding a complete cache of another config, the VOCAB config file)."""
    data, prepared = prepared_run(tmp_path_factory, toy_pairs)
    run_dir = tmp_path / "run"
    shutil.copytree(prepared / "cache", run_dir / "cache")
    raw = with_vocab(tiny_raw(run_dir, data))
    return run_dir, write_config(tmp_path / "c.yaml", raw)


def with_vocab(raw: dict) -> dict:
    return {**raw, "tokenizer": {**raw["tokenizer"], "vocab_size": VOCAB}}


def contents(directory: Path) -> dict[str, object]:
    """Every cache file's bytes; meta.json without its timestamp and duration."""
    files: dict[str, object] = {}
    for path in sorted(directory.iterdir()):
        if path.name == "meta.json":
            meta = json.loads(path.read_text())
            files[path.name] = {k: v for k, v in meta.items() if k not in ("created", "seconds")}
        else:
            files[path.name] = path.read_bytes()
    return files


def assert_train_refuses(config: Path, run_dir: Path) -> None:
    result = CliRunner().invoke(app, ["train", "--config", str(config)])
    assert_one_error(result, "no prepared data")
    assert not (run_dir / "checkpoints").exists()


def assert_repaired(config: Path, run_dir: Path, clean: Path, reused: bool) -> None:
    """The next prepare reuses or rebuilds the cache: the clean one, without temp files."""
    result = CliRunner().invoke(app, ["prepare", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert ("cache up to date" in result.stdout) == reused
    assert contents(store.cache_dir(run_dir)) == contents(clean)


def test_kill_while_the_splits_are_written(stale, clean, tmp_path):
    run_dir, config = stale
    kill_at(
        ["prepare", "--config", str(config)],
        tmp_path / "log",
        "call|transformer_cli.data.stream.encode_corpus|3",
        tmp_path / "paused",
    )
    assert not (store.cache_dir(run_dir) / "meta.json").exists()
    assert_train_refuses(config, run_dir)
    assert_repaired(config, run_dir, clean, reused=False)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("pause", "reused"),
    [
        ("call|transformer_cli.data.stream.encode_corpus|1", False),  # nothing written yet
        ("replace|meta.json|1", False),  # everything written, meta.json not yet renamed
        ("call|transformer_cli.data.report.summary|1", True),  # complete: meta.json is in place
    ],
)
def test_kill_at_each_stage_of_the_cache_write(stale, clean, tmp_path, pause, reused):
    run_dir, config = stale
    kill_at(["prepare", "--config", str(config)], tmp_path / "log", pause, tmp_path / "paused")
    if reused:
        assert contents(store.cache_dir(run_dir)) == contents(clean)
    else:
        assert_train_refuses(config, run_dir)
    assert_repaired(config, run_dir, clean, reused)


@pytest.mark.slow
def test_kills_at_random_moments(stale, clean, tmp_path):
    """Whatever the moment, the cache is complete (the old or the new one) or train refuses it."""
    rng = random.Random(20240609)
    run_dir, config = stale
    log = tmp_path / "log"
    old = contents(store.cache_dir(run_dir))
    for _ in range(6):
        process = start_tfx(["prepare", "--config", str(config)], log)
        time.sleep(rng.uniform(1.0, 5.0))  # start-up (imports) takes most of the first seconds
        kill9(process)
        if (store.cache_dir(run_dir) / "meta.json").exists():
            assert contents(store.cache_dir(run_dir)) in (old, contents(clean))
        else:
            assert_train_refuses(config, run_dir)
    complete = contents(store.cache_dir(run_dir)) == contents(clean)  # a kill came too late
    assert_repaired(config, run_dir, clean, reused=complete)
