"""Shared fixtures: a tiny parallel corpus on disk and configs that point at it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

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
    write_splits(directory, {"train": toy_pairs[:240], "valid": toy_pairs[240:270],
                             "test": toy_pairs[270:]})  # fmt: skip
    return directory


def write_splits(directory: Path, splits: dict[str, list[tuple[str, str]]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, pairs in splits.items():
        (directory / f"{name}.en").write_text("".join(f"{en}\n" for en, _ in pairs), "utf-8")
        (directory / f"{name}.de").write_text("".join(f"{de}\n" for _, de in pairs), "utf-8")


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
