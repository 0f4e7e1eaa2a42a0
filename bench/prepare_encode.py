"""Where prepare's encoding time goes: its stage beside SentencePiece alone, paired, in one
process, with and without what `stream._streaming` sets (cycle collector off, torch on one
thread).

    python bench/prepare_encode.py --data DIR --pairs N [--rounds 2] [--out bench/out/x.json]

DIR holds train.de / train.en (`bench/corpus_scale.py --keep` writes such a corpus) and a
prepared run's SentencePiece model under DIR/run/cache (run `tfx prepare` on it first).
Each round runs, in turn: SentencePiece alone over the same lines (chunks of 20,000, the
same threads), `stream.encode_corpus` as shipped, and the same with the collector left on
and torch's threads left as they are. Writes the rounds and the machine to JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
from machine import cpu_record  # noqa: E402

from transformer_cli.core.config_file import load_config  # noqa: E402
from transformer_cli.data import corpus, store, stream  # noqa: E402
from transformer_cli.data.tokenizer import Tokenizer  # noqa: E402


def alone(model: Path, paths: list[Path]) -> None:
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(model))
    for path in paths:
        with open(path, encoding="utf-8") as f:
            while chunk := f.readlines(1 << 22):
                for start in range(0, len(chunk), stream.CHUNK):
                    sp.encode(chunk[start : start + stream.CHUNK], num_threads=os.cpu_count())


@contextlib.contextmanager
def as_it_was() -> Iterator[None]:
    """`stream._streaming` made a no-op: the collector on, torch's threads untouched."""
    real = stream._streaming
    stream._streaming = contextlib.nullcontext
    try:
        yield
    finally:
        stream._streaming = real


def shipped(data: Path, run: Path) -> None:
    cfg = load_config(
        REPO / "configs/multi30k_de_en.yaml",
        [f"data.dir={data}", f"run_dir={run}", "data.valid=val", "data.test=test_2016_flickr"],
    )
    (source,) = corpus.corpora(cfg.data, "train")
    tokenizer = Tokenizer.load(run)
    rules = stream.Rules.for_role(cfg.data, "train")
    with (
        tempfile.TemporaryDirectory() as out,
        store.SplitWriter(Path(out), "train", "uint16", "uint16") as arrays,
    ):
        stream.encode_corpus(source, tokenizer, rules, stream.Sinks(arrays))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument(
        "--pairs", type=int, required=True, help="lines in train.de, for the record"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "out" / "prepare_encode.json")
    args = parser.parse_args()
    run = args.data / "run"
    model = run / "cache" / "spm.model"
    paths = [args.data / "train.de", args.data / "train.en"]
    routes = {
        "SentencePiece alone": lambda: alone(model, paths),
        "encode_corpus": lambda: shipped(args.data, run),
        "encode_corpus, collector on, torch threads as set": lambda: as_it_was_run(args.data, run),
    }
    rounds = []
    for _ in range(args.rounds):
        row = {}
        for name, fn in routes.items():
            started = time.perf_counter()
            fn()
            row[name] = round(time.perf_counter() - started, 2)
            print(f"{name}: {row[name]} s", file=sys.stderr, flush=True)
        rounds.append(row)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        **cpu_record(),
        "pairs": args.pairs,
        "threads": os.cpu_count(),
        "rounds": rounds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(rounds))


def as_it_was_run(data: Path, run: Path) -> None:
    with as_it_was():
        shipped(data, run)


if __name__ == "__main__":
    main()
