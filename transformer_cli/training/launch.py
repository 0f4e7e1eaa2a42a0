"""`tfx train --nproc N`: torchrun's standalone launcher for one machine, started from tfx.

It is `torchrun --standalone --nproc-per-node N -m transformer_cli train ...` with three
things added: what can be checked before any rank starts is checked here (so a bad flag,
a busy run dir or an --init-from checkpoint that does not fit is one line, not N ranks
failing), the launcher holds the run dir's lock for the whole job, and a failed rank ends
the job with one line that names it. torchrun picks a free port itself; nothing here
chooses a port or an address.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch

from transformer_cli.core import runtime
from transformer_cli.core.config import Config
from transformer_cli.core.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, ConfigError
from transformer_cli.data import store
from transformer_cli.training import distributed, finetune, lock, saving
from transformer_cli.training.finetune import Start


def check(cfg: Config, nproc: int) -> None:
    """Refuse what no rank could run: no ranks, more ranks than GPUs, fp16 without CUDA."""
    if nproc < 1:
        raise ConfigError(f"--nproc: must be at least 1, got {nproc}")
    device = runtime.pick_device(cfg.train.device)
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise ConfigError(
            f"--nproc {nproc}: only {torch.cuda.device_count()} CUDA device(s) are visible "
            "(one rank per GPU)"
        )
    if device.type not in ("cuda", "cpu"):
        raise ConfigError(f"--nproc: distributed training runs on cuda or cpu, not {device.type}")
    if device.type == "cpu" and cfg.train.precision == "fp16":
        raise ConfigError(
            "train.precision: fp16 needs CUDA; distributed training on the CPU (gloo) "
            "runs fp32 or bf16"
        )
    runtime.resolve_precision(cfg.train.precision, device)


def torchrun_args(nproc: int, train_args: list[str]) -> list[str]:
    """torchrun's command line for one machine and `nproc` ranks of `tfx train ARGS`."""
    return [
        "--standalone",
        f"--nproc-per-node={nproc}",
        "--max-restarts=0",
        "--module",
        "transformer_cli",
        "train",
        *train_args,
    ]


def rank_args(config: Path, overrides: list[str], start: Start) -> list[str]:
    """The arguments of each rank's `tfx train`: this one's, without --nproc."""
    args = ["--config", str(config), *(f"--set={s}" for s in overrides)]
    if start.resume:
        args.append("--resume")
    if start.init_from is not None:
        args += ["--init-from", str(start.init_from)]
    return args


def run(cfg: Config, nproc: int, train_args: list[str], start: Start) -> int:
    """Launch `nproc` ranks of `tfx train train_args`; return the job's exit code."""
    check(cfg, nproc)
    run_dir = Path(cfg.run_dir)
    store.load_meta(run_dir)  # a clear error if `tfx prepare` has not run
    if start.init_from is not None:  # one line here, not one from every rank
        finetune.base_for(cfg, run_dir, start.init_from)
    with lock.RunLock(run_dir) as held:
        saving.refuse_a_second_run(run_dir, start.resume)
        os.environ[lock.JOB_LOCK_ENV] = held.owner
        world = distributed.World(local_size=nproc, launched=True)
        threads = distributed.rank_threads(world, cfg.train.threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # else torchrun warns, sets 1
        try:
            return _launch(nproc, train_args, run_dir)
        finally:
            os.environ.pop(lock.JOB_LOCK_ENV, None)


def _launch(nproc: int, train_args: list[str], run_dir: Path) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as torchrun

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # one line, ours
    try:
        torchrun(parse_args(torchrun_args(nproc, train_args)))
    except ChildFailedError as e:
        print(f"error: {failure_line(e.failures, run_dir)}", file=sys.stderr)
        codes = {f.exitcode for f in e.failures.values()}
        return EXIT_USER_ERROR if codes == {EXIT_USER_ERROR} else 1
    except SignalException as e:
        name = signal.Signals(e.sigval).name
        print(f"stopped by {name}: the ranks were asked to save and stop", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def failure_line(failures: dict, run_dir: Path) -> str:
    """Which rank failed first and how, and what is safe: one line.

    The ranks torchrun stopped itself, once one had failed, end by its SIGTERM: a rank
    that ended otherwise is the cause. Failure times are whole seconds; among equal ones,
    a rank killed by a signal comes first, then one with an internal error (exit 1), then
    one that reported an error (exit 2, which is what a rank that lost the others does);
    then the lower rank.
    """

    def cause_first(item: tuple[int, Any]) -> tuple[bool, int, int, int]:
        rank, failure = item
        kind = 0 if failure.exitcode < 0 else 1 if failure.exitcode != EXIT_USER_ERROR else 2
        return (failure.exitcode == -signal.SIGTERM, failure.timestamp, kind, rank)

    rank, first = min(failures.items(), key=cause_first)
    if first.exitcode < 0:
        how = f"was killed by {signal.Signals(-first.exitcode).name}"
    else:
        how = f"exited with code {first.exitcode}"
    others = f" ({len(failures) - 1} other rank(s) failed too)" if len(failures) > 1 else ""
    return (
        f"rank {rank} (pid {first.pid}) {how}{others}; the job was stopped and the "
        f"checkpoints in {run_dir / 'checkpoints'} are intact"
    )
