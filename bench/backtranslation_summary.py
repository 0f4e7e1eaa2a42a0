"""Summarise a finished `bench/backtranslation.sh` into bench/results/backtranslation.json.

    .venv/bin/python bench/backtranslation_summary.py WORK UPDATES

Reads each run's metrics.jsonl and `tfx evaluate --json` reports, and each synthetic set's
`tfx score --json` lines and decode time, from WORK (the script's work directory).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
from pathlib import Path

from machine import cpu_record, trained_precision

RUNS = {
    "parallel": "14,500 parallel pairs alone",
    "bt_beam": "parallel + beam-5 BT",
    "bt_sample_tagged": "parallel + sampled BT, tagged `<bt>`",
    "bt_sample": "parallel + sampled BT, untagged",
    "all_real": "all 29,000 real pairs (upper bound)",
}
BT_SETS = {
    "bt_beam": "beam 5",
    "bt_sample": "sampling (topk 0, topp 1)",
    "bt_topk10": "sampling, topk 10",
}


def run_row(work: Path, name: str) -> dict:
    """A training run: its validation curve's best, its training time, its test scores."""
    lines = (work / name / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    train = [r for r in records if r["kind"] == "train"]
    valid = [r for r in records if r["kind"] == "valid"]
    row = {
        "data": RUNS[name],
        "updates": train[-1]["step"] if train else 0,
        "train_minutes": round(train[-1]["elapsed"] / 60, 1) if train else None,
        "best_valid_bleu": max((r["bleu"] for r in valid), default=None),
        "precision": trained_precision((work / "log" / f"{name}.train.err").read_text())[0],
    }
    for beam in (1, 5):
        report = json.loads((work / "log" / f"{name}.beam{beam}.json").read_text())
        best = report["results"][0]
        key = "greedy" if beam == 1 else "beam5"
        row |= {f"{key}_bleu": best["bleu"], f"{key}_chrf": best["chrf"], "step": best["step"]}
    return row


def reverse_row(work: Path) -> dict:
    """The en -> de model that wrote the synthetic sources: its validation curve's best."""
    lines = (work / "reverse" / "metrics.jsonl").read_text().splitlines()
    valid = [r for r in map(json.loads, lines) if r["kind"] == "valid"]
    best = max(valid, key=lambda r: r["bleu"])
    return {"best_valid_bleu": best["bleu"], "step": best["step"], "valid_loss": best["loss"]}


def bt_row(work: Path, name: str) -> dict:
    """A synthetic set: how the reverse model scores it, and how long it took to decode."""
    lines = (work / "log" / f"{name}.scores.jsonl").read_text().splitlines()
    means = [r["mean"] for r in map(json.loads, lines) if r["mean"] is not None]
    tokens = [r["tokens"] for r in map(json.loads, lines) if r["tokens"] is not None]
    seconds = work / "log" / f"{name}.seconds"
    return {
        "method": BT_SETS[name],
        "sentences": len(lines),
        "mean_log_prob_per_token": round(statistics.fmean(means), 4),
        "mean_tokens": round(statistics.fmean(tokens), 2),
        "decode_seconds": int(seconds.read_text()) if seconds.exists() else None,
    }


def main() -> None:
    work, updates = Path(sys.argv[1]), int(sys.argv[2])
    result = {
        "benchmark": "bench/backtranslation.sh",
        "date": datetime.date.today().isoformat(),
        "commit": os.environ.get("COMMIT", ""),
        "machine": platform.node(),
        **cpu_record(),
        "threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0),
        "updates_per_run": updates,
        "reverse_model": reverse_row(work),
        "runs": {name: run_row(work, name) for name in RUNS},
        "synthetic_sets": {name: bt_row(work, name) for name in BT_SETS},
    }
    out = Path("bench/results/backtranslation.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
