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
HELP=$("$TFX" --help)
has() { grep -q "│ $1 " <<<"$HELP"; }  # a command row of the help table

step "tfx prepare --config $CONFIG"
"$TFX" prepare --config "$CONFIG" "${set_run[@]}"

step "tfx train --config $CONFIG"
rm -rf "$RUN_DIR/checkpoints" "$RUN_DIR/metrics.jsonl" "$RUN_DIR/eval"  # the demo starts afresh
"$TFX" train --config "$CONFIG" "${set_run[@]}"

CKPT="$RUN_DIR/checkpoints/best.pt"
if has evaluate; then
  step "tfx evaluate $CKPT --split test"
  "$TFX" evaluate "$CKPT" --split test
fi

if has translate; then
  step "tfx translate $CKPT (sentences from the test split's grammar)"
  "$TFX" translate "$CKPT" \
    "The old man sees the small dog." \
    "Today the women read a book because the child sleeps."
fi

plots=()
if has plot; then
  "$TFX" plot "$RUN_DIR" --output "$RUN_DIR/curves.png" && plots+=("$RUN_DIR/curves.png")
fi
if has translate && grep -q -- --plot-attention <<<"$("$TFX" translate --help)"; then
  "$TFX" translate "$CKPT" "The old man sees the small dog." \
    --plot-attention "$RUN_DIR/attention.png" >/dev/null && plots+=("$RUN_DIR/attention.png")
fi
if ((${#plots[@]})); then
  step "plots"
  printf '  %s\n' "${plots[@]}"
fi
