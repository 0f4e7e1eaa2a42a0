#!/usr/bin/env bash
# OpenNMT-py 3.5.1 on this machine, for the side-by-side table in the README: the peers'
# own harness (../shared/bench/peers/run.sh) with its warmup-400 config, the same
# protocol as `bench/multi30k.sh de_en 12`: 12 minutes of training, then greedy and beam-5
# decoding of test_2016 at batch 64. Writes bench/out/peer_onmt.json.
#
#   bash bench/peer_onmt.sh          # setup (once, into /tmp venvs), prep, train, decode
#   STAGES="decode-onmt-1" bash bench/peer_onmt.sh   # any subset of the harness's stages
#   OUT=bench/out/peer_onmt_avx2.json bash bench/peer_onmt.sh   # write the JSON elsewhere
#
# Run it next to a tfx run (one job at a time, machine otherwise idle): this kind of
# machine drifts by up to 10% between identical runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS=${PEERS:-../shared/bench/peers}
RUNS=/tmp/peerruns-w400  # fixed: onmt_w400.yaml writes its model there
SCORE_PY=${SCORE_PY:-/tmp/peer-score/bin/python}
STAGES=${STAGES:-setup prep train-onmt decode-onmt-1 decode-onmt-5}
OUT=${OUT:-bench/out/peer_onmt.json}
mkdir -p bench/out
# shellcheck disable=SC2086  # STAGES is a list
RUNS=$RUNS ONMT_CFG="$PEERS/onmt_w400.yaml" RESULTS_OUT=/dev/null bash "$PEERS/run.sh" $STAGES
"$SCORE_PY" - "$PEERS" "$RUNS" "$OUT" <<'PY'
import contextlib, datetime, io, json, platform, runpy, subprocess, sys
peers, runs, out = sys.argv[1:4]
sys.path.insert(0, "bench")
from machine import cpu_record
sys.argv = ["collect.py", runs]  # the harness's own log parser, without its printed table
with contextlib.redirect_stdout(io.StringIO()):
    onmt = runpy.run_path(f"{peers}/collect.py")["onmt"]()
onmt.update(
    date=datetime.date.today().isoformat(),
    machine=f"{platform.machine()}, {subprocess.getoutput('nproc')} cores",
    **cpu_record(),
    config="onmt_w400.yaml (warmup 400, peak lr 1.98e-3, ~4096 target tokens per batch)",
)
json.dump(onmt, open(out, "w"), indent=2, default=str)
t = onmt.get("time", {})
print(f"OpenNMT-py: {onmt.get('steps')} steps, {onmt.get('tok_s', 0):.0f} target tok/s, "
      f"peak RSS {t.get('rss_gib', 0):.2f} GiB, greedy BLEU {onmt['beam1'].get('bleu')}, "
      f"beam-5 BLEU {onmt['beam5'].get('bleu')}")
PY
