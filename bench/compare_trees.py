"""Two source trees of tfx side by side: the same benchmark, alternating, in one run.

    .venv/bin/python bench/compare_trees.py --old ../old --new . --rounds 3 \
        --train "--config configs/multi30k_de_en.yaml --set run_dir=runs/bench --variants fp32" \
        --decode "runs/bench/checkpoints/last.pt --subset 100 --reps 2"

Each round runs `bench/train_speed.py` (then `bench/decode_speed.py`) of the old tree and
of the new one, each importing its own `transformer_cli` (PYTHONPATH), in an order that
alternates between rounds, so that drift on a noisy machine falls on both. The two trees
read the same prepared run dir and checkpoint. Reported per measurement: the median over
rounds of new / old speed (above 1 = the new tree is faster), and every round's ratio.
Writes bench/out/compare_trees.json (or --out), with the machine, its CPU flags, date and commits.
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
from pathlib import Path

from machine import cpu_flags

HERE = Path(__file__).resolve().parent


def run_bench(tree: Path, script: str, args: str, out: Path) -> dict:
    """One benchmark run with `tree`'s code; its JSON report."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    argv = [sys.executable, str(tree / "bench" / script), *shlex.split(args)]
    if script == "train_speed.py":
        argv += ["--out", str(out)]
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
    written = out if script == "train_speed.py" else tree / "bench" / "out" / "decode_speed.json"
    return json.loads(written.read_text("utf-8"))


def speeds(script: str, report: dict) -> dict[str, float]:
    """The throughputs a report measured, by a name for each."""
    if script == "train_speed.py":
        return {f"train {r['variant']} tokens/s": r["tokens_per_s"] for r in report["rows"]}
    return {
        f"decode {r['set']} {r['search']} batch {r['batch']}"
        f"{'' if r['kv_cache'] else ' no-cache'} sent/s": r["sentences_per_s"]
        for r in report["results"]
    }


def commit(tree: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True, type=Path)
    parser.add_argument("--new", required=True, type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train", default="", help="train_speed.py's arguments")
    parser.add_argument("--decode", default="", help="decode_speed.py's arguments")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "compare_trees.json")
    args = parser.parse_args()
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    benches = [
        (s, a) for s, a in (("train_speed.py", args.train), ("decode_speed.py", args.decode)) if a
    ]
    out_dir = HERE / "out"
    out_dir.mkdir(exist_ok=True)
    per_round: list[dict[str, dict[str, float]]] = []
    for r in range(args.rounds):
        order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
        measured: dict[str, dict[str, float]] = {"old": {}, "new": {}}
        for script, bench_args in benches:
            for side in order:
                report = run_bench(trees[side], script, bench_args, out_dir / f"cmp_{side}.json")
                measured[side].update(speeds(script, report))
        per_round.append(measured)
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    names = sorted(set(per_round[0]["old"]) & set(per_round[0]["new"]))
    ratios = {n: [m["new"][n] / m["old"][n] for m in per_round] for n in names}
    for n in names:
        print(
            f"{statistics.median(ratios[n]):6.3f}x  {n}  (rounds: "
            f"{', '.join(f'{x:.3f}' for x in ratios[n])})"
        )
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "cpu_flags": cpu_flags(),
        "commits": {side: commit(path) for side, path in trees.items()},
        "benches": {script: a for script, a in benches},
        "rounds": args.rounds,
        "median_new_over_old": {n: round(statistics.median(r), 4) for n, r in ratios.items()},
        "ratios_by_round": {n: [round(x, 4) for x in r] for n, r in ratios.items()},
        "speeds_by_round": per_round,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", "utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
