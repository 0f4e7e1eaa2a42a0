"""What tfx prints: results on stdout, notes on stderr."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path


def emit(text: str) -> None:
    """Print to stdout; a reader that goes away (`| head`) just ends the output."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # stdout now points at /dev/null, so the flush at exit cannot fail again
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def wrote(path: str | Path) -> None:
    """Say on stderr that a file was written (stdout stays for results)."""
    print(f"wrote {path}", file=sys.stderr)
