"""Summarise a finished `bench/positions.sh` study into bench/results/positions_STUDY.json.

    .venv/bin/python bench/positions_summary.py init|kinds [WORK]

Reads each run's metrics.jsonl, `tfx train`'s summary and its greedy translation of
test_2016_flickr from WORK (default runs/positions/STUDY), and scores the translations
with sacreBLEU: whole, and (kinds) by source length in the runs' SentencePiece pieces.
"""

from __future__ import annotations

import datetime
import gzip
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import sacrebleu
from machine import cpu_record, trained_precision, trained_rate

from transformer_cli.data.tokenizer import Tokenizer

DATA = Path(os.environ.get("DATA", "../shared/data/multi30k"))
BUCKETS = (("<= 20", 0, 20), ("21-30", 21, 30), ("> 30", 31, 10**9))
ORDER = ("xavier", "normal", "sinusoidal", "learned", "rope", "relative")  # the tables' rows


def read_lines(stem: str) -> list[str]:
    """A Multi30k file of DATA, gzipped or not."""
    path = DATA / stem
    if path.exists():
        return path.read_text(encoding="utf-8").splitlines()
    with gzip.open(f"{path}.gz", "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def scores(hyps: list[str], refs: list[str]) -> dict:
    return {
        "sentences": len(hyps),
        "bleu": round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2),
        "chrf": round(sacrebleu.corpus_chrf(hyps, [refs]).score, 2),
    }


def run_row(work: Path, name: str, refs: list[str], lengths: list[int] | None) -> dict:
    """A run: its validation curve, speed and precision, its test scores (by bucket)."""
    records = [json.loads(line) for line in (work / name / "metrics.jsonl").open()]
    valid = [{k: r[k] for k in ("step", "loss", "bleu")} for r in records if r["kind"] == "valid"]
    hyps = (work / "log" / f"{name}.test.en").read_text(encoding="utf-8").splitlines()
    row = {
        "updates": valid[-1]["step"],
        "train_seconds": int((work / "log" / f"{name}.train.seconds").read_text()),
        "tokens_per_s": trained_rate((work / "log" / f"{name}.train.log").read_text()),
        "precision": trained_precision((work / "log" / f"{name}.train.err").read_text())[0],
        "valid": valid,
        "best_valid_bleu": max(r["bleu"] for r in valid),
        "test": scores(hyps, refs),
    }
    if lengths is not None:
        row["test_by_source_length"] = {
            label: scores(
                [h for h, n in zip(hyps, lengths, strict=True) if lo <= n <= hi],
                [r for r, n in zip(refs, lengths, strict=True) if lo <= n <= hi],
            )
            for label, lo, hi in BUCKETS
        }
    return row


def main() -> None:
    study = sys.argv[1]
    work = Path(sys.argv[2] if len(sys.argv) > 2 else f"runs/positions/{study}")
    names = sorted(
        (p.name for p in work.iterdir() if (p / "metrics.jsonl").exists()),
        key=lambda name: (ORDER.index(name.rpartition("_seed")[0]), name),
    )
    refs = read_lines("test_2016_flickr.en")
    lengths = None
    if study == "kinds":  # every run prepared the same data the same way: one tokenizer
        sources = read_lines("test_2016_flickr.de")
        lengths = [len(ids) for ids in Tokenizer.load(work / names[0]).encode_src(sources)]
    result = {
        "benchmark": f"STUDY={study} bench/positions.sh",
        "date": datetime.date.today().isoformat(),
        "commit": os.environ.get("COMMIT") or subprocess.getoutput("git rev-parse --short HEAD"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        **cpu_record(),
        "threads": int(os.environ.get("OMP_NUM_THREADS", "2")),
        "runs": {name: run_row(work, name, refs, lengths) for name in names},
    }
    out = Path(f"bench/results/positions_{study}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(names)} runs -> {out}")


if __name__ == "__main__":
    main()
