#!/usr/bin/env bash
# Back-translation on Multi30k de -> en, with tfx commands alone (docs/backtranslation.md):
#
#   1. split the 29,000 training pairs: the first 14,500 stay parallel; of the other
#      14,500 only the English side is kept, as "monolingual" text (their German is never
#      read);
#   2. train a reverse model, en -> de, on the parallel half;
#   3. back-translate the monolingual English three ways (beam 5; sampling from the full
#      distribution; sampling from the top 10) and score each synthetic set with the
#      reverse model (tfx score);
#   4. train de -> en on: the parallel half alone; + beam BT; + sampled BT, tagged <bt>;
#      + sampled BT, untagged; and, the upper bound, all 29,000 real pairs;
#   5. evaluate each on test_2016_flickr, greedy and beam 5 (BLEU, chrF).
#
# Every training run has the same budget in updates (UPDATES, default 1000), not minutes,
# so the table does not depend on the machine's speed or load. The model is the 12-minute
# CPU recipe's (configs/multi30k_de_en_cpu12.yaml) with dropout 0.1: the parallel half is
# seen ~9 times in 1000 updates, where that recipe sees its data 4 times without dropout.
#
#   make backtranslation DATA=path/to/multi30k     (or: DATA=... bash bench/backtranslation.sh)
#
# DATA holds Multi30k's train, val and test_2016_flickr files as {split}.{de,en}[.gz].
# Everything is written under WORK (default runs/backtranslation); the table goes to
# bench/results/backtranslation.json (bench/backtranslation_summary.py).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:?DATA=path/to/multi30k: the directory of Multi30k's task-1 files}
WORK=${WORK:-runs/backtranslation}
UPDATES=${UPDATES:-1000}
HALF=${HALF:-14500}  # pairs per half (smaller, with a smaller VOCAB, for a quick try)
VOCAB=${VOCAB:-8000}
TFX=${TFX:-.venv/bin/tfx}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
DATA=$(cd "$DATA" && pwd)
mkdir -p "$WORK/data" "$WORK/log"
WORK=$(cd "$WORK" && pwd)
D=$WORK/data

read_side() {  # read_side SPLIT LANG: the text of DATA's file, gzipped or not
  if [[ -f "$DATA/$1.$2.gz" ]]; then gzip -dc "$DATA/$1.$2.gz"; else cat "$DATA/$1.$2"; fi
}

echo "== 1. split the training pairs" >&2
for lang in de en; do
  # sed reads to the end (head would close the pipe early, a failure under pipefail)
  read_side train "$lang" | sed -n "1,${HALF}p" > "$D/para.$lang"
  read_side train "$lang" | sed -n "1,$((2 * HALF))p" > "$D/real.$lang"
done
read_side train en | sed -n "$((HALF + 1)),$((2 * HALF))p" > "$D/mono.en"
wc -l "$D/para.de" "$D/mono.en" >&2

config() {  # config NAME SRC TGT CORPUS...: the recipe's config, data.train = the corpora
  local name=$1 src=$2 tgt=$3
  shift 3
  {
    cat <<YAML
run_dir: $WORK/$name
data:
  source: files
  dir: $DATA
  format: text
  src_lang: $src
  tgt_lang: $tgt
  train:
YAML
    printf '    - %s\n' "$@"
    cat <<YAML
  valid: val
  test: test_2016_flickr
  max_len: 100
  max_ratio: 3.0
tokenizer: {joint: true, vocab_size: $VOCAB, model_type: unigram, character_coverage: 1.0}
model:
  d_model: 256
  heads: 4
  enc_layers: 3
  dec_layers: 3
  d_ff: 1024
  dropout: 0.1
  norm: pre
  share_embeddings: true
  tie_output: true
train:
  seed: 1234
  batch_tokens: 2048
  max_steps: $UPDATES
  warmup: 400
  noam_factor: 0.632
  label_smoothing: 0.1
  log_every: 50
  eval_every: 200
decode: {beam: 1, alpha: 1.0}
YAML
  } > "$WORK/$name.yaml"
}

train() {  # train NAME: prepare and train a config written by `config`
  local name=$1
  if [[ -f "$WORK/$name/checkpoints/last.pt" ]]; then
    echo "== $name: trained already" >&2
    return
  fi
  "$TFX" prepare --config "$WORK/$name.yaml" > "$WORK/log/$name.prepare.log"
  "$TFX" train --config "$WORK/$name.yaml" > "$WORK/log/$name.train.log" \
    2> "$WORK/log/$name.train.err"
  head -n 1 "$WORK/log/$name.train.err" >&2
}

para="{name: para, dir: $D}"
echo "== 2. the reverse model, en -> de, on the parallel half" >&2
config reverse en de "$para"
train reverse
REVERSE=$WORK/reverse/checkpoints/best.pt

echo "== 3. back-translate the monolingual English, and score it" >&2
backtranslate() {  # backtranslate NAME FLAGS...: synthetic German for mono.en
  local name=$1
  shift
  if [[ ! -f "$D/$name.de" ]]; then
    local started=$SECONDS
    "$TFX" translate "$REVERSE" --input "$D/mono.en" --output "$D/$name.de.tmp" "$@"
    echo "$((SECONDS - started))" > "$WORK/log/$name.seconds"
    mv "$D/$name.de.tmp" "$D/$name.de"
  fi
  cp "$D/mono.en" "$D/$name.en"
  "$TFX" score "$REVERSE" --src "$D/mono.en" --tgt "$D/$name.de" --json \
    > "$WORK/log/$name.scores.jsonl"
}
backtranslate bt_beam --beam 5
backtranslate bt_sample --sample --seed 1
backtranslate bt_topk10 --sample --topk 10 --seed 1

echo "== 4. de -> en on five data sets, $UPDATES updates each" >&2
config parallel de en "$para"
config bt_beam de en "$para" "{name: bt_beam, dir: $D}"
config bt_sample_tagged de en "$para" "{name: bt_sample, dir: $D, tag: <bt>}"
config bt_sample de en "$para" "{name: bt_sample, dir: $D}"
config all_real de en "{name: real, dir: $D}"
for name in parallel bt_beam bt_sample_tagged bt_sample all_real; do
  train "$name"
done

echo "== 5. test_2016_flickr, greedy and beam 5" >&2
for name in parallel bt_beam bt_sample_tagged bt_sample all_real; do
  for beam in 1 5; do
    "$TFX" evaluate "$WORK/$name/checkpoints/best.pt" --split test --beam "$beam" --json \
      --output-dir "$WORK/$name/eval_beam$beam" > "$WORK/log/$name.beam$beam.json"
  done
done
COMMIT=$(git rev-parse --short HEAD) .venv/bin/python bench/backtranslation_summary.py \
  "$WORK" "$UPDATES"
