"""Text lines in and out of `tfx translate` and `tfx evaluate`.

Input is read as bytes and split on b"\\n" only, so the line count is exact; bytes that
are not UTF-8 are replaced by U+FFFD with a warning naming the line. Output goes to
stdout, or to a temp file renamed over the output path when done (never a half file).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol, TextIO, TypeVar

from transformer_cli.core.errors import DataError

T = TypeVar("T")


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def decode_line(raw: bytes, number: int, name: str = "") -> str:
    """One input line as text: line ending removed, invalid UTF-8 replaced (and reported)."""
    raw = raw.removesuffix(b"\n").removesuffix(b"\r")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        where = f"{name}:{number}" if name else f"line {number}"
        warn(f"{where}: invalid UTF-8 at byte {e.start + 1}; replaced with U+FFFD")
        text = raw.decode("utf-8", errors="replace")
    return text.removeprefix("\ufeff") if number == 1 else text


def read_lines(stream: BinaryIO, name: str = "") -> Iterator[str]:
    """The text lines of a binary stream, split on b"\\n" only.

    Splitting bytes on newline keeps the line count exact: str.splitlines() would also
    split on U+2028, U+0085 and friends, and the output would have extra lines.
    """
    for number, raw in enumerate(stream, start=1):
        yield decode_line(raw, number, name)


def read_input_lines(path: str | Path) -> list[str]:
    """All lines of a text file, as `read_lines` gives them; DataError if it cannot be read."""
    with open_input(path) as f:
        return list(read_lines(f, str(path)))


def chunks(lines: Iterable[T], size: int) -> Iterator[list[T]]:
    """`lines` in lists of `size` (the last may be shorter)."""
    iterator = iter(lines)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


@contextlib.contextmanager
def open_input(path: str | Path) -> Iterator[BinaryIO]:
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a text file")
    try:
        # not `with open(...)`: only open's own errors are reported here, not the reader's
        f = open(path, "rb")  # noqa: SIM115 (closed by the `with f` below)
    except FileNotFoundError:
        raise DataError(f"{path}: no such input file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        yield f


class _ByteSink(Protocol):
    """Where translations are written: a binary file, or stdout's buffer."""

    def write(self, data: bytes, /) -> object: ...

    def flush(self) -> None: ...


@contextlib.contextmanager
def open_output(path: str | Path | None) -> Iterator[_ByteSink]:
    """The output: a temp file renamed over `path` at the end (no half file), or stdout."""
    if path is not None:
        from transformer_cli.core.fileio import atomic_open

        if Path(path).is_dir():
            raise DataError(f"{path}: is a directory; --output needs a file name")
        with atomic_open(path) as f:
            yield f
        return
    sys.stdout.flush()
    stdout = getattr(sys.stdout, "buffer", None)
    try:
        yield stdout if stdout is not None else _TextSink(sys.stdout)
    except BrokenPipeError:
        # the reader went away (`tfx translate ... | head`): stop quietly, as cat does;
        # stdout now points at /dev/null so that the flush at exit cannot fail again
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())


class _TextSink:
    """A bytes-accepting wrapper for a text stream without `.buffer`."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, data: bytes) -> None:
        self.stream.write(data.decode("utf-8"))

    def flush(self) -> None:
        self.stream.flush()


def prompt_lines() -> Iterator[str]:
    """Lines typed at a `> ` prompt (on stderr, so stdout holds translations only)."""
    for number in itertools.count(1):
        print("> ", end="", file=sys.stderr, flush=True)
        raw = sys.stdin.buffer.readline()
        if not raw:
            print(file=sys.stderr)
            return
        yield decode_line(raw, number)
