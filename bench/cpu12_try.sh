#!/usr/bin/env bash
# One try of the 12-minute CPU recipe (configs/multi30k_de_en_cpu12.yaml), judged on the
# validation set only: prepare, train under train.max_minutes, then append the try's
# precision, updates, tokens/s and last validation loss and BLEU to
# bench/out/cpu12_tries.jsonl (bench/cpu12_collect.py gathers them).
#
#   bash bench/cpu12_try.sh NAME [--set key=value ...]
#   AVX2=1 bash bench/cpu12_try.sh NAME ...   # emulate an AVX2-only CPU
#   TEST=1 bash bench/cpu12_try.sh NAME       # the chosen recipe: also score test_2016
#
# No test data is read unless TEST=1: the test set is scored once, for the chosen recipe
# (best.pt, greedy and beam 5). Data: DATA=../shared/data/multi30k by default. Keep the
# machine otherwise idle.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${1:?a name for this try}
shift
DATA=${DATA:-../shared/data/multi30k}
RUN=runs/cpu12_$NAME
LOG=bench/out/cpu12_$NAME
CONFIG=configs/multi30k_de_en_cpu12.yaml
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
if [[ "${AVX2:-0}" == 1 ]]; then
  export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
fi
sets=(--set "data.dir=$DATA" --set "run_dir=$RUN" "$@")
mkdir -p bench/out
rm -rf "$RUN"
.venv/bin/tfx prepare --config "$CONFIG" "${sets[@]}" > /dev/null
.venv/bin/tfx train --config "$CONFIG" "${sets[@]}" 2> "$LOG.train.err" | tee "$LOG.train.log"
cat "$LOG.train.err" >&2  # the first line: where and in what precision it ran
if [[ "${TEST:-0}" == 1 ]]; then
  for beam in 1 5; do
    .venv/bin/tfx evaluate "$RUN/checkpoints/best.pt" --config "$CONFIG" "${sets[@]}" \
      --split test --beam "$beam" --batch-size 64 --json > "$LOG.test$beam.json"
  done
fi
.venv/bin/python - "$NAME" "$RUN" "$LOG" "${AVX2:-0}" "$*" <<'PY'
import json, os, subprocess, sys
sys.path.insert(0, "bench")
from machine import trained_precision, trained_rate
name, run, log, avx2, sets = sys.argv[1:6]
rows = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
valid = [{k: r[k] for k in ("step", "loss", "bleu", "chrf")} for r in rows if r["kind"] == "valid"]
precision, _ = trained_precision(open(f"{log}.train.err").read())
try_ = dict(name=name, avx2_emulated=avx2 == "1", sets=sets,
            commit=subprocess.getoutput("git rev-parse --short HEAD"),
            precision=precision, updates=valid[-1]["step"],
            tokens_per_s=trained_rate(open(f"{log}.train.log").read()),
            valid_bleu=valid[-1]["bleu"], valid_loss=valid[-1]["loss"], valid=valid)
if os.path.exists(f"{log}.test1.json"):
    reports = {f"beam{b}": json.load(open(f"{log}.test{b}.json")) for b in (1, 5)}
    try_["test"] = {k: r["results"][0]["bleu"] for k, r in reports.items()}
    try_["test_decode_precision"] = reports["beam1"]["precision"]
open("bench/out/cpu12_tries.jsonl", "a").write(json.dumps(try_) + "\n")
print(json.dumps({k: v for k, v in try_.items() if k != "valid"}))
PY
