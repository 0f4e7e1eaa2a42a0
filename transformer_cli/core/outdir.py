"""Output directories that tfx writes whole: built beside the target, then swapped in.

tfx deletes only what tfx wrote. `write_dir(out, build, marker=...)` is that rule for a
directory of output (an export), in one place:

- `out` may be missing, an empty directory, or an earlier output of tfx: a directory whose
  marker file (JSON, named by the caller) gives the tfx version and lists every file in it.
  Anything else is refused before anything is written: a file, or a directory holding
  something the marker does not list (a file, a symlink, an empty folder). With `force` a
  user's directory is not refused but moved aside whole, to the visible sibling
  `NAME.tfx-backup` (then `-2`, `-3`, ...), which is printed and never deleted;
- the new output is built in a hidden sibling, `.NAME.tfx-new-XXXXXXXX`: `build(tmp)`
  writes its files and returns the marker's fields; the marker, listing every file, is
  written last;
- then it is swapped in: an earlier output is renamed to `.NAME.tfx-old-XXXXXXXX` and the
  new one to NAME (a missing or empty NAME is replaced by that one rename). The files the
  earlier output's marker lists are deleted, and its folders once empty; whatever else it
  holds by then is kept, moved to a backup as above.

A build that raises leaves `out` as it was and removes its temp sibling. A build that is
killed leaves `out` as it was too, and the next `write_dir` to the same `out` removes the
`.NAME.tfx-new-*` siblings it left. A kill in the instant between the two renames leaves
the earlier output whole in `.NAME.tfx-old-*`, which the next `write_dir` retires the same
way. Two writes to one `out` at the same time are not supported.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from transformer_cli.core.errors import TfxError
from transformer_cli.core.fileio import atomic_write_text, default_mode, fsync_dir

NEW, OLD, BACKUP = "tfx-new", "tfx-old", "tfx-backup"
_TEMP_SUFFIX = r"[a-z0-9_]{8}"  # what tempfile.mkdtemp appends


@dataclass(frozen=True)
class Target:
    """Where an output goes, and what is there now."""

    path: Path  # the real path (symlinks resolved), so that the swap happens there
    listed: frozenset[str]  # an earlier output's files (its marker included); empty: none
    foreign: bool  # a directory holding what tfx did not write (allowed by force)

    @property
    def vacant(self) -> bool:
        """Missing or empty: the new output is renamed onto it, nothing moves aside."""
        return not self.listed and not self.foreign


def write_dir(
    out: str | Path,
    build: Callable[[Path], dict],
    *,
    marker: str,
    force: bool = False,
    legacy: frozenset[str] = frozenset(),
) -> Path | None:
    """Build an output with `build(tmp)` and swap it in for `out`; the backup made, if any.

    `legacy`: the files of an earlier output whose marker predates the file list.
    """
    target = claim(Path(out), marker, force, legacy)
    remove_litter(target.path, marker, legacy)
    target.path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.path.name}.{NEW}-"
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.path.parent))
    try:
        info = build(tmp)
        files = sorted(_files_under(tmp))
        record = {**info, "files": sorted({*files, marker})}
        atomic_write_text(tmp / marker, json.dumps(record, indent=2) + "\n")
        os.chmod(tmp, default_mode(directory=True))  # mkdtemp's 0700 is for the temp only
        return _swap(tmp, target, Path(out))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def claim(out: Path, marker: str, force: bool, legacy: frozenset[str]) -> Target:
    """What is at `out`, or a one-line refusal if tfx may not replace it."""
    path = Path(os.path.realpath(out))
    if path.parent == path:
        raise TfxError(f"{out}: a file system root cannot be an output directory")
    cwd, home = Path.cwd().resolve(), Path(os.path.expanduser("~")).resolve()
    if path in (cwd, home, *cwd.parents, *home.parents):
        raise TfxError(f"{out}: is or holds the working or home directory; choose another")
    if not path.exists():
        return Target(path, frozenset(), foreign=False)
    if not path.is_dir():
        raise TfxError(f"{out}: exists and is not a directory")
    listed = earlier_output(path, marker, legacy) or frozenset()
    stray = first_stray(path, listed)
    if stray is None:
        return Target(path, listed, foreign=False)
    if not force:
        raise TfxError(
            f"{out}: holds what tfx did not write ({stray}); choose a new or empty directory, "
            f"or add --force to move this one aside to {_backup_name(path).name} (nothing is "
            "deleted)"
        )
    return Target(path, frozenset(), foreign=True)


def earlier_output(directory: Path, marker: str, legacy: frozenset[str]) -> frozenset[str] | None:
    """The files an earlier tfx output in `directory` says it wrote; None if it is none."""
    try:
        info = json.loads((directory / marker).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not isinstance(info.get("tfx_version"), str):
        return None
    files = info.get("files", sorted(legacy) if legacy else None)
    if not isinstance(files, list) or not all(_plain_relative(f) for f in files):
        return None
    return frozenset(files) | {marker}


def _plain_relative(name: object) -> bool:
    """A path inside the directory: relative, without `..` (a marker is only trusted so far)."""
    if not isinstance(name, str) or not name or "\0" in name:
        return False
    path = PurePosixPath(name)
    return not path.is_absolute() and all(part not in ("", ".", "..") for part in path.parts)


def first_stray(directory: Path, listed: frozenset[str]) -> str | None:
    """The first entry of `directory` that is not one of `listed` or a folder of them."""
    folders = _folders_of(listed)

    def fail(error: OSError) -> None:
        raise error  # an unreadable folder may hold anything: refuse it

    for here, dirs, files in os.walk(directory, onerror=fail):
        rel = Path(here).relative_to(directory)
        for name in sorted(files):
            entry = (rel / name).as_posix()
            if entry not in listed or os.path.islink(os.path.join(here, name)):
                return entry  # tfx writes no symlinks
        for name in sorted(dirs):
            entry = (rel / name).as_posix()
            if entry not in folders or os.path.islink(os.path.join(here, name)):
                return entry + "/"
    return None


def _folders_of(listed: frozenset[str]) -> frozenset[str]:
    return frozenset({p.as_posix() for f in listed for p in PurePosixPath(f).parents} - {"."})


def _files_under(directory: Path) -> list[str]:
    return [
        (Path(here).relative_to(directory) / name).as_posix()
        for here, _, files in os.walk(directory)
        for name in files
    ]


def _swap(new: Path, target: Target, shown: Path) -> Path | None:
    """Put `new` at target.path; return the backup of what was there, if one was made."""
    path = target.path
    if target.vacant:
        os.replace(new, path)  # onto nothing, or onto an empty directory
        fsync_dir(path.parent)
        return None
    if target.foreign:
        aside = _backup_name(path)
    else:
        aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.{OLD}-", dir=path.parent))
    os.replace(path, aside)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(aside, path)  # put the earlier one back
        raise
    fsync_dir(path.parent)
    if target.foreign:
        _say_kept(shown, aside)
        return aside
    return retire(aside, target.listed, path, shown)


def retire(aside: Path, listed: frozenset[str], path: Path, shown: Path) -> Path | None:
    """Delete an earlier output's `listed` files in `aside`; keep anything else in a backup."""
    folders = _folders_of(listed)
    for here, _, files in os.walk(aside, topdown=False):  # never follows a symlink
        rel = Path(here).relative_to(aside)
        for name in files:
            if (rel / name).as_posix() in listed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(here, name))
        if rel.as_posix() in folders:
            with contextlib.suppress(OSError):
                os.rmdir(here)  # only once empty
    with contextlib.suppress(OSError):
        os.rmdir(aside)
    if not os.path.lexists(aside):
        return None
    backup = _backup_name(path)
    os.replace(aside, backup)
    _say_kept(shown, backup)
    return backup


def remove_litter(path: Path, marker: str, legacy: frozenset[str] = frozenset()) -> None:
    """Remove what killed writes to `path` left beside it: partial and earlier outputs."""
    pattern = re.compile(re.escape(f".{path.name}.") + f"({NEW}|{OLD})-{_TEMP_SUFFIX}")
    try:
        entries = list(os.scandir(path.parent))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        found = pattern.fullmatch(entry.name)
        if not found or not entry.is_dir(follow_symlinks=False):
            continue
        if found.group(1) == NEW:
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            listed = earlier_output(Path(entry.path), marker, legacy) or frozenset()
            retire(Path(entry.path), listed, path, path)


def _backup_name(path: Path) -> Path:
    """NAME.tfx-backup, or the first of NAME.tfx-backup-2, -3, ... that is free."""
    candidate, n = path.with_name(f"{path.name}.{BACKUP}"), 1
    while os.path.lexists(candidate):
        n += 1
        candidate = path.with_name(f"{path.name}.{BACKUP}-{n}")
    return candidate


def _say_kept(out: Path, backup: Path) -> None:
    print(f"note: what tfx did not write in {out} is kept in {backup}", file=sys.stderr)
