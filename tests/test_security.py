"""Never trust input: crafted checkpoints and YAML run no code; tfx writes only where told.

The table in test_bad_input.py runs crafted checkpoints through translate, evaluate,
average and `train --resume`, and a YAML Python tag through prepare; this file shows
that those traps are real, and checks where tfx writes.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import BASE, Trap, assert_one_line_error, toy_splits, write_splits
from typer.testing import CliRunner

from transformer_cli.cli.app import app
from transformer_cli.core import checkpoint
from transformer_cli.core.config_file import config_from_dict
from transformer_cli.data import prepare
from transformer_cli.training import loop as train

REPO = Path(__file__).resolve().parents[1]


def tiny(run_dir: Path | str, data: Path | str, **train_options) -> dict:
    return {
        "run_dir": str(run_dir),
        "data": {"source": "files", "dir": str(data)},
        **BASE,
        "train": {**BASE["train"], **train_options},
    }


# ----------------------------------------------------------------------------- checkpoints


class SystemCall:
    """Unpickling this runs a shell command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("make_trap", [Trap, lambda m: SystemCall(f"touch {m}")])
def test_the_trap_is_real_and_the_loader_never_springs_it(tmp_path, make_trap):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    checkpoint.save_checkpoint(path, {"model": make_trap(marker)})

    unsafe = torch.load(io.BytesIO(checkpoint.read_payload(path)), weights_only=False)
    assert marker.exists()  # what a plain torch.load would have done
    if hasattr(unsafe["model"], "close"):
        unsafe["model"].close()
    marker.unlink()

    result = CliRunner().invoke(app, ["translate", str(path), "x"])
    assert_one_line_error(result, "refused to load")
    assert not marker.exists()


def test_a_crafted_newest_checkpoint_is_passed_over_for_an_intact_one(tmp_path, toy_pairs):
    write_splits(tmp_path / "data", toy_splits(toy_pairs))
    cfg = config_from_dict(tiny(tmp_path / "run", tmp_path / "data"))
    prepare.run(cfg)
    train.run(cfg)  # checkpoint at step 2
    marker = tmp_path / "pwned"
    evil = {"tfx_version": "0.1.0", "progress": {"step": 99}, "model": Trap(marker)}
    checkpoint.save_checkpoint(checkpoint.step_path(tmp_path / "run", 99), evil)

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny(tmp_path / "run", tmp_path / "data", max_steps=4)))
    result = CliRunner().invoke(app, ["train", "-c", str(config), "--resume"])
    assert result.exit_code == 0, result.output
    assert "ckpt_00000099.pt: refused to load" in result.stderr
    assert "at step 2" in result.stderr
    assert not marker.exists()


# ----------------------------------------------------------------------------- YAML


@pytest.mark.parametrize(
    "tagged",
    [
        "!!python/object/apply:os.system ['touch {m}']",
        "!!python/object/new:os.system ['touch {m}']",
        "!!python/name:os.system",
        "!!python/object/apply:subprocess.check_call [['touch', '{m}']]",
    ],
)
@pytest.mark.parametrize("command", ["prepare", "train"])
def test_yaml_python_tags_are_refused_without_running(tmp_path, tagged, command):
    marker = tmp_path / "pwned"
    config = tmp_path / "c.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\ndata:\n  dir: {tagged.format(m=marker)}\n")
    result = CliRunner().invoke(app, [command, "--config", str(config)])
    assert_one_line_error(result, f"{config}:3: YAML tag not allowed")
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


def test_a_tag_in_set_is_a_plain_string(tmp_path):
    marker = tmp_path / "pwned"
    config = tmp_path / "c.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\n")
    tagged = f"train.seed=!!python/object/apply:os.system ['touch {marker}']"
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--set", tagged])
    assert_one_line_error(result, '--set train.seed: expected an integer, got "!!python')
    assert not marker.exists()


# ----------------------------------------------------------------------------- paths

DRIVER = """
import sys, json
from transformer_cli.cli.app import app
for argv in json.loads(sys.argv[1]):
    try:
        app(argv, prog_name="tfx")
    except SystemExit as e:
        if e.code:
            sys.exit(f"{argv[0]} exited {e.code}")
"""


def files(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def test_a_whole_run_writes_only_into_the_run_dir_and_the_named_output(tmp_path, toy_pairs):
    """prepare -> train -> evaluate -> translate from an empty working directory, with HOME
    and TMPDIR empty too: afterwards every new or changed file is under the run dir or is
    the --output file, the working directory is still empty, and HOME and TMPDIR hold no
    file."""
    write_splits(tmp_path / "data", toy_splits(toy_pairs))
    run_dir = tmp_path / "elsewhere" / "run"
    config = tmp_path / "config" / "tiny.yaml"
    config.parent.mkdir()
    config.write_text(yaml.safe_dump(tiny(run_dir, tmp_path / "data")))
    source = tmp_path / "input" / "in.txt"
    source.parent.mkdir()
    source.write_text("a dog .\nthe cat sees a dog .\n")
    output = tmp_path / "out" / "translations.txt"
    cwd, home, tmp = tmp_path / "cwd", tmp_path / "home", tmp_path / "tmp"
    for d in (cwd, home, tmp):
        d.mkdir()
    commands = [
        ["prepare", "--config", str(config)],
        ["train", "--config", str(config)],
        ["evaluate", str(run_dir / "checkpoints")],
        ["translate", str(run_dir / "checkpoints" / "last.pt"), "-i", str(source),
         "-o", str(output)],
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "TFX_"))}
    env.update(
        HOME=str(home),
        TMPDIR=str(tmp),
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONPATH=str(REPO),
        MPLCONFIGDIR=str(home / "mpl"),
    )
    before = files(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(commands)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    after = files(tmp_path)

    written = sorted(name for name, stamp in after.items() if before.get(name) != stamp)
    allowed = (str(run_dir.relative_to(tmp_path)) + os.sep, str(output.relative_to(tmp_path)))
    assert written
    assert all(name.startswith(allowed) for name in written), written
    assert set(before) <= set(after)  # nothing was deleted either
    assert list(cwd.iterdir()) == []
    # torch may make an empty cache directory in TMPDIR (torchinductor_USER) as it imports
    # torch._dynamo; no file may appear there or in HOME
    assert [p for d in (home, tmp) for p in d.rglob("*") if not p.is_dir()] == []
    assert len(output.read_text().splitlines()) == 2


def test_relative_paths_in_a_config_are_taken_from_the_working_directory(
    tmp_path, toy_pairs, monkeypatch
):
    """As given: relative to where tfx runs, not to where the config file lives."""
    work = tmp_path / "work"
    write_splits(work / "corpus", toy_splits(toy_pairs))
    config = tmp_path / "configs" / "c.yaml"
    config.parent.mkdir()
    config.write_text(yaml.safe_dump(tiny("runs/rel", "corpus")))
    monkeypatch.chdir(work)
    result = CliRunner().invoke(app, ["prepare", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert (work / "runs" / "rel" / "cache" / "meta.json").is_file()
    assert sorted(p.name for p in config.parent.iterdir()) == ["c.yaml"]
    shutil.rmtree(work / "runs")


def test_evaluate_never_writes_where_a_shared_checkpoint_says(tmp_path, toy_pairs, monkeypatch):
    """The run_dir recorded in a checkpoint is its author's path (or a crafted one):
    with no --config or --output-dir, results go next to the checkpoint file given."""
    write_splits(tmp_path / "data", toy_splits(toy_pairs))
    cfg = config_from_dict(tiny(tmp_path / "author" / "run", tmp_path / "data"))
    prepare.run(cfg)
    train.run(cfg)
    state = checkpoint.load_checkpoint(checkpoint.last_path(cfg.run_dir))
    victim = tmp_path / "victim"
    state["config"]["run_dir"] = str(victim)
    shared = tmp_path / "downloads" / "model.pt"
    checkpoint.save_checkpoint(shared, state)
    (tmp_path / "s.txt").write_text("a dog .\n")
    (tmp_path / "r.txt").write_text("ein Hund .\n")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    argv = ["evaluate", str(shared), "--src", str(tmp_path / "s.txt"), "--ref",
            str(tmp_path / "r.txt")]  # fmt: skip
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert not victim.exists()
    assert list(cwd.iterdir()) == []
    assert (tmp_path / "downloads" / "eval" / "report.s.txt.json").is_file()
