"""One linear layer's product x @ W^T, with W stored (out, in) as trained or (in, out).

What `runtime.decoding_layout` rests on: for each layer shape of the small model (d_model
256, d_ff 1024, vocab 8000) and a few row counts (1 = one sentence decoded greedily, 5 =
one sentence with beam 5, 64 = a full batch), the median time of `F.linear` with the
weight in each memory order, in fp32 and in bf16. The bf16 weight is the fp32 one cast
once, keeping its memory order, as autocast's weight cache holds it while decoding; the
rows and bias are bf16 too. Before every timed call a 32 MB buffer is written, so the
weight comes from memory as it does mid-step, not from a cache that held it a moment ago.
The two orders alternate call by call.

    .venv/bin/python bench/linear_layout.py [--threads 2] [--reps 60]

Writes bench/out/linear_layout.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

OUT = Path(__file__).parent / "out" / "linear_layout.json"
# (in, out, bias): Q/K/V in_proj, cross-attention kv_proj, first and second feed-forward
# layers, the attention output projection, the output projection (tied: no bias)
SHAPES = [(256, 768, True), (256, 512, True), (256, 1024, True), (1024, 256, True),
          (256, 256, True), (256, 8000, False)]  # fmt: skip
ROWS = [1, 2, 5, 8, 64]
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=60, help="timed calls per variant")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    flush = torch.zeros(8 * 2**20)  # 32 MB, more than this machine's last-level cache

    results = []
    with torch.no_grad():
        for precision, dtype in PRECISIONS.items():
            for d_in, d_out, bias in SHAPES:
                trained = torch.randn(d_out, d_in)
                input_major = trained.t().contiguous().t()  # same values, (in, out) in memory
                # .to() keeps each one's memory order, as autocast's cast does
                trained, input_major = trained.to(dtype), input_major.to(dtype)
                assert input_major.t().is_contiguous() and trained.is_contiguous()
                b = torch.randn(d_out, dtype=dtype) if bias else None
                for rows in ROWS:
                    x = torch.randn(rows, d_in, dtype=dtype)
                    times: dict[str, list[float]] = {"trained": [], "input_major": []}
                    for rep in range(args.reps + 5):
                        for name, w in (("trained", trained), ("input_major", input_major)):
                            flush.add_(1.0)
                            start = time.perf_counter()
                            F.linear(x, w, b)
                            elapsed = time.perf_counter() - start
                            if rep >= 5:  # the first calls warm up kernels and caches
                                times[name].append(elapsed)
                    t, i = (statistics.median(times[k]) * 1e6 for k in ("trained", "input_major"))
                    results.append({"precision": precision, "in": d_in, "out": d_out,
                                    "rows": rows, "trained_us": round(t, 1),
                                    "input_major_us": round(i, 1),
                                    "speedup": round(t / i, 2)})  # fmt: skip
                    print(
                        f"{precision} {d_in:>5} -> {d_out:<5} rows {rows:>3}: as trained "
                        f"{t:8.1f} us, input-major {i:8.1f} us, {t / i:5.2f}x",
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


if __name__ == "__main__":
    main()
