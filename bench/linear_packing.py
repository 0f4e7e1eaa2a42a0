"""One linear layer's product, with `F.linear` as trained or with its weight packed.

What `packing.pack_linears` rests on: for each layer shape of the small model (d_model
256, d_ff 1024, vocab 8000) and a few row counts (1 = one sentence decoded greedily, 5 =
one sentence with beam 5, 64 and 128 = a batch), the median time of `F.linear(x, W, b)`
against oneDNN's product with W packed once (`PackedLinear`, called as a module, as the
model calls it), in fp32 and in bf16. The bf16 `F.linear` weight is the fp32 one cast
once, as autocast's weight cache holds it while decoding; the rows and bias are bf16 too.
Each is timed twice: "cold", a 32 MB buffer written before every call, so that the weight
comes from memory; and "warm", the same call repeated, the weight in the cache. A
decoding step is in between: 8 MB of output projection and ~11 MB of decoder weights per
step, read again at the next step. The two variants alternate call by call.

    .venv/bin/python bench/linear_packing.py [--threads 2] [--reps 60]

Writes bench/out/linear_packing.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from transformer_cli.fast.packing import PackedLinear, packing_available

OUT = Path(__file__).parent / "out" / "linear_packing.json"
# (in, out, bias): Q/K/V in_proj, cross-attention kv_proj, first and second feed-forward
# layers, the attention output projection, the output projection (tied: no bias)
SHAPES = [
    (256, 768, True),
    (256, 512, True),
    (256, 1024, True),
    (1024, 256, True),
    (256, 256, True),
    (256, 8000, False),
]
ROWS = [1, 5, 64, 128]
CACHE = ("cold", "warm")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=60, help="timed calls per variant")
    args = parser.parse_args()
    if not packing_available("cpu"):
        print("this torch has no oneDNN on the CPU: nothing to compare", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    flush = torch.zeros(8 * 2**20)  # 32 MB, more than this machine's last-level cache

    results = []
    with torch.no_grad():
        for precision, dtype in PRECISIONS.items():
            for d_in, d_out, bias in SHAPES:
                layer = torch.nn.Linear(d_in, d_out, bias=bias)
                packed = PackedLinear(layer, dtype)
                w = layer.weight.to(dtype)
                b = None if layer.bias is None else layer.bias.to(dtype)
                for cache, rows in ((c, n) for c in CACHE for n in ROWS):
                    x = torch.randn(rows, d_in, dtype=dtype)
                    variants = (
                        ("linear", lambda x=x, w=w, b=b: F.linear(x, w, b)),
                        ("packed", lambda x=x, p=packed: p(x)),
                    )
                    times: dict[str, list[float]] = {name: [] for name, _ in variants}
                    for rep in range(args.reps + 5):
                        for name, product in variants:
                            if cache == "cold":
                                flush.add_(1.0)
                            start = time.perf_counter()
                            product()
                            elapsed = time.perf_counter() - start
                            if rep >= 5:  # the first calls warm up kernels and caches
                                times[name].append(elapsed)
                    t, p = (statistics.median(times[k]) * 1e6 for k in ("linear", "packed"))
                    results.append(
                        {
                            "precision": precision,
                            "in": d_in,
                            "out": d_out,
                            "cache": cache,
                            "rows": rows,
                            "linear_us": round(t, 1),
                            "packed_us": round(p, 1),
                            "speedup": round(t / p, 2),
                        }
                    )
                    print(
                        f"{precision} {d_in:>5} -> {d_out:<5} {cache} rows {rows:>3}: F.linear "
                        f"{t:8.1f} us, packed {p:8.1f} us, {t / p:5.2f}x",
                        flush=True,
                    )

    report = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "reps": args.reps,
        "results": results,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
