"""The CTranslate2 backend takes its source truncation and output caps from decoding/limits.py,
as tfx's own searches do (tests/decoding/test_limits.py)."""

from __future__ import annotations

import pytest
import torch
from helpers import trained_tiny

from transformer_cli.data import store
from transformer_cli.decoding import ct2_backend as ct2
from transformer_cli.decoding import limits
from transformer_cli.decoding.loading import load_model

pytest.importorskip("ctranslate2")
from transformer_cli.export import ctranslate2 as ct2_export


def test_the_ct2_backend_cuts_and_caps_by_the_limits(tmp_path, tmp_path_factory, toy_pairs):
    checkpoint = trained_tiny(tmp_path_factory, toy_pairs, "post-norm")
    exported = ct2.load_export(ct2_export.export(checkpoint, tmp_path / "ct2"))
    _, tokenizer, cfg = load_model(checkpoint, torch.device("cpu"))
    sources = tokenizer.encode_src(store.load_text(cfg.run_dir, "valid", "src"))[:12]
    plain = ct2.decode_exported(exported, sources, cfg.decode)
    calls = {"fit": 0, "cap": 0}
    real_fit = limits.fit_sources

    def fit(sources, positions):  # noqa: ARG001 (the rule's signature)
        calls["fit"] += 1
        return real_fit(sources, 3)

    def cap(n_source, decode, positions):  # noqa: ARG001 (the rule's signature)
        calls["cap"] += 1
        return 2

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(limits, "fit_sources", fit)
        patch.setattr(limits, "output_cap", cap)
        capped = ct2.decode_exported(exported, sources, cfg.decode)
    assert calls == {"fit": 1, "cap": len(sources)}
    assert all(len(out) <= 2 for out in capped)
    assert any(len(out) > 2 for out in plain)  # the caps made a difference
    # the sources were cut as fit_sources said: decoding the cut ones gives the same
    cut = [s[:3] for s in sources]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(limits, "output_cap", cap)
        assert ct2.decode_exported(exported, cut, cfg.decode) == capped
