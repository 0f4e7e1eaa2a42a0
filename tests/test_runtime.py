"""Runtime choices: devices, precision, and glibc keeping freed memory."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer_cli import runtime
from transformer_cli.config import ModelConfig
from transformer_cli.errors import ConfigError
from transformer_cli.model import Transformer
from transformer_cli.tokenizer import PAD_ID


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


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="the layout is for MKL")
@settings(max_examples=15, deadline=None)
@given(
    tie=st.booleans(),
    share=st.booleans(),
    norm=st.sampled_from(["post", "pre"]),
    rows=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_decoding_layout_changes_memory_order_only(tie, share, norm, rows, seed):
    """Same values, shapes and outputs; wide weights input-major, the rest as they were."""
    torch.manual_seed(seed)
    cfg = ModelConfig(
        d_model=16, heads=2, enc_layers=1, dec_layers=2, d_ff=40, dropout=0.0,
        max_positions=32, src_vocab=50, tgt_vocab=50 if share else 60,
        share_embeddings=share, tie_output=tie, norm=norm,
    )  # fmt: skip
    model = Transformer(cfg).eval()
    src = torch.randint(4, cfg.src_vocab, (rows, 7))
    src[0, 5:] = PAD_ID
    tgt = torch.randint(4, cfg.tgt_vocab, (rows, 6))
    with torch.no_grad():
        before_logits = model(src, tgt)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    narrow = {id(m): m.weight for m in linears if m.out_features <= m.in_features}

    changed = runtime.decoding_layout(model, "cpu", "fp32")

    wide = [m for m in linears if m.out_features > m.in_features]
    assert changed == len(wide) > 0
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert all(m.weight.t().is_contiguous() and not m.weight.is_contiguous() for m in wide)
    assert all(m.weight is narrow[id(m)] for m in linears if id(m) in narrow)
    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    assert all(e.weight.is_contiguous() for e in embeddings)  # row lookups stay contiguous
    with torch.no_grad():
        torch.testing.assert_close(model(src, tgt), before_logits)
    assert runtime.decoding_layout(model, "cpu", "fp32") == 0  # once is enough


@pytest.mark.parametrize(
    ("device", "precision", "mkl"),
    [("cpu", "bf16", True), ("cuda", "fp32", True), ("cpu", "fp32", False)],
)
def test_decoding_layout_is_for_fp32_on_the_cpu_with_mkl_only(device, precision, mkl, monkeypatch):
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: mkl)
    model = Transformer(ModelConfig(d_model=16, heads=2, enc_layers=1, dec_layers=1, d_ff=32,
                                    src_vocab=40, tgt_vocab=40))  # fmt: skip
    weights = [p for p in model.parameters()]
    assert runtime.decoding_layout(model, device, precision) == 0
    assert all(a is b for a, b in zip(weights, model.parameters(), strict=True))
