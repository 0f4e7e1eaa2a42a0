"""The allocator switch: when tfx train runs under jemalloc, and glibc's tuning otherwise."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
import sys

import pytest

from transformer_cli.fast import allocator
from transformer_cli.fast.allocator import JEMALLOC_CONF, jemalloc_env

INSTALLED = ctypes.util.find_library("jemalloc") is not None


def found(name: str) -> str | None:
    return "libjemalloc.so.2" if name == "jemalloc" else None


def missing(_name: str) -> None:
    return None


@pytest.mark.parametrize(
    "environ", [{}, {"PATH": "/bin", "TFX_ALLOCATOR": "auto"}, {"LD_PRELOAD": "libfoo.so"}]
)
def test_switches_to_jemalloc_on_linux_when_installed(environ):
    env = jemalloc_env(environ, "linux", found)
    assert env is not None
    assert env["LD_PRELOAD"].split(":")[0] == "libjemalloc.so.2"
    assert env["MALLOC_CONF"] == JEMALLOC_CONF
    for key, value in environ.items():  # everything else is passed on as it was
        assert key == "LD_PRELOAD" or env[key] == value
    if "LD_PRELOAD" in environ:
        assert env["LD_PRELOAD"].endswith(":" + environ["LD_PRELOAD"])
    # the second run finds jemalloc preloaded and stays: no endless re-runs
    assert jemalloc_env(env, "linux", found) is None


@pytest.mark.parametrize(
    ("environ", "platform", "find"),
    [
        ({}, "linux", missing),  # not installed
        ({"TFX_ALLOCATOR": "system"}, "linux", found),  # the user's choice
        ({"LD_PRELOAD": "/opt/lib/libjemalloc.so"}, "linux", found),  # preloaded already
        ({}, "darwin", found),  # LD_PRELOAD is Linux's
        ({}, "win32", found),
    ],
)
def test_stays_as_it_is(environ, platform, find):
    assert jemalloc_env(environ, platform, find) is None


def test_keeps_the_users_malloc_conf():
    env = jemalloc_env({"MALLOC_CONF": "narenas:2"}, "linux", found)
    assert env is not None
    assert env["MALLOC_CONF"] == "narenas:2"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_this_process_reports_the_malloc_it_has_loaded():
    """`active()` reads the mapped files; the symbols the process resolves must agree."""
    process = ctypes.CDLL(None)  # the global symbol table: the executable and what it loaded
    jemalloc = any(hasattr(process, name) for name in ("mallctl", "je_mallctl"))  # its API
    if jemalloc:
        assert allocator.active() == "jemalloc"
    else:
        assert allocator.active() == "glibc"
        assert hasattr(process, "gnu_get_libc_version")  # and the label is true


TRAIN_HEADER = """
import sys
from transformer_cli.cli.app import app as cli
sys.argv = ["tfx", *sys.argv[1:]]
cli.main()
"""


@pytest.mark.skipif(not (INSTALLED and sys.platform.startswith("linux")), reason="no jemalloc")
@pytest.mark.parametrize(("setting", "expected"), [("auto", "jemalloc"), ("system", "glibc")])
def test_tfx_train_runs_under_jemalloc_unless_told_not_to(make_config, tmp_path, setting, expected):
    from transformer_cli.core.config_file import to_yaml
    from transformer_cli.data import prepare

    cfg = make_config(
        "model.d_model=16",
        "model.heads=2",
        "model.enc_layers=1",
        "model.dec_layers=1",
        "model.d_ff=32",
        "train.max_steps=1",
        "train.device=cpu",
    )
    prepare.run(cfg)
    config_path = tmp_path / "c.yaml"
    config_path.write_text(to_yaml(cfg))
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    done = subprocess.run(
        [sys.executable, "-c", TRAIN_HEADER, "train", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "TFX_ALLOCATOR": setting},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{expected} malloc" in done.stderr


WORKLOAD = """
import random, resource, sys, torch
from transformer_cli.fast.allocator import tune_cpu_memory
if sys.argv[1] == "keep":
    assert tune_cpu_memory()
rng = random.Random(0)
def step():  # like a training step: many tensors of batch-dependent sizes, then all freed
    held = [torch.empty(rng.randrange(250_000, 6_000_000)).fill_(1.0) for _ in range(20)]
    del held
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_kept_memory_is_reused_instead_of_faulted_in_again():
    def faults(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", WORKLOAD, mode],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        return int(out.stdout)

    assert faults("keep") * 3 < faults("default")


TRAIN_WEIGHTS = """
import hashlib, sys
from transformer_cli.core.config_file import load_config
from transformer_cli.core.checkpoint import load_checkpoint
from transformer_cli.fast import allocator
from transformer_cli.training import loop
if sys.argv[2] == "system":  # glibc as it comes: no tuning
    allocator.tune_cpu_memory = lambda *a, **k: False
cfg = load_config(sys.argv[1])
loop.run(cfg)
state = load_checkpoint(f"{cfg.run_dir}/checkpoints/last.pt")
digest = hashlib.sha256()
for name, tensor in sorted(state["model"].items()):
    digest.update(name.encode() + tensor.numpy().tobytes())
print(allocator.active(), digest.hexdigest())
"""


def test_the_malloc_changes_no_number(make_config, tmp_path):
    """The plain twin of fast/allocator.py is the system's malloc as it comes: training
    under the tuned glibc (or jemalloc, where installed) gives the same weights, bit for
    bit, one thread each."""
    from transformer_cli.core.config_file import to_yaml
    from transformer_cli.data import prepare

    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    runs = {"system": {}, "tuned": {}}
    if INSTALLED and sys.platform.startswith("linux"):
        runs["jemalloc"] = jemalloc_env(env) or {}
    digests = {}
    for name, extra in runs.items():
        cfg = make_config(
            "model.d_model=16",
            "model.heads=2",
            "model.enc_layers=1",
            "model.dec_layers=1",
            "model.d_ff=32",
            "train.max_steps=3",
            "train.device=cpu",
            "train.threads=1",
            f"run_dir={tmp_path / name}",
        )
        prepare.run(cfg)
        config_path = tmp_path / f"{name}.yaml"
        config_path.write_text(to_yaml(cfg))
        done = subprocess.run(
            [sys.executable, "-c", TRAIN_WEIGHTS, str(config_path), name],
            capture_output=True,
            text=True,
            timeout=120,
            env={**env, **extra},
        )
        assert done.returncode == 0, done.stderr[-2000:]
        malloc, digests[name] = done.stdout.split()[-2:]
        assert malloc == ("jemalloc" if name == "jemalloc" else "glibc")
    assert len(set(digests.values())) == 1, digests
