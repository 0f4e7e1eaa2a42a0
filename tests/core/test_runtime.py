"""Runtime choices: devices, precision, and glibc keeping freed memory."""

from __future__ import annotations

import pytest
import torch

from transformer_cli.core import runtime
from transformer_cli.core.errors import ConfigError


def test_auto_precision_on_cpu_is_fp32_and_fp16_needs_cuda():
    cpu = torch.device("cpu")
    assert runtime.resolve_precision("auto", cpu) == "fp32"
    assert runtime.resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        runtime.resolve_precision("fp16", cpu)


def test_a_run_names_its_gpu_or_its_cpu_threads_and_malloc(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _device=None: "Some GPU 80GB")
    gpu = runtime.describe(torch.device("cuda", 3), "bf16", 16, "glibc")
    assert gpu == "cuda:3 (Some GPU 80GB, bf16)"  # the index tells the ranks' GPUs apart
    cpu = runtime.describe(torch.device("cpu"), "fp32", 2, "jemalloc")
    assert cpu == "cpu (fp32, 2 threads, jemalloc malloc)"
    assert runtime.describe(torch.device("mps"), "fp32", 8, "system") == "mps (fp32)"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_forcing_a_missing_device_is_a_config_error():
    with pytest.raises(ConfigError, match="train.device: cuda requested"):
        runtime.pick_device("cuda")
