#!/usr/bin/env bash
# Multi30k end to end under a training time budget:
# prepare -> train -> evaluate (best, last and the average of the last 3 checkpoints,
# greedy and beam 5) on test_2016_flickr, with sacreBLEU/chrF, decode speed and the
# training summary written to bench/out/multi30k_<direction>.json.
#
#   bash bench/multi30k.sh de_en 12 [--set key=value ...]   # direction, budget in minutes
#
# The CPU protocol of ../shared/bench/peers (12 minutes, 2 threads, warmup 400 with the
# peers' peak learning rate 1.98e-3, pre-norm, the precision `auto` picks) is:
#   bash bench/multi30k.sh de_en 12 --set model.norm=pre
# An AVX2-only CPU, emulated on a newer one (the JSON records the variables):
#   ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
#     bash bench/multi30k.sh de_en 12 --set model.norm=pre
# Data: DATA=../shared/data/multi30k by default. Keep the machine otherwise idle.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:?direction: de_en or en_de}
MINUTES=${2:?training budget in minutes}
shift 2
DATA=${DATA:-../shared/data/multi30k}
RUN=${RUN:-runs/bench_multi30k_$DIR}
OUT=bench/out
TFX=.venv/bin/tfx
mkdir -p "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
sets=(--set "data.dir=$DATA" --set "run_dir=$RUN"
      --set train.warmup=400 --set train.noam_factor=0.632
      --set "train.max_minutes=$MINUTES" --set train.eval_every=200 --set train.keep_last=3
      --set train.log_every=20 "$@")
CONFIG=configs/multi30k_$DIR.yaml

rm -rf "$RUN"
commit=$(git rev-parse --short HEAD)
"$TFX" prepare --config "$CONFIG" "${sets[@]}"
/usr/bin/time -v -o "$OUT/multi30k_${DIR}.train.time" \
  "$TFX" train --config "$CONFIG" "${sets[@]}" 2> "$OUT/multi30k_${DIR}.train.err" \
  | tee "$OUT/multi30k_${DIR}.train.log"
cat "$OUT/multi30k_${DIR}.train.err" >&2  # the first line: where and in what precision it ran
for beam in 1 5; do
  "$TFX" evaluate "$RUN/checkpoints/" --average 3 \
    --config "$CONFIG" "${sets[@]}" --split test --beam "$beam" --max-len-a 1.5 --max-len-b 10 \
    --batch-size 64 --json --output-dir "$RUN/eval_beam$beam" > "$OUT/multi30k_${DIR}.beam$beam.json"
done
COMMIT=$commit .venv/bin/python bench/multi30k_summary.py "$DIR" "$RUN" "$OUT" "$MINUTES" "$@"
