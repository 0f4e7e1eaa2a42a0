"""Atomic file writes: a temp file in the same directory, fsync, then rename.

A reader (or a process killed mid-write) therefore sees either the old file or the
whole new one, never a prefix of the new one.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")  # atomic_open's `.NAME.XXXXXXXX.tmp`


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces `path` only if the block finishes without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); give it the mode open() would have
        os.fchmod(fd, default_mode())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def is_partial_write(name: str) -> bool:
    """True for the name of a temp file that `atomic_open` makes (and a kill leaves behind).

    What removes such litter removes these names only: `.notes.tmp` is not tfx's.
    """
    return _TEMP_NAME.fullmatch(name) is not None


def default_mode(directory: bool = False) -> int:
    """The mode open() or mkdir() would give a new file or directory (under the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def fsync_dir(directory: Path) -> None:
    """Make a rename durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
