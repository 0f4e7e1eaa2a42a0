#!/usr/bin/env bash
# Two studies on Multi30k de -> en, with the model and recipe of the 12-minute CPU recipe
# (configs/multi30k_de_en_cpu12.yaml); docs/positions.md says what each shows:
#
#   STUDY=init  DATA=path/to/multi30k bash bench/positions.sh
#       model.embedding_init xavier against normal, for the recipe's 640 updates (what
#       its 12 minutes reached on the benchmark machine, docs/results.md), seeds 1 and 2;
#   STUDY=kinds DATA=path/to/multi30k bash bench/positions.sh
#       model.positional sinusoidal, learned, rope and relative, trained on pairs of at
#       most 20 pieces (data.max_len 20) for UPDATES (400) updates each, seeds 1 and 2;
#       the test set is then scored whole and by source length (<= 20, 21-30, > 30).
#
# Budgets are in updates, not minutes, so the tables do not depend on the machine's load.
# Each run translates test_2016_flickr with its best-validation checkpoint (greedy); the
# tables are written by bench/positions_summary.py. An interrupted study resumes: runs
# with a last.pt, and finished translations, are kept. Everything goes under WORK.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:?DATA=path/to/multi30k: the directory of the Multi30k task-1 files}
STUDY=${STUDY:?STUDY=init or STUDY=kinds}
WORK=${WORK:-runs/positions}/$STUDY
SEEDS=${SEEDS:-1 2}
UPDATES=${UPDATES:-400}
TFX=${TFX:-.venv/bin/tfx}
CONFIG=configs/multi30k_de_en_cpu12.yaml
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
DATA=$(cd "$DATA" && pwd)
mkdir -p "$WORK/log"
WORK=$(cd "$WORK" && pwd)
if [[ -f "$DATA/test_2016_flickr.de.gz" ]]; then
  gzip -dc "$DATA/test_2016_flickr.de.gz" > "$WORK/test.de"
else
  cp "$DATA/test_2016_flickr.de" "$WORK/test.de"
fi

run() {  # run NAME SETTINGS...: prepare, train, translate the test set; skip what is done
  local name=$1
  shift
  local sets=(--set "data.dir=$DATA" --set "run_dir=$WORK/$name" --set train.max_minutes=0 "$@")
  if [[ ! -f "$WORK/$name/checkpoints/last.pt" ]]; then
    "$TFX" prepare --config "$CONFIG" "${sets[@]}" > "$WORK/log/$name.prepare.log" 2>&1
    local started=$SECONDS
    "$TFX" train --config "$CONFIG" "${sets[@]}" > "$WORK/log/$name.train.log" \
      2> "$WORK/log/$name.train.err"
    echo "$((SECONDS - started))" > "$WORK/log/$name.train.seconds"
    head -n 1 "$WORK/log/$name.train.err" >&2
  fi
  if [[ ! -f "$WORK/log/$name.test.en" ]]; then
    "$TFX" translate "$WORK/$name/checkpoints/best.pt" --input "$WORK/test.de" \
      --output "$WORK/log/$name.test.en.tmp"
    mv "$WORK/log/$name.test.en.tmp" "$WORK/log/$name.test.en"
  fi
  echo "== $name done" >&2
}

for seed in $SEEDS; do
  if [[ "$STUDY" == init ]]; then
    for init in xavier normal; do
      run "${init}_seed$seed" --set "model.embedding_init=$init" --set "train.seed=$seed" \
        --set train.max_steps=640
    done
  else
    for kind in sinusoidal learned rope relative; do
      run "${kind}_seed$seed" --set "model.positional=$kind" --set "train.seed=$seed" \
        --set data.max_len=20 --set "train.max_steps=$UPDATES"
    done
  fi
done
echo "== all runs done; tables: .venv/bin/python bench/positions_summary.py $STUDY" >&2
