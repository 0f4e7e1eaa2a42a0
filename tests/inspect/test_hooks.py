"""The views reach into a model from outside: the probabilities they read are eq. 1's own,
and after a view, even one that raises, every module and every output of the model is what
it was (the residual-free layers: tests/inspect/test_questions.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import padded, tiny_model_config

from transformer_cli.inspect.attention_maps import _recorded, evaluating, recorded_attention
from transformer_cli.inspect.residual import residuals_removed
from transformer_cli.model.masks import padding_mask
from transformer_cli.model.transformer import Transformer

CFG = tiny_model_config()
V = CFG.tgt_vocab


def model_for(attention: str, norm: str = "post", positional: str = "sinusoidal") -> Transformer:
    """A float64 model in eval mode; the same weights whatever the path."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(CFG, attention=attention, norm=norm, positional=positional)
    return Transformer(cfg).double().eval()


def snapshot(model: torch.nn.Module) -> list:
    """Every module's name, class, mode and attributes, with the keys of its dicts (hooks,
    parameters, submodules): what a view could leave behind."""
    return [
        (
            name,
            type(module),
            module.training,
            {k: list(v) if isinstance(v, dict) else type(v) for k, v in vars(module).items()},
        )
        for name, module in model.named_modules()
    ]


@torch.no_grad()
@pytest.mark.parametrize("positional", ["sinusoidal", "rope", "relative"])
@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_recorded_attention_is_the_math_path_and_its_rows_are_distributions(attention, positional):
    model, math = model_for(attention, positional=positional), model_for("math", "post", positional)
    src, tgt = padded([5, 3], V, seed=19), padded([4, 2], V, seed=20)
    with recorded_attention(model) as weights:
        got = model(src, tgt)
    assert torch.equal(got, math(src, tgt))  # eq. 1 written out, whatever the path
    cross = [weights[layer.cross_attn] for layer in model.decoder.layers]
    assert len(weights) == CFG.enc_layers + 2 * CFG.dec_layers
    for w in cross:
        assert w.shape == (2, CFG.heads, 4, 5)
        torch.testing.assert_close(w.sum(-1), torch.ones(2, CFG.heads, 4, dtype=w.dtype))
        pad_keys = ~padding_mask(src)[:, :, 0, :].expand(2, CFG.heads, 5)  # (B, H, S)
        assert (w.transpose(2, 3)[pad_keys] == 0).all()


@torch.no_grad()
def test_recorded_self_attention_sees_no_future():
    model = model_for("sdpa")
    src, tgt = padded([5, 3], V, seed=21), padded([6, 6], V, seed=22)
    with recorded_attention(model) as weights:
        model(src, tgt)
    w = weights[model.decoder.layers[0].self_attn]  # (B, H, T, T)
    assert torch.equal(w.triu(1), torch.zeros_like(w))


def mixed_modes(model: Transformer) -> Transformer:
    """`model` training, but for its encoder: a view must restore each module's own mode."""
    model.train()
    model.encoder.eval()
    return model


VIEWS = {
    "recorded_attention": recorded_attention,
    "residuals_removed": residuals_removed,
    "evaluating": evaluating,
}


def fail_inside(view, model, src, tgt) -> None:
    """A forward pass inside `view`, then an error before the view ends."""
    with view(model):
        model(src, tgt)
        raise RuntimeError("inside the view")


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_a_view_that_raises_leaves_the_model_as_it_was(view, attention):
    model = mixed_modes(model_for(attention))
    src, tgt = padded([5, 3], V, seed=23), padded([4, 2], V, seed=24)
    before, state = snapshot(model), {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.eval()
        expected = model(src, tgt)
        mixed_modes(model)
        with pytest.raises(RuntimeError, match="inside"):
            fail_inside(VIEWS[view], model, src, tgt)
    assert snapshot(model) == before
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(src, tgt), expected)


def test_the_attention_view_leaves_the_model_as_it_was_when_its_pass_fails():
    model = mixed_modes(model_for("sdpa"))
    before = snapshot(model)
    src = padded([5], V, seed=25)
    too_long = torch.full((1, CFG.max_positions + 1), 5)  # beyond the positions: ValueError
    with pytest.raises(ValueError, match="max_positions"):
        _recorded(model, src, too_long, -1, False)
    assert snapshot(model) == before
    weights, _ = _recorded(model, src, too_long[:, :6], -1, False)
    assert weights.shape == (CFG.heads, 6, 5)
    assert snapshot(model) == before
