"""The project's error types, and the one place that formats them for the shell.

Anything a user can cause (a bad config, a broken file, a missing checkpoint) raises a
`TfxError`; the CLI turns it into one line on stderr and exit code 2. So does an OSError
that no command turned into a TfxError: the file system refusing a path the user gave (a
full disk, an output path through a file, no permission) is theirs to fix too. Anything
else is a bug in tfx and is reported as an internal error.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import TypeVar

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_INTERRUPTED = 130


class TfxError(Exception):
    """A problem the user can fix; its message is one line that says what and where."""


class ConfigError(TfxError):
    """The YAML config or a --set override is wrong."""


class DataError(TfxError):
    """An input file is missing, unreadable or malformed."""


class CheckpointError(TfxError):
    """A checkpoint is missing, corrupt, or not a tfx checkpoint."""


class TrainingError(TfxError):
    """Training cannot go on (for example: too many non-finite updates in a row)."""


class HubError(TfxError):
    """The Hugging Face Hub cannot be reached, refuses the login, or refuses the upload."""


def debug_enabled() -> bool:
    return os.environ.get("TFX_DEBUG", "") not in ("", "0")


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def os_problem(e: OSError) -> str:
    """An OSError in words a user can act on: the path (when the OS names one), then why."""
    reason = e.strerror or str(e) or type(e).__name__
    reason = reason[:1].lower() + reason[1:]
    if e.errno == errno.EEXIST and e.filename and not os.path.isdir(e.filename):
        reason = "exists and is not a directory"  # mkdir(exist_ok=True) on a file's name
    elif e.errno == errno.ENOTDIR:
        reason = "not a directory (a part of this path is a file)"
    return f"{e.filename}: {reason}" if e.filename else reason


F = TypeVar("F", bound=Callable)


def boundary(func: F) -> F:
    """Run a CLI command so that errors become one line and an exit code, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        import typer

        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except TfxError as e:
            if debug_enabled():
                traceback.print_exc()
            print(f"error: {one_line(str(e))}", file=sys.stderr)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except OSError as e:
            if debug_enabled():
                traceback.print_exc()
            print(f"error: {one_line(os_problem(e))}", file=sys.stderr)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except Exception as e:  # the boundary is where bugs are reported
            if debug_enabled():
                traceback.print_exc()
            print(
                f"internal error: {type(e).__name__}: {one_line(str(e))} "
                "(this is a bug in tfx; rerun with TFX_DEBUG=1 for the traceback)",
                file=sys.stderr,
            )
            raise typer.Exit(EXIT_INTERNAL_ERROR) from None

    return wrapper  # type: ignore[return-value]
