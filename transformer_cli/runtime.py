"""Where and how the math runs: device choice, precision, threads, seeds."""

from __future__ import annotations

import contextlib
import os
import random

import torch

from transformer_cli.errors import ConfigError

ONEDNN_PRIMITIVE_CACHE = 64  # see tune_cpu_memory


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


def resolve_precision(precision: str, device: torch.device) -> str:
    """Turn `auto` into fp32/bf16/fp16 for this device, and reject combinations that can't run."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.precision: fp16 needs CUDA (device is {device.type}); use bf16")
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


def tune_cpu_memory(primitive_cache: int = ONEDNN_PRIMITIVE_CACHE) -> bool:
    """Make CPU training reuse freed memory instead of faulting it in again (Linux/glibc).

    Every training batch has its own shapes. By default glibc hands each freed block of
    more than a few MB back to the kernel (unmapping it, or trimming the top of the
    heap), so the next step page-faults it in again: a fifth of the CPU time of the
    small Multi30k model. Here blocks up to 32 MB (every tensor of a step once the loss
    is chunked; see `loss.projected_cross_entropy`) come from the heap, which is never
    trimmed, and only larger ones are mapped and unmapped. Returns whether it applied.

    It also caps oneDNN's cache of compiled matmul kernels (bf16 on CPU) at
    `primitive_cache` entries unless ONEDNN_PRIMITIVE_CACHE_CAPACITY is set: with
    batch-dependent shapes the default of 1024 keeps ~2 MB per shape ever seen (about
    1 GiB by the end of the first epoch) and barely hits, while one step needs ~40.
    """
    import ctypes
    import ctypes.util
    import sys

    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(primitive_cache))
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
        ok = libc.mallopt(m_mmap_threshold, 32 * 2**20) == 1
        return ok and libc.mallopt(m_trim_threshold, 2**30) == 1
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
