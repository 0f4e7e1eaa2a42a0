"""The training lock: one trainer per run dir at a time."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

from transformer_cli.core.errors import TrainingError


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


JOB_LOCK_ENV = "TFX_JOB_LOCK"  # set by `tfx train --nproc` for its ranks: "PID HOST"


def held_by_launcher(run_dir: str | Path) -> bool:
    """True if `tfx train --nproc` holds this run dir's lock for the job this process is in.

    The launcher takes the lock before it starts the ranks and names itself in
    $TFX_JOB_LOCK; the lock file must name the same owner.
    """
    owner = os.environ.get(JOB_LOCK_ENV, "")
    try:
        text = (Path(run_dir) / "train.lock").read_text(encoding="utf-8").strip()
    except OSError:
        return False
    return bool(owner) and text == owner


class RunLock:
    """Exclusive use of a run dir for training: RUN_DIR/train.lock holds "PID HOST".

    A lock whose owner process is gone (same host, PID not alive) is stale and taken
    over, and so is an empty one older than 10 s; a file tfx did not write is refused.
    Two trainers started at the same instant on a dir whose previous owner died could
    both see it stale; tfx accepts that microsecond window rather than depend on flock,
    which network filesystems do not all honour.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "train.lock"
        self.owner = f"{os.getpid()} {socket.gethostname()}"
        self.held = False

    def acquire(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._stale():
                    continue  # the lock vanished meanwhile: try again
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(self.owner + "\n")
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            return
        raise TrainingError(f"{self.path}: could not take the training lock; try again")

    def _stale(self) -> bool:
        """True if the existing lock's owner is gone; raises if it is (or may be) alive."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return False
        parts = text.replace("\0", "").split()  # a crash before the fsync may leave NULs
        if not parts:  # tfx's own: an owner killed between creating the file and writing it
            if age < 10:  # or one that is between the two now
                raise self._busy("a process that is starting")
            return True
        if len(parts) != 2 or not parts[0].isdigit():  # tfx writes "PID HOST" and nothing else
            raise TrainingError(
                f"{self.path}: is not a tfx training lock; remove it if no trainer uses "
                f"{self.run_dir}"
            )
        pid, host = int(parts[0]), parts[1]
        if host != socket.gethostname():
            raise self._busy(f"PID {pid} on host {host} (delete the lock if that run is gone)")
        if _pid_alive(pid):
            raise self._busy(f"PID {pid}")
        return True

    def _busy(self, who: str) -> TrainingError:
        return TrainingError(
            f"{self.run_dir}: another training run is using this run dir ({who}; lock file "
            f"{self.path}); wait for it to finish or stop it"
        )

    def release(self) -> None:
        """Remove the lock if it is still ours (never one a later owner took over)."""
        if not self.held:
            return
        self.held = False
        with contextlib.suppress(OSError):
            if self.path.read_text(encoding="utf-8").strip() == self.owner:
                os.unlink(self.path)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
