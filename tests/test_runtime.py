"""Runtime choices: devices, precision, and glibc keeping freed memory."""

from __future__ import annotations

import os
import subprocess
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


WORKLOAD = """
import random, resource, sys, torch
from transformer_cli.runtime import tune_cpu_memory
if sys.argv[1] == "keep":
    assert tune_cpu_memory()
rng = random.Random(0)
def step():  # like a training step: many tensors of batch-dependent sizes, then all freed
    held = [torch.empty(rng.randrange(250_000, 6_000_000)).fill_(1.0) for _ in range(20)]
    del held
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_kept_memory_is_reused_instead_of_faulted_in_again():
    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", WORKLOAD, mode], check=True,
                             capture_output=True, text=True, env={**os.environ,
                             "OMP_NUM_THREADS": "1"})  # fmt: skip
        return int(out.stdout)

    assert faults("keep") * 3 < faults("default")
