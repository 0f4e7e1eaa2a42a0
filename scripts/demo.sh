#!/usr/bin/env bash
# `make demo`: the main job end to end on the embedded toy corpus.
# prepare -> train -> evaluate -> translate, then the training-curve and attention plots.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}  # the environment `make demo` installs; BIN=... for another
TFX=$BIN/tfx
CONFIG=configs/toy.yaml
RUN_DIR=${1:-runs/toy}
set_run=(--set "run_dir=$RUN_DIR")

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "tfx prepare --config $CONFIG"
"$TFX" prepare --config "$CONFIG" "${set_run[@]}"

step "tfx train --config $CONFIG"
rm -rf "$RUN_DIR/checkpoints" "$RUN_DIR/metrics.jsonl" "$RUN_DIR/eval"  # the demo starts afresh
started=$SECONDS
"$TFX" train --config "$CONFIG" "${set_run[@]}"
train_seconds=$((SECONDS - started))

CKPT="$RUN_DIR/checkpoints/best.pt"
step "tfx evaluate $CKPT --split test"
"$TFX" evaluate "$CKPT" --split test --output-dir "$RUN_DIR/eval"
test_bleu=$("$BIN/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["results"][0]["bleu"])' \
  "$RUN_DIR/eval/report.test.json")

step "tfx translate $CKPT (sentences from the test split's grammar)"
"$TFX" translate "$CKPT" \
  "The old man sees the small dog." \
  "Today the women read a book because the child sleeps."

"$TFX" plot "$RUN_DIR" --output "$RUN_DIR/curves.png"
"$TFX" translate "$CKPT" "The old man sees the small dog." \
  --plot-attention "$RUN_DIR/attention.png" >/dev/null
step "plots"
printf '  %s\n' "$RUN_DIR/curves.png" "$RUN_DIR/attention.png"

step "done"
printf '  tfx train: %d s (wall clock, start-up and validations included)\n' "$train_seconds"
printf '  test BLEU of %s: %s (greedy)\n' "$CKPT" "$test_bleu"
