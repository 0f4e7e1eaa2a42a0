"""Our layers and stacks, loaded with the weights of torch.nn's, compute the same thing.

The weights are copied by `inspect/reference.py: copy_layer`, the code `tfx inspect
reference` copies them with the other way, so the CLI check and this test share one
map of which tensor is which. torch.nn's boolean masks mean the opposite of ours (True
= may NOT attend), so the reference gets `ids == PAD_ID` and an upper-triangular
look-ahead mask. Only real (non-pad) positions are compared: padded rows are allowed to
be anything.
"""

import dataclasses
import math

import pytest
import torch
from helpers import tiny_model_config
from torch import nn

from transformer_cli.core.specials import PAD_ID
from transformer_cli.inspect.reference import copy_layer, torch_look_ahead
from transformer_cli.model.masks import decoder_mask, padding_mask
from transformer_cli.model.positions import sinusoidal_table
from transformer_cli.model.transformer import DecoderLayer, EncoderLayer, Transformer

D, HEADS, FF = 16, 4, 24
CFG = tiny_model_config(d_ff=FF, max_positions=32, src_vocab=23, tgt_vocab=23)
PATHS = ["math", "sdpa"]


def ids_with_lengths(lengths: list[int], width: int, gen: torch.Generator) -> torch.Tensor:
    """Random real tokens (ids >= 4), right-padded with PAD_ID to `width`."""
    ids = torch.randint(4, CFG.src_vocab, (len(lengths), width), generator=gen)
    for b, n in enumerate(lengths):
        ids[b, n:] = PAD_ID
    return ids


def randomise(module: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial values everywhere, biases and LayerNorm included."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)


def load_encoder_layer(ours: EncoderLayer, ref: nn.TransformerEncoderLayer) -> None:
    copy_layer(ours, ref, into="tfx")


def load_decoder_layer(ours: DecoderLayer, ref: nn.TransformerDecoderLayer) -> None:
    copy_layer(ours, ref, into="tfx")


def assert_close_real(ours: torch.Tensor, ref: torch.Tensor, ids: torch.Tensor) -> None:
    real = ids != PAD_ID  # (B, L)
    torch.testing.assert_close(ours[real], ref[real])


def ref_kwargs(norm: str) -> dict:
    return dict(
        d_model=D,
        nhead=HEADS,
        dim_feedforward=FF,
        dropout=0.0,
        batch_first=True,
        norm_first=norm == "pre",
    )


@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("attention", PATHS)
def test_encoder_layer_matches_torch(attention, norm):
    gen = torch.Generator().manual_seed(0)
    cfg = dataclasses.replace(CFG, attention=attention, norm=norm)
    ref = nn.TransformerEncoderLayer(**ref_kwargs(norm)).double()
    randomise(ref, gen)
    ours = EncoderLayer(cfg).double()
    load_encoder_layer(ours, ref)
    src = ids_with_lengths([5, 2, 7], 7, gen)
    x = torch.randn(3, 7, D, generator=gen, dtype=torch.float64)
    expected = ref(x, src_key_padding_mask=src == PAD_ID)
    assert_close_real(ours(x, padding_mask(src)), expected, src)


@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("attention", PATHS)
def test_decoder_layer_matches_torch(attention, norm):
    gen = torch.Generator().manual_seed(1)
    cfg = dataclasses.replace(CFG, attention=attention, norm=norm)
    ref = nn.TransformerDecoderLayer(**ref_kwargs(norm)).double()
    randomise(ref, gen)
    ours = DecoderLayer(cfg).double()
    load_decoder_layer(ours, ref)
    src = ids_with_lengths([6, 3, 1], 6, gen)
    tgt = ids_with_lengths([2, 5, 4], 5, gen)
    x = torch.randn(3, 5, D, generator=gen, dtype=torch.float64)
    memory = torch.randn(3, 6, D, generator=gen, dtype=torch.float64)
    expected = ref(
        x,
        memory,
        tgt_mask=torch_look_ahead(5),
        tgt_key_padding_mask=tgt == PAD_ID,
        memory_key_padding_mask=src == PAD_ID,
    )
    got = ours(x, memory, decoder_mask(tgt), padding_mask(src))
    assert_close_real(got, expected, tgt)


def load_model_stacks(model: Transformer, ref: nn.Transformer) -> None:
    for ours, theirs in zip(model.encoder.layers, ref.encoder.layers, strict=True):
        load_encoder_layer(ours, theirs)
    for ours, theirs in zip(model.decoder.layers, ref.decoder.layers, strict=True):
        load_decoder_layer(ours, theirs)
    if model.encoder.norm is not None:
        model.encoder.norm.load_state_dict(ref.encoder.norm.state_dict())
        model.decoder.norm.load_state_dict(ref.decoder.norm.state_dict())


# nn.Transformer warns that its pre-norm encoder cannot use nested tensors; irrelevant here
@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")
@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("attention", PATHS)
def test_whole_model_matches_torch_transformer(attention, norm):
    """Embeddings from the paper's formulas, then torch.nn.Transformer == our stacks.

    torch.nn.Transformer always ends both stacks with a LayerNorm. That is the
    pre-norm recipe, which we share; in post-norm mode the paper has no final norm,
    so there the reference's final norms are removed (set to None, which
    torch.nn.TransformerEncoder/Decoder treat as "no norm").
    """
    gen = torch.Generator().manual_seed(2)
    cfg = dataclasses.replace(CFG, attention=attention, norm=norm)
    ref = nn.Transformer(
        num_encoder_layers=cfg.enc_layers, num_decoder_layers=cfg.dec_layers, **ref_kwargs(norm)
    ).double()
    if norm == "post":
        ref.encoder.norm = None
        ref.decoder.norm = None
    randomise(ref, gen)
    model = Transformer(cfg).double()
    load_model_stacks(model, ref)

    src = ids_with_lengths([7, 4, 1, 5], 7, gen)
    tgt = ids_with_lengths([3, 6, 2, 6], 6, gen)
    table = sinusoidal_table(cfg.max_positions, D).double()

    def embed(ids: torch.Tensor) -> torch.Tensor:
        # section 3.4 and 3.5: sqrt(d_model) * embedding + positional encoding
        return model.src_embed(ids) * math.sqrt(D) + table[: ids.size(1)]

    expected = ref(
        embed(src),
        embed(tgt),
        tgt_mask=torch_look_ahead(6),
        src_key_padding_mask=src == PAD_ID,
        tgt_key_padding_mask=tgt == PAD_ID,
        memory_key_padding_mask=src == PAD_ID,
    )
    hidden = model.decode_hidden(tgt, model.encode(src), src)
    assert_close_real(hidden, expected, tgt)
    # the tied output projection is the embedding matrix
    torch.testing.assert_close(model.logits(hidden), hidden @ model.src_embed.weight.T)


@pytest.mark.parametrize("attention", PATHS)
def test_encoder_stack_matches_torch_encoder_without_final_norm(attention):
    # post-norm stacks as torch.nn.TransformerEncoder(..., norm=None) builds them
    gen = torch.Generator().manual_seed(3)
    cfg = dataclasses.replace(CFG, attention=attention)
    layer = nn.TransformerEncoderLayer(**ref_kwargs("post"))
    ref = nn.TransformerEncoder(layer, cfg.enc_layers, norm=None, enable_nested_tensor=False)
    ref = ref.double()
    randomise(ref, gen)
    model = Transformer(cfg).double()
    for ours, theirs in zip(model.encoder.layers, ref.layers, strict=True):
        load_encoder_layer(ours, theirs)
    src = ids_with_lengths([3, 7], 7, gen)
    x = torch.randn(2, 7, D, generator=gen, dtype=torch.float64)
    expected = ref(x, src_key_padding_mask=src == PAD_ID)
    assert_close_real(model.encoder(x, padding_mask(src)), expected, src)
