"""Helpers for the fault tests: a tiny run, `tfx` as a real process, and places to kill it.

A child started with `pause=...` runs the real CLI after a test-only patch that makes it
stop at an exact point (inside a checkpoint write, before a rename, at the start of a
call), create a marker file and sleep; the test then SIGKILLs it there. tfx itself has no
hook for this: the patch lives here and is installed only in the child.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# A model small enough that a step takes milliseconds; dropout on, so that an exact
# resume must restore the RNG too.
TINY = {
    "tokenizer": {"vocab_size": 100},
    "model": {
        "d_model": 32,
        "heads": 2,
        "enc_layers": 1,
        "dec_layers": 1,
        "d_ff": 64,
        "dropout": 0.1,
    },
    "train": {
        "batch_tokens": 600,
        "warmup": 5,
        "log_every": 1,
        "threads": 1,
        "device": "cpu",
        "max_steps": 12,
        "eval_every": 3,
        "keep_last": 2,
    },
    "decode": {"max_len_a": 0, "max_len_b": 5},
}


def tiny_raw(run_dir: Path, data_dir: Path, **train: object) -> dict:
    """A plain config dict for a tiny run; `train` entries override TINY's train section."""
    return {
        "run_dir": str(run_dir),
        "data": {"source": "files", "dir": str(data_dir)},
        **{k: dict(v) for k, v in TINY.items()},
        "train": {**TINY["train"], **train},
    }


def write_config(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def copy_cache(prepared_run: Path, run_dir: Path) -> None:
    """Give `run_dir` the prepared cache of `prepared_run` (prepare is not under test here)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(prepared_run / "cache", run_dir / "cache")


def new_run(tmp_path: Path, prepared: tuple[Path, Path], **train: object) -> tuple[Path, Path]:
    """(a run dir holding the prepared cache, its tiny config file) under `tmp_path`."""
    data, template = prepared
    run_dir = tmp_path / "run"
    copy_cache(template, run_dir)
    return run_dir, write_config(tmp_path / "tiny.yaml", tiny_raw(run_dir, data, **train))


def temp_litter(run_dir: Path) -> list[str]:
    """Temp files of interrupted writes in the checkpoints dir (they all start with a dot)."""
    directory = run_dir / "checkpoints"
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def assert_one_error(result, fragment: str) -> str:
    """Exit code 2 and exactly one `error:` line on stderr, the last one, with `fragment`."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if "error" in line.lower()]
    assert errors == lines[-1:], lines
    assert lines[-1].startswith("error: "), lines
    assert fragment in lines[-1], lines[-1]
    assert "Traceback" not in result.output
    return lines[-1]


# ----------------------------------------------------------------------------- processes


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TFX_DEBUG", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def start_tfx(
    args: list[str], log: Path, pause: str | None = None, marker: Path | None = None
) -> subprocess.Popen:
    """`python -m transformer_cli ARGS` with stdout+stderr to `log`; see `install_pause`."""
    env = child_env()
    if pause is None:
        command = [sys.executable, "-m", "transformer_cli", *args]
    else:
        assert marker is not None
        env["TFX_TEST_PAUSE"] = f"{pause}|{marker}"
        boot = (
            f"import sys; sys.path.insert(0, {str(HERE)!r}); import faultlib; "
            "faultlib.install_pause(); from transformer_cli.cli.app import main; main()"
        )
        command = [sys.executable, "-c", boot, *args]
    with open(log, "ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)


def run_tfx(args: list[str], log: Path, timeout: float = 300) -> int:
    """Run tfx to completion; return its exit code."""
    process = start_tfx(args, log)
    try:
        return process.wait(timeout=timeout)
    finally:
        kill9(process)


def wait_until(condition, process: subprocess.Popen, timeout: float = 120, log: Path | None = None):
    """Poll `condition()` every millisecond until true; fail if the process exits first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            text = log.read_text(errors="replace") if log else ""
            raise AssertionError(f"tfx exited ({process.returncode}) before the pause:\n{text}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for tfx")
        time.sleep(0.001)


def kill9(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGKILL)
    process.wait()


def kill_at(args: list[str], log: Path, pause: str, marker: Path) -> None:
    """Start tfx, wait until it reaches `pause`, and SIGKILL it there."""
    process = start_tfx(args, log, pause=pause, marker=marker)
    try:
        wait_until(marker.exists, process, log=log)
    finally:
        kill9(process)
    marker.unlink()


# ----------------------------------------------------------------------------- the pause


def install_pause() -> None:
    """In the child: stop where TFX_TEST_PAUSE says, as `KIND|TARGET|N|MARKER`.

    call|module.attr|N       at the start of the Nth call of module.attr
    write|checkpoint|N       in the Nth checkpoint save, half of the payload written
    replace|NAME|N           just before the Nth rename of a temp file onto a file NAME
    """
    kind, target, nth, marker = os.environ["TFX_TEST_PAUSE"].split("|")
    nth_call = _counter(int(nth))

    def pause() -> None:
        Path(marker).write_text(str(os.getpid()))
        time.sleep(600)  # the test kills us here

    if kind == "call":
        module_name, attr = target.rsplit(".", 1)
        module = importlib.import_module(module_name)
        real = getattr(module, attr)

        def paused_call(*args, **kwargs):
            if nth_call():
                pause()
            return real(*args, **kwargs)

        setattr(module, attr, paused_call)
    elif kind == "write":
        from transformer_cli.core import checkpoint

        real_open = checkpoint.atomic_open

        @contextlib.contextmanager
        def half_written(path):
            with real_open(path) as f:
                yield _HalfWriter(f, pause) if nth_call() else f

        checkpoint.atomic_open = half_written
    elif kind == "replace":
        real_replace = os.replace

        def paused_replace(src, dst, *args, **kwargs):
            if Path(dst).name == target and nth_call():
                pause()
            return real_replace(src, dst, *args, **kwargs)

        os.replace = paused_replace
    else:
        raise ValueError(kind)


def _counter(n: int):
    count = [0]

    def nth() -> bool:
        count[0] += 1
        return count[0] == n

    return nth


class _HalfWriter:
    """Writes the first half of the payload (the third write: magic, header, payload)."""

    def __init__(self, f, pause):
        self.f, self.pause, self.writes = f, pause, 0

    def write(self, data) -> int:
        self.writes += 1
        if self.writes == 3:
            self.f.write(bytes(data[: len(data) // 2]))
            self.f.flush()
            self.pause()
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


# ----------------------------------------------------------------------------- comparing


def last_state(run_dir: Path) -> dict:
    from transformer_cli.core import checkpoint

    return checkpoint.load_checkpoint(checkpoint.last_path(run_dir))


def assert_same_training_state(a: dict, b: dict) -> None:
    """Model and optimiser state equal bit for bit; progress equal but for wall time."""
    _assert_equal(a["model"], b["model"], "model")
    _assert_equal(a["optimizer"], b["optimizer"], "optimizer")
    pa = {k: v for k, v in a["progress"].items() if k != "elapsed"}
    pb = {k: v for k, v in b["progress"].items() if k != "elapsed"}
    assert pa == pb


def _assert_equal(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict), where
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


# ----------------------------------------------------------------------------- shared runs

_MEMO: dict[str, object] = {}


def prepared_run(tmp_path_factory, toy_pairs) -> tuple[Path, Path]:
    """(data dir, a run dir with a prepared cache), made once per test session."""
    if "prepared" not in _MEMO:
        from helpers import toy_splits, write_splits

        from transformer_cli.core.config_file import config_from_dict
        from transformer_cli.data import prepare

        root = tmp_path_factory.mktemp("prepared")
        splits = toy_splits(toy_pairs)
        write_splits(root / "data", splits)
        prepare.run(config_from_dict(tiny_raw(root / "run", root / "data")))
        _MEMO["prepared"] = (root / "data", root / "run")
    return _MEMO["prepared"]  # type: ignore[return-value]


def reference_run(tmp_path_factory, toy_pairs, **train: object) -> Path:
    """The run dir of an uninterrupted tiny run (in-process), made once per settings.

    Treat it as read-only: copy what a test wants to damage.
    """
    key = f"reference {sorted(train.items())}"
    if key not in _MEMO:
        from transformer_cli.core.config_file import config_from_dict
        from transformer_cli.training import loop as train_mod

        data, prepared = prepared_run(tmp_path_factory, toy_pairs)
        run_dir = tmp_path_factory.mktemp("reference") / "run"
        copy_cache(prepared, run_dir)
        train_mod.run(config_from_dict(tiny_raw(run_dir, data, **train)))
        _MEMO[key] = run_dir
    return _MEMO[key]  # type: ignore[return-value]


def reference_state(tmp_path_factory, toy_pairs, **train: object) -> dict:
    """The last checkpoint of `reference_run`."""
    return last_state(reference_run(tmp_path_factory, toy_pairs, **train))
