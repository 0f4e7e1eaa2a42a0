#!/usr/bin/env bash
# The GPU measurements of docs/performance.md ("Training on the GPU"), each under a hard
# time limit, in parts that each fit one 10-minute device call (~15 minutes of GPU time
# in all):
#
#   bash bench/gpu_suite.sh part1   # prepare Multi30k de-en; bench/train_speed.py: the small
#                                   # GPU config in fp32, bf16, bf16+compile, the base in bf16
#                                   # (~3 minutes, at most 9)
#   bash bench/gpu_suite.sh part2   # tfx train the small GPU config for MINUTES (default 5),
#                                   # evaluate best.pt on test_2016_flickr, greedy and beam 5
#                                   # (~MINUTES + 2, at most MINUTES + 5; whole minutes)
#   bash bench/gpu_suite.sh part3   # bench/decode_speed.py --device cuda, greedy fp32 and bf16
#                                   # at batch 64 and 512 on 10,000 training sentences (~2,
#                                   # at most 8 where it must train a model first)
#   bash bench/gpu_suite.sh all --dry-run   # (or TINY=1) the same commands on the CPU with
#                                   # tiny settings: the toy corpus, a tiny model, a few steps
#                                   # (2-5 minutes on 2 cores; torch.compile takes longest)
#
# Parts can be chained in one call (`part2 part3`, ~8 minutes at MINUTES=5). With ~15
# minutes of GPU time, a machine start included: one call `part1`, one call `part2 part3`.
# Decoding (part3) comes after training (part2) because it decodes part2's best.pt; on a
# fresh machine each part prepares what it needs (part3 trains a 1.5-minute model if part2's
# is not there), so the parts can run in separate calls, in any order.
#
# Every measurement runs under `timeout`; one that fails or runs out of time is recorded and
# the part goes on with the next. JSON goes to $OUT when set (the device machine's folder
# that comes back), else bench/results/; a dry run writes to bench/out/gpu_suite/ (ignored),
# since its figures mean nothing. Each part also writes gpu_suite_PART.json (each step's
# command, time, exit status, and the machine, date and commit) and gpu_suite_PART.log.
# Data: $DATA, else the first of ../shared/data/multi30k, shared/data/multi30k and
# data/multi30k that holds train.de[.gz] ({train,val,test_2016_flickr}.{de,en}[.gz]); where
# a device machine gets only the checkout, copy them into an ignored folder of it that
# travels with the call and set DATA to it.
# Python: $PY, else .venv/bin/python, else python3; this checkout's transformer_cli is used.
set -euo pipefail
cd "$(dirname "$0")/.."

USAGE="usage: bash bench/gpu_suite.sh part1|part2|part3|all ... [--dry-run]"
PARTS=()
TINY=${TINY:-0}
for arg in "$@"; do
  case $arg in
    part1 | part2 | part3) PARTS+=("$arg") ;;
    all) PARTS+=(part1 part2 part3) ;;
    --dry-run) TINY=1 ;;
    *) echo "$USAGE" >&2; exit 2 ;;
  esac
done
[[ ${#PARTS[@]} -gt 0 ]] || { echo "$USAGE" >&2; exit 2; }

if [[ -z ${PY:-} ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
TFX=("$PY" -m transformer_cli)
SMALL=configs/multi30k_de_en_gpu.yaml
BASE=configs/multi30k_de_en_base_gpu.yaml

if [[ $TINY == 1 ]]; then
  MODE=dry-run
  MINUTES=2
  RESULTS=bench/out/gpu_suite
  RUNS=runs/gpu_suite_dry
  DATA=data/toy
  # the toy corpus (en -> de, splits train/valid/test) and a tiny model on the CPU
  TINY_SETS=(--set data.src_lang=en --set data.tgt_lang=de --set data.valid=valid
    --set data.test=test --set tokenizer.vocab_size=600 --set train.device=cpu
    --set model.d_model=64 --set model.heads=2 --set model.enc_layers=1
    --set model.dec_layers=1 --set model.d_ff=128 --set train.batch_tokens=512)
  SPEED=(--steps 3 --warmup 1 --rounds 1 --peak-size 256)
  TRAIN_SETS=(--set train.max_steps=30 --set train.eval_every=15 --set train.log_every=5
    --set "train.max_minutes=$MINUTES")
  SHORT_TRAIN_SETS=("${TRAIN_SETS[@]}")
  DECODE=(--device cpu --limit 200 --batches 64 --reps 1)
  # seconds: prepare, speed, compile, base, train, evaluate, short train, decode
  LIMIT=(60 120 240 60 180 120 180 60)
else
  MODE=gpu
  MINUTES=${MINUTES:-5}
  RESULTS=${OUT:-bench/results}
  RUNS=${RUNS:-runs/gpu_suite}
  if [[ -z ${DATA:-} ]]; then
    for dir in ../shared/data/multi30k shared/data/multi30k data/multi30k; do
      if compgen -G "$dir/train.de*" >/dev/null; then DATA=$dir; break; fi
    done
  fi
  if [[ -z ${DATA:-} ]] || ! compgen -G "$DATA/train.de*" >/dev/null; then
    echo "no Multi30k train.de[.gz] in \$DATA, ../shared/data/multi30k, shared/data/multi30k" \
      "or data/multi30k: set DATA=dir" >&2
    exit 2
  fi
  TINY_SETS=()
  SPEED=(--steps 30 --warmup 5 --rounds 1)
  TRAIN_SETS=(--set "train.max_minutes=$MINUTES")
  SHORT_TRAIN_SETS=(--set train.max_minutes=1.5)
  DECODE=(--device cuda --limit 10000 --batches 64,512 --reps 1)
  # at most 530 s for part1, MINUTES + 5 minutes for part2, 8 minutes for part3
  LIMIT=(60 140 180 120 $((MINUTES * 60 + 60)) 60 150 240)
fi
mkdir -p "$RESULTS" "$RUNS"
DATA_SETS=(--set "data.dir=$DATA" "${TINY_SETS[@]}")

STEPS=""  # this part's record: one tab-separated line per measurement
# step NAME SECONDS OUTPUT_FILE COMMAND...: run COMMAND under a hard limit, record it, go on
step() {
  local name=$1 limit=$2 output=$3 started rc=0
  shift 3
  echo "== $name (at most ${limit}s): $*"
  started=$(date +%s)
  timeout -k 15 "$limit" "$@" || rc=$?
  [[ $rc == 0 ]] || echo "== $name: exit status $rc" >&2
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$limit" $(($(date +%s) - started)) "$rc" \
    "$output" "$*" >>"$STEPS"
  return 0
}

# prepare RUN_DIR CONFIG: tokenize and encode Multi30k into RUN_DIR once; the other
# configs' run dirs share its cache (the GPU configs' data and tokenizer are the same)
prepared() {
  local run=$1 config=$2
  [[ -f $run/cache/meta.json ]] && return 0
  if [[ -f $RUNS/small/cache/meta.json ]]; then
    mkdir -p "$run" && cp -r "$RUNS/small/cache" "$run/"
  else
    step "prepare $(basename "$config")" "${LIMIT[0]}" "" \
      "${TFX[@]}" prepare --config "$config" --set "run_dir=$run" "${DATA_SETS[@]}"
  fi
}

speed() {  # speed NAME CONFIG RUN_DIR VARIANTS LIMIT [extra args]
  local name=$1 config=$2 run=$3 variants=$4 limit=$5
  shift 5
  step "train_speed $name" "$limit" "$RESULTS/train_speed_$name.json" \
    "$PY" bench/train_speed.py --config "$config" --set "run_dir=$run" "${DATA_SETS[@]}" \
    --variants "$variants" "${SPEED[@]}" "$@" --out "$RESULTS/train_speed_$name.json"
}

part1() {
  prepared "$RUNS/small" "$SMALL"
  prepared "$RUNS/base" "$BASE"
  speed gpu_small "$SMALL" "$RUNS/small" fp32,bf16 "${LIMIT[1]}"
  speed gpu_small_compile "$SMALL" "$RUNS/small" bf16+compile "${LIMIT[2]}" --warmup 10
  speed gpu_base "$BASE" "$RUNS/base" bf16 "${LIMIT[3]}"
}

# train RUN_DIR NAME LIMIT SETS...: a fresh run of the small GPU config in RUN_DIR
train() {
  local run=$1 name=$2 limit=$3
  shift 3
  prepared "$RUNS/small" "$SMALL"
  rm -rf "$run" && mkdir -p "$run" && cp -r "$RUNS/small/cache" "$run/"
  local timer=()
  [[ -x /usr/bin/time ]] && timer=(/usr/bin/time -v -o "$RUNS/multi30k_${name}.train.time")
  : >"$RUNS/multi30k_${name}.train.time"
  step "train $name" "$limit" "" "${timer[@]}" "${TFX[@]}" train --config "$SMALL" \
    --set "run_dir=$run" "${DATA_SETS[@]}" "$@"
}

part2() {
  local run=$RUNS/train name=de_en_gpu
  train "$run" "$name" "${LIMIT[4]}" "${TRAIN_SETS[@]}"
  for beam in 1 5; do
    step "evaluate test beam $beam" "${LIMIT[5]}" "" sh -c '"$@" > "$0"' \
      "$RUNS/multi30k_${name}.beam$beam.json" "${TFX[@]}" evaluate "$run/checkpoints/best.pt" \
      --config "$SMALL" --set "run_dir=$run" "${DATA_SETS[@]}" --split test --beam "$beam" \
      --json --output-dir "$run/eval_beam$beam"
  done
  step "summary" 30 "$RESULTS/multi30k_${name}.json" \
    "$PY" bench/multi30k_summary.py "$name" "$run" "$RUNS" "$MINUTES" "${TRAIN_SETS[@]}"
  [[ -f $RUNS/multi30k_${name}.json ]] && cp "$RUNS/multi30k_${name}.json" "$RESULTS/"
  return 0
}

part3() {
  local ckpt=$RUNS/train/checkpoints/best.pt
  if [[ ! -f $ckpt ]]; then  # part2 ran elsewhere: a short model to decode with
    ckpt=$RUNS/decode_model/checkpoints/best.pt
    [[ -f $ckpt ]] || train "$RUNS/decode_model" decode_model "${LIMIT[6]}" "${SHORT_TRAIN_SETS[@]}"
  fi
  step "decode_speed greedy" "${LIMIT[7]}" "$RESULTS/decode_speed_gpu.json" \
    "$PY" bench/decode_speed.py "$ckpt" --split train --searches greedy,greedy_bf16 \
    "${DECODE[@]}" --out "$RESULTS/decode_speed_gpu.json"
}

run_part() {
  local name=$1
  STEPS=$RUNS/steps_$name.tsv
  : >"$STEPS"
  echo "== $name ($MODE): results in $RESULTS"
  "$name" 2>&1 | tee "$RESULTS/gpu_suite_$name.log"
  "$PY" bench/gpu_suite_record.py part "$name" "$MODE" "$STEPS" "$RESULTS"
}

for p in "${PARTS[@]}"; do run_part "$p"; done
