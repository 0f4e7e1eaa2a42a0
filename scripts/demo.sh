#!/usr/bin/env bash
# `make demo`: the main job end to end on the embedded toy corpus.
# prepare -> train -> evaluate -> translate, then the training-curve and attention plots.
set -euo pipefail
cd "$(dirname "$0")/.."
TFX=.venv/bin/tfx
CONFIG=configs/toy.yaml
RUN_DIR=${1:-runs/toy}
set_run=(--set "run_dir=$RUN_DIR")

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "tfx prepare --config $CONFIG"
"$TFX" prepare --config "$CONFIG" "${set_run[@]}"

step "tfx train --config $CONFIG"
rm -rf "$RUN_DIR/checkpoints" "$RUN_DIR/metrics.jsonl" "$RUN_DIR/eval"  # the demo starts afresh
"$TFX" train --config "$CONFIG" "${set_run[@]}"

CKPT="$RUN_DIR/checkpoints/best.pt"
step "tfx evaluate $CKPT --split test"
"$TFX" evaluate "$CKPT" --split test

step "tfx translate $CKPT (sentences from the test split's grammar)"
"$TFX" translate "$CKPT" \
  "The old man sees the small dog." \
  "Today the women read a book because the child sleeps."

"$TFX" plot "$RUN_DIR" --output "$RUN_DIR/curves.png"
"$TFX" translate "$CKPT" "The old man sees the small dog." \
  --plot-attention "$RUN_DIR/attention.png" >/dev/null
step "plots"
printf '  %s\n' "$RUN_DIR/curves.png" "$RUN_DIR/attention.png"
