"""Runtime choices: devices, precision, and glibc keeping freed memory."""

from __future__ import annotations

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
