"""Decoding speed: sentences/s and target pieces/s of greedy and beam-5 search, at batch
sizes 64 and 1, with and without the KV cache, on a checkpoint and a prepared split.

    .venv/bin/python bench/decode_speed.py [CHECKPOINT] [--split test] [--subset 200]

CHECKPOINT defaults to runs/multi30k_de_en/checkpoints/best.pt. The sentences are the
split's source lines from the checkpoint's run dir (or --config's). Timed is `decode_all`
on sources already encoded, after one warm-up batch: model loading, SentencePiece and
detokenization are not, which is what the peers' "translation time" in
../shared/bench/peers/RESULTS.md measures too (their batch 64, 2 threads).

The headline rows (batch 64, cached) run on the whole split, in fp32 and with
`--precision bf16`, each with its sacreBLEU score against the split's references (so that
what bf16 costs in quality is on the same line as what it gains in speed), and so does
uncached greedy search. Every fp32 configuration also runs on the first `--subset`
sentences, so that the slow ones (batch 1, no cache) finish and all are compared on the
same sentences. The check that matters: on the whole split, cached greedy search (as
`tfx translate` runs it) must be at least 3x as fast as re-decoding the whole prefix at
every step, and give the same output (exit status 1 if it is not as fast). Speed-ups are
medians of round-by-round ratios (see `paired`); the tables show each config's fastest run.

`--searches greedy,greedy_bf16` times only those searches, with the cache, at each of
`--batches`, on the whole set, and skips the comparisons and checks above: the quick
measurement for a GPU (`--device cuda`), where decoding batch 1 or without the cache would
take the whole time slot. `--split train --limit N` decodes the first N training pairs
of the run dir's prepared (encoded) training split, for a set larger than valid and test
(their BLEU is then against references the model trained on: a check that decoding
works, not a score).

Writes bench/out/decode_speed.json (or --out).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import sacrebleu
import torch

from transformer_cli.core.config import DecodeOverrides
from transformer_cli.core.config_file import load_config
from transformer_cli.core.config_rules import apply_decode_overrides
from transformer_cli.core.runtime import matmul_dtype
from transformer_cli.data import store
from transformer_cli.decoding.loading import load_model
from transformer_cli.decoding.runner import Greedy, Plan, choose, run
from transformer_cli.evaluation.evaluate import EvalData, split_data
from transformer_cli.fast.packing import PackedLinear, pack_linears

DEFAULT_CKPT = Path("runs/multi30k_de_en/checkpoints/best.pt")
OUT = Path(__file__).parent / "out" / "decode_speed.json"
# name: (beam, early_stop, precision, refill, packing). beam5_early is OpenNMT-py's stopping
# rule, for a like-for-like speed comparison with its figures; the bf16 rows are
# `--precision bf16`; the _batchwise rows decode each batch of 64 to its end, without
# handing finished sentences' slots to the next batch (`runner.Greedy(refill=False)`), to show
# what that gains. `packing` "all": every linear layer is packed in the row's precision, as
# `tfx translate` and `tfx evaluate` pack them (`packing.pack_linears`); greedy_unpacked
# (and greedy_unpacked_bf16, under autocast) multiplies with `F.linear` on the weights as
# trained, and greedy_packed_output packs the output projection only (the layer that gains
# most on its own, `bench/linear_packing.py`), to show what packing, and packing every
# layer, gains. greedy and beam5 run on the whole split and on the subset, greedy_bf16 too,
# the comparison rows on the subset only, the others on the whole split only.
SEARCHES = {
    "greedy": (1, False, "fp32", True, "all"),
    "greedy_batchwise": (1, False, "fp32", False, "all"),
    "beam5": (5, False, "fp32", True, "all"),
    "beam5_early": (5, True, "fp32", True, "all"),
    "greedy_bf16": (1, False, "bf16", True, "all"),
    "greedy_batchwise_bf16": (1, False, "bf16", False, "all"),
    "beam5_bf16": (5, False, "bf16", True, "all"),
    "greedy_unpacked": (1, False, "fp32", True, None),
    "greedy_packed_output": (1, False, "fp32", True, "output"),
    "greedy_unpacked_bf16": (1, False, "bf16", True, None),
}
SUBSET_ONLY = ["greedy_unpacked", "greedy_packed_output", "greedy_unpacked_bf16"]
FULL_ONLY = [s for s in SEARCHES if s not in SUBSET_ONLY]


DEVICE = torch.device("cpu")  # --device


def timed(models, sources, decode, search: str, batch: int, use_cache: bool) -> dict:
    """Decode `sources` once and measure it; `models[(precision, packing)]` is the model.

    The outputs come back to the host as lists, so on CUDA the time includes the last step.
    """
    beam, early_stop, precision, refill, packing = SEARCHES[search]
    model = models[(precision, packing)]
    cfg = dataclasses.replace(decode, beam=beam, batch_sentences=batch, early_stop=early_stop)
    plan = Plan.of(sources, cfg, model.cfg.max_positions, DEVICE)
    strategy = dataclasses.replace(choose(cfg, 1, DEVICE), use_cache=use_cache)
    if isinstance(strategy, Greedy):
        strategy = dataclasses.replace(strategy, refill=refill)
    started = time.perf_counter()
    outputs = run(model, plan, strategy, precision)
    seconds = time.perf_counter() - started
    pieces = sum(len(o) for o in outputs)
    return {"seconds": seconds, "pieces": pieces, "outputs": outputs}


def fastest(models, sources, decode, configs: list[tuple], reps: int) -> list[dict]:
    """Each (search, batch, cache) config `reps` times, alternating; the fastest run of each.

    Alternating spreads whatever else the machine does over all configs alike, and the
    fastest run is the one least disturbed by it. Every run's time is kept too
    (`all_seconds`, in round order), for ratios taken round by round (`paired`).
    """
    for search, batch, use_cache in configs:  # warm-up: first-call allocations, lazy init
        timed(models, sources[:batch], decode, search, batch, use_cache)
    best: dict[tuple, dict] = {}
    every: dict[tuple, list[float]] = {config: [] for config in configs}
    for _ in range(reps):
        for config in configs:
            search, batch, use_cache = config
            run = timed(models, sources, decode, search, batch, use_cache)
            every[config].append(run["seconds"])
            if config not in best or run["seconds"] < best[config]["seconds"]:
                best[config] = run
    rows = []
    for (search, batch, use_cache), run in best.items():
        seconds = run["seconds"]
        rows.append(
            {
                "search": search,
                "batch": batch,
                "kv_cache": use_cache,
                "sentences": len(sources),
                "seconds": round(seconds, 3),
                "all_seconds": [round(t, 3) for t in every[(search, batch, use_cache)]],
                "sentences_per_s": round(len(sources) / seconds, 1),
                "pieces_per_s": round(run["pieces"] / seconds, 1),
                "mean_output_pieces": round(run["pieces"] / max(len(sources), 1), 2),
                "outputs": run["outputs"],
            }
        )
    return rows


def paired(slow: dict, fast: dict) -> float:
    """How many times faster `fast` ran than `slow`: the median of the rounds' ratios.

    The two ran in the same rounds, one right after the other, so each round's ratio
    shares that moment's load; a ratio of the fastest runs could pair a lucky run of one
    with an unlucky run of the other (on this machine, runs of one config differ by 10%).
    """
    return round(
        statistics.median(
            s / f for s, f in zip(slow["all_seconds"], fast["all_seconds"], strict=True)
        ),
        2,
    )


def packed_models(model, wanted: set[tuple]) -> dict[tuple, torch.nn.Module]:
    """`model` as trained (for either precision), and packed as translate and evaluate pack
    it, for each (precision, packing) in `wanted`; packing does nothing off the CPU."""
    models = {("fp32", None): model, ("bf16", None): model}
    for precision, packing in wanted - set(models):
        models[(precision, packing)] = copy.deepcopy(model)  # without reading the file again
        if packing == "all":
            pack_linears(models[(precision, packing)], DEVICE, precision)
        else:
            packed = models[(precision, packing)]
            packed.out_proj = PackedLinear(packed.out_proj, matmul_dtype(precision))
    return models


def sentences(cfg, args, tokenizer) -> tuple[EvalData, list[list[int]]]:
    """The set to decode, and its sources' piece ids: a text split (valid, test) or the
    encoded training split, cut to the first --limit sentences."""
    n = args.limit or None
    if args.split != "train":
        data = split_data(cfg, args.split)
        data = dataclasses.replace(data, sources=data.sources[:n], references=data.references[:n])
        return data, tokenizer.encode_src(data.sources)
    split = store.load_split(cfg.run_dir, "train")
    count = min(n or len(split), len(split))
    sources = [split.src_ids(i).tolist() for i in range(count)]
    references = tokenizer.decode_tgt(split.tgt_ids(i).tolist() for i in range(count))
    origin = f"{store.cache_dir(cfg.run_dir)} (train, first {count}; seen in training)"
    return EvalData("train", [], references, origin), sources


def scored(rows: list[dict], tokenizer, data: EvalData) -> list[dict]:
    """Rows of the whole set, each with its sacreBLEU against the set's references."""
    scored_rows = []
    for row in rows:
        hypotheses = tokenizer.decode_tgt(row["outputs"])
        bleu = sacrebleu.corpus_bleu(hypotheses, [data.references]).score
        scored_rows.append(
            {
                "set": "full",
                **row,
                "precision": SEARCHES[row["search"]][2],
                "refill": SEARCHES[row["search"]][3],
                "bleu": round(bleu, 2),
            }
        )
    return scored_rows


def show(rows: list[dict]) -> None:
    for row in rows:
        print(
            f"{row['set']:<7} {row['search']:<21} batch {row['batch']:>3}  "
            f"cache {'yes' if row['kv_cache'] else 'no ':<3}  {row['sentences']:>5} sents  "
            f"{row['seconds']:>8.2f} s  {row['sentences_per_s']:>8.1f} sent/s  "
            f"{row['pieces_per_s']:>9.1f} pieces/s  (mean {row['mean_output_pieces']} pieces)"
            + (f"  BLEU {row['bleu']}" if "bleu" in row else "")
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", default=str(DEFAULT_CKPT))
    parser.add_argument("--config", help="use this config's run dir for the split")
    parser.add_argument("--split", default="test")
    parser.add_argument("--subset", type=int, default=200, help="sentences for every config")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3, help="runs per config; the fastest counts")
    parser.add_argument("--alpha", type=float, help="beam length penalty (default: the config's)")
    parser.add_argument("--max-len-a", type=float)
    parser.add_argument("--max-len-b", type=int)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--searches", help="only these SEARCHES, cached, on the whole set")
    parser.add_argument("--batches", default="64", help="with --searches: batch sizes")
    parser.add_argument("--limit", type=int, default=0, help="the first N sentences (0 = all)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    searches = args.searches.split(",") if args.searches else list(SEARCHES)
    if unknown := [name for name in searches if name not in SEARCHES]:
        parser.error(f"--searches: unknown {unknown}; known: {', '.join(SEARCHES)}")

    if not Path(args.checkpoint).is_file():
        print(f"no checkpoint at {args.checkpoint}: train one, or name one", file=sys.stderr)
        return 2
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    model, tokenizer, cfg = load_model(args.checkpoint, DEVICE)
    models = packed_models(model, {(SEARCHES[name][2], SEARCHES[name][4]) for name in searches})
    data, sources = sentences(load_config(args.config) if args.config else cfg, args, tokenizer)
    lengths = {"max_len_a": args.max_len_a, "max_len_b": args.max_len_b}
    overrides = DecodeOverrides(alpha=args.alpha, **lengths)
    decode = apply_decode_overrides(cfg.decode, overrides)
    subset = sources[: args.subset]

    print(
        f"{args.checkpoint}: {sum(p.numel() for p in model.parameters()):,} parameters; "
        f"{data.origin}, {len(sources)} sentences; "
        + (
            torch.cuda.get_device_name(DEVICE)
            if DEVICE.type == "cuda"
            else f"{args.threads} threads"
        )
        + f"; fastest of {args.reps}",
        flush=True,
    )
    if args.searches:
        batches = [int(b) for b in args.batches.split(",")]
        configs = [(name, batch, True) for name in searches for batch in batches]
        rows = scored(fastest(models, sources, decode, configs, args.reps), tokenizer, data)
        subset = []
        show(rows)
        return write_report(args, data, sources, subset, decode, model, rows, {}, ok=True)
    rows = []
    full = [(search, 64, True) for search in FULL_ONLY] + [("greedy", 64, False)]
    rows += scored(fastest(models, sources, decode, full, args.reps), tokenizer, data)
    every = [(s, b, c) for s in ("greedy", "beam5") for b in (64, 1) for c in (True, False)]
    every += [(search, b, True) for search in ["greedy_bf16", *SUBSET_ONLY] for b in (64, 1)]
    for row in fastest(models, subset, decode, every, args.reps):
        rows.append({"set": "subset", **row})
    show(rows)

    def find(search, batch, use_cache) -> dict:
        return next(
            r
            for r in rows
            if r["set"] == "subset"
            and r["search"] == search
            and r["batch"] == batch
            and r["kv_cache"] == use_cache
        )

    full_greedy = {r["kv_cache"]: r for r in rows if r["set"] == "full" and r["search"] == "greedy"}
    checks = {
        "greedy_full_b64_cache_speedup": paired(full_greedy[False], full_greedy[True]),
        "greedy_full_b64_cached_equals_uncached": (
            full_greedy[True]["outputs"] == full_greedy[False]["outputs"]
        ),
    }
    batchwise = next(r for r in rows if r["set"] == "full" and r["search"] == "greedy_batchwise")
    checks["greedy_batchwise_full_b64_cache_speedup"] = paired(full_greedy[False], batchwise)
    checks["greedy_batchwise_equals_refilled"] = (
        batchwise["outputs"] == full_greedy[True]["outputs"]
    )
    for batch in (64, 1):
        unpacked = find("greedy_unpacked", batch, True)
        checks[f"greedy_b{batch}_packing_speedup"] = paired(unpacked, find("greedy", batch, True))
        checks[f"greedy_b{batch}_packing_same_output"] = (
            unpacked["outputs"] == find("greedy", batch, True)["outputs"]
        )
        output_only = find("greedy_packed_output", batch, True)
        checks[f"greedy_b{batch}_packing_all_vs_output_only"] = paired(
            output_only, find("greedy", batch, True)
        )
        checks[f"greedy_b{batch}_packing_output_only_same_output"] = (
            output_only["outputs"] == find("greedy", batch, True)["outputs"]
        )
        unpacked = find("greedy_unpacked_bf16", batch, True)
        packed = find("greedy_bf16", batch, True)
        checks[f"greedy_bf16_b{batch}_packing_speedup"] = paired(unpacked, packed)
        checks[f"greedy_bf16_b{batch}_packing_same_output"] = (
            unpacked["outputs"] == packed["outputs"]
        )
    for search in ("greedy", "beam5"):
        for batch in (64, 1):
            cached, uncached = find(search, batch, True), find(search, batch, False)
            checks[f"{search}_b{batch}_cache_speedup"] = paired(uncached, cached)
            checks[f"{search}_b{batch}_cached_equals_uncached"] = (
                cached["outputs"] == uncached["outputs"]
            )
        checks[f"{search}_batched_equals_batch_1"] = (
            find(search, 64, True)["outputs"] == find(search, 1, True)["outputs"]
        )
    ok = checks["greedy_full_b64_cache_speedup"] >= 3.0
    for name, value in checks.items():
        print(f"{name}: {value}")
    print(f"cached greedy (batch 64) >= 3x uncached: {'yes' if ok else 'NO'}")

    return write_report(args, data, sources, subset, decode, model, rows, checks, ok)


def write_report(args, data, sources, subset, decode, model, rows, checks, ok: bool) -> int:
    """Write the JSON report to --out; the exit status: 0, or 1 if the speed check failed."""
    report = {
        "checkpoint": str(args.checkpoint),
        "data": data.origin,
        "sentences": len(sources),
        "subset": len(subset),
        "decode": dataclasses.asdict(decode),
        "threads": args.threads,
        "reps": args.reps,
        "load_average": os.getloadavg(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "model": dataclasses.asdict(model.cfg),
        "machine": {
            "device": args.device,
            "gpu": torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else None,
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "results": [{k: v for k, v in r.items() if k != "outputs"} for r in rows],
        "checks": checks,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", "utf-8")
    print(f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
