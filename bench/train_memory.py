"""Host memory of a long CPU training run, per malloc: RSS and peak every N steps.

    .venv/bin/python bench/train_memory.py --config configs/multi30k_de_en.yaml \
        --set run_dir=runs/bench_multi30k_de_en --set train.precision=bf16 --steps 250

A short benchmark (`train_speed.py`) sees only the first steps' peak, but glibc's heap
keeps fragmenting for epochs. Each malloc (jemalloc, as `tfx train` picks it where
installed, and glibc with tfx's tuning) runs `--steps` real training steps over as many
epochs as it takes, in its own process, one after the other. Writes
bench/out/train_memory.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def rss_gib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def worker(args) -> dict:
    from train_speed import setup

    from transformer_cli.data import batching
    from transformer_cli.fast import allocator
    from transformer_cli.training import schedule
    from transformer_cli.training import step as train

    cfg, device, precision, _, split, model, optimizer = setup(
        args.config, [*args.set, "train.device=cpu"]
    )
    trainer = train.build_trainer(model, optimizer, None, split, cfg, device, precision)
    trace, step, epoch, tokens = [], 0, 0, 0
    started = time.perf_counter()
    while step < args.steps:
        for batch in batching.epoch_batches(split, cfg.train.batch_tokens, cfg.train.seed, epoch):
            if step == args.steps:
                break
            lr = schedule.learning_rate(step + 1, cfg.train, cfg.model.d_model)
            tokens += train.train_step(trainer, [batch], lr).tokens
            step += 1
            if step % args.every == 0 or step == args.steps:
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
                trace.append(
                    {"step": step, "rss_gib": round(rss_gib(), 3), "peak_gib": round(peak, 3)}
                )
        epoch += 1
    return {
        "malloc": allocator.active(),
        "steps": step,
        "epochs": epoch,
        "tokens_per_s": round(tokens / (time.perf_counter() - started)),
        "peak_rss_gib": trace[-1]["peak_gib"],
        "trace": trace,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], help="config override")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--every", type=int, default=50, help="record every N steps")
    parser.add_argument("--mallocs", default="jemalloc,glibc")
    parser.add_argument("--out", default=str(HERE / "out" / "train_memory.json"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    from train_speed import worker_env

    runs = []
    for name in args.mallocs.split(","):
        cmd = [sys.executable, __file__, "--worker", "--config", args.config,
               "--steps", str(args.steps), "--every", str(args.every)]  # fmt: skip
        for s in args.set:
            cmd += ["--set", s]
        variant = "bf16+glibc" if name == "glibc" else "bf16"
        out = subprocess.run(
            cmd, check=True, capture_output=True, text=True, env=worker_env(variant)
        ).stdout
        run = json.loads(out.strip().splitlines()[-1])
        if run["malloc"] != name:
            print(f"asked for {name}, ran under {run['malloc']} (not installed?)", file=sys.stderr)
        runs.append(run)
        trace = "  ".join(f"{t['step']}: {t['rss_gib']:.2f}" for t in run["trace"])
        print(
            f"{run['malloc']:<9} peak {run['peak_rss_gib']:.2f} GiB, "
            f"{run['tokens_per_s']} tok/s; RSS GiB by step  {trace}",
            flush=True,
        )
    result = {
        "date": datetime.date.today().isoformat(),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
        ).stdout.strip(),
        "config": args.config,
        "overrides": args.set,
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
