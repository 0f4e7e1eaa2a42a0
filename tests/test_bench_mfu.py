"""bench/train_speed.py's datasheet peaks: MFU is taken against the peak of the precision
that ran, on the GPU that ran it, and is null (not known) anywhere else."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "train_speed.py"


@pytest.fixture(scope="module")
def train_speed():
    spec = importlib.util.spec_from_file_location("train_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(SCRIPT.parent))  # its sibling `machine`, as `python bench/...` has
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


def test_the_peak_is_the_precision_that_ran(train_speed):
    peak = train_speed.datasheet_peak
    assert peak("NVIDIA H200", "bf16", tf32=False) == 989
    assert peak("NVIDIA H100 80GB HBM3", "fp32", tf32=False) == 67
    assert peak("NVIDIA H100 80GB HBM3", "fp32", tf32=True) == 494  # fp32 on tensor cores
    assert peak("NVIDIA A100-SXM4-80GB", "bf16", tf32=True) == 312  # tf32 is fp32's only


def test_a_device_without_a_datasheet_entry_has_no_peak(train_speed):
    assert train_speed.datasheet_peak(None, "fp32", tf32=False) is None  # the CPU
    assert train_speed.datasheet_peak("NVIDIA GeForce RTX 4090", "bf16", tf32=False) is None
