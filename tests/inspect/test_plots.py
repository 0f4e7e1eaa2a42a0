"""plots.py: every figure is a decodable PNG of a sensible size, drawn headless."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers import assert_png

from transformer_cli.core.specials import BOS_ID, EOS_ID, PAD_ID
from transformer_cli.inspect import plots
from transformer_cli.model.masks import causal_mask, decoder_mask, padding_mask
from transformer_cli.model.positions import sinusoidal_table


def mask_view(lengths: list[int], width: int) -> dict:
    """What `batch.batch_view` returns, for synthetic right-padded targets."""
    tgt_in = torch.full((len(lengths), width), PAD_ID)
    tgt_out = torch.full((len(lengths), width), PAD_ID)
    for b, n in enumerate(lengths):
        tgt_in[b, 0], tgt_in[b, 1:n] = BOS_ID, 7
        tgt_out[b, : n - 1], tgt_out[b, n - 1] = 7, EOS_ID
    rows = list(range(len(lengths)))
    return {
        "split": "valid",
        "index": 0,
        "batch_size": len(lengths),
        "shown_rows": rows,
        "source_padding": padding_mask(tgt_out)[:, 0, 0].int().tolist(),
        "look_ahead": causal_mask(width).int().tolist(),
        "target_padding": padding_mask(tgt_in)[:, 0, 0].int().tolist(),
        "decoder": decoder_mask(tgt_in)[:, 0].int().tolist(),
        "loss": (tgt_out != PAD_ID).int().tolist(),
        "tgt_in_pieces": [["<s>"] + ["▁w"] * (n - 1) + ["<pad>"] * (width - n) for n in lengths],
        "decoder_row": 0,
    }


@pytest.mark.parametrize("width", [6, 60])  # annotated cells and piece labels; indices only
def test_plot_masks(tmp_path, width):
    out = plots.plot_masks(mask_view([width // 2, width - 1, width], width), tmp_path / "m.png")
    assert_png(out)


def test_plot_positions(tmp_path):
    assert_png(plots.plot_positions(sinusoidal_table(50, 32), tmp_path / "pe.png"))


@pytest.mark.parametrize("warmup", [10, 0])
def test_plot_schedule(tmp_path, warmup):
    lrs = [min(s**-0.5, s * 10**-1.5) for s in range(1, 101)]
    assert_png(plots.plot_schedule(lrs, warmup, tmp_path / "lr.png", "noam"))


@pytest.mark.parametrize("with_valid", [True, False])
def test_plot_curves(tmp_path, with_valid):
    train = [
        {"step": s, "loss": 5 / s, "nll": 4 / s, "ppl": 2.0 + 50 / s, "lr": 1e-3 / s}
        for s in range(1, 200, 10)
    ]
    valid = (
        [
            {"step": s, "loss": 4.5 / s, "ppl": 3.0 + 40 / s, "bleu": s / 10, "chrf": s / 5}
            for s in (100, 200)
        ]
        if with_valid
        else []
    )
    assert_png(plots.plot_curves(train, valid, tmp_path / "c.png", "run"))


@pytest.mark.parametrize("size", [(5, 7), (70, 55)])
def test_plot_attention(tmp_path, size):
    t, s = size
    weights = torch.randn(t, s).softmax(-1)
    out = plots.plot_attention(
        weights,
        [f"s{j}" for j in range(s)],
        [f"t{i}" for i in range(t)],
        tmp_path / "a.png",
        "cross-attention",
    )
    assert_png(out)


def test_plot_attention_rejects_labels_that_do_not_fit(tmp_path):
    with pytest.raises(ValueError, match="3x4"):
        plots.plot_attention(torch.ones(3, 4) / 4, ["a"] * 3, ["b"] * 3, tmp_path / "a.png", "x")
    assert not (tmp_path / "a.png").exists()


def test_the_cli_imports_neither_torch_nor_matplotlib():
    # `tfx --help` stays instant: the inspect commands import both inside themselves
    code = (
        "import sys, transformer_cli.cli.app; "
        "print([m for m in ('torch', 'matplotlib') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
