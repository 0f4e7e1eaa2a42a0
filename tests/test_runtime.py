"""Runtime choices: devices, precision, and glibc keeping freed memory."""

from __future__ import annotations

import resource
import sys

import pytest
import torch

from transformer_cli import runtime
from transformer_cli.errors import ConfigError


def test_auto_precision_on_cpu_is_fp32_and_fp16_needs_cuda():
    cpu = torch.device("cpu")
    assert runtime.resolve_precision("auto", cpu) == "fp32"
    assert runtime.resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        runtime.resolve_precision("fp16", cpu)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_forcing_a_missing_device_is_a_config_error():
    with pytest.raises(ConfigError, match="train.device: cuda requested"):
        runtime.pick_device("cuda")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_freed_big_blocks_are_reused_without_page_faults():
    assert runtime.keep_freed_memory()
    n = 16_000_000  # 64 MB of float32: above glibc's largest default mmap threshold
    torch.empty(n).fill_(1.0)  # first touch: these pages fault in once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.empty(n).fill_(1.0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    # unmapped and re-mapped each time, this would be 5 x 15,625 pages
    assert faults < n * 4 // 4096
