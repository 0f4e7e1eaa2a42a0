"""Fixtures of the data tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_tiny_run


@pytest.fixture
def base_ckpt(tmp_path, toy_pairs) -> Path:
    """A checkpoint whose tokenizer was trained on the toy corpus (tokenizer.vocab_size 100)."""
    cfg = make_tiny_run(tmp_path / "base", toy_pairs)
    return Path(cfg.run_dir) / "checkpoints" / "ckpt_00000010.pt"
