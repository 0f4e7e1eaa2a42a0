"""Runtime choices: devices, precision, and glibc keeping freed memory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from transformer_cli.core import runtime
from transformer_cli.core.errors import ConfigError

AVX512_BF16 = runtime.CpuMath("avx512_bf16", "AVX512", onednn_bf16=True)


def test_auto_on_the_cpu_is_bf16_only_where_bf16_units_may_run():
    pick = runtime.cpu_auto_precision
    assert pick(AVX512_BF16) == ("bf16", "auto: the CPU has avx512_bf16")
    assert pick(runtime.CpuMath("AMX", "AVX512", True)) == ("bf16", "auto: the CPU has AMX")
    # AVX2-only, or AVX-512 without bf16 instructions: bf16 would be emulated
    for no_units in ("AVX2", "AVX512"):
        assert pick(runtime.CpuMath("", no_units, True)) == (
            "fp32",
            "auto: no bf16 units that torch knows of in this CPU",
        )
    # the units are there, but the environment keeps torch or oneDNN off them
    capped = pick(runtime.CpuMath("avx512_bf16", "AVX2", True))
    assert capped[0] == "fp32"
    assert "ATEN_CPU_CAPABILITY" in capped[1]
    capped = pick(runtime.CpuMath("avx512_bf16", "AVX512", False))
    assert capped[0] == "fp32"
    assert "ONEDNN_MAX_CPU_ISA" in capped[1]


@pytest.mark.parametrize("units", ["avx512_bf16", ""])
def test_an_explicit_precision_wins_and_fp16_needs_cuda(monkeypatch, units):
    math = runtime.CpuMath(units, "AVX512", True)
    monkeypatch.setattr(runtime, "cpu_math", lambda: math)
    cpu = torch.device("cpu")
    assert runtime.resolve_precision("auto", cpu) == ("bf16" if units else "fp32")
    assert runtime.resolve_precision("fp32", cpu) == "fp32"
    assert runtime.resolve_precision("bf16", cpu) == "bf16"
    assert runtime.resolve_precision_why("fp32", cpu) == ("fp32", "")
    assert runtime.resolve_precision_why("auto", cpu)[1].startswith("auto: ")
    assert runtime.resolve_precision("auto", torch.device("mps")) == "fp32"
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        runtime.resolve_precision("fp16", cpu)


def cpuinfo_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {f for line in text.splitlines() if line.startswith("flags") for f in line.split()}


EMULATING = {"ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"} & set(os.environ)


@pytest.mark.skipif(
    not {"avx512_bf16", "amx_bf16"} & cpuinfo_flags() or bool(EMULATING),
    reason="needs a CPU whose /proc/cpuinfo lists bf16 units, not capped by the environment",
)
def test_the_probes_find_the_bf16_units_the_kernel_lists():
    """Read apart from torch's probes: a renamed probe would make `auto` fp32 silently."""
    math = runtime.cpu_math()
    assert math.bf16_units
    assert runtime.cpu_auto_precision(math)[0] == "bf16"


def test_a_missing_or_failing_probe_means_no():
    def fails() -> bool:
        raise RuntimeError("not on this build")

    assert runtime._probe(SimpleNamespace(), "_is_avx512_bf16_supported") is False
    assert runtime._probe(SimpleNamespace(probe=fails), "probe") is False
    assert runtime._probe(SimpleNamespace(probe=lambda: True), "probe") is True


def test_the_emulated_avx2_cpu_reads_as_one():
    """The variables that emulate an AVX2-only CPU turn `auto` to fp32 in a fresh process."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    code = (
        "import torch; from transformer_cli.core import runtime as r;"
        "print(r.resolve_precision('auto', torch.device('cpu')))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "fp32", out.stderr


def test_a_run_names_its_gpu_or_its_cpu_threads_and_malloc(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _device=None: "Some GPU 80GB")
    gpu = runtime.describe(torch.device("cuda", 3), "bf16", 16, "glibc")
    assert gpu == "cuda:3 (Some GPU 80GB, bf16)"  # the index tells the ranks' GPUs apart
    cpu = runtime.describe(torch.device("cpu"), "fp32", 2, "jemalloc")
    assert cpu == "cpu (fp32, 2 threads, jemalloc malloc)"
    why = "auto: the CPU has avx512_bf16"
    cpu = runtime.describe(torch.device("cpu"), "bf16", 2, "glibc", why)
    assert cpu == "cpu (bf16, auto: the CPU has avx512_bf16; 2 threads, glibc malloc)"
    assert runtime.describe(torch.device("mps"), "fp32", 8, "system") == "mps (fp32)"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_forcing_a_missing_device_is_a_config_error():
    with pytest.raises(ConfigError, match="train.device: cuda requested"):
        runtime.pick_device("cuda")
