"""Decoding speed of sampling against greedy search, paired, on a checkpoint and a split.

    .venv/bin/python bench/sampling_speed.py CHECKPOINT [--split test] [--reps 5]

Each configuration decodes the split's sources (encoded beforehand, as in
bench/decode_speed.py) with `decode_all`'s strategy at batch 64, in rounds: every round
runs each configuration once, one after the other, so each round's ratio to greedy
shares that moment's load; the speed-up is the median of the rounds' ratios. Both
precisions are measured: fp32, and what `auto` picks on this CPU. The sampled rows' BLEU
is against the split's references (greedy's too), so that what sampling costs in
quality stands beside its speed. Writes bench/results/sampling_speed.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import sacrebleu
import torch
from machine import cpu_record

from transformer_cli.core import runtime
from transformer_cli.decoding.loading import load_model, ready_to_decode
from transformer_cli.decoding.runner import Plan, choose, run
from transformer_cli.evaluation.evaluate import split_data

# name: the decode options it changes
CONFIGS = {
    "greedy": {},
    "sample": {"sample": True},
    "sample_topk10": {"sample": True, "topk": 10},
    "sample_topp0.9": {"sample": True, "topp": 0.9},
    "sample_nbest4": {"sample": True, "nbest": 4},
}
OUT = Path(__file__).parent / "results" / "sampling_speed.json"


def timed(model, sources, decode, options: dict, precision: str) -> tuple[float, list]:
    options = dict(options)
    nbest = options.pop("nbest", 1)
    cfg = dataclasses.replace(decode, batch_sentences=64, **options)
    plan = Plan.of(sources, cfg, model.cfg.max_positions, torch.device("cpu"))
    started = time.perf_counter()
    outputs = run(model, plan, choose(cfg, nbest, torch.device("cpu")), precision)
    return time.perf_counter() - started, outputs


def measure(checkpoint: Path, split: str, reps: int, precision: str) -> dict:
    model, tokenizer, cfg = load_model(checkpoint, torch.device("cpu"))
    ready_to_decode(model, torch.device("cpu"), precision)
    data = split_data(cfg, split)
    sources = tokenizer.encode_src(data.sources)
    for options in CONFIGS.values():  # warm-up
        timed(model, sources[:64], cfg.decode, options, precision)
    seconds: dict[str, list[float]] = {name: [] for name in CONFIGS}
    outputs = {}
    for _ in range(reps):
        for name, options in CONFIGS.items():
            took, outputs[name] = timed(model, sources, cfg.decode, options, precision)
            seconds[name].append(took)
    rows = {}
    for name, options in CONFIGS.items():
        firsts = [o[0][0] if options.get("nbest", 1) > 1 else o for o in outputs[name]]
        hyps = tokenizer.decode_tgt(firsts)
        pieces = sum(len(ids) for ids in firsts) * options.get("nbest", 1)
        rows[name] = {
            "seconds": [round(s, 3) for s in seconds[name]],
            "sentences_per_s": round(len(sources) / min(seconds[name]), 1),
            "pieces_per_s": round(pieces / min(seconds[name]), 1),
            "bleu": round(sacrebleu.corpus_bleu(hyps, [data.references]).score, 2),
            "time_vs_greedy": round(
                statistics.median(
                    s / g for s, g in zip(seconds[name], seconds["greedy"], strict=True)
                ),
                2,
            ),
        }
    return {"precision": precision, "sentences": len(sources), "configs": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    runtime.set_threads(int(os.environ.get("OMP_NUM_THREADS", "0") or 0))
    auto = runtime.cpu_auto_precision(runtime.cpu_math())[0]
    precisions = ["fp32"] + ([auto] if auto != "fp32" else [])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    result = {
        "benchmark": "bench/sampling_speed.py",
        "date": datetime.date.today().isoformat(),
        "commit": commit.stdout.strip(),
        "machine": platform.node(),
        **cpu_record(),
        "threads": torch.get_num_threads(),
        "checkpoint": str(args.checkpoint),
        "split": args.split,
        "batch_sentences": 64,
        "runs": [measure(args.checkpoint, args.split, args.reps, p) for p in precisions],
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
