"""Packed linear layers: the same module and parameters, the same numbers, faster decoding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_model_config
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer_cli.core.config import DecodeConfig
from transformer_cli.core.specials import PAD_ID
from transformer_cli.decoding.runner import decode_all
from transformer_cli.fast import packing
from transformer_cli.fast.packing import PackedLinear, pack_linears
from transformer_cli.model.transformer import Transformer

needs_onednn = pytest.mark.skipif(
    not packing.packing_available("cpu"), reason="packing needs torch's oneDNN on the CPU"
)
needs_onednn_bf16 = pytest.mark.skipif(
    not packing.packing_available("cpu", "bf16"), reason="this CPU has no oneDNN bf16 products"
)


def small_model(tie=True, share=True, norm="post", seed=0) -> Transformer:
    torch.manual_seed(seed)
    cfg = tiny_model_config(
        heads=2,
        enc_layers=1,
        d_ff=40,
        max_positions=32,
        src_vocab=50,
        tgt_vocab=50 if share else 60,
        share_embeddings=share,
        tie_output=tie,
        norm=norm,
    )
    return Transformer(cfg).eval()


def batch(model, rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, model.cfg.src_vocab, (rows, 7), generator=g)
    src[0, 5:] = PAD_ID
    tgt = torch.randint(4, model.cfg.tgt_vocab, (rows, 6), generator=g)
    return src, tgt


@needs_onednn
@settings(max_examples=15, deadline=None)
@given(
    tie=st.booleans(),
    share=st.booleans(),
    norm=st.sampled_from(["post", "pre"]),
    rows=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_packing_keeps_the_parameters_and_the_numbers(tie, share, norm, rows, seed):
    model = small_model(tie, share, norm, seed)
    src, tgt = batch(model, rows, seed)
    with torch.no_grad():
        before_logits = model(src, tgt)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = {name: p for name, p in model.named_parameters(remove_duplicate=False)}
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]

    assert not packing.fully_packed(model)
    assert pack_linears(model, "cpu", "fp32") == len(linears) > 0

    linears_now = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert all(isinstance(m, PackedLinear) for m in linears_now)
    assert packing.fully_packed(model)
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    # the very same parameter objects, so a tied output projection stays tied
    assert all(p is params[name] for name, p in model.named_parameters(remove_duplicate=False))
    if tie:
        assert model.out_proj.weight is model.tgt_embed.weight
    # each feed-forward layer's ReLU now runs inside its first product
    assert not any(isinstance(m, torch.nn.ReLU) for m in model.modules())
    fused = [m for m in linears_now if m.activation == "relu"]
    assert len(fused) == model.cfg.enc_layers + model.cfg.dec_layers
    with torch.no_grad():  # the packed products
        torch.testing.assert_close(model(src, tgt), before_logits)
    assert torch.equal(model(src, tgt).detach(), before_logits)  # with autograd: F.linear
    assert pack_linears(model, "cpu", "fp32") == 0  # once is enough


@needs_onednn
def test_a_weight_changed_after_packing_is_packed_again():
    layer = PackedLinear(torch.nn.Linear(8, 12), torch.float32)
    x = torch.randn(3, 8)
    with torch.no_grad():
        layer.weight.mul_(-2.0)  # in place: the packed copy is now stale
        layer.bias.add_(1.0)
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))


@needs_onednn
def test_gradients_flow_through_a_packed_model_as_through_the_plain_one():
    plain, packed = small_model(seed=3), small_model(seed=3)
    pack_linears(packed, "cpu", "fp32")
    src, tgt = batch(plain, 3, 1)
    for model in (plain, packed):
        model.train()
        model(src, tgt).square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), packed.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad), name


@needs_onednn_bf16
def test_bf16_packing_runs_the_products_in_bf16():
    model = small_model(seed=5)
    src, tgt = batch(model, 2, 5)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        autocast_logits = model(src, tgt).float()
    assert pack_linears(model, "cpu", "bf16") > 0
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        logits = model(src, tgt)
    assert logits.dtype == torch.bfloat16
    assert model.out_proj.packed_weight.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), autocast_logits, atol=0.05, rtol=0.05)


@pytest.mark.parametrize(("device", "onednn"), [("cuda", True), ("cpu", False)])
def test_nothing_is_packed_off_the_cpu_or_without_onednn(device, onednn, monkeypatch):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: onednn)
    model = small_model()
    modules = list(model.modules())
    assert pack_linears(model, device, "fp32") == 0
    assert all(a is b for a, b in zip(modules, model.modules(), strict=True))


def test_bf16_is_not_packed_where_onednn_has_no_bf16_products(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    model = small_model()
    assert pack_linears(model, "cpu", "bf16") == 0
    assert not any(isinstance(m, PackedLinear) for m in model.modules())


@pytest.mark.parametrize(
    ("precision", "pack", "inference"),
    [
        ("fp32", False, True),
        ("bf16", False, False),
        pytest.param("bf16", True, True, marks=needs_onednn_bf16),
    ],
)
def test_decoding_drops_autograd_bookkeeping_unless_autocast_needs_it(
    precision, pack, inference, monkeypatch
):
    """inference_mode, except for bf16 layers that autocast casts: under inference_mode it
    would cast their weights again at every step instead of once. Packed bf16 layers hold
    their own bf16 copy, and give the same output either way."""
    model = small_model(seed=3)
    if pack:
        pack_linears(model, "cpu", precision)
    seen = []
    real = model.encode

    def spy(*args, **kwargs):
        seen.append(torch.is_inference_mode_enabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "encode", spy)
    sources = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    cfg = DecodeConfig(batch_sentences=2)
    outputs = decode_all(model, sources, cfg, "cpu", precision)
    assert seen
    assert all(mode is inference for mode in seen)
    monkeypatch.setattr(packing, "fully_packed", lambda _model: False)  # force no_grad
    assert decode_all(model, sources, cfg, "cpu", precision) == outputs
