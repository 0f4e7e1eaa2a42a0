#!/usr/bin/env bash
# The demo's training (configs/toy.yaml, as `make demo` runs it) and its test BLEU, with
# any --set overrides; appends one JSON line to bench/out/toy_demo.jsonl.
#
#   bash bench/toy_demo.sh NAME [--set key=value ...]   # e.g. --set train.precision=fp32
#
# Keep the machine otherwise idle: the line records the training's tokens/s.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${1:?a name for this run}
shift
RUN=runs/toy_demo_$NAME
sets=(--set "run_dir=$RUN" "$@")
mkdir -p bench/out
rm -rf "$RUN"
.venv/bin/tfx prepare --config configs/toy.yaml "${sets[@]}" > /dev/null
started=$(date +%s.%N)
.venv/bin/tfx train --config configs/toy.yaml "${sets[@]}" 2> "bench/out/toy_demo_$NAME.err" \
  > "bench/out/toy_demo_$NAME.log"
ended=$(date +%s.%N)
.venv/bin/tfx evaluate "$RUN/checkpoints/best.pt" --split test --json > "bench/out/toy_demo_$NAME.json"
.venv/bin/python - "$NAME" "$RUN" "$started" "$ended" "$*" <<'PY'
import json, subprocess, sys
sys.path.insert(0, "bench")
from machine import cpu_record, trained_precision, trained_rate
name, run, started, ended, sets = sys.argv[1:6]
rows = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
train = [r for r in rows if r["kind"] == "train"]
first = open(f"bench/out/toy_demo_{name}.err").read()
precision, _ = trained_precision(first)
report = json.load(open(f"bench/out/toy_demo_{name}.json"))  # evaluate's, with `auto` decoding
line = dict(name=name, sets=sets, commit=subprocess.getoutput("git rev-parse --short HEAD"),
            precision=precision, steps=train[-1]["step"],
            train_seconds=round(float(ended) - float(started), 1),
            tokens_per_s=trained_rate(open(f"bench/out/toy_demo_{name}.log").read()),
            test_bleu=report["results"][0]["bleu"], decode_precision=report["precision"],
            **cpu_record())
open("bench/out/toy_demo.jsonl", "a").write(json.dumps(line) + "\n")
print(json.dumps({k: v for k, v in line.items() if k != "cpu_flags"}))
PY
