"""core/outdir.py: an output directory is replaced whole, and tfx deletes only what it wrote.

A missing or empty directory is written; an earlier output (its marker lists every file)
is replaced; anything else is refused, or with force moved aside whole, never deleted. A
build that fails, or a write that was killed, leaves the earlier output as it was."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import a_users_directory, error_of

from transformer_cli.core import outdir
from transformer_cli.core.errors import TfxError
from transformer_cli.core.fileio import default_mode

MARKER = "marker.json"


def build_with(files: dict[str, str]):
    """A build that writes `files` (relative path -> text) and returns the marker's fields."""

    def build(tmp: Path) -> dict:
        for name, text in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)
        return {"tfx_version": "0.1.0"}

    return build


def write(out: Path, files: dict[str, str], force: bool = False) -> Path | None:
    return outdir.write_dir(out, build_with(files), marker=MARKER, force=force)


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (relative path -> bytes); symlinks as their target."""
    found = {}
    for here, _, files in os.walk(directory):
        for name in files:
            path = Path(here) / name
            rel = path.relative_to(directory).as_posix()
            found[rel] = (
                f"-> {os.readlink(path)}".encode() if path.is_symlink() else path.read_bytes()
            )
    return found


def siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name != out.name)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty folder for the output and its siblings alone."""
    (tmp_path / "out").mkdir()
    return tmp_path / "out"


def test_a_missing_or_empty_directory_is_written_and_the_marker_lists_every_file(root):
    for out in (root / "new", root / "empty"):
        if out.name == "empty":
            out.mkdir()
        assert write(out, {"a.bin": "A", "sub/b.txt": "B"}) is None
        assert snapshot(out).keys() == {"a.bin", "sub/b.txt", MARKER}
        assert json.loads((out / MARKER).read_text())["files"] == ["a.bin", MARKER, "sub/b.txt"]
        assert (out.stat().st_mode & 0o777) == default_mode(directory=True)
    assert siblings(root / "new") == ["empty"]  # no temp sibling left


def test_an_earlier_output_is_replaced_whole(root):
    out = root / "export"
    write(out, {"old.bin": "old", "sub/old.txt": "old", "same.txt": "1"})
    write(out, {"new.bin": "new", "same.txt": "2"})
    assert snapshot(out).keys() == {"new.bin", "same.txt", MARKER}
    assert (out / "same.txt").read_text() == "2"
    assert siblings(out) == []


def test_a_users_directory_is_refused_and_left_as_it_was(root):
    project = a_users_directory(root)
    before = snapshot(project)
    message = error_of(write, project, {"model.bin": "M"})
    assert "myproject: holds what tfx did not write" in message
    assert "--force" in message
    assert snapshot(project) == before
    assert siblings(project) == []


def test_with_force_a_users_directory_is_moved_aside_whole(root, capsys):
    project = a_users_directory(root)
    before = snapshot(project)
    backup = write(project, {"model.bin": "M"}, force=True)
    assert backup == root / "myproject.tfx-backup"
    assert snapshot(backup) == before  # every file of the user's, unchanged
    assert snapshot(project).keys() == {"model.bin", MARKER}
    assert str(backup) in capsys.readouterr().err
    (project / "thesis2.tex").write_text("more\n")  # the user adds to the export dir
    second = write(project, {"model.bin": "M2"}, force=True)
    assert second == root / "myproject.tfx-backup-2"
    assert snapshot(second)["thesis2.tex"] == b"more\n"
    assert snapshot(backup) == before


def test_a_file_added_to_an_earlier_output_makes_it_the_users(root):
    out = root / "export"
    write(out, {"model.bin": "M"})
    (out / "notes.txt").write_text("mine\n")
    assert "(notes.txt)" in error_of(write, out, {"model.bin": "M2"})
    (out / "notes.txt").unlink()
    (out / "empty folder").mkdir()  # even an empty folder is not tfx's
    assert "(empty folder/)" in error_of(write, out, {"model.bin": "M2"})


def test_a_failed_build_leaves_the_earlier_output_and_no_temp(root):
    out = root / "export"
    write(out, {"model.bin": "M"})
    before = snapshot(out)

    def failing(tmp: Path) -> dict:
        (tmp / "model.bin").write_text("half")
        raise TfxError("the model does not convert")

    with pytest.raises(TfxError):
        outdir.write_dir(out, failing, marker=MARKER)
    assert snapshot(out) == before
    assert siblings(out) == []


def test_what_a_killed_write_left_is_removed_by_the_next_and_nothing_else(root):
    out = root / "export"
    write(out, {"model.bin": "M"})
    partial = root / ".export.tfx-new-ab12cd34"  # a write killed while it built
    (partial / "sub").mkdir(parents=True)
    (partial / "sub" / "model.bin").write_text("half")
    old = root / ".export.tfx-old-zz99yy88"  # killed between the two renames
    write(old, {"model.bin": "old"})
    looks_alike = [".export.tfx-new-mine", ".other.tfx-new-ab12cd34", "export.tfx-new-ab12cd34"]
    for name in looks_alike:  # not names tfx makes for `export`: the user's
        (root / name).mkdir()
        (root / name / "keep.txt").write_text("mine\n")
    write(out, {"model.bin": "M2"})
    assert siblings(out) == sorted(looks_alike)
    assert all((root / name / "keep.txt").read_text() == "mine\n" for name in looks_alike)


def test_a_marker_is_trusted_only_inside_its_directory(root):
    victim = root / "victim.txt"
    victim.write_text("keep me\n")
    outside = root / "elsewhere"
    outside.mkdir()
    (outside / "data.txt").write_text("keep me too\n")
    for listed in (["../victim.txt"], ["sub/../../victim.txt"], [str(victim)], "x"):
        out = root / "crafted"
        out.mkdir(exist_ok=True)
        (out / MARKER).write_text(json.dumps({"tfx_version": "0.1.0", "files": listed}))
        assert "holds what tfx did not write" in error_of(write, out, {"m": "M"})
    link = root / "linked"
    write(link, {"data.txt": "mine"})
    (link / "data.txt").unlink()
    (link / "data.txt").symlink_to(outside / "data.txt")  # listed, but a symlink
    assert "(data.txt)" in error_of(write, link, {"m": "M"})
    backup = write(link, {"m": "M"}, force=True)
    assert backup is not None
    assert (backup / "data.txt").is_symlink()
    assert victim.read_text() == "keep me\n"
    assert (outside / "data.txt").read_text() == "keep me too\n"


def test_files_the_working_and_home_directories_and_roots_are_refused(root, monkeypatch, tmp_path):
    (root / "a_file").write_text("x")
    for force in (False, True):
        assert "exists and is not a directory" in error_of(write, root / "a_file", {}, force=force)
    assert (root / "a_file").read_text() == "x"
    monkeypatch.chdir(root)
    assert "working or home directory" in error_of(write, Path("."), {}, force=True)
    assert "working or home directory" in error_of(write, root.parent, {}, force=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    assert "working or home directory" in error_of(write, tmp_path / "home", {}, force=True)
    assert "file system root" in error_of(write, Path("/"), {}, force=True)


def test_a_symlinked_output_is_replaced_where_it_points(root):
    real = root / "real"
    write(real, {"model.bin": "M"})
    link = root / "link"
    link.symlink_to(real)
    write(link, {"model.bin": "M2"})
    assert link.is_symlink()
    assert (real / "model.bin").read_text() == "M2"
    assert siblings(real) == ["link"]


def test_an_output_whose_marker_predates_the_file_list_is_replaced_by_its_legacy_names(root):
    legacy = frozenset({"model.bin", "config.json"})

    def old_export(name: str, *extra: str) -> Path:
        out = root / name
        out.mkdir()
        (out / MARKER).write_text(json.dumps({"tfx_version": "0.1.0", "format": "ctranslate2"}))
        for file in ("model.bin", *extra):
            (out / file).write_text("old")
        return out

    def export_over(out: Path) -> Path | None:
        build = build_with({"model.bin": "new"})
        return outdir.write_dir(out, build, marker=MARKER, legacy=legacy)

    plain = old_export("plain")
    assert export_over(plain) is None
    assert snapshot(plain).keys() == {"model.bin", MARKER}
    with_notes = old_export("with-notes", "notes.txt")
    assert "(notes.txt)" in error_of(export_over, with_notes)
    assert (with_notes / "notes.txt").read_text() == "old"
