"""Training throughput: real (non-pad) target tokens/s, step time, peak memory, MFU.

    .venv/bin/python bench/train_speed.py --config configs/multi30k_de_en.yaml \
        --set run_dir=runs/multi30k_de_en --variants fp32,bf16 --steps 20 --rounds 2

The run dir must be prepared (`tfx prepare`). Each variant
(precision[+compile][+math|+sdpa][+unfused][+prefetch][+cudnn][+glibc]
[+learned|+rope|+relative]: model.positional, sinusoidal without) runs the real training step
(`training/step.py: train_step`) on the run's own batches in a fresh subprocess, so that peak memory
is its own, under the malloc `tfx train` would use (jemalloc where installed, see
`transformer_cli/allocator.py`; +glibc keeps the system's); variants alternate over
`--rounds`, because this kind of machine drifts by up to 10% between identical runs.
MFU is reported twice: against the matmul peak measured here (`matmul_peak`) and, on a GPU
of `DATASHEET_TFLOPS`, against its datasheet's dense peak for the precision that ran
(bf16, fp16; fp32 with TF32 matmuls allowed: tf32; else fp32); elsewhere that is null,
"not known". Prints a table and writes JSON to bench/out/train_speed.json (or --out).
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

from machine import cpu_record

HERE = Path(__file__).resolve().parent
# Dense (no sparsity) peak TFLOP/s from NVIDIA's datasheets, keyed by
# torch.cuda.get_device_name(); the H200 has the H100 SXM's tensor cores and clocks.
_H100_SXM = {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0}
_A100 = {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}
DATASHEET_TFLOPS = {
    "NVIDIA H100 80GB HBM3": _H100_SXM,
    "NVIDIA H200": _H100_SXM,
    "NVIDIA A100-SXM4-80GB": _A100,
    "NVIDIA A100-SXM4-40GB": _A100,
    "NVIDIA A100-PCIE-40GB": _A100,
    "NVIDIA A100 80GB PCIe": _A100,
}


def flops_per_target_token(m) -> float:
    """Training FLOPs per target token (forward 2 + backward 4 per multiply-add).

    Counts the weight matrices, with one source token per target token (Multi30k's
    ratio is close to 1); attention scores add a few percent more and are left out.
    """
    d, f = m.d_model, m.d_ff
    encoder = m.enc_layers * (4 * d * d + 2 * d * f)
    decoder = m.dec_layers * (8 * d * d + 2 * d * f)
    return 6.0 * (encoder + decoder + d * m.tgt_vocab)


def matmul_peak(dtype_name: str, threads: int, device: str = "cpu", n: int = 0) -> float:
    """Measured GFLOP/s of a large (n x n, 0: 2048 on the CPU, 8192 on a GPU) square
    matmul on `device`: its practical peak."""
    import torch

    torch.set_num_threads(threads)
    dtype = getattr(torch, {"fp32": "float32", "bf16": "bfloat16"}[dtype_name])
    n = n or (2048 if device == "cpu" else 8192)
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


def peak_precision(precision: str, tf32: bool) -> str:
    """Which datasheet peak a variant's matmuls run at: fp32 ones on tensor cores are tf32."""
    return "tf32" if precision == "fp32" and tf32 else precision


def datasheet_peak(gpu: str | None, precision: str, tf32: bool) -> float | None:
    """The datasheet's dense TFLOP/s for `precision` on `gpu`; None where not known."""
    return DATASHEET_TFLOPS.get(gpu or "", {}).get(peak_precision(precision, tf32))


def setup(config: str, overrides: list[str]):
    """What `tfx train` sets up before its first step, for a prepared run dir.

    Returns (cfg, device, precision, threads, split, model, optimizer).
    """
    from transformer_cli.core import runtime
    from transformer_cli.core.config_file import load_config
    from transformer_cli.data import store
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
    split = store.load_split(cfg.run_dir, "train")
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
    overrides += ["train.prefetch=always"] if "prefetch" in flags else []
    kinds = [k for k in ("learned", "rope", "relative") if k in flags]
    overrides += [f"model.positional={k}" for k in kinds]  # sinusoidal, the default, else
    if "cudnn" in flags:  # SDPA may also pick cuDNN's kernel on CUDA (torch's default)
        from transformer_cli.fast import sdpa

        sdpa.CUDA_BACKENDS = None
    cfg, device, precision, threads, split, model, optimizer = setup(args.config, overrides)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    per_step = cfg.train.accum_steps
    # as many epochs as the steps need, in training's order: at GPU batch sizes an epoch
    # of Multi30k is only ~18 batches
    batches, epoch = [], 0
    while len(batches) < (args.warmup + args.steps) * per_step:
        batches += batching.epoch_batches(split, cfg.train.batch_tokens, cfg.train.seed, epoch)
        epoch += 1
    groups = [batches[i : i + per_step] for i in range(0, len(batches), per_step)]

    # compiled under train.compile, as tfx train does
    trainer = train.build_trainer(model, optimizer, scaler, split, cfg, device, precision)

    # as tfx train does: batches collated ahead where train.prefetch says so (auto: CUDA)
    from transformer_cli.training.session import prefetcher

    prefetch = prefetcher(trainer, device)
    timed = groups[args.warmup : args.warmup + args.steps]

    def step(i: int, group) -> int:
        batches = None
        if prefetch is not None:
            batches = prefetch.take(group)
            prefetch.ahead(timed[i + 1] if i + 1 < len(timed) else [])
        return train.train_step(trainer, group, 1e-4, batches).tokens

    for group in groups[: args.warmup]:
        train.train_step(trainer, group, 1e-4)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    tokens, times = 0, []
    started = time.perf_counter()
    for i, group in enumerate(timed):
        t = time.perf_counter()
        tokens += step(i, group)
        times.append(time.perf_counter() - t)  # on CUDA: the host's share (no sync per step)
    if device.type == "cuda":
        torch.cuda.synchronize()  # the steps run without a host sync: time them as a whole
    total = time.perf_counter() - started
    if prefetch is not None:
        prefetch.close()
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "variant": args.variant,
        "device": device.type,
        "precision": precision,  # as resolved on the device
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        # whether fp32 matmuls could run as TF32 on tensor cores (tfx leaves torch's default)
        "tf32_matmuls": device.type == "cuda"
        and (
            torch.backends.cuda.matmul.allow_tf32
            or torch.get_float32_matmul_precision() != "highest"
        ),
        "malloc": allocator.active(),
        "threads": threads,
        "steps": len(times),
        "target_tokens_per_step": tokens / len(times),
        "tokens_per_s": tokens / total,
        # on CUDA the mean: the steps are not synced one by one, only the whole loop
        "step_ms_median": (
            1000 * statistics.median(times) if device.type == "cpu" else 1000 * total / len(times)
        ),
        "prefetch": prefetch is not None,
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
        help="comma list of precision[+compile][+math|+sdpa][+unfused][+prefetch][+cudnn][+glibc], "
        "e.g. bf16,fp32",
    )
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "out" / "train_speed.json"))
    # a dry run's: bf16 matmuls without bf16 units run at ~1 GFLOP/s, minutes at 2048
    parser.add_argument("--peak-size", type=int, default=0, help="matmul peak's n (0: default)")
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
            proc = subprocess.run(cmd, capture_output=True, text=True, env=worker_env(v))
            if proc.returncode:  # the worker's own error, not only its exit status
                sys.exit(f"{v}: exit status {proc.returncode}\n{proc.stderr[-4000:]}")
            runs[v].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}: {v}: {runs[v][-1]['tokens_per_s']:.0f} tok/s", file=sys.stderr)

    first = runs[variants[0]][0]
    threads, device = first["threads"], first["device"]
    # fp32 always (every MFU is also shown against it), bf16 only where a variant ran in it:
    # on a CPU without bf16 units a large bf16 matmul takes minutes
    ran = {"fp32"} | {r["precision"] for rs in runs.values() for r in rs} & {"bf16"}
    peaks = {p: matmul_peak(p, threads, device, args.peak_size) for p in sorted(ran)}
    rows = []
    for v in variants:
        best = max(runs[v], key=lambda x: x["tokens_per_s"])
        precision = v.split("+")[0]
        achieved = best["tokens_per_s"] * best["flops_per_token"] / 1e9
        tf32 = best["tf32_matmuls"]
        sheet = datasheet_peak(best["gpu"], best["precision"], tf32)
        rows.append(
            {
                **best,
                "tokens_per_s_all_rounds": [round(x["tokens_per_s"]) for x in runs[v]],
                "gflops": round(achieved, 1),
                "mfu_vs_fp32_peak": round(achieved / peaks["fp32"], 3),
                "mfu_vs_own_peak": round(achieved / peaks.get(precision, peaks["fp32"]), 3),
                "datasheet_precision": peak_precision(best["precision"], tf32),
                "datasheet_peak_tflops": sheet,
                "mfu_vs_datasheet_peak": round(achieved / (1000 * sheet), 4) if sheet else None,
            }
        )
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": first.get("gpu")
        or f"{platform.processor() or platform.machine()}, {threads} threads",
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
        ).stdout.strip(),
        **cpu_record(),
        "config": args.config,
        "overrides": args.set,
        "matmul_peak_gflops": {k: round(x, 1) for k, x in peaks.items()},
        "flops_per_target_token": first["flops_per_token"],
        "datasheet_peak_tflops": DATASHEET_TFLOPS.get(first["gpu"] or ""),  # null: not known
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    shown = ", ".join(f"{k} {x:.0f}" for k, x in peaks.items())
    print(f"matmul peak ({device}): {shown} GFLOP/s")
    sheet = result["datasheet_peak_tflops"]
    print(
        f"datasheet dense peak ({result['machine']}): "
        + (", ".join(f"{k} {x:g}" for k, x in sheet.items()) + " TFLOP/s" if sheet else "not known")
    )
    print(f"training FLOPs per target token: {first['flops_per_token'] / 1e6:.1f} MFLOP")
    print(
        "| variant | malloc | tgt tokens/s (best of rounds) | all rounds | step ms | "
        "tokens/step | peak RSS GiB | MFU vs fp32 peak | MFU vs own measured peak "
        "| MFU vs datasheet peak |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mfu = r["mfu_vs_datasheet_peak"]
        print(
            f"| {r['variant']} | {r['malloc']} | {r['tokens_per_s']:.0f} | "
            f"{r['tokens_per_s_all_rounds']} | "
            f"{r['step_ms_median']:.0f} | {r['target_tokens_per_step']:.0f} | "
            f"{r['peak_rss_gib']:.2f} | {100 * r['mfu_vs_fp32_peak']:.0f}% | "
            f"{100 * r['mfu_vs_own_peak']:.0f}% | "
            + (
                f"{100 * mfu:.1f}% ({r['datasheet_precision']}) |"
                if mfu is not None
                else "not known |"
            )
        )


if __name__ == "__main__":
    main()
