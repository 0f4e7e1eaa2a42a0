"""Decoding speed and BLEU: tfx fp32 against its CTranslate2 exports (float32, int8).

    .venv/bin/python bench/export_speed.py --checkpoint runs/multi30k_de_en/checkpoints/best.pt \
        --split test --rounds 2

The sources and references are a prepared split of the checkpoint's run dir. Each
system decodes them greedy and with beam 5, in batches of 64 sentences and one by one
(the one-by-one runs take the first `--single` sentences only: they are slow); the
systems alternate within each round, because this kind of machine drifts by up to 10%
between identical runs. Reported: sentences/s (median over rounds), sacreBLEU, and the
share of lines equal to tfx's own output. Writes bench/out/export_speed.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from ddp_scaling import machine  # noqa: E402


def main() -> None:
    import torch

    from transformer_cli.core.metrics import score_texts
    from transformer_cli.data import store
    from transformer_cli.decoding import ct2_backend as ct2
    from transformer_cli.decoding.loading import load_model, ready_to_decode
    from transformer_cli.decoding.runner import decode_all
    from transformer_cli.export.ctranslate2 import export

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--single", type=int, default=200, help="sentences for batch 1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "out" / "export_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer, cfg = load_model(args.checkpoint, torch.device("cpu"))
    ready_to_decode(model, torch.device("cpu"), "fp32")
    sources = tokenizer.encode_src(store.load_text(cfg.run_dir, args.split, "src"))
    refs = store.load_text(cfg.run_dir, args.split, "tgt")
    base = HERE / "out" / "export_speed"
    systems = {"tfx fp32": None}
    for q in ("float32", "int8"):
        path = export(args.checkpoint, base / q, quantization=q)
        systems[f"ct2 {q}"] = ct2.load_export(path, "cpu", threads=args.threads)

    def decode(system, srcs, decode_cfg):
        if system is None:
            return decode_all(model, srcs, decode_cfg, "cpu")
        return ct2.decode_exported(system, srcs, decode_cfg)

    for system in systems.values():  # warm up: packing, first-call allocations
        decode(system, sources[:16], cfg.decode)
    rows: dict[tuple, dict] = {}
    for _ in range(args.rounds):
        for beam in (1, 5):
            for batch in (64, 1):
                n = len(sources) if batch > 1 else min(args.single, len(sources))
                decode_cfg = dataclasses.replace(cfg.decode, beam=beam, batch_sentences=batch)
                for name, system in systems.items():
                    started = time.perf_counter()
                    hyps = decode(system, sources[:n], decode_cfg)
                    seconds = time.perf_counter() - started
                    row = rows.setdefault((name, beam, batch), {"speeds": [], "hyps": hyps, "n": n})
                    row["speeds"].append(n / seconds)
                    print(name, beam, batch, round(n / seconds, 1), flush=True)
    results = []
    for (name, beam, batch), row in rows.items():
        texts = tokenizer.decode_tgt(row["hyps"])
        ours = rows[("tfx fp32", beam, batch)]["hyps"]
        same = sum(a == b for a, b in zip(row["hyps"], ours, strict=True)) / row["n"]
        results.append({
            "system": name, "beam": beam, "batch": batch, "sentences": row["n"],
            "sentences_per_s": round(statistics.median(row["speeds"]), 1),
            "bleu": score_texts(texts, refs[: row["n"]])["bleu"],
            "same_as_tfx": round(same, 4),
        })  # fmt: skip
    report = {
        "bench": " ".join(sys.argv),
        **machine(),
        "threads": args.threads,
        "checkpoint": args.checkpoint,
        "split": f"{cfg.run_dir} ({args.split}, {len(sources)} sentences)",
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    for r in results:
        print(r)


if __name__ == "__main__":
    main()
