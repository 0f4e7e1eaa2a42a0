"""`tfx export` deletes only what tfx wrote: a directory holding anything else is refused
(exit 2, one line, nothing changed) unless --force, which moves it aside whole; an earlier
export is replaced; an export that fails half-way leaves the earlier one as it was."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import a_users_directory, assert_one_line_error, cli, make_tiny_run

from transformer_cli.core.errors import TfxError
from transformer_cli.decoding import ct2_backend as ct2

pytest.importorskip("ctranslate2")
pytest.importorskip("transformers")
pytest.importorskip("google.protobuf")
from transformer_cli.export import ctranslate2 as ct2_export
from transformer_cli.export import huggingface as hf_export

TARGETS = ("ctranslate2", "huggingface")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, toy_pairs) -> Path:
    cfg = make_tiny_run(tmp_path_factory.mktemp("tiny"), toy_pairs)
    return Path(cfg.run_dir) / "checkpoints" / "ckpt_00000010.pt"


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory`, by relative path."""
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def assert_an_export_of(out: Path, to: str) -> None:
    """`out` is a whole export of kind `to`, and its marker lists exactly its files."""
    info = json.loads((out / ct2.EXPORT_FILE).read_text())
    assert info["format"] == to
    assert sorted(info["files"]) == sorted(snapshot(out))
    assert (out / ("model.bin" if to == "ctranslate2" else "model.safetensors")).is_file()
    assert ct2.is_export_dir(out) == (to == "ctranslate2")
    readme = (out / "README.md").read_text()
    assert "tfx-new" not in readme  # it names OUT_DIR, not where it was built


@pytest.mark.parametrize("to", TARGETS)
def test_a_users_directory_is_refused_and_left_as_it_was(tmp_path, checkpoint, to):
    project = a_users_directory(tmp_path)
    before = snapshot(project)
    result = cli("export", checkpoint, project, "--to", to)
    assert_one_line_error(result, "myproject: holds what tfx did not write", alone=True)
    assert "--force" in result.stderr
    assert snapshot(project) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["myproject"]


@pytest.mark.parametrize("to", TARGETS)
def test_force_moves_a_users_directory_aside_and_deletes_nothing(tmp_path, checkpoint, to):
    project = a_users_directory(tmp_path)
    before = snapshot(project)
    result = cli("export", checkpoint, project, "--to", to, "--force")
    assert result.exit_code == 0, result.output
    backup = tmp_path / "myproject.tfx-backup"
    assert snapshot(backup) == before
    assert str(backup) in result.stderr
    assert_an_export_of(project, to)


def test_an_earlier_export_is_replaced_whole_without_force(tmp_path, checkpoint):
    out = tmp_path / "exported"
    for to in ("ctranslate2", "huggingface", "ctranslate2"):
        result = cli("export", checkpoint, out, "--to", to)
        assert result.exit_code == 0, result.output
        assert_an_export_of(out, to)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]


def test_the_run_dir_and_the_working_directory_are_refused(tmp_path, checkpoint, monkeypatch):
    run_dir = checkpoint.parent.parent
    before = snapshot(run_dir)
    assert_one_line_error(cli("export", checkpoint, run_dir, "--to", "ctranslate2"), "holds what")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "thesis.tex").write_text("mine\n")
    forced = cli("export", checkpoint, ".", "--to", "ctranslate2", "--force")
    assert_one_line_error(forced, "working or home directory")
    assert snapshot(run_dir) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]


FAIL_AT = {"ctranslate2": (ct2_export, "usage"), "huggingface": (hf_export, "usage")}


@pytest.mark.parametrize("to", TARGETS)
def test_an_export_that_fails_half_way_leaves_the_earlier_one(
    tmp_path, checkpoint, monkeypatch, to
):
    out = tmp_path / "exported"
    assert cli("export", checkpoint, out, "--to", to).exit_code == 0
    before = snapshot(out)
    module, name = FAIL_AT[to]

    def broken(*_args, **_kwargs):  # after the model files are written
        raise TfxError("no space left on device")

    monkeypatch.setattr(module, name, broken)
    assert_one_line_error(cli("export", checkpoint, out, "--to", to), "no space left")
    assert snapshot(out) == before
    assert sorted(os.listdir(tmp_path)) == ["exported"]
