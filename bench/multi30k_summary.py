"""Summarise a finished `bench/multi30k.sh` run into bench/out/multi30k_<direction>.json.

    .venv/bin/python bench/multi30k_summary.py DIRECTION RUN_DIR OUT_DIR MINUTES [OVERRIDES...]

Reads the run's metrics.jsonl, cache/meta.json, the `/usr/bin/time -v` report of training
and the two `tfx evaluate --json` reports that multi30k.sh wrote.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

from machine import cpu_record, malloc_of, trained_precision


def main() -> None:
    direction, run, out, minutes, *overrides = sys.argv[1:]
    records = [json.loads(line) for line in Path(f"{run}/metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "train"]
    valid = [r for r in records if r["kind"] == "valid"]
    rss = re.search(
        r"Maximum resident set size \(kbytes\): (\d+)",
        Path(f"{out}/multi30k_{direction}.train.time").read_text(),
    )
    # Every log window holds the same number of updates of ~equal tokens: the training
    # loop's rate is the harmonic mean of the windows' rates. A validation at step v runs
    # after the log at v, inside the next window; those windows are left out, so that the
    # rate is the loop's own whichever tfx version logged it.
    eval_steps = {r["step"] for r in valid}
    ends = [r["step"] for r in steps]
    rates = [
        r["tokens_per_s"]
        for prev, r in zip([0, *ends], steps, strict=False)
        if not any(prev <= v < r["step"] for v in eval_steps)
    ]
    # the first line of `tfx train` (its stderr) names the precision that ran, and why
    err = Path(f"{out}/multi30k_{direction}.train.err")
    first_line = err.read_text() if err.exists() else ""
    precision, why = trained_precision(first_line)
    result = {
        "direction": direction,
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {subprocess.getoutput('nproc')} cores",
        **cpu_record(),
        # the commit that trained (multi30k.sh records it at the start), else HEAD
        "commit": os.environ.get("COMMIT") or subprocess.getoutput("git rev-parse --short HEAD"),
        "budget_minutes": float(minutes),
        "precision": precision,
        "precision_reason": why,
        "malloc": malloc_of(first_line),
        "steps": steps[-1]["step"] if steps else 0,
        "train_seconds": steps[-1]["elapsed"] if steps else 0,
        "tokens_per_s_mean": round(len(rates) / sum(1 / r for r in rates)) if rates else 0,
        "tokens_per_s_last_logs": [round(r["tokens_per_s"]) for r in steps[-5:]],
        "peak_rss_gib": round(int(rss.group(1)) / 2**20, 3) if rss else None,
        "prepare_seconds": read_json(f"{run}/cache/meta.json").get("seconds"),
        "overrides": " ".join(overrides),
        "valid": valid,
        "test": {f"beam{b}": read_json(f"{out}/multi30k_{direction}.beam{b}.json") for b in (1, 5)},
    }
    Path(f"{out}/multi30k_{direction}.json").write_text(json.dumps(result, indent=2))
    summary = {k: v for k, v in result.items() if k not in ("valid", "test")}
    print(json.dumps(summary, indent=2))


def read_json(path: str) -> dict:
    return json.loads(Path(path).read_text())


if __name__ == "__main__":
    main()
