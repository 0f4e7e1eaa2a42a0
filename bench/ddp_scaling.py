"""Data-parallel overhead on one CPU: 1 rank x 2 threads against 2 ranks x 1 thread.

    .venv/bin/python bench/ddp_scaling.py --steps 60 --rounds 3

Both train the same updates: the single process accumulates 2 batches of
`train.batch_tokens` per update, the 2 ranks take one each (training/distributed.py), so
the figures compare the machinery, not two recipes. Each run is a real `tfx train` (the
2-rank one through `--nproc 2`, torchrun and gloo) on the toy corpus; the variants
alternate over `--rounds`, because this kind of machine drifts by up to 10% between
identical runs. Reported: the training loop's own real target tokens/s (validation and
start-up left out), the wall time of the whole command, and the largest weight
difference between the final checkpoints, beside the same figure for one process on 1
thread instead of 2 (`1x1`, run once): both differ only in the order of fp32 sums, which
Adam at a high learning rate amplifies over the steps, so the control gives the scale.
The default 60 steps stay inside the toy corpus's first epoch, where both variants see
the same batches (at an epoch's end, 2 ranks leave out an odd last batch). On a 2-core
machine this is a correctness and overhead figure, not a speed claim. Writes
bench/out/ddp_scaling.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma")


def tfx(*args: str) -> list[str]:
    return [sys.executable, "-m", "transformer_cli", *args]


def overrides(run_dir: Path, steps: int, threads: int, accum: int) -> list[str]:
    sets = {
        "run_dir": str(run_dir),
        "train.max_steps": steps,
        "train.eval_every": 10 * steps,  # one validation, at the end (not timed)
        "train.log_every": steps,
        "train.threads": threads,
        "train.accum_steps": accum,
        "train.device": "cpu",
    }
    return [f"--set={key}={value}" for key, value in sets.items()]


def run_variant(name: str, base: Path, config: str, steps: int) -> dict:
    """One timed `tfx train`: `1x2` or `1x1` (one process, 2 or 1 threads), `2x1` (2 ranks)."""
    run_dir = base / name
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    for stale in ("metrics.jsonl", "config.yaml"):
        (run_dir / stale).unlink(missing_ok=True)
    ranks, threads = (int(n) for n in name.split("x"))
    command = tfx("train", "--config", config, *overrides(run_dir, steps, threads, 2 // ranks))
    if ranks > 1:
        command += ["--nproc", str(ranks)]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)
    wall = time.monotonic() - started
    speed = re.search(r"([\d.]+) target tokens/s", done.stdout)
    assert speed, done.stdout + done.stderr
    return {"variant": name, "tokens_per_s": float(speed.group(1)), "wall_s": round(wall, 1)}


def weight_difference(a: Path, b: Path) -> float:
    from transformer_cli.core import checkpoint

    x = checkpoint.load_checkpoint(checkpoint.last_path(a))["model"]
    y = checkpoint.load_checkpoint(checkpoint.last_path(b))["model"]
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def machine() -> dict:
    flags = set()
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    return {
        "date": datetime.date.today().isoformat(),
        "commit": commit,
        "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
        "cpu_flags": sorted(f for f in flags if f in CPU_FLAGS),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/toy.yaml")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "out" / "ddp_scaling.json"))
    args = parser.parse_args()
    info = machine()
    base = HERE / "out" / "ddp"
    prepared = base / "1x2"
    subprocess.run(
        tfx("prepare", "--config", args.config, f"--set=run_dir={prepared}"), cwd=ROOT, check=True
    )
    for other in ("2x1", "1x1"):
        shutil.rmtree(base / other, ignore_errors=True)
        shutil.copytree(prepared / "cache", base / other / "cache")
    control = run_variant("1x1", base, args.config, args.steps)
    print(control, flush=True)
    runs: list[dict] = []
    for round_ in range(args.rounds):
        order = ("1x2", "2x1") if round_ % 2 == 0 else ("2x1", "1x2")
        for name in order:
            runs.append({"round": round_, **run_variant(name, base, args.config, args.steps)})
            print(runs[-1], flush=True)
    median = {
        name: statistics.median(r["tokens_per_s"] for r in runs if r["variant"] == name)
        for name in ("1x2", "2x1")
    }
    result = {
        "bench": f"bench/ddp_scaling.py --steps {args.steps} --rounds {args.rounds}",
        **info,
        "config": f"{args.config}, accum 2 x batch_tokens per update in both variants",
        "runs": runs,
        "median_tokens_per_s": median,
        "two_ranks_over_one": round(median["2x1"] / median["1x2"], 3),
        "control_1x1": control,
        "max_weight_difference_2x1_vs_1x2": weight_difference(base / "1x2", base / "2x1"),
        "max_weight_difference_1x1_vs_1x2": weight_difference(base / "1x2", base / "1x1"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("median_tokens_per_s", "two_ranks_over_one")}))
    for key in ("max_weight_difference_2x1_vs_1x2", "max_weight_difference_1x1_vs_1x2"):
        print(f"{key}: {result[key]:.3g}")


if __name__ == "__main__":
    main()
