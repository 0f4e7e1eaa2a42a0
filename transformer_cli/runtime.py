"""Where and how the math runs: device choice, precision, threads, seeds."""

from __future__ import annotations

import contextlib
import os
import random
import typing

import torch
from torch import nn

from transformer_cli.config import Precision
from transformer_cli.errors import ConfigError


def pick_device(name: str = "auto") -> torch.device:
    """`auto` prefers CUDA, then Apple's MPS, then the CPU; a forced device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but no CUDA device is available")
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ConfigError("train.device: mps requested but MPS is not available")
    return torch.device(name)


PRECISIONS = typing.get_args(Precision)


def resolve_precision(precision: str, device: torch.device, key: str = "train.precision") -> str:
    """Turn `auto` into fp32/bf16/fp16 for this device, and reject combinations that can't run.

    `key` names the setting in error messages.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"{key}: must be one of {'|'.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"{key}: fp16 needs CUDA (device is {device.type}); use bf16")
    return precision


def matmul_dtype(precision: str) -> torch.dtype:
    """The dtype that matrix products run in under a resolved precision."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def autocast(device: torch.device, precision: str):
    """The autocast context for a resolved precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=matmul_dtype(precision))


def set_threads(threads: int) -> int:
    """Use `threads` intra-op threads (0 = one per available core); return the number used."""
    if threads <= 0:
        try:
            threads = len(os.sched_getaffinity(0))
        except AttributeError:
            threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def decoding_layout(model: nn.Module, device: torch.device | str, precision: str) -> int:
    """Store each wide linear layer's weight input-major, for fp32 decoding on the CPU.

    A wide layer has more outputs than inputs: the output projection (D -> V), the fused
    Q/K/V projection (D -> 3D), the first feed-forward layer (D -> d_ff), cross-attention's
    K/V projection (D -> 2D). Its weight keeps its values and its (out, in) shape; only its
    memory order becomes (in, out), so that `F.linear`'s product x @ W^T reads W^T
    contiguously. At one or two rows per product, as when decoding a single sentence, the
    CPU's BLAS then reads a wide weight 1.3-2.9x as fast (`bench/linear_layout.py`), and
    greedy decoding one sentence at a time runs ~1.3x as fast (`bench/decode_speed.py`);
    at 64 rows the gain is small. In bf16 the two orders are level per product, and whole
    decoding was slower with this one; on CUDA, and with CPU BLAS libraries other than
    Intel's MKL (which x86 builds of torch use), it is not measured: so it is for fp32 on
    the CPU with MKL only. Layers with fewer outputs than inputs (the second feed-forward
    layer) are faster as they are at one or two rows.

    A weight shared with an embedding (`tie_output`) is copied, so the embedding keeps its
    contiguous rows: the layer no longer shares it, so this is for decoding, never for a
    model that goes on training. Returns the number of weights laid out anew.
    """
    on_mkl = torch.device(device).type == "cpu" and torch.backends.mkl.is_available()
    if not on_mkl or precision != "fp32":
        return 0
    changed = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.out_features > module.in_features:
                weight = module.weight
                if weight.t().is_contiguous():
                    continue
                input_major = weight.detach().t().contiguous().t()  # (out, in), strides (1, out)
                module.weight = nn.Parameter(input_major, requires_grad=weight.requires_grad)
                changed += 1
    return changed
