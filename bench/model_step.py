"""Training-step throughput of the model: forward + backward, math vs SDPA attention.

The small config (d_model 256, 3+3 layers, 4 heads, ffn 1024, joint vocab 8000,
shared and tied embeddings) on batches shaped like Multi30k's: ~4096 real target
tokens, source lengths ~ 14 +- 5 pieces, target ~ 16 +- 6, length-bucketed and padded
to the batch maximum. The timed step is what training does: encode, decode, project
only the real target positions, full-vocabulary cross-entropy, backward.

Both paths share one set of weights and run alternately, step by step, in one
process, so that whatever else the machine is doing falls on both alike; the median
step is reported, and the median ratio of neighbouring math and sdpa steps.

    .venv/bin/python bench/model_step.py [--reps 5] [--threads 2] [--precision bf16]
        [--device cuda]

With `--precision bf16` the forward passes run under bf16 autocast, as `tfx train` does
with train.precision=bf16. This is what `model.attention: auto` rests on: on the CPU the
math path comes out ahead (see the README). The report lists the torch kernels SDPA ran
in a training step: the fused CPU kernel has no dropout, so with attention dropout above 0
SDPA would run its own unfused fallback instead (the small config, like tfx's, has 0).

With `--device cuda` the same steps run on the GPU (`model.attention: auto` takes SDPA
there), timed with the GPU synchronised before and after each.

Writes bench/out/model_step.json (model_step_len<scale>.json with --len-scale,
model_step_bf16.json with --precision bf16, a `_cuda` suffix with --device cuda).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from transformer_cli.core.config import ModelConfig
from transformer_cli.core.specials import PAD_ID
from transformer_cli.fast import sdpa
from transformer_cli.model.attention import attend_math
from transformer_cli.model.masks import decoder_mask, padding_mask
from transformer_cli.model.transformer import Transformer

VOCAB = 8000
SMALL = ModelConfig(
    d_model=256,
    heads=4,
    enc_layers=3,
    dec_layers=3,
    d_ff=1024,
    dropout=0.1,
    max_positions=1024,
    share_embeddings=True,
    tie_output=True,
    src_vocab=VOCAB,
    tgt_vocab=VOCAB,
    attention="sdpa",
)
# the forward passes run under this: bf16 autocast with --precision bf16, as tfx train does
AMP = {
    "fp32": lambda: contextlib.nullcontext(),
    "bf16": lambda: torch.autocast(DEVICE.type, torch.bfloat16),
}
amp = AMP["fp32"]
DEVICE = torch.device("cpu")  # --device
OUT = Path(__file__).parent / "out" / "model_step.json"


def multi30k_like_batches(
    n_batches: int, budget: int, seed: int, scale: float = 1.0
) -> list[tuple]:
    """Length-bucketed batches of (src, tgt_in, tgt_out), each ~`budget` real target tokens.

    `scale` stretches the length distribution (mean and spread), for longer corpora.
    """
    gen = torch.Generator().manual_seed(seed)
    pool = int(30 * budget / (16 * scale))  # about 30 batches' worth of pairs to bucket from
    longest = int(60 * scale)
    src_len = (torch.randn(pool, generator=gen) * 5 * scale + 14 * scale).round()
    tgt_len = (torch.randn(pool, generator=gen) * 6 * scale + 16 * scale).round()
    src_len, tgt_len = src_len.clamp(2, longest).long(), tgt_len.clamp(2, longest).long()
    order = sorted(range(pool), key=lambda i: (tgt_len[i].item(), src_len[i].item()))
    buckets, current, tokens = [], [], 0
    for i in order:
        current.append(i)
        tokens += tgt_len[i].item()
        if tokens >= budget:
            buckets.append(current)
            current, tokens = [], 0
    picks = torch.randperm(len(buckets), generator=gen)[:n_batches].tolist()
    batches = []
    for k in picks:
        rows = buckets[k]
        s, t = src_len[rows], tgt_len[rows]
        src = torch.randint(4, VOCAB, (len(rows), int(s.max())), generator=gen)
        tgt = torch.randint(4, VOCAB, (len(rows), int(t.max()) + 1), generator=gen)
        src[torch.arange(src.size(1)) >= s[:, None]] = PAD_ID
        tgt[torch.arange(tgt.size(1)) >= t[:, None] + 1] = PAD_ID
        # tgt_in = BOS + pieces, tgt_out = pieces + EOS: the same real length
        batches.append((src, tgt[:, :-1], tgt[:, 1:]))
    return batches


def train_step(model: Transformer, src, tgt_in, tgt_out) -> None:
    with amp():
        memory = model.encode(src)
        hidden = model.decode_hidden(tgt_in, memory, src)  # (B, T, D)
        real = tgt_out != PAD_ID
        logits = model.logits(hidden[real])  # (N, V), real positions only
    loss = F.cross_entropy(logits.float(), tgt_out[real], label_smoothing=0.1)
    loss.backward()
    model.zero_grad(set_to_none=True)


def attention_step(model: Transformer, src, tgt_in, x_src, x_tgt) -> None:
    """Only the attention of one layer pair: encoder self-, decoder self-, cross-attention.

    The gradients flowing in are dense random tensors, as in training, not the
    stride-0 ones of a `.sum().backward()`, which would send the backward kernels
    down other (slower, and path-dependent) code.
    """
    enc, dec = model.encoder.layers[0], model.decoder.layers[0]
    src_mask = padding_mask(src)
    with amp():
        outs = [
            enc.self_attn(x_src, src_mask),
            dec.self_attn(x_tgt, decoder_mask(tgt_in)),
            dec.cross_attn(x_tgt, x_src, src_mask),
        ]
    torch.autograd.backward(outs, [upstream_grad(o.shape).to(o.dtype) for o in outs])
    model.zero_grad(set_to_none=True)


def upstream_grad(shape: torch.Size) -> torch.Tensor:
    """A fixed dense gradient for an output of this shape."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)


def core_inputs(batch: tuple, dtype: torch.dtype) -> list[tuple]:
    """Random (q, k, v, mask, upstream gradient) of one layer's three attentions.

    `dtype` is that of the projections' outputs: bfloat16 under bf16 autocast.
    """
    src, tgt_in, _ = batch
    heads, head_dim = SMALL.heads, SMALL.d_model // SMALL.heads

    def qkv(queries: int, keys: int) -> tuple:
        shapes = [(src.size(0), heads, n, head_dim) for n in (queries, keys, keys)]
        return tuple(
            torch.randn(*shape, dtype=dtype, device=DEVICE, requires_grad=True) for shape in shapes
        )

    B, S, T, D = src.size(0), src.size(1), tgt_in.size(1), SMALL.d_model
    return [
        (*qkv(S, S), padding_mask(src), upstream_grad((B, S, D))),
        (*qkv(T, T), decoder_mask(tgt_in), upstream_grad((B, T, D))),
        (*qkv(T, S), padding_mask(src), upstream_grad((B, T, D))),
    ]


CORES = {
    "sdpa": lambda q, k, v, mask: sdpa.attend(q, k, v, mask, 0.0),
    "math": lambda q, k, v, mask: attend_math(q, k, v, mask)[0],
}


def core_step(name: str, inputs: list[tuple]) -> None:
    """softmax(QK^T / sqrt(d_k)) V and the heads' concatenation, forward and backward,
    without the projections: what `Attention._attend` does before its `out_proj`."""
    outs, grads = [], []
    for q, k, v, mask, grad in inputs:
        B, H, T, K = q.shape
        with amp():
            outs.append(CORES[name](q, k, v, mask).transpose(1, 2).reshape(B, T, H * K))
        grads.append(grad.to(outs[-1].dtype))
    torch.autograd.backward(outs, grads)


def timed(fn, *args) -> float:
    """Seconds `fn(*args)` takes, with the GPU's queued work finished on both sides."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(*args)
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def sdpa_kernels(model: Transformer, batch: tuple) -> list[str]:
    """The torch kernels behind `scaled_dot_product_attention` in one training step.

    On the CPU, torch's fused (flash) kernel has no dropout: with attention dropout above 0,
    SDPA runs its own unfused fallback, `_scaled_dot_product_attention_math`, instead.
    """
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        train_step(model, *batch)
    names = {e.key for e in prof.key_averages()}
    return sorted(n for n in names if n.startswith("aten::_scaled_dot_product"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="timed passes over the batches")
    parser.add_argument("--batches", type=int, default=3, help="distinct batch shapes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", type=int, default=4096, help="target tokens per batch")
    parser.add_argument(
        "--len-scale", type=float, default=1.0, help="stretch sentence lengths (1 = Multi30k)"
    )
    parser.add_argument("--precision", choices=sorted(AMP), default="fp32")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    global amp, DEVICE
    amp = AMP[args.precision]
    DEVICE = torch.device(args.device)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {"sdpa": Transformer(SMALL).train().to(DEVICE)}
    models["math"] = Transformer(dataclasses.replace(SMALL, attention="math")).train()
    models["math"].load_state_dict(models["sdpa"].state_dict())
    models["math"].to(DEVICE)
    batches = multi30k_like_batches(args.batches, args.budget, seed=0, scale=args.len_scale)
    batches = [tuple(t.to(DEVICE) for t in b) for b in batches]
    real_tokens = sum(int((b[2] != PAD_ID).sum()) for b in batches)
    padded_tokens = sum(b[2].numel() for b in batches)

    states = [
        (
            torch.randn(*b[0].shape, SMALL.d_model, device=DEVICE, requires_grad=True),
            torch.randn(*b[1].shape, SMALL.d_model, device=DEVICE, requires_grad=True),
        )
        for b in batches
    ]

    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    cores = [core_inputs(b, dtype) for b in batches]

    load_before = os.getloadavg()
    for name, model in models.items():  # warm-up: allocator, kernels, autograd graph caches
        train_step(model, *batches[0])
        attention_step(model, *batches[0][:2], *states[0])
        core_step(name, cores[0])
    # times[name][k] = the step times of batch k; the two paths alternate step by step,
    # in ABBA order, so that load from other processes falls on both alike
    times: dict[str, list[list[float]]] = {name: [[] for _ in batches] for name in models}
    attn_times: dict[str, list[float]] = {name: [] for name in models}
    core_times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for rep in range(args.reps):
        for k, b in enumerate(batches):
            for name in names if (rep + k) % 2 == 0 else names[::-1]:
                times[name][k].append(timed(train_step, models[name], *b))
                attn_times[name].append(timed(attention_step, models[name], *b[:2], *states[k]))
                core_times[name].append(timed(core_step, name, cores[k]))
    load_after = os.getloadavg()
    kernels = sdpa_kernels(models["sdpa"], batches[0])

    results = {}
    for name, per_batch in times.items():
        # the median step of each batch shape, summed over the shapes
        total = sum(statistics.median(ts) for ts in per_batch)
        results[name] = {
            "median_s_per_batch": total / len(batches),
            "tgt_tokens_per_s": real_tokens / total,
            "step_s": per_batch,
            "attention_fwd_bwd_ms_per_layer_pair": 1000 * statistics.median(attn_times[name]),
            "attention_core_fwd_bwd_ms": 1000 * statistics.median(core_times[name]),
        }
    # the paired ratio is the robust number on a shared machine: each math step is
    # compared with the sdpa step of the same batch taken right next to it
    ratios = [
        m / s
        for ms, ss in zip(times["math"], times["sdpa"], strict=True)
        for m, s in zip(ms, ss, strict=True)
    ]
    speedup = statistics.median(ratios)
    core_speedup = statistics.median(
        m / s for m, s in zip(core_times["math"], core_times["sdpa"], strict=True)
    )
    attention_speedup = statistics.median(
        m / s for m, s in zip(attn_times["math"], attn_times["sdpa"], strict=True)
    )

    where = torch.cuda.get_device_name() if DEVICE.type == "cuda" else f"{args.threads} threads"
    print(
        f"forward+backward, d_model 256, 3+3 layers, vocab {VOCAB}, {where}, "
        f"lengths x{args.len_scale:g}, {args.precision}"
    )
    print(
        f"{args.batches} batches, {real_tokens / args.batches:.0f} real target tokens each, "
        f"{1 - real_tokens / padded_tokens:.1%} padding; median of {args.reps} reps"
    )
    print(f"{'path':<6} {'s/batch':>9} {'tgt tok/s':>11} {'attention ms':>13} {'core ms':>8}")
    for name, r in results.items():
        print(
            f"{name:<6} {r['median_s_per_batch']:>9.3f} {r['tgt_tokens_per_s']:>11.0f} "
            f"{r['attention_fwd_bwd_ms_per_layer_pair']:>13.1f} "
            f"{r['attention_core_fwd_bwd_ms']:>8.1f}"
        )
    print("(attention ms: fwd+bwd of one encoder self-, decoder self- and cross-attention;")
    print(" core ms: the same three without their projections, softmax(QK^T/sqrt(d))V alone)")
    print(
        f"sdpa speed-up over math on the attention core: {core_speedup:.2f}x, "
        f"with the projections: {attention_speedup:.2f}x"
    )
    faster = sum(r > 1 for r in ratios)
    print(
        f"sdpa speed-up over math (median of paired steps): {speedup:.2f}x; "
        f"sdpa faster in {faster} of {len(ratios)} pairs"
    )
    print(
        f"sdpa's kernels in a training step (attention dropout {SMALL.attention_dropout}): "
        f"{', '.join(kernels)}"
    )
    print(f"load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f}")

    suffix = (
        ("" if args.len_scale == 1 else f"_len{args.len_scale:g}")
        + ("" if args.precision == "fp32" else f"_{args.precision}")
        + ("" if DEVICE.type == "cpu" else f"_{DEVICE.type}")
    )
    out = OUT.with_name(f"model_step{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "threads": args.threads,
        "device": torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu",
        "len_scale": args.len_scale,
        "precision": args.precision,
        "cpus": os.cpu_count(),
        "load_average_1min_before_after": [load_before[0], load_after[0]],
        "config": dataclasses.asdict(SMALL),
        "batches": [list(b[0].shape) + list(b[1].shape) for b in batches],
        "real_tgt_tokens_per_batch": real_tokens / args.batches,
        "padding_fraction": 1 - real_tokens / padded_tokens,
        "results": results,
        "sdpa_kernels_in_training_step": kernels,
        "sdpa_speedup_paired_median": speedup,
        "sdpa_core_speedup_paired_median": core_speedup,
        "sdpa_attention_speedup_paired_median": attention_speedup,
        "paired_ratios_math_over_sdpa": ratios,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
