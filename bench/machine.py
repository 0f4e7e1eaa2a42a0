"""What a benchmark ran on, for its JSON: the CPU's model, its flags and any emulation.

The benchmarks import it as a sibling module (`python bench/x.py` puts bench/ on the path).
"""

from __future__ import annotations

import os
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
