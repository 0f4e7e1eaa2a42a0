"""The whole training loop's speed, paired: `tfx train` runs of a few variants, alternating.

    .venv/bin/python bench/loop_speed.py --config configs/toy.yaml --steps 400 --rounds 3 \
        --variant "off=" --variant "on=--set train.tensorboard=true" \
        --variant "base=@../tfx-base"

`bench/train_speed.py` times the training step alone; what the loop adds around it
(records, logging, TensorBoard events) shows only here. A variant is NAME=SETS (`--set`
overrides of `tfx train`), or NAME=@TREE: the default config, run by another source tree of
tfx (its `transformer_cli` on PYTHONPATH). Each round runs every variant once, in an order
that rotates between rounds, each in a fresh run dir prepared beforehand; the figure is
`tfx train`'s closing summary of target tokens/s (validation left out). Reported: each
variant's median over rounds and every round, and its median ratio to the first variant.
Writes bench/out/loop_speed.json (or --out), with the machine, CPU flags, date and commit.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import cpu_record, trained_rate

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def run_once(config: str, steps: int, sets: list[str], tree: Path, work: Path) -> float:
    """One `tfx train` of `steps` updates in a fresh run dir: its target tokens/s."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    base = [sys.executable, "-m", "transformer_cli"]
    common = ["--config", config, "--set", f"run_dir={work}", *sets]
    subprocess.run([*base, "prepare", *common], env=env, check=True, capture_output=True)
    train = [*base, "train", *common, "--set", f"train.max_steps={steps}"]
    done = subprocess.run(train, env=env, check=True, capture_output=True, text=True)
    rate = trained_rate(done.stdout)
    assert rate is not None, done.stdout[-500:]
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", action="append", required=True, help="NAME=SETS|@TREE")
    parser.add_argument("--out", default=str(HERE / "out" / "loop_speed.json"))
    args = parser.parse_args()
    variants = {}
    for spec in args.variant:
        name, _, rest = spec.partition("=")
        tree = Path(rest[1:]).resolve() if rest.startswith("@") else ROOT
        variants[name] = (tree, [] if rest.startswith("@") else shlex.split(rest))
    names = list(variants)
    rates: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                tree, sets = variants[name]
                work = Path(tmp) / f"{name}_{r}"
                rates[name].append(run_once(args.config, args.steps, sets, tree, work))
                print(f"round {r + 1} {name}: {rates[name][-1]:,.0f} tokens/s", flush=True)
    first = names[0]
    result = {
        "benchmark": "bench/loop_speed.py",
        "date": datetime.date.today().isoformat(),
        "commit": subprocess.getoutput("git rev-parse --short HEAD"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        **cpu_record(),
        "config": args.config,
        "steps": args.steps,
        "variants": {
            n: {
                "tree_commit": subprocess.getoutput(
                    f"git -C {shlex.quote(str(variants[n][0]))} rev-parse --short HEAD"
                ),
                "sets": variants[n][1],
                "tokens_per_s": round(statistics.median(rates[n])),
                "rounds": [round(x) for x in rates[n]],
                "vs_first": round(
                    statistics.median(a / b for a, b in zip(rates[n], rates[first], strict=True)),
                    3,
                ),
            }
            for n in names
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for n, v in result["variants"].items():
        print(f"{n}: {v['tokens_per_s']:,} tokens/s, {v['vs_first']:.3f}x {first}, {v['rounds']}")


if __name__ == "__main__":
    main()
