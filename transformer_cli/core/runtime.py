"""Where and how the math runs: device choice, precision, threads, seeds."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import random
from dataclasses import dataclass

import torch

from transformer_cli.core.config import (
    DEVICES,
    DecodeConfig,
    Device,
    ResolvedPrecision,
    is_device,
)
from transformer_cli.core.config_rules import checked_precision
from transformer_cli.core.errors import ConfigError


def pick_device(name: Device = "auto") -> torch.device:
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


def device_option(name: str) -> torch.device:
    """The torch device for --device; a one-line error naming the option if it cannot be used."""
    if not is_device(name):
        raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
    try:
        return pick_device(name)
    except ConfigError as e:  # its message names the config key train.device
        raise ConfigError(f"--device {name}: not available here") from e


@dataclass(frozen=True)
class CpuMath:
    """What this process's CPU offers bf16 matrix products, as torch sees it."""

    bf16_units: str  # "AMX", "avx512_bf16", or "" for none (or none torch can tell of)
    kernels: str  # torch.backends.cpu.get_cpu_capability(): "AVX512", "AVX2", "DEFAULT", ...
    onednn_bf16: bool  # oneDNN may run bf16 here (ONEDNN_MAX_CPU_ISA can cap it off)


def _probe(owner: object, name: str) -> bool:
    """A private torch probe's answer; False where this torch lacks it or it fails."""
    try:
        return bool(getattr(owner, name)())
    except Exception:  # a missing or failing probe means "cannot tell": fp32 is the safe side
        return False


@functools.cache
def cpu_math() -> CpuMath:
    """This CPU's bf16 units and the instruction sets torch and oneDNN are allowed to use.

    Capped by ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA, so an AVX2-only CPU emulated with
    them reads as one.
    """
    units = "AMX" if _probe(torch.cpu, "_is_amx_tile_supported") else ""
    units = units or ("avx512_bf16" if _probe(torch.cpu, "_is_avx512_bf16_supported") else "")
    onednn = _probe(torch.ops.mkldnn, "_is_mkldnn_bf16_supported")
    return CpuMath(units, torch.backends.cpu.get_cpu_capability(), onednn)


def cpu_auto_precision(math: CpuMath) -> tuple[ResolvedPrecision, str]:
    """What `auto` means on this CPU, and why: bf16 where it has bf16 matrix units that
    torch and oneDNN may use; fp32 elsewhere, where bf16 products are emulated and slower
    than fp32's, or where torch cannot tell.

    Why flags and not a timed probe, and the measurements: docs/performance.md,
    "Precision on the CPU: what `auto` picks".
    """
    if not math.bf16_units:
        return "fp32", "auto: no bf16 units that torch knows of in this CPU"
    if not math.kernels.startswith("AVX512"):
        return "fp32", f"auto: torch's kernels run at {math.kernels} (ATEN_CPU_CAPABILITY?)"
    if not math.onednn_bf16:
        return "fp32", "auto: oneDNN may not run bf16 (ONEDNN_MAX_CPU_ISA?)"
    return "bf16", f"auto: the CPU has {math.bf16_units}"


def resolve_precision_why(
    precision: str, device: torch.device, key: str = "train.precision"
) -> tuple[ResolvedPrecision, str]:
    """Turn `auto` into fp32/bf16/fp16 for this device, and say why for a first line ("" when
    there is nothing to say); reject combinations that can't run.

    `auto` is bf16 (else fp16) on CUDA, `cpu_auto_precision` on the CPU, fp32 elsewhere.
    An explicit fp32 or bf16 is kept. `key` names the setting in error messages.
    """
    precision = checked_precision(precision, key)
    if precision == "auto":
        if device.type == "cuda":
            return ("bf16" if torch.cuda.is_bf16_supported() else "fp16"), ""
        if device.type == "cpu":
            return cpu_auto_precision(cpu_math())
        return "fp32", ""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"{key}: fp16 needs CUDA (device is {device.type}); use bf16")
    return precision, ""


def resolve_precision(
    precision: str, device: torch.device, key: str = "train.precision"
) -> ResolvedPrecision:
    """`resolve_precision_why`'s precision alone."""
    return resolve_precision_why(precision, device, key)[0]


def decode_precision(decode: DecodeConfig, device: torch.device) -> ResolvedPrecision:
    """The resolved precision of `decode.precision` (or --precision) on `device`."""
    return resolve_precision(decode.precision, device, "--precision")


def matmul_dtype(precision: ResolvedPrecision) -> torch.dtype:
    """The dtype that matrix products run in under a resolved precision."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def autocast(
    device: torch.device, precision: ResolvedPrecision
) -> contextlib.AbstractContextManager[object]:
    """The autocast context for a resolved precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=matmul_dtype(precision))


def describe(
    device: torch.device, precision: ResolvedPrecision, threads: int, malloc: str, why: str = ""
) -> str:
    """Where a run computes, for its first line: a GPU by name; the CPU's threads and malloc.

    `why` (from `resolve_precision_why`) follows the precision."""
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        return f"cuda:{index} ({torch.cuda.get_device_name(device)}, {precision})"
    if device.type == "cpu":
        reason = f", {why};" if why else ","
        return f"cpu ({precision}{reason} {threads} threads, {malloc} malloc)"
    return f"{device.type} ({precision})"


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


def hashed_seed(purpose: str, *keys: int) -> int:
    """A 63-bit seed from (purpose, keys) through a hash, so that nearby keys look unrelated
    and each purpose draws its own streams."""
    text = ":".join([f"tfx-{purpose}", *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1
