"""Training throughput: real (non-pad) target tokens/s, step time, peak memory, MFU.

    .venv/bin/python bench/train_speed.py --config configs/multi30k_de_en.yaml \
        --set run_dir=runs/multi30k_de_en --variants fp32,bf16 --steps 20 --rounds 2

The run dir must be prepared (`tfx prepare`). Each variant
(precision[+compile][+math|+sdpa][+unfused][+cudnn][+glibc]) runs the real training step
(`training/step.py: train_step`) on the run's own batches in a fresh subprocess, so that peak memory
is its own, under the malloc `tfx train` would use (jemalloc where installed, see
`transformer_cli/allocator.py`; +glibc keeps the system's); variants alternate over
`--rounds`, because this kind of machine drifts by up to 10% between identical runs.
Prints a table and writes JSON to bench/out/train_speed.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def flops_per_target_token(m) -> float:
    """Training FLOPs per target token (forward 2 + backward 4 per multiply-add).

    Counts the weight matrices, with one source token per target token (Multi30k's
    ratio is close to 1); attention scores add a few percent more and are left out.
    """
    d, f = m.d_model, m.d_ff
    encoder = m.enc_layers * (4 * d * d + 2 * d * f)
    decoder = m.dec_layers * (8 * d * d + 2 * d * f)
    return 6.0 * (encoder + decoder + d * m.tgt_vocab)


def matmul_peak(dtype_name: str, threads: int, device: str = "cpu") -> float:
    """Measured GFLOP/s of a large square matmul on `device`: its practical peak."""
    import torch

    torch.set_num_threads(threads)
    dtype = getattr(torch, {"fp32": "float32", "bf16": "bfloat16"}[dtype_name])
    n = 2048 if device == "cpu" else 8192
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(5):
        sync()
        t = time.perf_counter()
        for _ in range(5):
            a @ b
        sync()
        best = max(best, 5 * 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def setup(config: str, overrides: list[str]):
    """What `tfx train` sets up before its first step, for a prepared run dir.

    Returns (cfg, device, precision, threads, split, model, optimizer).
    """
    from transformer_cli.core import runtime
    from transformer_cli.core.config_file import load_config
    from transformer_cli.data import store as cache
    from transformer_cli.data.tokenizer import Tokenizer
    from transformer_cli.fast import allocator
    from transformer_cli.training import step as train

    cfg = load_config(config, overrides)
    tok = Tokenizer.load(cfg.run_dir)
    model_cfg = dataclasses.replace(
        cfg.model, src_vocab=tok.src_vocab_size, tgt_vocab=tok.tgt_vocab_size
    )
    cfg = dataclasses.replace(cfg, model=model_cfg)
    device = runtime.pick_device(cfg.train.device)
    precision = runtime.resolve_precision(cfg.train.precision, device)
    threads = runtime.set_threads(cfg.train.threads)
    if device.type == "cpu":
        allocator.tune_cpu_memory()  # as tfx train does
    runtime.seed_everything(cfg.train.seed)
    split = cache.load_split(cfg.run_dir, "train")
    model = train.Transformer(cfg.model).to(device)
    optimizer = train.make_optimizer(model, cfg, device)
    return cfg, device, precision, threads, split, model, optimizer


def worker(args) -> dict:
    """Time `--steps` training steps of one variant; runs in its own process."""
    import torch

    from transformer_cli.data import batching
    from transformer_cli.fast import allocator
    from transformer_cli.training import step as train

    precision, *flags = args.variant.split("+")
    overrides = [*args.set, f"train.precision={precision}"]
    overrides += ["train.compile=true"] if "compile" in flags else []
    overrides += ["model.attention=math"] if "math" in flags else []
    overrides += ["model.attention=sdpa"] if "sdpa" in flags else []
    overrides += ["train.fused_loss=false"] if "unfused" in flags else []
    if "cudnn" in flags:  # SDPA may also pick cuDNN's kernel on CUDA (torch's default)
        from transformer_cli.fast import sdpa

        sdpa.CUDA_BACKENDS = None
    cfg, device, precision, threads, split, model, optimizer = setup(args.config, overrides)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    step_model = train.CompiledSteps(model) if cfg.train.compile else model
    batches = batching.epoch_batches(split, cfg.train.batch_tokens, cfg.train.seed, 0)
    per_step = cfg.train.accum_steps
    groups = [batches[i : i + per_step] for i in range(0, len(batches), per_step)]

    trainer = train.Trainer(step_model, optimizer, scaler, split, cfg, device, precision)

    def step(group) -> int:
        return train.train_step(trainer, group, 1e-4).tokens

    for group in groups[: args.warmup]:
        step(group)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    tokens, times = 0, []
    for group in groups[args.warmup : args.warmup + args.steps]:
        t = time.perf_counter()
        tokens += step(group)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "variant": args.variant,
        "device": device.type,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "malloc": allocator.active(),
        "threads": threads,
        "steps": len(times),
        "target_tokens_per_step": tokens / len(times),
        "tokens_per_s": tokens / sum(times),
        "step_ms_median": 1000 * statistics.median(times),
        "peak_rss_gib": round(rss_gib, 3),
        "peak_cuda_gib": (
            round(torch.cuda.max_memory_allocated() / 2**30, 3) if device.type == "cuda" else None
        ),
        "flops_per_token": flops_per_target_token(cfg.model),
        "params": sum(p.numel() for p in model.parameters()),
    }


def worker_env(variant: str) -> dict[str, str]:
    """The environment `tfx train` would run in: under jemalloc where installed (see
    `allocator`), unless the variant says +glibc."""
    from transformer_cli.fast import allocator

    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    if "glibc" in variant.split("+"):
        return {**base, allocator.ENV: "system"}
    return allocator.jemalloc_env(base) or base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], help="config override")
    parser.add_argument(
        "--variants",
        default="fp32,bf16",
        help="comma list of precision[+compile][+math|+sdpa][+unfused][+cudnn][+glibc], "
        "e.g. bf16,fp32",
    )
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "out" / "train_speed.json"))
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args()

    if args.variant:
        print(json.dumps(worker(args)))
        return

    variants = args.variants.split(",")
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants:  # alternate, so that drift hits every variant alike
            cmd = [
                sys.executable,
                __file__,
                "--config",
                args.config,
                "--variant",
                v,
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
            ]
            for s in args.set:
                cmd += ["--set", s]
            out = subprocess.run(
                cmd, check=True, capture_output=True, text=True, env=worker_env(v)
            ).stdout
            runs[v].append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {r + 1}: {v}: {runs[v][-1]['tokens_per_s']:.0f} tok/s", file=sys.stderr)

    first = runs[variants[0]][0]
    threads, device = first["threads"], first["device"]
    peaks = {p: matmul_peak(p, threads, device) for p in ("fp32", "bf16")}
    rows = []
    for v in variants:
        best = max(runs[v], key=lambda x: x["tokens_per_s"])
        precision = v.split("+")[0]
        achieved = best["tokens_per_s"] * best["flops_per_token"] / 1e9
        rows.append(
            {
                **best,
                "tokens_per_s_all_rounds": [round(x["tokens_per_s"]) for x in runs[v]],
                "gflops": round(achieved, 1),
                "mfu_vs_fp32_peak": round(achieved / peaks["fp32"], 3),
                "mfu_vs_own_peak": round(achieved / peaks.get(precision, peaks["fp32"]), 3),
            }
        )
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": first.get("gpu")
        or f"{platform.processor() or platform.machine()}, {threads} threads",
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
        ).stdout.strip(),
        "config": args.config,
        "overrides": args.set,
        "matmul_peak_gflops": {k: round(x, 1) for k, x in peaks.items()},
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"matmul peak ({device}): fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f}")
    print(
        "| variant | malloc | tgt tokens/s (best of rounds) | all rounds | step ms | "
        "tokens/step | peak RSS GiB | MFU vs fp32 peak |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['malloc']} | {r['tokens_per_s']:.0f} | "
            f"{r['tokens_per_s_all_rounds']} | "
            f"{r['step_ms_median']:.0f} | {r['target_tokens_per_step']:.0f} | "
            f"{r['peak_rss_gib']:.2f} | {100 * r['mfu_vs_fp32_peak']:.0f}% |"
        )


if __name__ == "__main__":
    main()
