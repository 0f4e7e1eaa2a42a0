"""Greedy decoding, tfx against OpenNMT-py, run by turns on the same machine.

Each round runs one decoding of Multi30k's test_2016 by each, batch 64, each in a fresh
process, one right after the other, so that both meet the machine in the same state;
the speed-up is the median of the rounds' ratios. Neither includes loading its model:

- OpenNMT-py 3.5.1, with the peers' harness's own command line and flags (greedy: beam 1,
  `-random_sampling_topk 1`; `-batch_size 64 -batch_type sents`), on the model that
  `bench/peer_onmt.sh` trained, reading SentencePiece pieces. Its time is its own
  `-report_time` measure, taken precisely as its output pieces over its tokens/s line
  (the seconds line is rounded to 0.1 s) and checked against that seconds line.
- tfx: `translate.Translator` on a checkpoint, as `tfx translate --beam 1 --batch-size 64`
  runs it: the raw source lines in, text out, so its time includes SentencePiece encoding
  and decoding, which OpenNMT-py's does not.

The two models differ: same sizes, but tfx's trains further in the same 12 minutes and
writes a different number of pieces per sentence, so pieces/s are reported beside
sentences/s.

    .venv/bin/python bench/peer_decode.py [CHECKPOINT] [--rounds 5]

Needs `bash bench/peer_onmt.sh` to have run (its venv, data and model in /tmp).
Writes bench/out/peer_decode.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).parent / "out" / "peer_decode.json"
DEFAULT_CKPT = "runs/multi30k_de_en/checkpoints/best.pt"
PEERS = {
    "onmt": Path("/tmp/peer-onmt/bin/onmt_translate"),
    "models": Path("/tmp/peerruns-w400/onmt"),
    "src": Path("/tmp/peerdata/test.sp.de"),
}


def onmt_once(model: Path, src: Path, batch: int) -> dict:
    """One OpenNMT-py greedy decoding in a fresh process: its own timing of it."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "hyp.sp"
        env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
        cmd = [
            str(PEERS["onmt"]), "-model", str(model), "-src", str(src), "-output", str(out),
            "-beam_size", "1", "-random_sampling_topk", "1", "-batch_size", str(batch),
            "-batch_type", "sents", "-max_length", "100", "-seed", "1234", "-gpu", "-1",
            "-report_time",
        ]  # fmt: skip
        run = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        log = run.stdout + run.stderr
        rounded = float(re.search(r"Total translation time \(s\): ([\d.]+)", log).group(1))
        tokens_per_s = float(re.search(r"Tokens per second: ([\d.]+)", log).group(1))
        lines = out.read_text(encoding="utf-8").splitlines()
    pieces = sum(len(line.split()) for line in lines)
    seconds = pieces / tokens_per_s
    if abs(seconds - rounded) > 0.051:  # the pieces are not what it counted: use its seconds
        seconds = rounded
    return {"seconds": seconds, "sentences": len(lines), "pieces": pieces}


def tfx_once(checkpoint: str, batch: int) -> dict:
    """One tfx greedy decoding in a fresh process (this script, --tfx-once)."""
    cmd = [sys.executable, __file__, checkpoint, "--tfx-once", "--batch", str(batch)]
    run = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def tfx_child(checkpoint: str, batch: int) -> None:
    """Load the checkpoint, translate the test split's sources once, print the timing."""
    import torch

    from transformer_cli.core.config import DecodeOverrides
    from transformer_cli.decoding.loading import load_model
    from transformer_cli.decoding.translate import Translator
    from transformer_cli.evaluation.evaluate import split_data

    torch.set_num_threads(2)
    sources = split_data(load_model(checkpoint, "cpu")[2], "test").sources
    decode = DecodeOverrides(beam=1, batch_sentences=batch)
    translator = Translator(checkpoint, device="cpu", decode=decode)
    started = time.perf_counter()
    hypotheses = translator.translate(sources)
    seconds = time.perf_counter() - started
    pieces = sum(len(ids) for ids in translator.tokenizer.encode_tgt(hypotheses))
    print(json.dumps({"seconds": seconds, "sentences": len(hypotheses), "pieces": pieces}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", default=DEFAULT_CKPT)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tfx-once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tfx_once:
        tfx_child(args.checkpoint, args.batch)
        return 0
    models = sorted(
        PEERS["models"].glob("model_step_*.pt"), key=lambda p: int(p.stem.split("_")[-1])
    )
    missing = [str(p) for p in (PEERS["onmt"], PEERS["src"], Path(args.checkpoint))]
    missing = [p for p in missing if not Path(p).exists()]
    if not models:
        missing.append(f"{PEERS['models']}/model_step_*.pt")
    if missing:
        print(
            f"missing {', '.join(missing)}: run bash bench/peer_onmt.sh, and train tfx "
            "(bench/multi30k.sh)",
            file=sys.stderr,
        )
        return 2
    onmt_model = models[-1]
    print(f"tfx {args.checkpoint} against OpenNMT-py {onmt_model}, batch {args.batch}")
    rounds = []
    for number in range(args.rounds):
        # alternate who goes first, so neither always meets the machine after the other
        order = ("tfx", "onmt") if number % 2 == 0 else ("onmt", "tfx")
        result = {}
        for who in order:
            if who == "tfx":
                result[who] = tfx_once(args.checkpoint, args.batch)
            else:
                result[who] = onmt_once(onmt_model, PEERS["src"], args.batch)
        rounds.append(result)
        print(
            f"round {number + 1}: tfx {result['tfx']['seconds']:.3f} s, "
            f"OpenNMT-py {result['onmt']['seconds']:.3f} s",
            flush=True,
        )

    def summary(who: str) -> dict:
        times = [r[who]["seconds"] for r in rounds]
        first = rounds[0][who]
        return {
            "seconds_all_rounds": [round(t, 3) for t in times],
            "sentences": first["sentences"],
            "pieces": first["pieces"],
            "mean_output_pieces": round(first["pieces"] / first["sentences"], 2),
            "sentences_per_s_median": round(first["sentences"] / statistics.median(times), 1),
            "pieces_per_s_median": round(first["pieces"] / statistics.median(times), 1),
        }

    report = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "checkpoint": args.checkpoint,
        "onmt_model": str(onmt_model),
        "batch": args.batch,
        "rounds": args.rounds,
        "tfx": summary("tfx"),
        "onmt": summary("onmt"),
        "speedup_sentences": round(
            statistics.median(r["onmt"]["seconds"] / r["tfx"]["seconds"] for r in rounds), 2
        ),
        "speedup_pieces": round(
            statistics.median(
                (r["tfx"]["pieces"] / r["tfx"]["seconds"])
                / (r["onmt"]["pieces"] / r["onmt"]["seconds"])
                for r in rounds
            ),
            2,
        ),
    }
    for who, name in (("tfx", "tfx"), ("onmt", "OpenNMT-py")):
        s = report[who]
        print(
            f"{name}: {s['sentences_per_s_median']} sent/s, {s['pieces_per_s_median']} "
            f"pieces/s (median round; {s['mean_output_pieces']} pieces per sentence)"
        )
    print(
        f"tfx / OpenNMT-py, median of round ratios: {report['speedup_sentences']}x sent/s, "
        f"{report['speedup_pieces']}x pieces/s"
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
