"""What a benchmark ran on, for its JSON: the CPU's model, its flags and any emulation;
and what `tfx train` says of a run: its precision, malloc and throughput.

The benchmarks import it as a sibling module (`python bench/x.py` puts bench/ on the path).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# the variables that cap torch, oneDNN and MKL to a smaller instruction set: how an
# AVX2-only CPU is emulated on a newer one (docs/results.md)
EMULATION_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def _cpuinfo(field: str) -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return next(
        (line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith(field)),
        "",
    )


def cpu_flags() -> list[str]:
    """The CPU's vector and matrix extensions (lscpu's flags that decide kernel speed)."""
    return sorted(f for f in _cpuinfo("flags").split() if f.startswith(("avx", "amx", "fma")))


def cpu_record() -> dict:
    """The CPU's model and flags, and the emulation variables set (empty: none)."""
    return {
        "cpu_model": _cpuinfo("model name"),
        "cpu_flags": cpu_flags(),
        "cpu_emulation": {k: os.environ[k] for k in EMULATION_VARS if k in os.environ},
    }


# `tfx train`'s first line: "... rank 0 on cpu (bf16, auto: the CPU has avx512_bf16; 2
# threads, ...)" or "... on cuda:0 (NVIDIA H100 80GB HBM3, bf16); ..."
_WHERE = re.compile(r" on \S+ \((?:[^;()]*?, )??(fp32|bf16|fp16)\b(?:, (auto: [^;]+);)?")


def trained_precision(first_line: str) -> tuple[str | None, str | None]:
    """The precision a run trained in and, where `auto` chose it on the CPU, why."""
    found = _WHERE.search(first_line)
    return (found.group(1), found.group(2)) if found else (None, None)


def malloc_of(first_line: str) -> str | None:
    """The malloc a CPU run trained under, from `tfx train`'s first line."""
    found = re.search(r"threads, (\w+) malloc\)", first_line)
    return found.group(1) if found else None


def trained_rate(stdout: str) -> float | None:
    """The real target tokens/s of `tfx train`'s closing summary (validation left out)."""
    found = re.search(r"([0-9.]+) target tokens/s", stdout)
    return float(found.group(1)) if found else None
