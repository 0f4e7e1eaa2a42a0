"""Shared fixtures: a tiny parallel corpus on disk and configs that point at it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import toy_splits, write_splits

from transformer_cli.core.config import Config
from transformer_cli.core.config_file import config_from_dict
from transformer_cli.data.toy import generate


@pytest.fixture(scope="session")
def toy_pairs() -> list[tuple[str, str]]:
    """300 distinct toy (English, German) pairs: enough for a 100-piece SentencePiece."""
    return generate(300, seed=7)


@pytest.fixture
def corpus_dir(tmp_path: Path, toy_pairs) -> Path:
    """{train,valid,test}.{en,de} text files: 240 / 30 / 30 toy pairs."""
    directory = tmp_path / "data"
    write_splits(directory, toy_splits(toy_pairs))
    return directory


@pytest.fixture
def make_config(tmp_path: Path, corpus_dir: Path) -> Callable[..., Config]:
    """A config for `corpus_dir` with a tiny vocabulary; `--set`-style overrides on top."""

    def make(*overrides: str) -> Config:
        raw = {
            "run_dir": str(tmp_path / "run"),
            "data": {"source": "files", "dir": str(corpus_dir)},
            "tokenizer": {"vocab_size": 100},
        }
        return config_from_dict(raw, list(overrides))

    return make


@pytest.fixture(autouse=True)
def one_thread():
    """Every test on one thread, restored afterwards (training sets its own count).

    The tensors here are tiny: a second thread adds only OpenMP barriers, and on shared
    cores those stall for a whole scheduler slice (tests run up to 10x slower).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
